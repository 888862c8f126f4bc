import os
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from fastdeit.data import prepare_digits, scan_image_folder
from fastdeit.data.digits import cache_dir


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_digits(tmp_path_factory.mktemp("cache") / "digits", size=16)


def test_layout_split_and_images(digits_root: Path):
    train, val = scan_image_folder(digits_root / "train"), scan_image_folder(digits_root / "val")
    assert len(train) == 1497 and len(val) == 300
    assert train.class_names == val.class_names == tuple(str(d) for d in range(10))
    assert not {Path(f).name for f in train.files} & {Path(f).name for f in val.files}
    counts = Counter(val.labels)
    assert min(counts.values()) >= 28 and max(counts.values()) <= 32  # stratified: ~30 per digit
    img = Image.open(val.files[0])
    assert img.format == "JPEG" and img.size == (16, 16) and img.mode == "RGB"
    assert [p.name for p in digits_root.parent.iterdir()] == ["digits"]  # no temporary directory left behind


def test_idempotent(digits_root: Path):
    before = {p: p.stat().st_mtime_ns for p in digits_root.rglob("*.jpg")}
    assert prepare_digits(digits_root, size=16) == digits_root
    assert {p: p.stat().st_mtime_ns for p in digits_root.rglob("*.jpg")} == before


def test_default_root_under_fastdeit_cache_and_fixed_split(
    digits_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("FASTDEIT_CACHE_DIR", str(tmp_path))
    again = prepare_digits(size=16)
    assert again == tmp_path / "digits" / "16px"
    assert sorted(os.listdir(again / "val" / "3")) == sorted(os.listdir(digits_root / "val" / "3"))


def test_errors(digits_root: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="holds a digits cache with size=16"):
        prepare_digits(digits_root, size=32)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file.txt").write_text("x")
    with pytest.raises(FileExistsError, match="is not a digits cache"):
        prepare_digits(tmp_path / "busy")
    with pytest.raises(ValueError, match="size must be an integer >= 8"):
        prepare_digits(tmp_path / "x", size=4)


def test_cache_dir_default(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("FASTDEIT_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_dir() == Path.home() / ".cache" / "fastdeit"
