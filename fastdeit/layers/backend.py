"""The one place that decides which implementation a layer runs: the fused Triton ops or plain PyTorch.

Backends:
- "torch": plain PyTorch (`F.layer_norm`, `F.scaled_dot_product_attention`, `F.linear`).
- "triton": the fused kernels of `fastdeit.kernels`; needs CUDA tensors, or the CPU with `TRITON_INTERPRET=1`.
- "auto": "triton" for CUDA tensors when triton is importable, "torch" otherwise. Decided per call from
  the input's device, so a model built on one machine runs correctly when moved to another device.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from types import ModuleType
from typing import Literal

import torch

BACKENDS = ("auto", "triton", "torch")


def check_backend(backend: str) -> str:
    """Validate a backend name and return it."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None
_ops_module: ModuleType | None = None


def triton_available() -> bool:
    return _TRITON_INSTALLED


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def use_triton(backend: str, x: torch.Tensor) -> bool:
    """Whether a layer with this `backend` runs its fused Triton op on input `x`."""
    if backend == "torch":
        return False
    if backend == "auto":
        return x.is_cuda and triton_available()
    if not triton_available():
        raise RuntimeError("backend='triton' needs the triton package (pip install triton); use backend='torch'")
    if not (x.is_cuda or (x.device.type == "cpu" and _interpreting())):
        raise ValueError(
            f"backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 set before triton is imported, to run "
            f"the kernels on the CPU); got a tensor on {x.device}. Use backend='torch' or 'auto' for this device."
        )
    return True


def autocast_dtype(op: Literal["linear", "layer_norm"], x: torch.Tensor) -> torch.dtype | None:
    """The dtype torch's autocast runs `op` in for input `x`, or None where autocast leaves the op alone.

    The fused ops do not go through autocast themselves, so the layers apply its policy on the Triton path:
    "linear": the autocast dtype (x, weight and bias cast to it; a residual added after keeps its dtype).
    "layer_norm": fp32 on CUDA, where layer_norm is on autocast's fp32 list (the result is fp32, whatever x's dtype);
    None on the CPU, whose autocast runs layer_norm in its input's dtype.
    """
    if op not in ("linear", "layer_norm"):
        raise ValueError(f"op must be 'linear' or 'layer_norm', got {op!r}")
    device = x.device.type
    if not torch.is_autocast_enabled(device):
        return None
    if op == "linear":
        return torch.get_autocast_dtype(device)
    return torch.float32 if device == "cuda" else None


def prepare(backend: str) -> str:
    """Validate `backend` and, unless it is "torch", import the fused ops now (when a layer is built).

    Importing here rather than in `forward` keeps `import fastdeit` free of triton and lets torch.compile
    trace the layers without a graph break on the import.
    """
    global _ops_module
    check_backend(backend)
    if backend != "torch" and _TRITON_INSTALLED and _ops_module is None:
        _ops_module = importlib.import_module("fastdeit.ops")
    return backend


def ops() -> ModuleType:
    """The fused ops module (`fastdeit.ops`), imported by `prepare`."""
    if _ops_module is None:
        raise RuntimeError("fastdeit.ops is not loaded: build the layer with backend='triton' or 'auto'")
    return _ops_module
