import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fastdeit.data as data
from fastdeit.data import (
    PAD_LABEL,
    DataWarning,
    SyntheticLoader,
    build_loader,
    build_predict_loader,
    dali_available,
)
from fastdeit.data.augment import RAND_AUGMENT_OPS, _op_argument
from fastdeit.data.fallback import _PIL_OP_TABLE, PilLoader


@pytest.fixture(scope="module")
def split_root(image_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """root/train with classes c0..c2 and root/val without c1."""
    root = tmp_path_factory.mktemp("splits")
    shutil.copytree(image_folder, root / "train")
    shutil.copytree(image_folder, root / "val", ignore=lambda d, names: ["c1"] if d == str(image_folder) else [])
    return root


def test_train_and_val_splits(split_root: Path):
    train, info = build_loader(split_root, split="train", img_size=24, batch_size=4, rand_augment=False)
    assert info.class_names == ("c0", "c1", "c2") and info.num_classes == 3 and info.num_samples == 36
    assert info.root == split_root / "train" and info.backend == ("dali" if dali_available() else "pil")
    assert len(train) == 9
    val, vinfo = build_loader(split_root, split="val", img_size=24, batch_size=5, num_threads=1)
    assert vinfo.class_names == info.class_names and vinfo.num_samples == 24  # labels from train's class list
    labels = torch.cat([y for _, y in val])
    assert sorted(set(labels.tolist())) == [PAD_LABEL, 0, 2] and (labels != PAD_LABEL).sum() == 24


def test_split_folder_given_directly(image_folder: Path):
    loader, info = build_loader(image_folder, split="val", img_size=16, batch_size=36)
    assert info.root == image_folder and info.num_samples == 36
    images, labels = next(iter(loader))
    assert images.shape == (36, 3, 16, 16) and labels.tolist() == sorted(labels.tolist())


def test_digits_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FASTDEIT_CACHE_DIR", str(tmp_path))
    loader, info = build_loader("digits", split="val", img_size=32, batch_size=64, digits_size=16)
    assert info.num_classes == 10 and info.num_samples == 300 and info.root == tmp_path / "digits" / "16px" / "val"
    images, labels = next(iter(loader))
    assert images.shape == (64, 3, 32, 32) and labels.max() <= 9


def test_synthetic_source():
    loader, info = build_loader("synthetic", split="train", img_size=8, batch_size=4, num_classes=7, num_samples=20)
    assert isinstance(loader, SyntheticLoader) and info.backend == "synthetic" and info.root is None
    assert info.num_classes == 7 and info.class_names[-1] == "6" and len(loader) == 5
    _, info = build_loader("synthetic", split="val", img_size=8, batch_size=4)
    assert info.num_classes == 1000 and info.num_samples == 50_000


def test_bad_arguments(image_folder: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="split must be 'train' or 'val', got 'test'"):
        build_loader(image_folder, split="test", img_size=8, batch_size=2)
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        build_loader(tmp_path / "missing", split="train", img_size=8, batch_size=2)
    with pytest.raises(ValueError, match="rand_augment must be"):
        build_loader(image_folder, split="train", img_size=8, batch_size=2, rand_augment=3)
    with pytest.raises(ValueError, match="backend must be"):
        build_loader(image_folder, split="train", img_size=8, batch_size=2, backend="tf")
    with pytest.raises(ValueError, match="batch_size=64 is larger than the 36 train samples"):
        build_loader(image_folder, split="train", img_size=8, batch_size=64)
    with pytest.raises(ValueError, match="crop_pct must be in \\(0, 1\\], got 1.5"):
        build_loader(image_folder, split="val", img_size=8, batch_size=2, crop_pct=1.5)
    with pytest.raises(ValueError, match="crop_scale must be two numbers .* got \\(0.5, 0.2\\)"):
        build_loader(image_folder, split="train", img_size=8, batch_size=2, crop_scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="hflip must be a probability in \\[0, 1\\] .* got 2"):
        build_loader(image_folder, split="train", img_size=8, batch_size=2, hflip=2)


def test_pil_fallback_is_announced(image_folder: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(data, "_dali_import_error", lambda: "No module named 'nvidia'")
    with pytest.warns(DataWarning, match="DALI is not importable .*PIL fallback loader"):
        loader, info = build_loader(image_folder, split="train", img_size=16, batch_size=8, seed=1)
    assert isinstance(loader, PilLoader) and info.backend == "pil"
    images, labels = next(iter(loader))  # with RandAugment
    assert images.shape == (8, 3, 16, 16) and torch.isfinite(images).all()
    with pytest.raises(ImportError, match="backend='dali' but DALI cannot be imported"):
        build_loader(image_folder, split="train", img_size=16, batch_size=8, backend="dali")


@pytest.mark.parametrize(
    "backend", ["pil", pytest.param("dali", marks=pytest.mark.skipif(not dali_available(), reason="no DALI"))]
)
def test_hflip_zero_and_one_give_mirror_images(image_folder: Path, backend: str):
    """hflip never / always mirrors; the crops are the same either way, so the batches mirror each other."""
    kw = {"split": "train", "img_size": 16, "batch_size": 8, "rand_augment": False, "seed": 4, "backend": backend}
    plain, mirrored = (next(iter(build_loader(image_folder, hflip=p, **kw)[0])) for p in (0.0, 1.0))
    assert torch.equal(plain[1], mirrored[1]) and torch.equal(plain[0].flip(-1), mirrored[0])


def test_repeated_aug_without_enough_ranks_warns(image_folder: Path):
    with pytest.warns(DataWarning, match="repeated_aug=3 > world_size=2: copies of a sample will share a rank"):
        build_loader(image_folder, split="train", img_size=8, batch_size=2, world_size=2, repeated_aug=3)


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
    loader = build_predict_loader(paths, img_size=16, batch_size=2)
    with pytest.warns(DataWarning, match="2 unreadable image file\\(s\\) skipped: .*missing.jpg .*notes.txt"):
        batches = list(loader)
    assert [y.tolist() for _, y in batches] == [[0], [2], [4]]
    assert set(loader.skipped_files) == {str(tmp_path / "missing.jpg"), str(tmp_path / "notes.txt")}
    with pytest.raises(ValueError, match="single path"):
        build_predict_loader(str(good[0]), img_size=16, batch_size=2)
