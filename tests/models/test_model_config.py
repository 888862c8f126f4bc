"""VisionTransformerConfig: plain-type round trips (JSON, weights-only torch checkpoints), Hugging Face config.json
both ways, checks that name what is wrong."""

from __future__ import annotations

import json

import pytest
import torch

from fastdeit.models import VisionTransformerConfig

CONFIG = VisionTransformerConfig(
    name="deit_tiny_distilled_patch16_224",
    img_size=48,
    patch_size=8,
    num_classes=3,
    embed_dim=64,
    depth=2,
    num_heads=2,
    distilled=True,
    layer_norm_eps=1e-12,
    class_names=("cat", "dog", "bird"),
)


def test_plain_type_round_trips(tmp_path):
    data = CONFIG.to_dict()
    assert VisionTransformerConfig.from_dict(json.loads(json.dumps(data))) == CONFIG
    torch.save({"model_config": data}, tmp_path / "c.pt")
    loaded = torch.load(tmp_path / "c.pt", weights_only=True)["model_config"]
    assert VisionTransformerConfig.from_dict(loaded) == CONFIG
    assert CONFIG.img_size == (48, 48) and CONFIG.crop_pct == 0.875
    assert VisionTransformerConfig(img_size=384).crop_pct == 1.0  # timm's DeiT at 384


def test_hugging_face_config_both_ways():
    fields = VisionTransformerConfig.fields_from_hf_config(CONFIG.to_hf_config())
    assert CONFIG.replace(**fields) == CONFIG
    unnamed = CONFIG.replace(class_names=None).to_hf_config()
    assert unnamed["id2label"]["0"] == "LABEL_0"  # transformers' placeholders ...
    assert VisionTransformerConfig.fields_from_hf_config(unnamed)["class_names"] is None  # ... are not names
    vit = CONFIG.replace(distilled=False).to_hf_config()
    assert vit["architectures"] == ["ViTForImageClassification"] and vit["model_type"] == "vit"


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(num_classes=3, class_names=("a", "b")), "2 class names for a model with 3 classes"),
        (dict(embed_dim=100, num_heads=3), "embed_dim must be divisible by num_heads"),
        (dict(layer_norm_eps=0.0), "layer_norm_eps must be a positive number"),
        (dict(num_classes=-1), "num_classes must be >= 0"),
        (dict(mean=(0.5,)), "one value per input channel"),
        (dict(crop_pct=1.5), r"crop_pct must be in \(0, 1\]"),
    ],
)
def test_bad_configs(fields, message):
    with pytest.raises(ValueError, match=message):
        VisionTransformerConfig(**fields)


def test_unknown_keys_and_foreign_hf_configs():
    with pytest.raises(ValueError, match=r"unknown model config keys \['embed_dimm'\]"):
        VisionTransformerConfig.from_dict({"embed_dimm": 3})
    hf = CONFIG.to_hf_config()
    with pytest.raises(ValueError, match="architecture 'SwinForImageClassification'.*not a DeiT/ViT"):
        VisionTransformerConfig.fields_from_hf_config(dict(hf, architectures=["SwinForImageClassification"]))
    with pytest.raises(ValueError, match="hidden_act 'gelu_new'"):
        VisionTransformerConfig.fields_from_hf_config(dict(hf, hidden_act="gelu_new"))
