"""DeiT: the Vision Transformer of Touvron et al. (2020), with the optional distillation token.

Parameter names and shapes equal timm's `VisionTransformer` / `VisionTransformerDistilled`, so official DeiT
and timm checkpoints load with strict=True: cls_token, dist_token, pos_embed, patch_embed.proj,
blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}, norm, head, head_dist.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from fastdeit.layers import Attention, Block, LayerNorm, Mlp, PatchEmbed, check_backend
from fastdeit.models.pos_embed import resample_pos_embed


class VisionTransformer(nn.Module):
    """DeiT / ViT classifier. Input (B, in_chans, H, W) -> logits (B, num_classes).

    With `distilled=True` the model carries a distillation token and a second head; in training with
    `set_distilled_training(True)` it returns `(cls_logits, dist_logits)`, otherwise their mean.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        pos_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        distilled: bool = False,
        dynamic_img_size: bool = False,
        backend: str = "auto",
        norm_layer: type[nn.Module] | None = None,
        attn_layer: type[nn.Module] | None = None,
        mlp_layer: type[nn.Module] | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0 = no head), got {num_classes}")
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim must be divisible by num_heads, got {embed_dim} and {num_heads}")
        self.backend = check_backend(backend)
        # The one place the implementations are chosen: every layer gets the same backend.
        norm_layer = norm_layer or partial(LayerNorm, eps=1e-6, backend=backend)
        attn_layer = attn_layer or partial(Attention, backend=backend)
        mlp_layer = mlp_layer or partial(Mlp, backend=backend)

        self.num_classes = num_classes
        self.embed_dim = self.num_features = embed_dim
        self.distilled = distilled
        self.num_prefix_tokens = 2 if distilled else 1
        self.distilled_training = False
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, dynamic_img_size=dynamic_img_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if distilled else None
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + self.num_prefix_tokens, embed_dim))
        self.pos_drop = nn.Dropout(pos_drop_rate)
        # Stochastic depth grows linearly with depth (plain Python: works under a meta-device context too).
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.Sequential(
            *[
                Block(
                    embed_dim,
                    num_heads,
                    mlp_ratio,
                    qkv_bias=qkv_bias,
                    proj_drop=proj_drop_rate,
                    attn_drop=attn_drop_rate,
                    drop_path=dpr[i],
                    norm_layer=norm_layer,
                    attn_layer=attn_layer,
                    mlp_layer=mlp_layer,
                )
                for i in range(depth)
            ]
        )
        self.norm = norm_layer(embed_dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.head_dist = (
            (nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()) if distilled else None
        )
        self._init_weights()

    def _init_weights(self) -> None:
        # As timm: truncated normal(0.02) for weights and embeddings, tiny normal for the cls token.
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.dist_token is not None:
            nn.init.trunc_normal_(self.dist_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @property
    def img_size(self) -> tuple[int, int]:
        return self.patch_embed.img_size

    @property
    def patch_size(self) -> tuple[int, int]:
        return self.patch_embed.patch_size

    def set_distilled_training(self, enable: bool = True) -> None:
        """In training mode, return (cls_logits, dist_logits) instead of their mean (distilled models only)."""
        if enable and not self.distilled:
            raise ValueError(
                "set_distilled_training(True) needs a distilled model (a *_distilled_* variant with a "
                "distillation token); this model has none"
            )
        self.distilled_training = enable

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in backward instead of storing its activations."""
        self.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        """Parameter names that the DeiT recipe trains without weight decay (besides norms and biases)."""
        return {"pos_embed", "cls_token", "dist_token"}

    def get_classifier(self) -> nn.Module | tuple[nn.Module, nn.Module]:
        return (self.head, self.head_dist) if self.distilled else self.head

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head(s) with freshly initialised ones for `num_classes` classes (0 = no head)."""
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        self.num_classes = num_classes
        device = self.cls_token.device
        heads = ["head", "head_dist"] if self.distilled else ["head"]
        for name in heads:
            layer = nn.Linear(self.embed_dim, num_classes, device=device) if num_classes > 0 else nn.Identity()
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
            setattr(self, name, layer)

    def _pos_embed(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        pos_embed = self.pos_embed
        if grid != self.patch_embed.grid_size:
            pos_embed = resample_pos_embed(pos_embed, grid, self.num_prefix_tokens, self.patch_embed.grid_size)
        prefix = [self.cls_token.expand(x.shape[0], -1, -1)]
        if self.dist_token is not None:
            prefix.append(self.dist_token.expand(x.shape[0], -1, -1))
        return self.pos_drop(torch.cat(prefix + [x], dim=1) + pos_embed)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, in_chans, H, W) -> normalized tokens (B, num_prefix_tokens + num_patches, embed_dim)."""
        grid = self.patch_embed.check_input(x)
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = self._pos_embed(x, grid)
        if self.grad_checkpointing and torch.is_grad_enabled():
            for block in self.blocks:
                x = checkpoint(block, x, use_reentrant=False)
        else:
            x = self.blocks(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Tokens (B, N, embed_dim) -> logits (B, num_classes); `pre_logits=True` -> features (B, embed_dim)."""
        if not self.distilled:
            x = self.head_drop(x[:, 0])
            return x if pre_logits else self.head(x)
        x, x_dist = x[:, 0], x[:, 1]
        if pre_logits:
            return (x + x_dist) / 2
        x, x_dist = self.head(self.head_drop(x)), self.head_dist(self.head_drop(x_dist))
        if self.distilled_training and self.training:
            return x, x_dist
        return (x + x_dist) / 2

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return self.forward_head(self.forward_features(x))

    def flops_per_image(self) -> float:
        """Forward FLOPs (2 x multiply-adds) of one image at the model's size, attention matmuls included."""
        n = self.patch_embed.num_patches + self.num_prefix_tokens
        c = self.embed_dim
        hidden = self.blocks[0].mlp.fc1.out_features
        patch = self.patch_embed.num_patches * c * self.patch_embed.proj.in_channels * math.prod(self.patch_size)
        per_block = n * c * 3 * c + 2 * n * n * c + n * c * c + 2 * n * c * hidden
        head = self.num_prefix_tokens * c * self.num_classes  # one head per prefix token
        return 2.0 * (patch + len(self.blocks) * per_block + head)
