"""fastdeit: fast DeiT models, fused Triton kernels, DALI data pipelines, distillation training, inference.

    import fastdeit
    model = fastdeit.create_model("deit_small_distilled_patch16_224", checkpoint="deit_small_distilled.pth")

`fastdeit.ops` (the fused kernels) and `fastdeit.patch` import triton on first use only.
"""

import importlib
from typing import Any

from fastdeit._version import __version__
from fastdeit.checkpoint import from_pretrained, load_checkpoint, save_hf, save_pretrained
from fastdeit.models import VisionTransformer, create_model, list_models

_LAZY = {
    "ops": ("fastdeit.ops", None),
    "patch": ("fastdeit.patching", "patch"),
    "Predictor": ("fastdeit.predict", "Predictor"),
    "export_model": ("fastdeit.export", "export_model"),
}

__all__ = [
    "Predictor",
    "VisionTransformer",
    "__version__",
    "create_model",
    "export_model",
    "from_pretrained",
    "list_models",
    "load_checkpoint",
    "ops",
    "patch",
    "save_hf",
    "save_pretrained",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'fastdeit' has no attribute {name!r}")
    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value
