"""Building the model a run trains (a DeiT, or the demo's convnet), loading starting weights into it, and checking
that a teacher's or a checkpoint's classes are the dataset's."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

from torch import nn

from fastdeit.models import VisionTransformer, VisionTransformerConfig, create_model
from fastdeit.models.checkpoint import Checkpoint, load_state_dict, read_checkpoint
from fastdeit.models.convnet import create_convnet, is_convnet
from fastdeit.training.config import TrainingWarning

_SHOWN_CLASSES = 10  # differing classes listed, and names shown of each list, in a class mismatch


def build_model(
    name: str,
    *,
    num_classes: int,
    img_size: int | None = None,
    backend: str = "auto",
    drop_path_rate: float = 0.0,
    **overrides: Any,
) -> nn.Module:
    """DeiT `name` via fastdeit.create_model (architecture `overrides` such as embed_dim, depth, patch_size, and
    any other `VisionTransformerConfig` field), or a convnet of fastdeit.models.convnet (which takes no
    architecture overrides and any input size). Overrides that are None are left out.

    The model records what it is in `model.config`; `build_model(model.model_name, **model.model_config)` rebuilds
    it.
    """
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if is_convnet(name):
        arch = sorted(set(overrides) - {"in_chans", "drop_rate", "class_names"})
        if arch:
            raise ValueError(f"convnet {name!r} takes no DeiT architecture overrides, got {arch}")
        return create_convnet(name, num_classes=num_classes, **overrides)
    return create_model(
        name, num_classes=num_classes, img_size=img_size, backend=backend, drop_path_rate=drop_path_rate, **overrides
    )


# What a DeiT's weights decide that no train.py key sets: a run keeps these as the weights it starts from (or the
# checkpoint it resumes) record them, so that such weights load as they were trained (Hugging Face's DeiT models
# have layer_norm_eps 1e-12, timm's 1e-6). Mean and std are not among them: the run's data pipeline normalises.
WEIGHTS_FIELDS = ("qkv_bias", "layer_norm_eps")


def weights_fields(recorded: Any, model_name: str) -> dict[str, Any]:
    """WEIGHTS_FIELDS as `recorded` holds them (a `VisionTransformerConfig`, or the `model_config` dict of a train.py
    checkpoint), for building DeiT `model_name`; {} for bare weights (None), convnets and a convnet `model_name`."""
    if isinstance(recorded, VisionTransformerConfig):
        recorded = recorded.to_dict()
    if not isinstance(recorded, dict) or is_convnet(model_name):
        return {}
    return {k: recorded[k] for k in WEIGHTS_FIELDS if k in recorded}


def load_finetune_weights(
    model: nn.Module, path: str | os.PathLike | Checkpoint, *, allow_new_head: bool = True
) -> str:
    """Start `model` from the weights in `path` (any format fastdeit reads, or what `read_checkpoint` read from it).
    Returns what was done, for the log.

    What the checkpoint records is checked against the model (architecture, class names: see
    `fastdeit.load_checkpoint`). DeiT: a position embedding of another grid is resampled (fine-tuning at 384); a
    head of another class count is replaced by the model's fresh one when `allow_new_head` (fine-tuning on another
    dataset, also one of the same count whose class names differ), and is an error otherwise (evaluating).
    Convnets load strictly. When fine-tuning
    (`allow_new_head`) the model keeps its own class names (the run's dataset's), not the checkpoint's.
    """
    class_names = model.class_names
    # Read once: the head's class count decides how to load.
    ckpt = path if isinstance(path, Checkpoint) else read_checkpoint(path)
    head = ckpt.state_dict.get("head.weight")
    stored = None if head is None else int(head.shape[0])
    other_classes = stored != model.num_classes or (
        None not in (class_names, ckpt.class_names) and tuple(class_names) != tuple(ckpt.class_names)
    )
    new_head = isinstance(model, VisionTransformer) and allow_new_head and stored is not None and other_classes
    result = load_state_dict(model, ckpt, strict=True, drop_head=new_head)
    if allow_new_head:
        model.set_class_names(class_names)
    notes = [f"loaded {ckpt.path} ({result.format})"]
    if result.resampled_pos_embed:
        notes.append(f"pos_embed resampled {result.resampled_pos_embed[0]} -> {result.resampled_pos_embed[1]}")
    if result.dropped_head:
        other = ", other class names" if stored == model.num_classes else ""
        notes.append(f"new {model.num_classes}-class head (the checkpoint's has {stored} classes{other})")
    return ", ".join(notes)


def check_class_names(theirs: Sequence[str], dataset: Sequence[str], *, what: str, allow: bool = False) -> None:
    """Check that output i of a `what` ("teacher", "checkpoint") is the dataset's class i, by their names.

    Labels are class indices, so other names in the same count (another order, renamed folders) give no error
    anywhere else: a student distilled from such a teacher learns wrong labels, an evaluation scores the wrong
    classes. Raises ValueError listing the differing entries first, then both lists; with `allow`, a TrainingWarning
    says the same and the run goes on. Another class count is always an error.
    """
    theirs, dataset = tuple(theirs), tuple(dataset)
    if theirs == dataset:
        return
    if len(theirs) != len(dataset):
        raise ValueError(
            f"the {what} has {len(theirs)} classes, the dataset {len(dataset)}:\n  {what}: {_preview(theirs)}\n"
            f"  dataset: {_preview(dataset)}"
        )
    differ = [i for i, (a, b) in enumerate(zip(theirs, dataset, strict=True)) if a != b]
    lines = [f"the {what}'s classes are not the dataset's (output i must be the dataset's class i):"]
    lines += [f"  class {i}: {what} {theirs[i]!r}, dataset {dataset[i]!r}" for i in differ[:_SHOWN_CLASSES]]
    if len(differ) > _SHOWN_CLASSES or len(theirs) > _SHOWN_CLASSES:
        lines.append(f"  ({len(differ)} of {len(theirs)} classes differ)")
    lines += [f"  {what} ({len(theirs)}): {_preview(theirs)}", f"  dataset ({len(dataset)}): {_preview(dataset)}"]
    if allow:
        warnings.warn("\n".join(lines) + "\n--allow-class-mismatch: going on", TrainingWarning, stacklevel=2)
        return
    lines.append(f"Use a {what} of the dataset's classes in its order, or pass --allow-class-mismatch to go on anyway")
    raise ValueError("\n".join(lines))


def _preview(names: tuple[str, ...]) -> str:
    if len(names) <= _SHOWN_CLASSES:
        return str(list(names))
    return str(list(names[:_SHOWN_CLASSES]))[:-1] + ", ...]"
