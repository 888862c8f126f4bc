"""Evaluation (top-1/top-5 over all ranks) and the run's logs: JSON lines, plus TensorBoard when installed."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fastdeit.data import PAD_LABEL
from fastdeit.training.distributed import DistEnv, all_reduce_sum


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


class MetricsLog:
    """Appends one JSON object per line to `output_dir/metrics.jsonl`, and the numbers to TensorBoard.

    `start_step`: the step the run starts from (0 for a fresh run, S on resume): records after it, left by
    an earlier or interrupted run, are dropped first, so the file reads like one uninterrupted run. None
    appends without dropping anything (--eval-only). Only the main process writes (others: `enabled=False`).
    """

    def __init__(
        self, output_dir: str | os.PathLike, *, enabled: bool, tensorboard: bool, start_step: int | None
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
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                return  # TensorBoard is optional: the JSON lines hold the same numbers
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
