"""Charts drawn from the results CSV only (never from a live run), so every picture can be redrawn from the file.

One PNG per (machine, mode, dtype) for model throughput (img/s per model, one bar per provider, log scale: DeiT-Ti
and DeiT-B differ by 10x), and one per (machine, op, dtype, direction) for the kernels (TFLOP/s or GB/s per shape).
The newest row of each measurement is drawn.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from pathlib import Path

from fastdeit.models import MODEL_CONFIGS

from .common import RESULTS_DIR, latest_rows, read_rows

KERNEL_DIRECTIONS = ("fwd", "bwd", "fwd+bwd")


def _slug(*parts: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", "_".join(parts)).strip("_")


def _model_label(model: str, shape: str) -> str:
    """A short model name, with the input shape when it is not the model's own size."""
    known = model in MODEL_CONFIGS
    native = known and shape == f"3x{MODEL_CONFIGS[model]['img_size']}x{MODEL_CONFIGS[model]['img_size']}"
    return model.removeprefix("deit_") + ("" if native else f" {shape}")


def _bars(ax, groups: list[str], series: dict[str, dict[str, float]]) -> None:
    """Grouped bars: one group per x label, one bar per series (provider)."""
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, [values.get(g, 0.0) for g in groups], width, label=name)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=30, ha="right", fontsize=8)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def plot_results(csv_path: str | os.PathLike, out_dir: str | os.PathLike = RESULTS_DIR) -> list[Path]:
    """Draw every chart the CSV has data for into `out_dir`; returns the PNG paths written."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    rows = latest_rows(read_rows(csv_path))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    charts: dict[tuple[str, ...], dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    units: dict[tuple[str, ...], str] = {}
    shas: dict[tuple[str, ...], set[str]] = defaultdict(set)
    for r in rows:
        kernel = r["mode"] in KERNEL_DIRECTIONS
        if kernel and r["metric"] in ("compute", "bandwidth"):
            key = ("kernels", r["gpu_name"], r["model_or_op"], r["dtype"], r["mode"])
            x = r["shape"]
        elif not kernel and r["metric"] == "throughput":
            key = ("models", r["gpu_name"], r["mode"], r["dtype"])
            x = _model_label(r["model_or_op"], r["shape"])
        else:
            continue
        charts[key][r["provider"]][x] = float(r["value"])
        units[key] = r["unit"]
        shas[key].add(r["git_sha"])
    paths = []
    for key, series in sorted(charts.items()):
        kind, gpu, *rest = key
        groups = sorted({x for values in series.values() for x in values})
        fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(groups) + 2), 4.5))
        _bars(ax, groups, dict(sorted(series.items())))
        if kind == "models":
            ax.set_yscale("log")
        ax.set_ylabel(units[key])
        ax.set_title(f"{kind}: {' '.join(rest)}\n{gpu}, git {', '.join(sorted(shas[key]))}", fontsize=9)
        fig.tight_layout()
        path = out_dir / f"{_slug(kind, *rest, gpu)}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
