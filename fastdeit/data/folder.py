"""Scanning an ImageFolder tree (`root/<class>/<file>`) and cheap checks of encoded image bytes.

Classes are the sub-directories of `root`, sorted by name (class i is the i-th name, as in
torchvision's ImageFolder); files are found recursively under each class directory. Hidden files
and directories (names starting with ".") are ignored silently, as they are never data (`.DS_Store`,
`.ipynb_checkpoints`). Every other file whose extension is not an image type, or whose first bytes
are not an image header, is skipped and named in one warning. A class with no image is an error in a
train split (a dead class) and a warning in an eval split (see scan_image_folder).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fastdeit.data.common import DataWarning, describe_files

# Formats both DALI's decoders and PIL read.
IMG_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm"}
)

_HEADER_BYTES = 12
# How far from the end of a file its end marker may sit: writers sometimes append a few bytes of padding.
_TAIL_WINDOW = 1024


def sniff_format(head: bytes) -> str | None:
    """The image format named by the first bytes of a file ("jpeg", "png", ...), or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"BM"):
        return "bmp"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "webp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if len(head) >= 2 and head[0:1] == b"P" and head[1:2] in b"123456":
        return "pnm"
    return None


def _unsupported_format(head: bytes) -> str | None:
    """The image format of the first bytes of a file that no decoder here reads (GIF, HEIC/AVIF, JPEG 2000), or None."""
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"mif1", b"msf1", b"avif"):
        return "HEIF/AVIF"
    if head.startswith(b"\x00\x00\x00\x0cjP  ") or head.startswith(b"\xff\x4f\xff\x51"):
        return "JPEG 2000"
    return None


def check_encoded(data: bytes | memoryview) -> str | None:
    """Why `data` cannot be a whole image, or None if it passes the cheap checks.

    Catches non-images and truncated JPEG/PNG files (the usual result of an interrupted copy) without
    decoding; damage in the middle of a file is left to the decoder.
    """
    head = bytes(data[:_HEADER_BYTES])
    fmt = sniff_format(head)
    if fmt is None:
        other = _unsupported_format(head)
        return f"a {other} image, a format the decoders do not read" if other else "not an image"
    tail = bytes(data[-_TAIL_WINDOW:])
    if fmt == "jpeg" and b"\xff\xd9" not in tail:
        return "truncated JPEG: no end-of-image marker"
    if fmt == "png" and b"IEND" not in tail:
        return "truncated PNG: no IEND chunk"
    return None


@dataclass(frozen=True)
class ImageFolderIndex:
    """The images of one ImageFolder split.

    `files[i]` has label `labels[i]`, an index into `class_names`; `skipped` lists (path, reason) of
    files that were left out.
    """

    root: Path
    files: tuple[str, ...]
    labels: tuple[int, ...]
    class_names: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]

    def __len__(self) -> int:
        return len(self.files)


