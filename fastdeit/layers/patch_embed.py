"""Image to patch tokens: a strided convolution, parameter names as timm (`proj`)."""

from __future__ import annotations

import torch
from torch import nn


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class PatchEmbed(nn.Module):
    """x (B, in_chans, H, W) -> tokens (B, H/p * W/p, embed_dim).

    With `dynamic_img_size=False` (timm's default) the input must be exactly `img_size`; otherwise any size
    that is a multiple of the patch is accepted (the model then resamples its position embedding).
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        dynamic_img_size: bool = False,
    ) -> None:
        super().__init__()
        self.img_size = _pair(img_size)
        self.patch_size = _pair(patch_size)
        for name, size in (("height", self.img_size[0]), ("width", self.img_size[1])):
            if size % self.patch_size[0 if name == "height" else 1] != 0:
                raise ValueError(
                    f"img_size must be a multiple of patch_size {self.patch_size}, got img_size {self.img_size}"
                )
        self.grid_size = (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.in_chans = in_chans
        self.dynamic_img_size = dynamic_img_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)

    def check_input(self, x: torch.Tensor) -> tuple[int, int]:
        """Validate an image batch; returns its patch grid (rows, cols)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected an image tensor of shape (B, {self.in_chans}, H, W), got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"expected a 4-D image batch (B, {self.in_chans}, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_chans:
            raise ValueError(
                f"expected {self.in_chans} input channels (B, {self.in_chans}, H, W), got shape {tuple(x.shape)}"
            )
        H, W = x.shape[-2:]
        if H % self.patch_size[0] or W % self.patch_size[1]:
            raise ValueError(f"image size {H}x{W} is not a multiple of the patch size {self.patch_size}")
        if not self.dynamic_img_size and (H, W) != self.img_size:
            raise ValueError(
                f"expected images of size {self.img_size[0]}x{self.img_size[1]}, got {H}x{W}; build the model with "
                f"img_size=({H}, {W}) or dynamic_img_size=True to resample the position embedding"
            )
        return H // self.patch_size[0], W // self.patch_size[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.proj(x).flatten(2).transpose(1, 2)
