"""Linear layer with a fused epilogue: out = act(x @ weight.T + bias) + residual.

Forward, with x (M, K) (leading dims flattened), weight (N, K) in nn.Linear layout, fp32 accumulation:
    pre = x @ weight.T + bias                     (the pre-activation, (M, N))
    out = act(pre) + residual                     act: identity, or exact GELU(z) = z * Phi(z)
                                                  with Phi(z) = (1 + erf(z / sqrt(2))) / 2
Backward, with dout the grad of out:
    dz        = dout * act'(pre)                  GELU'(z) = Phi(z) + z * exp(-z^2 / 2) / sqrt(2 pi)
    dx        = dz @ weight,   dweight = dz.T @ x,   dbias = sum over rows of dz,   dresidual = dout
The backward matmuls run on torch (cuBLAS); dz is a small Triton elementwise kernel.

Two forward paths, picked per call by the linear policy (`linear_policy.py`: one table keyed by the layer's kind,
dtype and size; on the CPU always the first):
  * a Triton matmul (tiles, `tl.dot`, fp32 accumulator, grouped program order for L2 reuse) with
    bias, GELU and residual applied to the accumulator before the single store;
  * cuBLAS `addmm` (the bias in cuBLASLt's epilogue) followed, for a GELU or a residual, by a Triton elementwise
    kernel. fp32 always takes this path on a GPU (torch's fp32 matmul precision, as F.linear).
fp32 inputs of the Triton matmul (the interpreter): `tl.dot` follows torch's fp32 matmul precision (`dot_precision`).

Dtypes: x, weight and bias share the compute dtype, which pre has too. The residual may have another float dtype
(the fp32 residual stream under autocast); it is added in fp32 and out has torch.promote_types(x, residual), exactly
the dtype of `F.linear(x, weight, bias) + residual`. In the backward dresidual is dout in the residual's dtype and dz
is in the compute dtype, which the matmuls run in.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch.autograd.function import FunctionCtx

from fastdeit._env import triton_interpreter

from ._utils import AUTOTUNE_KWARGS, check_matrix, check_same, check_tensor, dot_precision
from .linear_policy import OP_KINDS, path_for

_OP = "linear"
ACTIVATIONS = (None, "gelu")

# Hopper-oriented tile sweep, keyed on (N, K) only: M is batch * tokens and would re-tune on every batch size.
# Under the interpreter a single small config (no tuning runs); tiles of 32 still leave partial edge tiles in tests,
# and its split epilogue runs the GPU configs' code path.
# Every GPU config builds for sm_90 with wgmma, no spills and no serialised wgmma in every epilogue variant, with
# triton 3.6 and 3.9 (`fastdeit bench --compile-report`). EPILOGUE_SPLIT runs the epilogue on one column half of the
# tile at a time: with it the 256x128 and 128x128 tiles stop spilling under GELU or an fp32 residual. Left out, with
# what the report showed: 128x256 w8 (wgmma serialised by ptxas, C7515, with an fp32 residual on 3.6, split or not),
# 128x128x32 w4 (spilled; 128x128x64 covers it), 64x32 w2 (two warps cannot issue wgmma: mma.sync).
if triton_interpreter():
    _MATMUL_CONFIGS = [
        triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4, "EPILOGUE_SPLIT": True})
    ]
else:
    _MATMUL_CONFIGS = [
        triton.Config(
            {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "EPILOGUE_SPLIT": split},
            num_warps=w,
            num_stages=st,
        )
        for bm, bn, bk, split, w, st in (
            (256, 128, 64, True, 8, 3),
            (128, 128, 64, True, 8, 4),
            (128, 128, 64, True, 4, 4),
            (128, 64, 64, False, 4, 4),
            (64, 128, 64, False, 4, 4),
            (64, 64, 64, False, 4, 5),
            (128, 32, 64, False, 4, 4),
        )
    ]

# Elementwise (epilogue and GELU backward) tile.
_EW_BLOCK_M = 16
_EW_BLOCK_N = 128


# ----------------------------------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------------------------------
@triton.jit
def _gelu(z):
    return 0.5 * z * (1.0 + tl.erf(z * 0.7071067811865476))  # 1 / sqrt(2)


@triton.jit
def _gelu_grad(z):
    cdf = 0.5 * (1.0 + tl.erf(z * 0.7071067811865476))  # 1 / sqrt(2)
    pdf = tl.exp(-0.5 * z * z) * 0.3989422804014327  # 1 / sqrt(2 pi)
    return cdf + z * pdf


@triton.autotune(configs=_MATMUL_CONFIGS, key=["N", "K", "M_BUCKET"], **AUTOTUNE_KWARGS)
@triton.jit
def _linear_kernel(
    x_ptr,
    weight_ptr,
    bias_ptr,
    residual_ptr,
    out_ptr,
    pre_ptr,
    M,
    N,
    K,
    stride_x_m,
    stride_x_k,
    stride_weight_n,
    stride_weight_k,
    stride_residual_m,
    stride_out_m,
    stride_pre_m,
    M_BUCKET,  # autotune key only (see _m_bucket)
    HAS_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    SAVE_PRE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    EPILOGUE_SPLIT: tl.constexpr,
):
    # Grouped order: GROUP_M row-tiles share each column-tile of weight while it is still in L2.
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    pids_per_group = GROUP_M * num_pid_n
    first_pid_m = (pid // pids_per_group) * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + (pid % pids_per_group) % group_size_m
    pid_n = (pid % pids_per_group) // group_size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    # Rows/cols past the edge wrap around for the loads (always in bounds, no mask); they are never stored.
    load_m = (offs_m % M).to(tl.int64)
    load_n = (offs_n % N).to(tl.int64)
    x_ptrs = x_ptr + load_m[:, None] * stride_x_m + offs_k[None, :] * stride_x_k
    weight_t_ptrs = weight_ptr + load_n[None, :] * stride_weight_n + offs_k[:, None] * stride_weight_k

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        k_left = K - k * BLOCK_K
        x_tile = tl.load(x_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
        weight_t_tile = tl.load(weight_t_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        acc = tl.dot(x_tile, weight_t_tile, acc, input_precision=DOT_PRECISION)
        x_ptrs += BLOCK_K * stride_x_k
        weight_t_ptrs += BLOCK_K * stride_weight_k

    if EPILOGUE_SPLIT:
        # One column half at a time: half the live registers of a whole-tile epilogue.
        left, right = tl.split(tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1)))
        offs_half = pid_n * BLOCK_N + tl.arange(0, BLOCK_N // 2)
        _epilogue(
            left, offs_m, offs_half, M, N, bias_ptr, residual_ptr, out_ptr, pre_ptr, stride_residual_m, stride_out_m,
            stride_pre_m, HAS_BIAS, ACTIVATION, HAS_RESIDUAL, SAVE_PRE,
        )  # fmt: skip
        _epilogue(
            right, offs_m, offs_half + BLOCK_N // 2, M, N, bias_ptr, residual_ptr, out_ptr, pre_ptr, stride_residual_m,
            stride_out_m, stride_pre_m, HAS_BIAS, ACTIVATION, HAS_RESIDUAL, SAVE_PRE,
        )  # fmt: skip
    else:
        _epilogue(
            acc, offs_m, offs_n, M, N, bias_ptr, residual_ptr, out_ptr, pre_ptr, stride_residual_m, stride_out_m,
            stride_pre_m, HAS_BIAS, ACTIVATION, HAS_RESIDUAL, SAVE_PRE,
        )  # fmt: skip


@triton.jit
def _epilogue(
    acc,
    offs_m,
    offs_n,
    M,
    N,
    bias_ptr,
    residual_ptr,
    out_ptr,
    pre_ptr,
    stride_residual_m,
    stride_out_m,
    stride_pre_m,
    HAS_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    SAVE_PRE: tl.constexpr,
):
    """pre = acc + bias, out = act(pre) + residual for the output tile at rows offs_m, columns offs_n."""
    out_m = offs_m.to(tl.int64)
    mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    if SAVE_PRE:
        tl.store(pre_ptr + out_m[:, None] * stride_pre_m + offs_n[None, :], acc.to(pre_ptr.dtype.element_ty), mask=mask)
    if ACTIVATION == "gelu":
        acc = _gelu(acc)
    if HAS_RESIDUAL:
        residual = tl.load(residual_ptr + out_m[:, None] * stride_residual_m + offs_n[None, :], mask=mask, other=0.0)
        acc += residual.to(tl.float32)
    tl.store(out_ptr + out_m[:, None] * stride_out_m + offs_n[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _linear_epilogue_kernel(
    pre_ptr,
    residual_ptr,
    out_ptr,
    M,
    N,
    stride_pre_m,
    stride_residual_m,
    stride_out_m,
    ACTIVATION: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    offs_m = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
    z = tl.load(pre_ptr + offs_m[:, None] * stride_pre_m + offs_n[None, :], mask=mask, other=0.0).to(tl.float32)
    if ACTIVATION == "gelu":
        z = _gelu(z)
    if HAS_RESIDUAL:
        residual = tl.load(residual_ptr + offs_m[:, None] * stride_residual_m + offs_n[None, :], mask=mask, other=0.0)
        z += residual.to(tl.float32)
    tl.store(out_ptr + offs_m[:, None] * stride_out_m + offs_n[None, :], z.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gelu_bwd_kernel(
    dout_ptr,
    pre_ptr,
    dz_ptr,
    M,
    N,
    stride_dout_m,
    stride_pre_m,
    stride_dz_m,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    offs_m = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
    dout = tl.load(dout_ptr + offs_m[:, None] * stride_dout_m + offs_n[None, :], mask=mask, other=0.0)
    z = tl.load(pre_ptr + offs_m[:, None] * stride_pre_m + offs_n[None, :], mask=mask, other=0.0).to(tl.float32)
    dz = dout.to(tl.float32) * _gelu_grad(z)
    tl.store(dz_ptr + offs_m[:, None] * stride_dz_m + offs_n[None, :], dz.to(dz_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------------------------------
# Launchers (no autograd): each public launcher checks its arguments once, then calls its `_launch_*`
# ----------------------------------------------------------------------------------------------------------------------
def _check_activation(activation: object) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"{_OP}: activation must be one of {ACTIVATIONS}, got {activation!r}")


def _out_dtype(compute: torch.dtype, residual: torch.Tensor | None) -> torch.dtype:
    """out's dtype: that of `F.linear(x, weight, bias) + residual`."""
    return compute if residual is None else torch.promote_types(compute, residual.dtype)


