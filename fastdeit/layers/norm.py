"""LayerNorm with timm's parameter names (`weight`, `bias`) and an optional fused residual add."""

from __future__ import annotations

import torch
from torch import nn

from fastdeit.layers.backend import ops_for, prepare


class LayerNorm(nn.LayerNorm):
    """`nn.LayerNorm` over the last dim that can also fuse the pre-norm residual add.

    `forward(x)` -> LN(x). `forward(x, residual)` -> `(LN(x + residual), x + residual)`: the Triton backend
    reads each input once and writes each output once, so a transformer block needs no standalone add.
    Shapes: x, residual (..., C); outputs the same shape. Dtypes as torch gives them: x + residual promotes (an fp32
    residual stream stays fp32 under a low-precision x), LN keeps that dtype, except under CUDA autocast, which runs
    layer_norm in fp32.
    """

    def __init__(self, normalized_shape: int, eps: float = 1e-6, *, backend: str = "auto", **kwargs) -> None:
        super().__init__(normalized_shape, eps=eps, **kwargs)
        self.backend = prepare(backend)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return ops_for(self.backend, x).layer_norm(x, self.weight, self.bias, self.eps, residual=residual)
