"""Tests for kernels/layer_norm.py: forward and backward against an fp64 reference, launchers, errors, registration.

Pass rule for every output and gradient: the error of the op against the fp64 reference (`layer_norm_ref` on
upcast inputs) is at most twice the error of `layer_norm_ref` run in the same dtypes, plus a small atol for the dtype
the value is stored in (mixed-dtype calls store an fp32 s next to an fp16 dx, etc.).
"""

import pytest
import torch
from fastdeit.kernels.layer_norm import (
    launch_layer_norm_bwd,
    launch_layer_norm_fwd,
    layer_norm,
    layer_norm_ref,
)

from tests.helpers import (
    FLOAT_DTYPES,
    assert_compile_matches_eager,
    assert_within_2x,
)

EPS = 1e-6


def _run(fn, inputs: dict, grads: list[torch.Tensor]) -> tuple[list[torch.Tensor], dict]:
    """Call fn(**inputs) on fresh leaf copies; returns the outputs and the grads of sum(out * grad) per input."""
    leaves = {k: None if v is None else v.detach().clone().requires_grad_() for k, v in inputs.items()}
    outs = fn(**leaves)
    outs = list(outs) if isinstance(outs, tuple) else [outs]
    loss = sum((o.double() * g.double()).sum() for o, g in zip(outs, grads, strict=True))
    tensors = {k: v for k, v in leaves.items() if v is not None}
    dinputs = dict(zip(tensors, torch.autograd.grad(loss, list(tensors.values())), strict=True))
    return [o.detach() for o in outs], dinputs


def _check_against_ref(x, weight, bias, residual, out_grads=None, out_dtype=None) -> None:
    """Forward and backward of layer_norm vs the fp64 reference, both judged by the same-dtype torch error."""
    inputs = dict(x=x, weight=weight, bias=bias, residual=residual)
    if out_grads is None:
        out_grads = [torch.randn(x.shape, dtype=x.dtype, device=x.device) for _ in range(1 + (residual is not None))]
    exact_inputs = {k: None if v is None else v.double() for k, v in inputs.items()}
    ours, dours = _run(lambda **kw: layer_norm(eps=EPS, out_dtype=out_dtype, **kw), inputs, out_grads)
    same, dsame = _run(lambda **kw: layer_norm_ref(eps=EPS, out_dtype=out_dtype, **kw), inputs, out_grads)
    exact, dexact = _run(lambda **kw: layer_norm_ref(eps=EPS, **kw), exact_inputs, out_grads)
    for name, o, s, e in zip(("y", "s"), ours, same, exact, strict=False):
        assert_within_2x(name, o, s, e)
    for name in dexact:
        assert_within_2x(f"d{name}", dours[name], dsame[name], dexact[name])
    if residual is not None:
        # One fp32 gradient, stored once in each input's dtype: equal once both are rounded to the narrower dtype.
        dx, dresidual = dours["x"], dours["residual"]
        narrow = min(dx.dtype, dresidual.dtype, key=lambda d: d.itemsize)
        assert torch.equal(dx.to(narrow), dresidual.to(narrow))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("shape", [(1, 100), (2, 197, 192), (1, 198, 768), (3, 7, 1023)])
def test_matches_reference(device, dtype, with_residual, shape):
    C = shape[-1]
    x = torch.randn(shape, dtype=dtype, device=device)
    weight = 1 + 0.5 * torch.randn(C, dtype=dtype, device=device)
    bias = torch.randn(C, dtype=dtype, device=device)
    residual = torch.randn(shape, dtype=dtype, device=device) if with_residual else None
    _check_against_ref(x, weight, bias, residual)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_no_bias_fp32_params_and_offset_input(device, dtype):
    """fp32 weight with low-precision activations, no bias, and rows with a large mean (the variance stays exact)."""
    x = 50 + torch.randn(2, 33, 96, dtype=dtype, device=device)
    weight = torch.randn(96, device=device)
    _check_against_ref(x, weight, None, None)


