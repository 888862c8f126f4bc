"""Tests for kernels/linear.py: both forward paths against an fp64 reference, launchers, errors, registration.

Pass rule for every output and gradient: the error of the op against the fp64 reference (`linear_ref` on upcast
inputs) is at most twice the error of `linear_ref` run in the same dtypes, plus a small atol for the dtype the value is
stored in (with a residual in another dtype, out and dresidual are not in the compute dtype). fp32 `tl.dot` is
IEEE fp32 (no tf32) on the GPU and exact fp32 under the interpreter, so fp32 is held to the same rule.
"""

import pytest
import torch
from fastdeit.kernels.linear import (
    launch_gelu_bwd,
    launch_linear_epilogue,
    launch_linear_fwd,
    linear,
    linear_ref,
)
from fastdeit.kernels.linear_policy import forced_path

from tests.helpers import (
    FLOAT_DTYPES,
    assert_compile_matches_eager,
    assert_within_2x,
)


@pytest.fixture(params=["triton", "cublas"])
def path(request):
    """Run the test once through the fused Triton matmul and once through addmm + the Triton epilogue kernel."""
    with forced_path(request.param):
        yield request.param


def _run(fn, inputs: dict, grad: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Call fn(**inputs) on fresh leaf copies; returns the output and the grads of sum(out * grad) per input."""
    leaf = lambda v: v.detach().clone().requires_grad_() if isinstance(v, torch.Tensor) else v
    leaves = {k: leaf(v) for k, v in inputs.items()}
    out = fn(**leaves)
    tensors = {k: v for k, v in leaves.items() if isinstance(v, torch.Tensor)}
    dinputs = dict(zip(tensors, torch.autograd.grad(out, list(tensors.values()), grad), strict=True))
    return out.detach(), dinputs


def _check_against_ref(x, weight, bias, activation, residual, grad=None, reference_dtype=torch.float64) -> None:
    """Forward and backward of linear vs the reference in reference_dtype, judged by the same-dtype torch error."""
    inputs = dict(x=x, weight=weight, bias=bias, activation=activation, residual=residual)
    if grad is None:
        out_dtype = x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)
        grad = torch.randn(*x.shape[:-1], weight.shape[0], dtype=out_dtype, device=x.device)
    exact_inputs = {k: v.to(reference_dtype) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    ours, dours = _run(linear, inputs, grad)
    same, dsame = _run(linear_ref, inputs, grad)
    exact, dexact = _run(linear_ref, exact_inputs, grad.to(reference_dtype))
    assert_within_2x("out", ours, same, exact)
    for name in dexact:
        assert_within_2x(f"d{name}", dours[name], dsame[name], dexact[name])


CASES = [
    # x shape, N, activation, residual, bias
    ((1, 64), 32, "gelu", True, True),  # one row
    ((1, 197, 64), 130, "gelu", True, True),  # batch 1, 197 tokens, N not a multiple of the tile
    ((2, 99, 100), 96, None, True, False),  # 198 rows, odd K, no bias
    ((1, 198, 96), 48, "gelu", False, True),
    ((5, 1023), 33, None, False, True),  # odd wide K: many K tiles, the last one partial
]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("x_shape, N, activation, with_residual, with_bias", CASES)
def test_matches_reference(device, path, dtype, x_shape, N, activation, with_residual, with_bias):
    K = x_shape[-1]
    x = torch.randn(x_shape, dtype=dtype, device=device)
    weight = torch.randn(N, K, dtype=dtype, device=device) / K**0.5
    bias = torch.randn(N, dtype=dtype, device=device) if with_bias else None
    residual = torch.randn(*x_shape[:-1], N, dtype=dtype, device=device) if with_residual else None
    _check_against_ref(x, weight, bias, activation, residual)


F16, F32 = torch.float16, torch.float32


@pytest.mark.parametrize(
    "dtype, residual_dtype, activation",
    [
        (F16, F32, "gelu"),  # an fp16 branch added to the fp32 residual stream (autocast): out fp32
        (F16, F32, None),  # fc2 / proj under autocast
        (F32, F16, None),  # the reverse promotes to fp32 too; dresidual is rounded to fp16
        pytest.param(torch.bfloat16, F32, None, marks=pytest.mark.gpu),
    ],
)
def test_mixed_dtype_residual(device, path, dtype, residual_dtype, activation):
    x_shape, N = (2, 37, 48), 72
    K = x_shape[-1]
    x = torch.randn(x_shape, dtype=dtype, device=device)
    weight = torch.randn(N, K, dtype=dtype, device=device) / K**0.5
    bias = torch.randn(N, dtype=dtype, device=device)
    residual = torch.randn(*x_shape[:-1], N, dtype=residual_dtype, device=device)
    _check_against_ref(x, weight, bias, activation, residual)


def test_non_contiguous_inputs_and_grad(device, path):
    M, K, N = 67, 48, 80
    x_t = torch.randn(K, M, device=device).t()  # (M, K), unit stride along M: the kernel reads it through strides
    weight_t = torch.randn(K, N, device=device).t()  # (N, K), unit stride along N
    residual = torch.randn(M, 2 * N, device=device)[:, N:]  # row stride 2N
    grad = torch.randn(N, M, device=device).t()
    bias = torch.randn(N, device=device)
    _check_against_ref(x_t, weight_t, bias, "gelu", residual, grad)
    # (T, B, K) -> (B, T, K): no (M, K) view exists, the op copies x.
    x_bt = torch.randn(11, 3, K, device=device).transpose(0, 1)
    residual_bt = torch.randn(11, 3, N, device=device).transpose(0, 1)
    _check_against_ref(x_bt, weight_t, bias, None, residual_bt)


def test_grad_only_to_residual(device):
    """Under no grad for x, weight and bias the pre-activation is not saved; the residual still gets dout."""
    x, weight = torch.randn(5, 32, device=device), torch.randn(40, 32, device=device)
    residual = torch.randn(5, 40, device=device, requires_grad=True)
    out = linear(x, weight, None, "gelu", residual)
    grad = torch.randn_like(out)
    (dresidual,) = torch.autograd.grad(out, residual, grad)
    torch.testing.assert_close(dresidual, grad)


def test_pre_saved_only_when_needed(device):
    x, weight = torch.randn(5, 32, device=device), torch.randn(40, 32, device=device)
    _out, pre = torch.ops.fastdeit.linear_fwd(x, weight, None, None, "gelu", False, "fc1")
    assert pre.numel() == 0
    out, pre = torch.ops.fastdeit.linear_fwd(x, weight, None, None, "gelu", True, "fc1")
    torch.testing.assert_close(pre, x @ weight.t())
    torch.testing.assert_close(out, torch.nn.functional.gelu(pre))
    x.requires_grad_()
    out, _pre = torch.ops.fastdeit.linear_fwd(x, weight, None, None, "gelu", False, "fc1")
    with pytest.raises(RuntimeError, match="save_pre=True"):
        out.sum().backward()


def test_zero_rows(device, path):
    x = torch.randn(0, 7, 32, device=device, requires_grad=True)
    weight = torch.randn(40, 32, device=device, requires_grad=True)
    out = linear(x, weight, None, "gelu", torch.randn(0, 7, 40, device=device))
    assert out.shape == (0, 7, 40)
    dx, dweight = torch.autograd.grad(out.sum(), (x, weight))
    assert dx.shape == x.shape and torch.equal(dweight, torch.zeros_like(weight))


@pytest.mark.parametrize("activation, dtype", [(None, F32), ("gelu", F32), ("gelu", F16)])
def test_launchers_write_every_element(device, activation, dtype):
    """Outputs prefilled with NaN; M and N are not multiples of any tile size. In fp16 the residual, out and dout are
    fp32 (the autocast layout), while pre and dz stay in the compute dtype."""
    M, K, N = 70, 40, 100
    x, weight = torch.randn(M, K, device=device, dtype=dtype), torch.randn(N, K, device=device, dtype=dtype)
    bias, residual = torch.randn(N, device=device, dtype=dtype), torch.randn(M, N, device=device)
    nan = lambda dtype: torch.full((M, N), float("nan"), device=device, dtype=dtype)
    pre_ref = torch.addmm(bias, x, weight.t())
    out_ref = linear_ref(x, weight, bias, activation, residual)
    # fp16: ours adds the residual to the fp32 accumulator, torch to pre and GELU(pre) each rounded to fp16 (relative
    # error up to 2 x 2^-11 ~ 1e-3); 2e-3 is twice that.
    tol = {} if dtype == F32 else dict(atol=2e-3, rtol=2e-3)

    out, pre = nan(F32), nan(dtype)
    launch_linear_fwd(x, weight, bias, residual, activation, out, pre)
    torch.testing.assert_close(pre, pre_ref)
    torch.testing.assert_close(out, out_ref, **tol)

    out = nan(F32)
    launch_linear_epilogue(pre_ref, residual, activation, out)
    torch.testing.assert_close(out, out_ref, **tol)

    dout, dz = torch.randn(M, N, device=device), nan(dtype)
    launch_gelu_bwd(dout, pre_ref, dz)
    pre_leaf = pre_ref.float().requires_grad_()
    (dz_ref,) = torch.autograd.grad(torch.nn.functional.gelu(pre_leaf), pre_leaf, dout)
    torch.testing.assert_close(dz, dz_ref.to(dtype))


def test_errors(device):
    x, weight, bias = torch.randn(4, 8, device=device), torch.randn(6, 8, device=device), torch.randn(6, device=device)
    with pytest.raises(ValueError, match=r"x's last dim must equal weight.shape\[1\] = 7"):
        linear(x, weight[:, :7], bias)
    with pytest.raises(ValueError, match=r"bias must be contiguous of shape \(6,\), got \(5,\)"):
        linear(x, weight, bias[:5])
    with pytest.raises(TypeError, match="x must have dtype in .*, got torch.int32"):
        linear(x.int(), weight, bias)
    with pytest.raises(TypeError, match="weight has dtype torch.float16 but x has dtype torch.float32"):
        linear(x, weight.half(), bias)
    with pytest.raises(ValueError, match=r"residual must have shape \(4, 6\), got \(4, 8\)"):
        linear(x, weight, bias, residual=x)
    with pytest.raises(ValueError, match="activation must be one of .*, got 'relu'"):
        linear(x, weight, bias, activation="relu")
    with pytest.raises(ValueError, match="weight must be 2-D"):
        linear(x, bias, bias)
    with pytest.raises(ValueError, match=r"kind must be None or one of \('qkv', 'proj', 'fc1', 'fc2'\), got 'mlp'"):
        linear(x, weight, bias, kind="mlp")
    out = torch.empty(4, 6, device=device)
    with pytest.raises(ValueError, match=r"out must have shape \(4, 6\), got \(6, 4\)"):
        launch_linear_fwd(x, weight, bias, None, None, out.t(), None)
    with pytest.raises(ValueError, match="out must have unit stride"):
        launch_linear_fwd(x, weight, bias, None, None, torch.empty(6, 4, device=device).t(), None)
    with pytest.raises(ValueError, match="x is on meta"):
        launch_linear_fwd(x.to("meta"), weight, bias, None, None, out, None)
    with pytest.raises(TypeError, match="dz must have dtype torch.float32, got torch.float16"):
        launch_gelu_bwd(out, out, out.half())
    with pytest.raises(TypeError, match="out must have dtype torch.float32, got torch.float16"):
        launch_linear_fwd(x.half(), weight.half(), None, out, None, out.half(), None)
    with pytest.raises(TypeError, match="residual must have dtype in .*, got torch.int64"):
        linear(x, weight, bias, residual=out.long())
    if device == "cuda":
        with pytest.raises(ValueError, match="weight (is on cpu|.*cpu but x is on cuda)"):
            linear(x, weight.cpu(), bias)


def test_opcheck(device, path):
    x = torch.randn(2, 5, 40, device=device, requires_grad=True)
    weight = torch.randn(24, 40, device=device, requires_grad=True)
    bias = torch.randn(24, device=device, requires_grad=True)
    residual = torch.randn(2, 5, 24, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.fastdeit.linear_fwd.default, (x, weight, bias, residual, "gelu", True, "fc1"))
    torch.library.opcheck(torch.ops.fastdeit.linear_fwd.default, (x, weight, None, None, None, False, "qkv"))
    # Mixed dtypes: fp16 compute with an fp32 residual; the fake impl must give out fp32 and pre fp16.
    half = [t.detach().half().requires_grad_() for t in (x, weight, bias)]
    torch.library.opcheck(torch.ops.fastdeit.linear_fwd.default, (*half, residual, "gelu", True, "fc2"))
    # The GELU backward op has no autograd formula of its own (no double backward): plain tensors.
    dout, pre = torch.randn(2, 5, 24, device=device), torch.randn(2, 5, 24, device=device)
    torch.library.opcheck(torch.ops.fastdeit.linear_gelu_bwd.default, (dout, pre))
    torch.library.opcheck(torch.ops.fastdeit.linear_gelu_bwd.default, (dout, pre.half()))


def test_torch_compile_fullgraph(device):
    def mlp(x, fc1_weight, fc1_bias, fc2_weight):
        hidden = linear(x, fc1_weight, fc1_bias, "gelu")
        return linear(hidden, fc2_weight, None, None, x).square().sum()

    inputs = [torch.randn(2, 9, 32, device=device), torch.randn(64, 32, device=device), torch.randn(64, device=device)]
    inputs.append(torch.randn(32, 64, device=device))
    assert_compile_matches_eager(mlp, inputs)


# DeiT-B's four linears at batch 256 x 198 tokens = 50,688 rows: (K, N, activation, residual).
DEIT_B_LINEARS = {
    "qkv": (768, 2304, None, False),
    "proj": (768, 768, None, False),
    "fc1": (768, 3072, "gelu", False),
    "fc2": (3072, 768, None, True),
}


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("kind", sorted(DEIT_B_LINEARS))
@pytest.mark.parametrize("path", ["triton", "cublas"], indirect=True)
def test_deit_base_linears(path, kind, dtype):
    """Each DeiT-B linear (50,688 rows) in bf16 and fp16 through both paths the policy can pick, forward and
    backward, vs the fp32 reference (fp64 is slow at this size; fp32's error is ~1e-6, far below 16-bit's)."""
    K, N, activation, with_residual = DEIT_B_LINEARS[kind]
    M, device = 256 * 198, "cuda"
    x = torch.randn(M, K, dtype=dtype, device=device)
    weight = (torch.randn(N, K, device=device) / K**0.5).to(dtype)
    bias = torch.randn(N, dtype=dtype, device=device)
    residual = torch.randn(M, N, dtype=dtype, device=device) if with_residual else None
    _check_against_ref(x, weight, bias, activation, residual, reference_dtype=torch.float32)


def test_autotune_row_buckets():
    """The autotuner re-tunes per bucket of rows (batch * tokens), not per batch size."""
    from fastdeit.kernels.linear import _m_bucket

    assert [_m_bucket(m) for m in (1, 197, 1024, 1025, 197 * 64, 197 * 256, 197 * 1024)] == [
        1024, 1024, 1024, 4096, 16384, 65536, 65536,
    ]  # fmt: skip