def list_classes(root: str | os.PathLike) -> tuple[str, ...]:
    """Sorted names of the class directories under `root`."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder root {str(root)!r} does not exist or is not a directory")
    names = tuple(sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")))
    if not names:
        raise ValueError(
            f"image folder root {str(root)!r} has no class sub-directories (expected root/<class>/<image>)"
        )
    return names


def _walk_files(class_dir: Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(os.path.join(dirpath, f) for f in sorted(filenames) if not f.startswith("."))
    return found


def find_image_files(directory: str | os.PathLike) -> tuple[list[str], list[tuple[str, str]]]:
    """The image files under `directory` (recursive, sorted, hidden entries ignored, by extension), and the other
    files as (path, why it was left out)."""
    images: list[str] = []
    others: list[tuple[str, str]] = []
    for path in _walk_files(Path(directory)):
        ext = os.path.splitext(path)[1].lower()
        if ext in IMG_EXTENSIONS:
            images.append(path)
        else:
            others.append((path, f"extension {ext or '(none)'!r} is not an image type"))
    return images, others


def _read_head(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(_HEADER_BYTES)


def _header_problem(path: str) -> str | None:
    try:
        head = _read_head(path)
    except OSError as err:
        return f"unreadable: {err.strerror or err}"
    return None if sniff_format(head) else "not an image"


def scan_image_folder(
    root: str | os.PathLike,
    *,
    class_names: Sequence[str] | None = None,
    empty_classes: Literal["error", "warn"] = "error",
    check_headers: bool = True,
    io_threads: int = 16,
    warn: bool = True,
) -> ImageFolderIndex:
    """Index the images under `root/<class>/...`.

    Class index i always means the i-th name of the class list (by default the sorted class directories, as
    torchvision's ImageFolder numbers them), so labels never shift when a class has no images.

    Args:
        root: the split folder whose sub-directories are the classes.
        class_names: the class list to label with (e.g. the train split's, so a val split missing a
            class still gets the same labels); every class directory under `root` must be in it.
            Default: the sorted class directories of `root`.
        empty_classes: what to do about classes of the list with no image under `root` (an empty or
            missing folder, or one holding only non-images): "error" (a model would get a head unit no
            sample ever trains: right for a train split) or "warn" (name them in one DataWarning: right
            for an eval split, where a subset of the classes is normal).
        check_headers: read the first bytes of every file and skip those that are not images.
        io_threads: threads reading headers (the check is I/O bound).
        warn: emit the DataWarnings (skipped files, empty classes); False on all DDP ranks but one.

    Raises:
        FileNotFoundError: `root` is missing or not a directory.
        ValueError: no class directories, a class directory not in `class_names`, a class without images
            (with empty_classes="error"), or no images at all.
    """
    if empty_classes not in ("error", "warn"):
        raise ValueError(f"empty_classes must be 'error' or 'warn', got {empty_classes!r}")
    root = Path(root)
    found = list_classes(root)
    if class_names is None:
        class_names = found
    else:
        class_names = tuple(class_names)
        unknown = sorted(set(found) - set(class_names))
        if unknown:
            raise ValueError(
                f"class directories {unknown[:5]} under {str(root)!r} are not in the class list it is labelled "
                f"with ({len(class_names)} classes, e.g. {list(class_names[:3])}; for a val split: the train "
                "split's): its images would get no label, or another class's"
            )
    to_label = {name: i for i, name in enumerate(class_names)}
    files: list[str] = []
    labels: list[int] = []
    skipped: list[tuple[str, str]] = []
    for name in found:
        images, others = find_image_files(root / name)
        files += images
        labels += [to_label[name]] * len(images)
        skipped += others
    if check_headers and files:
        with ThreadPoolExecutor(max_workers=max(1, io_threads)) as pool:
            problems = list(pool.map(_header_problem, files))
        keep = [i for i, p in enumerate(problems) if p is None]
        skipped.extend((files[i], p) for i, p in enumerate(problems) if p is not None)
        files = [files[i] for i in keep]
        labels = [labels[i] for i in keep]
    if skipped and warn:
        rel = [(os.path.relpath(p, root), why) for p, why in skipped]
        warnings.warn(
            f"skipped {len(skipped)} non-image file(s) under {str(root)!r}: {describe_files(rel)}",
            DataWarning,
            stacklevel=2,
        )
    if not files:
        raise ValueError(f"no image files under {str(root)!r} (extensions: {', '.join(sorted(IMG_EXTENSIONS))})")
    present = set(labels)
    empty = [name for i, name in enumerate(class_names) if i not in present]
    if empty:
        shown = ", ".join(repr(n) for n in empty[:10]) + (f" and {len(empty) - 10} more" if len(empty) > 10 else "")
        if empty_classes == "error":
            raise ValueError(
                f"{len(empty)} class folder(s) under {str(root)!r} hold no image: {shown}. A class without "
                "training images would still get a unit of the model's head (a dead class), and skipping it would "
                "renumber every later class: add its images, or remove the folder"
            )
        if warn:
            warnings.warn(
                f"{len(empty)} of the {len(class_names)} classes have no image under {str(root)!r}: {shown} "
                "(labels keep the full class list; metrics cover the other classes)",
                DataWarning,
                stacklevel=2,
            )
    return ImageFolderIndex(root, tuple(files), tuple(labels), tuple(class_names), tuple(skipped))
