"""Evaluation (top-1/top-5 over all ranks) and the run's logs: JSON lines (plus TensorBoard when installed), the
train loss and speed between log points with a progress bar or log lines, and the run's warnings, said once."""

from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from fastdeit._env import show_progress
from fastdeit.data import PAD_LABEL, DataWarning
from fastdeit.models.checkpoint import CheckpointWarning
from fastdeit.training.config import TrainingWarning
from fastdeit.training.distributed import DistEnv, all_reduce_sum

# fastdeit's warnings about a run: each rank reads the same data and checkpoints, so only rank 0 says them.
RUN_WARNINGS = (TrainingWarning, DataWarning, CheckpointWarning)


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: Any, env: DistEnv, autocast: contextlib.AbstractContextManager | None = None
) -> dict[str, float]:
    """Top-1 / top-5 accuracy (percent) and mean cross-entropy of `model` on every sample of `loader`.

    Each rank sees its shard; padding rows (label PAD_LABEL) are not counted. Correct predictions, losses
    and sample counts are summed over ranks, so every sample counts once whatever the world size.
    """
    was_training = model.training
    model.eval()
    # correct@1, correct@5, summed loss, counted samples; float64 so sums of millions stay exact.
    totals = torch.zeros(4, dtype=torch.float64, device=env.device)
    for images, targets in loader:
        with autocast or contextlib.nullcontext():
            logits = model(images)
        logits = logits.float()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top == targets[:, None]  # PAD_LABEL (-1) never equals a class index
        totals[0] += hits[:, 0].sum()
        totals[1] += hits.any(dim=1).sum()
        totals[2] += F.cross_entropy(logits, targets, ignore_index=PAD_LABEL, reduction="sum")
        totals[3] += (targets != PAD_LABEL).sum()
    model.train(was_training)
    correct1, correct5, loss, count = all_reduce_sum(totals, env).tolist()
    if count == 0:
        raise ValueError("the eval loader yielded no labelled sample")
    return {"top1": 100.0 * correct1 / count, "top5": 100.0 * correct5 / count, "loss": loss / count, "count": count}


def evaluate_models(
    models: dict[str, nn.Module], loader: Any, env: DistEnv, autocast: contextlib.AbstractContextManager | None = None
) -> dict[str, float]:
    """`evaluate` each model on `loader`: {"<prefix>_top1": ..., ...} for each (prefix, model) of `models`
    (train.py: "val" for the weights, "ema" for their EMA)."""
    return {
        f"{prefix}_{key}": value
        for prefix, model in models.items()
        for key, value in evaluate(model, loader, env, autocast).items()
    }


def epoch_summary(record: dict[str, Any], epochs: int) -> str:
    """The log line of an epoch record: "epoch 3/300 | step 3753 | train loss 6.2 | val top-1 ... | 612.4 s, ..."."""
    parts = [f"epoch {record['epoch']}/{epochs}", f"step {record['step']}"]
    if "train_loss" in record:
        parts.append(f"train loss {record['train_loss']:.4f}")
    if "val_top1" in record:
        parts.append(f"val top-1 {record['val_top1']:.2f}% top-5 {record['val_top5']:.2f}%")
    if "ema_top1" in record:
        parts.append(f"EMA top-1 {record['ema_top1']:.2f}%")
    parts.append(f"{record['epoch_time_s']:.1f} s, {record['img_per_s']:.0f} img/s")
    return " | ".join(parts)


