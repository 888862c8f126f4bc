"""scikit-learn's 8x8 handwritten digits as a small ImageFolder, for demos and tests that need real images.

`prepare_digits` writes the 1,797 images once as JPEGs into `root/{train,val}/<digit>/<index>.jpg`
(1,497 train / 300 val, stratified, fixed seed) and returns `root`; later calls find the finished
cache and return at once. The cache is written to a temporary sibling directory and renamed into
place, so an interrupted write never leaves a half-filled `root`, and concurrent callers (e.g. every
DDP rank) all end up with the same complete cache.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from fastdeit._env import cache_dir

NUM_VAL = 300
SPLIT_SEED = 0
_FORMAT_VERSION = 1
_META = "digits.json"


def _render(pixels: np.ndarray, size: int):
    """An 8x8 digit (values 0-16) as a `size` x `size` RGB PIL image, white on black, bicubic-upscaled."""
    from PIL import Image

    gray = Image.fromarray(np.clip(pixels * (255.0 / 16.0), 0, 255).astype(np.uint8), mode="L")
    return gray.resize((size, size), Image.Resampling.BICUBIC).convert("RGB")


def _write(dest: Path, size: int) -> None:
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as err:
        raise ImportError("prepare_digits needs scikit-learn (pip install scikit-learn)") from err
    digits = load_digits()
    index = np.arange(len(digits.target))
    train_idx, val_idx = train_test_split(
        index, test_size=NUM_VAL, stratify=digits.target, random_state=SPLIT_SEED, shuffle=True
    )
    for split, rows in (("train", train_idx), ("val", val_idx)):
        for i in sorted(rows.tolist()):
            label = int(digits.target[i])
            folder = dest / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            # Quality 95 keeps the strokes clean; subsampling off avoids color fringes on the gray image.
            _render(digits.images[i], size).save(folder / f"{i:04d}.jpg", quality=95, subsampling=0)
    meta = {"version": _FORMAT_VERSION, "size": size, "train": len(train_idx), "val": len(val_idx)}
    (dest / _META).write_text(json.dumps(meta))


def _is_complete(root: Path, size: int) -> bool:
    meta_path = root / _META
    if not meta_path.is_file():
        return False
    meta = json.loads(meta_path.read_text())
    if meta.get("version") != _FORMAT_VERSION or meta.get("size") != size:
        raise ValueError(
            f"root {str(root)!r} holds a digits cache with size={meta.get('size')} "
            f"(format {meta.get('version')}); asked for size={size}: pass another root or delete it"
        )
    return True


def prepare_digits(root: str | os.PathLike | None = None, size: int = 32) -> Path:
    """Write (once) the digits ImageFolder and return its root (which holds train/ and val/).

    Args:
        root: where the dataset lives; default `cache_dir() / "digits" / f"{size}px"`.
        size: side of the square JPEGs in pixels (the 8x8 originals are upscaled bicubically).

    Raises:
        ValueError: `size` is not an integer >= 8, or `root` holds a cache of another size.
        FileExistsError: `root` exists but is not a digits cache.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise ValueError(f"size must be an integer >= 8 (pixels), got {size!r}")
    root = Path(root).expanduser() if root is not None else cache_dir() / "digits" / f"{size}px"
    if root.exists() and not (root.is_dir() and not any(root.iterdir())):
        if root.is_dir() and _is_complete(root, size):
            return root
        raise FileExistsError(f"root {str(root)!r} exists and is not a digits cache; pass an empty or new directory")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        _write(tmp, size)
        if root.exists():
            root.rmdir()  # empty (checked above); rename cannot replace a directory
        os.rename(tmp, root)
    except OSError:
        # Another process finished first: its cache is as good as ours.
        if not _is_complete(root, size):
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
