"""The training config: defaults are DeiT's, files and flags override them, bad input is rejected clearly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fastdeit.training import ConfigError, TrainConfig, build_model, load_config_file, parse_config
from tests.train.helpers import REPO


def test_defaults_are_the_deit_recipe():
    c = TrainConfig(data="digits")
    assert (c.lr, c.weight_decay, c.opt_betas, c.opt_eps) == (5e-4, 0.05, (0.9, 0.999), 1e-8)
    assert (c.epochs, c.warmup_epochs, c.warmup_lr, c.min_lr) == (300, 5.0, 1e-6, 1e-5)
    assert (c.smoothing, c.drop_path, c.reprob, c.repeated_aug) == (0.1, 0.1, 0.25, 3)
    assert (c.mixup, c.cutmix, c.mixup_prob, c.mixup_switch_prob) == (0.8, 1.0, 1.0, 0.5)
    assert (c.model_ema, c.model_ema_decay, c.clip_grad) == (True, 0.99996, None)
    assert (c.distillation_type, c.distillation_alpha, c.distillation_tau) == ("none", 0.5, 1.0)
    assert c.rand_augment == "rand-m9-mstd0.5-inc1" and c.crop_pct == 0.875
    assert (c.crop_scale, c.hflip) == ((0.08, 1.0), 0.5)


def test_flags_override_and_are_typed():
    c = parse_config(
        [
            "--data",
            "digits",
            "--lr",
            "1e-3",
            "--epochs",
            "7",
            "--opt-betas",
            "0.8,0.99",
            "--clip-grad",
            "1.5",
            "--eval-batch-size",
            "none",
            "--compile",
            "--tensorboard",
            "false",
            "--model_ema",
            "no",
            "--crop-scale",
            "0.35,1",
            "--hflip",
            "0",
        ]
    )
    assert c.lr == 1e-3 and c.epochs == 7 and c.opt_betas == (0.8, 0.99) and c.clip_grad == 1.5
    assert c.crop_scale == (0.35, 1.0) and c.hflip == 0.0
    assert c.eval_batch_size is None and c.compile is True and c.tensorboard is False and c.model_ema is False


def test_progress_bar_only_on_a_terminal_unless_asked():
    assert TrainConfig(data="digits").progress is None  # fastdeit._env.show_progress: a bar on a terminal only
    assert parse_config(["--data", "digits", "--progress"]).progress is True
    assert parse_config(["--data", "digits", "--progress", "false"]).progress is False


def test_architecture_defaults_are_left_to_the_model_or_checkpoint():
    """Unset, the architecture comes from the --resume checkpoint, else from the model name (see `resolve`)."""
    c = TrainConfig(data="digits")
    assert (c.model, c.img_size) == (None, None)
    assert (c.resolve().model, c.resolve().img_size) == ("deit_base_patch16_224", 224)
    assert c.replace(model="deit_base_distilled_patch16_384").resolve().img_size == 384
    assert c.replace(model="convnet_tiny").resolve().img_size == 224  # a convnet takes any size: DeiT's


def _checkpoint_state(**train_flags: object) -> dict:
    """What resolve reads of a train.py checkpoint: the model's name and config, and the run's config."""
    config = TrainConfig(data="digits", model="deit_tiny_distilled_patch16_224", img_size=16, **train_flags)
    model = build_model(config.model, num_classes=10, img_size=16, backend="torch", **train_flags)
    return {"model_name": model.model_name, "model_config": model.model_config, "config": config.to_dict()}


def test_resolve_takes_the_architecture_from_the_checkpoint():
    state = _checkpoint_state(patch_size=4, embed_dim=32, depth=2, num_heads=2)
    c = TrainConfig(data="digits").resolve(state, where="ckpt_00000046.pt")
    assert (c.model, c.img_size, c.patch_size, c.embed_dim, c.depth, c.num_heads, c.mlp_ratio) == (
        "deit_tiny_distilled_patch16_224",
        16,
        4,
        32,
        2,
        2,
        None,
    )
    # the same values given again are no contradiction; an override the run left at the model's default neither
    same = TrainConfig(data="digits", model="deit_tiny_distilled_patch16_224", depth=2, mlp_ratio=4.0, img_size=16)
    assert same.resolve(state, where="ckpt").depth == 2


def test_finetune_without_a_model_takes_the_architecture_the_weights_record():
    """--finetune without --model: the weights' recorded architecture, not deit_base (whose load would fail)."""
    from fastdeit.models import VisionTransformerConfig
    from fastdeit.models.convnet import ConvNetConfig

    trained = build_model("deit_tiny_patch16_224", num_classes=10, img_size=16, patch_size=4, embed_dim=32, depth=2,
                          num_heads=2, backend="torch").config  # fmt: skip
    c = TrainConfig(data="digits").with_architecture_of(trained).resolve()
    assert (c.model, c.img_size, c.patch_size, c.embed_dim, c.depth, c.num_heads, c.mlp_ratio) == (
        "deit_tiny_patch16_224", 16, 4, 32, 2, 2, 4.0)  # fmt: skip
    assert TrainConfig(data="digits", img_size=32).with_architecture_of(trained).img_size == 32  # fine-tune at 32
    # A Hugging Face folder's custom architecture: a base model with (or without) the distillation token, every key set
    custom = VisionTransformerConfig(embed_dim=48, depth=3, num_heads=3, distilled=True, img_size=(64, 64))
    c = TrainConfig(data="digits").with_architecture_of(custom)
    assert (c.model, c.img_size, c.embed_dim, c.depth, c.num_heads) == ("deit_base_distilled_patch16_224", 64, 48, 3, 3)
    # ... and a Hugging Face folder of a fastdeit architecture gets that model's name, at any image size
    hf_small = VisionTransformerConfig(embed_dim=384, depth=12, num_heads=6, distilled=True, img_size=(384, 384))
    c = TrainConfig(data="digits").with_architecture_of(hf_small)
    assert (c.model, c.img_size, c.embed_dim) == ("deit_small_distilled_patch16_224", 384, 384)
    assert TrainConfig(data="digits").with_architecture_of(ConvNetConfig(name="convnet_tiny")).model == "convnet_tiny"
    # --model given: the weights are checked against it when they load; bare weights record nothing
    given = TrainConfig(data="digits", model="deit_small_patch16_224")
    assert given.with_architecture_of(trained) == given
    assert TrainConfig(data="digits").with_architecture_of(None).resolve().model == "deit_base_patch16_224"


