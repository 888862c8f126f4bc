"""The largest batch that fits: the one search every caller uses (the benchmarks, as the DeiT paper measures
throughput; the Predictor; the benchmarks' back-off when a measured step runs out of memory after all).

Probing costs one step per tried size, so results are cached in a JSON file in fastdeit's cache folder
(`fastdeit._env.cache_dir()`), keyed by what changes memory use: model, provider, mode, dtype, image size, teacher,
GPU.
"""

from __future__ import annotations

import gc
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch

from fastdeit._env import cache_dir
from fastdeit.io import atomic_write


def is_oom(err: BaseException) -> bool:
    """Whether an exception means the device ran out of memory (torch's OOM, or a library's allocation failure)."""
    if isinstance(err, torch.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and any(
        s in str(err) for s in ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED")
    )


def free_memory() -> None:
    """Release what a failed step left behind, so the next try starts from the same free memory."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def halve(batch: int) -> int:
    return batch // 2


def _fits(step: Callable[[int], object], batch: int, on_oom: Callable[[], None]) -> bool:
    oom = False
    try:
        step(batch)
    except Exception as e:
        if not is_oom(e):
            raise
        oom = True
    # Freed after the except block: until then the traceback keeps the failed step's tensors alive.
    if oom:
        on_oom()
    return not oom


def find_max_batch(
    step: Callable[[int], object],
    *,
    start: int = 32,
    cap: int = 1024,
    multiple: int = 8,
    shrink: Callable[[int], int] = halve,
    on_oom: Callable[[], None] = free_memory,
    what: str = "the step",
) -> int:
    """The largest batch in [1, cap] for which `step(batch)` does not run out of memory (other errors propagate).

    From `start`: if it fits, doubles until a step runs out of memory (or `cap` is reached), then bisects between
    the last size that fitted and the first that did not, in steps of `multiple` (tensor cores prefer multiples of
    8), stopping within 1/8 of the answer: throughput is flat that close to the limit. If `start` does not fit,
    tries `shrink(batch)` (default: half) until a size fits, and returns that one. So `start=cap` searches
    downwards only: the first size that fits is the answer, and no larger size is ever run.

    Raises RuntimeError, naming `what`, when even a batch of 1 does not fit.
    """
    if start < 1 or cap < 1:
        raise ValueError(f"start and cap must be >= 1, got start={start}, cap={cap}")
    good = min(start, cap)
    if not _fits(step, good, on_oom):
        while True:
            good = min(shrink(good), good - 1)
            if good < 1:
                raise RuntimeError(f"{what} runs out of memory even at batch size 1")
            if _fits(step, good, on_oom):
                return good
    bad = None
    while good < cap:
        trial = min(2 * good, cap)
        if not _fits(step, trial, on_oom):
            bad = trial
            break
        good = trial
    if bad is None:
        return good
    while bad - good > max(multiple, good // 8):
        mid = (good + bad) // 2 // multiple * multiple
        if mid <= good:
            break
        if _fits(step, mid, on_oom):
            good = mid
        else:
            bad = mid
    return good


def default_cache_path() -> Path:
    """The benchmarks' batch-size cache: bench_batch_sizes.json in fastdeit's cache folder."""
    return cache_dir() / "bench_batch_sizes.json"


class BatchSizeCache:
    """Largest batch sizes found, in a JSON file: {key: {"batch": int, "cap": int}}.

    An entry found under a smaller cap is reused only if it was below that cap (a real memory limit), since a
    size that merely hit the old cap says nothing about a larger one.
    """

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path) if path is not None else default_cache_path()

    @staticmethod
    def key(*parts: object) -> str:
        return "|".join(str(p) for p in parts)

    def _load(self) -> dict[str, dict[str, int]]:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}  # no cache yet, or a damaged one: probe again

    def get(self, key: str, cap: int) -> int | None:
        entry = self._load().get(key)
        if not isinstance(entry, dict) or not {"batch", "cap"} <= entry.keys():
            return None
        if entry["batch"] < entry["cap"] or entry["cap"] >= cap:
            return min(int(entry["batch"]), cap)
        return None

    def set(self, key: str, batch: int, cap: int) -> None:
        data = self._load()
        data[key] = {"batch": int(batch), "cap": int(cap)}
        # Atomic: a run killed mid-write leaves the old cache intact.
        atomic_write(self.path, lambda tmp: tmp.write_text(json.dumps(data, indent=1, sort_keys=True)))

    def get_or_probe(self, key: str, cap: int, probe: Callable[[], int]) -> int:
        """The cached batch for `key` under `cap`, else `probe()`'s answer, which is cached."""
        batch = self.get(key, cap)
        if batch is None:
            batch = probe()
            self.set(key, batch, cap)
        return batch
