"""Small models shared by the tests (full-size DeiT is too slow for most CPU tests)."""

from __future__ import annotations

from typing import Any

import fastdeit

SMALL = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, num_classes=10)


def small_model(distilled: bool = True, **overrides: Any) -> fastdeit.VisionTransformer:
    """A 2-block DeiT on 32x32 images (16 patches of 8x8, width 64, 2 heads), torch backend by default."""
    name = "deit_tiny_distilled_patch16_224" if distilled else "deit_tiny_patch16_224"
    kwargs: dict[str, Any] = dict(SMALL, backend="torch")
    kwargs.update(overrides)
    return fastdeit.create_model(name, **kwargs)
