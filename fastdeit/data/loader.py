"""What the DALI and PIL image loaders share: batch planning, file reading, and unreadable-file handling.

A loader walks a plan of batches (file indices and targets per row, plus the train augmentation
choices), reads the encoded bytes in a thread pool a few batches ahead, and hands them to a backend
that decodes and transforms them.

Unreadable files (missing, not an image, truncated, or rejected by the decoder) never stop an epoch:
    train:   the row takes the file and label of the next readable row of its batch (wrapping around);
             it keeps its own augmentation choices;
    eval:    the row shows a blank image and gets PAD_LABEL, so metrics leave it out;
    predict: the row is dropped (its input index never appears).
Which files are unreadable depends only on their contents, and the replacement only on that set, so a
loader that meets a bad file for the first time produces exactly what one that knew it beforehand does:
determinism and resume stay exact. Each file is named in one DataWarning, at the end of the epoch it
was found in (a file DALI's decoder rejects: at once, right after the error lines DALI prints, which name
no file), by the rank that met it; `skipped_files` keeps them all.
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import torch

from fastdeit.data.augment import TrainAugParams, sample_train_params
from fastdeit.data.common import PAD_LABEL, DataWarning, blank_bmp, check_rank, describe_files
from fastdeit.data.config import LoaderConfig
from fastdeit.data.folder import check_encoded
from fastdeit.data.sampling import batch_rng, eval_shard, train_shard

Mode = Literal["train", "eval", "predict"]
MODES: tuple[str, ...] = ("train", "eval", "predict")
# File index of rows that show the blank image (eval padding and unreadable eval files).
BLANK = -1
_BLANK_BYTES = np.frombuffer(blank_bmp(), dtype=np.uint8)


class BatchLoader(Protocol):
    """What every fastdeit loader offers (file-backed DALI or PIL, or synthetic).

    Iterating yields `(images, targets)`: images (B, 3, S, S) float32 and targets (B,) int64, both on
    the loader's device. `set_epoch(epoch, start_step)` selects what the next iteration yields;
    `skipped_files` maps each unreadable file met so far to the reason.
    """

    backend: str
    skipped_files: dict[str, str]

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def set_epoch(self, epoch: int, start_step: int = 0) -> None: ...


@dataclass(frozen=True)
class PlannedBatch:
    """One batch of the plan: `files` (rows,) int64 file indices (or BLANK), `targets` (rows,) int64."""

    step: int
    files: np.ndarray
    targets: np.ndarray
    aug: TrainAugParams | None


@dataclass(frozen=True)
class ReadyBatch:
    """A planned batch after reading and resolving unreadable files.

    `encoded[i]` is the (bytes,) uint8 file of row i, `files[i]` its file index (BLANK for the blank
    image) and `targets[i]` its label (or input index in predict mode). `data` maps every file index of
    the plan to its bytes (None if unreadable), so the batch can be resolved again after a decoder
    rejects one of them.
    """

    planned: PlannedBatch
    files: np.ndarray
    targets: np.ndarray
    encoded: list[np.ndarray]
    aug: TrainAugParams | None
    data: dict[int, np.ndarray | None]


def _read_file(path: str) -> tuple[np.ndarray | None, str | None]:
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        return None, f"unreadable: {err.strerror or err}"
    problem = check_encoded(data)
    return (None, problem) if problem else (data, None)


class ImageFileLoader(ABC):
    """Base of the file-backed loaders; iterating yields `(images, targets)` for the current epoch.

    images: (B, 3, img_size, img_size) float32 on `device`, normalized with ImageNet mean/std.
    targets: (B,) int64 on `device`: class labels (train), labels or PAD_LABEL (eval), or positions in
    `files` (predict).

    Args:
        files: image paths.
        labels: class index per file (ignored in predict mode).
        config: the settings (image size, batch size, seed, transforms, threads; see LoaderConfig). The
            train-only settings (rand_augment, crop_scale, hflip, repeated_aug) are ignored in the other modes.
        mode: "train" (random crop, flip, RandAugment; shuffled, sharded, drop_last),
            "eval" (resize + center crop; every sample once across ranks, padded with PAD_LABEL rows
            to the same number of full batches on every rank) or "predict" (eval transform, files in
            the given order, unreadable files dropped, last batch may be short).
        device: where the batches are returned.
        rank, world_size: DDP position (see fastdeit.data.sampling). Only rank 0 warns about the loader's
            settings; each rank names the unreadable files it met (they differ between ranks).
    """

    backend: str = ""

    def __init__(
        self,
        files: Sequence[str],
        labels: Sequence[int] | None,
        config: LoaderConfig,
        *,
        mode: Mode,
        device: str | torch.device = "cpu",
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not isinstance(config, LoaderConfig):
            raise TypeError(f"config must be a LoaderConfig, got {type(config).__name__}")
        self.files = [str(f) for f in files]
        if not self.files:
            raise ValueError("files is empty: nothing to load")
        if mode == "predict":
            self.labels = np.arange(len(self.files), dtype=np.int64)
        else:
            if labels is None or len(labels) != len(self.files):
                given = None if labels is None else len(labels)
                raise ValueError(f"labels must have one entry per file ({len(self.files)}), got {given}")
            self.labels = np.asarray(labels, dtype=np.int64)
        self.mode: Mode = mode
        self.config = config
        self.device = torch.device(device)
        self.rank, self.world_size = check_rank(rank, world_size)
        exif = config.exif_orientation
        self.exif_orientation = mode == "predict" if exif is None else exif
        self.rand_augment = config.rand_augment if mode == "train" else None
        if mode == "train" and len(self) == 0:
            raise ValueError(
                f"batch_size={config.batch_size} is larger than the {len(self.files) // self.world_size} train "
                f"samples each of the {self.world_size} rank(s) reads per epoch"
            )
        if mode == "train" and config.repeated_aug > self.world_size and self.rank == 0:
            warnings.warn(
                f"repeated_aug={config.repeated_aug} > world_size={self.world_size}: copies of a sample will share "
                "a rank, often the same batch (DeiT only repeats under DDP)",
                DataWarning,
                stacklevel=2,
            )
        self.epoch = 0
        self.start_step = 0
        self._bad: dict[int, str] = {}
        self._unreported: list[int] = []

    @property
    def num_samples(self) -> int:
        """Samples in the dataset (all ranks)."""
        return len(self.files)

    def __len__(self) -> int:
        """Batches per epoch on this rank (in predict mode, an upper bound: unreadable files are dropped)."""
        if self.mode == "train":
            return (self.num_samples // self.world_size) // self.config.batch_size
        per_rank = math.ceil(self.num_samples / self.world_size) if self.mode == "eval" else self.num_samples
        return math.ceil(per_rank / self.config.batch_size)

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Make iterations yield `epoch`; the next one only from batch `start_step` on (to resume mid-epoch).

        Like DistributedSampler, the loader does not advance the epoch by itself: call this every epoch.
        """
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
        if isinstance(start_step, bool) or not isinstance(start_step, int) or not 0 <= start_step <= len(self):
            raise ValueError(f"start_step must be an integer in [0, {len(self)}], got {start_step!r}")
        self.epoch, self.start_step = epoch, start_step

    @property
    def skipped_files(self) -> dict[str, str]:
        """Unreadable files met so far (path -> reason), over all epochs."""
        return {self.files[i]: why for i, why in self._bad.items()}

    @abstractmethod
    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    # --- planning -------------------------------------------------------------------------------------

    def _plan(self, epoch: int, start_step: int) -> Iterator[PlannedBatch]:
        """The batches of `epoch` from `start_step` on."""
        cfg, b = self.config, self.config.batch_size
        if self.mode == "train":
            order = train_shard(
                self.num_samples,
                epoch=epoch,
                seed=cfg.seed,
                rank=self.rank,
                world_size=self.world_size,
                repeated_aug=cfg.repeated_aug,
            )
            for step in range(start_step, len(self)):
                rows = order[step * b : (step + 1) * b]
                rng = batch_rng(cfg.seed, epoch, self.rank, step)
                aug = sample_train_params(rng, b, cfg.img_size, self.rand_augment, cfg.hflip)
                yield PlannedBatch(step, rows, self.labels[rows], aug)
        elif self.mode == "eval":
            order = eval_shard(self.num_samples, rank=self.rank, world_size=self.world_size)
            for step in range(start_step, len(self)):
                rows = order[step * b : (step + 1) * b]
                files = np.full(b, BLANK, dtype=np.int64)
                targets = np.full(b, PAD_LABEL, dtype=np.int64)
                files[: len(rows)] = rows
                targets[: len(rows)] = self.labels[rows]
                yield PlannedBatch(step, files, targets, None)
        else:
            for step in range(start_step, len(self)):
                rows = np.arange(step * b, min((step + 1) * b, self.num_samples), dtype=np.int64)
                yield PlannedBatch(step, rows, rows.copy(), None)

    # --- reading and unreadable files -----------------------------------------------------------------

    def _mark_bad(self, index: int, reason: str) -> None:
        if index not in self._bad:
            self._bad[index] = reason
            self._unreported.append(index)

    def _report_bad(self) -> None:
        if not self._unreported:
            return
        items = [(self.files[i], self._bad[i]) for i in self._unreported]
        self._unreported = []
        action = {"train": "replaced by another sample of the batch", "eval": "left out", "predict": "skipped"}
        warnings.warn(
            f"{len(items)} unreadable image file(s) {action[self.mode]}: {describe_files(items)}",
            DataWarning,
            stacklevel=3,
        )

    def _resolve(self, planned: PlannedBatch, data: dict[int, np.ndarray | None]) -> ReadyBatch:
        """Apply the unreadable-file policy of the mode to a planned batch (see the module docstring)."""
        files = planned.files.copy()
        targets = planned.targets.copy()
        bad = np.array([f != BLANK and (f in self._bad or data[f] is None) for f in files.tolist()], dtype=bool)
        aug = planned.aug
        if bad.any():
            if self.mode == "predict":
                files, targets = files[~bad], targets[~bad]
            elif self.mode == "eval":
                files[bad], targets[bad] = BLANK, PAD_LABEL
            else:
                good = np.flatnonzero(~bad)
                if good.size == 0:
                    names = ", ".join(self.files[f] for f in planned.files[:5].tolist())
                    raise RuntimeError(f"every file of train batch {planned.step} is unreadable (e.g. {names})")
                for row in np.flatnonzero(bad).tolist():
                    source = good[np.searchsorted(good, row) % good.size]  # next readable row, wrapping
                    files[row], targets[row] = files[source], targets[source]
        encoded = [_BLANK_BYTES if f == BLANK else data[f] for f in files.tolist()]
        return ReadyBatch(planned, files, targets, encoded, aug, data)

    def _stream(self, pool: ThreadPoolExecutor) -> BatchStream:
        """A stream over the current epoch; uses up `start_step`, so later iterations start at batch 0."""
        start_step, self.start_step = self.start_step, 0
        return BatchStream(self, self._plan(self.epoch, start_step), pool)


