"""`check_bench_args`: the dry-run check of a `fastdeit bench` command line (benchmarks/run_gpu.sh calls it).

A module of its own: it reaches every suite (kernels, models, providers), which all import `common`.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastdeit.cli import build_parser

from .data import check_data_providers
from .kernels import OPS
from .kernels import PROVIDERS as KERNEL_PROVIDERS
from .models import TEACHER_GFLOP_224, check_teacher, resolve_models
from .providers import check_providers


def check_bench_args(argv: Sequence[str]) -> None:
    """Parse `fastdeit bench ARGV` exactly as the command line would and check its model, provider and op names,
    running nothing: scripts (benchmarks/run_gpu.sh's dry run) call this to catch a broken command on the CPU, before
    it costs GPU time. A bad option exits with argparse's status 2 and message; a bad name raises ValueError."""
    args = build_parser("bench").parse_args(["bench", *argv])
    if args.models:
        resolve_models(args.models)
    if getattr(args, "teacher", None) and args.teacher not in TEACHER_GFLOP_224:  # those are timm's, built on a GPU
        check_teacher(args.teacher)
    if args.kernels:
        for kind, given, known in (("provider", args.providers, KERNEL_PROVIDERS), ("op", args.ops, OPS)):
            unknown = [n for n in given or () if n not in known]
            if unknown:
                raise ValueError(f"unknown kernel {kind}(s) {', '.join(unknown)}; expected some of {', '.join(known)}")
    elif args.data:
        check_data_providers(args.providers)
    elif args.providers:
        check_providers(args.providers)
