"""fastdeit.io: atomic writes leave the old file or the whole new one, with the mode any other new file gets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from fastdeit.io import atomic_torch_save, atomic_write


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_get_the_mode_open_gives(tmp_path: Path, umask: int):
    # Before: every file was 0600 (tempfile.mkstemp's), whatever the umask: a shared checkpoint or teacher cache
    # could not be read by the other users of a group.
    old = os.umask(umask)
    try:
        reference = tmp_path / "plain.txt"
        reference.write_text("x")
        written = atomic_write(tmp_path / "atomic.txt", lambda tmp: tmp.write_text("x"))
        saved = atomic_torch_save({"a": torch.ones(2)}, tmp_path / "ckpt.pt")
    finally:
        os.umask(old)
    expected = reference.stat().st_mode & 0o777
    assert expected == 0o666 & ~umask
    assert written.stat().st_mode & 0o777 == expected and saved.stat().st_mode & 0o777 == expected


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path):
    target = tmp_path / "out.txt"
    target.write_text("old")

    def fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        atomic_write(target, fail)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
