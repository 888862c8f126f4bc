"""The fused Triton ops, public as `fastdeit.ops` (implemented in `fastdeit.kernels`).

Each op has a plain-PyTorch `*_ref` with the same signature. Importing this module imports triton: under no
GPU set `TRITON_INTERPRET=1` before the first import to run the kernels on the CPU.
"""

from fastdeit.kernels.attention import attention, attention_qkv, attention_qkv_ref, attention_ref
from fastdeit.kernels.layer_norm import layer_norm, layer_norm_ref
from fastdeit.kernels.linear import linear, linear_ref

__all__ = [
    "attention",
    "attention_qkv",
    "attention_qkv_ref",
    "attention_ref",
    "layer_norm",
    "layer_norm_ref",
    "linear",
    "linear_ref",
]