def _check_inputs(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor | None
) -> tuple[int, int, int]:
    """Check the (M, K) x, (N, K) weight, (N,) bias and (M, N) residual of one linear; returns (M, N, K)."""
    x = check_tensor(_OP, "x", x, ndim=2)
    M, K = x.shape
    N = check_tensor(_OP, "weight", weight, ndim=2).shape[0]
    check_matrix(_OP, "weight", weight, (N, K), x, unit_col_stride=False)
    check_same(_OP, "x", x, weight=weight)
    if bias is not None:
        check_same(_OP, "x", x, bias=check_tensor(_OP, "bias", bias, ndim=1))
        if bias.shape[0] != N or (N > 1 and bias.stride(0) != 1):
            raise ValueError(f"{_OP}: bias must be contiguous of shape ({N},), got {tuple(bias.shape)}")
    if residual is not None:
        check_matrix(_OP, "residual", residual, (M, N), x)
    return M, N, K


def _m_bucket(M: int) -> int:
    """The row count's tuning bucket: powers of 4 from 1024 to 65536 rows.

    M = batch * tokens changes with every batch size; keying the autotuner on M itself would re-tune each
    time, and ignoring it would keep the tiles picked for the first (maybe tiny) batch. Five buckets cover
    batch 1 to 512+ of DeiT (197 tokens: M = 197 ... 100k) with at most five tuning runs per weight shape.
    """
    bucket = 1024
    while bucket < M and bucket < 65536:
        bucket *= 4
    return bucket


