"""The DeiT model zoo under timm's names: one small config per model, built by `create_model`."""

from __future__ import annotations

import difflib
import os
from typing import Any

from fastdeit.constants import DEFAULT_CROP_PCT, IMAGENET_MEAN, IMAGENET_STD
from fastdeit.models.deit import VisionTransformer

_TINY = dict(embed_dim=192, depth=12, num_heads=3)
_SMALL = dict(embed_dim=384, depth=12, num_heads=6)
_BASE = dict(embed_dim=768, depth=12, num_heads=12)

# Architecture of each model: the paper's Table 1 (head dim 64, mlp ratio 4, patch 16, qkv bias).
MODEL_CONFIGS: dict[str, dict[str, Any]] = {
    "deit_tiny_patch16_224": dict(_TINY, img_size=224, distilled=False),
    "deit_small_patch16_224": dict(_SMALL, img_size=224, distilled=False),
    "deit_base_patch16_224": dict(_BASE, img_size=224, distilled=False),
    "deit_base_patch16_384": dict(_BASE, img_size=384, distilled=False),
    "deit_tiny_distilled_patch16_224": dict(_TINY, img_size=224, distilled=True),
    "deit_small_distilled_patch16_224": dict(_SMALL, img_size=224, distilled=True),
    "deit_base_distilled_patch16_224": dict(_BASE, img_size=224, distilled=True),
    "deit_base_distilled_patch16_384": dict(_BASE, img_size=384, distilled=True),
}

# Constructor arguments a caller may override through create_model(**kwargs).
_OVERRIDABLE = {
    "img_size",
    "patch_size",
    "in_chans",
    "embed_dim",
    "depth",
    "num_heads",
    "mlp_ratio",
    "qkv_bias",
    "drop_rate",
    "pos_drop_rate",
    "proj_drop_rate",
    "attn_drop_rate",
    "dynamic_img_size",
    "norm_layer",
    "attn_layer",
    "mlp_layer",
}


def list_models() -> list[str]:
    """The names of the DeiT models fastdeit builds (timm's names)."""
    return sorted(MODEL_CONFIGS)


def model_config(name: str) -> dict[str, Any]:
    """The architecture config of model `name` (a copy)."""
    if name not in MODEL_CONFIGS:
        close = difflib.get_close_matches(name, MODEL_CONFIGS, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}{hint} Available: {', '.join(list_models())}")
    return dict(MODEL_CONFIGS[name])


def pretrained_cfg(name: str, img_size: int | tuple[int, int], num_classes: int) -> dict[str, Any]:
    """Pre-processing a model expects, with timm's keys (eval crop ratio 0.875 at 224, 1.0 at 384 as timm)."""
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    return {
        "architecture": name,
        "input_size": (3, *size),
        "interpolation": "bicubic",
        "crop_pct": 1.0 if max(size) >= 384 else DEFAULT_CROP_PCT,
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "num_classes": num_classes,
    }


def create_model(
    name: str,
    *,
    num_classes: int = 1000,
    img_size: int | tuple[int, int] | None = None,
    checkpoint: str | os.PathLike | None = None,
    backend: str = "auto",
    drop_path_rate: float = 0.0,
    drop_head: bool = False,
    use_ema: bool = False,
    **kwargs: Any,
) -> VisionTransformer:
    """Build DeiT model `name` (see `list_models()`), optionally loading weights.

    Args:
        num_classes: classifier size (0: no head, `forward` returns pre-logits features).
        img_size: input size, default the model's; a checkpoint of another size has its position
            embedding resampled (bicubic, over the patch grid; cls/dist tokens kept).
        checkpoint: weights in any format `fastdeit.load_checkpoint` reads (timm/official DeiT .pth,
            Hugging Face DeiT/ViT, safetensors, fastdeit training checkpoints or `save_pretrained` folders).
        backend: "auto" (Triton kernels on CUDA, PyTorch elsewhere), "triton" or "torch".
        drop_path_rate: stochastic depth rate of the last block (linear in depth).
        drop_head: load a checkpoint whose head has another class count, keeping this model's fresh head.
        use_ema: load the EMA weights of a training checkpoint.
        kwargs: architecture overrides (embed_dim, depth, num_heads, patch_size, mlp_ratio, in_chans, ...).
    """
    cfg = model_config(name)
    unknown = sorted(set(kwargs) - _OVERRIDABLE)
    if unknown:
        raise ValueError(f"create_model got unknown arguments {unknown}; accepted: {sorted(_OVERRIDABLE)}")
    cfg.update(kwargs)
    if img_size is not None:
        cfg["img_size"] = img_size
    model = VisionTransformer(num_classes=num_classes, drop_path_rate=drop_path_rate, backend=backend, **cfg)
    model.model_name = name
    model.model_config = {k: v for k, v in cfg.items() if k not in ("norm_layer", "attn_layer", "mlp_layer")}
    model.model_config["num_classes"] = num_classes
    model.pretrained_cfg = pretrained_cfg(name, cfg["img_size"], num_classes)
    if checkpoint is not None:
        from fastdeit.checkpoint import load_checkpoint

        load_checkpoint(model, checkpoint, strict=True, drop_head=drop_head, use_ema=use_ema)
    return model
