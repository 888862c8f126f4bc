"""Checkpoint files: atomic saves, the last K kept, --resume resolution, RNG round trips, the finiteness check."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fastdeit.training import CheckpointManager, capture_rng, list_checkpoints, resolve_resume, restore_rng
from fastdeit.training.checkpoints import all_finite, checkpoint_name, load_training_checkpoint
from tests.helpers import small_model


def test_keeps_the_last_k_and_finds_the_latest(tmp_path: Path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    for step in (5, 10, 100, 1000):
        manager.save({"step": step}, step)
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    assert [p.name for p in list_checkpoints(tmp_path)] == [checkpoint_name(100), checkpoint_name(1000)]
    assert manager.latest() == tmp_path / checkpoint_name(1000)  # by step, not by name length or mtime
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind


def test_resolve_resume(tmp_path: Path):
    assert resolve_resume("", tmp_path) is None
    assert resolve_resume("auto", tmp_path) is None  # nothing yet: a fresh start
    CheckpointManager(tmp_path, 3).save({}, 3)
    assert resolve_resume("auto", tmp_path) == tmp_path / checkpoint_name(3)
    assert resolve_resume(str(tmp_path), tmp_path / "elsewhere") == tmp_path / checkpoint_name(3)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        resolve_resume(str(tmp_path / "missing.pt"), tmp_path)


def test_load_rejects_weights_only_files(tmp_path: Path):
    torch.save({"model": {}}, tmp_path / "w.pt")
    with pytest.raises(ValueError, match="not a fastdeit training checkpoint.*--finetune"):
        load_training_checkpoint(tmp_path / "w.pt")


def test_rng_states_round_trip_through_weights_only_load(tmp_path: Path):
    gens = {"mixup": torch.Generator().manual_seed(1), "erasing": torch.Generator().manual_seed(2)}
    torch.manual_seed(3)
    torch.save({"rng": [capture_rng(gens, torch.device("cpu"))]}, tmp_path / "r.pt")
    expected = (torch.rand(3), torch.rand(2, generator=gens["mixup"]), torch.rand(2, generator=gens["erasing"]))
    torch.manual_seed(99)
    restore_rng(torch.load(tmp_path / "r.pt", weights_only=True)["rng"][0], gens, torch.device("cpu"))
    got = (torch.rand(3), torch.rand(2, generator=gens["mixup"]), torch.rand(2, generator=gens["erasing"]))
    for a, b in zip(expected, got, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_all_finite():
    model = small_model()
    assert all_finite(model)
    with torch.no_grad():
        model.blocks[1].mlp.fc1.weight[0, 0] = float("nan")
    assert not all_finite(model)
