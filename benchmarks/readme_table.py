"""The README's model table, made from the results CSV, so that no number in it is copied by hand.

    python -m fastdeit.benchmarks.readme_table            # rewrite the table in README.md from results.csv
    python -m fastdeit.benchmarks.readme_table --check    # exit 1 if README.md is not what the CSV gives

The table sits between two markers in README.md (MARKER_BEGIN, MARKER_END). Its fixed columns are the DeiT
paper's (Touvron et al. 2020, arXiv 2012.12877: top-1 and V100 fp32 throughput) and the parameter
count of fastdeit's model (the same as timm's). Its measured columns come from the newest CSV rows (`latest_rows`)
of bf16 runs on one GPU. They are fastdeit's best provider (eager, CUDA graph or torch.compile, named in the cell)
and its ratio to timm eager and to timm + torch.compile, measured in the same run. The GPU is the H100/H200 with the
most measured models. A ratio is only given between rows of the same batch size. Below the inference table, a
training-step table has the same ratios wherever training rows exist.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

import fastdeit
from fastdeit.io import atomic_write
from fastdeit.models import model_config

from .common import DEFAULT_CSV, REPO_ROOT, latest_rows, read_rows
from .models import MFU_GPUS, PAPER_V100_FP32, measurements_from_rows
from .providers import PROVIDERS

MARKER_BEGIN = "<!-- model-table: made by `python -m fastdeit.benchmarks.readme_table` from the results CSV -->"
MARKER_END = "<!-- /model-table -->"
README = REPO_ROOT / "README.md"
DTYPE = "bf16"
# ImageNet-1k top-1 (%), DeiT paper (arXiv 2012.12877), 300-epoch models: Table 1 for the plain ones, the distillation
# results for the ⚗ ones (distillation token, RegNetY-16GF teacher); 384 px models fine-tuned from 224.
PAPER_TOP1 = {
    "deit_tiny_patch16_224": 72.2,
    "deit_small_patch16_224": 79.8,
    "deit_base_patch16_224": 81.8,
    "deit_base_patch16_384": 83.1,
    "deit_tiny_distilled_patch16_224": 74.5,
    "deit_small_distilled_patch16_224": 81.2,
    "deit_base_distilled_patch16_224": 83.4,
    "deit_base_distilled_patch16_384": 84.5,
}
PEERS = (("timm", "vs timm eager"), ("timm-compile", "vs timm + compile"))
_TRAINING_PEER_NAMES = {"timm": "vs timm AMP", "timm-compile": "vs timm + compile"}


def _params_m(name: str) -> float:
    """Millions of parameters of fastdeit's `name` (built on the meta device: no memory, no time)."""
    with torch.device("meta"):
        model = fastdeit.create_model(name, backend="torch")
    return sum(p.numel() for p in model.parameters()) / 1e6


def _rate(v: float) -> str:
    return f"{v:,.0f}"


def _pick_gpu(measurements: list) -> str | None:
    """The H100/H200 with the most models measured in bf16 inference (None when there is none)."""
    counts: dict[str, set[str]] = {}
    for m in measurements:
        if m.dtype == DTYPE and m.mode == "inference" and any(g in m.gpu_name for g in MFU_GPUS):
            counts.setdefault(m.gpu_name, set()).add(m.model)
    return max(counts, key=lambda g: (len(counts[g]), g)) if counts else None


def _cells(group: list, peers: Sequence[str]) -> tuple[str, list[str]]:
    """fastdeit's best cell ('12,345 (cudagraph, batch 1024)') and one ratio cell per peer, for one model's rows."""
    ours = [m for m in group if m.provider in PROVIDERS and not PROVIDERS[m.provider].peer]
    if not ours:
        return "-", ["-" for _ in peers]
    best = max(ours, key=lambda m: m.img_per_s)
    how = best.provider.removeprefix("fastdeit").removeprefix("-") or "eager"
    ratios = []
    for peer in peers:
        theirs = [m for m in group if m.provider == peer]
        same_batch = [m for m in theirs if m.batch == best.batch]
        if same_batch:
            ratios.append(f"{best.img_per_s / same_batch[0].img_per_s:.2f}x")
        else:
            ratios.append(f"- (batch {theirs[0].batch})" if theirs else "-")
    return f"{_rate(best.img_per_s)} ({how}, batch {best.batch})", ratios


