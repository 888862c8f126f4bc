"""Fixtures of the training tests (helpers are in tests/train/helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.train.helpers import write_convnet_teacher


@pytest.fixture(scope="session")
def teacher_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained 10-class convnet teacher in train.py's checkpoint format."""
    return write_convnet_teacher(tmp_path_factory.mktemp("teacher") / "teacher.pt")
