"""Checkpoint formats: timm/official DeiT, Hugging Face (Hub and transformers>=5 names), safetensors,
fastdeit's own; pos-embed resampling; head handling; clear errors."""

import json
import logging

import pytest
import torch
from safetensors.torch import save_file
from torch.optim.swa_utils import AveragedModel

import fastdeit
from fastdeit.models import resample_pos_embed
from fastdeit.models.checkpoint import hf_to_timm, read_checkpoint, timm_to_hf
from tests.helpers import hf_config, small_model

transformers = pytest.importorskip("transformers")
logging.getLogger("transformers").setLevel(logging.ERROR)


def _assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)


@pytest.fixture
def src():
    torch.manual_seed(0)
    return small_model(distilled=True)


@pytest.mark.parametrize(
    "wrap, fmt",
    [
        (lambda sd: sd, "timm"),
        (lambda sd: {"model": sd}, "timm"),  # official DeiT release format
        (lambda sd: {"state_dict": sd, "epoch": 3}, "timm"),  # timm train.py format
        (lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}}, "timm"),  # saved from DDP
        (lambda sd: {f"_orig_mod.{k}": v for k, v in sd.items()}, "timm"),  # saved from torch.compile
        (lambda sd: {"model": sd, "config": {"lr": 1.0}, "step": 4}, "fastdeit-training"),
    ],
)
def test_torch_formats_round_trip(tmp_path, src, wrap, fmt):
    path = tmp_path / "ckpt.pth"
    torch.save(wrap(src.state_dict()), path)
    dst = small_model(distilled=True)
    result = fastdeit.load_checkpoint(dst, path)
    assert result.format == fmt
    _assert_same_weights(src, dst)


def test_ema_weights(tmp_path, src):
    ema = AveragedModel(src)  # keys "module.*" plus "n_averaged"
    with torch.no_grad():
        for p in ema.module.parameters():
            p.add_(1.0)
    torch.save({"model": src.state_dict(), "model_ema": ema.state_dict(), "config": {}}, tmp_path / "c.pth")
    dst = small_model(distilled=True)
    assert fastdeit.load_checkpoint(dst, tmp_path / "c.pth", use_ema=True).format == "ema"
    _assert_same_weights(ema.module, dst)
    with pytest.raises(ValueError, match="no EMA weights"):
        torch.save({"model": src.state_dict()}, tmp_path / "noema.pth")
        fastdeit.load_checkpoint(dst, tmp_path / "noema.pth", use_ema=True)


def test_safetensors_and_save_pretrained(tmp_path, src):
    save_file(src.state_dict(), str(tmp_path / "w.safetensors"))
    dst = small_model(distilled=True)
    assert fastdeit.load_checkpoint(dst, tmp_path / "w.safetensors").format == "safetensors"
    _assert_same_weights(src, dst)

    out = fastdeit.save_pretrained(src, tmp_path / "pretrained")
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "deit_tiny_distilled_patch16_224"
    assert not list(out.glob("*.tmp"))  # atomic writes leave no temporaries
    rebuilt = fastdeit.from_pretrained(out, backend="torch")
    _assert_same_weights(src, rebuilt)
    assert rebuilt.embed_dim == 64 and rebuilt.num_classes == 10
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(rebuilt.eval()(x), src.eval()(x))
    via_create = fastdeit.create_model(
        "deit_tiny_distilled_patch16_224",
        checkpoint=out,
        backend="torch",
        img_size=32,
        patch_size=8,
        embed_dim=64,
        depth=2,
        num_heads=2,
        num_classes=10,
    )
    _assert_same_weights(src, via_create)


