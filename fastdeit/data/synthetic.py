"""Random batches generated directly on the device, for throughput runs that must not wait on data."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from fastdeit.data.common import check_positive_int, check_rank, derive_seed


class SyntheticLoader:
    """Yields `(images, labels)` like the file loaders, made up on `device`.

    images: (B, 3, img_size, img_size) float32 standard normal (the scale of normalized images);
    labels: (B,) int64 uniform in [0, num_classes). Batch `step` of `epoch` depends only on
    (seed, epoch, rank, step), so resuming with `set_epoch(epoch, start_step)` is exact.

    Args:
        num_samples: samples per epoch over all ranks; each rank yields
            (num_samples // world_size) // batch_size full batches.
    """

    backend = "synthetic"

    def __init__(
        self,
        *,
        num_classes: int,
        num_samples: int,
        img_size: int,
        batch_size: int,
        device: str | torch.device = "cpu",
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
    ) -> None:
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.num_samples = check_positive_int("num_samples", num_samples)
        self.img_size = check_positive_int("img_size", img_size)
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.rank, self.world_size = check_rank(rank, world_size)
        self.device = torch.device(device)
        self.seed = seed
        self.epoch = 0
        self.start_step = 0
        self.skipped_files: dict[str, str] = {}
        if len(self) == 0:
            raise ValueError(
                f"batch_size={batch_size} is larger than the {num_samples // self.world_size} samples per rank "
                f"(num_samples={num_samples}, world_size={self.world_size})"
            )

    def __len__(self) -> int:
        return (self.num_samples // self.world_size) // self.batch_size

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Make iterations yield `epoch`; the next one only from batch `start_step` on."""
        if not 0 <= start_step <= len(self):
            raise ValueError(f"start_step must be in [0, {len(self)}], got {start_step!r}")
        self.epoch, self.start_step = epoch, start_step

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator(device=self.device)
        shape = (self.batch_size, 3, self.img_size, self.img_size)
        start_step, self.start_step = self.start_step, 0
        for step in range(start_step, len(self)):
            gen.manual_seed(derive_seed(self.seed, self.epoch, self.rank, step))
            images = torch.randn(shape, generator=gen, device=self.device)
            labels = torch.randint(0, self.num_classes, (self.batch_size,), generator=gen, device=self.device)
            yield images, labels
