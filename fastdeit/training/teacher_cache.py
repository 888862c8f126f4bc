"""Pay for the distillation teacher once: record its outputs for every batch of a run, replay them in later runs.

    python train/train.py ... --teacher-path regnety_160-a5fe301d.pth --teacher-cache runs/cache   # records
    python train/train.py ... --teacher-cache runs/cache      # another student: no teacher is loaded or run

Why replaying is exact. Every random choice of the data pipeline is drawn on the host from (seed, epoch, rank,
step) (fastdeit.data.sampling and .augment); mixup/cutmix and random erasing draw from their own generators,
seeded by (seed, rank) and advanced once per step; the student's own randomness (drop path) comes from torch's
global generator, which none of them reads, and a teacher is built and run without touching it
(`TeacherSource`). So the mixed, erased batch the teacher sees at (epoch, step) on a rank is a function of the
data configuration alone, the *batch key*, and so is the teacher's answer. A hard-distillation run that replays
the cache ends with the same weights, bit for bit, as the run with the live teacher.

The batch key, field by field (what changes the images the teacher sees, or how it sees them):
    data_files    the train files in the loader's order with their byte sizes (relative paths, sha256). Sizes
                  rather than mtimes: a copy of the dataset elsewhere (a node's local disk) keeps its cache; an
                  image rewritten in place to exactly the same byte size is the one change not detected.
    data_backend  dali or pil: their decoders and RandAugment differ in the last bits, so never the same batches.
    device        cpu or cuda: DALI decodes on the GPU (nvJPEG) or the CPU (libjpeg-turbo), and erasing noise
                  comes from the device's generator.
    seed, img_size, batch_size (per rank), world_size, repeated_aug (as applied: 1 without DDP)
    rand_augment  the parsed policy (two spellings of one policy are one key), or none
    crop_scale, hflip, mixup (alphas, batch probability, switch probability; off when no batch is mixed), reprob
    teacher_amp   the autocast dtype the teacher runs under: another one can flip its argmax on close calls, so a
                  run with another amp setting would not have the same live teacher
    num_classes
Not in the key, because they change the student and not the batches: the model, drop path, lr, schedule, epochs
(epoch e's batches do not depend on how many follow), label smoothing (targets only), EMA, distillation alpha and
tau (a soft run replaying top-k logits must use the temperature they were recorded at: checked apart), data
threads, eval settings. Eval never uses the teacher. The train loader drops the last partial batch, so
every recorded step has batch_size rows.

The teacher. The manifest keeps the teacher file's sha256 and description: a run that names a teacher
(--teacher-path) must name a file with the same content, else the cache is refused; a run without one trusts the
manifest.

Layout of a cache folder:
    manifest.json                            the batch key, the teacher, the contents (label dtype, k of top-k)
    e0003_r001_s000500_n000250.safetensors   epoch 3 (0-based), rank 1, steps 500-749: labels (250, B) int16
                                             [+ topk_values (250, B, k) float16, topk_indices (250, B, k) int16,
                                                tail_logmass (250, B) float32]
Each rank records and replays its own shard. Chunks are written atomically whenever the run writes a checkpoint
(`flush`), so the cache covers every step a checkpoint covers: a killed run, resumed, computes and records only
the steps no chunk holds, and a chunk is there whole or not at all. The steps a cache holds are the union of its
chunk names: there is no index to keep consistent across ranks and nodes. Runs recording into one folder at the
same time write equal labels for equal steps (same teacher, same batches), so overlapping chunks are harmless.

Soft distillation from a cache (`--teacher-cache-topk K`) stores the teacher's K largest logits in fp16 with their
classes, and the log of its probability outside them at the run's temperature (fp32); the loss spreads that mass
evenly over the other classes (fastdeit.losses.topk_soft_kl; its error against the full distribution is measured in
the README). A soft run must use the temperature the cache was recorded at. Every run using such a cache, the
recording one included, uses that loss, so recording and replaying runs agree bit for bit there too.

Size: 2 bytes per image per epoch for the hard labels (ImageNet-1k: 2.56 MB per epoch), plus 4 + 4k bytes per image
with top-k, plus a few hundred bytes per chunk file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import save_file
from torch import nn

from fastdeit.data.augment import RandAugmentConfig
from fastdeit.io import atomic_write
from fastdeit.losses import TeacherOutput, topk_tail_logmass
from fastdeit.models.checkpoint import list_checkpoints, load_newest, read_checkpoint
from fastdeit.training.config import ConfigError, TrainConfig, user_errors
from fastdeit.training.distributed import DistEnv, all_gather_objects
from fastdeit.training.teachers import load_teacher

FORMAT = "fastdeit-teacher-cache"
VERSION = 1
MANIFEST = "manifest.json"
LABEL_DTYPE = np.int16  # class indices up to 32767 (ImageNet-21k has 21,841 classes)
_CHUNK = re.compile(r"^e(\d{4,})_r(\d{3,})_s(\d{6,})_n(\d{6,})\.safetensors$")
_HINTS = {
    "data_backend": "the DALI and PIL pipelines do not give identical images",
    "data_files": "the train files or their sizes changed",
    "teacher_amp": "the teacher would run in another precision",
}


def chunk_name(epoch: int, rank: int, first: int, count: int) -> str:
    return f"e{epoch:04d}_r{rank:03d}_s{first:06d}_n{count:06d}.safetensors"


def files_fingerprint(files: Sequence[str], root: str | os.PathLike, threads: int = 16) -> str:
    """'N files, B bytes, sha256 H': H over each file's path relative to `root` and byte size, in the given order."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        sizes = list(pool.map(os.path.getsize, files))
    digest = hashlib.sha256()
    for path, size in zip(files, sizes, strict=True):
        digest.update(f"{os.path.relpath(path, root)}\t{size}\n".encode())
    return f"{len(files)} files, {sum(sizes)} bytes, sha256 {digest.hexdigest()[:24]}"


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