def make_table(rows: list[dict[str, str]]) -> str:
    """The block between the markers (markers excluded), from results-CSV rows."""
    measurements = [m for m in measurements_from_rows(latest_rows(rows)) if m.dtype == DTYPE]
    gpu = _pick_gpu(measurements)
    on_gpu = [m for m in measurements if m.gpu_name == gpu] if gpu else []
    inference = [m for m in on_gpu if m.mode == "inference"]
    label = f"{gpu}, {DTYPE}" if gpu else f"H100/H200, {DTYPE}"
    header = ["model", "params", "img size", "top-1 (paper)", "V100 img/s (paper, fp32)", f"fastdeit img/s ({label})"]
    header += [name for _, name in PEERS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, paper_rate in PAPER_V100_FP32.items():
        size = model_config(name)["img_size"]
        group = [m for m in inference if m.model == name and m.img_size == size]
        ours, ratios = _cells(group, [p for p, _ in PEERS])
        fixed = [name, f"{_params_m(name):.1f}M", str(size), f"{PAPER_TOP1[name]:.1f}", f"{paper_rate:.1f}"]
        lines.append("| " + " | ".join(fixed + [ours, *ratios]) + " |")
    if gpu is None:
        lines += [
            "",
            f"No {DTYPE} H100/H200 rows in the results CSV yet: the measured columns fill in as GPU runs land.",
        ]
    training = [m for m in on_gpu if m.mode == "training"]
    if training:
        peer_names = [_TRAINING_PEER_NAMES[p] for p, _ in PEERS]
        lines += ["", f"Training step (forward, backward, AdamW; AMP {DTYPE}), {gpu}:", ""]
        lines += ["| model | fastdeit img/s | " + " | ".join(peer_names) + " |", "|---|---|" + "---|" * len(PEERS)]
        for name in PAPER_V100_FP32:
            group = [m for m in training if m.model == name]
            if group:
                ours, ratios = _cells(group, [p for p, _ in PEERS])
                lines.append("| " + " | ".join([name, ours, *ratios]) + " |")
    return "\n".join(lines)


def replace_block(text: str, block: str, where: str = "README.md") -> str:
    """`text` with what lies between the markers replaced by `block`; ValueError when the markers are not there
    once each, in order."""
    begin, end = text.find(MARKER_BEGIN), text.find(MARKER_END)
    if text.count(MARKER_BEGIN) != 1 or text.count(MARKER_END) != 1 or end < begin:
        raise ValueError(f"{where}: expected the markers {MARKER_BEGIN!r} and {MARKER_END!r} once each, in order")
    return text[: begin + len(MARKER_BEGIN)] + "\n" + block + "\n" + text[end:]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastdeit.benchmarks.readme_table", description=__doc__.split("\n")[0])
    p.add_argument("--csv", type=Path, default=DEFAULT_CSV, help=f"results CSV (default {DEFAULT_CSV}; may be absent)")
    p.add_argument("--readme", type=Path, default=README, help=f"the README to update (default {README})")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if the README's table is stale")
    args = p.parse_args(argv)
    rows = read_rows(args.csv) if args.csv.exists() else []
    old = args.readme.read_text(encoding="utf-8")
    new = replace_block(old, make_table(rows), where=str(args.readme))
    if args.check:
        if new != old:
            print(f"{args.readme}: the model table is not what {args.csv} gives; run python -m fastdeit.benchmarks."
                  "readme_table", file=sys.stderr)  # fmt: skip
            return 1
        return 0
    if new != old:
        atomic_write(args.readme, lambda tmp: tmp.write_text(new, encoding="utf-8"))
    print(f"{args.readme}: model table {'updated' if new != old else 'unchanged'} from {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