@pytest.mark.parametrize(
    "flags, message",
    [
        ({"depth": 3}, "depth: 3 given, but ckpt_00000046.pt records 2"),
        ({"img_size": 32}, "img_size: 32 given, but ckpt_00000046.pt records 16"),
        ({"model": "deit_small_distilled_patch16_224"}, "model: 'deit_small_distilled_patch16_224' given, but "),
    ],
)
def test_resolve_refuses_flags_that_contradict_the_checkpoint(flags: dict, message: str):
    state = _checkpoint_state(patch_size=4, embed_dim=32, depth=2, num_heads=2)
    with pytest.raises(ConfigError) as err:
        TrainConfig(data="digits", **flags).resolve(state, where="ckpt_00000046.pt")
    assert message in str(err.value) and "leave it out" in str(err.value)


def test_loader_config_is_built_from_the_data_keys():
    c = parse_config(
        ["--data", "digits", "--rand-augment", "none", "--batch-size", "10", "--data-threads", "3"]
    ).resolve()
    train, val = c.loader_config("train"), c.loader_config("val")
    assert train.rand_augment is None and train.repeated_aug == 1 and c.loader_config("train", True).repeated_aug == 3
    assert (train.batch_size, val.batch_size, train.num_threads, train.crop_pct) == (10, 15, 3, 0.875)


