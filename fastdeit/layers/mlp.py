"""The transformer MLP with timm's parameter names (`fc1`, `fc2`)."""

from __future__ import annotations

import torch
from torch import nn

from fastdeit.layers.backend import ops_for, prepare


class Mlp(nn.Module):
    """timm-compatible `Mlp(in_features, hidden_features, out_features, act_layer, drop)`, GELU activation.

    `forward(x, residual=None)`: x (..., in_features) -> (..., out_features); the GELU is fused into fc1's
    epilogue and the residual add (if given) into fc2's on the Triton backend.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        act_layer: type[nn.Module] = nn.GELU,
        norm_layer: type[nn.Module] | None = None,
        bias: bool = True,
        drop: float = 0.0,
        *,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if act_layer is not nn.GELU:
            raise ValueError(f"act_layer must be nn.GELU (exact erf form, as DeiT), got {act_layer!r}")
        if norm_layer is not None:
            raise ValueError("norm_layer inside the Mlp is not used by DeiT and is not supported")
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.backend = prepare(backend)
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        ops = ops_for(self.backend, x)
        h = self.drop1(ops.linear(x, self.fc1.weight, self.fc1.bias, activation="gelu", kind="fc1"))
        if self.drop2.p > 0.0 and self.training:
            out = self.drop2(ops.linear(h, self.fc2.weight, self.fc2.bias, kind="fc2"))
            return out if residual is None else out + residual
        return ops.linear(h, self.fc2.weight, self.fc2.bias, residual=residual, kind="fc2")
