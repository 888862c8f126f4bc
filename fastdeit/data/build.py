"""Building loaders: a source (ImageFolder, "digits" or "synthetic") and a LoaderConfig -> a loader and what it reads.

The decoder behind `backend="auto"` is the faster one for the loader's device and pipeline, as `fastdeit bench
--data` measures them (224 px, batch 32, 512 ImageNet-like photos):
    CUDA device: DALI, decoding and augmenting on the GPU (nvJPEG), which leaves the CPU to feed it; not measured
        yet (on a GPU machine `fastdeit bench --data` adds the dali-gpu and timm rows).
    CPU device, train pipeline: PIL. On 2 threads of an AMD EPYC CPU, with RandAugment, fastdeit's PIL loader made
        421-431 img/s and DALI's CPU pipeline 299-312 (PIL 1.4x), and DALI started later (a whole process to its
        first train batch: 4.5 s against 2.9 s).
    CPU device, eval and predict pipelines: DALI: 527-528 img/s against PIL's 397-406 (DALI 1.3x).
On a CPU busy with other processes the PIL thread pool loses more than DALI (train: ~130 against ~230 img/s at a
load of 3-6 on those 2 cores): pass backend="dali" there. Where DALI cannot be imported PIL decodes, with a
DataWarning when DALI was the choice.
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

from fastdeit.data.common import DataWarning
from fastdeit.data.config import BACKENDS, LoaderConfig
from fastdeit.data.digits import prepare_digits
from fastdeit.data.folder import list_classes, scan_image_folder
from fastdeit.data.loader import BatchLoader, ImageFileLoader
from fastdeit.data.synthetic import SyntheticLoader

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


def choose_backend(backend: str, device: str | torch.device, mode: str, *, warn: bool = True) -> type[ImageFileLoader]:
    """The loader class for `backend` on `device` in `mode` ("train", "eval" or "predict").

    "auto" picks the faster decoder there (see the module docstring): PIL for the train pipeline on the CPU, DALI
    everywhere else, or PIL where DALI cannot be imported (said in a DataWarning when `warn`; False on all DDP
    ranks but one). Raises ImportError for backend="dali" where DALI cannot be imported.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "dali" or (backend == "auto" and (mode != "train" or torch.device(device).type == "cuda")):
        error = _dali_import_error()
        if error is None:
            from fastdeit.data.dali import DaliLoader

            return DaliLoader
        if backend == "dali":
            raise ImportError(f"backend='dali' but DALI cannot be imported: {error}")
        if warn:
            warnings.warn(
                f"DALI is not importable ({error}); using the slower PIL fallback loader (pip install "
                "nvidia-dali-cuda130)",
                DataWarning,
                stacklevel=3,
            )
    from fastdeit.data.pil import PilLoader

    return PilLoader


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
    config: LoaderConfig | None = None,
    device: str | torch.device = "cpu",
    rank: int = 0,
    world_size: int = 1,
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
            A train class folder without images is an error; val may lack classes (one DataWarning names them).
        split: "train" (DeiT's train transform, shuffled, sharded, drop_last) or "val" (resize + center
            crop, every sample once over all ranks, padding rows labelled PAD_LABEL).
        config: image size, batch size, seed, transforms, decoder and threads (default: LoaderConfig()).
        device: where batches are returned ("cuda[:i]" decodes on that GPU with DALI).
        rank, world_size: DDP position. Only rank 0 warns about the dataset and the settings.
        num_classes, num_samples: size of synthetic data (default ImageNet-1k's 1000 classes and
            split size); ignored for folders.
        digits_size: image side of the digits cache.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    config = config if config is not None else LoaderConfig()
    warn = rank == 0
    if isinstance(source, str) and source == "synthetic":
        loader = SyntheticLoader(
            config,
            num_classes=num_classes if num_classes is not None else _SYNTHETIC_CLASSES,
            num_samples=num_samples if num_samples is not None else _SYNTHETIC_SAMPLES[split],
            device=device,
            rank=rank,
            world_size=world_size,
        )
        names = tuple(str(i) for i in range(loader.num_classes))
        return loader, DataInfo(loader.num_classes, names, loader.num_samples, "synthetic", None)
    if isinstance(source, str) and source == "digits":
        source = prepare_digits(size=digits_size)
    folder, class_names = _split_folder(source, split)
    empty_classes = "error" if split == "train" else "warn"
    index = scan_image_folder(folder, class_names=class_names, empty_classes=empty_classes, warn=warn)
    mode = "train" if split == "train" else "eval"
    cls = choose_backend(config.backend, device, mode, warn=warn)
    loader = cls(index.files, index.labels, config, mode=mode, device=device, rank=rank, world_size=world_size)
    info = DataInfo(len(index.class_names), index.class_names, len(index), cls.backend, folder)
    return loader, info


def build_predict_loader(
    paths: Sequence[str | os.PathLike], config: LoaderConfig | None = None, *, device: str | torch.device = "cpu"
) -> ImageFileLoader:
    """A loader of `paths` through the eval transform, for inference (config: default LoaderConfig()).

    Yields `(images, indices)`: images (n, 3, img_size, img_size) float32 and indices (n,) int64, the
    positions in `paths` of the rows, in order, n <= batch_size. Files that cannot be read or decoded
    are skipped (named in one DataWarning) and listed in `loader.skipped_files`. Decoding of the next
    batches overlaps with the caller's work on the current one (`prefetch`). EXIF orientation is applied
    unless the config turns it off.
    """
    if isinstance(paths, str | os.PathLike):
        raise ValueError(f"paths must be a sequence of file paths, got a single path {str(paths)!r}")
    config = config if config is not None else LoaderConfig()
    cls = choose_backend(config.backend, device, "predict")
    return cls([os.fspath(p) for p in paths], None, config, mode="predict", device=device)
