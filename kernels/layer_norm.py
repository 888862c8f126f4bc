"""LayerNorm over the last dim, with an optional fused residual add (the pre-norm transformer pattern).

Forward, per row of C values, statistics in fp32:
    s    = x + residual                        (with a residual: added in fp32, rounded to s's dtype and returned;
                                                else s = x)
    mean = sum(s) / C
    rstd = 1 / sqrt(sum((s - mean)^2) / C + eps)
    xhat = (s - mean) * rstd
    y    = xhat * weight + bias                (stored in out_dtype, by default s's dtype)
Backward, with dy the grad of y and ds the grad of the returned s (none without a residual):
    g        = dy * weight
    dx       = rstd * (g - mean(g) - xhat * mean(g * xhat)) + ds      (= dresidual)
    dweight  = sum over rows of dy * xhat
    dbias    = sum over rows of dy
dweight and dbias: each backward program walks a strided set of row tiles, accumulates its share in fp32
registers, writes one partial row; the few hundred partial rows are then summed by torch.

Dtypes follow torch's type promotion, so mixed precision keeps an fp32 residual stream: x and residual may differ
(e.g. a bf16 branch output added to the fp32 stream), s has dtype promote_types(x, residual) like `x + residual`,
weight/bias may be fp32 under low-precision x, and y may be asked for in another dtype (fp32, as torch's CUDA
autocast runs layer_norm). dx and dresidual are the same fp32 values stored once in each input's dtype.

Rows are processed in tiles of BLOCK_ROWS x BLOCK_C (about 4096 elements) so narrow rows (C = 192, 384, 768)
still give each program enough work. Inputs are read through their row stride; a tensor whose rows cannot be
viewed with a unit stride along C (e.g. a transposed (N, B, C) -> (B, N, C) tensor) is copied once by
`.contiguous()` in the op.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch.autograd.function import FunctionCtx

from ._utils import SUPPORTED_DTYPES, check_matrix, check_same, check_tensor

_OP = "layer_norm"
# Tile size target in elements, and the widest row a single tile may hold.
_TILE_ELEMS = 4096
_MAX_C = 65536


# ----------------------------------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------------------------------
@triton.jit
def _layer_norm_fwd_kernel(
    x_ptr,
    residual_ptr,
    weight_ptr,
    bias_ptr,
    y_ptr,
    s_ptr,
    mean_ptr,
    rstd_ptr,
    n_rows,
    n_cols,
    stride_x_row,
    stride_residual_row,
    stride_y_row,
    stride_s_row,
    eps,
    HAS_RESIDUAL: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    cols = tl.arange(0, BLOCK_C)
    row_mask = rows < n_rows
    col_mask = cols < n_cols
    mask = row_mask[:, None] & col_mask[None, :]
    rows64 = rows.to(tl.int64)

    x = tl.load(x_ptr + rows64[:, None] * stride_x_row + cols[None, :], mask=mask, other=0.0)
    if HAS_RESIDUAL:
        residual = tl.load(residual_ptr + rows64[:, None] * stride_residual_row + cols[None, :], mask=mask, other=0.0)
        # Round the sum to s's dtype first: the normalised value is exactly the s that is returned and saved.
        s_out = (x.to(tl.float32) + residual.to(tl.float32)).to(s_ptr.dtype.element_ty)
        tl.store(s_ptr + rows64[:, None] * stride_s_row + cols[None, :], s_out, mask=mask)
        s = s_out.to(tl.float32)
    else:
        s = x.to(tl.float32)

    mean = tl.sum(s, axis=1) / n_cols
    centered = tl.where(mask, s - mean[:, None], 0.0)
    var = tl.sum(centered * centered, axis=1) / n_cols
    rstd = 1.0 / tl.sqrt(var + eps)
    tl.store(mean_ptr + rows, mean, mask=row_mask)
    tl.store(rstd_ptr + rows, rstd, mask=row_mask)

    weight = tl.load(weight_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    y = centered * rstd[:, None] * weight[None, :]
    if HAS_BIAS:
        y += tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + rows64[:, None] * stride_y_row + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _layer_norm_bwd_kernel(
    dy_ptr,
    ds_ptr,
    s_ptr,
    weight_ptr,
    mean_ptr,
    rstd_ptr,
    dx_ptr,
    dresidual_ptr,
    dweight_partial_ptr,
    dbias_partial_ptr,
    n_rows,
    n_cols,
    stride_dy_row,
    stride_ds_row,
    stride_s_row,
    stride_dx_row,
    stride_dresidual_row,
    HAS_DS: tl.constexpr,
    HAS_DRESIDUAL: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_C)
    col_mask = cols < n_cols
    weight = tl.load(weight_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    dweight_acc = tl.zeros([BLOCK_C], dtype=tl.float32)
    dbias_acc = tl.zeros([BLOCK_C], dtype=tl.float32)

    for tile in range(pid, tl.cdiv(n_rows, BLOCK_ROWS), tl.num_programs(0)):
        rows = tile * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
        row_mask = rows < n_rows
        mask = row_mask[:, None] & col_mask[None, :]
        rows64 = rows.to(tl.int64)

        s = tl.load(s_ptr + rows64[:, None] * stride_s_row + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + rows64[:, None] * stride_dy_row + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(mean_ptr + rows, mask=row_mask, other=0.0)
        rstd = tl.load(rstd_ptr + rows, mask=row_mask, other=0.0)

        xhat = tl.where(mask, (s - mean[:, None]) * rstd[:, None], 0.0)
        g = dy * weight[None, :]
        mean_g = tl.sum(g, axis=1) / n_cols
        mean_g_xhat = tl.sum(g * xhat, axis=1) / n_cols
        dx = (g - mean_g[:, None] - xhat * mean_g_xhat[:, None]) * rstd[:, None]
        if HAS_DS:
            dx += tl.load(ds_ptr + rows64[:, None] * stride_ds_row + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        tl.store(dx_ptr + rows64[:, None] * stride_dx_row + cols[None, :], dx.to(dx_ptr.dtype.element_ty), mask=mask)
        if HAS_DRESIDUAL:
            dresidual = dx.to(dresidual_ptr.dtype.element_ty)
            tl.store(dresidual_ptr + rows64[:, None] * stride_dresidual_row + cols[None, :], dresidual, mask=mask)

        dweight_acc += tl.sum(dy * xhat, axis=0)
        dbias_acc += tl.sum(dy, axis=0)

    tl.store(dweight_partial_ptr + pid * n_cols + cols, dweight_acc, mask=col_mask)
    tl.store(dbias_partial_ptr + pid * n_cols + cols, dbias_acc, mask=col_mask)


# ----------------------------------------------------------------------------------------------------------------------
# Launchers (no autograd): each public launcher checks its arguments once, then calls its `_launch_*`
# ----------------------------------------------------------------------------------------------------------------------
def _check_vector(name: str, t: object, length: int, dtype: torch.dtype | None, device: torch.device) -> torch.Tensor:
    """A contiguous (length,) tensor on `device`, of `dtype` (or of any supported dtype when None)."""
    t = check_tensor(_OP, name, t, ndim=1) if dtype is None else check_tensor(_OP, name, t, ndim=1, dtypes=(dtype,))
    if t.shape[0] != length:
        raise ValueError(f"{_OP}: {name} must have shape ({length},), got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{_OP}: {name} must be on {device}, got {t.device}")
    if length > 1 and t.stride(0) != 1:
        raise ValueError(f"{_OP}: {name} must be contiguous, got stride {t.stride()}")
    return t


def _check_params(
    weight: object, bias: object, n_cols: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """weight (C,) and bias (C,) or None; both in one floating dtype, which may differ from x's."""
    weight = _check_vector("weight", weight, n_cols, None, device)
    if bias is not None:
        bias = _check_vector("bias", bias, n_cols, None, device)
        check_same(_OP, "weight", weight, bias=bias)
    return weight, bias


