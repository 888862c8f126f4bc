"""Drop-in DeiT layers with timm's constructor arguments and parameter names.

Each layer takes `backend` ("auto", "triton", "torch"); `fastdeit.layers.backend.ops_for` is the one place that
decides which implementation runs, handing the layer the fused ops or torch ops with the same signatures.
"""

from fastdeit.layers.attention import Attention
from fastdeit.layers.backend import BACKENDS, check_backend, ops_for, prepare, use_triton
from fastdeit.layers.block import Block
from fastdeit.layers.drop import DropPath, drop_path
from fastdeit.layers.mlp import Mlp
from fastdeit.layers.norm import LayerNorm
from fastdeit.layers.patch_embed import PatchEmbed

__all__ = [
    "BACKENDS",
    "Attention",
    "Block",
    "DropPath",
    "LayerNorm",
    "Mlp",
    "PatchEmbed",
    "check_backend",
    "ops_for",
    "prepare",
    "drop_path",
    "use_triton",
]
