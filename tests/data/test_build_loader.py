import dataclasses
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fastdeit.data.build
from fastdeit.data import (
    PAD_LABEL,
    DataConfigError,
    DataWarning,
    LoaderConfig,
    SyntheticLoader,
    build_loader,
    build_predict_loader,
    dali_available,
)
from fastdeit.data.augment import RAND_AUGMENT_OPS, _op_argument
from fastdeit.data.pil import _PIL_OP_TABLE, PilLoader


def cfg(**kw) -> LoaderConfig:
    return LoaderConfig(**{"img_size": 16, "batch_size": 8, **kw})


@pytest.fixture(scope="module")
def split_root(image_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """root/train with classes c0..c2 and root/val without c1."""
    root = tmp_path_factory.mktemp("splits")
    shutil.copytree(image_folder, root / "train")
    shutil.copytree(image_folder, root / "val", ignore=lambda d, names: ["c1"] if d == str(image_folder) else [])
    return root


def test_train_and_val_splits(split_root: Path):
    train, info = build_loader(split_root, split="train", config=cfg(img_size=24, batch_size=4, rand_augment=False))
    assert info.class_names == ("c0", "c1", "c2") and info.num_classes == 3 and info.num_samples == 36
    assert info.root == split_root / "train" and info.backend == "pil"  # auto: PIL trains faster on a CPU
    assert len(train) == 9
    with pytest.warns(DataWarning, match="1 of the 3 classes have no image under .*val.*: 'c1'"):
        val, vinfo = build_loader(split_root, split="val", config=cfg(img_size=24, batch_size=5, num_threads=1))
    assert vinfo.backend == ("dali" if dali_available() else "pil")  # auto: DALI evaluates faster on a CPU
    assert vinfo.class_names == info.class_names and vinfo.num_samples == 24  # labels from train's class list
    labels = torch.cat([y for _, y in val])
    assert sorted(set(labels.tolist())) == [PAD_LABEL, 0, 2] and (labels != PAD_LABEL).sum() == 24


def test_split_folder_given_directly(image_folder: Path):
    loader, info = build_loader(image_folder, split="val", config=cfg(batch_size=36))
    assert info.root == image_folder and info.num_samples == 36
    images, labels = next(iter(loader))
    assert images.shape == (36, 3, 16, 16) and labels.tolist() == sorted(labels.tolist())


def test_digits_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FASTDEIT_CACHE_DIR", str(tmp_path))
    loader, info = build_loader("digits", split="val", config=cfg(img_size=32, batch_size=64), digits_size=16)
    assert info.num_classes == 10 and info.num_samples == 300 and info.root == tmp_path / "digits" / "16px" / "val"
    images, labels = next(iter(loader))
    assert images.shape == (64, 3, 32, 32) and labels.max() <= 9


def test_synthetic_source():
    config = cfg(img_size=8, batch_size=4)
    loader, info = build_loader("synthetic", split="train", config=config, num_classes=7, num_samples=20)
    assert isinstance(loader, SyntheticLoader) and info.backend == "synthetic" and info.root is None
    assert info.num_classes == 7 and info.class_names[-1] == "6" and len(loader) == 5
    _, info = build_loader("synthetic", split="val", config=config)
    assert info.num_classes == 1000 and info.num_samples == 50_000


def test_bad_arguments(image_folder: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="split must be 'train' or 'val', got 'test'"):
        build_loader(image_folder, split="test")
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        build_loader(tmp_path / "missing", split="train")
    with pytest.raises(ValueError, match="batch_size=64 is larger than the 36 train samples"):
        build_loader(image_folder, split="train", config=cfg(batch_size=64))
    with pytest.raises(TypeError, match="config must be a LoaderConfig, got dict"):
        fastdeit.data.pil.PilLoader(["a.jpg"], [0], {"img_size": 8}, mode="train")


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"rand_augment": 3}, "rand_augment: expected 'none', a timm RandAugment spec .* got 3"),
        ({"rand_augment": "rand-m9"}, "rand_augment: expected .*add '-inc1'.*, got 'rand-m9'"),
        ({"rand_augment": "rand-mX-inc1"}, "option 'mX' in 'rand-mX-inc1' has no number"),
        ({"backend": "tf"}, "backend: expected one of auto, dali, pil, got 'tf'"),
        ({"crop_pct": 1.5}, "crop_pct: expected a number in \\(0, 1\\] .*, got 1.5"),
        ({"crop_scale": (0.5, 0.2)}, "crop_scale: expected two numbers .* got \\(0.5, 0.2\\)"),
        ({"hflip": 2}, "hflip: expected a probability in \\[0, 1\\], got 2"),
        ({"img_size": 0}, "img_size: expected a positive integer, got 0"),
        ({"batch_size": 2.0}, "batch_size: expected a positive integer, got 2.0"),
        ({"num_threads": 0}, "num_threads: expected a positive integer, got 0"),
        ({"seed": -1}, "seed: expected a non-negative integer, got -1"),
        ({"exif_orientation": "yes"}, "exif_orientation: expected True, False or None"),
    ],
)
def test_loader_config_rejects_bad_values_naming_the_field(settings: dict, message: str):
    field = next(iter(settings))
    with pytest.raises(DataConfigError, match=message) as err:
        LoaderConfig(**settings)
    assert err.value.field == field and err.value.value == settings[field]


def test_loader_config_normalizes_once():
    config = LoaderConfig(rand_augment="rand-m7-n3-inc1", crop_scale=[0.35, 1], num_threads=None)
    assert config.rand_augment.num_ops == 3 and config.rand_augment.magnitude == 7.0
    assert config.crop_scale == (0.35, 1.0) and config.num_threads >= 1
    assert config.replace(batch_size=3) == LoaderConfig(**{**config.__dict__, "batch_size": 3})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.hflip = 0.0


