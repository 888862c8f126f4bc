"""--finetune: weights from another resolution and another class count; convnets build and load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fastdeit.models.convnet import create_convnet
from fastdeit.training import build_model, check_class_names, load_finetune_weights, weights_fields
from tests.helpers import small_model


def _save_training_checkpoint(model: torch.nn.Module, path: Path) -> Path:
    torch.save({"model": model.state_dict(), "config": {}, "model_name": "deit_tiny_distilled_patch16_224"}, path)
    return path


def test_finetune_at_another_resolution_with_a_new_head(tmp_path: Path):
    source = small_model(num_classes=5)  # 32 px, 4x4 grid of 8 px patches
    path = _save_training_checkpoint(source, tmp_path / "ckpt.pt")
    target = small_model(img_size=48, num_classes=10)  # 6x6 grid: pos_embed resampled, head replaced
    head_before = target.head.weight.clone()
    note = load_finetune_weights(target, path)
    assert "pos_embed resampled (1, 18, 64) -> (1, 38, 64)" in note and "new 10-class head" in note
    torch.testing.assert_close(target.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    torch.testing.assert_close(target.cls_token, source.cls_token)  # prefix tokens are kept as they are
    torch.testing.assert_close(target.head.weight, head_before)


def test_evaluating_weights_of_another_class_count_is_an_error(tmp_path: Path):
    path = _save_training_checkpoint(small_model(num_classes=5), tmp_path / "ckpt.pt")
    with pytest.raises(ValueError, match="head for 5 classes but the model has 10"):
        load_finetune_weights(small_model(num_classes=10), path, allow_new_head=False)


def test_build_model_dispatches_and_rebuilds_from_model_config():
    deit = build_model(
        "deit_tiny_distilled_patch16_224",
        num_classes=10,
        img_size=16,
        backend="torch",
        patch_size=4,
        embed_dim=32,
        depth=1,
        num_heads=2,
        mlp_ratio=None,
    )
    again = build_model(deit.model_name, backend="torch", **deit.model_config)
    assert again.patch_embed.grid_size == (4, 4) and again.embed_dim == 32 and again.distilled
    convnet = build_model("convnet_tiny", num_classes=10, img_size=16, embed_dim=None)
    assert convnet(torch.randn(2, 3, 16, 16)).shape == (2, 10)
    with pytest.raises(ValueError, match="takes no DeiT architecture overrides"):
        build_model("convnet_tiny", num_classes=10, embed_dim=96)


def test_convnet_weights_round_trip(tmp_path: Path):
    source = create_convnet("convnet_tiny", num_classes=10)
    torch.save({"model": source.state_dict()}, tmp_path / "c.pt")
    loaded = create_convnet("convnet_tiny", num_classes=10)
    load_finetune_weights(loaded, tmp_path / "c.pt")
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(loaded.eval()(x), source.eval()(x))
    with pytest.raises(ValueError, match=r"head on 64 features, the model's is on 128: another architecture"):
        load_finetune_weights(create_convnet("convnet_small", num_classes=10), tmp_path / "c.pt")


def test_class_names_check_shows_the_differing_entries_first():
    dataset = [f"n{i:08d}" for i in range(1000)]  # ImageNet's folder names
    checkpoint = list(dataset)
    checkpoint[3], checkpoint[500] = "tench", "goldfish"
    with pytest.raises(ValueError) as err:
        check_class_names(checkpoint, dataset, what="checkpoint")
    lines = str(err.value).splitlines()
    assert lines[0].startswith("the checkpoint's classes are not the dataset's")
    assert lines[1:4] == [
        "  class 3: checkpoint 'tench', dataset 'n00000003'",
        "  class 500: checkpoint 'goldfish', dataset 'n00000500'",
        "  (2 of 1000 classes differ)",
    ]
    assert lines[4].startswith("  checkpoint (1000): ['n00000000', 'n00000001', 'n00000002', 'tench', ")
    assert lines[4].endswith(", ...]") and lines[5].startswith("  dataset (1000): ['n00000000', ")
    check_class_names(dataset, dataset, what="checkpoint")
    with pytest.raises(ValueError, match=r"the checkpoint has 999 classes, the dataset 1000"):
        check_class_names(dataset[:-1], dataset, what="checkpoint", allow=True)  # a count never fits


def test_weights_fields_are_what_no_train_key_sets():
    hf_like = small_model(num_classes=10).config.replace(layer_norm_eps=1e-12, qkv_bias=False)
    assert weights_fields(hf_like, "deit_tiny_patch16_224") == {"qkv_bias": False, "layer_norm_eps": 1e-12}
    assert weights_fields(hf_like.to_dict(), "deit_tiny_patch16_224") == {"qkv_bias": False, "layer_norm_eps": 1e-12}
    assert weights_fields(hf_like, "convnet_small") == {}  # a convnet has no LayerNorm to set
    assert weights_fields(create_convnet("convnet_tiny", num_classes=10).config, "deit_tiny_patch16_224") == {}
    assert weights_fields(None, "deit_tiny_patch16_224") == {}  # bare weights record nothing