def test_files_then_flags(tmp_path: Path):
    first = tmp_path / "a.yaml"
    first.write_text("data: digits\nlr: 0.002\nepochs: 3\nopt_betas: [0.5, 0.6]\ncrop_scale: [0.25, 0.9]\n")
    second = tmp_path / "b.json"
    second.write_text(json.dumps({"epochs": 4, "model-ema": False, "hflip": 1}))
    c = parse_config(["--config", str(first), "--config", str(second), "--lr", "0.003"])
    assert (c.lr, c.epochs, c.opt_betas, c.model_ema) == (0.003, 4, (0.5, 0.6), False)
    assert (c.crop_scale, c.hflip) == ((0.25, 0.9), 1.0)


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "train" / "configs").glob("*.yaml")))
def test_shipped_configs_are_valid(name: str, tmp_path: Path):
    values = load_config_file(REPO / "train" / "configs" / name)
    # The ImageNet configs name neither the data nor the teacher's weights: the command line does.
    teacher = {"teacher_path": str(tmp_path)} if values.get("distillation_type", "none") != "none" else {}
    c = TrainConfig(**{**values, "data": "digits", **teacher}).check()
    assert c.model


def test_config_round_trips_through_weights_only_load(tmp_path: Path):
    c = parse_config(["--data", "digits", "--clip-grad", "2"])
    torch.save({"config": c.to_dict()}, tmp_path / "c.pt")
    loaded = torch.load(tmp_path / "c.pt", weights_only=True)["config"]
    assert loaded == json.loads(json.dumps(c.to_dict()))
    tuples = {k: tuple(loaded[k]) for k in ("opt_betas", "crop_scale")}
    assert TrainConfig(**{**loaded, **tuples}) == c


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--data", "digits", "--lrr", "0.1"], "unknown config key 'lrr' in the command line; did you mean lr"),
        (["--data", "digits", "--lr", "fast"], "lr: expected float, got 'fast'"),
        (["--data", "digits", "--epochs", "2.5"], "epochs: expected int, got '2.5'"),
        (["--data", "digits", "--lr", "-0.1"], "lr: expected a value > 0, got -0.1"),
        (["--data", "digits", "--compile", "maybe"], "compile: expected bool, got 'maybe'"),
        (["--data", "digits", "--opt-betas", "0.9"], "opt_betas: expected 2 comma-separated numbers"),
        (["--data", "digits", "--mixup-prob", "1.5"], "mixup_prob: expected a probability in [0, 1], got 1.5"),
        (["--data", "digits", "--reprob", "-0.5"], "reprob: expected a probability in [0, 1], got -0.5"),
        (["--data", "digits", "--cutmix", "-1"], "cutmix: expected a number >= 0 (0 disables it), got -1.0"),
        (["--data", "digits", "--smoothing", "1"], "smoothing: expected a number in [0, 1), got 1.0"),
        (["--data", "digits", "--hflip", "-0.5"], "hflip: expected a probability in [0, 1], got -0.5"),
        (["--data", "digits", "--crop-scale", "0.35"], "crop_scale: expected 2 comma-separated numbers, got '0.35'"),
        (["--data", "digits", "--crop-scale", "0.5,0.2"], "crop_scale: expected two numbers (lo, hi) with 0 < lo"),
        (["--data", "digits", "--crop-scale", "0,1"], "crop_scale: expected two numbers (lo, hi) with 0 < lo <= hi"),
        (["--data", "digits", "--rand-augment", "rand-m9"], "rand_augment: expected 'none', a timm RandAugment spec"),
        (["--data", "digits", "--data-backend", "tf"], "data_backend: expected one of auto, dali, pil, got 'tf'"),
        (["--data", "digits", "--data-threads", "0"], "data_threads: expected a positive integer, got 0"),
        (["--data", "digits", "--eval-batch-size", "0"], "eval_batch_size: expected a positive integer, got 0"),
        (["--data", "digits", "--crop-scale", "0.5,1.5"], "got (0.5, 1.5)"),
        (["--data", "digits", "--distillation-type", "medium"], "distillation_type: expected one of none, soft, hard"),
        (["--data", "digits", "--model", "deit_tiny_patch16"], "did you mean deit_tiny_patch16_224"),
        (["--data", "digits", "--distillation-type", "hard"], "needs a teacher"),
        (["--data", "digits", "--distillation-alpha", "1.5"], "distillation_alpha: alpha must be in [0, 1], got 1.5"),
        (["--data", "digits", "--distillation-tau", "0"], "distillation_tau: tau must be > 0, got 0.0"),
        # DeiT's main.py defaults to no distillation and then ignores a teacher: here a teacher alone is an error.
        (
            ["--data", "digits", "--teacher-path", "t.pt"],
            "teacher_path is given but distillation_type is 'none' (the default): the teacher would not be used; "
            "add --distillation-type hard",
        ),
        (["--data", "digits", "--eval-only"], "eval_only needs weights"),
        ([], "data: expected an ImageFolder path, 'digits' or 'synthetic'"),
        (["--data", "/no/such/imagenet"], "'/no/such/imagenet' is not a directory"),
    ],
)
def test_bad_values_are_rejected_clearly(argv: list[str], message: str):
    with pytest.raises(ConfigError) as err:
        parse_config(argv)
    assert message in str(err.value)


