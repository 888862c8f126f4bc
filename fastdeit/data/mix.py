"""Batch augmentations applied on the device after loading: Mixup/CutMix and RandomErasing (DeiT's settings).

DeiT's order is RandomErasing (per sample, on normalized images) then Mixup/CutMix on the batch.

Randomness: both take `generator`, a torch.Generator (its state is what a checkpoint saves to resume
exactly), an int seed, or None (fresh entropy). Each call draws one 62-bit seed from it; the host-side
choices (lambda, boxes) come from a NumPy generator and the noise from a device generator, both
seeded with it, so a call's result depends only on that seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from fastdeit.data.common import DataConfigError, check_positive_int, check_probability, is_number


class _CallSeeds:
    """One fresh seed per call, drawn from a torch.Generator, an int seed or OS entropy."""

    def __init__(self, generator: torch.Generator | int | None) -> None:
        self._torch = generator if isinstance(generator, torch.Generator) else None
        self._numpy = None if self._torch is not None else np.random.default_rng(generator)

    def next(self) -> int:
        if self._torch is not None:
            return int(torch.randint(0, 2**62, (1,), generator=self._torch, device=self._torch.device).item())
        return int(self._numpy.integers(0, 2**62))


def _check_batch(images: torch.Tensor, labels: torch.Tensor | None = None) -> None:
    if images.dim() != 4:
        raise ValueError(f"images must be a (B, C, H, W) tensor, got shape {tuple(images.shape)}")
    if labels is not None and (labels.dim() != 1 or labels.shape[0] != images.shape[0]):
        raise ValueError(f"labels must be a (B,) tensor with B={images.shape[0]}, got shape {tuple(labels.shape)}")


def smooth_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """labels (B,) -> (B, num_classes) float32: 1 - smoothing + smoothing / num_classes at the label,
    smoothing / num_classes elsewhere."""
    off = smoothing / num_classes
    targets = torch.full((labels.shape[0], num_classes), off, dtype=torch.float32, device=labels.device)
    return targets.scatter_(1, labels.long().unsqueeze(1), 1.0 - smoothing + off)


@dataclass(frozen=True)
class MixParams:
    """One batch's mixing: `kind` "none", "mixup" or "cutmix"; `lam` the weight of the unflipped batch
    (for cutmix, 1 - box area / image area); `box` (top, bottom, left, right) pasted from the flipped batch."""

    kind: Literal["none", "mixup", "cutmix"]
    lam: float
    box: tuple[int, int, int, int] | None = None


class Mixup:
    """timm's Mixup/CutMix in batch mode: every image is mixed with the image at the mirrored batch position.

    With probability `prob` a batch is mixed: by CutMix (lambda ~ Beta(cutmix_alpha, cutmix_alpha),
    a box of area (1 - lambda) pasted from the flipped batch, lambda then corrected to the clipped
    box's true area) with probability `switch_prob`, else by Mixup (lambda ~ Beta(mixup_alpha,
    mixup_alpha), images blended). Targets are the same blend of label-smoothed one-hot rows, so each
    row sums to 1. An alpha of 0 disables that kind.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        label_smoothing: float = 0.1,
        generator: torch.Generator | int | None = None,
    ) -> None:
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.check_settings(mixup_alpha, cutmix_alpha, prob, switch_prob, label_smoothing)
        self.mixup_alpha = float(mixup_alpha)
        self.cutmix_alpha = float(cutmix_alpha)
        self.prob = float(prob)
        self.switch_prob = float(switch_prob)
        self.label_smoothing = float(label_smoothing)
        self._seeds = _CallSeeds(generator)

    @staticmethod
    def check_settings(
        mixup_alpha: float, cutmix_alpha: float, prob: float, switch_prob: float, label_smoothing: float
    ) -> None:
        """Raise DataConfigError, named by the argument, unless the settings are in range (TrainConfig checks too)."""
        for name, value in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
            if not (is_number(value) and value >= 0):
                raise DataConfigError(name, "a number >= 0 (0 disables it)", value)
        for name, value in (("prob", prob), ("switch_prob", switch_prob)):
            check_probability(name, value)
        if not (is_number(label_smoothing) and 0 <= label_smoothing < 1):
            raise DataConfigError("label_smoothing", "a number in [0, 1)", label_smoothing)

    def sample(self, height: int, width: int) -> MixParams:
        """Draw the mixing of the next batch of `height` x `width` images."""
        rng = np.random.default_rng(self._seeds.next())
        enabled = self.mixup_alpha > 0 or self.cutmix_alpha > 0
        if not enabled or rng.random() >= self.prob:
            return MixParams("none", 1.0)
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            cutmix = bool(rng.random() < self.switch_prob)
        else:
            cutmix = self.cutmix_alpha > 0
        if not cutmix:
            return MixParams("mixup", float(rng.beta(self.mixup_alpha, self.mixup_alpha)))
        lam = float(rng.beta(self.cutmix_alpha, self.cutmix_alpha))
        cut = math.sqrt(1.0 - lam)
        cut_h, cut_w = int(height * cut), int(width * cut)
        cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
        top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
        left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
        lam = 1.0 - (bottom - top) * (right - left) / float(height * width)
        return MixParams("cutmix", lam, (top, bottom, left, right))

    def apply(self, images: torch.Tensor, labels: torch.Tensor, params: MixParams) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, C, H, W), labels (B,) int64 -> (mixed images (B, C, H, W), targets (B, num_classes) float32)."""
        _check_batch(images, labels)
        flipped = images.flip(0)
        if params.kind == "mixup":
            images = torch.lerp(flipped, images, params.lam)  # lam * images + (1 - lam) * flipped
        elif params.kind == "cutmix":
            top, bottom, left, right = params.box
            images = images.clone()
            images[:, :, top:bottom, left:right] = flipped[:, :, top:bottom, left:right]
        targets = smooth_one_hot(labels, self.num_classes, self.label_smoothing)
        if params.kind != "none":
            targets = params.lam * targets + (1.0 - params.lam) * targets.flip(0)
        return images, targets

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`apply` with freshly sampled params; see `apply` for shapes."""
        _check_batch(images, labels)
        return self.apply(images, labels, self.sample(images.shape[2], images.shape[3]))


