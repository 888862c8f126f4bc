"""`fastdeit demo`'s plumbing (the full demo trains four models: `make demo` runs it, not the tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fastdeit.commands.demo import _table, find_train_script
from tests.train.helpers import TRAIN_SCRIPT


def test_finds_train_py_of_the_checkout():
    assert find_train_script() == TRAIN_SCRIPT


def test_missing_train_script_is_explained(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="runs train/train.py from a source checkout"):
        find_train_script(tmp_path / "train.py")


def test_table_averages_the_seeds():
    rows = [
        ("teacher", "labels", [{"val_top1": 96.0, "val_top5": 100.0}], 30.2),
        ("student", "labels", [{"val_top1": 47.0, "val_top5": 88.0}, {"val_top1": 50.0, "val_top5": 90.0}], 61),
    ]
    lines = _table(rows, [0, 1]).splitlines()
    assert lines[0] == "students: seeds 0, 1"
    assert lines[1].split() == ["model", "trained", "on", "val", "top-1", "val", "top-5", "time"]
    assert lines[3].split()[-3:] == ["100.0%", "30", "s"]
    assert "48.5% (47.0 / 50.0)" in lines[4] and "89.0%" in lines[4]
    assert len({len(line) for line in lines[1:]}) == 1  # aligned columns
