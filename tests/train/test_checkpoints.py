"""Checkpoint files: atomic saves, the last K kept, --resume resolution, RNG round trips, the finiteness check."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fastdeit.models.checkpoint import CheckpointWarning
from fastdeit.training import (
    CheckpointManager,
    DistEnv,
    capture_rng,
    list_checkpoints,
    load_resume_checkpoint,
    restore_rng,
)
from fastdeit.training.checkpoints import (
    all_finite,
    check_same_global_batch,
    checkpoint_name,
    load_training_checkpoint,
)
from tests.helpers import small_model


def test_keeps_the_last_k_and_finds_the_latest(tmp_path: Path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    for step in (5, 10, 100, 1000):
        manager.save({"step": step}, step)
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    assert [p.name for p in list_checkpoints(tmp_path)] == [checkpoint_name(100), checkpoint_name(1000)]
    assert manager.latest() == tmp_path / checkpoint_name(1000)  # by step, not by name length or mtime
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind


def test_load_resume_checkpoint(tmp_path: Path):
    env = DistEnv(0, 0, 1, torch.device("cpu"))
    assert load_resume_checkpoint("", tmp_path, env) == (None, {})
    assert load_resume_checkpoint("auto", tmp_path, env) == (None, {})  # nothing yet: a fresh start
    state = {"model": {}, "optimizer": {}, "step": 3, "epoch": 0, "epoch_step": 3, "config": {}}
    CheckpointManager(tmp_path, 3).save(state, 3)
    assert load_resume_checkpoint("auto", tmp_path, env) == (tmp_path / checkpoint_name(3), state)
    assert load_resume_checkpoint(str(tmp_path), tmp_path / "elsewhere", env)[0] == tmp_path / checkpoint_name(3)
    # a newer checkpoint that cannot be read is passed over, and named
    (tmp_path / checkpoint_name(4)).write_bytes((tmp_path / checkpoint_name(3)).read_bytes()[:100])
    with pytest.warns(CheckpointWarning, match=f"passing over {tmp_path / checkpoint_name(4)}"):
        assert load_resume_checkpoint("auto", tmp_path, env)[0] == tmp_path / checkpoint_name(3)
    with pytest.raises(ValueError, match="could not read training checkpoint"):  # named explicitly: an error
        load_resume_checkpoint(str(tmp_path / checkpoint_name(4)), tmp_path, env)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_resume_checkpoint(str(tmp_path / "missing.pt"), tmp_path, env)
    (tmp_path / "notes.txt").write_text("hello world")  # before: "could not read training checkpoint ...: 101"
    with pytest.raises(ValueError, match=r"notes.txt' is not a torch checkpoint \(first bytes b'hello wo'\)"):
        load_resume_checkpoint(str(tmp_path / "notes.txt"), tmp_path, env)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no ckpt_<step>.pt"):
        load_resume_checkpoint(str(tmp_path / "empty"), tmp_path, env)


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


def test_same_global_batch_on_another_process_count_is_suggested():
    ckpt = {"config": {"batch_size": 64}, "rng": [{}, {}]}  # 2 processes x 64
    check_same_global_batch(ckpt, 32, 4, where="c.pt")  # 4 x 32: the same 128-image batches
    with pytest.raises(
        ValueError, match=r"resume with --batch-size 64 on 2 process\(es\) \(or --batch-size 128 on 1\)"
    ):
        check_same_global_batch(ckpt, 64, 1, where="c.pt")
