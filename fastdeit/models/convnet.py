"""A small convolutional network: the teacher of the CPU demo (digits), where RegNetY-16GF would be overkill.

DeiT's point is that a convnet teacher passes its inductive bias (locality, translation equivariance) to a
transformer student. On ImageNet the teacher is timm's `regnety_160`; this is the same idea at toy scale:
three VGG-style stages of two 3x3 conv-BN-ReLU layers, 2x2 max-pooling between stages, global average
pooling and a linear head. It takes any input size (the pooling is global).

    model = create_convnet("convnet_small", num_classes=10)
"""

from __future__ import annotations

import difflib
import os
from typing import Any

import torch
from torch import nn

# Channel widths of each stage; one stage per entry, each halving the resolution after the first.
CONVNET_CONFIGS: dict[str, dict[str, Any]] = {
    "convnet_tiny": dict(widths=(16, 32, 64)),
    "convnet_small": dict(widths=(32, 64, 128)),
}


def _conv_bn_relu(in_chans: int, out_chans: int) -> list[nn.Module]:
    # No conv bias: the BatchNorm that follows has its own.
    return [nn.Conv2d(in_chans, out_chans, 3, padding=1, bias=False), nn.BatchNorm2d(out_chans), nn.ReLU(inplace=True)]


class ConvNet(nn.Module):
    """Images (B, in_chans, H, W) -> logits (B, num_classes)."""

    def __init__(
        self, widths: tuple[int, ...] = (32, 64, 128), num_classes: int = 10, in_chans: int = 3, drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        if not widths or any(w <= 0 for w in widths):
            raise ValueError(f"widths must be a non-empty tuple of positive channel counts, got {widths!r}")
        if num_classes <= 0:
            raise ValueError(f"num_classes must be > 0, got {num_classes}")
        layers: list[nn.Module] = []
        chans = in_chans
        for i, width in enumerate(widths):
            if i > 0:
                layers.append(nn.MaxPool2d(2))
            layers += _conv_bn_relu(chans, width) + _conv_bn_relu(width, width)
            chans = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(chans, num_classes)
        self.num_classes = num_classes
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def no_weight_decay(self) -> set[str]:
        """Parameter names trained without weight decay besides the 1-D ones (norms, biases): none here."""
        return set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x)).flatten(1)
        return self.head(self.head_drop(x))


def list_convnets() -> list[str]:
    return sorted(CONVNET_CONFIGS)


def is_convnet(name: str) -> bool:
    return name in CONVNET_CONFIGS


def create_convnet(
    name: str,
    *,
    num_classes: int = 10,
    in_chans: int = 3,
    drop_rate: float = 0.0,
    checkpoint: str | os.PathLike | None = None,
    use_ema: bool = False,
) -> ConvNet:
    """Build convnet `name` (see `list_convnets()`), optionally loading weights from a fastdeit training
    checkpoint (`{"model": ..., "model_ema": ...}`) or a plain state dict file; `use_ema` loads the EMA weights."""
    if name not in CONVNET_CONFIGS:
        close = difflib.get_close_matches(name, CONVNET_CONFIGS, n=2)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown convnet {name!r}{hint} Available: {', '.join(list_convnets())}")
    widths = CONVNET_CONFIGS[name]["widths"]
    model = ConvNet(widths, num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)
    model.model_name = name
    # Plain types only: this goes into training checkpoints read with torch.load(weights_only=True).
    model.model_config = {"num_classes": num_classes, "in_chans": in_chans, "drop_rate": drop_rate}
    if checkpoint is not None:
        load_convnet_weights(model, checkpoint, use_ema=use_ema)
    return model


def load_convnet_weights(model: ConvNet, path: str | os.PathLike, *, use_ema: bool = False) -> None:
    """Load a fastdeit training checkpoint or a plain state dict into `model` (strict)."""
    from fastdeit.checkpoint import read_checkpoint

    if not os.path.isfile(path):
        raise FileNotFoundError(f"convnet checkpoint not found: {str(path)!r}")
    state, _ = read_checkpoint(path, use_ema=use_ema)
    own = model.state_dict()
    mismatched = [
        f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if mismatched or missing or unexpected:
        raise ValueError(
            f"checkpoint {str(path)!r} does not fit {getattr(model, 'model_name', 'the convnet')} "
            f"(num_classes={model.num_classes}): shape differences {mismatched[:5]}, missing keys {missing[:5]}, "
            f"unexpected keys {unexpected[:5]}"
        )
    model.load_state_dict(state)