def launch_linear_fwd(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None,
    activation: str | None,
    out: torch.Tensor,
    pre: torch.Tensor | None,
) -> None:
    """Triton matmul: write act(x @ weight.T + bias) + residual into `out`, and x @ weight.T + bias into `pre`.

    x: (M, K), any strides; weight: (N, K), any strides; bias: (N,) or None; residual, out, pre: (M, N) with unit
    stride along N; residual and pre may be None. All on x's device; weight, bias and pre in x's dtype, residual in
    any supported dtype, out in promote_types(x.dtype, residual.dtype) (x's dtype without a residual).
    """
    M, N, _ = _check_inputs(x, weight, bias, residual)
    check_matrix(_OP, "out", out, (M, N), x, dtype=_out_dtype(x.dtype, residual))
    if pre is not None:
        check_matrix(_OP, "pre", pre, (M, N), x, dtype=x.dtype)
    _check_activation(activation)
    _launch_linear_fwd(x, weight, bias, residual, activation, out, pre)


def _launch_linear_fwd(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None,
    activation: str | None,
    out: torch.Tensor,
    pre: torch.Tensor | None,
) -> None:
    (M, K), N = x.shape, weight.shape[0]
    if M == 0 or N == 0:
        return
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)
    _linear_kernel[grid](
        x,
        weight,
        out if bias is None else bias,  # not read without HAS_BIAS
        out if residual is None else residual,  # not read without HAS_RESIDUAL
        out,
        out if pre is None else pre,  # not written without SAVE_PRE
        M,
        N,
        K,
        x.stride(0),
        x.stride(1),
        weight.stride(0),
        weight.stride(1),
        0 if residual is None else residual.stride(0),
        out.stride(0),
        0 if pre is None else pre.stride(0),
        _m_bucket(M),
        HAS_BIAS=bias is not None,
        ACTIVATION=activation or "none",
        HAS_RESIDUAL=residual is not None,
        SAVE_PRE=pre is not None,
        DOT_PRECISION=dot_precision(x.dtype),
    )


