"""What a DeiT model is, recorded by the model itself: `VisionTransformer.config`, a frozen `VisionTransformerConfig`.

It holds the architecture (everything the weights' meaning depends on, LayerNorm eps included) and the facts a user
of the outputs needs: the class names of the head, and the preprocessing the model expects (image size, mean, std,
crop ratio, interpolation). Plain types only: `to_dict()` goes into training checkpoints (read back with
`torch.load(weights_only=True)`) and `save_pretrained`'s config.json, `from_dict` reads them back, and
`from_hf_config` / `to_hf_config` translate a Hugging Face DeiT/ViT `config.json`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fastdeit.constants import DEFAULT_CROP_PCT, IMAGENET_MEAN, IMAGENET_STD

# Fields that change what the weights compute (architecture, LayerNorm eps) or what inputs they expect (the
# normalisation): a checkpoint and a model must agree on all of them.
CHECKED_FIELDS = (
    "patch_size",
    "in_chans",
    "embed_dim",
    "depth",
    "num_heads",
    "mlp_ratio",
    "qkv_bias",
    "distilled",
    "layer_norm_eps",
    "mean",
    "std",
)


def _pair(value: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    if len(value) != 2:
        raise ValueError(f"expected an int or a pair (height, width), got {value!r}")
    return (int(value[0]), int(value[1]))


@dataclass(frozen=True)
class VisionTransformerConfig:
    """A DeiT/ViT: architecture, class names and expected preprocessing (see the module docstring).

    `name` is the `fastdeit.list_models()` name the architecture started from (None for a custom one); the other
    fields are the full architecture, so a model is rebuilt from its config alone. `class_names` (one per head
    output) is None when unknown. `crop_pct` defaults to timm's choice for DeiT: 1.0 from 384 px up, else 0.875.
    """

    name: str | None = None
    img_size: tuple[int, int] = (224, 224)
    patch_size: tuple[int, int] = (16, 16)
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    distilled: bool = False
    layer_norm_eps: float = 1e-6
    dynamic_img_size: bool = False
    drop_rate: float = 0.0
    pos_drop_rate: float = 0.0
    proj_drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    class_names: tuple[str, ...] | None = None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    crop_pct: float | None = None
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        # Normalise what JSON and callers hand over (ints for sizes, lists for tuples), then check.
        normalised = {
            "img_size": _pair(self.img_size),
            "patch_size": _pair(self.patch_size),
            "mean": tuple(float(v) for v in self.mean),
            "std": tuple(float(v) for v in self.std),
            "mlp_ratio": float(self.mlp_ratio),
            "layer_norm_eps": float(self.layer_norm_eps),
            "class_names": None if self.class_names is None else tuple(str(n) for n in self.class_names),
        }
        if self.crop_pct is None:
            normalised["crop_pct"] = 1.0 if max(normalised["img_size"]) >= 384 else DEFAULT_CROP_PCT
        for name, value in normalised.items():
            object.__setattr__(self, name, value)  # a frozen dataclass sets its own fields this way
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0 = no head), got {self.num_classes}")
        if self.embed_dim <= 0 or self.depth < 0 or self.num_heads <= 0 or self.embed_dim % self.num_heads != 0:
            raise ValueError(
                f"embed_dim must be divisible by num_heads, got {self.embed_dim} and {self.num_heads} (depth "
                f"{self.depth})"
            )
        if not (self.layer_norm_eps > 0 and math.isfinite(self.layer_norm_eps)):
            raise ValueError(f"layer_norm_eps must be a positive number, got {self.layer_norm_eps}")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"{len(self.class_names)} class names for a model with {self.num_classes} classes: "
                f"{_preview(self.class_names)}"
            )
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            raise ValueError(f"mean {self.mean} and std {self.std} need one value per input channel ({self.in_chans})")
        if not 0.0 < self.crop_pct <= 1.0:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")

    def replace(self, **changes: Any) -> VisionTransformerConfig:
        """A copy with `changes` (checked like a new config)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain types (str, int, float, bool, None, lists): for JSON and weights-only torch checkpoints."""
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VisionTransformerConfig:
        """Undo `to_dict` (also reads the partial `model_config` dicts of earlier fastdeit versions, whose missing
        fields take the defaults). Unknown keys raise ValueError naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; known: {sorted(known)}")
        return cls(**data)

    def describe(self) -> str:
        """One line for messages: name, architecture, classes."""
        size = f"{self.img_size[0]}x{self.img_size[1]}"
        patch = self.patch_size[0] if self.patch_size[0] == self.patch_size[1] else self.patch_size
        arch = (
            f"embed_dim={self.embed_dim}, depth={self.depth}, num_heads={self.num_heads}, patch {patch}, {size} px, "
            f"{'distilled' if self.distilled else 'not distilled'}, layer_norm_eps={self.layer_norm_eps:g}, "
            f"{self.num_classes} classes"
        )
        return f"{self.name or 'custom VisionTransformer'} ({arch})"

    def differences(self, other: VisionTransformerConfig) -> list[str]:
        """`field: self's value vs other's` for every field of CHECKED_FIELDS where the two differ."""
        return [
            f"{f}: {getattr(self, f)!r} vs {getattr(other, f)!r}"
            for f in CHECKED_FIELDS
            if getattr(self, f) != getattr(other, f)
        ]

    # --- Hugging Face -------------------------------------------------------------------------------------------

    def to_hf_config(self) -> dict[str, Any]:
        """The `config.json` of the matching transformers model: `DeiTForImageClassificationWithTeacher` when
        distilled, else `ViTForImageClassification` (how the Hub stores non-distilled DeiT); class names as
        id2label (transformers' LABEL_i when unknown)."""
        if self.img_size[0] != self.img_size[1] or self.patch_size[0] != self.patch_size[1]:
            raise ValueError(
                f"Hugging Face DeiT/ViT configs hold square sizes; this model has img_size {self.img_size} and "
                f"patch_size {self.patch_size}"
            )
        hidden = int(self.embed_dim * self.mlp_ratio)  # as the Block sizes its MLP
        names = self.class_names or tuple(f"LABEL_{i}" for i in range(self.num_classes))
        return {
            "architectures": [
                "DeiTForImageClassificationWithTeacher" if self.distilled else "ViTForImageClassification"
            ],
            "model_type": "deit" if self.distilled else "vit",
            "hidden_size": self.embed_dim,
            "num_hidden_layers": self.depth,
            "num_attention_heads": self.num_heads,
            "intermediate_size": hidden,
            "hidden_act": "gelu",
            "layer_norm_eps": self.layer_norm_eps,
            "image_size": self.img_size[0],
            "patch_size": self.patch_size[0],
            "num_channels": self.in_chans,
            "qkv_bias": self.qkv_bias,
            "id2label": {str(i): name for i, name in enumerate(names)},
            "label2id": {name: i for i, name in enumerate(names)},
        }

    def to_hf_preprocessor(self) -> dict[str, Any]:
        """The `preprocessor_config.json` of a Hugging Face folder: DeiT's image processor with this model's eval
        transform (resize to img_size / crop_pct, center crop to img_size), interpolation and normalisation."""
        crop = self.img_size[0]
        resize = int(crop / self.crop_pct)
        return {
            "image_processor_type": "DeiTImageProcessor",
            "do_resize": True,
            "size": {"height": resize, "width": resize},
            "resample": {"bilinear": 2, "bicubic": 3}.get(self.interpolation, 3),  # PIL's filter numbers
            "do_center_crop": True,
            "crop_size": {"height": crop, "width": crop},
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": list(self.mean),
            "image_std": list(self.std),
        }

    @staticmethod
    def fields_from_hf_config(hf: dict[str, Any], where: str = "config.json") -> dict[str, Any]:
        """The config fields a Hugging Face DeiT/ViT `config.json` records (name and drop rates are not among them).

        `num_classes` comes from id2label (0 for the headless DeiTModel/ViTModel); `class_names` too, unless they
        are transformers' placeholders LABEL_0, LABEL_1, ...
        """
        model_type = hf.get("model_type")
        architectures = hf.get("architectures") or []
        arch = architectures[0] if architectures else None
        supported = {
            "DeiTForImageClassificationWithTeacher": True,
            "DeiTModel": True,
            "ViTForImageClassification": False,
            "ViTModel": False,
        }
        if arch not in supported:
            if arch == "DeiTForImageClassification":
                raise ValueError(
                    f"{where}: DeiTForImageClassification (a distillation token, but one head on the class token "
                    "only) has no fastdeit equivalent; fastdeit builds DeiTForImageClassificationWithTeacher (two "
                    "heads, averaged), ViTForImageClassification, DeiTModel and ViTModel"
                )
            raise ValueError(
                f"{where}: architecture {arch!r} (model_type {model_type!r}) is not a DeiT/ViT fastdeit builds; "
                f"supported: {', '.join(supported)}"
            )
        if hf.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"{where}: hidden_act {hf['hidden_act']!r}; fastdeit's MLP uses the exact (erf) GELU")
        headless = arch.endswith("Model")
        labels = hf.get("id2label") or {}
        names = tuple(labels[k] for k in sorted(labels, key=int)) if labels else None
        # An empty id2label is a head of 0 classes, as transformers reads it (the classifier is then an Identity).
        num_classes = 0 if headless else len(labels) if "id2label" in hf else int(hf.get("num_labels", 2))
        placeholder = names == tuple(f"LABEL_{i}" for i in range(len(names or ())))
        hidden = int(hf["hidden_size"])
        return {
            "img_size": _pair(hf.get("image_size", 224)),
            "patch_size": _pair(hf.get("patch_size", 16)),
            "in_chans": int(hf.get("num_channels", 3)),
            "num_classes": num_classes,
            "embed_dim": hidden,
            "depth": int(hf["num_hidden_layers"]),
            "num_heads": int(hf["num_attention_heads"]),
            "mlp_ratio": int(hf.get("intermediate_size", 4 * hidden)) / hidden,
            "qkv_bias": bool(hf.get("qkv_bias", True)),
            "distilled": supported[arch],
            "layer_norm_eps": float(hf.get("layer_norm_eps", 1e-12)),
            "class_names": None if headless or placeholder or not names else names,
        }