def batch_key(
    config: TrainConfig,
    *,
    files: Sequence[str] | None,
    root: str | os.PathLike | None,
    backend: str,
    world_size: int,
    device: torch.device,
    amp: str,
    num_classes: int,
) -> dict[str, Any]:
    """Everything that decides the images the teacher sees at each (epoch, step, rank), and how it runs on them.

    files, root: the train loader's files in its order and the split folder (None for synthetic data); backend:
    the loader's backend ("dali", "pil", "synthetic"); amp: "bf16", "fp16" or "none", as the run resolved it.
    """
    mixed = (config.mixup > 0 or config.cutmix > 0) and config.mixup_prob > 0  # train.py builds a Mixup then
    rand_augment = (
        dataclasses.asdict(RandAugmentConfig.from_timm(config.rand_augment))
        if config.rand_augment not in ("", "none")
        else "none"
    )
    return {
        "data_files": files_fingerprint(files, root) if files is not None else f"synthetic ({config.data})",
        "data_backend": backend,
        "device": torch.device(device).type,
        "seed": config.seed,
        "img_size": config.img_size,
        "batch_size": config.batch_size,
        "world_size": world_size,
        "repeated_aug": config.repeated_aug if world_size > 1 else 1,
        "rand_augment": rand_augment,
        "crop_scale": list(config.crop_scale),
        "hflip": config.hflip,
        "mixup": {
            "mixup_alpha": config.mixup,
            "cutmix_alpha": config.cutmix,
            "prob": config.mixup_prob,
            "switch_prob": config.mixup_switch_prob,
        }
        if mixed
        else "off",
        "reprob": config.reprob,
        "teacher_amp": amp,
        "num_classes": num_classes,
    }


def _key_digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def key_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """One line per field whose value differs: 'field: recorded X, this run Y'."""
    lines = []
    for field in sorted(set(recorded) | set(current)):
        old, new = recorded.get(field, "(absent)"), current.get(field, "(absent)")
        if old != new:
            hint = f" ({_HINTS[field]})" if field in _HINTS else ""
            lines.append(f"{field}: recorded {json.dumps(old)}, this run {json.dumps(new)}{hint}")
    return lines


