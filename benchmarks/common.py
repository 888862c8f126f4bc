"""What every fastdeit benchmark shares: the results CSV, the environment stamp on each row, dtypes and timing.

Every suite (model throughput, kernel microbenchmarks) appends rows with the same columns to one CSV, and the plots
read only that CSV. A row carries the GPU (or CPU) name, the torch and triton versions and the git sha, so a number
is never separated from the machine and code that produced it.
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import importlib.metadata
import math
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

CSV_COLUMNS = (
    "model_or_op", "provider", "mode", "dtype", "batch", "shape", "metric", "value", "unit",
    "gpu_name", "torch_version", "triton_version", "git_sha", "date",
)  # fmt: skip
RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_CSV = RESULTS_DIR / "results.csv"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
REPO_ROOT = Path(__file__).resolve().parent.parent


def parse_dtype(name: str) -> torch.dtype:
    """'fp32' | 'fp16' | 'bf16' -> the torch dtype."""
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[name]


def resolve_device(name: str) -> torch.device:
    """'auto' (CUDA when present, else CPU), 'cuda' or 'cpu' -> a torch device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cuda", "cpu"):
        raise ValueError(f"device must be one of auto, cuda, cpu, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no CUDA GPU; use --device cpu or auto")
    return torch.device(name)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


@functools.cache
def device_name(device_type: str) -> str:
    """The GPU's name for 'cuda', the CPU model name for 'cpu' (the `gpu_name` CSV column)."""
    if device_type == "cuda":
        return torch.cuda.get_device_name()
    return f"CPU: {_cpu_name()} ({os.cpu_count()} cores)"


@functools.cache
def git_sha() -> str:
    """The code version: $FASTDEIT_GIT_SHA if set (a copied working tree has no .git), else `git rev-parse HEAD`.

    A tree with uncommitted changes to tracked files gets a '+dirty' suffix: such numbers belong to no commit.
    """
    if os.environ.get("FASTDEIT_GIT_SHA"):
        return os.environ["FASTDEIT_GIT_SHA"]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}+dirty" if dirty else sha


def package_version(name: str) -> str:
    """Installed version of a distribution, without importing it ('-' when absent)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "-"


@dataclass(frozen=True)
class Row:
    """One measured number; the environment columns are added when it is written."""

    model_or_op: str
    provider: str
    mode: str
    dtype: str
    batch: int
    shape: str
    metric: str
    value: float
    unit: str


def append_rows(path: str | os.PathLike, rows: Iterable[Row], device_type: str) -> None:
    """Append rows to the CSV at `path` (created with a header if missing). Called once per measurement, so a
    benchmark cut short by a time limit keeps everything it measured before."""
    rows = list(rows)
    if not rows:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stamp = {
        "gpu_name": device_name(device_type),
        "torch_version": torch.__version__,
        "triton_version": package_version("triton"),
        "git_sha": git_sha(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        if new:
            writer.writeheader()
        for row in rows:
            value = f"{row.value:.6g}"
            writer.writerow({**row.__dict__, "value": value, **stamp})


def environment_header(device: torch.device) -> str:
    """One line naming the machine and code: device, versions, git sha (and the CPU threads torch uses)."""
    threads = f" | {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    return (
        f"{device_name(device.type)}{threads} | torch {torch.__version__} | triton {package_version('triton')} | "
        f"git {git_sha()}"
    )


def read_rows(path: str | os.PathLike) -> list[dict[str, str]]:
    """All rows of a results CSV, as dicts keyed by CSV_COLUMNS."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"results CSV not found: {path} (run `fastdeit bench` first, or pass --csv)")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = set(CSV_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path} is not a fastdeit results CSV: columns {sorted(missing)} are missing")
        return list(reader)


def latest_rows(rows: Iterable[dict[str, str]]) -> list[dict[str, str]]:
    """The newest row per (machine, what, provider, mode, dtype, shape, metric): reruns replace older numbers."""
    key_cols = ("gpu_name", "model_or_op", "provider", "mode", "dtype", "shape", "metric")
    newest: dict[tuple[str, ...], dict[str, str]] = {}
    for row in rows:  # ISO dates sort as strings; on a tie the later line in the file wins
        key = tuple(row[c] for c in key_cols)
        if key not in newest or row["date"] >= newest[key]["date"]:
            newest[key] = row
    return list(newest.values())


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_iterations(fn: Callable[[], object], iters: int, device: torch.device) -> float:
    """Seconds for `iters` back-to-back calls of fn. CUDA events on the GPU (launches stay asynchronous, so an
    idle GPU waiting on the host counts, as it should for throughput); perf_counter on the CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return time.perf_counter() - t0


def repeat_timings(
    fn: Callable[[], object], *, device: torch.device, warmup: int, repeats: int, min_time: float, max_iters: int = 100
) -> tuple[int, list[float]]:
    """Warm up, then time `repeats` runs of fn; returns (iterations per run, seconds per iteration of each run).

    The iterations per run are calibrated from one timed call so that each run lasts about `min_time` seconds
    (at least one iteration): short kernels are not measured on a single launch.
    """
    for _ in range(warmup):
        fn()
    synchronize(device)
    once = time_iterations(fn, 1, device)
    iters = max(1, min(max_iters, math.ceil(min_time / max(once, 1e-9))))
    return iters, [time_iterations(fn, iters, device) / iters for _ in range(repeats)]


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def format_columns(header: Sequence[str], lines: Sequence[Sequence[str]], left: int) -> list[str]:
    """Aligned text columns: the first `left` columns left-aligned (names), the rest right-aligned (numbers)."""
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]

    def fmt(line: Sequence[str]) -> str:
        cells = (v.ljust(w) if i < left else v.rjust(w) for i, (v, w) in enumerate(zip(line, widths, strict=True)))
        return "  ".join(cells).rstrip()

    return [fmt(header), *map(fmt, lines)]
