import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from image_helpers import NUM_CLASSES, PER_CLASS, write_image

from fastdeit.data import DataWarning
from fastdeit.data.folder import check_encoded, scan_image_folder, sniff_format


def test_scan_sorted_classes_and_labels(image_folder: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        index = scan_image_folder(image_folder)
    assert index.class_names == ("c0", "c1", "c2")
    assert len(index) == NUM_CLASSES * PER_CLASS
    assert index.skipped == ()
    for path, label in zip(index.files, index.labels, strict=True):
        assert Path(path).parent.name == f"c{label}"
    assert any(p.endswith(".JPG") for p in index.files) and any(p.endswith(".png") for p in index.files)


def test_non_image_files_skipped_with_one_warning(tmp_path: Path):
    rng = np.random.default_rng(1)
    for c in ("b", "a"):
        (tmp_path / c).mkdir()
        write_image(tmp_path / c / "x.jpeg", rng)
    (tmp_path / "a" / "notes.txt").write_text("hello")
    (tmp_path / "b" / "fake.jpg").write_text("not an image")
    (tmp_path / "b" / ".DS_Store").write_bytes(b"\0\0")  # hidden: ignored silently
    (tmp_path / ".ipynb_checkpoints").mkdir()  # hidden directory: not a class
    with pytest.warns(DataWarning) as record:
        index = scan_image_folder(tmp_path)
    assert len(record) == 1
    message = str(record[0].message)
    assert message.startswith("skipped 2 non-image file(s)")
    assert "a/notes.txt (extension '.txt' is not an image type)" in message
    assert "b/fake.jpg (not an image)" in message
    assert index.class_names == ("a", "b")
    assert [Path(f).name for f in index.files] == ["x.jpeg", "x.jpeg"]
    assert index.labels == (0, 1)
    assert len(index.skipped) == 2


def test_missing_and_empty_roots(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scan_image_folder(tmp_path / "nope")
    with pytest.raises(ValueError, match="no class sub-directories"):
        scan_image_folder(tmp_path)
    (tmp_path / "cls").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        scan_image_folder(tmp_path)


def test_class_names_override(image_folder: Path, tmp_path: Path):
    shutil.copytree(image_folder / "c2", tmp_path / "c2")
    with pytest.warns(DataWarning, match="2 of the 3 classes have no image under .*: 'c0', 'c1' \\(labels keep"):
        index = scan_image_folder(tmp_path, class_names=["c0", "c1", "c2"], empty_classes="warn")
    assert set(index.labels) == {2} and index.class_names == ("c0", "c1", "c2")
    with pytest.raises(ValueError, match="2 class folder\\(s\\) under .* hold no image: 'c0', 'c1'"):
        scan_image_folder(tmp_path, class_names=["c0", "c1", "c2"])
    with pytest.raises(ValueError, match=r"\['c2'\].*not in the class list it is labelled with"):
        scan_image_folder(tmp_path, class_names=["c0", "c1"])


def test_empty_class_folder_is_refused_not_a_dead_class(tmp_path: Path):
    """5 class folders, one empty (or holding no image): a train split refuses, naming it (it used to report 5
    classes with 4 trained); an eval split keeps the full numbering and warns."""
    rng = np.random.default_rng(2)
    for c in ("a", "b", "d", "e"):
        (tmp_path / c).mkdir()
        write_image(tmp_path / c / "x.jpg", rng)
    (tmp_path / "c").mkdir()
    with pytest.raises(ValueError, match="1 class folder\\(s\\) under .* hold no image: 'c'. .*dead class"):
        scan_image_folder(tmp_path)
    (tmp_path / "c" / "notes.txt").write_text("not an image")  # only non-images: still no image of class c
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        with pytest.raises(ValueError, match="hold no image: 'c'"):
            scan_image_folder(tmp_path)
    with pytest.warns(DataWarning) as record:
        index = scan_image_folder(tmp_path, empty_classes="warn")
    assert any("1 of the 5 classes have no image" in str(r.message) and "'c'" in str(r.message) for r in record)
    assert index.class_names == ("a", "b", "c", "d", "e") and index.labels == (0, 1, 3, 4)  # d, e keep 3, 4


def test_warn_false_is_silent(tmp_path: Path):
    """DDP ranks other than 0 scan with warn=False: the same facts, said once per run."""
    rng = np.random.default_rng(3)
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
    write_image(tmp_path / "a" / "x.jpg", rng)
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        index = scan_image_folder(tmp_path, empty_classes="warn", warn=False)
    assert index.skipped and index.class_names == ("a", "b")


def test_sniff_and_check_encoded(image_folder: Path):
    jpeg = (image_folder / "c0" / "00.jpg").read_bytes()
    png = (image_folder / "c0" / "04.png").read_bytes()
    assert sniff_format(jpeg[:12]) == "jpeg" and sniff_format(png[:12]) == "png"
    assert sniff_format(b"RIFF\0\0\0\0WEBP") == "webp" and sniff_format(b"II*\0") == "tiff"
    assert sniff_format(b"hello world!") is None
    assert check_encoded(jpeg) is None and check_encoded(png) is None
    assert check_encoded(jpeg[: len(jpeg) // 2]) == "truncated JPEG: no end-of-image marker"
    assert check_encoded(png[: len(png) // 2]) == "truncated PNG: no IEND chunk"
    # an image in a format no decoder here reads, whatever its file name says: named as such (before: "not an image")
    assert check_encoded(b"GIF89a......") == "a GIF image, a format the decoders do not read"
    assert check_encoded(b"\0\0\0\x18ftypheic\0\0") == "a HEIF/AVIF image, a format the decoders do not read"
    assert check_encoded(b"hello world!") == "not an image"
