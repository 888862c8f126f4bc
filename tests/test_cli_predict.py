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
from fastdeit.data import dali_available
from fastdeit.inference import imagenet_labels
from tests.train.helpers import PHOTO_CLASSES, photo_image_folder

skimage_data = pytest.importorskip("skimage.data")

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
DECODERS = [pytest.param("dali", marks=pytest.mark.skipif(not dali_available(), reason="no DALI")), "pil"]


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
    (folder / "saved_as.jpg").write_bytes(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;")  # a GIF under a JPEG name
    out = tmp_path / "r.jsonl"
    code, _, stderr = run(capsys, "predict", "--model", models[10], "--out", out, folder)
    assert code == 0
    assert [json.loads(line)["path"] for line in out.read_text().splitlines()] == [str(folder / "good.jpg")]
    assert "truncated.jpg (truncated JPEG" in stderr and "renamed.jpg (not an image)" in stderr
    assert "saved_as.jpg (a GIF image, a format the decoders do not read)" in stderr
    assert "skipped 3 of 4 files" in stderr


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
    expected = fastdeit.Predictor(models[10], device="cpu").embed(photo_paths(photos)).features
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


# --- progress bars -----------------------------------------------------------------------------------------------


def test_progress_bar_only_on_a_terminal_unless_asked(capsys, models, photos):
    """stderr is not a terminal here: no bar by default; --progress draws one anyway (before: no such option)."""
    code, _, stderr = run(capsys, "predict", "--model", models[10], "--decoder", "pil", photos)
    assert code == 0 and "/5 [" not in stderr and "\r" not in stderr
    code, _, stderr = run(capsys, "predict", "--model", models[10], "--decoder", "pil", "--progress", photos)
    assert code == 0 and "/5 [" in stderr  # tqdm: "  0%|   | 0/5 [00:00<?, ?img/s]"
    code, _, stderr = run(capsys, "embed", "--model", models[10], "--out", photos.parent / "f.safetensors", photos)
    assert code == 0 and "/5 [" not in stderr


# --- training runs -----------------------------------------------------------------------------------------------

RUN_CLASSES = PHOTO_CLASSES


def write_run(folder: Path) -> Path:
    """A training run folder holding one checkpoint with the keys train.py writes that loading reads."""
    from fastdeit.models.checkpoint import checkpoint_name

    torch.manual_seed(0)
    model = fastdeit.create_model(
        "deit_tiny_patch16_224", num_classes=3, img_size=64, patch_size=16, depth=2, embed_dim=64, num_heads=2,
        backend="torch",
    )  # fmt: skip
    state = {
        "model": model.state_dict(),
        "config": {"model": model.model_name},
        "model_name": model.model_name,
        "model_config": model.model_config,
        "class_names": list(RUN_CLASSES),
        "step": 7,
    }
    folder.mkdir(parents=True)
    torch.save(state, folder / checkpoint_name(7))
    return folder


def test_run_folder_names_its_checkpoint_and_classes(capsys, tmp_path, photos):
    """The library logs which checkpoint of a run folder it used; the command line shows that line (before: the
    INFO record went nowhere)."""
    from fastdeit.models.checkpoint import checkpoint_name

    folder = write_run(tmp_path / "run")
    code, stdout, stderr = run(capsys, "predict", "--model", folder, "--topk", 1, photos)
    assert code == 0, stderr
    assert f"fastdeit predict: {folder}: using {checkpoint_name(7)}, the newest of 1 checkpoint(s)" in stderr
    assert {line.split(": ")[1].split()[0] for line in stdout.splitlines()} <= set(RUN_CLASSES)
    assert "random weights" not in stderr


def labels_of(line: str) -> list[str]:
    """The class names of one stdout line, "path: rocket 0.4121, cat 0.3010" -> ["rocket", "cat"]."""
    return [part.rsplit(" ", 1)[0] for part in line.split(": ", 1)[1].split(", ")]


def test_topk_default_fits_a_model_with_fewer_than_5_classes(capsys, tmp_path, models, photos):
    """A 3-class run with no --topk: its 3 classes per image (before: "--topk must be in [1, 3] ..., got 5", the
    default refused); an explicit --topk above the class count is still refused, and 10 classes still give 5."""
    folder = write_run(tmp_path / "run")
    code, stdout, stderr = run(capsys, "predict", "--model", folder, photos)
    assert code == 0, stderr
    lines = stdout.splitlines()
    assert len(lines) == 5 and all(sorted(labels_of(line)) == sorted(RUN_CLASSES) for line in lines)
    out = tmp_path / "r.csv"
    code, _, stderr = run(capsys, "predict", "--model", folder, "--out", out, photos)
    assert code == 0, stderr
    with open(out, newline="") as f:
        assert next(csv.reader(f))[-3:] == ["class_3", "label_3", "prob_3"]
    code, stdout, stderr = run(capsys, "predict", "--model", folder, "--topk", 5, photos)
    assert code == 2 and "--topk must be in [1, 3] (the model's classes), got 5" in stderr and stdout == ""
    code, stdout, _ = run(capsys, "predict", "--model", models[10], photos)
    assert code == 0 and all(line.count("class ") == 5 for line in stdout.splitlines())


@pytest.mark.parametrize(
    "command, args",
    [
        ("predict", ["--topk", "1"]),
        ("embed", ["--out", "f.safetensors"]),
        ("export", ["--format", "onnx", "--out", "m.onnx"]),
    ],
)
def test_checkpoint_of_another_architecture_says_to_give_it_as_model(capsys, tmp_path, photos, command, args):
    """A name with a checkpoint recording another architecture: the error names both and says what to type
    (before: "leave out the name", and leaving out --model is an argparse error). The advice works."""
    from fastdeit.models.checkpoint import checkpoint_name

    ckpt = write_run(tmp_path / "run") / checkpoint_name(7)
    args = [str(tmp_path / a) if a.startswith(("f.", "m.")) else a for a in args]
    inputs = [] if command == "export" else [photos]
    code, stdout, stderr = run(
        capsys, command, "--model", "deit_small_patch16_224", "--checkpoint", ckpt, *args, *inputs
    )
    assert code == 2 and stdout == "" and len(stderr.strip().splitlines()) == 1
    assert stderr.startswith(f"fastdeit {command}: error: checkpoint {str(ckpt)!r} holds deit_tiny_patch16_224")
    assert "not a deit_small_patch16_224: embed_dim: 64 vs 384" in stderr
    assert f"give it as --model: --model {ckpt} (without --checkpoint)" in stderr
    assert "leave out the name" not in stderr
    code, _, stderr = run(capsys, command, "--model", ckpt, *args, *inputs)
    assert code == 0, stderr


@pytest.mark.parametrize("decoder", DECODERS)
def test_unsupported_image_formats_are_named_as_such(capsys, tmp_path, models, photos, decoder):
    """A GIF is an image in a format the decoders do not read: its message says so and lists the supported ones
    (before: "(not an image)" for a named .gif, "extension '.gif' is not an image type" in a folder). A text file
    is still "not an image"."""
    folder = tmp_path / "odd"
    folder.mkdir()
    Image.open(photos / "coffee.jpg").save(folder / "a.gif")
    (folder / "b.jpg").write_bytes((photos / "coffee.jpg").read_bytes())
    (folder / "notes.txt").write_text("a text file\n")
    gif = f"{folder / 'a.gif'} (.gif is not a supported image format; supported: .bmp, .jpeg, .jpg, .pbm, .pgm"
    out = tmp_path / "r.jsonl"
    named = [folder / "a.gif", folder / "b.jpg", folder / "notes.txt"]
    code, _, stderr = run(capsys, "predict", "--model", models[10], "--decoder", decoder, "--out", out, *named)
    assert code == 0, stderr
    assert [json.loads(line)["path"] for line in out.read_text().splitlines()] == [str(folder / "b.jpg")]
    assert gif in stderr and f"{folder / 'notes.txt'} (not an image)" in stderr
    assert "a.gif (not an image)" not in stderr and "skipped 2 of 3 files" in stderr
    code, _, stderr = run(capsys, "predict", "--model", models[10], "--decoder", decoder, "--out", out, folder)
    assert code == 0, stderr
    assert gif in stderr and f"{folder / 'notes.txt'} (extension '.txt' is not an image type)" in stderr
    assert "'.gif' is not an image type" not in stderr


def test_labels_other_than_the_run_class_names_are_said(capsys, tmp_path, photos):
    """--labels renaming the classes a run records: used, with a warning naming both lists (before: silently);
    the run's own names in another order: refused, since every prediction would carry another class's name."""
    folder = write_run(tmp_path / "run")
    (tmp_path / "l3.txt").write_text("x\ny\nz\n")
    code, stdout, stderr = run(
        capsys, "predict", "--model", folder, "--topk", 3, "--labels", tmp_path / "l3.txt", photos
    )
    assert code == 0, stderr
    assert all(set(labels_of(line)) == {"x", "y", "z"} for line in stdout.splitlines())
    assert (
        f"fastdeit predict: warning: labels file {str(tmp_path / 'l3.txt')!r} names the model's classes differently "
        "from the names the model records: using ['x', 'y', 'z'] in place of the model's ['cat', 'coffee', 'rocket']"
    ) in stderr
    (tmp_path / "shuffled.txt").write_text("\n".join(reversed(RUN_CLASSES)) + "\n")
    code, stdout, stderr = run(
        capsys, "predict", "--model", folder, "--topk", 3, "--labels", tmp_path / "shuffled.txt", photos
    )
    assert code == 2 and stdout == ""
    assert "lists the model's class names in another order: class 0 is 'cat' in the model, 'rocket'" in stderr
    (tmp_path / "same.txt").write_text("\n".join(RUN_CLASSES) + "\n")
    code, _, stderr = run(capsys, "predict", "--model", folder, "--topk", 3, "--labels", tmp_path / "same.txt", photos)
    assert code == 0 and "warning" not in stderr


def test_warnings_are_one_line_each_and_shown_once(capsys, tmp_path, photos):
    """A truncated newest checkpoint is passed over, said once in one line (before, for export: Python's two-line
    `file:line: CheckpointWarning: ...` format with the source line)."""
    from fastdeit.models.checkpoint import checkpoint_name

    folder = write_run(tmp_path / "run")
    (folder / checkpoint_name(9)).write_bytes((folder / checkpoint_name(7)).read_bytes()[:1000])
    code, _, stderr = run(capsys, "export", "--model", folder, "--format", "torchscript", "--out", tmp_path / "m.ts")
    assert code == 0, stderr
    warned = [line for line in stderr.splitlines() if "warning: passing over" in line]
    assert len(warned) == 1 and warned[0].startswith(f"fastdeit export: warning: passing over {folder}")
    assert "CheckpointWarning" not in stderr and "warnings.warn" not in stderr
    code, _, stderr = run(capsys, "predict", "--model", folder, "--topk", 1, photos)
    assert code == 0 and stderr.count("warning: passing over") == 1, stderr


def test_export_of_a_convnet_is_a_user_error(capsys, tmp_path):
    out = tmp_path / "m.onnx"
    code, _, stderr = run(capsys, "export", "--model", "convnet_tiny", "--format", "onnx", "--out", out)
    assert code == 2 and "fastdeit export exports DeiT models; --model convnet_tiny is" in stderr
    assert not out.exists()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(run folder, image folder): train/train.py for one epoch on the photos, as a user would."""
    from tests.train.helpers import run_train, tiny_args

    root = tmp_path_factory.mktemp("trained")
    data = photo_image_folder(root / "photos")
    args = tiny_args(
        data=data, output_dir=root / "run", epochs=1, batch_size=8, distillation_type="none", model_ema="false"
    )
    proc = run_train(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "run", data


@pytest.mark.slow
def test_trained_run_predicts_embeds_and_exports_with_no_architecture_flags(capsys, tmp_path, trained_run):
    """`--model RUN_DIR` alone: predict prints the run's class names, embed writes its features, export writes a
    verified file that carries the class names and the preprocessing."""
    from fastdeit.export import read_metadata

    run_dir, data = trained_run
    val = sorted(str(p) for p in (data / "val").rglob("*.jpg"))
    code, stdout, stderr = run(capsys, "predict", "--model", run_dir, "--topk", 2, *val)
    assert code == 0, stderr
    lines = stdout.splitlines()
    assert [line.split(": ")[0] for line in lines] == val
    for line in lines:  # "path: rocket 0.4121, cat 0.3010"
        labels = [part.rsplit(" ", 1)[0] for part in line.split(": ", 1)[1].split(", ")]
        assert len(labels) == 2 and set(labels) <= set(RUN_CLASSES)
    assert "using ckpt_" in stderr and "random weights" not in stderr

    out = tmp_path / "feats.safetensors"
    code, _, stderr = run(capsys, "embed", "--model", run_dir, "--out", out, data / "val")
    assert code == 0, stderr
    with safe_open(str(out), "pt") as f:
        assert f.get_tensor("features").shape == (6, 32) and json.loads(f.metadata()["paths"]) == val

    onnx_file = tmp_path / "run.onnx"
    code, stdout, stderr = run(capsys, "export", "--model", run_dir, "--format", "onnx", "--out", onnx_file)
    assert code == 0, stderr
    assert "verified with" in stdout and "metadata in the file: 3 class names, 16x16 input" in stdout
    metadata = read_metadata(onnx_file, "onnx")
    assert metadata["class_names"] == list(RUN_CLASSES) and metadata["img_size"] == [16, 16]
    assert metadata["model_config"]["depth"] == 2 and metadata["model_config"]["patch_size"] == [4, 4]


def test_bare_weights_of_another_size_need_and_take_img_size(capsys, tmp_path, photos):
    # Before: the message said "pass img_size=...", a Python argument these commands had no flag for.
    from safetensors.torch import save_file

    import fastdeit

    weights = tmp_path / "tiny_at_32.safetensors"
    model = fastdeit.create_model("deit_tiny_patch16_224", img_size=32, num_classes=10, backend="torch")
    save_file(model.state_dict(), weights)
    code, _, stderr = run(capsys, "predict", "--model", "deit_tiny_patch16_224", "--checkpoint", weights, photos)
    assert code == 2 and "holds weights for 32x32 images" in stderr and "--img-size" in stderr
    out = tmp_path / "p.jsonl"
    args = ("--model", "deit_tiny_patch16_224", "--checkpoint", weights, "--img-size", 32, "--out", out, photos)
    code, _, stderr = run(capsys, "predict", *args)
    assert code == 0, stderr
    assert len(out.read_text().splitlines()) == len(PHOTOS) + 1  # and the png in photos/more
