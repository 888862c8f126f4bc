"""Training losses of the DeiT recipe.

Criterion choice, as in DeiT's main.py: SoftTargetCrossEntropy when Mixup/CutMix produce soft targets;
else label-smoothed cross-entropy, which is `torch.nn.CrossEntropyLoss(label_smoothing=0.1)`
(the same value as timm's LabelSmoothingCrossEntropy: (1 - s) * nll + s * mean over classes of
-log p); see `build_criterion`. DistillationLoss wraps either one.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

DistillationType = Literal["none", "soft", "hard"]
DISTILLATION_TYPES: tuple[str, ...] = ("none", "soft", "hard")


class SoftTargetCrossEntropy(nn.Module):
    """Cross-entropy against soft targets: mean over the batch of sum_c -target[b, c] * log_softmax(logits)[b, c].

    logits (B, C), target (B, C) (rows summing to 1, e.g. from Mixup) -> scalar.
    """

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape != target.shape:
            raise ValueError(
                f"soft targets must have the logits' shape {tuple(logits.shape)}, got {tuple(target.shape)}"
            )
        return torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()


def build_criterion(*, mixup_active: bool, label_smoothing: float = 0.1) -> nn.Module:
    """DeiT's base criterion: soft-target CE under Mixup/CutMix, else (label-smoothed) CE on int labels."""
    if mixup_active:
        return SoftTargetCrossEntropy()
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
    return nn.CrossEntropyLoss(label_smoothing=label_smoothing)


class DistillationLoss(nn.Module):
    """DeiT's distillation loss: base_criterion on the class head plus a teacher term on the distillation head.

    forward(inputs, outputs, labels):
        inputs: (B, 3, H, W) the student's (possibly mixed) input batch; the teacher sees the same.
        outputs: the student's logits: a (cls (B, C), dist (B, C)) pair from a *_distilled_* model in
            training mode, or a (B, C) tensor when distillation_type is "none".
        labels: whatever base_criterion takes ((B,) int64, or (B, C) soft targets).
    Returns the scalar base * (1 - alpha) + distill * alpha, where distill is
        soft: KL(softmax(teacher / tau) || softmax(dist / tau)) summed, * tau^2 / dist.numel()
        hard: cross-entropy of dist against the teacher's argmax.
    With "none", returns base_criterion(cls, labels) alone.

    The teacher runs under torch.no_grad() and always in eval mode: `train()` on this module leaves it in eval.
    """

    def __init__(
        self,
        base_criterion: nn.Module,
        teacher: nn.Module | None,
        distillation_type: DistillationType,
        alpha: float,
        tau: float,
    ) -> None:
        super().__init__()
        if distillation_type not in DISTILLATION_TYPES:
            raise ValueError(f"distillation_type must be one of {DISTILLATION_TYPES}, got {distillation_type!r}")
        if distillation_type != "none" and teacher is None:
            raise ValueError(f"distillation_type={distillation_type!r} needs a teacher model, got teacher=None")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
        if not tau > 0.0:
            raise ValueError(f"tau must be > 0, got {tau!r}")
        self.base_criterion = base_criterion
        self.teacher = teacher
        self.distillation_type = distillation_type
        self.alpha = float(alpha)
        self.tau = float(tau)
        if teacher is not None:
            teacher.eval()

    def train(self, mode: bool = True) -> DistillationLoss:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def forward(
        self, inputs: torch.Tensor, outputs: torch.Tensor | tuple[torch.Tensor, torch.Tensor], labels: torch.Tensor
    ) -> torch.Tensor:
        dist_logits = None
        if not isinstance(outputs, torch.Tensor):
            if not (isinstance(outputs, tuple | list) and len(outputs) == 2):
                raise ValueError(
                    f"outputs must be a logits tensor or a (cls, dist) pair of tensors, got {type(outputs).__name__}"
                    + (f" of length {len(outputs)}" if isinstance(outputs, tuple | list) else "")
                )
            outputs, dist_logits = outputs
        base_loss = self.base_criterion(outputs, labels)
        if self.distillation_type == "none":
            return base_loss
        if dist_logits is None:
            raise ValueError(
                f"distillation_type={self.distillation_type!r} needs a *_distilled_* model whose forward returns "
                f"(cls_logits, dist_logits) in training mode; got a single tensor of shape {tuple(outputs.shape)}"
            )
        with torch.no_grad():
            teacher_logits = self.teacher(inputs)
        if not isinstance(teacher_logits, torch.Tensor):
            raise ValueError(f"the teacher must return a logits tensor, got {type(teacher_logits).__name__}")
        if teacher_logits.shape != dist_logits.shape:
            raise ValueError(
                f"teacher logits have shape {tuple(teacher_logits.shape)} but the student's distillation head has "
                f"{tuple(dist_logits.shape)}: teacher and student must predict the same number of classes"
            )
        if self.distillation_type == "soft":
            t = self.tau
            distill = (
                F.kl_div(
                    F.log_softmax(dist_logits / t, dim=1),
                    F.log_softmax(teacher_logits / t, dim=1),
                    reduction="sum",
                    log_target=True,
                )
                * (t * t)
                / dist_logits.numel()
            )
        else:
            distill = F.cross_entropy(dist_logits, teacher_logits.argmax(dim=1))
        return base_loss * (1.0 - self.alpha) + distill * self.alpha