def launch_linear_epilogue(
    pre: torch.Tensor, residual: torch.Tensor | None, activation: str | None, out: torch.Tensor
) -> None:
    """Elementwise: write act(pre) + residual into `out`. pre, residual, out: (M, N), unit stride along N; residual in
    any supported dtype, out in promote_types(pre.dtype, residual.dtype) (pre's dtype without a residual)."""
    pre = check_tensor(_OP, "pre", pre, ndim=2)
    M, N = pre.shape
    check_matrix(_OP, "pre", pre, (M, N), pre, "pre")
    if residual is not None:
        check_matrix(_OP, "residual", residual, (M, N), pre, "pre")
    check_matrix(_OP, "out", out, (M, N), pre, "pre", dtype=_out_dtype(pre.dtype, residual))
    _check_activation(activation)
    _launch_linear_epilogue(pre, residual, activation, out)


def _launch_linear_epilogue(
    pre: torch.Tensor, residual: torch.Tensor | None, activation: str | None, out: torch.Tensor
) -> None:
    M, N = pre.shape
    if M == 0 or N == 0:
        return
    _linear_epilogue_kernel[(triton.cdiv(M, _EW_BLOCK_M), triton.cdiv(N, _EW_BLOCK_N))](
        pre,
        pre if residual is None else residual,  # not read without HAS_RESIDUAL
        out,
        M,
        N,
        pre.stride(0),
        0 if residual is None else residual.stride(0),
        out.stride(0),
        ACTIVATION=activation or "none",
        HAS_RESIDUAL=residual is not None,
        BLOCK_M=_EW_BLOCK_M,
        BLOCK_N=_EW_BLOCK_N,
    )


def launch_gelu_bwd(dout: torch.Tensor, pre: torch.Tensor, dz: torch.Tensor) -> None:
    """Elementwise: write dz = dout * GELU'(pre). dout, pre, dz: (M, N), unit stride along N; dz in pre's dtype (the
    compute dtype), dout in any supported dtype (out's, which a residual in another dtype may have promoted)."""
    pre = check_tensor(_OP, "pre", pre, ndim=2)
    M, N = pre.shape
    check_matrix(_OP, "dout", dout, (M, N), pre, "pre")
    check_matrix(_OP, "pre", pre, (M, N), pre, "pre")
    check_matrix(_OP, "dz", dz, (M, N), pre, "pre", dtype=pre.dtype)
    _launch_gelu_bwd(dout, pre, dz)


def _launch_gelu_bwd(dout: torch.Tensor, pre: torch.Tensor, dz: torch.Tensor) -> None:
    M, N = pre.shape
    if M == 0 or N == 0:
        return
    _gelu_bwd_kernel[(triton.cdiv(M, _EW_BLOCK_M), triton.cdiv(N, _EW_BLOCK_N))](
        dout,
        pre,
        dz,
        M,
        N,
        dout.stride(0),
        pre.stride(0),
        dz.stride(0),
        BLOCK_M=_EW_BLOCK_M,
        BLOCK_N=_EW_BLOCK_N,
    )


# ----------------------------------------------------------------------------------------------------------------------
# Reference
# ----------------------------------------------------------------------------------------------------------------------
def linear_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """Plain torch `linear`: F.linear and F.gelu (exact erf) in x's dtype, then the residual add with torch's type
    promotion."""
    _check_activation(activation)
    out = F.linear(x, weight, bias)
    if activation == "gelu":
        out = F.gelu(out)
    return out if residual is None else out + residual