def test_tensorboard_asked_for_must_be_installed(monkeypatch: pytest.MonkeyPatch):
    """Before: on by default, and silently nothing where tensorboard is not installed. Now: unset uses it when it is
    installed; true without it is an error."""
    import importlib.util

    assert parse_config(["--data", "digits"]).tensorboard is None
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else object())
    with pytest.raises(ConfigError, match="tensorboard: true, but the tensorboard package is not installed"):
        parse_config(["--data", "digits", "--tensorboard"])
    assert parse_config(["--data", "digits", "--tensorboard", "false"]).tensorboard is False


def test_data_needs_both_splits(tmp_path: Path):
    """Before: a folder of classes was both splits (val scored on the training images); train/ alone crashed in mixup
    (its one class folder, 'train', taken for the val split's only class)."""
    (tmp_path / "classes" / "cat").mkdir(parents=True)
    (tmp_path / "no_val" / "train" / "cat").mkdir(parents=True)
    for root, message in (("classes", "has no train/ and no val/ folder"), ("no_val", "has no val/ folder")):
        with pytest.raises(ConfigError, match=f"data: '.*{root}' {message}; expected an ImageFolder root"):
            parse_config(["--data", str(tmp_path / root)])
    (tmp_path / "no_val" / "val").mkdir()
    (tmp_path / "only_val" / "val").mkdir(parents=True)
    assert parse_config(["--data", str(tmp_path / "no_val")]).data == str(tmp_path / "no_val")
    assert parse_config(["--data", str(tmp_path / "only_val"), "--eval-only", "--finetune", __file__]).eval_only


def test_bad_file_values_are_rejected_clearly(tmp_path: Path):
    bad_key = tmp_path / "k.yaml"
    bad_key.write_text("data: digits\nwarmup: 3\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'warmup' in .*k\.yaml; did you mean warmup_"):
        parse_config(["--config", str(bad_key)])
    bad_type = tmp_path / "t.yaml"
    bad_type.write_text("data: digits\nepochs: true\n")  # a YAML bool is not an epoch count
    with pytest.raises(ConfigError, match="epochs: expected int, got True"):
        parse_config(["--config", str(bad_type)])
    bad_pair = tmp_path / "p.yaml"
    bad_pair.write_text("data: digits\ncrop_scale: 0.35\n")  # a scale range needs both ends
    with pytest.raises(ConfigError, match="crop_scale: expected 2 comma-separated numbers, got 0.35"):
        parse_config(["--config", str(bad_pair)])
    with pytest.raises(FileNotFoundError, match="config file not found"):
        parse_config(["--config", str(tmp_path / "missing.yaml")])


def test_missing_files_are_named(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="finetune: file not found"):
        parse_config(["--data", "digits", "--finetune", str(tmp_path / "w.pth")])
    with pytest.raises(FileNotFoundError, match="teacher_path: file not found"):
        parse_config(["--data", "digits", "--distillation-type", "soft", "--teacher-path", str(tmp_path / "t.pt")])
    with pytest.raises(FileNotFoundError, match="resume: checkpoint not found"):
        parse_config(["--data", "digits", "--resume", str(tmp_path / "ckpt.pt")])