def _tile(n_cols: int) -> tuple[int, int, int]:
    """(BLOCK_ROWS, BLOCK_C, num_warps) for rows of n_cols values."""
    if n_cols > _MAX_C:
        raise ValueError(f"{_OP}: rows of up to {_MAX_C} values are supported, got C = {n_cols}")
    block_c = triton.next_power_of_2(n_cols)
    block_rows = max(1, _TILE_ELEMS // block_c)
    num_warps = min(16, max(1, block_rows * block_c // 512))
    return block_rows, block_c, num_warps


@functools.cache
def _bwd_programs(device: torch.device) -> int:
    """How many programs share the backward: a few per SM (none of it measured yet on a GPU); 4 on the CPU."""
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def _check_inputs(x: object, weight: object, bias: object, residual: object) -> None:
    """Check the (M, C) x and residual, unit stride along C, and the (C,) weight and bias of one LayerNorm."""
    x = check_tensor(_OP, "x", x, ndim=2)
    shape = tuple(x.shape)
    check_matrix(_OP, "x", x, shape, x)
    _check_params(weight, bias, shape[1], x.device)
    if residual is not None:
        check_matrix(_OP, "residual", residual, shape, x)
    if shape[1] == 0:
        raise ValueError(f"{_OP}: x must have at least one value per row, got shape {shape}")
    _tile(shape[1])


def launch_layer_norm_fwd(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None,
    eps: float,
    y: torch.Tensor,
    s: torch.Tensor | None,
    mean: torch.Tensor,
    rstd: torch.Tensor,
) -> None:
    """Write y = LN(s) with s = x (+ residual) into `y`, s into `s` (only with a residual), fp32 stats into mean/rstd.

    x, residual, y, s: (M, C), unit stride along C; weight, bias: (C,); mean, rstd: (M,) fp32. x, residual and y
    may each have any supported dtype; s must have promote_types(x.dtype, residual.dtype).
    """
    _check_inputs(x, weight, bias, residual)
    shape = n_rows, _ = tuple(x.shape)
    if residual is not None:
        if s is None:
            raise ValueError(f"{_OP}: with a residual, an output tensor s of shape {shape} is required")
        check_matrix(_OP, "s", s, shape, x, dtype=torch.promote_types(x.dtype, residual.dtype))
    elif s is not None:
        raise ValueError(f"{_OP}: s is written only with a residual; expected s=None, got a tensor")
    check_matrix(_OP, "y", y, shape, x)
    _check_vector("mean", mean, n_rows, torch.float32, x.device)
    _check_vector("rstd", rstd, n_rows, torch.float32, x.device)
    _launch_layer_norm_fwd(x, weight, bias, residual, eps, y, s, mean, rstd)


def _launch_layer_norm_fwd(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None,
    eps: float,
    y: torch.Tensor,
    s: torch.Tensor | None,
    mean: torch.Tensor,
    rstd: torch.Tensor,
) -> None:
    n_rows, n_cols = x.shape
    if n_rows == 0:
        return
    block_rows, block_c, num_warps = _tile(n_cols)
    _layer_norm_fwd_kernel[(triton.cdiv(n_rows, block_rows),)](
        x,
        x if residual is None else residual,  # not read without HAS_RESIDUAL
        weight,
        weight if bias is None else bias,  # not read without HAS_BIAS
        y,
        y if s is None else s,  # not written without HAS_RESIDUAL
        mean,
        rstd,
        n_rows,
        n_cols,
        x.stride(0),
        0 if residual is None else residual.stride(0),
        y.stride(0),
        0 if s is None else s.stride(0),
        eps,
        HAS_RESIDUAL=residual is not None,
        HAS_BIAS=bias is not None,
        BLOCK_ROWS=block_rows,
        BLOCK_C=block_c,
        num_warps=num_warps,
    )


def launch_layer_norm_bwd(
    dy: torch.Tensor,
    ds: torch.Tensor | None,
    s: torch.Tensor,
    weight: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    dx: torch.Tensor,
    dweight_partial: torch.Tensor,
    dbias_partial: torch.Tensor,
    dresidual: torch.Tensor | None = None,
) -> None:
    """Write dx (M, C) and per-program fp32 partial sums of dweight and dbias, each (P, C); dweight = partial.sum(0).

    dy, ds, s, dx, dresidual: (M, C), unit stride along C; weight: (C,); mean, rstd: (M,) fp32 from the forward.
    ds has s's dtype; dy, dx and dresidual any supported dtype. dresidual, if given, receives the same values as dx
    (the residual's grad, for a residual whose dtype differs from x's). P, the number of programs, is
    dweight_partial.shape[0] (at least 1); every partial row is written.
    """
    s = check_tensor(_OP, "s", s, ndim=2)
    shape = tuple(s.shape)
    n_rows, n_cols = shape
    s = check_matrix(_OP, "s", s, shape, s, "s")
    dy = check_matrix(_OP, "dy", dy, shape, s, "s")
    if ds is not None:
        ds = check_matrix(_OP, "ds", ds, shape, s, "s", dtype=s.dtype)
    dx = check_matrix(_OP, "dx", dx, shape, s, "s")
    if dresidual is not None:
        dresidual = check_matrix(_OP, "dresidual", dresidual, shape, s, "s")
    weight, _ = _check_params(weight, None, n_cols, s.device)
    mean = _check_vector("mean", mean, n_rows, torch.float32, s.device)
    rstd = _check_vector("rstd", rstd, n_rows, torch.float32, s.device)
    n_programs = check_tensor(_OP, "dweight_partial", dweight_partial, ndim=2).shape[0]
    if n_programs < 1:
        raise ValueError(f"{_OP}: dweight_partial must have at least one row, got shape {tuple(dweight_partial.shape)}")
    for name, partial in (("dweight_partial", dweight_partial), ("dbias_partial", dbias_partial)):
        partial = check_matrix(_OP, name, partial, (n_programs, n_cols), s, "s", dtype=torch.float32)
        if not partial.is_contiguous():
            raise ValueError(f"{_OP}: {name} must be contiguous, got strides {partial.stride()}")
    _tile(n_cols)
    _launch_layer_norm_bwd(dy, ds, s, weight, mean, rstd, dx, dweight_partial, dbias_partial, dresidual)


def _launch_layer_norm_bwd(
    dy: torch.Tensor,
    ds: torch.Tensor | None,
    s: torch.Tensor,
    weight: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    dx: torch.Tensor,
    dweight_partial: torch.Tensor,
    dbias_partial: torch.Tensor,
    dresidual: torch.Tensor | None,
) -> None:
    n_rows, n_cols = s.shape
    block_rows, block_c, num_warps = _tile(n_cols)
    _layer_norm_bwd_kernel[(dweight_partial.shape[0],)](
        dy,
        dy if ds is None else ds,  # not read without HAS_DS
        s,
        weight,
        mean,
        rstd,
        dx,
        dx if dresidual is None else dresidual,  # not written without HAS_DRESIDUAL
        dweight_partial,
        dbias_partial,
        n_rows,
        n_cols,
        dy.stride(0),
        0 if ds is None else ds.stride(0),
        s.stride(0),
        dx.stride(0),
        0 if dresidual is None else dresidual.stride(0),
        HAS_DS=ds is not None,
        HAS_DRESIDUAL=dresidual is not None,
        BLOCK_ROWS=block_rows,
        BLOCK_C=block_c,
        num_warps=num_warps,
    )


# ----------------------------------------------------------------------------------------------------------------------
# Reference
# ----------------------------------------------------------------------------------------------------------------------
def layer_norm_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    eps: float = 1e-6,
    residual: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Plain torch `layer_norm`: the add with torch's type promotion, the norm in at least fp32, y cast to out_dtype
    (default s's dtype)."""
    s = x if residual is None else x + residual
    compute = torch.promote_types(s.dtype, torch.float32)
    y = F.layer_norm(
        s.to(compute), (s.shape[-1],), weight.to(compute), None if bias is None else bias.to(compute), eps
    ).to(out_dtype or s.dtype)
    return y if residual is None else (y, s)


# ----------------------------------------------------------------------------------------------------------------------
# Custom ops: each checks its inputs once, then calls the `_launch_*` functions
# ----------------------------------------------------------------------------------------------------------------------
def _rows(name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`t`, shaped like `like` (..., C), as an (M, C) view with unit stride along C; copies only when it must."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{_OP}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.shape != like.shape:
        raise ValueError(f"{_OP}: {name} must have the shape of x, {tuple(like.shape)}, got {tuple(t.shape)}")
    rows = t.reshape(-1, t.shape[-1])
    return rows if rows.stride(1) == 1 else rows.contiguous()


def _output_dtypes(
    x: torch.Tensor, residual: torch.Tensor | None, out_dtype: torch.dtype | None
) -> tuple[torch.dtype, torch.dtype]:
    """(s's dtype, y's dtype): s as `x + residual` would be, y in out_dtype or else s's dtype."""
    s_dtype = x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)
    if out_dtype is not None and out_dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"{_OP}: out_dtype must be None or one of {[str(d) for d in SUPPORTED_DTYPES]}, got {out_dtype}"
        )
    return s_dtype, out_dtype or s_dtype


def _check_op_inputs(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None,
    out_dtype: torch.dtype | None,
) -> tuple[torch.Tensor, torch.Tensor | None, tuple[torch.dtype, torch.dtype]]:
    """Check the op's x (..., C) and the rest; returns x and the residual as (M, C) rows, and (s's, y's) dtypes."""
    if check_tensor(_OP, "x", x).dim() == 0:
        raise ValueError(f"{_OP}: x must have at least one dim (..., C), got a 0-D tensor")
    x_rows = _rows("x", x, x)
    residual_rows = None if residual is None else _rows("residual", residual, x)
    dtypes = _output_dtypes(x, residual, out_dtype)
    _check_inputs(x_rows, weight, bias, residual_rows)
    return x_rows, residual_rows, dtypes


@torch.library.custom_op("fastdeit::layer_norm_fwd", mutates_args=())
def _layer_norm_fwd_op(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None,
    eps: float,
    out_dtype: torch.dtype | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, s, mean, rstd); s is empty without a residual; mean, rstd: (M,) fp32 with M the number of rows."""
    x_rows, residual_rows, (s_dtype, y_dtype) = _check_op_inputs(x, weight, bias, residual, out_dtype)
    n_rows = x_rows.shape[0]
    y = torch.empty(x.shape, dtype=y_dtype, device=x.device)
    s = x.new_empty(0) if residual is None else torch.empty(x.shape, dtype=s_dtype, device=x.device)
    mean = torch.empty(n_rows, dtype=torch.float32, device=x.device)
    rstd = torch.empty(n_rows, dtype=torch.float32, device=x.device)
    s_rows = None if residual is None else s.view(x_rows.shape)
    _launch_layer_norm_fwd(x_rows, weight, bias, residual_rows, eps, y.view(x_rows.shape), s_rows, mean, rstd)
    return y, s, mean, rstd


@torch.library.custom_op("fastdeit::layer_norm_bwd", mutates_args=())
def _layer_norm_bwd_op(
    dy: torch.Tensor,
    ds: torch.Tensor | None,
    s: torch.Tensor,
    weight: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    dx_dtype: torch.dtype,
    dresidual_dtype: torch.dtype | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dresidual, dweight, dbias) for y = LN(s): dx (ds included) in dx_dtype; dresidual, the same values in
    dresidual_dtype, written only when that is given (else empty); dweight, dbias in weight's dtype. s, weight, mean
    and rstd are the forward's (checked there); dy and ds must have s's shape."""
    s_rows = _rows("s", s, s)
    n_rows, n_cols = s_rows.shape
    dx = torch.empty(s.shape, dtype=dx_dtype, device=s.device)
    dresidual = (
        s.new_empty(0) if dresidual_dtype is None else torch.empty(s.shape, dtype=dresidual_dtype, device=s.device)
    )
    n_programs = max(1, min(_bwd_programs(s.device), triton.cdiv(n_rows, _tile(n_cols)[0])))
    dweight_partial = torch.empty(n_programs, n_cols, dtype=torch.float32, device=s.device)
    dbias_partial = torch.empty(n_programs, n_cols, dtype=torch.float32, device=s.device)
    _launch_layer_norm_bwd(
        _rows("dy", dy, s),
        None if ds is None else _rows("ds", ds, s),
        s_rows,
        weight,
        mean,
        rstd,
        dx.view(s_rows.shape),
        dweight_partial,
        dbias_partial,
        None if dresidual_dtype is None else dresidual.view(s_rows.shape),
    )
    return dx, dresidual, dweight_partial.sum(0).to(weight.dtype), dbias_partial.sum(0).to(weight.dtype)


# ----------------------------------------------------------------------------------------------------------------------
# Fake (shape-only) implementations, for torch.compile
# ----------------------------------------------------------------------------------------------------------------------
@_layer_norm_fwd_op.register_fake
def _(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None,
    eps: float,
    out_dtype: torch.dtype | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    s_dtype, y_dtype = _output_dtypes(x, residual, out_dtype)
    n_rows = math.prod(x.shape[:-1])
    s = x.new_empty(0) if residual is None else x.new_empty(x.shape, dtype=s_dtype)
    return (
        x.new_empty(x.shape, dtype=y_dtype),
        s,
        x.new_empty(n_rows, dtype=torch.float32),
        x.new_empty(n_rows, dtype=torch.float32),
    )


@_layer_norm_bwd_op.register_fake
def _(
    dy: torch.Tensor,
    ds: torch.Tensor | None,
    s: torch.Tensor,
    weight: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    dx_dtype: torch.dtype,
    dresidual_dtype: torch.dtype | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        s.new_empty(s.shape, dtype=dx_dtype),
        s.new_empty(0) if dresidual_dtype is None else s.new_empty(s.shape, dtype=dresidual_dtype),
        torch.empty_like(weight),
        torch.empty_like(weight),
    )


# ----------------------------------------------------------------------------------------------------------------------
# Autograd
# ----------------------------------------------------------------------------------------------------------------------
def _setup_context(ctx: FunctionCtx, inputs: tuple, output: tuple[torch.Tensor, ...]) -> None:
    x, weight, bias, residual, _eps, _out_dtype = inputs
    _y, s, mean, rstd = output
    ctx.save_for_backward(x if residual is None else s, weight, mean, rstd)
    ctx.has_bias = bias is not None
    ctx.x_dtype = x.dtype
    ctx.residual_dtype = None if residual is None else residual.dtype
    ctx.mark_non_differentiable(mean, rstd)
    ctx.set_materialize_grads(False)


def _backward(
    ctx: FunctionCtx,
    dy: torch.Tensor | None,
    ds: torch.Tensor | None,
    _dmean: torch.Tensor | None,
    _drstd: torch.Tensor | None,
) -> tuple:
    s, weight, mean, rstd = ctx.saved_tensors
    has_residual = ctx.residual_dtype is not None
    if dy is None:
        dy = torch.zeros_like(s)  # only the s output was used downstream
    # x and residual get the same grad; a second copy is written only for a residual in another dtype.
    own_dresidual = has_residual and ctx.residual_dtype != ctx.x_dtype
    dresidual_dtype = ctx.residual_dtype if own_dresidual else None
    ds = ds if has_residual else None
    dx, dresidual, dweight, dbias = torch.ops.fastdeit.layer_norm_bwd(
        dy, ds, s, weight, mean, rstd, ctx.x_dtype, dresidual_dtype
    )
    if not own_dresidual:
        dresidual = dx if has_residual else None
    return dx, dweight, dbias if ctx.has_bias else None, dresidual, None, None


_layer_norm_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------------------------------
# Public function
# ----------------------------------------------------------------------------------------------------------------------
def layer_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    eps: float = 1e-6,
    residual: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """LayerNorm over the last dim of x, optionally after a fused residual add.

    Args:
        x: (..., C), fp32, fp16 or bf16; any strides.
        weight: (C,), a floating dtype (may differ from x's, e.g. fp32 params with bf16 activations).
        bias: (C,) in weight's dtype, or None.
        eps: added to the variance.
        residual: (..., C) like x, in any of x's supported dtypes (e.g. the fp32 residual stream with a bf16 x),
            or None.
        out_dtype: y's dtype; None for s's dtype (fp32 gives what torch's CUDA autocast returns for layer_norm).

    Returns:
        Without a residual, y (..., C) = LN(x). With one, (y, s): s (..., C) = x + residual, added in fp32 and
        stored in torch.promote_types(x.dtype, residual.dtype) (the dtype of `x + residual`), and y = LN(s).
        Statistics are fp32. Gradients flow to x, residual, weight and bias, each in its own dtype (and into both
        y and s when both are used downstream).
    """
    y, s, _mean, _rstd = torch.ops.fastdeit.layer_norm_fwd(x, weight, bias, residual, eps, out_dtype)
    return y if residual is None else (y, s)
