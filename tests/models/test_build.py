"""Building models from anything saved (fastdeit.models.build): training checkpoints and run folders, save_pretrained
and Hugging Face folders come back with their architecture, LayerNorm eps, image size and class names; what the
caller asks for is checked against what the checkpoint records, and a conflict names both sides."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

import fastdeit
from fastdeit.inference import imagenet_labels
from fastdeit.models.build import ArchitectureMismatch
from fastdeit.models.checkpoint import CheckpointWarning, checkpoint_name
from fastdeit.models.convnet import create_convnet
from tests.helpers import hf_config, small_model

CLASSES = tuple(f"class_{c}" for c in "abcdefghij")  # 10 names, not the indices


def write_training_checkpoint(path: Path, model: torch.nn.Module, class_names=CLASSES, step: int = 7) -> Path:
    """A checkpoint with the keys train.py writes (optimizer and RNG states left empty: loading ignores them)."""
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    with torch.no_grad():
        for p in ema.module.parameters():
            p.add_(0.5)
    state = {
        "model": model.state_dict(),
        "model_ema": ema.state_dict(),
        "optimizer": {},
        "scaler": {},
        "scheduler": {},
        "step": step,
        "epoch": 1,
        "epoch_step": 0,
        "rng": [],
        "config": {"model": model.model_name},
        "model_name": model.model_name,
        "model_config": model.model_config,
        "class_names": list(class_names),
        "metrics": {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module, size: int = 32) -> None:
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(a.eval()(x), b.eval()(x), rtol=0, atol=0)


# --- training checkpoints and run folders --------------------------------------------------------------------------


def test_training_checkpoint_file_rebuilds_architecture_and_class_names(tmp_path):
    """No architecture flags: before, from_pretrained wanted a save_pretrained folder and create_model rebuilt
    deit_tiny at 224 px, 1000 classes."""
    torch.manual_seed(0)
    src = small_model(distilled=True, img_size=48, layer_norm_eps=1e-5)
    path = write_training_checkpoint(tmp_path / checkpoint_name(7), src)
    for model in (
        fastdeit.from_pretrained(path, backend="torch"),
        fastdeit.create_model(checkpoint=path, backend="torch"),
        fastdeit.create_model("deit_tiny_distilled_patch16_224", checkpoint=path, backend="torch"),
        fastdeit.load_model(path, backend="torch"),
    ):
        assert model.config.differences(src.config) == []
        assert model.img_size == (48, 48) and model.num_classes == 10 and model.class_names == CLASSES
        assert {m.eps for m in model.modules() if isinstance(m, torch.nn.LayerNorm)} == {1e-5}
        _same_outputs(model, src, 48)
    ema = fastdeit.from_pretrained(path, backend="torch", use_ema=True)
    torch.testing.assert_close(ema.cls_token, src.cls_token + 0.5)


def test_run_folder_uses_the_newest_readable_checkpoint(tmp_path, caplog):
    torch.manual_seed(0)
    old, new = small_model(), small_model()
    write_training_checkpoint(tmp_path / checkpoint_name(5), old, step=5)
    write_training_checkpoint(tmp_path / checkpoint_name(10), new, step=10)
    with caplog.at_level(logging.INFO, logger="fastdeit"):
        _same_outputs(fastdeit.from_pretrained(tmp_path, backend="torch"), new)
    assert f"using {checkpoint_name(10)}, the newest of 2 checkpoint(s)" in caplog.text
    # A truncated newest checkpoint (a copy cut short) is passed over, named in a warning.
    newest = tmp_path / checkpoint_name(10)
    newest.write_bytes(newest.read_bytes()[:1000])
    with pytest.warns(CheckpointWarning, match=rf"passing over .*{checkpoint_name(10)}: it cannot be read"):
        _same_outputs(fastdeit.load_model(tmp_path, backend="torch"), old)


def test_predictor_takes_class_names_from_the_model(tmp_path):
    """A 10-class run's names, never ImageNet's; ImageNet's only for a 1000-class head without names."""
    torch.manual_seed(0)
    write_training_checkpoint(tmp_path / checkpoint_name(7), small_model(distilled=False))
    pred = fastdeit.Predictor(tmp_path, device="cpu").predict(torch.randn(1, 3, 32, 32), topk=3)[0]
    assert pred.labels == tuple(CLASSES[i] for i in pred.indices)
    by_name = fastdeit.Predictor("deit_tiny_patch16_224", checkpoint=tmp_path, device="cpu")  # built as recorded
    assert by_name.num_classes == 10 and by_name.label_names == CLASSES
    unnamed = fastdeit.Predictor(small_model(), device="cpu").predict(torch.randn(1, 3, 32, 32))[0]
    assert unnamed.labels is None
    imagenet = fastdeit.Predictor(small_model(num_classes=1000), device="cpu").predict(torch.randn(1, 3, 32, 32))[0]
    assert imagenet.labels == tuple(imagenet_labels()[i] for i in imagenet.indices)