F16, F32 = torch.float16, torch.float32


@pytest.mark.parametrize(
    "x_dtype, residual_dtype, out_dtype",
    [
        (F16, F32, None),  # a low-precision branch added to the fp32 residual stream: s, y fp32
        (F32, F16, None),  # the reverse; still promotes to fp32
        (F16, F32, F32),  # norm2 under CUDA autocast
        (F16, None, F32),  # norm1 under CUDA autocast on a low-precision input
        (F32, F32, F16),  # y narrower than s
        pytest.param(torch.bfloat16, F32, F32, marks=pytest.mark.gpu),
    ],
)
def test_mixed_dtypes(device, x_dtype, residual_dtype, out_dtype):
    """fp32 parameters (as under autocast) with inputs and outputs in different dtypes."""
    shape, C = (3, 37, 100), 100
    x = torch.randn(shape, dtype=x_dtype, device=device)
    residual = None if residual_dtype is None else torch.randn(shape, dtype=residual_dtype, device=device)
    weight, bias = 1 + 0.5 * torch.randn(C, device=device), torch.randn(C, device=device)
    _check_against_ref(x, weight, bias, residual, out_dtype=out_dtype)


def test_non_contiguous_inputs_and_grads(device):
    B, N, C = 2, 37, 100
    # (N, B, C) -> (B, N, C): rows are not one stride apart, the op copies. A slice of a wider tensor: row stride 2C.
    x = torch.randn(N, B, C, device=device).transpose(0, 1)
    residual = torch.randn(B, N, 2 * C, device=device)[..., :C]
    grads = [torch.randn(N, B, C, device=device).transpose(0, 1), torch.randn(B, N, 2 * C, device=device)[..., C:]]
    assert not x.is_contiguous() and not residual.is_contiguous()
    weight, bias = torch.randn(C, device=device), torch.randn(C, device=device)
    _check_against_ref(x, weight, bias, residual, grads)
    _check_against_ref(residual, weight, bias, None, grads[1:])


def test_only_s_used_downstream(device):
    """No grad reaches y: dx = dresidual = ds, dweight = dbias = 0."""
    x, residual = torch.randn(2, 5, 64, device=device, requires_grad=True), torch.randn(2, 5, 64, device=device)
    weight, bias = torch.randn(64, device=device, requires_grad=True), torch.randn(64, device=device)
    _y, s = layer_norm(x, weight, bias, EPS, residual)
    ds = torch.randn_like(s)
    dx, dweight = torch.autograd.grad(s, (x, weight), ds)
    torch.testing.assert_close(dx, ds)
    assert torch.equal(dweight, torch.zeros_like(dweight))


@pytest.mark.parametrize("shape", [(0, 64), (2, 0, 64)])
def test_zero_rows(device, shape):
    x = torch.randn(shape, device=device, requires_grad=True)
    residual = torch.randn(shape, device=device)
    weight = torch.randn(64, device=device, requires_grad=True)
    y, s = layer_norm(x, weight, None, EPS, residual)
    assert y.shape == s.shape == shape
    (dweight,) = torch.autograd.grad(y.sum(), weight)
    assert torch.equal(dweight, torch.zeros(64, device=device))


