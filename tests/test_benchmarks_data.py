"""`fastdeit bench --data` on the CPU: every available decoder measured on a tiny photo folder, rows in the CSV.

These check that the harness measures and records correctly; the numbers themselves are never asserted on.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import torch
from fastdeit.benchmarks.common import CSV_COLUMNS, read_rows

from fastdeit.cli import main
from fastdeit.data import dali_available
from fastdeit.data.photos import write_photo_folder

pytest.importorskip("skimage")


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_photo_folder(tmp_path_factory.mktemp("photos"), num_classes=2, per_class=8)


def test_photo_folder_is_imagenet_like(photos: Path):
    from PIL import Image

    files = sorted(photos.rglob("*.jpg"))
    assert [p.parent.name for p in files] == ["class_0"] * 8 + ["class_1"] * 8
    sizes = {Image.open(p).size for p in files}
    assert all(max(s) == 500 and 3 / 4 - 0.01 <= s[0] / s[1] <= 4 / 3 + 0.01 for s in sizes) and len(sizes) > 3
    again = write_photo_folder(photos.parent / "again", num_classes=2, per_class=8)
    assert (again / "class_1" / "0003.jpg").read_bytes() == (photos / "class_1" / "0003.jpg").read_bytes()  # seeded


def test_bench_data_cli(photos: Path, tmp_path: Path, capsys):
    path = tmp_path / "results.csv"
    argv = ["bench", "--data", "--data-dir", str(photos), "--img-size", "32", "--batch-size", "4", "--repeats", "2"]
    argv += ["--warmup", "0", "--data-threads", "1", "--csv", str(path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    if not torch.cuda.is_available():
        assert "skipped dali-gpu: needs a CUDA GPU" in out
    if "timm" not in sys.modules:
        assert "skipped timm: cannot import its library" in out
    assert "batch 4, 1 decoding threads, train RandAugment rand-m9-n2-mstd0.5-inc1" in out
    with open(path, newline="") as f:
        assert next(csv.reader(f)) == list(CSV_COLUMNS)
    rows = read_rows(path)
    providers = {"pil"} | ({"dali-cpu"} if dali_available() else set())
    measured = {(r["provider"], r["mode"], r["metric"]) for r in rows}
    metrics = ("pipeline_throughput", "pipeline_throughput_min", "pipeline_throughput_max", "pipeline_startup")
    assert measured >= {(p, m, x) for p in providers for m in ("train", "eval") for x in metrics}
    for r in rows:
        assert float(r["value"]) > 0 and r["shape"] == "3x32x32" and r["batch"] == "4"
        assert r["unit"] == ("s" if r["metric"] == "pipeline_startup" else "img/s")
        assert r["model_or_op"].startswith(f"data_pipeline({photos.name}; 1 threads; RandAugment")
    for provider in providers:
        assert any(line.split()[:2] == ["train", provider] for line in out.splitlines())

    # The model tables and charts read the same CSV: the data rows must not disturb them.
    assert main(["bench", "--summary", "--csv", str(path)]) == 0


def test_bench_data_bad_arguments(photos: Path, capsys):
    assert main(["bench", "--data", "--data-dir", str(photos), "--providers", "opencv", "--no-csv"]) == 2
    error = capsys.readouterr().err
    assert "unknown data pipeline provider(s) ['opencv']; known: dali-gpu, dali-cpu, pil, timm" in error
    assert main(["bench", "--data", "--data-dir", str(photos), "--batch-size", "16", "--no-csv"]) == 2
    assert "16 images at batch 16: an epoch needs two batches" in capsys.readouterr().err
