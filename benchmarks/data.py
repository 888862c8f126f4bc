"""Input pipeline throughput (images/s) per decoder: what `backend="auto"` rests on (`fastdeit bench --data`).

Providers, each the whole pipeline from files to normalized (B, 3, S, S) float32 batches:
    dali-gpu  fastdeit's DALI loader on the GPU (nvJPEG decoding, augmentations on the GPU); only where CUDA is.
    dali-cpu  fastdeit's DALI loader with CPU pipelines.
    pil       fastdeit's PIL loader (Pillow in a thread pool).
    timm      timm's transform (`timm.data.create_transform`, as DeiT builds it) on PIL images, through a torch
              DataLoader with one worker process per thread; only where timm imports.
All of them get the same folder, image size, batch, thread count and transform: the train pipeline is DeiT's
(random-resized-crop, flip, RandAugment; RandomErasing left out, as fastdeit applies it on the device), the eval
pipeline resize + center crop.

Method: `startup` is the seconds from nothing (the decoder library not yet imported) to the first batch: import,
pipeline build, worker start, first decode. Then `warmup` epochs are read untimed, then `repeats` epochs each give
one rate: the images of the batches after the epoch's first, over the time from its first batch to its last (the
epoch-start fill, which a long ImageNet epoch amortizes, is left out). The providers take turns, one epoch each per
round, so that other jobs on the machine slow them alike. The median rate is reported, with the slowest and
fastest. The default folder is 512 photos written by `fastdeit.data.photos` (ImageNet-like: ~500 px on
the longer side, JPEG quality 95, ~75 KB a file); `--data-dir` reads another.
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import ModuleType

import torch

from fastdeit.data import LoaderConfig, scan_image_folder
from fastdeit.data.augment import DEIT_RAND_AUGMENT
from fastdeit.data.photos import write_photo_folder

from .common import Row, append_rows, device_name, format_columns, git_sha

PROVIDERS = ("dali-gpu", "dali-cpu", "pil", "timm")
MODES = ("train", "eval")
DEFAULT_IMAGES = (4, 128)  # classes, images per class of the generated folder


@dataclass(frozen=True)
class DataBenchConfig:
    """One run of the suite: every provider and mode on `folder` with the same settings."""

    folder: Path
    source: str
    providers: tuple[str, ...]
    modes: tuple[str, ...]
    loader: LoaderConfig
    warmup: int = 1
    repeats: int = 5
    csv: Path | None = None


@dataclass(frozen=True)
class PipelineResult:
    """The measurements of one provider and mode."""

    provider: str
    mode: str
    startup_s: float
    img_per_s: float
    img_per_s_min: float
    img_per_s_max: float

    def rows(self, config: DataBenchConfig) -> list[Row]:
        cfg = config.loader
        ra = cfg.rand_augment_spec if self.mode == "train" else "-"
        what = f"data_pipeline({config.source}; {cfg.num_threads} threads; RandAugment {ra})"
        shape = f"3x{cfg.img_size}x{cfg.img_size}"
        base = dict(model_or_op=what, provider=self.provider, mode=self.mode, dtype="fp32", batch=cfg.batch_size)
        return [
            Row(**base, shape=shape, metric="pipeline_throughput", value=self.img_per_s, unit="img/s"),
            Row(**base, shape=shape, metric="pipeline_throughput_min", value=self.img_per_s_min, unit="img/s"),
            Row(**base, shape=shape, metric="pipeline_throughput_max", value=self.img_per_s_max, unit="img/s"),
            Row(**base, shape=shape, metric="pipeline_startup", value=self.startup_s, unit="s"),
        ]


# The module each provider's decoder lives in: importing it is part of the startup.
_MODULES = {"dali-gpu": "fastdeit.data.dali", "dali-cpu": "fastdeit.data.dali", "pil": "fastdeit.data.pil"}
_import_seconds: dict[str, float] = {}


def timed_import(name: str) -> tuple[ModuleType, float]:
    """Module `name` and the seconds its first import in this process took (0 if it was imported before)."""
    if name not in _import_seconds:
        start = time.perf_counter()
        already = name in sys.modules
        importlib.import_module(name)
        _import_seconds[name] = 0.0 if already else time.perf_counter() - start
    return sys.modules[name], _import_seconds[name]


def _fastdeit_epochs(
    provider: str, files: list[str], labels: list[int], mode: str, cfg: LoaderConfig
) -> Callable[[int], Iterable]:
    """(epoch -> batches) of fastdeit's loader of `provider`."""
    module, _ = timed_import(_MODULES[provider])
    cls = module.PilLoader if provider == "pil" else module.DaliLoader
    loader = cls(files, labels, cfg, mode=mode, device="cuda" if provider == "dali-gpu" else "cpu")

    def epoch(e: int) -> Iterable:
        loader.set_epoch(e)
        return loader

    return epoch


