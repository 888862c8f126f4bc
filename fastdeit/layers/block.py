"""The pre-norm transformer block, as timm's `Block`, with its residual adds fused into neighbouring ops."""

from __future__ import annotations

import torch
from torch import nn

from fastdeit.layers.attention import Attention
from fastdeit.layers.drop import DropPath
from fastdeit.layers.mlp import Mlp
from fastdeit.layers.norm import LayerNorm


class Block(nn.Module):
    """x + attn(norm1(x)), then x + mlp(norm2(x)); x (B, N, C) -> (B, N, C).

    Like timm, the block takes `norm_layer`, `attn_layer` and `mlp_layer` and does not know which
    implementation they run. fastdeit's layers accept a `residual` argument; with them the first add is
    fused into norm2 (which returns both LN(x + a) and x + a) and the second into fc2's epilogue, so the
    block launches no standalone add kernel. Layers without that argument get plain adds.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        qk_norm: bool = False,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        init_values: float | None = None,
        drop_path: float = 0.0,
        act_layer: type[nn.Module] = nn.GELU,
        norm_layer: type[nn.Module] = LayerNorm,
        mlp_layer: type[nn.Module] = Mlp,
        attn_layer: type[nn.Module] = Attention,
    ) -> None:
        super().__init__()
        if init_values is not None:
            raise ValueError("init_values (LayerScale) is not used by DeiT and is not supported")
        self.norm1 = norm_layer(dim)
        self.attn = attn_layer(
            dim, num_heads=num_heads, qkv_bias=qkv_bias, qk_norm=qk_norm, attn_drop=attn_drop, proj_drop=proj_drop
        )
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = norm_layer(dim)
        self.mlp = mlp_layer(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)
        self.drop_path2 = DropPath(drop_path)
        self.fused = all(isinstance(m, (LayerNorm, Attention, Mlp)) for m in (self.norm2, self.attn, self.mlp))

    @classmethod
    def from_modules(
        cls, norm1: nn.Module, attn: Attention, norm2: nn.Module, mlp: nn.Module, drop_path: float = 0.0
    ) -> Block:
        """A block around existing modules (used by `fastdeit.patch` to wrap another model's layers): the layer
        factories timm's Block takes, each handing back one of the given modules."""
        norms = iter((norm1, norm2))
        return cls(
            dim=attn.qkv.in_features,
            num_heads=attn.num_heads,
            drop_path=drop_path,
            norm_layer=lambda dim: next(norms),
            attn_layer=lambda *args, **kwargs: attn,
            mlp_layer=lambda **kwargs: mlp,
        )

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False, **kwargs: object
    ) -> torch.Tensor:
        # timm and Hugging Face call blocks with an optional attention mask (and HF with extra keyword
        # arguments for its output recorders); DeiT uses no mask.
        if attn_mask is not None or is_causal:
            raise ValueError("fastdeit's Block has no attention mask or causal mode (DeiT uses neither)")
        if not self.fused:
            x = x + self.drop_path1(self.attn(self.norm1(x)))
            return x + self.drop_path2(self.mlp(self.norm2(x)))
        y, x = self.norm2(self.drop_path1(self.attn(self.norm1(x))), residual=x)
        if self.training and self.drop_path2.drop_prob > 0.0:
            return x + self.drop_path2(self.mlp(y))
        return self.mlp(y, residual=x)