def test_convnet_checkpoint_meets_a_deit(tmp_path):
    """Names the architectures; before: 'has a head for 5 classes but the model has 5'."""
    convnet = create_convnet("convnet_small", num_classes=5)  # head (5, 128): the old message said "5 vs 5"
    path = write_training_checkpoint(tmp_path / "c.pt", convnet, class_names=[str(i) for i in range(5)])
    with pytest.raises(
        ValueError, match=r"holds another architecture: convnet_small \(ConvNet.*the model is deit_tiny"
    ):
        fastdeit.load_checkpoint(small_model(num_classes=5), path)
    with pytest.raises(ValueError, match="holds convnet_small .*not a DeiT"):
        fastdeit.create_model(checkpoint=path)
    loaded = fastdeit.load_model(path)  # a convnet comes back as one
    assert loaded.model_name == "convnet_small" and loaded.class_names == tuple("01234")
    _same_outputs(loaded, convnet, 16)
    bare = tmp_path / "bare.pt"
    torch.save(convnet.state_dict(), bare)
    with pytest.raises(ValueError, match=r"another architecture: a ConvNet's weights .*the model is deit_tiny"):
        fastdeit.load_checkpoint(small_model(num_classes=5), bare)


# --- what the caller asks for against what the checkpoint records --------------------------------------------------


def test_conflicts_name_both_sides(tmp_path):
    src = small_model(distilled=True)
    path = write_training_checkpoint(tmp_path / "c.pt", src)
    with pytest.raises(ValueError, match=r"asked for another model: embed_dim: 64 vs 32 \(checkpoint vs asked"):
        fastdeit.create_model(checkpoint=path, embed_dim=32)
    with pytest.raises(
        ArchitectureMismatch, match=r"not a deit_small_patch16_224: embed_dim: 64 vs 384.*distilled: True vs"
    ) as e:
        fastdeit.create_model("deit_small_patch16_224", checkpoint=path)
    # Python callers are told to leave out the name; the command line says it with its flags (test_cli_predict).
    assert str(e.value).endswith(
        "(checkpoint vs deit_small_patch16_224); leave out the name to build the checkpoint's model"
    )
    assert e.value.mismatch.endswith("(checkpoint vs deit_small_patch16_224)") and isinstance(e.value, ValueError)
    with pytest.raises(ValueError, match="head for 10 classes but the model has 5"):
        fastdeit.create_model(checkpoint=path, num_classes=5)
    five = fastdeit.create_model(checkpoint=path, num_classes=5, drop_head=True, backend="torch")
    assert five.num_classes == 5 and five.class_names is None  # a new head: new classes
    with pytest.raises(ValueError, match=r"\(checkpoint vs model\): layer_norm_eps: 1e-06 vs 1e-12"):
        fastdeit.load_checkpoint(small_model(distilled=True, layer_norm_eps=1e-12), path)
    other = tuple(reversed(CLASSES))
    with pytest.raises(
        ValueError, match=r"other classes than the model's.*\n  checkpoint: \['class_a'.*\n  model: +\['class_j'"
    ):
        fastdeit.load_checkpoint(small_model(distilled=True, class_names=other), path)
    with pytest.raises(ValueError, match="other classes"):
        fastdeit.create_model(checkpoint=path, class_names=other)
    many = [f"n{i}" for i in range(30)]
    path = write_training_checkpoint(tmp_path / "c30.pt", small_model(num_classes=30), class_names=many)
    swapped = many[:3] + ["n4", "n3"] + many[5:]
    with pytest.raises(ValueError, match=r"\n  class 3: checkpoint 'n3', model 'n4'\n.*\n  \(2 of 30 classes differ\)"):
        fastdeit.load_checkpoint(small_model(num_classes=30, class_names=swapped), path)


