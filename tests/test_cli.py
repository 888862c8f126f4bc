"""The `fastdeit` command line itself: `--help` imports no command's heavy modules, user errors are one line and
bugs keep their traceback, a closed stdout ends a command quietly, progress bars only on a terminal."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

import fastdeit
from fastdeit import cli
from fastdeit.commands import COMMANDS

skimage_data = pytest.importorskip("skimage.data")


def imported_modules(*argv: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run `python -X importtime -m fastdeit ARGV`; returns the process and the modules it imported."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "fastdeit", *argv], capture_output=True, text=True, timeout=300
    )
    modules = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    return proc, modules


def test_help_imports_neither_torch_nor_the_benchmarks():
    """Before: `fastdeit --help` imported every command's module, and with them torch and the benchmarks."""
    proc, modules = imported_modules("--help")
    assert proc.returncode == 0 and all(name in proc.stdout for name in COMMANDS)
    assert "fastdeit.cli" in modules  # the import log is read right
    heavy = sorted(m for m in modules if m.split(".")[0] in ("torch", "triton") or m.startswith("fastdeit.benchmarks"))
    assert not heavy, f"fastdeit --help imported {heavy[:10]}"
    proc, modules = imported_modules("predict", "--help")
    assert proc.returncode == 0 and "--topk" in proc.stdout
    assert not any(m.startswith(("fastdeit.benchmarks", "fastdeit.commands.bench")) for m in modules)


def test_a_bug_keeps_its_traceback(monkeypatch, tmp_path):
    """Only user errors become one line (before: any TypeError, a bug, was reported as `error: ...`, exit 2)."""
    from fastdeit.inference.predictor import Predictor

    def broken(self, *args, **kwargs):
        raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")

    monkeypatch.setattr(Predictor, "predict", broken)
    torch.manual_seed(0)
    model = fastdeit.create_model("deit_tiny_patch16_224", num_classes=10, img_size=32, depth=1, backend="torch")
    fastdeit.save_pretrained(model, tmp_path / "model")
    Image.fromarray(skimage_data.coffee()).save(tmp_path / "coffee.jpg")
    with pytest.raises(TypeError, match="unsupported operand"):
        cli.main(["predict", "--model", str(tmp_path / "model"), str(tmp_path / "coffee.jpg")])


def test_closed_stdout_ends_quietly_with_sigpipes_status(tmp_path):
    """`fastdeit predict ... | head`: the reader is gone before the results are written (before: a BrokenPipeError
    traceback, or 'Exception ignored ... BrokenPipeError' at exit)."""
    torch.manual_seed(0)
    model = fastdeit.create_model("deit_tiny_patch16_224", num_classes=10, img_size=32, depth=1, backend="torch")
    fastdeit.save_pretrained(model, tmp_path / "model")
    (tmp_path / "photos").mkdir()
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        Image.fromarray(getattr(skimage_data, name)()).save(tmp_path / "photos" / f"{name}.jpg")
    read_end, write_end = os.pipe()
    os.close(read_end)  # no reader: every write to the pipe fails with EPIPE
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "fastdeit", "predict", "--model", str(tmp_path / "model"), "--device", "cpu",
             "--decoder", "pil", str(tmp_path / "photos")],
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=300,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert proc.returncode == cli.SIGPIPE_EXIT == 141, proc.stderr
    assert proc.stderr == ""


def test_bench_progress_bar_only_on_a_terminal_unless_asked(capsys):
    """stderr is not a terminal under pytest: no bar by default (before: always one), one with --progress."""
    tiny = "--device cpu --models ti --img-size 32 --batch-size 2 --repeats 1 --warmup 0 --mode inference".split()
    tiny += ["--providers", "fastdeit-torch", "--no-csv"]
    assert cli.main(["bench", *tiny]) == 0
    assert "fastdeit bench:" not in capsys.readouterr().err
    assert cli.main(["bench", *tiny, "--progress"]) == 0
    assert "fastdeit bench:" in capsys.readouterr().err


def test_every_command_loads_and_is_listed_with_its_help_line():
    """Each command's full parser loads when it is run; the listing shows the one help line COMMANDS holds."""
    minimal = {
        "predict": ["--model", "m", "x.jpg"],
        "embed": ["--model", "m", "--out", "f.safetensors", "x.jpg"],
        "export": ["--model", "m", "--format", "onnx", "--out", "m.onnx"],
    }
    for name, help_line in COMMANDS.items():
        parser = cli.build_parser(name)
        args = parser.parse_args([name, *minimal.get(name, [])])
        assert args.command == name and callable(args.func)
        assert " ".join(help_line.split()) in " ".join(parser.format_help().split())
