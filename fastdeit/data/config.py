"""LoaderConfig: every setting of how image files become batches, in one frozen dataclass validated once.

    config = LoaderConfig(img_size=224, batch_size=256, rand_augment="rand-m9-mstd0.5-inc1", seed=0)
    train, info = build_loader("/data/imagenet", split="train", config=config, device="cuda", rank=r, world_size=w)
    val, _ = build_loader("/data/imagenet", split="val", config=config.replace(batch_size=384), device="cuda", ...)

The defaults are DeiT's (the official repository's main.py). A bad value raises DataConfigError naming the field,
what it must be and what was given, when the config is made, before any file is read. The process's place in a
run (device, rank, world size) is not a setting: the builders take it next to the config.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Literal

from fastdeit.constants import DEFAULT_CROP_PCT
from fastdeit.data.augment import (
    CROP_SCALE,
    DEIT_RAND_AUGMENT,
    HFLIP,
    RandAugmentConfig,
    check_crop_scale,
)
from fastdeit.data.common import (
    DataConfigError,
    check_non_negative_int,
    check_positive_int,
    check_probability,
    is_number,
)

Backend = Literal["auto", "dali", "pil"]
BACKENDS: tuple[str, ...] = ("auto", "dali", "pil")
MAX_DEFAULT_THREADS = 8


def default_threads() -> int:
    """Decoding threads when none are asked for: the CPU count, at most MAX_DEFAULT_THREADS."""
    return max(1, min(MAX_DEFAULT_THREADS, os.cpu_count() or 1))


@dataclass(frozen=True)
class LoaderConfig:
    """How a loader reads, decodes and transforms images (see fastdeit.data.loader.ImageFileLoader).

    Attributes:
        img_size: side of the square images yielded.
        batch_size: rows per batch, per process.
        seed: shuffling and augmentation seed; a train batch depends only on (seed, epoch, rank, step).
        rand_augment: train RandAugment: a RandAugmentConfig, a timm spec string ("rand-m9-mstd0.5-inc1", DeiT's,
            the default), True (DeiT's) or "none" / False / None. Stored as a RandAugmentConfig or None.
        crop_scale: train random-resized-crop area range (lo, hi), fractions of the image, 0 < lo <= hi <= 1.
        hflip: train probability of mirroring an image horizontally.
        repeated_aug: train copies of each sample per epoch (DeiT's 3, under DDP only).
        crop_pct: eval: the shorter side is resized to int(img_size / crop_pct), then center-cropped to img_size.
        exif_orientation: rotate images by their EXIF orientation tag; None: on for predict loaders (right for
            photos), off for train and eval (as the PIL loader DeiT was trained with).
        backend: "auto" (the faster decoder for the loader's device: see fastdeit.data.build.choose_backend),
            "dali" or "pil".
        num_threads: decoding threads; None: the CPU count, at most MAX_DEFAULT_THREADS. Stored resolved.
        read_threads: threads reading files.
        prefetch: batches decoded ahead of the one being consumed.
        read_ahead: batches read ahead of the decoder.
    """

    img_size: int = 224
    batch_size: int = 64
    seed: int = 0
    rand_augment: RandAugmentConfig | str | bool | None = DEIT_RAND_AUGMENT
    crop_scale: tuple[float, float] = CROP_SCALE
    hflip: float = HFLIP
    repeated_aug: int = 1
    crop_pct: float = DEFAULT_CROP_PCT
    exif_orientation: bool | None = None
    backend: Backend = "auto"
    num_threads: int | None = None
    read_threads: int = 8
    prefetch: int = 2
    read_ahead: int = 2

    def __post_init__(self) -> None:
        def store(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)  # frozen: normalized values are stored once, here

        for name in ("img_size", "batch_size", "repeated_aug", "read_threads", "prefetch", "read_ahead"):
            store(name, check_positive_int(name, getattr(self, name)))
        store("seed", check_non_negative_int("seed", self.seed))
        store("rand_augment", RandAugmentConfig.parse(self.rand_augment))
        store("crop_scale", check_crop_scale(self.crop_scale))
        store("hflip", check_probability("hflip", self.hflip))
        crop_pct = self.crop_pct
        if not (is_number(crop_pct) and 0.0 < crop_pct <= 1.0):
            raise DataConfigError(
                "crop_pct", "a number in (0, 1] (the eval crop's share of the resized side)", crop_pct
            )
        store("crop_pct", float(crop_pct))
        if not (self.exif_orientation is None or isinstance(self.exif_orientation, bool)):
            raise DataConfigError("exif_orientation", "True, False or None (predict only)", self.exif_orientation)
        if self.backend not in BACKENDS:
            raise DataConfigError("backend", f"one of {', '.join(BACKENDS)}", self.backend)
        threads = default_threads() if self.num_threads is None else self.num_threads
        store("num_threads", check_positive_int("num_threads", threads))

    @property
    def rand_augment_spec(self) -> str:
        """The train RandAugment as a timm spec string, or "none"."""
        return self.rand_augment.to_timm() if self.rand_augment else "none"

    def replace(self, **changes: Any) -> LoaderConfig:
        """A copy with `changes` applied (and validated)."""
        return dataclasses.replace(self, **changes)
