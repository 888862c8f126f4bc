"""`fastdeit predict`, `embed` and `export`: output files parse back, unreadable files are skipped and named, and
every user error is one line `fastdeit CMD: error: ...` with exit status 2, before any output is written."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open

import fastdeit
import fastdeit.cli as cli
from fastdeit.predict import imagenet_labels

skimage_data = pytest.importorskip("skimage.data")

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


@pytest.fixture(autouse=True)
def only_these_commands(monkeypatch):
    """Register only the sub-commands under test, so these tests do not depend on the others' modules."""
    monkeypatch.setattr(cli, "COMMANDS", ("predict", "embed", "export"))


def run(capsys: pytest.CaptureFixture, *argv: object) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def save_model(folder: Path, num_classes: int) -> Path:
    """A 2-block DeiT on 64x64 images written with save_pretrained: `--model folder` rebuilds it."""
    torch.manual_seed(0)
    model = fastdeit.create_model(
        "deit_tiny_patch16_224", num_classes=num_classes, img_size=64, patch_size=16, depth=2, embed_dim=64,
        num_heads=2, backend="torch",
    )  # fmt: skip
    return fastdeit.save_pretrained(model, folder)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("models")
    return {n: save_model(root / f"classes{n}", n) for n in (10, 1000)}


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """photos/<name>.jpg and photos/more/colorwheel.png (the folder is read recursively)."""
    root = tmp_path_factory.mktemp("photos")
    for name in PHOTOS:
        Image.fromarray(getattr(skimage_data, name)()).save(root / f"{name}.jpg", quality=90)
    (root / "more").mkdir()
    Image.fromarray(skimage_data.colorwheel()).save(root / "more" / "colorwheel.png")
    return root


def photo_paths(root: Path) -> list[str]:
    return [str(root / f"{name}.jpg") for name in sorted(PHOTOS)] + [str(root / "more" / "colorwheel.png")]


def test_predict_jsonl_with_imagenet_labels(capsys, tmp_path, models, photos):
    out = tmp_path / "results.jsonl"
    code, stdout, stderr = run(capsys, "predict", "--model", models[1000], "--topk", 3, "--out", out, photos)
    assert code == 0, stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["path"] for r in rows] == photo_paths(photos)
    names = imagenet_labels()
    for r in rows:
        assert len(r["classes"]) == len(r["probs"]) == 3 and r["probs"] == sorted(r["probs"], reverse=True)
        assert r["labels"] == [names[c] for c in r["classes"]]
    assert stdout == ""
    assert "5 images in" in stderr and "images/s" in stderr and f"wrote 5 predictions to {out}" in stderr


def test_predict_csv_with_labels_file(capsys, tmp_path, models, photos):
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"thing {i}" for i in range(10)) + "\n")
    out = tmp_path / "results.csv"
    files = photo_paths(photos)[:2]
    args = ["--model", models[10], "--labels", labels, "--topk", 2, "--out", out]
    code, _, stderr = run(capsys, "predict", *args, *files)
    assert code == 0, stderr
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == files
    assert list(rows[0]) == ["path", "class_1", "label_1", "prob_1", "class_2", "label_2", "prob_2"]
    for r in rows:
        assert r["label_1"] == f"thing {r['class_1']}" and float(r["prob_1"]) >= float(r["prob_2"])


def test_predict_to_stdout(capsys, models, photos):
    code, stdout, _ = run(capsys, "predict", "--model", models[10], "--topk", 2, photos)
    assert code == 0
    lines = stdout.splitlines()
    assert [line.split(": ")[0] for line in lines] == photo_paths(photos)
    assert all(line.count("class ") == 2 for line in lines)  # 10 classes and no --labels: "class N 0.1234"


def test_predict_skips_corrupt_files(capsys, tmp_path, models, photos):
    folder = tmp_path / "mixed"
    folder.mkdir()
    jpeg = (photos / "coffee.jpg").read_bytes()
    (folder / "good.jpg").write_bytes(jpeg)
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "renamed.jpg").write_text("a text file named .jpg\n")
    out = tmp_path / "r.jsonl"
    code, _, stderr = run(capsys, "predict", "--model", models[10], "--out", out, folder)
    assert code == 0
    assert [json.loads(line)["path"] for line in out.read_text().splitlines()] == [str(folder / "good.jpg")]
    assert "truncated.jpg (truncated JPEG" in stderr and "renamed.jpg (not an image)" in stderr
    assert "skipped 2 of 3 files" in stderr


def test_predict_every_file_unreadable_exits_1(capsys, tmp_path, models):
    (tmp_path / "bad.jpg").write_text("text")
    code, _, stderr = run(capsys, "predict", "--model", models[10], tmp_path)
    assert code == 1 and "none of the files could be read" in stderr


