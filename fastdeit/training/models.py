"""Building the model a run trains (a DeiT, or the demo's convnet) and loading starting weights into it."""

from __future__ import annotations

import os
from typing import Any

from torch import nn

import fastdeit
from fastdeit.checkpoint import load_state_dict, read_checkpoint
from fastdeit.models import VisionTransformer
from fastdeit.models.convnet import create_convnet, is_convnet, load_convnet_weights


def build_model(
    name: str,
    *,
    num_classes: int,
    img_size: int | None = None,
    backend: str = "auto",
    drop_path_rate: float = 0.0,
    **overrides: Any,
) -> nn.Module:
    """DeiT `name` via fastdeit.create_model (architecture `overrides` such as embed_dim, depth, patch_size),
    or a convnet of fastdeit.models.convnet (which takes no overrides and any input size).

    The model carries `model_name` and `model_config` (plain types): `build_model(model_name, **model_config)`
    rebuilds it, which is how a teacher is rebuilt from a training checkpoint.
    """
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if is_convnet(name):
        arch = sorted(set(overrides) - {"in_chans", "drop_rate"})
        if arch:
            raise ValueError(f"convnet {name!r} takes no DeiT architecture overrides, got {arch}")
        return create_convnet(name, num_classes=num_classes, **overrides)
    overrides.pop("distilled", None)  # part of the name, recorded in model_config for information
    return fastdeit.create_model(
        name, num_classes=num_classes, img_size=img_size, backend=backend, drop_path_rate=drop_path_rate, **overrides
    )


def load_finetune_weights(model: nn.Module, path: str | os.PathLike, *, allow_new_head: bool = True) -> str:
    """Start `model` from the weights in `path` (any format fastdeit reads). Returns what was done, for the log.

    DeiT: a position embedding of another grid is resampled (fine-tuning at 384); a head of another class
    count is replaced by the model's fresh one when `allow_new_head` (fine-tuning on another dataset), and is
    an error otherwise (evaluating). Convnets load strictly.
    """
    if not isinstance(model, VisionTransformer):
        load_convnet_weights(model, path)
        return f"loaded {path}"
    state, fmt = read_checkpoint(path)  # read once: the head's class count decides how to load
    head = state.get("head.weight")
    stored = None if head is None else int(head.shape[0])
    new_head = allow_new_head and stored is not None and stored != model.num_classes
    result = load_state_dict(model, state, fmt=fmt, path=path, strict=True, drop_head=new_head)
    notes = [f"loaded {path} ({result.format})"]
    if result.resampled_pos_embed:
        notes.append(f"pos_embed resampled {result.resampled_pos_embed[0]} -> {result.resampled_pos_embed[1]}")
    if result.dropped_head:
        notes.append(f"new {model.num_classes}-class head (the checkpoint's has {stored} classes)")
    return ", ".join(notes)
