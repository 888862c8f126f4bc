"""DeiT models built from `fastdeit.layers`, their configs, and loading and saving them; this package never imports
triton.

Imports run one way: config <- deit, convnet <- checkpoint (the state-dict side: read, convert, load into a
module) <- build (the model-building side: create_model, from_pretrained, load_model, save_pretrained, save_hf).
"""

from fastdeit.constants import IMAGENET_MEAN, IMAGENET_STD
from fastdeit.models.build import create_model, from_pretrained, load_model, save_hf, save_pretrained
from fastdeit.models.checkpoint import Checkpoint, LoadResult, load_checkpoint, read_checkpoint
from fastdeit.models.config import VisionTransformerConfig
from fastdeit.models.deit import VisionTransformer
from fastdeit.models.pos_embed import resample_pos_embed
from fastdeit.models.registry import MODEL_CONFIGS, list_models, model_config

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MODEL_CONFIGS",
    "Checkpoint",
    "LoadResult",
    "VisionTransformer",
    "VisionTransformerConfig",
    "create_model",
    "from_pretrained",
    "list_models",
    "load_checkpoint",
    "load_model",
    "model_config",
    "read_checkpoint",
    "resample_pos_embed",
    "save_hf",
    "save_pretrained",
]
