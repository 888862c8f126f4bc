"""The kernel microbenchmarks under pytest-benchmark: `pytest benchmarks/ --benchmark-only`.

The same cases as `python -m fastdeit.benchmarks.kernels` (which times with triton's do_bench and is the GPU
reference); here each round is one synchronised call, so small GPU cases include launch latency. Two DeiT shapes on
a GPU, one tiny shape on the CPU (the Triton interpreter). Nothing here ever fails on a slow number.
"""

import pytest
import torch
from fastdeit.benchmarks.common import append_rows
from fastdeit.benchmarks.kernels import (
    CPU_SHAPES,
    DIRECTIONS,
    OP_PROVIDERS,
    OPS,
    QUICK_SHAPES,
    KernelResult,
    Unavailable,
    prepare,
)

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
DTYPE, DTYPE_NAME = (torch.bfloat16, "bf16") if CUDA else (torch.float32, "fp32")
# On a GPU the first two quick shapes (DeiT-B and DeiT-Ti at batch 256); `python -m fastdeit.benchmarks.kernels`
# covers the rest with do_bench.
SHAPES = QUICK_SHAPES[:2] if CUDA else CPU_SHAPES
# Rounds per case: enough for a stable median on a GPU; few on the CPU, where the interpreter is slow.
ROUNDS, WARMUP_ROUNDS = (50, 5) if CUDA else (3, 1)

CASES = [
    pytest.param(op, provider, direction, shape, id=f"{op}-{provider}-{direction}-{shape.label}")
    for shape in SHAPES
    for op in OPS
    for provider in OP_PROVIDERS[op]
    for direction in DIRECTIONS
]


@pytest.mark.parametrize(("op", "provider", "direction", "shape"), CASES)
def test_kernel(benchmark, bench_csv, op, provider, direction, shape):
    try:
        prepared = prepare(op, provider, shape, DTYPE, DEVICE, direction)
    except Unavailable as e:
        pytest.skip(f"{provider} {op}: {e}")

    def reset_grads() -> None:
        for t in prepared.grad_to_none:
            t.grad = None

    def call() -> None:
        prepared.fn()
        if CUDA:
            torch.cuda.synchronize()

    with prepared.context():
        benchmark.pedantic(call, setup=reset_grads, rounds=ROUNDS, warmup_rounds=WARMUP_ROUNDS, iterations=1)
    if benchmark.stats is None:  # --benchmark-disable: ran once, measured nothing
        return
    ms = benchmark.stats.stats.median * 1e3
    benchmark.extra_info.update({"unit": prepared.unit, "rate": prepared.rate(ms), "dtype": DTYPE_NAME})
    if bench_csv:
        result = KernelResult(op, provider, direction, DTYPE_NAME, shape, ms, prepared.rate(ms), prepared.unit)
        append_rows(bench_csv, result.rows(), DEVICE.type)