@pytest.mark.parametrize(
    "x_dtype, residual_dtype, y_dtype",
    [(F32, None, F32), (F32, F32, F32), (F16, F32, F16)],  # the last: every output in a dtype other than its input's
)
def test_launchers_write_every_element(device, x_dtype, residual_dtype, y_dtype):
    """Outputs and partial sums prefilled with NaN; more programs than row tiles, so some programs get no rows."""
    M, C = 45, 130
    x = torch.randn(M, C, device=device, dtype=x_dtype)
    with_residual = residual_dtype is not None
    residual = torch.randn(M, C, device=device, dtype=residual_dtype) if with_residual else None
    weight, bias = torch.randn(C, device=device), torch.randn(C, device=device)
    nan = lambda *shape, dtype=F32: torch.full(shape, float("nan"), device=device, dtype=dtype)
    y, mean, rstd = nan(M, C, dtype=y_dtype), nan(M), nan(M)
    s = nan(M, C, dtype=torch.promote_types(x_dtype, residual_dtype)) if with_residual else None
    launch_layer_norm_fwd(x, weight, bias, residual, EPS, y, s, mean, rstd)
    s_ref = x if residual is None else x + residual
    torch.testing.assert_close(y, layer_norm_ref(s_ref, weight, bias, EPS, out_dtype=y_dtype))
    if with_residual:
        torch.testing.assert_close(s, s_ref)
    s32 = s_ref.float()
    torch.testing.assert_close(mean, s32.mean(-1))
    torch.testing.assert_close(rstd, torch.rsqrt(s32.var(-1, unbiased=False) + EPS))

    dy = torch.randn(M, C, device=device, dtype=y_dtype)
    xhat = (s32 - mean[:, None]) * rstd[:, None]
    for n_programs in (3, 64):
        dx, dweight_partial, dbias_partial = nan(M, C, dtype=x_dtype), nan(n_programs, C), nan(n_programs, C)
        dresidual = nan(M, C, dtype=residual_dtype) if with_residual and residual_dtype != x_dtype else None
        launch_layer_norm_bwd(dy, None, s_ref, weight, mean, rstd, dx, dweight_partial, dbias_partial, dresidual)
        assert not dx.isnan().any()
        if dresidual is not None:
            torch.testing.assert_close(dresidual.to(x_dtype), dx, atol=0, rtol=0)
        torch.testing.assert_close(dweight_partial.sum(0), (dy.float() * xhat).sum(0))
        torch.testing.assert_close(dbias_partial.sum(0), dy.float().sum(0))


def test_errors(device):
    x = torch.randn(4, 8, device=device)
    weight, bias = torch.randn(8, device=device), torch.randn(8, device=device)
    with pytest.raises(ValueError, match=r"weight must have shape \(8,\), got \(7,\)"):
        layer_norm(x, weight[:7], bias)
    with pytest.raises(ValueError, match=r"bias must have shape \(8,\), got \(4,\)"):
        layer_norm(x, weight, bias[:4])
    with pytest.raises(TypeError, match="x must have dtype in .*, got torch.int64"):
        layer_norm(x.long(), weight, bias)
    with pytest.raises(TypeError, match="residual must have dtype in .*, got torch.int32"):
        layer_norm(x, weight, bias, residual=x.int())
    with pytest.raises(TypeError, match="out_dtype must be None or one of .*, got torch.float64"):
        layer_norm(x, weight, bias, out_dtype=torch.float64)
    with pytest.raises(TypeError, match="bias has dtype torch.float16 but weight has dtype torch.float32"):
        layer_norm(x, weight, bias.half())
    with pytest.raises(ValueError, match=r"residual must have the shape of x, \(4, 8\), got \(4, 4\)"):
        layer_norm(x, weight, bias, residual=x[:, :4])
    with pytest.raises(ValueError, match="x must have at least one dim"):
        layer_norm(x[0, 0], weight[:1], bias[:1])
    y, mean, rstd = torch.empty_like(x), torch.empty(4, device=device), torch.empty(4, device=device)
    with pytest.raises(TypeError, match="s must have dtype torch.float32, got torch.float16"):
        launch_layer_norm_fwd(x, weight, bias, x.half(), EPS, y, y.half(), mean, rstd)
    with pytest.raises(TypeError, match="y must have dtype in .*, got torch.float64"):
        launch_layer_norm_fwd(x, weight, bias, None, EPS, y.double(), None, mean, rstd)
    with pytest.raises(ValueError, match="an output tensor s"):
        launch_layer_norm_fwd(x, weight, bias, x, EPS, y, None, mean, rstd)
    with pytest.raises(ValueError, match="y must have unit stride"):
        launch_layer_norm_fwd(x, weight, bias, None, EPS, torch.empty(8, 4, device=device).t(), None, mean, rstd)
    with pytest.raises(TypeError, match="mean must have dtype"):
        launch_layer_norm_fwd(x, weight, bias, None, EPS, y, None, mean.double(), rstd)
    with pytest.raises(ValueError, match="x is on meta"):
        launch_layer_norm_fwd(x.to("meta"), weight, bias, None, EPS, y, None, mean, rstd)
    if device == "cuda":
        with pytest.raises(ValueError, match="weight (must be on cuda|is on cpu)"):
            layer_norm(x, weight.cpu(), bias)


