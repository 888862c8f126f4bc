"""The one place that decides which implementation a layer runs: `ops_for(backend, x)` hands the layer a namespace of
ops, the fused Triton ones or plain PyTorch ones with the same signatures, so the layers hold no backend branches.

Backends:
- "torch": plain PyTorch (`F.layer_norm`, `F.scaled_dot_product_attention`, `F.linear`).
- "triton": the fused kernels of `fastdeit.kernels`; needs CUDA tensors, or the CPU with `TRITON_INTERPRET=1`.
- "auto": "triton" for CUDA tensors when triton is importable, "torch" otherwise. Decided per call from the input's
  device, so a model built on one machine runs correctly when moved to another device.

The ops, with the signatures of `fastdeit.ops` (shapes there):
    layer_norm(x, weight, bias, eps, residual=None)     -> LN(x), or (LN(x + residual), x + residual)
    linear(x, weight, bias, activation=None, residual=None, kind=None) -> act(x @ weight.T + bias) + residual
    attention_qkv(qkv, num_heads, scale, dropout_p=0.0) -> (B, N, H * D) from the packed (B, N, 3 * H * D) qkv
Both namespaces give torch's autocast results: the torch ops through autocast itself, the fused ops (custom ops,
which autocast does not see) by applying its policy (`autocast_dtype`). The fused kernels have no dropout on the
attention matrix (DeiT trains without it): a layer asking for it gets the torch ops.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType
from typing import Literal

import torch
import torch.nn.functional as F

from fastdeit._env import triton_interpreter

BACKENDS = ("auto", "triton", "torch")


def check_backend(backend: str) -> str:
    """Validate a backend name and return it."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None
_fused_ops: ModuleType | None = None


def triton_available() -> bool:
    return _TRITON_INSTALLED


def use_triton(backend: str, x: torch.Tensor) -> bool:
    """Whether a layer with this `backend` runs the fused Triton ops on input `x`."""
    if backend == "torch":
        return False
    if backend == "auto":
        return x.is_cuda and triton_available()
    if not triton_available():
        raise RuntimeError("backend='triton' needs the triton package (pip install triton); use backend='torch'")
    if not (x.is_cuda or (x.device.type == "cpu" and triton_interpreter())):
        raise ValueError(
            f"backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 set before triton is imported, to run "
            f"the kernels on the CPU); got a tensor on {x.device}. Use backend='torch' or 'auto' for this device."
        )
    return True


def autocast_dtype(op: Literal["linear", "layer_norm"], x: torch.Tensor) -> torch.dtype | None:
    """The dtype torch's autocast runs `op` in for input `x`, or None where autocast leaves the op alone.

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


class TorchOps:
    """Plain PyTorch, the signatures of the fused ops."""

    @staticmethod
    def layer_norm(
        x: torch.Tensor,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        eps: float,
        residual: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        # The normalized shape from the parameter where there is one: a traced (ONNX) graph keeps it a constant.
        shape = x.shape[-1:] if weight is None else weight.shape
        if residual is None:
            return F.layer_norm(x, shape, weight, bias, eps)
        s = x + residual
        return F.layer_norm(s, shape, weight, bias, eps), s

    @staticmethod
    def linear(
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        activation: str | None = None,
        residual: torch.Tensor | None = None,
        kind: str | None = None,
    ) -> torch.Tensor:
        y = F.linear(x, weight, bias)
        if activation == "gelu":
            y = F.gelu(y)
        elif activation is not None:
            raise ValueError(f"activation must be None or 'gelu', got {activation!r}")
        return y if residual is None else y + residual

    @staticmethod
    def attention_qkv(qkv: torch.Tensor, num_heads: int, scale: float, dropout_p: float = 0.0) -> torch.Tensor:
        B, N, width = qkv.shape
        q, k, v = qkv.reshape(B, N, 3, num_heads, width // (3 * num_heads)).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale)
        return out.transpose(1, 2).reshape(B, N, width // 3)


class FusedOps:
    """`fastdeit.ops` (imported by `prepare`), with torch's autocast policy applied to their inputs and outputs."""

    @staticmethod
    def layer_norm(
        x: torch.Tensor,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        eps: float,
        residual: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if weight is None or bias is None:  # the kernel has an affine step (DeiT's norms all do): torch's op then
            return TorchOps.layer_norm(x, weight, bias, eps, residual)
        out_dtype = autocast_dtype("layer_norm", x)
        return _fused().layer_norm(x, weight, bias, eps=eps, residual=residual, out_dtype=out_dtype)

    @staticmethod
    def linear(
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        activation: str | None = None,
        residual: torch.Tensor | None = None,
        kind: str | None = None,
    ) -> torch.Tensor:
        dtype = autocast_dtype("linear", x)
        if dtype is not None:
            # What autocast does for F.linear (weights cast on every call); the residual keeps its dtype and the
            # fused add promotes, as `F.linear(...) + residual` does, so an fp32 residual stream stays fp32.
            x, weight = x.to(dtype), weight.to(dtype)
            bias = None if bias is None else bias.to(dtype)
        return _fused().linear(x, weight, bias, activation=activation, residual=residual, kind=kind)

    @staticmethod
    def attention_qkv(qkv: torch.Tensor, num_heads: int, scale: float, dropout_p: float = 0.0) -> torch.Tensor:
        if dropout_p:
            raise ValueError("the fused attention has no dropout; ops_for(..., dropout=p) gives the torch ops for it")
        return _fused().attention_qkv(qkv, num_heads, scale=scale)


def ops_for(backend: str, x: torch.Tensor, *, dropout: float = 0.0) -> type[TorchOps] | type[FusedOps]:
    """The ops a layer with this `backend` runs on input `x`: FusedOps or TorchOps. `dropout`: the attention-matrix
    dropout the layer needs (the fused attention has none, so the layer gets the torch ops with it)."""
    return FusedOps if use_triton(backend, x) and dropout == 0.0 else TorchOps


def prepare(backend: str) -> str:
    """Validate `backend` and, unless it is "torch", import the fused ops now (when a layer is built).

    Importing here rather than in `forward` keeps `import fastdeit` free of triton and lets torch.compile
    trace the layers without a graph break on the import.
    """
    global _fused_ops
    check_backend(backend)
    if backend != "torch" and _TRITON_INSTALLED and _fused_ops is None:
        _fused_ops = importlib.import_module("fastdeit.ops")
    return backend


def _fused() -> ModuleType:
    if _fused_ops is None:
        raise RuntimeError("fastdeit.ops is not loaded: build the layer with backend='triton' or 'auto'")
    return _fused_ops