# ----------------------------------------------------------------------------------------------------------------------
# Custom ops: each checks its inputs once, then calls the `_launch_*` functions
# ----------------------------------------------------------------------------------------------------------------------
def _rows(t: torch.Tensor, width: int) -> torch.Tensor:
    """`t` (..., width) as (rows, width) with unit stride along width; copies only when it must."""
    rows = t.reshape(-1, width)
    return rows if rows.stride(1) == 1 else rows.contiguous()


def _check_op_inputs(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor | None, activation: object
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Check the op's x (..., K), weight, bias, residual (..., N) and activation; returns x and the residual as rows."""
    if check_tensor(_OP, "x", x).dim() == 0:
        raise ValueError(f"{_OP}: x must have at least one dim (..., K), got a 0-D tensor")
    N, K = check_tensor(_OP, "weight", weight, ndim=2).shape
    if x.shape[-1] != K:
        raise ValueError(f"{_OP}: x's last dim must equal weight.shape[1] = {K}, got x of shape {tuple(x.shape)}")
    out_shape = (*x.shape[:-1], N)
    if residual is not None and tuple(check_tensor(_OP, "residual", residual).shape) != out_shape:
        raise ValueError(f"{_OP}: residual must have shape {out_shape}, got {tuple(residual.shape)}")
    _check_activation(activation)
    x_rows = x.reshape(-1, K)
    residual_rows = None if residual is None else _rows(residual, N)
    _check_inputs(x_rows, weight, bias, residual_rows)
    return x_rows, residual_rows


@torch.library.custom_op("fastdeit::linear_fwd", mutates_args=())
def _linear_fwd_op(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None,
    activation: str | None,
    save_pre: bool,
    kind: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, pre): out (..., N); pre (..., N) = x @ weight.T + bias when save_pre and activation == "gelu", else empty.

    pre is what the GELU backward needs; saving it (one extra write in the forward) is chosen over recomputing
    it in the backward, which would cost a full extra matmul. It matches what eager nn.Linear + nn.GELU keep.
    """
    x_rows, residual_rows = _check_op_inputs(x, weight, bias, residual, activation)
    (M, _), N = x_rows.shape, weight.shape[0]
    out = torch.empty((*x.shape[:-1], N), dtype=_out_dtype(x.dtype, residual), device=x.device)
    keep_pre = save_pre and activation == "gelu"
    pre = torch.empty(out.shape, dtype=x.dtype, device=x.device) if keep_pre else x.new_empty(0)
    out_rows, pre_rows = out.view(M, N), pre.view(M, N) if keep_pre else None
    if path_for(kind, x.dtype, M, x.device) == "triton":
        _launch_linear_fwd(x_rows, weight, bias, residual_rows, activation, out_rows, pre_rows)
        return out, pre
    if activation is None and residual is None:
        pre_rows = out_rows  # cuBLAS writes the result itself
    elif pre_rows is None:
        pre_rows = torch.empty(M, N, dtype=x.dtype, device=x.device)
    if bias is None:
        torch.mm(x_rows, weight.t(), out=pre_rows)
    else:
        torch.addmm(bias, x_rows, weight.t(), out=pre_rows)
    if pre_rows is not out_rows:
        _launch_linear_epilogue(pre_rows, residual_rows, activation, out_rows)
    return out, pre


def _check_gelu_bwd_inputs(dout: torch.Tensor, pre: torch.Tensor) -> None:
    check_tensor(_OP, "dout", dout)
    if dout.shape != check_tensor(_OP, "pre", pre).shape:
        raise ValueError(f"{_OP}: dout and pre must have one shape, got {tuple(dout.shape)} and {tuple(pre.shape)}")
    if dout.device != pre.device:
        raise ValueError(f"{_OP}: dout is on {dout.device} but pre is on {pre.device}")


@torch.library.custom_op("fastdeit::linear_gelu_bwd", mutates_args=())
def _gelu_bwd_op(dout: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
    """dz (..., N) = dout * GELU'(pre) in pre's dtype; dout, pre: (..., N)."""
    _check_gelu_bwd_inputs(dout, pre)
    N = dout.shape[-1]
    dz = torch.empty(pre.shape, dtype=pre.dtype, device=pre.device)
    _launch_gelu_bwd(_rows(dout, N), _rows(pre, N), dz.view(-1, N))
    return dz


# ----------------------------------------------------------------------------------------------------------------------
# Fake (shape-only) implementations, for torch.compile
# ----------------------------------------------------------------------------------------------------------------------
@_linear_fwd_op.register_fake
def _(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None,
    activation: str | None,
    save_pre: bool,
    kind: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    out_shape = (*x.shape[:-1], weight.shape[0])
    pre = x.new_empty(out_shape) if save_pre and activation == "gelu" else x.new_empty(0)
    return x.new_empty(out_shape, dtype=_out_dtype(x.dtype, residual)), pre


@_gelu_bwd_op.register_fake
def _(dout: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(pre, memory_format=torch.contiguous_format)


# ----------------------------------------------------------------------------------------------------------------------
# Autograd
# ----------------------------------------------------------------------------------------------------------------------
def _setup_context(ctx: FunctionCtx, inputs: tuple, output: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, weight, bias, residual, activation, _save_pre, _kind = inputs
    _out, pre = output
    ctx.save_for_backward(x, weight, pre)
    ctx.activation = activation
    ctx.bias_dtype = None if bias is None else bias.dtype
    ctx.residual_dtype = None if residual is None else residual.dtype
    ctx.mark_non_differentiable(pre)
    ctx.set_materialize_grads(False)


def _backward(ctx: FunctionCtx, dout: torch.Tensor | None, _dpre: torch.Tensor | None) -> tuple:
    x, weight, pre = ctx.saved_tensors
    needs_x, needs_weight, needs_bias, needs_residual = ctx.needs_input_grad[:4]
    dx = dweight = dbias = None
    if dout is not None and (needs_x or needs_weight or needs_bias):
        if ctx.activation == "gelu":
            if pre.shape != dout.shape:
                raise RuntimeError(f"{_OP}: backward through GELU needs the forward to run with save_pre=True")
            dz = torch.ops.fastdeit.linear_gelu_bwd(dout, pre)
        else:
            dz = dout.to(x.dtype)  # out may have a residual's wider dtype; the matmuls run in the compute dtype
        dz_rows = dz.reshape(-1, weight.shape[0])
        if needs_x:
            dx = (dz_rows @ weight).reshape(x.shape)
        if needs_weight:
            dweight = dz_rows.t() @ x.reshape(-1, weight.shape[1])
        if needs_bias:
            dbias = dz_rows.sum(0, dtype=torch.float32).to(ctx.bias_dtype)
    dresidual = dout.to(ctx.residual_dtype) if needs_residual and dout is not None else None
    return dx, dweight, dbias, dresidual, None, None, None


_linear_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------------------------------
# Public function
# ----------------------------------------------------------------------------------------------------------------------
def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    residual: torch.Tensor | None = None,
    kind: str | None = None,
) -> torch.Tensor:
    """out = act(x @ weight.T + bias) + residual: one fused Triton kernel, or cuBLAS and an epilogue kernel, as the
    linear policy (`fastdeit.kernels.linear_policy`) says for this kind of layer, dtype and size.

    Args:
        x: (..., K), fp32, fp16 or bf16; any strides. Its dtype is the compute dtype.
        weight: (N, K) (nn.Linear layout), x's dtype.
        bias: (N,) in x's dtype, or None.
        activation: None or "gelu" (exact erf GELU, as nn.GELU()).
        residual: (..., N) in any of x's supported dtypes (e.g. the fp32 residual stream with bf16 x), or None;
            added in fp32 after the activation.
        kind: which DeiT layer this is, for the policy: "qkv", "proj", "fc1" or "fc2". Default: "fc1" with a GELU,
            "fc2" with a residual, else "qkv".

    Returns:
        out (..., N), accumulated in fp32, in x's dtype, or with a residual in torch.promote_types(x.dtype,
        residual.dtype) as `F.linear(x, weight, bias) + residual` would be. Differentiable in x, weight, bias and
        residual, each grad in its input's dtype.
    """
    if kind is None:
        kind = "fc1" if activation == "gelu" else "fc2" if residual is not None else "qkv"
    elif kind not in OP_KINDS:
        raise ValueError(f"{_OP}: kind must be None or one of {OP_KINDS}, got {kind!r}")
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))
    out, _pre = torch.ops.fastdeit.linear_fwd(x, weight, bias, residual, activation, needs_grad, kind)
    return out
