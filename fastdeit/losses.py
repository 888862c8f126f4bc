"""Training losses of the DeiT recipe.

Criterion choice, as in DeiT's main.py: SoftTargetCrossEntropy when Mixup/CutMix produce soft targets;
else label-smoothed cross-entropy, which is `torch.nn.CrossEntropyLoss(label_smoothing=0.1)`
(the same value as timm's LabelSmoothingCrossEntropy: (1 - s) * nll + s * mean over classes of
-log p); see `build_criterion`. DistillationLoss wraps either one.

The distillation term takes the teacher's answer as a TeacherOutput: full logits from a live teacher, or what a
teacher cache (fastdeit.training.teacher_cache) stores, the argmax labels and optionally the top-k logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
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


@dataclass(frozen=True)
class TeacherOutput:
    """The teacher's answer for a batch of B images, in one of the forms the distillation term takes.

    Attributes:
        logits: (B, C) the full logits (a live teacher).
        labels: (B,) int64 the argmax classes (hard distillation; what a teacher cache always stores).
        topk_values: (B, k) the k largest logits, in decreasing order, and topk_indices (B, k) int64 their classes
            (a teacher cache recorded with top-k; see `topk_soft_kl`).
        topk_tail_logmass: (B,) log of the teacher's probability outside its top k, at the temperature the cache was
            recorded for (None: unknown, the top k are renormalised).
    """

    logits: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    topk_values: torch.Tensor | None = None
    topk_indices: torch.Tensor | None = None
    topk_tail_logmass: torch.Tensor | None = None

    def hard_labels(self) -> torch.Tensor:
        """(B,) int64: the recorded labels, else the argmax of the logits."""
        if self.labels is not None:
            return self.labels
        if self.logits is None:
            raise ValueError("a TeacherOutput needs logits or labels for hard distillation, got neither")
        return self.logits.argmax(dim=1)


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """DeiT's soft distillation term: KL(softmax(teacher / tau) || softmax(student / tau)) summed over the batch and
    classes, x tau^2 / student_logits.numel(). student_logits, teacher_logits (B, C) -> scalar."""
    return (
        F.kl_div(
            F.log_softmax(student_logits / tau, dim=1),
            F.log_softmax(teacher_logits / tau, dim=1),
            reduction="sum",
            log_target=True,
        )
        * (tau * tau)
        / student_logits.numel()
    )


def topk_tail_logmass(logits: torch.Tensor, topk_indices: torch.Tensor, tau: float) -> torch.Tensor:
    """log of softmax(logits / tau)'s mass outside the classes `topk_indices`: logits (B, C), topk_indices (B, k)
    -> (B,) fp32, -inf when k = C. Computed as a difference of logsumexps, so a tiny tail keeps its precision."""
    scaled = logits.float() / tau
    tail = scaled.scatter(1, topk_indices, float("-inf"))
    return torch.logsumexp(tail, dim=1) - torch.logsumexp(scaled, dim=1)


def topk_soft_kl(
    student_logits: torch.Tensor,
    topk_values: torch.Tensor,
    topk_indices: torch.Tensor,
    tau: float,
    tail_logmass: torch.Tensor | None = None,
) -> torch.Tensor:
    """`soft_kl` with the teacher known only by its top-k logits (and optionally the mass of the rest).

    The teacher's distribution P is taken as: on its top k classes, softmax(topk_values / tau) x (1 - m); on each
    of the other C - k classes, m / (C - k), with m = exp(tail_logmass) the mass outside the top k (a uniform tail).
    Without tail_logmass, m = 0: the top k are renormalised and the other classes dropped. The result is
    KL(P || softmax(student / tau)) summed, x tau^2 / student_logits.numel(), like `soft_kl`; with k = C both equal
    it. The error of each choice against the full distribution is measured in the README.

    student_logits (B, C), topk_values (B, k), topk_indices (B, k) int64, tail_logmass (B,) or None -> scalar.
    """
    batch, classes = student_logits.shape
    k = topk_values.shape[-1]
    if topk_values.shape != topk_indices.shape or topk_values.shape[0] != batch:
        raise ValueError(
            f"top-k values {tuple(topk_values.shape)} and indices {tuple(topk_indices.shape)} must both be (B, k) "
            f"with the student's B={batch}"
        )
    if tail_logmass is not None and tail_logmass.shape != (batch,):
        raise ValueError(f"tail_logmass must be ({batch},), got {tuple(tail_logmass.shape)}")
    values = topk_values.to(torch.promote_types(topk_values.dtype, torch.float32))  # fp16 from a cache: fp32
    log_p = F.log_softmax(values / tau, dim=1)
    log_q_all = F.log_softmax(student_logits / tau, dim=1)
    log_q = log_q_all.gather(1, topk_indices)
    kl = 0.0
    if tail_logmass is not None and k < classes:
        # exp(-1000) is 0: an empty tail (-inf) then adds exact zeros rather than 0 x inf.
        log_m = tail_logmass.to(log_q_all.dtype).clamp_min(-1000.0)[:, None]
        log_p = log_p + torch.log1p(-log_m.exp())  # the top k share 1 - m
        log_u = log_m - math.log(classes - k)  # each tail class: m / (C - k)
        tail_log_q = log_q_all.sum(1, keepdim=True) - log_q.sum(1, keepdim=True)  # sum of log q over the tail
        kl = (log_u.exp() * ((classes - k) * log_u - tail_log_q)).sum()
    kl = kl + (log_p.exp() * (log_p - log_q)).sum()
    return kl * (tau * tau) / student_logits.numel()


def build_criterion(*, mixup_active: bool, label_smoothing: float = 0.1) -> nn.Module:
    """DeiT's base criterion: soft-target CE under Mixup/CutMix, else (label-smoothed) CE on int labels."""
    if mixup_active:
        return SoftTargetCrossEntropy()
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
    return nn.CrossEntropyLoss(label_smoothing=label_smoothing)


