"""The DeiT model zoo under timm's names: the architecture of each model (built by `fastdeit.create_model`)."""

from __future__ import annotations

from typing import Any

from fastdeit.text import did_you_mean

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


def list_models() -> list[str]:
    """The names of the DeiT models fastdeit builds (timm's names)."""
    return sorted(MODEL_CONFIGS)


def model_config(name: str) -> dict[str, Any]:
    """The architecture of model `name` (a copy): the `VisionTransformerConfig` fields it sets."""
    if name not in MODEL_CONFIGS:
        raise ValueError(
            f"unknown model {name!r}{did_you_mean(name, MODEL_CONFIGS)} Available: {', '.join(list_models())}"
        )
    return dict(MODEL_CONFIGS[name])
