"""DeiT: the Vision Transformer of Touvron et al. (2020), with the optional distillation token.

Parameter names and shapes equal timm's `VisionTransformer` / `VisionTransformerDistilled`, so official DeiT
and timm checkpoints load with strict=True: cls_token, dist_token, pos_embed, patch_embed.proj,
blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}, norm, head, head_dist.
The model records what it is in `model.config` (a frozen `VisionTransformerConfig`), built by the constructor.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from fastdeit.layers import Attention, Block, LayerNorm, Mlp, PatchEmbed, check_backend
from fastdeit.models.config import RecordsConfig, VisionTransformerConfig
from fastdeit.models.pos_embed import resample_pos_embed


class VisionTransformer(RecordsConfig, nn.Module):
    """DeiT / ViT classifier. Input (B, in_chans, H, W) -> logits (B, num_classes).

    With `distilled=True` the model carries a distillation token and a second head; in training with
    `set_distilled_training(True)` it returns `(cls_logits, dist_logits)`, otherwise their mean.

    Args:
        config: the architecture and facts of the model (`VisionTransformerConfig`); `model.config` records it.
        backend: "auto" (fused Triton kernels on CUDA, PyTorch elsewhere), "triton" or "torch".
        norm_layer, attn_layer, mlp_layer: other layer classes for the blocks (as timm); by default fastdeit's
            LayerNorm (with the config's `layer_norm_eps`), Attention and Mlp on `backend`. `config` does not
            describe layers passed here.
        fields: config fields given one by one, timm-style (img_size, patch_size, embed_dim, depth, num_heads,
            num_classes, distilled, layer_norm_eps, ...); they override `config`'s.
    """

    def __init__(
        self,
        config: VisionTransformerConfig | None = None,
        *,
        backend: str = "auto",
        norm_layer: Callable[[int], nn.Module] | None = None,
        attn_layer: Callable[..., nn.Module] | None = None,
        mlp_layer: Callable[..., nn.Module] | None = None,
        **fields: Any,
    ) -> None:
        super().__init__()
        known = {f.name for f in dataclasses.fields(VisionTransformerConfig)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"VisionTransformer got unknown arguments {unknown}; config fields: {sorted(known)}")
        config = (config or VisionTransformerConfig()).replace(**fields)
        self.config = config
        self.backend = check_backend(backend)
        # The one place the implementations are chosen: every layer gets the same backend.
        norm_layer = norm_layer or partial(LayerNorm, eps=config.layer_norm_eps, backend=backend)
        attn_layer = attn_layer or partial(Attention, backend=backend)
        mlp_layer = mlp_layer or partial(Mlp, backend=backend)

        self.num_prefix_tokens = 2 if config.distilled else 1
        self.distilled_training = False
        self.grad_checkpointing = False
        dim = config.embed_dim

        self.patch_embed = PatchEmbed(
            config.img_size, config.patch_size, config.in_chans, dim, dynamic_img_size=config.dynamic_img_size
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, dim)) if config.distilled else None
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + self.num_prefix_tokens, dim))
        self.pos_drop = nn.Dropout(config.pos_drop_rate)
        # Stochastic depth grows linearly with depth (plain Python: works under a meta-device context too).
        dpr = [config.drop_path_rate * i / max(config.depth - 1, 1) for i in range(config.depth)]
        self.blocks = nn.Sequential(
            *[
                Block(
                    dim,
                    config.num_heads,
                    config.mlp_ratio,
                    qkv_bias=config.qkv_bias,
                    proj_drop=config.proj_drop_rate,
                    attn_drop=config.attn_drop_rate,
                    drop_path=dpr[i],
                    norm_layer=norm_layer,
                    attn_layer=attn_layer,
                    mlp_layer=mlp_layer,
                )
                for i in range(config.depth)
            ]
        )
        self.norm = norm_layer(dim)
        self.head_drop = nn.Dropout(config.drop_rate)
        classes = config.num_classes
        self.head = nn.Linear(dim, classes) if classes > 0 else nn.Identity()
        self.head_dist = (nn.Linear(dim, classes) if classes > 0 else nn.Identity()) if config.distilled else None
        self._init_weights()

    @classmethod
    def from_config(cls, config: VisionTransformerConfig, *, backend: str = "auto") -> VisionTransformer:
        """The model `config` describes, freshly initialised."""
        return cls(config, backend=backend)

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    @property
    def num_features(self) -> int:
        return self.config.embed_dim

    @property
    def distilled(self) -> bool:
        return self.config.distilled

    @property
    def pretrained_cfg(self) -> dict[str, Any]:
        """The preprocessing the model expects, under timm's `pretrained_cfg` keys."""
        c = self.config
        return {
            "architecture": self.model_name,
            "input_size": (c.in_chans, *c.img_size),
            "interpolation": c.interpolation,
            "crop_pct": c.crop_pct,
            "mean": c.mean,
            "std": c.std,
            "num_classes": c.num_classes,
        }

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

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head(s) with freshly initialised ones for `num_classes` classes (0 = no head); the class
        names are forgotten. `global_pool`, as in timm's signature: DeiT pools the class token ('token'); None or
        'token' keep it, another pooling raises ValueError."""
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        if global_pool not in (None, "token"):
            raise ValueError(
                f"global_pool: fastdeit's DeiT pools the class token ('token'); got {global_pool!r} (timm's '' or "
                "'avg' change the pooling, which DeiT checkpoints were not trained with)"
            )
        self.config = self.config.replace(num_classes=num_classes, class_names=None)
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

    def _check_dtype(self, x: torch.Tensor) -> None:
        """Images must have the weights' dtype, except floating-point ones under autocast (which casts them)."""
        expected = self.patch_embed.proj.weight.dtype
        if not isinstance(x, torch.Tensor) or x.dtype == expected:
            return  # PatchEmbed names what a non-tensor should be
        if x.is_floating_point() and torch.is_autocast_enabled(x.device.type):
            return
        if x.is_floating_point():
            how = f"cast it with x.to({expected}), or run the model under torch.autocast"
        else:
            how = (
                f"convert images with x.to({expected}) / 255, then normalise them with the model's mean "
                f"{self.config.mean} and std {self.config.std} (model.config.mean / .std)"
            )
        raise TypeError(f"expected a {expected} image batch (the model's weights are {expected}), got {x.dtype}: {how}")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, in_chans, H, W) -> normalized tokens (B, num_prefix_tokens + num_patches, embed_dim)."""
        self._check_dtype(x)
        tokens = self.patch_embed(x)  # checks the input's shape
        grid = (x.shape[-2] // self.patch_size[0], x.shape[-1] // self.patch_size[1])
        x = self._pos_embed(tokens, grid)
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
