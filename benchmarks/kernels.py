"""Kernel microbenchmarks: each fastdeit op against the torch and library kernels a DeiT would otherwise run.

    python -m fastdeit.benchmarks.kernels [--ops layer_norm attention ...] [--providers ...] [--full] [--dtype bf16]
    fastdeit bench --kernels ...                   (the same suite from the CLI)
    pytest benchmarks/ --benchmark-only            (the same cases under pytest-benchmark)

Ops, at DeiT shapes (rows M = batch x tokens, width C, H heads of 64):
    layer_norm            LN(x)                         norm1 of each block
    layer_norm_residual   (LN(x + r), x + r)            norm2, with the residual add fused
    attention             softmax(q k^T / sqrt(D)) v    q, k, v (B, H, N, D): the kernel alone
    attention_qkv         the same from the packed qkv projection (B, N, 3C) to (B, N, C): as a model runs it,
                          layout changes included (timm permutes, fastdeit reads the packed tensor in place)
    linear_qkv            x (M, C) @ W^T (3C, C) + b
    linear_fc1_gelu       GELU(x (M, C) @ W^T (4C, C) + b)
    linear_fc2_residual   x (M, 4C) @ W^T (C, 4C) + b + r

Providers: fastdeit (`fastdeit.ops`; each linear on the path the linear policy gives its kind, so qkv on cuBLAS by
default: see `fastdeit.kernels.linear_policy`, and `python -m fastdeit.benchmarks.linear_policy` for both paths),
torch (the eager code fastdeit's torch backend and timm run: F.layer_norm, F.linear, F.gelu, adds; for `attention`
timm's non-fused matmul-softmax-matmul), torch-compile (that torch code
under torch.compile), sdpa-flash / sdpa-efficient / sdpa-cudnn (F.scaled_dot_product_attention pinned to one backend
with torch.nn.attention.sdpa_kernel), xformers (memory_efficient_attention, its native (B, N, H, D) layout), apex
(FusedLayerNorm). A provider that is not installed, not built for the dtype or device, or rejects the shape is
skipped with the reason.

Metrics, next to the time: LayerNorm in GB/s of the bytes an ideal kernel moves (fwd: read x [and r], write y
[and x + r]; bwd: read dy [and the grad of x + r], x + r and the fp32 mean/rstd, write dx; plus weight and bias);
attention in TFLOP/s with 4 B H N^2 D FLOPs forward and 2.5x that backward (the flash-attention convention);
linear in TFLOP/s with 2 M N K forward and 4 M N K backward. GPU times: `triton.testing.do_bench` (median, L2
flushed between calls); CPU (the Triton interpreter, for tests only): perf_counter, median of a few calls.
These are measurements, never pass/fail checks.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import os
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from fastdeit._env import show_progress

from .common import (
    DEFAULT_CSV,
    DTYPES,
    Row,
    append_rows,
    environment_header,
    format_columns,
    parse_dtype,
    resolve_device,
)

OPS = (
    "layer_norm", "layer_norm_residual", "attention", "attention_qkv",
    "linear_qkv", "linear_fc1_gelu", "linear_fc2_residual",
)  # fmt: skip
DIRECTIONS = ("fwd", "bwd", "fwd+bwd")
PROVIDERS = ("fastdeit", "torch", "torch-compile", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "xformers", "apex")
# Which providers implement which op.
OP_PROVIDERS = {
    "layer_norm": ("fastdeit", "torch", "torch-compile", "apex"),
    "layer_norm_residual": ("fastdeit", "torch", "torch-compile", "apex"),
    "attention": ("fastdeit", "torch", "torch-compile", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "xformers"),
    "attention_qkv": ("fastdeit", "torch", "torch-compile", "xformers"),
    "linear_qkv": ("fastdeit", "torch", "torch-compile"),
    "linear_fc1_gelu": ("fastdeit", "torch", "torch-compile"),
    "linear_fc2_residual": ("fastdeit", "torch", "torch-compile"),
}
EPS = 1e-6


@dataclass(frozen=True)
class Shape:
    """A DeiT activation shape: `batch` images of `tokens` tokens of width `width` in `heads` heads."""

    batch: int
    tokens: int
    width: int
    heads: int

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def rows(self) -> int:
        return self.batch * self.tokens

    @property
    def label(self) -> str:
        return f"B{self.batch}_N{self.tokens}_C{self.width}_H{self.heads}"


# DeiT widths (Ti, S, B) and their head counts (head dim 64).
WIDTHS = {"Ti": (192, 3), "S": (384, 6), "B": (768, 12)}
# The default GPU set, most telling first (a run cut short by a time limit keeps the first ones): the three widths
# at 224 (197 tokens) and batch 256, the batch-1 latency case, DeiT-B at 384 (577 tokens), the distilled 198.
QUICK_SHAPES = (
    Shape(256, 197, 768, 12), Shape(256, 197, 192, 3), Shape(256, 197, 384, 6),
    Shape(1, 197, 768, 12), Shape(64, 577, 768, 12), Shape(512, 198, 192, 3),
)  # fmt: skip
# One tiny case for the CPU, where the Triton kernels run in the interpreter (tests and demos, not timings).
CPU_SHAPES = (Shape(2, 5, 32, 2),)


def full_shapes() -> list[Shape]:
    """The whole DeiT grid: widths Ti/S/B x tokens 197/198/577/578 x batch 1 to 512."""
    return [
        Shape(batch, tokens, width, heads)
        for width, heads in WIDTHS.values()
        for tokens in (197, 198, 577, 578)
        for batch in (1, 8, 32, 64, 128, 256, 512)
    ]


class Unavailable(Exception):
    """A provider cannot run a case here; the message says why. `per_shape`: only this shape was rejected (another
    shape may run), rather than the provider or package missing altogether."""

    def __init__(self, reason: str, per_shape: bool = False) -> None:
        super().__init__(reason)
        self.per_shape = per_shape


@dataclass
class Prepared:
    """A ready-to-time call: `fn` does one fwd, bwd or fwd+bwd; `work` is the bytes or FLOPs it does."""

    fn: Callable[[], object]
    work: float
    unit: str  # "GB/s" or "TFLOP/s"
    grad_to_none: list[torch.Tensor] = field(default_factory=list)
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext

    def rate(self, ms: float) -> float:
        """`work` per second in the unit's scale, for a time in milliseconds."""
        return self.work / (ms * 1e-3) / (1e9 if self.unit == "GB/s" else 1e12)


