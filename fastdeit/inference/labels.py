"""Class names for predictions: from a file, the model, or ImageNet-1k's list shipped with fastdeit."""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Sequence
from importlib import resources
from pathlib import Path


def read_labels(path: str | os.PathLike) -> tuple[str, ...]:
    """Class names from a text file: one per line in class-index order; blank lines and lines starting with '#'
    are ignored."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"labels file {str(path)!r} not found")
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return tuple(line for line in lines if line and not line.startswith("#"))


@functools.cache
def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names shipped with fastdeit (fastdeit/data/imagenet_classes.txt).

    They are the first WordNet lemma of each synset, as in Keras' imagenet_class_index.json (the list pytorch/hub
    also ships as imagenet_classes.txt): 0 "tench", 1 "goldfish", ..., 999 "toilet tissue".
    """
    with resources.as_file(resources.files("fastdeit.data") / "imagenet_classes.txt") as path:
        return read_labels(path)


def resolve_labels(
    labels: str | os.PathLike | Sequence[str] | None, num_classes: int, class_names: Sequence[str] | None
) -> tuple[str, ...] | None:
    """The names of a head's classes: `labels` (names, or a file of them) if given, checked against the class
    count and the names the model records (`class_names`); else `class_names`; else ImageNet's for a 1000-class
    head; else None.

    `labels` that rename the model's classes are used, with a warning naming both lists; the model's own names in
    another order are refused (ValueError): they would put another of its classes' name on every prediction.
    """
    if labels is None:
        if class_names is not None:
            return tuple(class_names)
        return imagenet_labels() if num_classes == 1000 else None
    names = read_labels(labels) if isinstance(labels, str | os.PathLike) else tuple(str(n) for n in labels)
    source = f"labels file {os.fspath(labels)!r}" if isinstance(labels, str | os.PathLike) else "labels"
    if len(names) != num_classes:
        raise ValueError(f"{source} has {len(names)} names but the model has {num_classes} classes")
    if class_names is None or names == tuple(class_names):
        return names
    if sorted(names) == sorted(class_names):
        i = next(i for i, (given, recorded) in enumerate(zip(names, class_names, strict=True)) if given != recorded)
        raise ValueError(
            f"{source} lists the model's class names in another order: class {i} is {class_names[i]!r} in the "
            f"model, {names[i]!r} in the {source}; leave them out to use the model's names"
        )
    # Asked for explicitly, so used (renaming, e.g. WordNet ids to words, is legitimate); but never silently.
    warnings.warn(
        f"{source} names the model's classes differently from the names the model records: using "
        f"{_first(names)} in place of the model's {_first(class_names)}",
        stacklevel=3,
    )
    return names


def _first(names: Sequence[str], count: int = 5) -> str:
    """`['a', 'b', ...]`: the first `count` names, and how many there are when that is more."""
    shown = ", ".join(repr(n) for n in names[:count])
    return f"[{shown}, ... ({len(names)} names)]" if len(names) > count else f"[{shown}]"
