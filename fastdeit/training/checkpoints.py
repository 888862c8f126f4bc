"""Training checkpoints: atomic writes, the last K kept, finding the latest, and the RNG states that make a
resumed run repeat the uninterrupted one.

A checkpoint is `ckpt_<step>.pt` in the output folder, written to a temporary file, fsynced and renamed,
so a kill at any moment leaves the previous checkpoints intact. It holds only tensors and plain Python
types (`torch.load(weights_only=True)` reads it): model, model_ema, optimizer, scaler, scheduler, step,
epoch, epoch_step, rng (one entry per rank), config, model_name, model_config, class_names, metrics.
The RNG entry of a rank holds torch's CPU (and CUDA) generator state, which drives drop path, and the
mixup and random-erasing generators. Python's and NumPy's global generators are not saved: nothing in
training draws from them (the data pipeline derives its own from (seed, epoch, rank, step)). A run resumes from
its newest checkpoint that can be read.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fastdeit.data.common import derive_seed
from fastdeit.io import atomic_torch_save
from fastdeit.models.checkpoint import checkpoint_name, list_checkpoints, load_newest, load_torch_file
from fastdeit.training.distributed import DistEnv, broadcast_object


class TrainingDiverged(RuntimeError):
    """The loss or the weights became NaN/inf: training stops, and no checkpoint is written with them."""


def all_finite(module: nn.Module) -> bool:
    """Whether every parameter and buffer of `module` is finite (checked before each checkpoint is written)."""
    flags = [t.isfinite().all() for t in [*module.parameters(), *module.buffers()] if t.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    ckpts = list_checkpoints(directory)
    return ckpts[-1] if ckpts else None


class CheckpointManager:
    """Writes checkpoints into `directory` and deletes all but the newest `keep_last`."""

    def __init__(self, directory: str | os.PathLike, keep_last: int) -> None:
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        self.directory = Path(directory)
        self.keep_last = keep_last

    def save(self, state: dict[str, Any], step: int) -> Path:
        path = atomic_torch_save(state, self.directory / checkpoint_name(step))
        # Only once the new file is complete do older ones go: a crash never leaves fewer than keep_last.
        for old in list_checkpoints(self.directory)[: -self.keep_last]:
            old.unlink(missing_ok=True)
        return path

    def latest(self) -> Path | None:
        return latest_checkpoint(self.directory)

    def last_good(self) -> str:
        """Where the run stands when it has to stop: its newest checkpoint, for the message."""
        latest = self.latest()
        return f"the last good checkpoint is {latest} (kept)" if latest else "no checkpoint was written"


# What train.py writes into its output folder: a fresh run there first moves an earlier run's set aside.
RUN_FILES = ("config.json", "metrics.jsonl", "tensorboard")


def set_aside_earlier_run(directory: str | os.PathLike, env: DistEnv) -> Path | None:
    """Move the checkpoints and logs of an earlier run in `directory` (RUN_FILES, `ckpt_<step>.pt`) into a new
    subfolder `earlier_run_<n>`, and return it; None when there are no checkpoints. Rank 0 moves; every rank gets
    the answer.

    A fresh run in a run's folder would otherwise leave that run's newer checkpoints beside its own, to be picked up
    by `--resume auto`, `fastdeit predict --model DIR` and `from_pretrained(DIR)`; deleting them would lose a run.
    """
    moved = None
    directory = Path(directory)
    ckpts = list_checkpoints(directory) if env.is_main else []
    if ckpts:
        n = 1
        while (directory / f"earlier_run_{n}").exists():
            n += 1
        moved = directory / f"earlier_run_{n}"
        moved.mkdir()
        for path in [*ckpts, *(directory / name for name in RUN_FILES)]:
            if path.exists():
                path.rename(moved / path.name)
    return broadcast_object(moved, env)


def load_resume_checkpoint(
    resume: str, output_dir: str | os.PathLike, env: DistEnv
) -> tuple[Path | None, dict[str, Any]]:
    """(file, state) of the checkpoint `--resume` names: a file, or a run folder's newest readable checkpoint; with
    "auto", output_dir's, and (None, {}) when it has none yet (the run starts fresh); "": (None, {}).

    Newer checkpoints that cannot be read (cut short, corrupt) are passed over with a CheckpointWarning naming them
    (fastdeit.models.checkpoint.load_newest). Rank 0 chooses the file and every rank reads that one.
    """
    path, state = None, None
    if env.is_main and resume:
        where = Path(output_dir if resume == "auto" else resume).expanduser()
        if where.is_file():
            path, state = where, load_training_checkpoint(where)
        elif list_checkpoints(where):
            path, state = load_newest(where, load_training_checkpoint)
        elif resume != "auto":
            held = "holds no ckpt_<step>.pt checkpoint" if where.is_dir() else "does not exist"
            raise FileNotFoundError(f"resume: {str(where)!r} {held}")
    path = broadcast_object(path, env)
    if path is None:
        return None, {}
    return path, state if state is not None else load_training_checkpoint(path)


def check_same_global_batch(ckpt: dict[str, Any], batch_size: int, world_size: int, where: str) -> None:
    """ValueError when a run would resume the checkpoint `ckpt` (read from `where`) with another global batch
    (images per step over all processes). Its step count, lr schedule and data order are counted in its own batches:
    continuing them in other ones would, for one, run the rest of the cosine schedule at the wrong steps (with a
    larger batch, the lr reaches its minimum early and stays there)."""
    theirs_per_rank, ranks = ckpt["config"].get("batch_size"), len(ckpt.get("rng") or [None])
    if theirs_per_rank is None or theirs_per_rank * ranks == batch_size * world_size:
        return
    total = theirs_per_rank * ranks
    same = f"--batch-size {theirs_per_rank} on {ranks} process(es)"
    if total % world_size == 0 and world_size != ranks:
        same += f" (or --batch-size {total // world_size} on {world_size})"
    raise ValueError(
        f"{where} was trained with global batches of {total} images (batch_size {theirs_per_rank} x {ranks} "
        f"process(es)); this run's are {batch_size * world_size} ({batch_size} x {world_size}). Its steps, lr schedule "
        f"and data order count its own batches: resume with {same}, or start a new run from its weights with "
        "--finetune"
    )


_REQUIRED = ("model", "optimizer", "step", "epoch", "epoch_step", "config")


def load_training_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by train.py (on the CPU), checking that it holds a full training state."""
    try:
        ckpt = load_torch_file(path)
    except ValueError as e:
        raise ValueError(f"could not read training checkpoint {str(path)!r}: {e}") from e
    missing = [k for k in _REQUIRED if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise ValueError(
            f"{str(path)!r} is not a fastdeit training checkpoint (missing {missing}); to start from its weights "
            "use --finetune instead of --resume"
        )
    return ckpt


def seed_rank_generators(seed: int, rank: int) -> dict[str, torch.Generator]:
    """Seed torch's global generator (drop path) and return the mixup and random-erasing generators of this rank,
    each stream from (seed, stream, rank): every rank draws its own masks, mixes and erasures. `capture_rng`
    saves them all."""
    torch.manual_seed(derive_seed(seed, 1, rank))
    return {
        "mixup": torch.Generator().manual_seed(derive_seed(seed, 2, rank)),
        "erasing": torch.Generator().manual_seed(derive_seed(seed, 3, rank)),
    }


def capture_rng(generators: dict[str, torch.Generator], device: torch.device) -> dict[str, torch.Tensor]:
    """This process's random state as tensors: torch's CPU (and current CUDA) generator and `generators`."""
    state = {"torch_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["torch_cuda"] = torch.cuda.get_rng_state(device)
    for name, gen in generators.items():
        state[name] = gen.get_state()
    return state


def restore_rng(state: dict[str, torch.Tensor], generators: dict[str, torch.Generator], device: torch.device) -> None:
    """Undo `capture_rng`."""
    torch.set_rng_state(state["torch_cpu"])
    if device.type == "cuda" and "torch_cuda" in state:
        torch.cuda.set_rng_state(state["torch_cuda"], device)
    for name, gen in generators.items():
        gen.set_state(state[name])
