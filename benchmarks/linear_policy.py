"""Triton vs cuBLAS for the four linear layers of DeiT, timed on a GPU, and the linear policy table that follows.

    python -m fastdeit.benchmarks.linear_policy --csv CSV --out POLICY.json [--batch-size 256] [--widths 768 384 192]

For each op kind (qkv: C -> 3C; proj: C -> C; fc1: C -> 4C + GELU; fc2: 4C -> C + residual), dtype (bf16, fp16) and
shape bucket of `fastdeit.kernels.linear_policy` (large: batch x 197 rows, 50,432 at the default batch 256; small:
8 x 197 rows), the forward of `fastdeit.ops.linear` through each path, forced with `linear_policy.forced_path`:
"triton" (one fused kernel) and "cublas" (torch.addmm with the bias in cuBLASLt's epilogue, then the Triton
elementwise epilogue for fc1/fc2). fc1 is also timed with its pre-activation saved, as in training ("fwd-train").
The backward runs the same cuBLAS matmuls and GELU-backward kernel after either path, so only forwards differ.
Times are `triton.testing.do_bench` medians (L2 flushed before each call) on random inputs, widths default DeiT-B's
768 (`--widths` adds S's 384 and Ti's 192, about 20 s each).

Each measurement is appended to the results CSV (`benchmarks/common.py` format; model_or_op linear_<kind>, provider
fastdeit-triton or fastdeit-cublas, mode fwd or fwd-train, metric time in ms and compute in TFLOP/s) as it is taken.
The policy written to --out keeps, per (kind, dtype, bucket), the path with the smaller inference forward time summed
over the widths measured; fp32 stays on cuBLAS (the policy's rule). Put it in force with
`FASTDEIT_LINEAR_POLICY=POLICY.json` or `fastdeit.kernels.linear_policy.load_policy(path)`.

The Triton matmul's configs are built first in parallel on all CPU cores (`compile_report.warm_triton_cache`), so the
autotuner's first calls load them rather than compile one after another: the whole run fits in about a minute on
an H100. Needs a CUDA GPU; on a CPU it stops with that message.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .common import DEFAULT_CSV, Row, append_rows, device_name, git_sha, package_version

KINDS = ("qkv", "proj", "fc1", "fc2")
BENCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
TOKENS = 197
SMALL_BATCH = 8
DEFAULT_BATCH = 256


@dataclass(frozen=True)
class Case:
    kind: str
    dtype: str
    width: int
    rows: int
    save_pre: bool  # fc1 in training keeps its pre-activation

    @property
    def in_out(self) -> tuple[int, int]:
        """(K, N) of the layer."""
        C = self.width
        return {"qkv": (C, 3 * C), "proj": (C, C), "fc1": (C, 4 * C), "fc2": (4 * C, C)}[self.kind]

    @property
    def mode(self) -> str:
        return "fwd-train" if self.save_pre else "fwd"


def cases(widths: list[int], batch: int) -> list[Case]:
    out = []
    for width in widths:
        for rows in (batch * TOKENS, SMALL_BATCH * TOKENS):
            for dtype in BENCH_DTYPES:
                for kind in KINDS:
                    out.append(Case(kind, dtype, width, rows, False))
                    if kind == "fc1":
                        out.append(Case(kind, dtype, width, rows, True))
    return out


def _call(case: Case, device: torch.device) -> Callable[[], torch.Tensor]:
    """The timed call: `fastdeit.ops.linear` as the layer runs it, on random inputs."""
    from fastdeit.ops import linear

    K, N = case.in_out
    dtype = BENCH_DTYPES[case.dtype]
    x = torch.randn(case.rows, K, device=device, dtype=dtype)
    weight = torch.randn(N, K, device=device, dtype=dtype) / K**0.5
    bias = torch.randn(N, device=device, dtype=dtype)
    residual = torch.randn(case.rows, N, device=device, dtype=dtype) if case.kind == "fc2" else None
    activation = "gelu" if case.kind == "fc1" else None
    if case.save_pre:
        weight.requires_grad_()  # the op saves the pre-activation only when a gradient will be asked for
    return lambda: linear(x, weight, bias, activation, residual, kind=case.kind)


def measure(case: Case, path: str, device: torch.device) -> float:
    """Median milliseconds of one forward through `path`."""
    from fastdeit.kernels.linear_policy import forced_path
    from triton.testing import do_bench

    fn = _call(case, device)
    with forced_path(path):
        fn()  # the autotuner's first call (its configs are already built) happens outside the timing
        return float(do_bench(fn, return_mode="median"))


def choose(times: dict[tuple[Case, str], float]) -> dict:
    """Per (kind, dtype, bucket) the path with the smaller inference time summed over widths: a policy table."""
    from fastdeit.kernels.linear_policy import bucket

    totals: dict[tuple[str, str, str], dict[str, float]] = {}
    for (case, path), ms in times.items():
        if not case.save_pre:
            key = (case.kind, case.dtype, bucket(case.rows))
            totals.setdefault(key, {}).setdefault(path, 0.0)
            totals[key][path] += ms
    table: dict = {}
    for (kind, dtype, shape_bucket), by_path in totals.items():
        table.setdefault(kind, {}).setdefault(dtype, {})[shape_bucket] = min(by_path, key=by_path.get)
    return table


def run(csv_path: Path | None, out: Path, batch: int, widths: list[int], jobs: int) -> dict:
    from fastdeit.benchmarks import compile_report
    from fastdeit.kernels.linear_policy import document, validate

    from fastdeit.io import atomic_write

    device = torch.device("cuda")
    start = time.perf_counter()
    capability = torch.cuda.get_device_capability()
    arch = f"sm_{capability[0]}{capability[1]}"
    if arch in compile_report.ARCHS:
        modes = [m for m in compile_report.MODES if m.name in BENCH_DTYPES]
        shapes = [compile_report.Shape(w, TOKENS, b) for w in widths for b in (batch, SMALL_BATCH)]
        built, errors = compile_report.warm_triton_cache(arch, {"linear": compile_report.WORKLOADS["linear"]}, modes,
                                                         shapes, jobs)  # fmt: skip
        print(f"built {built} Triton kernels in {time.perf_counter() - start:.0f} s", *errors, sep="\n")
    times: dict[tuple[Case, str], float] = {}
    for case in cases(widths, batch):
        K, N = case.in_out
        for path in ("triton", "cublas"):
            ms = times[case, path] = measure(case, path, device)
            tflops = 2 * case.rows * N * K / (ms * 1e-3) / 1e12
            shape = f"M={case.rows} N={N} K={K}"
            print(f"linear_{case.kind:4s} {case.dtype} {case.mode:9s} {shape:24s} {path:6s} {ms:8.4f} ms {tflops:6.1f}")
            if csv_path is not None:
                op, provider, batch_rows = f"linear_{case.kind}", f"fastdeit-{path}", case.rows // TOKENS
                append_rows(
                    csv_path,
                    [
                        Row(op, provider, case.mode, case.dtype, batch_rows, shape, "time", ms, "ms"),
                        Row(op, provider, case.mode, case.dtype, batch_rows, shape, "compute", tflops, "TFLOP/s"),
                    ],
                    "cuda",
                )
    table = validate(choose(times))
    facts = {
        "measured_on": device_name("cuda"),
        "torch": torch.__version__,
        "triton": package_version("triton"),
        "git_sha": git_sha(),
        "batch_size": batch,
        "widths": widths,
    }
    atomic_write(out, lambda tmp: tmp.write_text(json.dumps(document(table, **facts), indent=1) + "\n"))
    print(f"wrote {out} ({time.perf_counter() - start:.0f} s)")
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--csv", type=Path, default=DEFAULT_CSV, help=f"results CSV to append to (default {DEFAULT_CSV})"
    )
    parser.add_argument("--out", type=Path, required=True, help="where to write the measured policy JSON")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, help=f"large bucket: batch x 197 rows "
                        f"(default {DEFAULT_BATCH})")  # fmt: skip
    parser.add_argument("--widths", type=int, nargs="+", default=[768], help="model widths (default 768, DeiT-B)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel builds (default: all cores)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("linear_policy: needs a CUDA GPU (it times cuBLAS and Triton kernels); torch sees none", file=sys.stderr)
        return 2
    if args.batch_size * TOKENS <= SMALL_BATCH * TOKENS:
        parser.error(f"--batch-size must be above {SMALL_BATCH} (the small bucket's batch), got {args.batch_size}")
    run(args.csv, args.out, args.batch_size, args.widths, args.jobs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