# ---------------------------------------------------------------------------------------------------------------------
# The torch code each op replaces, as fastdeit's torch backend and timm write it
# ---------------------------------------------------------------------------------------------------------------------
def _torch_layer_norm(x, weight, bias, residual=None):
    if residual is None:
        return F.layer_norm(x, (x.shape[-1],), weight, bias, EPS)
    s = x + residual
    return F.layer_norm(s, (s.shape[-1],), weight, bias, EPS), s


def _torch_attention(q, k, v):
    """timm's non-fused attention: the (N, N) scores are materialised, softmax in the input dtype."""
    attn = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    return attn.softmax(dim=-1) @ v


def _torch_attention_qkv(qkv, num_heads):
    """timm's fused-attention path: permute the packed qkv, SDPA (torch's backend choice), back to (B, N, C)."""
    B, N, W = qkv.shape
    q, k, v = qkv.reshape(B, N, 3, num_heads, W // (3 * num_heads)).permute(2, 0, 3, 1, 4).unbind(0)
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, W // 3)


def _xformers_attention_qkv(qkv, num_heads):
    import xformers.ops as xops

    B, N, W = qkv.shape
    q, k, v = qkv.reshape(B, N, 3, num_heads, W // (3 * num_heads)).unbind(2)
    return xops.memory_efficient_attention(q, k, v).reshape(B, N, W // 3)


def _torch_linear(x, weight, bias, residual=None, activation=None):
    y = F.linear(x, weight, bias)
    if activation == "gelu":
        y = F.gelu(y)
    return y if residual is None else y + residual


def _sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v)


@functools.cache
def _raise_recompile_limit() -> None:
    import torch._dynamo

    # The full grid compiles each function for dozens of shapes; past dynamo's default limit it silently falls back
    # to eager, which would then be timed as "compiled".
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 256)


def _compiled(fn: Callable) -> Callable:
    """torch.compile(fn) for static shapes (each shape compiles once, as a model with a fixed batch would)."""
    _raise_recompile_limit()
    return torch.compile(fn, dynamic=False)


# ---------------------------------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------------------------------
def _fastdeit_ops(device: torch.device):
    """`fastdeit.ops`. On the CPU its kernels need the Triton interpreter, which must be switched on before triton
    is first imported: done here if it is not imported yet."""
    if device.type == "cpu":
        if "triton" not in sys.modules:
            os.environ.setdefault("TRITON_INTERPRET", "1")
        if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
            raise Unavailable("on the CPU needs TRITON_INTERPRET=1, set before triton is imported")
    return importlib.import_module("fastdeit.ops")


def _check_provider(provider: str, device: torch.device, dtype: torch.dtype) -> None:
    cuda_only = provider.startswith("sdpa-") or provider in ("torch-compile", "xformers", "apex")
    if cuda_only and device.type != "cuda":
        # torch.compile on the CPU would time C++ codegen, not what a GPU user sees.
        raise Unavailable("runs on CUDA only here")
    if provider == "sdpa-flash" and dtype == torch.float32:
        raise Unavailable("flash attention has no fp32 kernel")
    module = {"xformers": "xformers.ops", "apex": "apex.normalization"}.get(provider)
    if module is not None:
        try:
            importlib.import_module(module)
        except Exception as e:
            raise Unavailable(f"{module.split('.')[0]} is not installed or fails to import ({type(e).__name__})") from e


def _op_function(op: str, provider: str, shape: Shape, device: torch.device) -> Callable[..., object]:
    """The function that runs `op` for `provider`, taking the tensors of `_inputs`."""
    if provider == "fastdeit":
        ops = _fastdeit_ops(device)
        return {
            "layer_norm": partial(ops.layer_norm, eps=EPS),
            "layer_norm_residual": lambda x, w, b, r: ops.layer_norm(x, w, b, eps=EPS, residual=r),
            "attention": ops.attention,
            "attention_qkv": partial(ops.attention_qkv, num_heads=shape.heads),
            "linear_qkv": partial(ops.linear, kind="qkv"),
            "linear_fc1_gelu": partial(ops.linear, activation="gelu", kind="fc1"),
            "linear_fc2_residual": lambda x, w, b, r: ops.linear(x, w, b, residual=r, kind="fc2"),
        }[op]
    if provider == "apex":
        from apex.normalization.fused_layer_norm import fused_layer_norm_affine

        def apex_ln(x, w, b, r=None):
            s = x if r is None else x + r
            y = fused_layer_norm_affine(s, w, b, (s.shape[-1],), EPS)
            return y if r is None else (y, s)

        return apex_ln
    if provider.startswith("sdpa-"):
        return _sdpa
    if provider == "xformers":
        if op == "attention":
            import xformers.ops as xops

            return xops.memory_efficient_attention
        return partial(_xformers_attention_qkv, num_heads=shape.heads)
    fn = {
        "layer_norm": _torch_layer_norm,
        "layer_norm_residual": _torch_layer_norm,
        "attention": _torch_attention,
        "attention_qkv": partial(_torch_attention_qkv, num_heads=shape.heads),
        "linear_qkv": _torch_linear,
        "linear_fc1_gelu": partial(_torch_linear, activation="gelu"),
        "linear_fc2_residual": _torch_linear,
    }[op]
    return _compiled(fn) if provider == "torch-compile" else fn


def _inputs(op: str, provider: str, shape: Shape, dtype: torch.dtype, device: torch.device) -> list[torch.Tensor]:
    """Random inputs (never zeros: some kernels skip work on them) in the provider's native layout."""
    C, M = shape.width, shape.rows
    randn = partial(torch.randn, device=device, dtype=dtype)
    if op.startswith("layer_norm"):
        tensors = [randn(M, C), 1 + 0.1 * randn(C), 0.1 * randn(C)]
        if op == "layer_norm_residual":
            tensors.append(randn(M, C))
        return tensors
    if op == "attention":
        B, H, N, D = shape.batch, shape.heads, shape.tokens, shape.head_dim
        size = (B, N, H, D) if provider == "xformers" else (B, H, N, D)
        return [randn(size) for _ in range(3)]
    if op == "attention_qkv":
        return [randn(shape.batch, shape.tokens, 3 * C)]
    k, n = {"linear_qkv": (C, 3 * C), "linear_fc1_gelu": (C, 4 * C), "linear_fc2_residual": (4 * C, C)}[op]
    tensors = [randn(M, k), randn(n, k) * k**-0.5, 0.1 * randn(n)]
    if op == "linear_fc2_residual":
        tensors.append(randn(M, n))
    return tensors


def _work(op: str, shape: Shape, dtype: torch.dtype, direction: str) -> tuple[float, str]:
    """(bytes or FLOPs, unit) of one call: the counts in the module docstring."""
    if op.startswith("layer_norm"):
        e = torch.finfo(dtype).bits // 8
        M, C = shape.rows, shape.width
        res = int(op == "layer_norm_residual")
        params = 2 * C * e
        fwd = M * C * e * (2 + 2 * res) + params
        bwd = M * C * e * (3 + res) + 8 * M + 2 * params  # + weight read, dweight and dbias written
        total = {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + 8 * M + bwd}[direction]  # fwd+bwd also saves mean/rstd
        return float(total), "GB/s"
    if op.startswith("attention"):
        fwd = 4.0 * shape.batch * shape.heads * shape.tokens**2 * shape.head_dim
        return fwd * {"fwd": 1.0, "bwd": 2.5, "fwd+bwd": 3.5}[direction], "TFLOP/s"
    C = shape.width
    k, n = {"linear_qkv": (C, 3 * C), "linear_fc1_gelu": (C, 4 * C), "linear_fc2_residual": (4 * C, C)}[op]
    return 2.0 * shape.rows * n * k * {"fwd": 1, "bwd": 2, "fwd+bwd": 3}[direction], "TFLOP/s"


def _sdpa_context(provider: str) -> Callable[[], contextlib.AbstractContextManager]:
    if not provider.startswith("sdpa-"):
        return contextlib.nullcontext
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {
        "sdpa-flash": SDPBackend.FLASH_ATTENTION,
        "sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION,
        "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION,
    }[provider]
    return partial(sdpa_kernel, backend)


def _first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"


def _as_tuple(out: object) -> tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def prepare(op: str, provider: str, shape: Shape, dtype: torch.dtype, device: torch.device, direction: str) -> Prepared:
    """One timed case, run once (compiling and autotuning happen here, not in the timing). Raises Unavailable."""
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; expected one of {', '.join(OPS)}")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
    if provider not in OP_PROVIDERS[op]:
        raise Unavailable(f"has no {op}")
    _check_provider(provider, device, dtype)
    fn = _op_function(op, provider, shape, device)
    inputs = _inputs(op, provider, shape, dtype, device)
    work, unit = _work(op, shape, dtype, direction)
    context = _sdpa_context(provider)
    with context():
        try:
            if direction == "fwd":
                with torch.no_grad():
                    fn(*inputs)  # inference: nothing saved for a backward

                def call() -> None:
                    with torch.no_grad():
                        fn(*inputs)

                prepared = Prepared(call, work, unit, context=context)
            else:
                for t in inputs:
                    t.requires_grad_(True)
                outs = _as_tuple(fn(*inputs))
                grads = [torch.randn_like(o) for o in outs]
                if direction == "bwd":
                    call = partial(torch.autograd.backward, outs, grads, retain_graph=True)
                else:
                    call = lambda: torch.autograd.backward(_as_tuple(fn(*inputs)), grads)  # noqa: E731
                call()
                prepared = Prepared(call, work, unit, grad_to_none=inputs, context=context)
        except (RuntimeError, ValueError) as e:  # e.g. an SDPA backend or xformers rejecting the shape or dtype
            raise Unavailable(_first_line(e), per_shape=True) from e
    if device.type == "cuda":
        torch.cuda.synchronize()
    return prepared


def time_ms(prepared: Prepared, device: torch.device, cpu_repeats: int = 5) -> float:
    """Median milliseconds of one call: do_bench on the GPU, perf_counter on the CPU."""
    with prepared.context():
        if device.type == "cuda":
            from triton.testing import do_bench

            return float(do_bench(prepared.fn, grad_to_none=prepared.grad_to_none or None, return_mode="median"))
        prepared.fn()  # one untimed call: first-call set-up (allocator, thread pool) is not the op's cost
        times = []
        for _ in range(cpu_repeats):
            for t in prepared.grad_to_none:
                t.grad = None
            start = time.perf_counter()
            prepared.fn()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)


