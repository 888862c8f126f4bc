"""A small convolutional network: the teacher of the CPU demo (digits), where RegNetY-16GF would be overkill.

DeiT's point is that a convnet teacher passes its inductive bias (locality, translation equivariance) to a
transformer student. On ImageNet the teacher is timm's `regnety_160`; this is the same idea at toy scale:
three VGG-style stages of two 3x3 conv-BN-ReLU layers, 2x2 max-pooling between stages, global average
pooling and a linear head. It takes any input size (the pooling is global).

    model = create_convnet("convnet_small", num_classes=10)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fastdeit.models.config import RecordsConfig
from fastdeit.text import did_you_mean

# Channel widths of each stage; one stage per entry, each halving the resolution after the first.
CONVNET_CONFIGS: dict[str, dict[str, Any]] = {
    "convnet_tiny": dict(widths=(16, 32, 64)),
    "convnet_small": dict(widths=(32, 64, 128)),
}


@dataclass(frozen=True)
class ConvNetConfig:
    """What a ConvNet is (`ConvNet.config`): its stage widths, head and class names; plain types (see
    `VisionTransformerConfig`)."""

    name: str | None = None
    widths: tuple[int, ...] = (32, 64, 128)
    num_classes: int = 10
    in_chans: int = 3
    drop_rate: float = 0.0
    class_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if self.class_names is not None:
            object.__setattr__(self, "class_names", tuple(str(n) for n in self.class_names))
        if not self.widths or any(w <= 0 for w in self.widths):
            raise ValueError(f"widths must be a non-empty tuple of positive channel counts, got {self.widths!r}")
        if self.num_classes <= 0:
            raise ValueError(f"num_classes must be > 0, got {self.num_classes}")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for a model with {self.num_classes} classes")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def describe(self) -> str:
        return f"{self.name or 'custom ConvNet'} (ConvNet, widths {list(self.widths)}, {self.num_classes} classes)"


def _conv_bn_relu(in_chans: int, out_chans: int) -> list[nn.Module]:
    # No conv bias: the BatchNorm that follows has its own.
    return [nn.Conv2d(in_chans, out_chans, 3, padding=1, bias=False), nn.BatchNorm2d(out_chans), nn.ReLU(inplace=True)]


class ConvNet(RecordsConfig, nn.Module):
    """Images (B, in_chans, H, W) -> logits (B, num_classes). `fields` are `ConvNetConfig` fields; `model.config`
    records them."""

    _fields_of_the_name = ("name", "widths")

    def __init__(self, config: ConvNetConfig | None = None, **fields: Any) -> None:
        super().__init__()
        self.config = dataclasses.replace(config or ConvNetConfig(), **fields)
        layers: list[nn.Module] = []
        chans = self.config.in_chans
        for i, width in enumerate(self.config.widths):
            if i > 0:
                layers.append(nn.MaxPool2d(2))
            layers += _conv_bn_relu(chans, width) + _conv_bn_relu(width, width)
            chans = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head_drop = nn.Dropout(self.config.drop_rate)
        self.head = nn.Linear(chans, self.config.num_classes)
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


def create_convnet(name: str, **fields: Any) -> ConvNet:
    """Build convnet `name` (see `list_convnets()`); `fields` are the other `ConvNetConfig` fields (num_classes,
    in_chans, drop_rate, class_names). Weights are loaded by `fastdeit.models.load_checkpoint` (or `load_model`)."""
    if name not in CONVNET_CONFIGS:
        hint = did_you_mean(name, CONVNET_CONFIGS, n=2)
        raise ValueError(f"unknown convnet {name!r}{hint} Available: {', '.join(list_convnets())}")
    return ConvNet(ConvNetConfig(name=name, **CONVNET_CONFIGS[name]), **fields)
