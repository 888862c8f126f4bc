"""Multi-head self-attention with timm's parameter names (`qkv`, `proj`)."""

from __future__ import annotations

import functools

import torch
from torch import nn

from fastdeit.layers.backend import TorchOps, ops_for, prepare, triton_available


@functools.cache
def _fused_head_dims() -> tuple[int, ...]:
    """The head dims of the fused attention kernel (none where triton is not installed)."""
    if not triton_available():
        return ()
    from fastdeit.kernels.attention import HEAD_DIMS

    return HEAD_DIMS


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
        # The fused attention kernel takes the head dims it is built for; another one runs torch's SDPA ("auto"), or
        # is refused here rather than at the first forward ("triton").
        if backend == "triton" and triton_available() and self.head_dim not in _fused_head_dims():
            raise ValueError(
                f"backend='triton': the fused attention takes head dims {_fused_head_dims()}; this layer's is "
                f"{self.head_dim} (dim {dim} / {num_heads} heads). Use backend='auto' (torch's SDPA for the attention "
                "of such layers) or 'torch'"
            )
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        attn_dropout = self.attn_drop if self.training else 0.0
        ops = ops_for(self.backend, x, dropout=attn_dropout)
        qkv = ops.linear(x, self.qkv.weight, self.qkv.bias, kind="qkv")  # under autocast: in the autocast dtype
        # A head dim the fused kernel is not built for: torch's SDPA for the attention, the fused linears around it.
        fused = ops is TorchOps or self.head_dim in _fused_head_dims()
        attention = ops.attention_qkv if fused else TorchOps.attention_qkv
        out = attention(qkv, self.num_heads, self.scale, dropout_p=attn_dropout)
        if self.proj_drop.p > 0.0 and self.training:
            out = self.proj_drop(ops.linear(out, self.proj.weight, self.proj.bias, kind="proj"))
            return out if residual is None else out + residual
        return ops.linear(out, self.proj.weight, self.proj.bias, residual=residual, kind="proj")