class TeacherCache:
    """One rank's view of a cache folder: which steps it holds, their outputs, and the steps recorded since the last
    `flush`.

    Args:
        directory: the cache folder (created at the first flush).
        key: this run's `batch_key`.
        rank: this process's rank; it reads and writes only its own chunks.
        steps_per_epoch, batch_size: the train loader's.
        topk: k of the top-k logits this run asks for (0: hard labels only; a hard run then records whatever k
            the cache was recorded with).
        tau: the distillation temperature: the teacher's mass outside its top k is recorded at this temperature
            (a cache already recorded keeps its own).
        soft: this run distils softly, so it needs the cache's top-k logits at its own temperature.
        teacher: the identity of this run's teacher file ({"file", "sha256", "teacher_model"}), None without one.
        device: where outputs are returned.

    Raises ConfigError when the folder was recorded for other batches, by another teacher, or without the top-k
    this run needs, naming every field that differs with both values.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        key: dict[str, Any],
        *,
        rank: int,
        steps_per_epoch: int,
        batch_size: int,
        topk: int = 0,
        tau: float = 1.0,
        soft: bool = False,
        teacher: dict[str, Any] | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.directory = Path(directory).expanduser()
        if self.directory.exists() and not self.directory.is_dir():
            raise ConfigError(f"teacher_cache: {str(self.directory)!r} exists and is not a folder")
        self.key = key
        self.key_digest = _key_digest(key)
        self.rank = rank
        self.steps_per_epoch = steps_per_epoch
        self.batch_size = batch_size
        self.teacher = teacher
        self.device = torch.device(device)
        if key["num_classes"] > np.iinfo(LABEL_DTYPE).max + 1:
            raise ConfigError(f"teacher_cache: labels are int16, at most 32768 classes; got {key['num_classes']}")
        if topk > key["num_classes"]:
            raise ConfigError(f"teacher_cache_topk: expected at most the {key['num_classes']} classes, got {topk}")
        self.manifest = self._read_manifest()
        self.topk, self.tau, self.soft = topk, tau, soft
        if self.manifest is not None:
            self._check_manifest(self.manifest)
            self.topk, self.tau = self.manifest["contents"]["topk"], self.manifest["contents"]["tau"]
        elif teacher is None:
            raise ConfigError(
                f"teacher_cache: {str(self.directory)!r} holds no recording ({MANIFEST} is missing) and no "
                "--teacher-path is given to record one"
            )
        self.description = self.manifest["teacher"]["description"] if self.manifest else None
        self._chunks: dict[int, list[tuple[int, int, Path]]] = {}
        for path in sorted(self.directory.glob("e*_r*_s*_n*.safetensors")) if self.directory.is_dir() else []:
            m = _CHUNK.match(path.name)
            if m and int(m.group(2)) == rank:
                epoch, first, count = int(m.group(1)), int(m.group(3)), int(m.group(4))
                self._chunks.setdefault(epoch, []).append((first, count, path))
        self._epoch: int | None = None
        self._have = np.zeros(0, dtype=bool)
        self._outputs: dict[str, torch.Tensor] = {}
        self._pending: dict[tuple[int, int], dict[str, torch.Tensor]] = {}

    # --- the manifest -----------------------------------------------------------------------------------------

    def _read_manifest(self) -> dict[str, Any] | None:
        path = self.directory / MANIFEST
        if not path.is_file():
            return None
        try:
            manifest = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"teacher_cache: {str(path)!r} is not readable JSON: {e}") from e
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ConfigError(f"teacher_cache: {str(path)!r} is not a fastdeit teacher cache manifest")
        if manifest.get("version") != VERSION:
            raise ConfigError(
                f"teacher_cache: {str(path)!r} has format version {manifest.get('version')!r}; this fastdeit reads "
                f"version {VERSION}: record a new cache"
            )
        return manifest

    def _check_manifest(self, manifest: dict[str, Any]) -> None:
        where = str(self.directory)
        diffs = key_differences(manifest["batches"], self.key)
        if diffs:
            raise ConfigError(
                f"teacher_cache: {where!r} was recorded for other batches than this run's, so its labels are not "
                "what this run's teacher would give:\n  " + "\n  ".join(diffs) + "\nUse another --teacher-cache "
                "folder for this configuration, or the recorded settings."
            )
        recorded = manifest["teacher"]
        if self.teacher is not None and self.teacher["sha256"] != recorded["sha256"]:
            raise ConfigError(
                f"teacher_cache: {where!r} holds the outputs of teacher {recorded['file']} (sha256 "
                f"{recorded['sha256'][:16]}); this run's teacher is {self.teacher['file']} (sha256 "
                f"{self.teacher['sha256'][:16]}), another file. Use another --teacher-cache folder for this teacher, "
                "or leave out --teacher-path to replay the recorded one."
            )
        k, tau = manifest["contents"]["topk"], manifest["contents"]["tau"]
        if self.topk and self.topk != k:
            held = f"the top-{k} logits" if k else "hard labels only"
            fix = f"pass --teacher-cache-topk {k}, or record another cache" if k else "record another cache"
            raise ConfigError(f"teacher_cache_topk: recorded {k}, this run {self.topk} ({where!r} holds {held}); {fix}")
        if self.soft and tau != self.tau:
            raise ConfigError(
                f"distillation_tau: recorded {tau}, this run {self.tau} ({where!r} holds the teacher's probability "
                f"outside its top {k} at tau {tau}); use --distillation-tau {tau}, or record another cache"
            )

    def _manifest(self, description: str) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "batches": self.key,
            "key_sha256": self.key_digest,
            "teacher": {**(self.teacher or {}), "description": description},
            "contents": {
                "labels": "int16 (steps, batch_size): the teacher's argmax",
                "topk": self.topk,
                "topk_values": "float16 (steps, batch_size, topk)" if self.topk else None,
                "topk_indices": "int16 (steps, batch_size, topk)" if self.topk else None,
                "tail_logmass": "float32 (steps, batch_size): log of the teacher's probability outside its top k at "
                "temperature tau"
                if self.topk
                else None,
                "tau": self.tau,
                "batch_size": self.batch_size,
                "steps_per_epoch": self.steps_per_epoch,
                "chunks": "e<epoch>_r<rank>_s<first step>_n<steps>.safetensors, epochs and steps 0-based",
            },
        }

    # --- which steps are held ---------------------------------------------------------------------------------

    def _held(self, epoch: int) -> np.ndarray:
        have = np.zeros(self.steps_per_epoch, dtype=bool)
        for first, count, _ in self._chunks.get(epoch, []):
            have[first : first + count] = True
        return have

    def missing(self, epoch: int, step: int, epochs: int) -> list[tuple[int, int]]:
        """The (epoch, step) pairs from (epoch, step) up to the end of epoch `epochs - 1` that no chunk holds."""
        out = []
        for e in range(epoch, epochs):
            have = self._held(e)
            out += [(e, int(s)) for s in np.flatnonzero(~have) if e > epoch or s >= step]
        return out

    def steps_held(self) -> int:
        return sum(int(self._held(e).sum()) for e in self._chunks)

    # --- reading ----------------------------------------------------------------------------------------------

    def _load_epoch(self, epoch: int) -> None:
        """Read this rank's chunks of `epoch` onto the device."""
        shapes = {"labels": (self.batch_size,)}
        if self.topk:
            k = self.topk
            shapes.update(
                topk_values=(self.batch_size, k), topk_indices=(self.batch_size, k), tail_logmass=(self.batch_size,)
            )
        dtypes = {
            "labels": LABEL_DTYPE,
            "topk_values": np.float16,
            "topk_indices": LABEL_DTYPE,
            "tail_logmass": np.float32,
        }
        arrays = {name: np.zeros((self.steps_per_epoch, *shape), dtype=dtypes[name]) for name, shape in shapes.items()}
        for first, count, path in self._chunks.get(epoch, []):
            try:
                with safe_open(path, framework="numpy") as f:
                    meta = f.metadata() or {}
                    chunk = {name: f.get_tensor(name) for name in shapes}
            except Exception as e:
                raise ConfigError(
                    f"teacher_cache: chunk {str(path)!r} is unreadable ({e}); delete it to re-record"
                ) from e
            if meta.get("key_sha256") != self.key_digest:
                raise ConfigError(
                    f"teacher_cache: chunk {str(path)!r} belongs to another cache (its batch key differs from "
                    f"{MANIFEST}'s): move it out of {str(self.directory)!r}"
                )
            for name, shape in shapes.items():
                if chunk[name].shape != (count, *shape) or chunk[name].dtype != dtypes[name]:
                    raise ConfigError(
                        f"teacher_cache: chunk {str(path)!r} holds {name} of shape {chunk[name].shape} "
                        f"{chunk[name].dtype}, expected {(count, *shape)} {np.dtype(dtypes[name])}"
                    )
            labels = chunk["labels"]
            if labels.size and not (0 <= labels.min() and labels.max() < self.key["num_classes"]):
                raise ConfigError(
                    f"teacher_cache: chunk {str(path)!r} holds labels outside [0, {self.key['num_classes']})"
                )
            for name in shapes:
                arrays[name][first : first + count] = chunk[name]
        self._epoch, self._have = epoch, self._held(epoch)
        self._outputs = {name: torch.from_numpy(a).to(self.device) for name, a in arrays.items()}

    def lookup(self, epoch: int, step: int) -> TeacherOutput | None:
        """The recorded output of (epoch, step) on this rank, or None when no chunk holds it."""
        if epoch != self._epoch:
            self._load_epoch(epoch)
        if not self._have[step]:
            return None
        return self._output({name: t[step] for name, t in self._outputs.items()})

    @staticmethod
    def _output(stored: dict[str, torch.Tensor]) -> TeacherOutput:
        """What the loss gets from stored tensors: int64 labels and indices, fp32 values (fp16-exact)."""
        if "topk_values" not in stored:
            return TeacherOutput(labels=stored["labels"].long())
        return TeacherOutput(
            labels=stored["labels"].long(),
            topk_values=stored["topk_values"].float(),
            topk_indices=stored["topk_indices"].long(),
            topk_tail_logmass=stored["tail_logmass"],
        )

    # --- recording --------------------------------------------------------------------------------------------

    def record(self, epoch: int, step: int, logits: torch.Tensor, description: str) -> TeacherOutput:
        """Keep the teacher's `logits` (B, C) of (epoch, step) for the next `flush`; returns exactly what a later
        `lookup` of that step returns. Stays on the device: no host sync per step."""
        if logits.shape != (self.batch_size, self.key["num_classes"]):
            raise ValueError(
                f"teacher logits of shape {tuple(logits.shape)} at epoch {epoch} step {step}; the cache records "
                f"({self.batch_size}, {self.key['num_classes']})"
            )
        stored = {"labels": logits.argmax(dim=1).to(torch.int16)}
        if self.topk:
            values, indices = torch.topk(logits.float(), self.topk, dim=1)
            stored.update(
                topk_values=values.to(torch.float16),
                topk_indices=indices.to(torch.int16),
                tail_logmass=topk_tail_logmass(logits, indices, self.tau),
            )
        self._pending[(epoch, step)] = stored
        self.description = self.description or description
        return self._output(stored)

    def flush(self) -> list[Path]:
        """Write the steps recorded since the last flush, one atomic chunk per run of consecutive steps of an epoch
        (and the manifest, if the folder has none yet). Returns the chunk files written."""
        if not self._pending:
            return []
        if self.manifest is None:
            self.manifest = self._read_manifest()
            if self.manifest is not None:  # another process wrote it since: it must be this cache
                self._check_manifest(self.manifest)
            else:
                self.manifest = self._manifest(self.description or "")
                text = json.dumps(self.manifest, indent=2) + "\n"
                atomic_write(self.directory / MANIFEST, lambda tmp: tmp.write_text(text))
        written = []
        for epoch, first, steps in _runs(sorted(self._pending)):
            rows = [self._pending[(epoch, s)] for s in steps]
            arrays = {name: torch.stack([r[name] for r in rows]).cpu().numpy() for name in rows[0]}
            meta = {
                "key_sha256": self.key_digest,
                "epoch": str(epoch),
                "rank": str(self.rank),
                "first_step": str(first),
            }
            path = self.directory / chunk_name(epoch, self.rank, first, len(steps))
            atomic_write(path, lambda tmp, arrays=arrays, meta=meta: save_file(arrays, str(tmp), metadata=meta))
            self._chunks.setdefault(epoch, []).append((first, len(steps), path))
            written.append(path)
        self._pending.clear()
        return written