@dataclass
class KernelResult:
    op: str
    provider: str
    direction: str
    dtype: str
    shape: Shape
    ms: float
    rate: float
    unit: str

    def rows(self) -> list[Row]:
        base = dict(
            model_or_op=self.op,
            provider=self.provider,
            mode=self.direction,
            dtype=self.dtype,
            batch=self.shape.batch,
            shape=self.shape.label,
        )
        metric = "bandwidth" if self.unit == "GB/s" else "compute"
        return [
            Row(**base, metric="time", value=self.ms, unit="ms"),
            Row(**base, metric=metric, value=self.rate, unit=self.unit),
        ]


def run_kernels(
    *,
    ops: Sequence[str] = OPS,
    providers: Sequence[str] = PROVIDERS,
    shapes: Sequence[Shape] | None = None,
    directions: Sequence[str] = DIRECTIONS,
    dtype: str | None = None,
    device: str = "auto",
    csv: str | os.PathLike | None = DEFAULT_CSV,
    progress: bool | None = None,
) -> tuple[list[KernelResult], list[str]]:
    """Time every (shape, op, provider, direction); returns the results, and one line per provider and op that was
    skipped (with the reason) or failed (with the error: one broken case never stops the others).

    Rows go to `csv` as each case finishes; a progress bar goes to stderr if `progress` (default: when stderr is a
    terminal). Defaults: the quick GPU shape set (the tiny CPU case without a GPU), bf16 on the GPU and fp32 on the
    CPU.
    """
    for name, given, allowed in (
        ("op", ops, OPS),
        ("provider", providers, PROVIDERS),
        ("direction", directions, DIRECTIONS),
    ):
        bad = [g for g in given if g not in allowed]
        if bad:
            raise ValueError(f"unknown {name}(s) {', '.join(map(repr, bad))}; expected some of {', '.join(allowed)}")
    dev = resolve_device(device)
    dtype = dtype or ("bf16" if dev.type == "cuda" else "fp32")
    torch_dtype = parse_dtype(dtype)
    if shapes is None:
        shapes = QUICK_SHAPES if dev.type == "cuda" else CPU_SHAPES
    cases = [(s, o, p, d) for s in shapes for o in ops for p in providers if p in OP_PROVIDERS[o] for d in directions]
    results: list[KernelResult] = []
    skipped: dict[tuple[str, str], str] = {}
    missing: set[tuple[str, str]] = set()  # a missing package or device stays missing: not retried per shape
    failed: list[str] = []
    bar = tqdm(cases, desc="kernels", unit="case", file=sys.stderr, disable=not show_progress(progress))
    for shape, op, provider, direction in bar:
        if (op, provider) in missing:
            continue
        try:
            prepared = prepare(op, provider, shape, torch_dtype, dev, direction)
            ms = time_ms(prepared, dev)
        except Unavailable as e:
            skipped.setdefault((op, provider), str(e))
            if not e.per_shape:
                missing.add((op, provider))
            continue
        except Exception as e:
            failed.append(f"FAILED {provider} {op} {shape.label} {direction}: {_first_line(e)}")
            tqdm.write(failed[-1], file=sys.stderr)
            continue
        result = KernelResult(op, provider, direction, dtype, shape, ms, prepared.rate(ms), prepared.unit)
        results.append(result)
        if csv is not None:
            append_rows(csv, result.rows(), dev.type)
        del prepared
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return results, [f"skipped {p} for {o}: {reason}" for (o, p), reason in skipped.items()] + failed


