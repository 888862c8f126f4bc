"""The projection used by Attention and Mlp: a linear layer with an optional fused GELU and residual add."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastdeit.layers.backend import autocast_dtype, ops, use_triton


def fused_linear(
    layer: nn.Linear,
    x: torch.Tensor,
    backend: str,
    *,
    kind: str,
    activation: str | None = None,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """`act(layer(x)) + residual` with `layer`'s parameters; the fused op on the Triton backend, where `kind` ("qkv",
    "proj", "fc1", "fc2") picks the linear policy's path.

    Shapes: x (..., in_features), residual (..., out_features) -> (..., out_features). Under autocast both backends
    give the dtypes of torch's autocast: the linear in the autocast dtype, the add promoted to the residual's dtype.
    """
    if use_triton(backend, x):
        weight, bias = layer.weight, layer.bias
        dtype = autocast_dtype("linear", x)
        if dtype is not None:
            # What autocast does for F.linear (weights cast on every call); the residual keeps its dtype and the
            # fused add promotes, as `F.linear(...) + residual` does, so an fp32 residual stream stays fp32.
            x, weight = x.to(dtype), weight.to(dtype)
            bias = None if bias is None else bias.to(dtype)
        return ops().linear(x, weight, bias, activation=activation, residual=residual, kind=kind)
    y = F.linear(x, layer.weight, layer.bias)
    if activation == "gelu":
        y = F.gelu(y)
    elif activation is not None:
        raise ValueError(f"activation must be None or 'gelu', got {activation!r}")
    return y if residual is None else y + residual