class TrainProgress:
    """The train loss and speed between log points, shown as a progress bar or as log lines.

    `add(loss)` each step sums the loss on the device (no host sync per step). `reduce()` at a log point sums it over
    ranks, one collective, and returns the mean loss of the steps since the last log point (NaN/inf when any rank's
    is) and their images per second. The bar is drawn by rank 0 when `fastdeit._env.show_progress(progress)` (on a
    terminal unless `progress` says otherwise: in a pipe or a log file its redraws are noise); without it, `show`
    logs a line every `log_interval` steps.
    """

    def __init__(
        self, env: DistEnv, global_batch: int, *, progress: bool | None, log_interval: int, log: Callable[[str], None]
    ) -> None:
        self.env = env
        self.global_batch = global_batch
        self.draw_bar = env.is_main and show_progress(progress)
        self.log_interval = log_interval
        self.log = log
        self.bar: tqdm | None = None

    def start_epoch(self, epoch: int, epochs: int, steps: int, first_step: int) -> None:
        """Epoch `epoch` (0-based) of `epochs`, of `steps` steps, run from `first_step` (a resumed run's)."""
        desc = f"epoch {epoch + 1}/{epochs}"
        self.bar = tqdm(total=steps, initial=first_step, desc=desc, disable=not self.draw_bar, dynamic_ncols=True)
        self.epoch_start = self.window_start = time.perf_counter()
        self.window_loss, self.window_steps = torch.zeros((), device=self.env.device), 0
        self.epoch_loss, self.epoch_steps = 0.0, 0  # summed over the reduced windows
        self.epoch_ran = 0

    def add(self, loss: torch.Tensor) -> None:
        self.window_loss += loss.detach().float()
        self.window_steps += 1
        self.epoch_ran += 1
        self.bar.update()

    def reduce(self) -> tuple[float, float]:
        """(mean loss, images per second) of the steps since the last call, over all ranks."""
        total = all_reduce_sum(self.window_loss.clone(), self.env).item()
        mean_loss = total / (self.window_steps * self.env.world_size)
        img_per_s = self.window_steps * self.global_batch / (time.perf_counter() - self.window_start)
        self.epoch_loss += total / self.env.world_size
        self.epoch_steps += self.window_steps
        self.window_loss.zero_()
        self.window_steps, self.window_start = 0, time.perf_counter()
        return mean_loss, img_per_s

    def show(self, step: int, loss: float, lr: float, img_per_s: float) -> None:
        """The numbers of a log point: on the bar, or without one as a line (at log intervals only)."""
        if self.draw_bar:
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{img_per_s:.0f}")
        elif step % self.log_interval == 0:
            self.log(f"step {step} | loss {loss:.4f} | lr {lr:.3e} | {img_per_s:.0f} img/s")

    def end_epoch(self) -> dict[str, float]:
        """The epoch's time, images per second and mean train loss (of the steps this run ran)."""
        self.bar.close()
        seconds = time.perf_counter() - self.epoch_start
        record = {"epoch_time_s": seconds, "img_per_s": self.epoch_ran * self.global_batch / seconds}
        if self.epoch_steps:
            record["train_loss"] = self.epoch_loss / self.epoch_steps
        return record


def report_run_warnings(env: DistEnv, prog: str = "train.py") -> None:
    """Say fastdeit's warnings about the run (RUN_WARNINGS) once each, from rank 0 only, in one line:
    `train.py: warning: ...` (Python's format adds a source line that tells a user nothing). Other warnings are left
    as they are, and so are filters already set for these (rank 0 appends its own after them)."""
    for category in RUN_WARNINGS:
        warnings.filterwarnings("once" if env.is_main else "ignore", category=category, append=env.is_main)
    python_format = warnings.formatwarning
    if getattr(python_format, "one_line_for", None) == RUN_WARNINGS:
        return

    def formatwarning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> str:
        if issubclass(category, RUN_WARNINGS):
            return f"{prog}: warning: {message}\n"
        return python_format(message, category, *args, **kwargs)

    formatwarning.one_line_for = RUN_WARNINGS
    warnings.formatwarning = formatwarning


class MetricsLog:
    """Appends one JSON object per line to `output_dir/metrics.jsonl`, and the numbers to TensorBoard.

    `start_step`: the step the run starts from (0 for a fresh run, S on resume): records after it, left by
    an earlier or interrupted run, are dropped first, so the file reads like one uninterrupted run. None
    appends without dropping anything (--eval-only). Only the main process writes (others: `enabled=False`).
    `tensorboard`: True writes TensorBoard logs too, None when the package is installed, False never.
    """

    def __init__(
        self, output_dir: str | os.PathLike, *, enabled: bool, tensorboard: bool | None, start_step: int | None
    ) -> None:
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"
        self.writer = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if start_step is not None and self.path.exists():
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= start_step
            ]
            self.path.write_text("".join(line + "\n" for line in kept))
        if tensorboard is not False:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                if tensorboard:  # asked for (TrainConfig.check refuses it earlier when the package is missing)
                    raise
                return  # unset: TensorBoard when installed; the JSON lines hold the same numbers
            purge = None if start_step is None else start_step + 1
            self.writer = SummaryWriter(log_dir=str(Path(output_dir) / "tensorboard"), purge_step=purge)

    def log(self, record: dict[str, Any]) -> None:
        """Write `record` (must hold "kind" and "step"); its numbers go to TensorBoard as kind/name."""
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, int | float) and key not in ("step", "epoch"):
                    self.writer.add_scalar(f"{record['kind']}/{key}", value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(output_dir: str | os.PathLike, kind: str | None = None) -> list[dict[str, Any]]:
    """The records of a run's metrics.jsonl (only those of `kind` when given)."""
    path = Path(output_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no metrics.jsonl in {str(output_dir)!r}: did the run start?")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if kind is None or r.get("kind") == kind]