def test_embed_safetensors(capsys, tmp_path, models, photos):
    out = tmp_path / "feats.safetensors"
    code, _, stderr = run(capsys, "embed", "--model", models[10], "--out", out, photos)
    assert code == 0, stderr
    with safe_open(str(out), "pt") as f:
        features = f.get_tensor("features")
        metadata = f.metadata()
    assert features.shape == (5, 64) and features.dtype == torch.float32
    assert json.loads(metadata["paths"]) == photo_paths(photos)
    assert metadata["features"] == "pre_logits"
    # Row i is the pre-logits embedding of paths[i], as the Python API computes it.
    expected = fastdeit.Predictor(models[10], device="cpu").embed(photo_paths(photos))
    torch.testing.assert_close(features, expected)


def test_export_onnx(capsys, tmp_path, models):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "model.onnx"
    code, stdout, stderr = run(capsys, "export", "--model", models[10], "--format", "onnx", "--out", out)
    assert code == 0, stderr
    assert out.is_file() and "verified with onnxruntime" in stdout and "max abs diff" in stdout


@pytest.mark.parametrize(
    "command, args, message",
    [
        ("predict", ["--model", "deit_tiny_patch16_225", "PHOTOS"], "unknown model 'deit_tiny_patch16_225'"),
        ("predict", ["--model", "CLASSES1000", "--checkpoint", "CLASSES10", "PHOTOS"], "head for 10 classes"),
        ("predict", ["--model", "CLASSES10", "--num-classes", "1000", "PHOTOS"], "num_classes=1000 but the model"),
        ("predict", ["--model", "CLASSES10", "--labels", "LABELS3", "PHOTOS"], "has 3 names but the model has 10"),
        ("predict", ["--model", "CLASSES10", "--labels", "MISSING", "PHOTOS"], "labels file"),
        ("predict", ["--model", "CLASSES10", "EMPTY"], "no image files in"),
        ("predict", ["--model", "CLASSES10", "MISSING"], "does not exist"),
        ("predict", ["--model", "CLASSES10", "--topk", "11", "PHOTOS"], "--topk must be in [1, 10]"),
        ("predict", ["--model", "CLASSES10", "--checkpoint", "MISSING", "PHOTOS"], "checkpoint not found"),
        ("embed", ["--model", "CLASSES10", "EMPTY"], "no image files in"),
        ("export", ["--model", "deit_tiny_patch16_225", "--format", "onnx"], "unknown model"),
        ("export", ["--model", "CLASSES1000", "--checkpoint", "CLASSES10", "--format", "onnx"], "head for 10"),
    ],
)
def test_user_errors_exit_2_before_any_work(capsys, tmp_path, models, photos, command, args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "labels3.txt").write_text("a\nb\nc\n")
    names = {
        "PHOTOS": photos, "CLASSES10": models[10], "CLASSES1000": models[1000], "EMPTY": tmp_path / "empty",
        "LABELS3": tmp_path / "labels3.txt", "MISSING": tmp_path / "missing",
    }  # fmt: skip
    out = tmp_path / {"predict": "r.jsonl", "embed": "f.safetensors", "export": "m.onnx"}[command]
    code, stdout, stderr = run(capsys, command, *[names.get(a, a) for a in args], "--out", out)
    assert code == 2
    assert stderr.startswith(f"fastdeit {command}: error: ") and message in stderr
    assert len(stderr.strip().splitlines()) == 1 and stdout == ""
    assert not out.exists()


def test_wrong_output_extension(capsys, tmp_path, models, photos):
    code, _, stderr = run(capsys, "predict", "--model", models[10], "--out", tmp_path / "r.txt", photos)
    assert code == 2 and "--out must end with .jsonl or .csv" in stderr
    code, _, stderr = run(capsys, "embed", "--model", models[10], "--out", tmp_path / "f.npy", photos)
    assert code == 2 and "--out must end with .safetensors" in stderr


def test_pil_fallback_is_said(capsys, monkeypatch, models, photos):
    """Where DALI cannot be imported, PIL decodes, and the output says so."""
    import fastdeit.data.build

    monkeypatch.setattr(fastdeit.data.build, "_dali_import_error", lambda: "No module named 'nvidia.dali'")
    code, _, stderr = run(capsys, "predict", "--model", models[10], photos)
    assert code == 0
    assert "DALI is not importable (No module named 'nvidia.dali'); using the slower PIL fallback" in stderr
    assert "decoder: PIL on the CPU (DALI is not importable)" in stderr