def test_bare_weights_need_a_name_and_keep_their_size(tmp_path):
    """Bare weights at 32 px: never resampled to the name's 224 unless asked for (before, they were, silently)."""
    src = small_model(distilled=False)
    torch.save(src.state_dict(), tmp_path / "w.pth")
    with pytest.raises(ValueError, match="do not record their architecture: pass the model name"):
        fastdeit.from_pretrained(tmp_path / "w.pth")
    arch = dict(patch_size=8, embed_dim=64, depth=2, num_heads=2)
    with pytest.raises(ValueError, match=r"weights for 32x32 images but deit_tiny_patch16_224 is a 224x224 model: "
                       r"pass img_size=224 to resample .*, or img_size=32"):  # fmt: skip
        fastdeit.create_model("deit_tiny_patch16_224", checkpoint=tmp_path / "w.pth", **arch)
    same = fastdeit.create_model("deit_tiny_patch16_224", checkpoint=tmp_path / "w.pth", img_size=32, **arch)
    assert same.num_classes == 10  # read off the head
    _same_outputs(same, src)
    bigger = fastdeit.create_model("deit_tiny_patch16_224", checkpoint=tmp_path / "w.pth", img_size=48, **arch)
    assert bigger.pos_embed.shape == (1, 37, 64)


# --- Hugging Face folders ------------------------------------------------------------------------------------------

transformers = pytest.importorskip("transformers")
logging.getLogger("transformers").setLevel(logging.ERROR)

HF_CLASSES = {
    True: transformers.DeiTForImageClassificationWithTeacher,
    False: transformers.ViTForImageClassification,
}


def _small_variance_hf(distilled: bool, **overrides):
    """A transformers model whose tokens have a variance of ~1e-9 per channel, where LayerNorm's eps matters: with
    1e-6 instead of 1e-12 the normalised tokens shrink ~30x."""
    torch.manual_seed(0)
    names = {str(i): f"kind {i}" for i in range(10)}
    cfg = hf_config(distilled, layer_norm_eps=1e-12, id2label=names, label2id={v: k for k, v in names.items()})
    for key, value in overrides.items():
        setattr(cfg, key, value)
    hf = HF_CLASSES[distilled](cfg).eval()
    backbone = hf.deit if distilled else hf.vit
    with torch.no_grad():
        for p in backbone.embeddings.parameters():
            p.mul_(3e-5)
    return hf


@pytest.mark.parametrize("distilled", [True, False])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_hf_folder_with_its_config(tmp_path, distilled, backend):
    """eps 1e-12, image size 48 and id2label come from config.json; before, eps became 1e-6 (logits off) and the
    position embedding was resampled to the name's 224."""
    hf = _small_variance_hf(distilled, image_size=48)
    hf.save_pretrained(tmp_path / "hf")
    x = torch.randn(2, 3, 48, 48) * 1e-3
    with torch.no_grad():
        expected = hf(pixel_values=x).logits
    name = "deit_tiny_distilled_patch16_224" if distilled else "deit_tiny_patch16_224"
    arch = dict(patch_size=8, embed_dim=64, depth=2, num_heads=2)
    with pytest.raises(ValueError, match=f"weights for 48x48 images but {name} is a 224x224 model"):
        fastdeit.create_model(name, checkpoint=tmp_path / "hf", backend=backend, **arch)
    for model in (
        fastdeit.from_pretrained(tmp_path / "hf", backend=backend),
        fastdeit.create_model(name, checkpoint=tmp_path / "hf", backend=backend, img_size=48, **arch),
    ):
        assert model.config.layer_norm_eps == 1e-12 and model.img_size == (48, 48) and model.distilled == distilled
        assert model.class_names == tuple(f"kind {i}" for i in range(10))
        with torch.no_grad():
            got = model.eval()(x)
        # Relative to the logits' size: fp32 through both stacks; eps 1e-6 gives errors of order 1.
        assert (got - expected).norm() / expected.norm() < 1e-4


def test_hf_normalisation_is_carried_and_checked(tmp_path):
    """The image processor's mean/std (preprocessor_config.json) come with the model; weights expecting another
    normalisation do not go silently into an ImageNet-normalised model."""
    torch.manual_seed(0)
    transformers.DeiTForImageClassificationWithTeacher(hf_config(True)).save_pretrained(tmp_path / "hf")
    half = [0.5, 0.5, 0.5]
    (tmp_path / "hf" / "preprocessor_config.json").write_text(json.dumps({"image_mean": half, "image_std": half}))
    model = fastdeit.from_pretrained(tmp_path / "hf", backend="torch")
    assert model.config.mean == model.config.std == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match=r"mean: \(0.5, 0.5, 0.5\) vs \(0.485, 0.456, 0.406\)"):
        fastdeit.load_checkpoint(small_model(distilled=True), tmp_path / "hf")
    with pytest.raises(ValueError, match="normalizes with the ImageNet mean/std; the model expects"):
        fastdeit.Predictor(model, device="cpu")


