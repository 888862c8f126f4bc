"""fastdeit: fast DeiT models, fused Triton kernels, DALI data pipelines, distillation training, inference.

    import fastdeit
    model = fastdeit.create_model("deit_small_distilled_patch16_224", checkpoint="deit_small_distilled.pth")
    model = fastdeit.from_pretrained("runs/my_run")  # a training run, save_pretrained or Hugging Face folder

The public names are imported on first use: `import fastdeit` (and so `fastdeit --help`) imports neither torch nor
triton.
"""

import importlib
from typing import Any

from fastdeit._version import __version__

# name -> (module, attribute; None: the module itself)
_LAZY = {
    "VisionTransformer": ("fastdeit.models", "VisionTransformer"),
    "VisionTransformerConfig": ("fastdeit.models", "VisionTransformerConfig"),
    "create_model": ("fastdeit.models", "create_model"),
    "from_pretrained": ("fastdeit.models", "from_pretrained"),
    "list_models": ("fastdeit.models", "list_models"),
    "load_checkpoint": ("fastdeit.models", "load_checkpoint"),
    "load_model": ("fastdeit.models", "load_model"),
    "save_hf": ("fastdeit.models", "save_hf"),
    "save_pretrained": ("fastdeit.models", "save_pretrained"),
    "ops": ("fastdeit.ops", None),
    "patch": ("fastdeit.patching", "patch"),
    "patch_fastdeit": ("fastdeit.patching", "patch_fastdeit"),
    "patch_hf_deit": ("fastdeit.patching", "patch_hf_deit"),
    "patch_hf_vit": ("fastdeit.patching", "patch_hf_vit"),
    "patch_timm_vit": ("fastdeit.patching", "patch_timm_vit"),
    "Predictor": ("fastdeit.inference", "Predictor"),
    "export_model": ("fastdeit.export", "export_model"),
}

__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'fastdeit' has no attribute {name!r}")
    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