def _runs(positions: list[tuple[int, int]]) -> list[tuple[int, int, list[int]]]:
    """Sorted (epoch, step) pairs -> (epoch, first step, steps) for each run of consecutive steps of one epoch."""
    runs: list[tuple[int, int, list[int]]] = []
    for epoch, step in positions:
        if runs and runs[-1][0] == epoch and runs[-1][2][-1] + 1 == step:
            runs[-1][2].append(step)
        else:
            runs.append((epoch, step, [step]))
    return runs


def teacher_identity(teacher_path: str, teacher_model: str) -> dict[str, Any]:
    """The teacher file a run names (a folder means its newest readable checkpoint, the one load_teacher reads), by
    content."""
    path = Path(teacher_path).expanduser()
    if path.is_dir():
        if not list_checkpoints(path):
            raise FileNotFoundError(f"teacher_path {str(path)!r} is a folder without ckpt_<step>.pt checkpoints")
        path, _ = load_newest(path, read_checkpoint)
    return {"file": str(path), "sha256": file_sha256(path), "teacher_model": teacher_model}


class TeacherSource:
    """The teacher's output for each training batch: from a cache where it holds the step, else from the live
    teacher (then recorded in the cache, if any).

    `source(images, epoch, step)` -> TeacherOutput for the (B, 3, H, W) batch `images` of (epoch, step) on this
    rank: full logits from the live teacher without a cache; with one, the labels (and top-k logits) it holds.

    Without a cache the teacher is loaded at once. With one, at the first call (when the run's first step is known,
    after a resume) every rank counts the steps of the rest of the run its cache lacks: if any rank lacks some and
    there is no teacher, that is an error on every rank before the first step; ranks that lack some load the
    teacher, and say so once. The teacher is built with torch's generators forked: building it initialises weights
    at random before loading them, and the student's drop path must draw the same masks whether a teacher was
    built or not.
    """

    def __init__(
        self,
        load_live: Callable[[], nn.Module] | None,
        cache: TeacherCache | None,
        *,
        env: DistEnv,
        epochs: int,
        log: Callable[[str], None] = print,
    ) -> None:
        if load_live is None and cache is None:
            raise ValueError("a TeacherSource needs a teacher to load or a cache")
        self._load_live = load_live
        self.cache = cache
        self.env = env
        self.epochs = epochs
        self.log = log
        self.live: nn.Module | None = None
        self._planned = False
        if cache is None:
            self.live = self._load()

    @classmethod
    def build(
        cls,
        config: TrainConfig,
        *,
        env: DistEnv,
        amp: str,
        autocast: contextlib.AbstractContextManager,
        loader: Any,
        data_info: Any,
        log: Callable[[str], None] = print,
    ) -> TeacherSource:
        """train.py's teacher: config.teacher_path and teacher_model, loaded by `load_teacher` (checked against the
        dataset of `data_info`, run under `autocast`, `amp` naming its dtype) when some step needs it; and
        config.teacher_cache, when set, the cache for the batches of `loader` (the train loader, with `data_info` its
        DataInfo)."""
        load_live = partial(
            load_teacher,
            config.teacher_path,
            config.teacher_model,
            num_classes=data_info.num_classes,
            img_size=config.img_size,
            batch_size=config.batch_size,
            device=env.device,
            autocast=autocast,
            class_names=data_info.class_names,
            allow_class_mismatch=config.allow_class_mismatch,
        )
        cache = None
        if config.teacher_cache:
            key = batch_key(
                config,
                files=getattr(loader, "files", None),
                root=data_info.root,
                backend=data_info.backend,
                world_size=env.world_size,
                device=env.device,
                amp=amp,
                num_classes=data_info.num_classes,
            )
            identity = teacher_identity(config.teacher_path, config.teacher_model) if config.teacher_path else None
            cache = TeacherCache(
                config.teacher_cache,
                key,
                rank=env.rank,
                steps_per_epoch=len(loader),
                batch_size=config.batch_size,
                topk=config.teacher_cache_topk,
                tau=config.distillation_tau,
                soft=config.distillation_type == "soft",
                teacher=identity,
                device=env.device,
            )
        return cls(load_live if config.teacher_path else None, cache, env=env, epochs=config.epochs, log=log)

    def _load(self) -> nn.Module:
        devices = [self.env.device.index or 0] if self.env.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), user_errors("teacher"):
            live = self._load_live()
        # load_teacher checks the names a teacher records against the dataset's; without them, only the count.
        named = getattr(live, "class_names", None) is not None
        note = "" if named else " (records no class names: only its class count is checked)"
        self.log(f"teacher: {getattr(live, 'description', type(live).__name__)}{note}")
        return live

    def _plan(self, epoch: int, step: int) -> None:
        """At the first step: what the cache lacks for the rest of the run, on every rank (see the class docstring)."""
        cache = self.cache
        missing = cache.missing(epoch, step, self.epochs)
        needed = (self.epochs - epoch) * cache.steps_per_epoch - step
        counts = all_gather_objects((len(missing), missing[:1]), self.env)
        total_missing = sum(n for n, _ in counts)
        total = needed * self.env.world_size
        where = str(cache.directory)
        if total_missing and self._load_live is None:
            rank, (first,) = next((r, m) for r, (n, m) in enumerate(counts) if n)
            raise ConfigError(
                f"teacher_cache: {where!r} lacks {total_missing} of the {total} batch outputs the rest of this run "
                f"needs (the first: epoch {first[0] + 1}, batch {first[1] + 1} of {cache.steps_per_epoch}, rank "
                f"{rank}; a shorter recording run?), and there is no --teacher-path to compute them. Give the "
                "teacher (the missing ones are then computed and recorded), or replay fewer epochs."
            )
        kind = f"labels and top-{cache.topk} logits" if cache.topk else "labels"
        if total_missing == 0:
            self.log(
                f"teacher cache {where}: replays all {total} batch {kind} of the rest of this run (teacher "
                f"{cache.description}); the teacher is not loaded"
            )
        else:
            self.log(
                f"teacher cache {where}: holds {total - total_missing} of the {total} batch {kind} the rest of this "
                f"run needs; the live teacher computes the other {total_missing} and they are recorded"
            )
            if missing:
                self.live = self._load()
        self._planned = True

    def __call__(self, images: torch.Tensor, epoch: int, step: int) -> TeacherOutput:
        if self.cache is None:
            with torch.no_grad():
                return TeacherOutput(logits=self.live(images))
        if not self._planned:
            self._plan(epoch, step)
        out = self.cache.lookup(epoch, step)
        if out is not None:
            if out.labels.shape[0] != images.shape[0]:
                raise ValueError(
                    f"teacher cache labels for {out.labels.shape[0]} images, batch of {images.shape[0]} at epoch "
                    f"{epoch + 1} batch {step + 1}"
                )
            return out
        if self.live is None:
            raise ConfigError(
                f"teacher_cache: epoch {epoch + 1} batch {step + 1} is not in {str(self.cache.directory)!r} and there "
                "is no teacher to compute it"
            )
        with torch.no_grad():
            logits = self.live(images)
        return self.cache.record(epoch, step, logits, getattr(self.live, "description", type(self.live).__name__))

    def flush(self) -> None:
        """Write what was recorded since the last flush (train.py calls it with every checkpoint)."""
        if self.cache is not None:
            self.cache.flush()
