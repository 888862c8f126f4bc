"""Tiny kernels for tests/benchmarks/test_compile_report.py: one clean copy, one 16-bit dot, one that must spill."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import triton
import triton.language as tl

COPY_BLOCK = 1024
DOT_BLOCK = 64
SPILL_BLOCK = 128


@triton.jit
def _copy_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=offs < n), mask=offs < n)


@triton.jit
def _dot_kernel(a_ptr, b_ptr, c_ptr, stride_a, stride_b, stride_c, BLOCK: tl.constexpr):
    rows = tl.arange(0, BLOCK)
    a = tl.load(a_ptr + rows[:, None] * stride_a + rows[None, :])
    b = tl.load(b_ptr + rows[:, None] * stride_b + rows[None, :])
    tl.store(c_ptr + rows[:, None] * stride_c + rows[None, :], tl.dot(a, b).to(c_ptr.dtype.element_ty))


@triton.jit
def _spill_kernel(x_ptr, y_ptr, BLOCK: tl.constexpr):
    # A BLOCK x BLOCK fp32 tile stays live across both reductions: 128 * 128 values over one warp's 32 threads are
    # 512 per thread, twice what the 255 registers can hold.
    rows = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + rows[:, None] * BLOCK + rows[None, :])
    y = x * tl.sum(x, 0)[None, :] + tl.sum(x, 1)[:, None]
    tl.store(y_ptr + rows[:, None] * BLOCK + rows[None, :], y)


def _meta(*shape: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device="meta")


def copy_workload(mode: object, shape: object) -> Iterator[str]:
    x, y = _meta(4 * COPY_BLOCK, dtype=torch.float16), _meta(4 * COPY_BLOCK, dtype=torch.float16)
    _copy_kernel[(4,)](x, y, x.numel(), BLOCK=COPY_BLOCK)
    yield "copy"


def dot_workload(mode: object, shape: object) -> Iterator[str]:
    a, b, c = (_meta(DOT_BLOCK, DOT_BLOCK, dtype=torch.float16) for _ in range(3))
    _dot_kernel[(1,)](a, b, c, a.stride(0), b.stride(0), c.stride(0), BLOCK=DOT_BLOCK)
    yield "dot"


def spill_workload(mode: object, shape: object) -> Iterator[str]:
    x, y = _meta(SPILL_BLOCK, SPILL_BLOCK, dtype=torch.float32), _meta(SPILL_BLOCK, SPILL_BLOCK, dtype=torch.float32)
    _spill_kernel[(1,)](x, y, BLOCK=SPILL_BLOCK, num_warps=1)
    yield "spill"
