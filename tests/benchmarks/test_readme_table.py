"""The README's model table is made from the results CSV: the right rows, the right ratios, and the README in sync."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastdeit.benchmarks import readme_table
from fastdeit.benchmarks.common import CSV_COLUMNS
from fastdeit.benchmarks.models import Measurement

H200, H100 = "NVIDIA H200", "NVIDIA H100 80GB HBM3"
TI, S, B = "deit_tiny_distilled_patch16_224", "deit_small_distilled_patch16_224", "deit_base_distilled_patch16_224"


def _rows(model, provider, rate, *, batch=1024, gpu=H200, mode="inference", dtype="bf16", date="2026-12-01T10:00:00"):
    """The CSV rows (dicts, as read_rows gives them) of one measurement."""
    m = Measurement(model, provider, mode, dtype, batch, 224, rate, rate * 0.98, rate * 1.01, gpu)
    stamp = {"gpu_name": gpu, "torch_version": "2.13.0", "triton_version": "3.6.0", "git_sha": "abc", "date": date}
    return [{**{k: str(v) for k, v in r.__dict__.items()}, **stamp} for r in m.rows()]


def _line(table: str, model: str, section: int = 0) -> list[str]:
    """The cells of `model`'s line in the table's `section`-th table (0: inference, 1: training)."""
    tables = table.split("Training step")
    line = next(row for row in tables[section].splitlines() if row.startswith(f"| {model} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_cells_are_the_best_fastdeit_provider_and_its_same_batch_ratios():
    rows = (
        _rows(TI, "fastdeit", 10_000)
        + _rows(TI, "fastdeit-cudagraph", 15_000)
        + _rows(TI, "timm", 9_000)
        + _rows(TI, "timm-compile", 12_000)
        + _rows(TI, "timm", 1_000, date="2026-11-01T10:00:00")  # older: replaced by the newer row
        + _rows(TI, "fastdeit", 99_000, dtype="fp32")  # another precision
        + _rows(TI, "fastdeit", 99_000, gpu="CPU: AMD EPYC (2 cores)")  # not a GPU
        + _rows(B, "fastdeit", 3_000)
        + _rows(S, "fastdeit-torch", 4_000)
        + _rows(S, "timm-compile", 5_000)  # a peer faster than fastdeit: the ratio says so, the cell is fastdeit's
        + _rows(B, "timm", 2_500, batch=512)  # no ratio between different batches
        + _rows(TI, "fastdeit", 20_000, gpu=H100)  # fewer models measured there: not the table's GPU
        + _rows(B, "fastdeit", 1_000, mode="training", batch=256)
        + _rows(B, "timm", 800, mode="training", batch=256)
    )
    table = readme_table.make_table(rows)
    assert f"fastdeit img/s ({H200}, bf16)" in table
    assert _line(table, TI) == [TI, "5.9M", "224", "74.5", "2529.5", "15,000 (cudagraph, batch 1024)", "1.67x", "1.25x"]
    assert _line(table, B)[5:] == ["3,000 (eager, batch 1024)", "- (batch 512)", "-"]
    assert _line(table, S)[5:] == ["4,000 (torch, batch 1024)", "-", "0.80x"]
    assert _line(table, "deit_small_patch16_224")[5:] == ["-", "-", "-"]
    assert "No bf16 H100/H200 rows" not in table
    assert _line(table, B, section=1) == [B, "1,000 (eager, batch 256)", "1.25x", "-"]


def test_without_gpu_rows_the_measured_columns_are_empty_and_say_why():
    table = readme_table.make_table(_rows(TI, "fastdeit", 50.0, gpu="CPU: AMD EPYC (2 cores)", dtype="fp32"))
    assert _line(table, "deit_base_patch16_384") == ["deit_base_patch16_384", "86.9M", "384", "83.1", "85.9", "-", "-",
                                                     "-"]  # fmt: skip
    assert "No bf16 H100/H200 rows in the results CSV yet" in table and "Training step" not in table


def test_the_readme_table_is_what_the_committed_csv_gives():
    """Run `python -m fastdeit.benchmarks.readme_table` after adding rows to benchmarks/results/results.csv."""
    assert readme_table.main(["--check"]) == 0


def test_main_rewrites_a_stale_table_and_check_tells(tmp_path: Path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n{readme_table.MARKER_BEGIN}\n| stale |\n{readme_table.MARKER_END}\n\nafter\n")
    csv = tmp_path / "results.csv"
    csv.write_text(",".join(CSV_COLUMNS) + "\n" + "".join(",".join(r[c] for c in CSV_COLUMNS) + "\n"
                                                          for r in _rows(TI, "fastdeit", 12_345)))  # fmt: skip
    args = ["--readme", str(readme), "--csv", str(csv)]
    assert readme_table.main([*args, "--check"]) == 1
    assert "not what" in capsys.readouterr().err
    assert readme_table.main(args) == 0
    text = readme.read_text()
    assert "12,345 (eager, batch 1024)" in text and "| stale |" not in text
    assert text.startswith("# title\n") and text.endswith("\nafter\n")
    assert readme_table.main([*args, "--check"]) == 0


def test_markers_are_required_once_each():
    with pytest.raises(ValueError, match="expected the markers"):
        readme_table.replace_block("no markers here", "table")
    twice = f"{readme_table.MARKER_BEGIN}\n{readme_table.MARKER_END}\n" * 2
    with pytest.raises(ValueError, match="once each"):
        readme_table.replace_block(twice, "table")
