"""DeiT's schedule (warmup from 1e-6, cosine to min_lr) and its weight-decay groups."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from fastdeit.models.convnet import create_convnet
from fastdeit.training import build_optimizer, cosine_lr, param_groups, scaled_lr, short_run_warnings
from tests.helpers import small_model

SCHEDULE = dict(peak_lr=1e-3, warmup_lr=1e-6, min_lr=1e-5, warmup_steps=50, total_steps=1000)


def test_warmup_starts_at_warmup_lr_and_rises_linearly():
    assert cosine_lr(0, **SCHEDULE) == pytest.approx(1e-6)
    assert cosine_lr(25, **SCHEDULE) == pytest.approx(1e-6 + (1e-3 - 1e-6) / 2)
    lrs = [cosine_lr(s, **SCHEDULE) for s in range(51)]
    assert all(a < b for a, b in zip(lrs, lrs[1:50], strict=False))


def test_cosine_after_warmup_is_timms_formula_at_fractional_epochs():
    # timm's CosineLRScheduler without warmup_prefix: the cosine counts from step 0, so at the end of the
    # warmup the lr is already slightly below the peak.
    at_end_of_warmup = 1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * 50 / 1000))
    assert cosine_lr(50, **SCHEDULE) == pytest.approx(at_end_of_warmup)
    assert cosine_lr(500, **SCHEDULE) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))
    assert cosine_lr(1000, **SCHEDULE) == pytest.approx(1e-5)
    assert cosine_lr(5000, **SCHEDULE) == pytest.approx(1e-5)  # past the end it stays at min_lr
    lrs = [cosine_lr(s, **SCHEDULE) for s in range(50, 1001)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))


def test_no_warmup():
    assert cosine_lr(0, **{**SCHEDULE, "warmup_steps": 0}) == pytest.approx(1e-3)


def test_lr_scales_with_the_global_batch():
    assert scaled_lr(5e-4, 1024) == pytest.approx(1e-3)
    assert scaled_lr(5e-4, 512) == pytest.approx(5e-4)


def test_no_decay_on_norms_biases_tokens_and_pos_embed():
    model = small_model(distilled=True)
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    decay_names = {names[id(p)] for p in decay["params"]}
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.05, 0.0)
    assert {
        "cls_token",
        "dist_token",
        "pos_embed",
        "norm.weight",
        "norm.bias",
        "head.bias",
        "head_dist.bias",
        "patch_embed.proj.bias",
        "blocks.0.norm1.weight",
        "blocks.0.attn.qkv.bias",
    } <= no_decay_names
    # Exactly the matrices and conv kernels decay.
    assert decay_names == {n for n, p in model.named_parameters() if p.ndim > 1 and n not in model.no_weight_decay()}
    assert "patch_embed.proj.weight" in decay_names and "blocks.1.mlp.fc2.weight" in decay_names
    assert len(decay_names) + len(no_decay_names) == len(list(model.parameters()))


def test_convnet_groups_decay_kernels_only():
    model = create_convnet("convnet_tiny", num_classes=10)
    decay, no_decay = param_groups(model, 0.05)
    assert all(p.ndim == 4 for p in decay["params"][:-1]) and decay["params"][-1].ndim == 2  # convs, then the head
    assert all(p.ndim == 1 for p in no_decay["params"])


def test_adamw_carries_the_groups():
    model = small_model()
    opt = build_optimizer(
        model, name="adamw", lr=1e-3, weight_decay=0.05, betas=(0.9, 0.999), eps=1e-8, device=torch.device("cpu")
    )
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]


@pytest.mark.skipif(importlib.util.find_spec("apex") is not None, reason="apex is installed")
def test_apex_asked_for_but_missing_is_a_clear_error():
    with pytest.raises(ImportError, match="opt='apex_fused_adam' needs NVIDIA apex"):
        build_optimizer(
            small_model(),
            name="apex_fused_adam",
            lr=1e-3,
            weight_decay=0.05,
            betas=(0.9, 0.999),
            eps=1e-8,
            device=torch.device("cpu"),
        )


# --- the recipe on a short run -------------------------------------------------------------------------------------

RECIPE = dict(warmup_epochs=5.0, lr=5e-4, ema_decay=0.99996)  # DeiT's defaults (TrainConfig's)


def test_the_default_recipe_on_a_short_run_is_flagged_with_numbers_and_fixes():
    # 3 epochs of 100 steps at batch 64: warmup, EMA and the scaled lr each keep the model from training.
    warnings = short_run_warnings(**RECIPE, steps_per_epoch=100, total_steps=300, global_batch=64)
    assert len(warnings) == 3, warnings
    warmup, ema, lr = warnings
    assert "warmup 5 epochs = 500 steps of the run's 300" in warmup and "--warmup-epochs 0.3" in warmup
    assert "EMA decay 0.99996 averages over ~25,000 steps, the run has 300" in ema
    assert "99% the initial weights" in ema and "--model-ema-decay 0.9667 or --model-ema false" in ema
    assert "lr 0.0005 x global batch 64 / 512 = 6.25e-05" in lr and "--lr" in lr


def test_the_full_recipe_is_not_flagged():
    # ImageNet-1k, 300 epochs: 1,251 steps per epoch at a global batch of 1024, or 20,018 at 64 (one GPU).
    for global_batch, steps_per_epoch in ((1024, 1251), (64, 20018)):
        run = dict(steps_per_epoch=steps_per_epoch, total_steps=300 * steps_per_epoch, global_batch=global_batch)
        assert short_run_warnings(**RECIPE, **run) == []


def test_each_cause_is_flagged_on_its_own():
    run = dict(steps_per_epoch=100, total_steps=300, global_batch=64)
    fixed = dict(warmup_epochs=0.3, lr=5e-4, ema_decay=0.9667)  # the suggested values
    assert short_run_warnings(**fixed, **run) == []  # a scaled-down lr alone is the user's choice: not flagged
    assert short_run_warnings(**{**fixed, "ema_decay": None}, **run) == []  # no EMA
    long_warmup = {**fixed, "warmup_epochs": 2.0}
    assert [w.split()[0] for w in short_run_warnings(**long_warmup, **run)] == ["warmup", "lr"]
    assert [w.split()[0] for w in short_run_warnings(**long_warmup, **{**run, "global_batch": 512})] == ["warmup"]
    assert [w.split()[0] for w in short_run_warnings(**{**long_warmup, "lr": 1e-3}, **run)] == ["warmup"]  # chosen