def test_hf_hub_files_load(tmp_path):
    """HF's own save_pretrained writes the Hub's key names (attention.attention.query, ...)."""
    torch.manual_seed(0)
    hf = transformers.DeiTForImageClassificationWithTeacher(hf_config(True)).eval()
    hf.save_pretrained(tmp_path / "hf")
    dst = small_model(distilled=True).eval()
    assert fastdeit.load_checkpoint(dst, tmp_path / "hf").format == "huggingface"
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(dst(x), hf(pixel_values=x).logits, rtol=1e-5, atol=1e-5)
    # pytorch_model.bin with the transformers>=5 in-memory names (layers.N.attention.q_proj, ...)
    (tmp_path / "bin").mkdir()
    torch.save(hf.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    dst2 = small_model(distilled=True).eval()
    fastdeit.load_checkpoint(dst2, tmp_path / "bin")
    _assert_same_weights(dst, dst2)


def test_hf_classifier_without_teacher_head(tmp_path):
    """DeiTForImageClassification has a dist token but one head: strict load names what is missing."""
    hf = transformers.DeiTForImageClassification(hf_config(True))
    hf.save_pretrained(tmp_path / "hf")
    with pytest.raises(ValueError, match=r"missing keys: \['head_dist.bias', 'head_dist.weight'\]"):
        fastdeit.load_checkpoint(small_model(distilled=True), tmp_path / "hf")
    result = fastdeit.load_checkpoint(small_model(distilled=True), tmp_path / "hf", strict=False)
    assert result.missing_keys == ["head_dist.bias", "head_dist.weight"]


@pytest.mark.parametrize("distilled", [True, False])
def test_parity_with_transformers(tmp_path, distilled):
    """Ours -> HF keys -> transformers model: same logits on the same random weights, and back."""
    torch.manual_seed(0)
    ours = small_model(distilled=distilled).eval()
    fastdeit.save_hf(ours, tmp_path / "hf")
    cls = transformers.DeiTForImageClassificationWithTeacher if distilled else transformers.ViTForImageClassification
    hf = cls.from_pretrained(tmp_path / "hf").eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        diff = (ours(x) - hf(pixel_values=x).logits).abs().max().item()
    print(f"max |logit difference| fastdeit vs transformers ({cls.__name__}): {diff:.3g}")
    assert diff < 1e-5
    back, ignored = hf_to_timm(timm_to_hf(ours.state_dict()))
    assert ignored == []
    assert back.keys() == ours.state_dict().keys()
    for k, v in ours.state_dict().items():
        assert torch.equal(back[k], v), k


def test_pos_embed_resampled_on_load(tmp_path, src):
    torch.save(src.state_dict(), tmp_path / "c.pth")
    big = small_model(distilled=True, img_size=48)
    result = fastdeit.load_checkpoint(big, tmp_path / "c.pth")
    assert result.resampled_pos_embed == ((1, 18, 64), (1, 38, 64))
    torch.testing.assert_close(big.pos_embed[:, :2], src.pos_embed[:, :2])  # cls and dist kept
    expected = (
        torch.nn.functional.interpolate(
            src.pos_embed[:, 2:].reshape(1, 4, 4, 64).permute(0, 3, 1, 2), size=(6, 6), mode="bicubic"
        )
        .permute(0, 2, 3, 1)
        .reshape(1, 36, 64)
    )
    torch.testing.assert_close(big.pos_embed[:, 2:], expected)
    assert big.eval()(torch.randn(1, 3, 48, 48)).shape == (1, 10)
    # Resampling to the same grid is the identity; a dynamic-size model resamples on the fly the same way.
    assert resample_pos_embed(src.pos_embed, (4, 4), 2) is src.pos_embed
    dyn = small_model(distilled=True, dynamic_img_size=True).eval()
    dyn.load_state_dict(src.state_dict())
    x = torch.randn(1, 3, 48, 48)
    torch.testing.assert_close(dyn(x), big.eval()(x))


def test_head_of_other_class_count(tmp_path, src):
    torch.save(src.state_dict(), tmp_path / "c.pth")
    five = small_model(distilled=True, num_classes=5)
    with pytest.raises(ValueError, match="head for 10 classes but the model has 5.*drop_head=True"):
        fastdeit.load_checkpoint(five, tmp_path / "c.pth")
    head_before = five.head.weight.clone()
    result = fastdeit.load_checkpoint(five, tmp_path / "c.pth", drop_head=True)
    assert result.dropped_head
    torch.testing.assert_close(five.head.weight, head_before)
    torch.testing.assert_close(five.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight)


def test_other_architecture_is_a_clear_error(tmp_path, src):
    torch.save(src.state_dict(), tmp_path / "c.pth")
    with pytest.raises(ValueError, match=r"another architecture \(embed_dim=64, depth=2, distilled=True"):
        fastdeit.load_checkpoint(small_model(distilled=False, embed_dim=32), tmp_path / "c.pth")
    with pytest.raises(
        ValueError,
        match=r"does not fit the model.*\n  blocks.0.mlp.fc1.weight: checkpoint \(256, 64\) vs model \(128, 64\)",
    ):
        fastdeit.load_checkpoint(small_model(distilled=True, mlp_ratio=2.0), tmp_path / "c.pth")
    with pytest.raises(ValueError, match=r"missing keys: \[.*blocks.2.attn.proj.bias"):
        fastdeit.load_checkpoint(small_model(distilled=True, depth=3), tmp_path / "c.pth")
    with pytest.raises(ValueError, match=r"unexpected keys: \[.*blocks.1"):
        fastdeit.load_checkpoint(small_model(distilled=True, depth=1), tmp_path / "c.pth")


def test_bad_files(tmp_path):
    model = small_model()
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        fastdeit.load_checkpoint(model, tmp_path / "missing.pth")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds none of"):
        fastdeit.load_checkpoint(model, tmp_path / "empty")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="neither a torch checkpoint nor a safetensors file"):
        fastdeit.load_checkpoint(model, tmp_path / "garbage.pth")
    (tmp_path / "short.pth").write_bytes(b"PK")
    with pytest.raises(ValueError, match="empty or truncated"):
        fastdeit.load_checkpoint(model, tmp_path / "short.pth")
    # cut-short copies, named as such (before: a weights_only complaint; "neither a torch checkpoint nor ...")
    from safetensors.torch import save_file

    torch.save({"w": torch.zeros(1000)}, tmp_path / "whole.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "whole.pth").read_bytes()[:-300])
    with pytest.raises(ValueError, match="cut.pth' is truncated or corrupt"):
        fastdeit.load_checkpoint(model, tmp_path / "cut.pth")
    save_file({"w": torch.zeros(1000)}, tmp_path / "whole.safetensors")
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "whole.safetensors").read_bytes()[:-300])
    with pytest.raises(ValueError, match="cut.safetensors' is a safetensors file that is truncated or corrupt"):
        fastdeit.load_checkpoint(model, tmp_path / "cut.safetensors")
    torch.save({"model": {"w": torch.zeros(1)}, "opt": object.__new__(_Unsafe)}, tmp_path / "pickle.pth")
    with pytest.raises(ValueError, match="weights_only=True"):
        fastdeit.load_checkpoint(model, tmp_path / "pickle.pth")
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        fastdeit.from_pretrained(tmp_path / "empty")


class _Unsafe:
    """An arbitrary class: weights_only loading must refuse to unpickle it."""


def test_read_checkpoint_returns_timm_names(tmp_path, src):
    fastdeit.save_hf(src, tmp_path / "hf")
    ckpt = read_checkpoint(tmp_path / "hf")
    assert ckpt.format == "huggingface" and ckpt.state_dict.keys() == src.state_dict().keys()
    assert ckpt.config.differences(src.config) == []
