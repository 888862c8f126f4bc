"""Data loading for DeiT: ImageFolder datasets through DALI (or a PIL fallback), synthetic data, digits.

Entry points:
    build_loader(source, split=..., ...) -> (loader, DataInfo)   training and evaluation batches
    build_predict_loader(paths, ...) -> loader                    inference on a list of files
    Mixup, RandomErasing                                          batch augmentations on the device

Every loader yields `(images, targets)`: images (B, 3, S, S) float32 normalized with
IMAGENET_MEAN/IMAGENET_STD, targets (B,) int64, both on the requested device; see
fastdeit.data.loader.ImageFileLoader for shuffling, sharding, resuming and unreadable files.
Eval batches are padded to full size with rows labelled PAD_LABEL (-1): count `targets != PAD_LABEL`
for accuracy (summed over ranks, each sample counts once) and give losses ignore_index=PAD_LABEL.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from fastdeit.data.augment import CROP_SCALE, HFLIP, RandAugmentConfig
from fastdeit.data.common import IMAGENET_MEAN, IMAGENET_STD, PAD_LABEL, DataWarning
from fastdeit.data.digits import prepare_digits
from fastdeit.data.folder import ImageFolderIndex, list_classes, scan_image_folder
from fastdeit.data.loader import BatchLoader, ImageFileLoader
from fastdeit.data.mix import Mixup, RandomErasing
from fastdeit.data.synthetic import SyntheticLoader

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PAD_LABEL",
    "BatchLoader",
    "DataInfo",
    "DataWarning",
    "ImageFolderIndex",
    "Mixup",
    "RandAugmentConfig",
    "RandomErasing",
    "SyntheticLoader",
    "build_loader",
    "build_predict_loader",
    "dali_available",
    "prepare_digits",
    "scan_image_folder",
]

Backend = Literal["auto", "dali", "pil"]
# ImageNet-1k sizes, the default shape of synthetic data.
_SYNTHETIC_SAMPLES = {"train": 1_281_167, "val": 50_000}
_SYNTHETIC_CLASSES = 1000


@dataclass(frozen=True)
class DataInfo:
    """What a built loader reads.

    Attributes:
        num_classes: classes of the dataset (the model's head size).
        class_names: name of each class index (the class directory names; "0".."N-1" for synthetic).
        num_samples: samples of the split over all ranks.
        backend: "dali", "pil" or "synthetic".
        root: the split folder read, None for synthetic data.
    """

    num_classes: int
    class_names: tuple[str, ...]
    num_samples: int
    backend: str
    root: Path | None


@functools.cache
def _dali_import_error() -> str | None:
    try:
        import fastdeit.data.dali  # noqa: F401
    except (ImportError, OSError) as err:  # OSError: DALI installed but its shared libraries fail to load
        return str(err)
    return None


def dali_available() -> bool:
    """Whether the DALI backend can be imported here."""
    return _dali_import_error() is None


def _loader_class(backend: Backend) -> type[ImageFileLoader]:
    if backend not in ("auto", "dali", "pil"):
        raise ValueError(f"backend must be 'auto', 'dali' or 'pil', got {backend!r}")
    if backend != "pil":
        error = _dali_import_error()
        if error is None:
            from fastdeit.data.dali import DaliLoader

            return DaliLoader
        if backend == "dali":
            raise ImportError(f"backend='dali' but DALI cannot be imported: {error}")
        warnings.warn(
            f"DALI is not importable ({error}); using the slower PIL fallback loader "
            "(fastdeit.data.fallback.PilLoader)",
            DataWarning,
            stacklevel=3,
        )
    from fastdeit.data.fallback import PilLoader

    return PilLoader


def _default_threads(num_threads: int | None) -> int:
    return num_threads if num_threads is not None else max(1, min(8, os.cpu_count() or 1))


def _rand_augment_config(rand_augment: bool | str | RandAugmentConfig) -> RandAugmentConfig | None:
    if isinstance(rand_augment, RandAugmentConfig):
        return rand_augment
    if isinstance(rand_augment, str):
        return RandAugmentConfig.from_timm(rand_augment)
    if isinstance(rand_augment, bool):
        return RandAugmentConfig() if rand_augment else None
    raise ValueError(f"rand_augment must be a bool, a timm spec string or a RandAugmentConfig, got {rand_augment!r}")


def _split_folder(source: str | os.PathLike, split: str) -> tuple[Path, tuple[str, ...] | None]:
    """The folder holding `split`'s classes, and the class list to label it with (train's, for val)."""
    root = Path(source).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"source {str(source)!r} is not a directory (expected an ImageFolder root, 'digits' or 'synthetic')"
        )
    if (root / split).is_dir():
        train = root / "train"
        return root / split, (list_classes(train) if split != "train" and train.is_dir() else None)
    return root, None


def build_loader(
    source: str | os.PathLike,
    *,
    split: Literal["train", "val"],
    img_size: int,
    batch_size: int,
    device: str | torch.device = "cpu",
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    repeated_aug: int = 1,
    rand_augment: bool | str | RandAugmentConfig = True,
    crop_scale: tuple[float, float] = CROP_SCALE,
    hflip: float = HFLIP,
    crop_pct: float = 0.875,
    num_threads: int | None = None,
    prefetch: int = 2,
    read_threads: int = 8,
    backend: Backend = "auto",
    num_classes: int | None = None,
    num_samples: int | None = None,
    digits_size: int = 32,
) -> tuple[BatchLoader, DataInfo]:
    """A loader of `split` batches from `source`, and what it reads.

    Args:
        source: an ImageFolder directory, "digits" (fastdeit.data.digits, written on first use) or
            "synthetic" (random tensors made on the device). A directory with a `split` sub-directory
            (root/train/<class>/..., root/val/<class>/...) is read there, labelling val with the
            train split's class list; any other directory is itself the split folder (root/<class>/...).
        split: "train" (DeiT's train transform, shuffled, sharded, drop_last) or "val" (resize + center
            crop, every sample once over all ranks, padding rows labelled PAD_LABEL).
        img_size: side of the square images.
        batch_size: per-rank batch size.
        device: where batches are returned ("cuda[:i]" decodes on that GPU with DALI).
        rank, world_size: DDP position; seed: shuffling and augmentation seed.
        repeated_aug: DeiT's repeated augmentation count (3 in the recipe, under DDP).
        rand_augment: True for DeiT's rand-m9-mstd0.5-inc1, False for none, a timm spec string or a
            RandAugmentConfig. Train only.
        crop_scale: (lo, hi) area range of the random-resized-crop as a fraction of the image, 0 < lo <= hi
            <= 1 (DeiT's 0.08-1). Train only.
        hflip: probability of mirroring each image horizontally (DeiT's 0.5). Train only.
        crop_pct: eval center-crop fraction.
        num_threads: decoding threads (default: the CPU count, at most 8); prefetch: batches prepared
            ahead; read_threads: threads reading files.
        backend: "auto" (DALI if importable, else PIL with a DataWarning), "dali" or "pil".
        num_classes, num_samples: size of synthetic data (default ImageNet-1k's 1000 classes and
            split size); ignored for folders.
        digits_size: image side of the digits cache.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if isinstance(source, str) and source == "synthetic":
        classes = num_classes if num_classes is not None else _SYNTHETIC_CLASSES
        loader = SyntheticLoader(
            num_classes=classes,
            num_samples=num_samples if num_samples is not None else _SYNTHETIC_SAMPLES[split],
            img_size=img_size,
            batch_size=batch_size,
            device=device,
            rank=rank,
            world_size=world_size,
            seed=seed,
        )
        names = tuple(str(i) for i in range(loader.num_classes))
        return loader, DataInfo(loader.num_classes, names, loader.num_samples, "synthetic", None)
    if isinstance(source, str) and source == "digits":
        source = prepare_digits(size=digits_size)
    folder, class_names = _split_folder(source, split)
    index = scan_image_folder(folder, class_names=class_names)
    cls = _loader_class(backend)
    loader = cls(
        index.files,
        index.labels,
        mode="train" if split == "train" else "eval",
        img_size=img_size,
        batch_size=batch_size,
        device=device,
        rank=rank,
        world_size=world_size,
        seed=seed,
        repeated_aug=repeated_aug,
        rand_augment=_rand_augment_config(rand_augment),
        crop_scale=crop_scale,
        hflip=hflip,
        crop_pct=crop_pct,
        read_threads=read_threads,
        num_threads=_default_threads(num_threads),
        prefetch=prefetch,
    )
    info = DataInfo(len(index.class_names), index.class_names, len(index), cls.backend, folder)
    return loader, info


def build_predict_loader(
    paths: Sequence[str | os.PathLike],
    *,
    img_size: int,
    batch_size: int,
    device: str | torch.device = "cpu",
    crop_pct: float = 0.875,
    num_threads: int | None = None,
    prefetch: int = 2,
    read_threads: int = 8,
    backend: Backend = "auto",
    exif_orientation: bool = True,
) -> ImageFileLoader:
    """A loader of `paths` through the eval transform, for inference.

    Yields `(images, indices)`: images (n, 3, img_size, img_size) float32 and indices (n,) int64, the
    positions in `paths` of the rows, in order, n <= batch_size. Files that cannot be read or decoded
    are skipped (named in one DataWarning) and listed in `loader.skipped_files`. Decoding of the next
    batches overlaps with the caller's work on the current one (`prefetch`).
    """
    if isinstance(paths, str | os.PathLike):
        raise ValueError(f"paths must be a sequence of file paths, got a single path {str(paths)!r}")
    cls = _loader_class(backend)
    return cls(
        [os.fspath(p) for p in paths],
        None,
        mode="predict",
        img_size=img_size,
        batch_size=batch_size,
        device=device,
        crop_pct=crop_pct,
        read_threads=read_threads,
        num_threads=_default_threads(num_threads),
        prefetch=prefetch,
        exif_orientation=exif_orientation,
    )