def test_opcheck(device):
    x = torch.randn(2, 5, 48, device=device, requires_grad=True)
    residual = torch.randn(2, 5, 48, device=device, requires_grad=True)
    weight = torch.randn(48, device=device, requires_grad=True)
    bias = torch.randn(48, device=device, requires_grad=True)
    fwd = torch.ops.fastdeit.layer_norm_fwd.default
    torch.library.opcheck(fwd, (x, weight, bias, residual, EPS, None))
    torch.library.opcheck(fwd, (x, weight, None, None, EPS, None))
    # Mixed dtypes: the fake impl must give s fp32 (promoted) and y in out_dtype; the backward a grad per dtype.
    x16 = x.detach().half().requires_grad_()
    torch.library.opcheck(fwd, (x16, weight, bias, residual, EPS, torch.float16))
    # The backward op has no autograd formula of its own (no double backward): plain tensors.
    _y, s, mean, rstd = torch.ops.fastdeit.layer_norm_fwd(x, weight, bias, residual, EPS, None)
    dy, ds = torch.randn_like(s), torch.randn_like(s)
    bwd_args = (dy, ds, s.detach(), weight.detach(), mean, rstd, torch.float32, None)
    torch.library.opcheck(torch.ops.fastdeit.layer_norm_bwd.default, bwd_args)
    bwd_args = (dy.half(), ds, s.detach(), weight.detach(), mean, rstd, torch.float16, torch.float32)
    torch.library.opcheck(torch.ops.fastdeit.layer_norm_bwd.default, bwd_args)


def test_torch_compile_fullgraph(device):
    def block(x, residual, weight, bias):
        y, s = layer_norm(x, weight, bias, EPS, residual)
        return y.float().square().sum() + s.sin().sum()

    inputs = [torch.randn(2, 9, 64, device=device), torch.randn(2, 9, 64, device=device)]
    inputs += [torch.randn(64, device=device), torch.randn(64, device=device)]
    assert_compile_matches_eager(block, inputs)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("with_residual", [False, True])
def test_deit_base(with_residual, dtype):
    """DeiT-B rows (256 images x 198 tokens x 768) in bf16 and fp16, forward and backward, against the fp32
    reference."""
    shape, C, device = (256, 198, 768), 768, "cuda"
    x = torch.randn(shape, dtype=dtype, device=device)
    weight = (1 + 0.5 * torch.randn(C, device=device)).to(dtype)
    bias = torch.randn(C, dtype=dtype, device=device)
    residual = torch.randn(shape, dtype=dtype, device=device) if with_residual else None
    inputs = dict(x=x, weight=weight, bias=bias, residual=residual)
    grads = [torch.randn(shape, dtype=dtype, device=device) for _ in range(1 + with_residual)]
    ours, dours = _run(lambda **kw: layer_norm(eps=EPS, **kw), inputs, grads)
    same, dsame = _run(lambda **kw: layer_norm_ref(eps=EPS, **kw), inputs, grads)
    fp32_inputs = {k: None if v is None else v.float() for k, v in inputs.items()}
    ref, dref = _run(lambda **kw: layer_norm_ref(eps=EPS, **kw), fp32_inputs, grads)
    for name, o, s, r in zip(("y", "s"), ours, same, ref, strict=False):
        assert_within_2x(name, o, s, r)
    for name in dref:
        assert_within_2x(f"d{name}", dours[name], dsame[name], dref[name])
