"""DeiT's optimizer and learning-rate schedule: AdamW without decay on norms, biases, tokens and pos-embed;
linear warmup then cosine decay.

The schedule is timm's CosineLRScheduler as DeiT configures it (warmup_prefix off: the cosine is measured
from step 0, so warmup replaces its first part), but evaluated every step at the fractional epoch
instead of once per epoch: the same curve without the staircase. It is a pure function of the step, so a
checkpoint needs only the step to resume it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups: decayed weights, and the parameters DeiT trains without weight decay.

    No decay (timm's rule): every parameter with at most one dimension (norm weights, biases) and every
    name in `model.no_weight_decay()` (cls/dist tokens, pos_embed).
    """
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or name in skip else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(
    model: nn.Module,
    *,
    name: str,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    eps: float,
    device: torch.device,
) -> torch.optim.Optimizer:
    """AdamW over `param_groups(model, weight_decay)`.

    name: "adamw" is torch's, fused into one kernel per step on CUDA; "apex_fused_adam" is NVIDIA apex's
    FusedAdam in AdamW mode (CUDA only).
    """
    groups = param_groups(model, weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=device.type == "cuda")
    if name == "apex_fused_adam":
        try:
            from apex.optimizers import FusedAdam
        except ImportError as e:
            raise ImportError(
                "opt='apex_fused_adam' needs NVIDIA apex installed with its CUDA extensions "
                f"(https://github.com/NVIDIA/apex); it could not be imported: {e}. Use opt='adamw'."
            ) from e
        if device.type != "cuda":
            raise ValueError(f"opt='apex_fused_adam' runs on CUDA only, the device is {device}; use opt='adamw'")
        return FusedAdam(groups, lr=lr, betas=betas, eps=eps, adam_w_mode=True)
    raise ValueError(f"optimizer must be 'adamw' or 'apex_fused_adam', got {name!r}")


def scaled_lr(lr: float, global_batch: int) -> float:
    """DeiT's linear scaling rule: `lr` is the peak for a global batch of 512."""
    return lr * global_batch / 512.0


def cosine_lr(
    step: int, *, peak_lr: float, warmup_lr: float, min_lr: float, warmup_steps: int, total_steps: int
) -> float:
    """Learning rate of optimizer step `step` (0-based).

    step < warmup_steps: linear from warmup_lr (step 0) towards peak_lr;
    after: min_lr + (peak_lr - min_lr) * (1 + cos(pi * step / total_steps)) / 2, reaching min_lr at total_steps.
    """
    if step < warmup_steps:
        return warmup_lr + (peak_lr - warmup_lr) * step / warmup_steps
    progress = min(step / max(total_steps, 1), 1.0)
    return min_lr + 0.5 * (peak_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


DEIT_LR = 5e-4  # DeiT's peak lr for a global batch of 512 (main.py's default)
# Thresholds of `short_run_warnings`.
_WARMUP_SHARE = 0.5  # a warmup over more than this share of the run is flagged
_EMA_INITIAL_SHARE = 0.1  # an EMA whose final weights keep more than this share of the initial ones is flagged
_SUGGESTED_SHARE = 0.1  # suggestions: a warmup of a tenth of the run, an EMA averaging over a tenth of it


def short_run_warnings(
    *,
    warmup_epochs: float,
    lr: float,
    ema_decay: float | None,
    steps_per_epoch: int,
    total_steps: int,
    global_batch: int,
) -> list[str]:
    """What keeps DeiT's recipe, made for 300 ImageNet epochs, from training a short run: one message per cause,
    with the numbers and the setting to change. Empty for a run long enough for the recipe.

    - a warmup over more than half the run: the lr stays below its peak for most of it;
    - an EMA (decay d: it averages over ~1/(1-d) steps) whose final weights are still more than 10% the initial ones
      (d ** total_steps > 0.1): the EMA evaluated is mostly the untrained model;
    - with either of those, DeiT's lr (DEIT_LR) scaled down by its rule (global batch / 512) is named too: a short
      run at a small batch gets a small fraction of it (an lr the user chose is left alone).
    ema_decay: None without an EMA.
    """
    warnings = []
    warmup_steps = round(warmup_epochs * steps_per_epoch)
    if warmup_steps > _WARMUP_SHARE * total_steps:
        suggested = max(round(_SUGGESTED_SHARE * total_steps), 1) / steps_per_epoch
        warnings.append(
            f"warmup {warmup_epochs:g} epochs = {warmup_steps} steps of the run's {total_steps}: the lr stays below "
            f"its peak for more than half the run; --warmup-epochs {suggested:.2g}"
        )
    if ema_decay is not None and ema_decay**total_steps > _EMA_INITIAL_SHARE:
        horizon = 1 / (1 - ema_decay) if ema_decay < 1 else math.inf
        suggested = 1 - 1 / (_SUGGESTED_SHARE * total_steps)
        fix = f"--model-ema-decay {suggested:.4g} or --model-ema false" if suggested > 0 else "--model-ema false"
        warnings.append(
            f"EMA decay {ema_decay:g} averages over ~{horizon:,.0f} steps, the run has {total_steps}: its final "
            f"weights are still {ema_decay**total_steps:.0%} the initial weights; {fix}"
        )
    if warnings and lr == DEIT_LR and global_batch < 512:
        peak = scaled_lr(lr, global_batch)
        warnings.append(
            f"lr {lr:g} x global batch {global_batch} / 512 = {peak:.3g} (DeiT's lr and scaling, made for 300 epochs "
            f"at batch 1024): a run of {total_steps} steps likely needs a larger --lr"
        )
    return warnings
