"""Random batches generated directly on the device, for throughput runs that must not wait on data."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from fastdeit.data.common import check_positive_int, check_rank, derive_seed
from fastdeit.data.config import LoaderConfig


class SyntheticLoader:
    """Yields `(images, labels)` like the file loaders, made up on `device`.

    images: (B, 3, img_size, img_size) float32 standard normal (the scale of normalized images);
    labels: (B,) int64 uniform in [0, num_classes). Batch `step` of `epoch` depends only on
    (seed, epoch, rank, step), so resuming with `set_epoch(epoch, start_step)` is exact.

    Args:
        config: img_size, batch_size and seed are used; the rest concerns image files.
        num_classes: labels are drawn from [0, num_classes).
        num_samples: samples per epoch over all ranks; each rank yields
            (num_samples // world_size) // batch_size full batches.
    """

    backend = "synthetic"

    def __init__(
        self,
        config: LoaderConfig,
        *,
        num_classes: int,
        num_samples: int,
        device: str | torch.device = "cpu",
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not isinstance(config, LoaderConfig):
            raise TypeError(f"config must be a LoaderConfig, got {type(config).__name__}")
        self.config = config
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.num_samples = check_positive_int("num_samples", num_samples)
        self.rank, self.world_size = check_rank(rank, world_size)
        self.device = torch.device(device)
        self.epoch = 0
        self.start_step = 0
        self.skipped_files: dict[str, str] = {}
        if len(self) == 0:
            raise ValueError(
                f"batch_size={config.batch_size} is larger than the {num_samples // self.world_size} samples per "
                f"rank (num_samples={num_samples}, world_size={self.world_size})"
            )

    def __len__(self) -> int:
        return (self.num_samples // self.world_size) // self.config.batch_size

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Make iterations yield `epoch`; the next one only from batch `start_step` on."""
        if not 0 <= start_step <= len(self):
            raise ValueError(f"start_step must be in [0, {len(self)}], got {start_step!r}")
        self.epoch, self.start_step = epoch, start_step

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator(device=self.device)
        cfg = self.config
        shape = (cfg.batch_size, 3, cfg.img_size, cfg.img_size)
        start_step, self.start_step = self.start_step, 0
        for step in range(start_step, len(self)):
            gen.manual_seed(derive_seed(cfg.seed, self.epoch, self.rank, step))
            images = torch.randn(shape, generator=gen, device=self.device)
            labels = torch.randint(0, self.num_classes, (cfg.batch_size,), generator=gen, device=self.device)
            yield images, labels
