"""The projection used by Attention and Mlp: a linear layer with an optional fused GELU and residual add."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastdeit.layers.backend import ops, use_triton


def fused_linear(
    layer: nn.Linear,
    x: torch.Tensor,
    backend: str,
    *,
    activation: str | None = None,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """`act(layer(x)) + residual` with `layer`'s parameters; one fused op on the Triton backend.

    Shapes: x (..., in_features), residual (..., out_features) -> (..., out_features).
    """
    if use_triton(backend, x):
        return ops().linear(x, layer.weight, layer.bias, activation=activation, residual=residual)
    y = F.linear(x, layer.weight, layer.bias)
    if activation == "gelu":
        y = F.gelu(y)
    elif activation is not None:
        raise ValueError(f"activation must be None or 'gelu', got {activation!r}")
    return y if residual is None else y + residual