@pytest.mark.parametrize("spec", ["none", "None", "", False, None])
def test_rand_augment_none_is_accepted_everywhere(image_folder: Path, spec):
    """One parser: every way of saying 'no RandAugment' works in the loaders (build_loader used to raise on 'none')."""
    config = cfg(rand_augment=spec, backend="pil")
    assert config.rand_augment is None and config.rand_augment_spec == "none"
    loader, _ = build_loader(image_folder, split="train", config=config)
    images, _ = next(iter(loader))
    assert images.shape == (8, 3, 16, 16)


def test_auto_backend_per_device_and_mode(monkeypatch: pytest.MonkeyPatch):
    """auto: PIL trains on a CPU, DALI does the rest (fastdeit bench --data); PIL where DALI does not import."""
    choose = fastdeit.data.build.choose_backend
    assert choose("auto", "cpu", "train").backend == "pil"
    assert choose("pil", "cuda", "eval").backend == "pil"
    if dali_available():
        assert choose("auto", "cpu", "eval").backend == choose("auto", "cpu", "predict").backend == "dali"
        assert choose("auto", "cuda", "train").backend == "dali"
    monkeypatch.setattr(fastdeit.data.build, "_dali_import_error", lambda: "No module named 'nvidia'")
    for device, mode in (("cuda", "train"), ("cpu", "eval")):
        with pytest.warns(DataWarning, match="DALI is not importable .*slower PIL fallback"):
            assert choose("auto", device, mode).backend == "pil"
    with pytest.raises(ImportError, match="backend='dali' but DALI cannot be imported"):
        choose("dali", "cpu", "train")
    with pytest.raises(ValueError, match="backend must be one of auto, dali, pil, got 'tf'"):
        choose("tf", "cpu", "train")


def test_pil_fallback_is_announced(image_folder: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(fastdeit.data.build, "_dali_import_error", lambda: "No module named 'nvidia'")
    with pytest.warns(DataWarning, match="DALI is not importable .*PIL fallback loader"):
        loader, info = build_loader(image_folder, split="val", config=cfg(seed=1))
    assert isinstance(loader, PilLoader) and info.backend == "pil"
    images, labels = next(iter(loader))
    assert images.shape == (8, 3, 16, 16) and torch.isfinite(images).all()
    with pytest.raises(ImportError, match="backend='dali' but DALI cannot be imported"):
        build_loader(image_folder, split="train", config=cfg(backend="dali"))


@pytest.mark.parametrize(
    "backend", ["pil", pytest.param("dali", marks=pytest.mark.skipif(not dali_available(), reason="no DALI"))]
)
def test_hflip_zero_and_one_give_mirror_images(image_folder: Path, backend: str):
    """hflip never / always mirrors; the crops are the same either way, so the batches mirror each other."""
    configs = (cfg(rand_augment=False, seed=4, backend=backend, hflip=p) for p in (0.0, 1.0))
    plain, mirrored = (next(iter(build_loader(image_folder, split="train", config=c)[0])) for c in configs)
    assert torch.equal(plain[1], mirrored[1]) and torch.equal(plain[0].flip(-1), mirrored[0])


def test_warnings_come_from_rank_0_only(split_root: Path, tmp_path: Path):
    """Facts about the dataset and the settings are the same on every rank: said once per run, not once per rank."""
    shutil.copytree(split_root, tmp_path / "root")
    (tmp_path / "root" / "train" / "c0" / "notes.txt").write_text("not an image")
    config = cfg(batch_size=2, repeated_aug=3)
    for split in ("train", "val"):  # a skipped file, a val class without images, repeated_aug > world_size
        with pytest.warns(DataWarning):
            build_loader(tmp_path / "root", split=split, config=config, rank=0, world_size=2)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            build_loader(tmp_path / "root", split=split, config=config, rank=1, world_size=2)


def test_repeated_aug_without_enough_ranks_warns(image_folder: Path):
    with pytest.warns(DataWarning, match="repeated_aug=3 > world_size=2: copies of a sample will share a rank"):
        build_loader(image_folder, split="train", config=cfg(batch_size=2, repeated_aug=3), world_size=2)


def test_every_pil_rand_augment_op_runs():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 20, 3), dtype=np.uint8))
    for name, op in zip(RAND_AUGMENT_OPS, _PIL_OP_TABLE, strict=True):
        for negate in (False, True):
            out = op(img, np.array(_op_argument(name, 9.0, negate, 20)))
            assert out.size == (20, 20) and out.mode == "RGB"


def test_predict_loader_skips_bad_inputs(image_folder: Path, tmp_path: Path):
    (tmp_path / "notes.txt").write_text("not an image")
    good = sorted(str(p) for p in image_folder.rglob("*.jpg"))[:3]
    paths = [good[0], tmp_path / "missing.jpg", good[1], tmp_path / "notes.txt", good[2]]
    loader = build_predict_loader(paths, cfg(batch_size=2))
    with pytest.warns(DataWarning, match="2 unreadable image file\\(s\\) skipped: .*missing.jpg .*notes.txt"):
        batches = list(loader)
    assert [y.tolist() for _, y in batches] == [[0], [2], [4]]
    assert set(loader.skipped_files) == {str(tmp_path / "missing.jpg"), str(tmp_path / "notes.txt")}
    with pytest.raises(ValueError, match="single path"):
        build_predict_loader(str(good[0]))
