"""DeiT models built from `fastdeit.layers`; this package never imports triton."""

from fastdeit.constants import IMAGENET_MEAN, IMAGENET_STD
from fastdeit.models.deit import VisionTransformer
from fastdeit.models.pos_embed import resample_pos_embed
from fastdeit.models.registry import MODEL_CONFIGS, create_model, list_models, model_config, pretrained_cfg

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MODEL_CONFIGS",
    "VisionTransformer",
    "create_model",
    "list_models",
    "model_config",
    "pretrained_cfg",
    "resample_pos_embed",
]
