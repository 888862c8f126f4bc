"""The one place that decides which implementation a layer runs: the fused Triton ops or plain PyTorch.

Backends:
- "torch": plain PyTorch (`F.layer_norm`, `F.scaled_dot_product_attention`, `F.linear`).
- "triton": the fused kernels of `fastdeit.kernels`; needs CUDA tensors, or the CPU with `TRITON_INTERPRET=1`.
- "auto": "triton" for CUDA tensors when triton is importable, "torch" otherwise. Decided per call from
  the input's device, so a model built on one machine runs correctly when moved to another device.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from types import ModuleType

import torch

BACKENDS = ("auto", "triton", "torch")


def check_backend(backend: str) -> str:
    """Validate a backend name and return it."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


@functools.cache
def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


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


def ops() -> ModuleType:
    """The fused ops module, imported on first use so that `import fastdeit` never imports triton."""
    return importlib.import_module("fastdeit.ops")