class DistillationLoss(nn.Module):
    """DeiT's distillation loss: base_criterion on the class head plus a teacher term on the distillation head.

    forward(inputs, outputs, labels, teacher_output=None):
        inputs: (B, 3, H, W) the student's (possibly mixed) input batch; the teacher sees the same.
        outputs: the student's logits: a (cls (B, C), dist (B, C)) pair from a *_distilled_* model in
            training mode, or a (B, C) tensor when distillation_type is "none".
        labels: whatever base_criterion takes ((B,) int64, or (B, C) soft targets).
        teacher_output: the teacher's answer for `inputs` when the caller has it (a teacher cache, or a teacher
            run elsewhere); None runs `teacher` on `inputs`.
    Returns the scalar base * (1 - alpha) + distill * alpha, where distill is
        soft: `soft_kl(dist, teacher logits, tau)`, or `topk_soft_kl` when the teacher output holds only top-k logits
        hard: cross-entropy of dist against the teacher's argmax (or its recorded labels).
    With "none", returns base_criterion(cls, labels) alone.

    `teacher` may be None when every call passes `teacher_output`. It runs under torch.no_grad() and always in eval
    mode: `train()` on this module leaves it in eval.
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
        self,
        inputs: torch.Tensor,
        outputs: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
        labels: torch.Tensor,
        teacher_output: TeacherOutput | None = None,
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
        if teacher_output is None:
            teacher_output = self._run_teacher(inputs)
        if teacher_output.logits is not None and teacher_output.logits.shape != dist_logits.shape:
            raise ValueError(
                f"teacher logits have shape {tuple(teacher_output.logits.shape)} but the student's distillation head "
                f"has {tuple(dist_logits.shape)}: teacher and student must predict the same number of classes"
            )
        if self.distillation_type == "hard":
            distill = F.cross_entropy(dist_logits, teacher_output.hard_labels())
        elif teacher_output.logits is not None:
            distill = soft_kl(dist_logits, teacher_output.logits, self.tau)
        elif teacher_output.topk_values is not None and teacher_output.topk_indices is not None:
            distill = topk_soft_kl(
                dist_logits,
                teacher_output.topk_values,
                teacher_output.topk_indices,
                self.tau,
                teacher_output.topk_tail_logmass,
            )
        else:
            raise ValueError(
                "soft distillation needs the teacher's logits (full, or top-k values and indices); the teacher output "
                "holds hard labels only"
            )
        return base_loss * (1.0 - self.alpha) + distill * self.alpha

    def _run_teacher(self, inputs: torch.Tensor) -> TeacherOutput:
        if self.teacher is None:
            raise ValueError(
                f"distillation_type={self.distillation_type!r} needs a teacher model or a teacher_output per call; "
                "got neither"
            )
        with torch.no_grad():
            logits = self.teacher(inputs)
        if not isinstance(logits, torch.Tensor):
            raise ValueError(f"the teacher must return a logits tensor, got {type(logits).__name__}")
        return TeacherOutput(logits=logits)