class RecordsConfig:
    """What every fastdeit model reads from its `config` (a frozen dataclass with name, num_classes and class_names,
    set by the model's constructor): a mixin for the model classes, listed before nn.Module."""

    # No class-level annotations here: torch.jit.script (a teacher may be a TorchScript file) would compile them
    # as attribute types. It leaves these Python-side properties alone.
    __jit_unused_properties__ = ["num_classes", "class_names", "model_name", "model_config"]
    # Config fields the name gives, left out of `model_config`.
    _fields_of_the_name = ("name",)

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def class_names(self) -> tuple[str, ...] | None:
        """The name of each head output, or None when unknown."""
        return self.config.class_names

    @property
    def model_name(self) -> str:
        """The name the architecture started from (`fastdeit.list_models()`, a convnet's), else the class name."""
        return self.config.name or type(self).__name__

    @property
    def model_config(self) -> dict[str, Any]:
        """`config.to_dict()` without what the name gives (plain types): `create_model(model_name, **model_config)`
        (`create_convnet` for a convnet) rebuilds the model; train.py stores it in its checkpoints."""
        out = self.config.to_dict()
        for field in self._fields_of_the_name:
            del out[field]
        return out

    def set_class_names(self, names: Sequence[str] | None) -> None:
        """Record the name of each head output (None: unknown); one name per class."""
        self.config = dataclasses.replace(self.config, class_names=None if names is None else tuple(names))


def _preview(names: tuple[str, ...] | list[str], limit: int = 8) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}]"