def test_hf_headless_backbone(tmp_path):
    torch.manual_seed(0)
    transformers.DeiTModel(hf_config(True)).save_pretrained(tmp_path / "deit")
    model = fastdeit.from_pretrained(tmp_path / "deit", backend="torch")
    assert model.distilled and model.num_classes == 0 and model.class_names is None


def test_hf_classifier_without_teacher_is_named(tmp_path):
    transformers.DeiTForImageClassification(hf_config(True)).save_pretrained(tmp_path / "hf")
    with pytest.raises(ValueError, match="DeiTForImageClassification .* has no fastdeit equivalent"):
        fastdeit.from_pretrained(tmp_path / "hf")


# --- saving ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("distilled", [True, False])
def test_save_hf_and_save_pretrained_keep_class_names_and_eps(tmp_path, distilled):
    """Before, save_hf wrote LABEL_0... and from_pretrained forgot the names."""
    torch.manual_seed(0)
    src = small_model(distilled=distilled, class_names=CLASSES, layer_norm_eps=1e-12)
    fastdeit.save_hf(src, tmp_path / "hf")
    hf = HF_CLASSES[distilled].from_pretrained(tmp_path / "hf").eval()
    assert [hf.config.id2label[i] for i in range(10)] == list(CLASSES) and hf.config.layer_norm_eps == 1e-12
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(hf(pixel_values=x).logits, src.eval()(x), rtol=1e-5, atol=1e-5)
    fastdeit.save_pretrained(src, tmp_path / "ours")
    for folder in ("hf", "ours"):
        back = fastdeit.from_pretrained(tmp_path / folder, backend="torch")
        assert back.class_names == CLASSES and back.config.layer_norm_eps == 1e-12
        assert back.config.differences(src.config) == []
        with torch.no_grad():
            torch.testing.assert_close(back.eval()(x), src(x), rtol=1e-6, atol=1e-6)
    saved = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert saved["model_config"]["class_names"] == list(CLASSES) and saved["format"] == "fastdeit"


def test_save_hf_keeps_the_eval_transform_and_a_headless_model(tmp_path):
    """Before: no preprocessor_config.json (mean/std came back as ImageNet's; transformers' AutoImageProcessor could
    not load the folder), and a headless model came back with a 2-class head (an empty id2label read as
    num_labels' default)."""
    import numpy as np
    import transformers
    from PIL import Image

    src = small_model(num_classes=0, mean=(0.5,) * 3, std=(0.25,) * 3)
    fastdeit.save_hf(src, tmp_path / "hf")
    back = fastdeit.from_pretrained(tmp_path / "hf", backend="torch")
    assert (back.num_classes, back.config.mean, back.config.std) == (0, (0.5,) * 3, (0.25,) * 3)
    processor = transformers.AutoImageProcessor.from_pretrained(tmp_path / "hf")
    assert list(processor.image_mean) == [0.5] * 3 and list(processor.image_std) == [0.25] * 3
    image = Image.fromarray((np.random.default_rng(0).random((50, 40, 3)) * 255).astype("uint8"))
    assert processor(image, return_tensors="pt")["pixel_values"].shape == (1, 3, 32, 32)


def test_save_pretrained_folder_of_an_earlier_version(tmp_path):
    """config.json of fastdeit <= 0.x: the name and its overrides only; the missing fields are the defaults."""
    src = small_model(distilled=True)
    fastdeit.save_pretrained(src, tmp_path / "old")
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    keep = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "distilled", "num_classes")
    config["model_config"] = {k: config["model_config"][k] for k in keep}
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))
    back = fastdeit.from_pretrained(tmp_path / "old", backend="torch")
    assert back.config.differences(src.config) == [] and back.class_names is None
    _same_outputs(back, src)


# --- the whole path: train.py, then predict with no architecture flags -------------------------------------------


@pytest.mark.slow
def test_trained_run_predicts_with_its_class_names(tmp_path, capsys):
    from fastdeit import cli
    from fastdeit.data.digits import prepare_digits
    from tests.train.helpers import run_train, tiny_args

    out = tmp_path / "run"
    proc = run_train(tiny_args(epochs=1, output_dir=out, distillation_type="none", model_ema="false"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    images = sorted((prepare_digits(size=32) / "val").glob("*/*.jpg"))[:3]
    code = cli.main(["predict", "--model", str(out), "--topk", "2", "--no-progress", *map(str, images)])
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    # The digits' class names are their folder names "0".."9": "path: 3 0.4121, 8 0.1150", not "class 3 0.4121".
    assert len(stdout.splitlines()) == 3 and "class " not in stdout
    assert "random weights" not in stderr