class RandomErasing:
    """timm's RandomErasing in 'pixel' mode, on a normalized batch, each sample independently.

    With probability `prob` a sample gets one rectangle of area fraction U(min_area, max_area) and
    log-uniform aspect ratio in [min_aspect, 1 / min_aspect] (up to 10 tries to fit strictly inside
    the image), filled with per-pixel, per-channel standard normal noise.
    """

    attempts = 10

    def __init__(
        self,
        prob: float = 0.25,
        *,
        min_area: float = 0.02,
        max_area: float = 1.0 / 3.0,
        min_aspect: float = 0.3,
        generator: torch.Generator | int | None = None,
    ) -> None:
        self.check_settings(prob)
        if not 0 < min_area <= max_area <= 1:
            raise ValueError(f"need 0 < min_area <= max_area <= 1, got min_area={min_area!r}, max_area={max_area!r}")
        if not 0 < min_aspect <= 1:
            raise ValueError(f"min_aspect must be in (0, 1], got {min_aspect!r}")
        self.prob = float(prob)
        self.min_area = float(min_area)
        self.max_area = float(max_area)
        self.log_aspect = (math.log(min_aspect), -math.log(min_aspect))
        self._seeds = _CallSeeds(generator)

    @staticmethod
    def check_settings(prob: float) -> None:
        """Raise DataConfigError (field "prob") unless `prob` is a probability (TrainConfig checks too)."""
        check_probability("prob", prob)

    def sample(self, rng: np.random.Generator, batch: int, height: int, width: int) -> np.ndarray:
        """(batch, 4) int64 boxes (top, left, h, w); h = w = 0 where a sample is not erased."""
        boxes = np.zeros((batch, 4), dtype=np.int64)
        for i in range(batch):
            if rng.random() >= self.prob:
                continue
            for _ in range(self.attempts):
                area = rng.uniform(self.min_area, self.max_area) * height * width
                aspect = math.exp(rng.uniform(*self.log_aspect))
                h = int(round(math.sqrt(area * aspect)))
                w = int(round(math.sqrt(area / aspect)))
                if w < width and h < height:
                    boxes[i] = (rng.integers(0, height - h + 1), rng.integers(0, width - w + 1), h, w)
                    break
        return boxes

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W) -> a new tensor with the erased rectangles replaced by noise."""
        _check_batch(images)
        batch, channels, height, width = images.shape
        seed = self._seeds.next()
        boxes = self.sample(np.random.default_rng(seed), batch, height, width)
        if not boxes[:, 2].any():
            return images
        top, left, h, w = torch.from_numpy(boxes).to(images.device).unbind(1)
        rows = torch.arange(height, device=images.device)
        cols = torch.arange(width, device=images.device)
        in_rows = (rows >= top[:, None]) & (rows < (top + h)[:, None])  # (B, H)
        in_cols = (cols >= left[:, None]) & (cols < (left + w)[:, None])  # (B, W)
        mask = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]  # (B, 1, H, W)
        noise_gen = torch.Generator(device=images.device).manual_seed(seed)
        noise = torch.randn(images.shape, generator=noise_gen, device=images.device, dtype=images.dtype)
        return torch.where(mask, noise, images)
