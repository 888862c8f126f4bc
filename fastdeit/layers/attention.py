"""Multi-head self-attention with timm's parameter names (`qkv`, `proj`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastdeit.layers.backend import ops, prepare, use_triton
from fastdeit.layers.linear import fused_linear


class Attention(nn.Module):
    """timm-compatible `Attention(dim, num_heads, qkv_bias, ...)`.

    `forward(x, residual=None)`: x (B, N, C) -> (B, N, C); with `residual` (B, N, C) the result is
    `residual + proj(attn(x))`, fused into the projection's epilogue on the Triton backend. The Triton
    path reads the packed qkv projection directly (no permute or contiguous copies).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        qk_norm: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        norm_layer: type[nn.Module] | None = None,
        *,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim must be divisible by num_heads, got dim={dim}, num_heads={num_heads}")
        if qk_norm:
            raise ValueError("qk_norm=True is not used by DeiT and is not supported by fastdeit's Attention")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.backend = prepare(backend)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        B, N, C = x.shape
        attn_dropout = self.attn_drop if self.training else 0.0
        # The fused kernel has no dropout on the attention matrix (DeiT trains without it): fall back then.
        triton = use_triton(self.backend, x) and attn_dropout == 0.0
        if triton:
            qkv = fused_linear(self.qkv, x, self.backend, kind="qkv")  # under autocast: q, k, v in the autocast dtype
            out = ops().attention_qkv(qkv, self.num_heads, scale=self.scale)
        else:
            qkv = F.linear(x, self.qkv.weight, self.qkv.bias)
            q, k, v = qkv.reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=attn_dropout, scale=self.scale)
            out = out.transpose(1, 2).reshape(B, N, C)
        backend = self.backend if triton else "torch"
        if self.proj_drop.p > 0.0 and self.training:
            out = self.proj_drop(fused_linear(self.proj, out, backend, kind="proj"))
            return out if residual is None else out + residual
        return fused_linear(self.proj, out, backend, kind="proj", residual=residual)