class _TimmFolder(torch.utils.data.Dataset):
    """The files through timm's transform, read as timm's ImageFolder reader does (PIL, convert("RGB"))."""

    def __init__(self, files: list[str], labels: list[int], transform: Callable) -> None:
        self.files, self.labels, self.transform = files, labels, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        with Image.open(self.files[i]) as img:
            return self.transform(img.convert("RGB")), self.labels[i]


def _timm_epochs(files: list[str], labels: list[int], mode: str, cfg: LoaderConfig) -> Callable[[int], Iterable]:
    """(epoch -> batches) through timm's transform and a torch DataLoader with `num_threads` worker processes."""
    create_transform = timed_import("timm.data")[0].create_transform
    train = mode == "train"
    if train:
        transform = create_transform(
            cfg.img_size,
            is_training=True,
            scale=cfg.crop_scale,
            hflip=cfg.hflip,
            color_jitter=None,  # timm turns it off under RandAugment; off without it too, as fastdeit has none
            auto_augment=cfg.rand_augment_spec if cfg.rand_augment else None,
            interpolation="bicubic",
            re_prob=0.0,
        )
    else:
        transform = create_transform(cfg.img_size, is_training=False, interpolation="bicubic", crop_pct=cfg.crop_pct)
    loader = torch.utils.data.DataLoader(
        _TimmFolder(files, labels, transform),
        batch_size=cfg.batch_size,
        shuffle=train,
        drop_last=train,
        num_workers=cfg.num_threads,
        persistent_workers=True,
        prefetch_factor=cfg.prefetch,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    return lambda e: loader


class _Pipeline:
    """One provider's pipeline in one mode, built (and its startup timed) once, then read epoch after epoch."""

    def __init__(self, provider: str, files: list[str], labels: list[int], mode: str, cfg: LoaderConfig) -> None:
        """Build it and read its first batch: `startup` seconds, with the first import of its library.

        Raises ImportError (or OSError) where the provider's library cannot be imported.
        """
        self.provider = provider
        library = "timm.data" if provider == "timm" else _MODULES[provider]
        imported_before = library in _import_seconds  # by an earlier pipeline: add its import time
        start = time.perf_counter()
        build = _timm_epochs if provider == "timm" else partial(_fastdeit_epochs, provider)
        self._epochs = build(files, labels, mode, cfg)
        batches = iter(self._epochs(0))
        next(batches)
        self._sync()
        self.startup = time.perf_counter() - start + (_import_seconds[library] if imported_before else 0.0)
        for _ in batches:  # the rest of the first epoch
            pass
        self._epoch = 1

    def _sync(self) -> None:
        if self.provider == "dali-gpu":
            torch.cuda.synchronize()

    def read_epoch(self) -> float:
        """Read the next epoch; its img/s over the batches after the first (from the first batch to the last)."""
        it = iter(self._epochs(self._epoch))
        self._epoch += 1
        next(it)
        self._sync()
        start = time.perf_counter()
        count = sum(images.shape[0] for images, _ in it)
        self._sync()
        return count / (time.perf_counter() - start)


def run_data_bench(config: DataBenchConfig) -> tuple[list[PipelineResult], list[str]]:
    """Measure every available provider in every mode; returns the results and one line per skipped provider.

    Per mode, every pipeline is built, then warmed up, then timed: one epoch of each in turn, `repeats` rounds,
    so a machine whose speed drifts (other jobs) slows them alike. Each mode's results are appended to
    `config.csv` as soon as they are measured.
    """
    index = scan_image_folder(config.folder)
    files, labels = list(index.files), list(index.labels)
    cfg = config.loader
    if len(files) < 2 * cfg.batch_size:
        raise ValueError(
            f"{len(files)} images at batch {cfg.batch_size}: an epoch needs two batches or more to time anything "
            "between them; use a smaller --batch-size or a larger folder"
        )
    results, skipped = [], {}
    for mode in config.modes:
        pipelines = []
        for provider in config.providers:
            if provider in skipped:
                continue
            if provider == "dali-gpu" and not torch.cuda.is_available():
                skipped[provider] = "needs a CUDA GPU"
                continue
            try:
                pipelines.append(_Pipeline(provider, files, labels, mode, cfg))
            except (ImportError, OSError) as err:  # OSError: a library whose shared objects fail to load
                skipped[provider] = f"cannot import its library ({type(err).__name__}: {err})"
        for _ in range(config.warmup):
            for pipe in pipelines:
                pipe.read_epoch()
        rates: dict[str, list[float]] = {pipe.provider: [] for pipe in pipelines}
        for _ in range(config.repeats):
            for pipe in pipelines:
                rates[pipe.provider].append(pipe.read_epoch())
        for pipe in pipelines:
            mine = rates[pipe.provider]
            result = PipelineResult(pipe.provider, mode, pipe.startup, statistics.median(mine), min(mine), max(mine))
            results.append(result)
            if config.csv is not None:
                append_rows(config.csv, result.rows(config), "cuda" if pipe.provider == "dali-gpu" else "cpu")
        del pipelines  # free the loaders (DALI pipelines, worker processes) before the next mode
    return results, [f"skipped {provider}: {why}" for provider, why in skipped.items()]


def format_data_table(results: list[PipelineResult]) -> str:
    """One line per mode and provider, fastest first; 'vs best peer' divides by the fastest other provider."""
    header = ("mode", "provider", "img/s", "min-max", "vs best peer", "startup s")
    lines = []
    for mode in MODES:
        mine = sorted((r for r in results if r.mode == mode), key=lambda r: -r.img_per_s)
        for r in mine:
            peers = [p.img_per_s for p in mine if p is not r]
            ratio = f"{r.img_per_s / max(peers):.2f}x" if peers else "-"
            spread = f"{r.img_per_s_min:.0f}-{r.img_per_s_max:.0f}"
            lines.append((mode, r.provider, f"{r.img_per_s:.0f}", spread, ratio, f"{r.startup_s:.2f}"))
    if not lines:
        return "no pipeline measured"
    return "\n".join(format_columns(header, lines, left=2))


def check_data_providers(names: Sequence[str] | None) -> tuple[str, ...]:
    """The data pipeline providers `names` (all when None or empty); a ValueError names unknown ones."""
    providers = tuple(names or PROVIDERS)
    unknown = sorted(set(providers) - set(PROVIDERS))
    if unknown:
        raise ValueError(f"unknown data pipeline provider(s) {unknown}; known: {', '.join(PROVIDERS)}")
    return providers


def run_from_args(args: argparse.Namespace) -> int:
    """`fastdeit bench --data`: the options of fastdeit.commands.bench, where unset ones are None."""
    providers = check_data_providers(args.providers)
    modes = tuple(m for m, name in (("train", "training"), ("eval", "inference")) if name in args.mode)
    loader = LoaderConfig(
        img_size=args.img_size or 224,
        batch_size=args.batch_size or 32,
        rand_augment=args.rand_augment if args.rand_augment is not None else DEIT_RAND_AUGMENT,
        num_threads=args.data_threads,
        backend="auto",
    )
    with tempfile.TemporaryDirectory(prefix="fastdeit-photos-") as tmp:
        if args.data_dir is not None:
            folder, source = Path(args.data_dir), os.path.basename(os.path.normpath(args.data_dir))
        else:
            classes, per_class = DEFAULT_IMAGES
            folder, source = write_photo_folder(tmp, num_classes=classes, per_class=per_class), "photos"
        config = DataBenchConfig(
            folder=folder,
            source=source,
            providers=providers,
            modes=modes,
            loader=loader,
            warmup=args.warmup if args.warmup is not None else 1,
            repeats=args.repeats if args.repeats is not None else 5,
            csv=None if args.no_csv else args.csv,
        )
        machine = " | ".join([device_name("cpu")] + ([device_name("cuda")] if torch.cuda.is_available() else []))
        print(
            f"{machine} | git {git_sha()}\ninput pipelines on {folder} ({source}): {loader.img_size} px, batch "
            f"{loader.batch_size}, {loader.num_threads} decoding threads, train RandAugment {loader.rand_augment_spec}"
        )
        results, skipped = run_data_bench(config)
    print("\n".join([*skipped, "", format_data_table(results)]))
    if config.csv is not None and results:
        print(f"appended {sum(len(r.rows(config)) for r in results)} rows to {config.csv}")
    return 0
