"""`fastdeit bench`: DeiT throughput (img/s) per implementation, kernel microbenchmarks, charts.

    fastdeit bench                                   8 models x every available provider, inference and training
    fastdeit bench --models ti b-dist --mode inference --dtype fp32
    fastdeit bench --models b-dist --mode training --batch-size 256 --teacher regnety_160
    fastdeit bench --models ti-dist --mode training --teacher convnet_tiny --teacher-cache   live teacher vs cache
    fastdeit bench --kernels [--ops attention layer_norm] [--full]
    fastdeit bench --compile-report [--arch sm_90|sm_80] [--quick] [--csv PATH]   kernel configs built for a GPU
    fastdeit bench --data [--data-dir DIR] [--data-threads 2]   input pipeline img/s per decoder (DALI, PIL, timm)
    fastdeit bench --summary                         the tables again, from the results CSV
    fastdeit bench --plot                            PNG charts from the results CSV

The method (batch, precision, timing, MFU) is in the docstring of `fastdeit.benchmarks.models`; how to run each
suite in benchmarks/README.md, the GPU script and the measurement log in benchmarks/NOTES.md. Every measurement is
appended to the results CSV (--csv) as soon as it is taken.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fastdeit.benchmarks.common import DEFAULT_CSV, DTYPES, RESULTS_DIR, latest_rows, read_rows, resolve_device
from fastdeit.benchmarks.kernels import PROVIDERS as KERNEL_PROVIDERS
from fastdeit.benchmarks.providers import MODES, PROVIDERS
from fastdeit.commands import add_command


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(subparsers, "bench", __doc__)
    models = p.add_argument_group("model throughput")
    models.add_argument(
        "--models", nargs="+", metavar="M", help="model names or aliases (ti s b b384 ti-dist s-dist b-dist b384-dist)"
    )
    models.add_argument(
        "--providers",
        nargs="+",
        metavar="P",
        help="default all available: "
        + "; ".join(f"{prov.name} ({prov.description})" for prov in PROVIDERS.values())
        + f". With --kernels: {' '.join(KERNEL_PROVIDERS)}",
    )
    models.add_argument("--mode", nargs="+", choices=MODES, default=list(MODES), help="default: both")
    models.add_argument("--dtype", choices=tuple(DTYPES), help="default bf16 on a GPU (model.to(bf16)), fp32 on CPU")
    models.add_argument("--device", default="auto", help="auto (CUDA when present), cuda or cpu")
    models.add_argument(
        "--batch-size", type=int, help="fixed batch (default: the largest that fits on a GPU, 8 on CPU)"
    )
    models.add_argument("--max-batch", type=int, default=1024, help="cap of the largest-batch search (default 1024)")
    models.add_argument("--img-size", type=int, help="input size (default the model's; the paper column needs it)")
    models.add_argument(
        "--teacher", help="training: add this teacher's forward (fastdeit DeiT or convnet, or timm's regnety_160)"
    )
    models.add_argument(
        "--teacher-cache",
        action="store_true",
        help="with --teacher: measure each distilled step twice, with the live teacher and with its labels replayed "
        "from a cache (train.py --teacher-cache), at the same batch; prints the ratio",
    )
    models.add_argument("--drop-path", type=float, default=0.0, help="training: stochastic depth rate (default 0)")
    models.add_argument("--warmup", type=int, help="untimed steps first (default 5 on a GPU, 1 on CPU)")
    models.add_argument("--repeats", type=int, help="timed runs; the median is reported (default 10 GPU, 3 CPU)")
    models.add_argument("--min-time", type=float, help="seconds per timed run (default 0.1 on a GPU, 0 on CPU)")
    models.add_argument("--batch-cache", type=Path, help="JSON cache of batch sizes (default ~/.cache/fastdeit/...)")
    kernels = p.add_argument_group("kernel microbenchmarks")
    kernels.add_argument("--kernels", action="store_true", help="run the kernel suite instead of the models")
    kernels.add_argument("--ops", nargs="+", metavar="OP", help="ops (default all)")
    kernels.add_argument("--directions", nargs="+", metavar="DIR", help="fwd bwd fwd+bwd (default all)")
    kernels.add_argument("--full", action="store_true", help="the whole DeiT shape grid, not the quick set")
    roofline = p.add_argument_group("roofline (floors counted from the architecture; no model is run)")
    roofline.add_argument(
        "--roofline",
        action="store_true",
        help="per op and model: FLOPs, fewest bytes, floor time and img/s of fastdeit's fused schedule and timm's "
        "unfused one (uses --models --mode --batch-size (default 256) --dtype --img-size --teacher; with --csv "
        "rows measured on an H100/H200/A100, the achieved share of the floor)",
    )
    roofline.add_argument(
        "--gpu", choices=("h100", "h200", "a100"), default="h100", help="--roofline: the GPU's ceilings (default h100)"
    )
    report = p.add_argument_group("compile report (no GPU needed; `python -m fastdeit.benchmarks.compile_report -h`)")
    report.add_argument(
        "--compile-report",
        action="store_true",
        help="build every Triton kernel at every shipped config for a GPU target and report registers, spills, "
        "shared memory, occupancy, matrix instructions and ptxas warnings; exit 1 when one spills or fails. "
        "Writes its table to --csv only when --csv is given",
    )
    report.add_argument("--arch", choices=("sm_90", "sm_80"), default="sm_90", help="its GPU target (default sm_90)")
    report.add_argument("--quick", action="store_true", help="DeiT-B at 197 tokens only (what CI runs)")
    data = p.add_argument_group("input pipeline throughput (fastdeit.benchmarks.data)")
    data.add_argument("--data", action="store_true", help="measure the data loaders (img/s per decoder) instead")
    data.add_argument("--data-dir", type=Path, help="ImageFolder to read (default: 512 generated ImageNet-like photos)")
    data.add_argument("--data-threads", type=int, help="decoding threads (default: the CPU count, at most 8)")
    data.add_argument("--rand-augment", help="train RandAugment, timm syntax, or none (default DeiT's)")
    out = p.add_argument_group("results")
    out.add_argument("--csv", type=Path, default=DEFAULT_CSV, help=f"results CSV (default {DEFAULT_CSV})")
    out.add_argument("--no-csv", action="store_true", help="print only, append no rows")
    out.add_argument(
        "--summary",
        nargs="?",
        const="all",
        choices=("all", "models", "kernels"),
        help="print the tables from the CSV (newest rows; all, models or kernels), run nothing",
    )
    out.add_argument("--plot", action="store_true", help="draw PNG charts from the CSV, run nothing")
    out.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        help="a progress bar on stderr (default: only when stderr is a terminal)",
    )
    out.add_argument("--plot-dir", type=Path, default=RESULTS_DIR, help=f"where --plot writes (default {RESULTS_DIR})")
    p.set_defaults(func=run)


def _summary(csv: Path, which: str) -> str:
    from fastdeit.benchmarks.kernels import format_kernel_table, kernel_results_from_rows
    from fastdeit.benchmarks.models import format_table, measurements_from_rows

    rows = latest_rows(read_rows(csv))
    parts = []
    if which in ("all", "models"):
        parts.append(format_table(measurements_from_rows(rows)))
    if which in ("all", "kernels"):
        parts.append(format_kernel_table(kernel_results_from_rows(rows)))
    return "\n\n".join(parts)


def _run_models(args: argparse.Namespace) -> int:
    from fastdeit.batch_size import BatchSizeCache
    from fastdeit.benchmarks.common import environment_header, parse_dtype
    from fastdeit.benchmarks.models import BenchConfig, ModelBenchmark, format_table, resolve_models
    from fastdeit.benchmarks.providers import check_providers
    from fastdeit.models import model_config

    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    dtype_name = args.dtype or ("bf16" if gpu else "fp32")
    models = resolve_models(args.models)
    if args.teacher and not args.models:
        models = [m for m in models if model_config(m)["distilled"]]  # a teacher needs a distillation token
    cfg = BenchConfig(
        models=models,
        providers=check_providers(args.providers or list(PROVIDERS)),
        modes=args.mode,
        dtype=parse_dtype(dtype_name),
        device=device,
        batch_size=args.batch_size,
        max_batch=args.max_batch,
        img_size=args.img_size,
        teacher=args.teacher,
        teacher_cache=args.teacher_cache,
        drop_path_rate=args.drop_path,
        warmup=args.warmup if args.warmup is not None else (5 if gpu else 1),
        repeats=args.repeats if args.repeats is not None else (10 if gpu else 3),
        min_time=args.min_time if args.min_time is not None else (0.1 if gpu else 0.0),
        csv=None if args.no_csv else args.csv,
        batch_cache=BatchSizeCache(args.batch_cache),
        progress=args.progress,
    )
    header = environment_header(device)
    print(f"{header}\n{dtype_name} weights and activations (model.to({dtype_name})), every provider alike")
    outcome = ModelBenchmark(cfg).run()
    print()
    print(format_table(outcome.measurements))
    for line in outcome.failed:
        print(line)
    if cfg.csv is not None and outcome.measurements:
        print(f"appended {sum(len(m.rows()) for m in outcome.measurements)} rows to {cfg.csv}")
    return 1 if outcome.failed else 0


def run(args: argparse.Namespace) -> int:
    if args.roofline:
        from fastdeit.benchmarks.roofline import run_from_args as run_roofline

        return run_roofline(args)
    if args.summary or args.plot:
        if args.summary:
            print(_summary(args.csv, args.summary))
        if args.plot:
            from fastdeit.benchmarks.plot import plot_results

            for path in plot_results(args.csv, args.plot_dir):
                print(f"wrote {path}")
        return 0
    if args.compile_report:
        from fastdeit.benchmarks import compile_report

        report_args = compile_report.parse_args(["--arch", args.arch] + ["--quick"] * args.quick)
        report_args.csv = None if args.csv is DEFAULT_CSV else args.csv  # the results CSV has other columns
        report_args.batch_size = args.batch_size or report_args.batch_size
        return compile_report.run_from_args(report_args)
    if args.kernels:
        from fastdeit.benchmarks.kernels import run_from_args

        return run_from_args(args)
    if args.data:
        from fastdeit.benchmarks.data import run_from_args

        return run_from_args(args)
    return _run_models(args)