def kernel_results_from_rows(rows: Sequence[dict[str, str]]) -> list[KernelResult]:
    """Rebuild kernel results from (latest) CSV rows, to print their table again."""
    pairs: dict[tuple[str, ...], dict[str, dict[str, str]]] = {}
    for r in rows:
        if r["mode"] in DIRECTIONS:
            key = (r["gpu_name"], r["model_or_op"], r["provider"], r["mode"], r["dtype"], r["shape"])
            pairs.setdefault(key, {})[r["metric"]] = r
    results = []
    for (_, op, provider, direction, dtype, label), metrics in pairs.items():
        rate = metrics.get("compute") or metrics.get("bandwidth")
        match = re.fullmatch(r"B(\d+)_N(\d+)_C(\d+)_H(\d+)", label)
        if "time" not in metrics or rate is None or match is None or op not in OPS:
            continue
        shape = Shape(*map(int, match.groups()))
        ms = float(metrics["time"]["value"])
        results.append(KernelResult(op, provider, direction, dtype, shape, ms, float(rate["value"]), rate["unit"]))
    return results


def format_kernel_table(results: Sequence[KernelResult]) -> str:
    """One line per result, grouped by op, shape and direction; 'vs best peer' divides the fastest other
    provider's time by this one's (above 1: faster than every peer)."""
    if not results:
        return "no kernel measurements"
    best: dict[tuple[str, str, str], float] = {}
    for r in results:
        if r.provider != "fastdeit":
            key = (r.op, r.shape.label, r.direction)
            best[key] = min(best.get(key, float("inf")), r.ms)
    cols = ("op", "shape", "dir", "provider", "ms", "rate", "vs best peer")
    lines = []
    for r in sorted(results, key=lambda r: (OPS.index(r.op), r.shape.label, DIRECTIONS.index(r.direction))):
        peer = best.get((r.op, r.shape.label, r.direction))
        ratio = f"{peer / r.ms:.2f}x" if peer is not None else "-"
        rate = f"{r.rate:,.0f}" if r.rate >= 100 else f"{r.rate:.3g}"
        lines.append((r.op, r.shape.label, r.direction, r.provider, f"{r.ms:.4g}", f"{rate} {r.unit}", ratio))
    return "\n".join(format_columns(cols, lines, left=4))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ops",
        nargs="+",
        default=list(OPS),
        choices=OPS,
        metavar="OP",
        help=f"ops to time (default all: {', '.join(OPS)})",
    )
    parser.add_argument(
        "--providers",
        nargs="+",
        default=list(PROVIDERS),
        metavar="P",
        help=f"providers (default all available: {', '.join(PROVIDERS)})",
    )
    parser.add_argument(
        "--directions",
        nargs="+",
        default=list(DIRECTIONS),
        choices=DIRECTIONS,
        metavar="DIR",
        help="fwd, bwd, fwd+bwd (default all)",
    )
    parser.add_argument(
        "--full",
        action="store_true",
        help="the whole DeiT grid (widths x 197/198/577/578 tokens x batch 1..512) instead of the quick set",
    )
    parser.add_argument("--dtype", choices=tuple(DTYPES), help="default bf16 on the GPU, fp32 on the CPU")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cuda or cpu")
    parser.add_argument(
        "--csv", type=Path, default=DEFAULT_CSV, help=f"results CSV to append to (default {DEFAULT_CSV})"
    )
    parser.add_argument("--no-csv", action="store_true", help="print only, write no rows")


def run_from_args(args: argparse.Namespace) -> int:
    """Run the suite from parsed arguments (these, or `fastdeit bench --kernels`'s, where unset options are None),
    print the skipped providers and the table."""
    results, skipped = run_kernels(
        ops=args.ops or OPS,
        providers=args.providers or PROVIDERS,
        shapes=full_shapes() if args.full else None,
        directions=args.directions or DIRECTIONS,
        dtype=args.dtype,
        device=args.device,
        csv=None if args.no_csv else args.csv,
        progress=getattr(args, "progress", None),
    )
    header = environment_header(resolve_device(args.device))
    print("\n".join([header, *skipped, "", format_kernel_table(results), *cpu_note(args.device)]))
    return 0


def cpu_note(device: str) -> list[str]:
    """The caveat printed under CPU tables: the interpreter's times test the harness, not the kernels."""
    if resolve_device(device).type == "cuda":
        return []
    return ["CPU: the Triton kernels ran in the interpreter; these times check the harness, they measure nothing."]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastdeit.benchmarks.kernels", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