class BatchStream:
    """The plan of one epoch turned into ReadyBatches, read `loader.config.read_ahead` batches ahead.

    `redo` puts batches back at the front (after a decoder failure) to be resolved again with the
    files found unreadable since.
    """

    def __init__(self, loader: ImageFileLoader, plan: Iterator[PlannedBatch], pool: ThreadPoolExecutor) -> None:
        self._loader = loader
        self._plan = plan
        self._pool = pool
        self._reading: deque[tuple[PlannedBatch, dict[int, Future]]] = deque()
        self._redo: deque[ReadyBatch] = deque()
        self._fill()

    def _fill(self) -> None:
        while len(self._reading) < self._loader.config.read_ahead:
            planned = next(self._plan, None)
            if planned is None:
                return
            wanted = {f for f in planned.files.tolist() if f != BLANK}
            futures = {f: self._pool.submit(_read_file, self._loader.files[f]) for f in sorted(wanted)}
            self._reading.append((planned, futures))

    def redo(self, batches: Sequence[ReadyBatch]) -> None:
        self._redo.extendleft(reversed(batches))

    def close(self) -> None:
        """Drop everything not yet handed out, so the next `next()` ends the stream."""
        for _, futures in self._reading:
            for fut in futures.values():
                fut.cancel()
        self._reading.clear()
        self._redo.clear()
        self._plan = iter(())

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> ReadyBatch:
        loader = self._loader
        while True:
            if self._redo:
                ready = self._redo.popleft()
                ready = loader._resolve(ready.planned, ready.data)
            else:
                if not self._reading:
                    raise StopIteration
                planned, futures = self._reading.popleft()
                self._fill()
                data: dict[int, np.ndarray | None] = {}
                for f, fut in futures.items():
                    data[f], problem = fut.result()
                    if problem:
                        loader._mark_bad(f, problem)
                ready = loader._resolve(planned, data)
            if len(ready.files):  # predict batches whose every file is unreadable are skipped
                return ready
