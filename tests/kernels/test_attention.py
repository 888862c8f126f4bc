"""Tests for kernels/attention.py: forward and backward against fp64, packed qkv against timm's math, unwritten or
overwritten elements, argument errors, torch.library registration and torch.compile.

Pass rule: max |error| against an fp64 reference at most 2x that of the same-precision torch computation plus a small
atol (ATOL, commented). The torch computation is `F.scaled_dot_product_attention` run in the test dtype: torch's fused
attention rounds P and dS to fp16/bf16 before their matmuls exactly as this kernel does, while `attention_ref` keeps dS
in fp32 (autograd through its fp32 softmax), which makes its dq/dk up to ~3x more accurate in fp16 than any
flash-attention kernel.
"""

from __future__ import annotations

import fastdeit.kernels.attention as attention_module
import pytest
import torch
import torch.nn.functional as F
from fastdeit.kernels._utils import dot_precision, triton_dots_fit
from fastdeit.kernels.attention import (
    attention,
    attention_bwd,
    attention_fwd,
    attention_qkv,
    attention_qkv_bwd,
    attention_qkv_fwd,
    attention_qkv_ref,
    attention_ref,
)

ATOL = {
    # fp32: the kernel saves an fp32 logsumexp L and recomputes P = exp(S - L) in the backward; L is off by a few
    # ulps of |L| (up to ~20 with the peaked scores used here, so ~4e-6), a relative error shared by a whole row of
    # P that torch's backward (which keeps P) does not have. 1e-5 on gradients of size O(1) covers it.
    torch.float32: 1e-5,
    # fp16: the errors are ~1e-3, from rounding P, dS and the output to fp16, and come out at most ~1.4x torch's; the
    # atol only absorbs cases where torch is exact, e.g. dq = dk = 0 at N = 1 where the kernel gives ~1e-7.
    torch.float16: 1e-5,
    # bf16 (GPU only): as fp16, with 8x coarser rounding.
    torch.bfloat16: 1e-4,
}


def _run(fn, inputs: list[torch.Tensor], d_out: torch.Tensor, *args) -> list[torch.Tensor]:
    """fn(*inputs, *args) and its input gradients for d_out, all as detached fp64."""
    leaves = [x.detach().requires_grad_() for x in inputs]
    out = fn(*leaves, *args)
    out.backward(d_out.to(out.dtype))
    return [out.detach().double()] + [x.grad.double() for x in leaves]


def _assert_within_2x(names: str, got: list, same_precision: list, exact: list, dtype: torch.dtype) -> None:
    for name, g, t, e in zip(names.split(), got, same_precision, exact, strict=True):
        assert torch.isfinite(g).all(), f"{name}: non-finite values"
        err, err_torch = (g - e).abs().max().item(), (t - e).abs().max().item()
        assert err <= 2 * err_torch + ATOL[dtype], f"{name}: error {err:.3g} vs torch's {err_torch:.3g} ({dtype})"


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, scale=scale)


def _check_attention(q, k, v, d_out, scale=None, same_precision_fn=_sdpa) -> None:
    """Compare `attention` (forward, dq, dk, dv) with fp64 and with same_precision_fn run in the inputs' dtype."""
    exact = _run(attention_ref, [x.double() for x in (q, k, v)], d_out.double(), scale)
    same_precision = _run(same_precision_fn, [q, k, v], d_out, scale)
    got = _run(attention, [q, k, v], d_out, scale)
    _assert_within_2x("out dq dk dv", got, same_precision, exact, q.dtype)


@pytest.mark.parametrize(
    "batch, heads, seq_len, head_dim, dtype, q_mult, scale",
    [
        (1, 1, 1, 32, torch.float32, 1.0, None),  # a single token
        (2, 2, 37, 32, torch.float32, 3.0, None),  # ragged length, batch 2, peaked softmax
        (1, 2, 197, 64, torch.float32, 1.0, None),  # DeiT's token count with a class token
        (1, 1, 50, 128, torch.float32, 1.0, 0.2),  # D = 128, explicit scale
        (1, 1, 1, 64, torch.float16, 1.0, None),
        (1, 3, 37, 64, torch.float16, 3.0, None),
        (1, 1, 198, 64, torch.float16, 1.0, None),  # DeiT's token count with class and distillation tokens
        (2, 1, 20, 16, torch.float16, 2.0, None),  # D = 16 (tiny test models)
    ],
)
def test_attention_matches_fp64(device, batch, heads, seq_len, head_dim, dtype, q_mult, scale):
    q, k, v, d_out = (torch.randn(batch, heads, seq_len, head_dim, device=device) for _ in range(4))
    q = q * q_mult
    _check_attention(q.to(dtype), k.to(dtype), v.to(dtype), d_out.to(dtype), scale)


@pytest.mark.parametrize("layout", ["packed", "transposed", "d_strided", "mixed"])
def test_attention_non_contiguous_inputs(device, layout):
    batch, heads, seq_len, head_dim = 2, 2, 37, 32
    if layout == "packed":  # slices of timm's qkv projection output
        qkv = torch.randn(batch, seq_len, 3, heads, head_dim, device=device).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
    elif layout == "transposed":  # (B, N, H, D) tensors seen as (B, H, N, D)
        q, k, v = (torch.randn(batch, seq_len, heads, head_dim, device=device).transpose(1, 2) for _ in range(3))
    elif layout == "d_strided":  # D not the innermost dim
        q, k, v = (torch.randn(batch, heads, head_dim, seq_len, device=device).transpose(2, 3) for _ in range(3))
    else:  # a different layout for each of q, k, v
        q = torch.randn(batch, heads, seq_len, head_dim + 8, device=device)[..., :head_dim]
        k = torch.randn(batch, seq_len, heads, head_dim, device=device).transpose(1, 2)
        v = torch.randn(heads, batch, head_dim, seq_len, device=device).permute(1, 0, 3, 2)
    assert not any(x.is_contiguous() for x in (q, k, v))
    d_out = torch.randn(batch, seq_len, heads, head_dim, device=device).transpose(1, 2)  # strided gradient too
    _check_attention(q, k, v, d_out)


def test_attention_expanded_grad_and_output_layout(device):
    """`out.sum()` back-propagates an expanded (all strides 0) gradient: same result as the materialised one."""
    q, k, v = (torch.randn(1, 2, 37, 32, device=device, dtype=torch.float16, requires_grad=True) for _ in range(3))
    out = attention(q, k, v)
    assert out.shape == q.shape and out.dtype == torch.float16 and out.is_contiguous()
    out.sum().backward()
    expected = _run(attention, [q, k, v], torch.ones_like(out))
    for x, e in zip((q, k, v), expected[1:], strict=True):
        torch.testing.assert_close(x.grad.double(), e, atol=0, rtol=0)


def test_attention_very_negative_scores(device):
    """All scores around -128 (L ~ -125): a padded key in the ragged last tile would score 0 and get P = exp(-L) = inf
    unless masked in every kernel. fp16 inputs (scores and softmax are fp32 all the same), whose rounding dwarfs the
    fp32 rounding of scores this large that the backward's recompute of P meets twice."""
    q, k, v, d_out = (torch.randn(1, 2, 37, 16, device=device) for _ in range(4))
    q, k = -8.0 + 0.1 * q, 1.0 + 0.1 * k
    _check_attention(q.half(), k.half(), v.half(), d_out.half(), scale=1.0)


@pytest.mark.parametrize("seq_len", [1, 37])
def test_launchers_write_every_element_and_nothing_else(device, seq_len):
    """Outputs are NaN-filled views into larger buffers: every element must be written, the margins left alone."""
    batch, heads, head_dim, margin = 1, 2, 32, 5
    nan = float("nan")
    q, k, v, d_out = (torch.randn(batch, heads, seq_len, head_dim, device=device) for _ in range(4))
    scale = head_dim**-0.5
    out_buf = torch.full((batch, heads, seq_len + margin, head_dim), nan, device=device)
    lse = torch.full((batch, heads, seq_len), nan, device=device)
    out, _ = attention_fwd(q, k, v, scale, out=out_buf[:, :, :seq_len], lse=lse)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    assert torch.isnan(out_buf[:, :, seq_len:]).all()
    torch.testing.assert_close(out, attention_ref(q, k, v), atol=1e-5, rtol=1e-5)

    grad_bufs = [torch.full((batch, heads, seq_len + margin, head_dim), nan, device=device) for _ in range(3)]
    dq, dk, dv = (buf[:, :, :seq_len] for buf in grad_bufs)
    attention_bwd(d_out, q, k, v, out, lse, scale, dq=dq, dk=dk, dv=dv)
    for name, grad, buf in zip(("dq", "dk", "dv"), (dq, dk, dv), grad_bufs, strict=True):
        assert torch.isfinite(grad).all(), f"{name} has unwritten elements"
        assert torch.isnan(buf[:, :, seq_len:]).all(), f"{name} written past the end"


def test_packed_launchers_write_every_element_and_nothing_else(device):
    batch, seq_len, heads, head_dim, margin = 1, 37, 2, 16, 8
    width = heads * head_dim
    nan = float("nan")
    qkv = torch.randn(batch, seq_len, 3 * width, device=device)
    d_out = torch.randn(batch, seq_len, width, device=device)
    out_buf = torch.full((batch, seq_len, width + margin), nan, device=device)
    out, lse = attention_qkv_fwd(qkv, heads, head_dim**-0.5, out=out_buf[..., :width])
    assert torch.isfinite(out).all() and torch.isnan(out_buf[..., width:]).all()
    d_qkv_buf = torch.full((batch, seq_len, 3 * width + margin), nan, device=device)
    d_qkv = attention_qkv_bwd(d_out, qkv, out, lse, heads, head_dim**-0.5, d_qkv=d_qkv_buf[..., : 3 * width])
    assert torch.isfinite(d_qkv).all() and torch.isnan(d_qkv_buf[..., 3 * width :]).all()


def _timm_attention(qkv: torch.Tensor, num_heads: int) -> torch.Tensor:
    """timm's `Attention.forward` between the qkv and proj linears."""
    batch, seq_len, width = qkv.shape
    q, k, v = qkv.reshape(batch, seq_len, 3, num_heads, width // (3 * num_heads)).permute(2, 0, 3, 1, 4)
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, seq_len, width // 3)


@pytest.mark.parametrize(
    "batch, seq_len, heads, head_dim, dtype",
    [(2, 37, 2, 32, torch.float32), (1, 197, 2, 32, torch.float16), (1, 1, 2, 16, torch.float32)],
)
def test_attention_qkv_matches_timm(device, batch, seq_len, heads, head_dim, dtype):
    qkv = torch.randn(batch, seq_len, 3 * heads * head_dim, device=device).to(dtype)
    d_out = torch.randn(batch, seq_len, heads * head_dim, device=device).to(dtype)
    got = _run(attention_qkv, [qkv], d_out, heads)
    assert got[0].shape == (batch, seq_len, heads * head_dim) and got[1].shape == qkv.shape
    exact = _run(_timm_attention, [qkv.double()], d_out.double(), heads)
    same_precision = _run(_timm_attention, [qkv], d_out, heads)
    _assert_within_2x("out d_qkv", got, same_precision, exact, dtype)
    torch.testing.assert_close(attention_qkv_ref(qkv.double(), heads), exact[0], atol=1e-12, rtol=0)


def test_attention_qkv_is_attention_on_views(device):
    """Same kernels and tiles: the packed op equals `attention` on the q/k/v views bit for bit (strided qkv here)."""
    batch, seq_len, heads, head_dim = 2, 37, 2, 32
    width = heads * head_dim
    qkv = torch.randn(batch, seq_len, 3 * width + 8, device=device)[..., : 3 * width]
    q, k, v = qkv.reshape(batch, seq_len, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    expected = attention(q, k, v).transpose(1, 2).reshape(batch, seq_len, width)
    torch.testing.assert_close(attention_qkv(qkv, heads), expected, atol=0, rtol=0)


def test_errors(device):
    x = torch.randn(1, 2, 8, 32, device=device)
    with pytest.raises(ValueError, match=r"k must have q's shape \(B, H, N, D\) = \(1, 2, 8, 32\), got \(1, 2, 9,"):
        attention(x, torch.randn(1, 2, 9, 32, device=device), x)
    with pytest.raises(ValueError, match=r"head dim D = q.shape\[-1\] must be one of \(16, 32, 64, 128\), got 48"):
        y = torch.randn(1, 2, 8, 48, device=device)
        attention(y, y, y)
    with pytest.raises(TypeError, match=r"q must have dtype in .*, got torch.int32"):
        i = torch.ones(1, 2, 8, 32, dtype=torch.int32, device=device)
        attention(i, i, i)
    with pytest.raises(TypeError, match=r"v has dtype torch.float16 but q has dtype torch.float32"):
        attention(x, x, x.half())
    with pytest.raises(ValueError, match=r"q must be 4-D, got shape \(2, 8, 32\)"):
        attention(x[0], x[0], x[0])
    with pytest.raises(ValueError, match=r"q is on meta; Triton kernels need a CUDA tensor"):
        m = torch.randn(1, 2, 8, 32, device="meta")
        attention(m, m, m)
    with pytest.raises(ValueError, match=r"divisible by 3 \* num_heads = 6, got 100"):
        attention_qkv(torch.randn(1, 8, 100, device=device), 2)
    with pytest.raises(ValueError, match=r"num_heads must be a positive int, got 0"):
        attention_qkv(torch.randn(1, 8, 96, device=device), 0)
    with pytest.raises(ValueError, match=r"out must have shape \(1, 2, 8, 32\), got \(1, 2, 9, 32\)"):
        attention_fwd(x, x, x, 1.0, out=torch.empty(1, 2, 9, 32, device=device))
    with pytest.raises(ValueError, match=r"lse must be a contiguous fp32 tensor of shape \(1, 2, 8\)"):
        attention_fwd(x, x, x, 1.0, lse=torch.empty(1, 8, 2, device=device).transpose(1, 2))
    with pytest.raises(ValueError, match=r"output dq must not have zero strides \(expanded tensor\)"):
        _, lse = attention_fwd(x, x, x, 1.0)
        attention_bwd(x, x, x, x, x, lse, 1.0, dq=torch.empty(1, 1, 8, 32, device=device).expand(1, 2, 8, 32))
    with pytest.raises(TypeError, match=r"d_out must have dtype in \['torch.float32'\], got torch.float16"):
        attention_bwd(x.half(), x, x, x, x, lse, 1.0)


def test_opcheck(device):
    q, k, v, d_out = (torch.randn(1, 2, 20, 16, device=device) for _ in range(4))
    out, lse = attention_fwd(q, k, v, 0.25)
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    torch.library.opcheck(torch.ops.fastdeit.attention_fwd.default, (*leaves, 0.25))
    torch.library.opcheck(torch.ops.fastdeit.attention_bwd.default, (d_out, q, k, v, out, lse, 0.25))
    qkv = torch.randn(1, 20, 96, device=device)
    out, lse = attention_qkv_fwd(qkv, 2, 0.25)
    torch.library.opcheck(torch.ops.fastdeit.attention_qkv_fwd.default, (qkv.clone().requires_grad_(), 2, 0.25))
    torch.library.opcheck(torch.ops.fastdeit.attention_qkv_bwd.default, (torch.randn_like(out), qkv, out, lse, 2, 0.25))


def test_torch_compile_fullgraph(device):
    def block(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return attention_qkv(x @ weight, num_heads=2) * 2.0

    x = torch.randn(2, 37, 32, device=device)
    weight = torch.randn(32, 96, device=device) * 32**-0.5
    eager_grads = _run(block, [x, weight], torch.ones(2, 37, 32, device=device))
    compiled_grads = _run(torch.compile(block, fullgraph=True), [x, weight], torch.ones(2, 37, 32, device=device))
    for eager, compiled in zip(eager_grads, compiled_grads, strict=True):
        torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------------------------
# GPU only: bf16 (tl.dot on bf16 is wrong under the interpreter), full DeiT shapes, the tf32/ieee choice for fp32.
# ----------------------------------------------------------------------------------------------------------------------
def _check_against_fp32(q, k, v, d_out) -> None:
    """As `_check_attention`, with an fp32 reference (fp64 is slow at these sizes; fp32 errors are ~1e-6 here)."""
    exact = _run(attention_ref, [x.float() for x in (q, k, v)], d_out.float())
    same_precision = _run(_sdpa, [q, k, v], d_out)
    got = _run(attention, [q, k, v], d_out)
    _assert_within_2x("out dq dk dv", got, same_precision, exact, q.dtype)


@pytest.mark.gpu
def test_gpu_bf16_deit_base(device):
    q, k, v, d_out = (torch.randn(256, 12, 198, 64, device=device, dtype=torch.bfloat16) for _ in range(4))
    _check_against_fp32(q, k, v, d_out)


@pytest.mark.gpu
def test_gpu_fp16_577_tokens_packed(device):
    qkv = torch.randn(4, 577, 3 * 768, device=device, dtype=torch.float16)
    d_out = torch.randn(4, 577, 768, device=device, dtype=torch.float16)
    exact = _run(attention_qkv_ref, [qkv.float()], d_out.float(), 12)
    same_precision = _run(_timm_attention, [qkv], d_out, 12)
    got = _run(attention_qkv, [qkv], d_out, 12)
    _assert_within_2x("out d_qkv", got, same_precision, exact, torch.float16)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["highest", "high"])
def test_gpu_fp32_follows_torch_matmul_precision(device, precision):
    """fp32 inputs: ieee dots under torch's default "highest" (errors ~1e-6), tf32 under "high", as torch's matmuls do;
    so the same-precision computation here is attention_ref, made of torch matmuls that follow the same setting."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        q, k, v, d_out = (torch.randn(8, 4, 197, 64, device=device) for _ in range(4))
        _check_attention(q, k, v, d_out, same_precision_fn=attention_ref)
        if precision == "highest":
            exact = attention_ref(q.double(), k.double(), v.double())
            assert (attention(q, k, v).double() - exact).abs().max() < 1e-5
    finally:
        torch.set_float32_matmul_precision(previous)


def test_triton_dots_fit_follows_torch_fp32_precision():
    """IEEE fp32 dots on a GPU go to torch (Triton's FMA fallback spills); tf32, 16-bit and the interpreter stay."""
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        assert not triton_dots_fit(torch.float32, cuda)
        assert triton_dots_fit(torch.bfloat16, cuda) and triton_dots_fit(torch.float16, cuda)
        assert triton_dots_fit(torch.float32, cpu) and dot_precision(torch.float32) == "ieee"
        torch.set_float32_matmul_precision("high")
        assert triton_dots_fit(torch.float32, cuda) and dot_precision(torch.float32) == "tf32"
        assert dot_precision(torch.bfloat16) == "ieee"  # 16-bit operands ignore it
    finally:
        torch.set_float32_matmul_precision(previous)


def test_sdpa_path_for_ieee_fp32(device, monkeypatch):
    """Where `triton_dots_fit` says no (IEEE fp32 on a GPU), both ops run torch's SDPA: same results, same layouts,
    same errors for bad input."""
    monkeypatch.setattr(attention_module, "triton_dots_fit", lambda dtype, device: False)
    q, k, v, d_out = (torch.randn(2, 2, 37, 32, device=device) for _ in range(4))
    _check_attention(q, k, v, d_out)
    qkv = torch.randn(2, 37, 3 * 64, device=device)
    d_out = torch.randn(2, 37, 64, device=device)
    got = _run(attention_qkv, [qkv], d_out, 2)
    exact = _run(_timm_attention, [qkv.double()], d_out.double(), 2)
    _assert_within_2x("out d_qkv", got, _run(_timm_attention, [qkv], d_out, 2), exact, torch.float32)
    with pytest.raises(ValueError, match=r"head dim D = q.shape\[-1\] must be one of \(16, 32, 64, 128\), got 48"):
        y = torch.randn(1, 2, 8, 48, device=device)
        attention(y, y, y)
    with pytest.raises(ValueError, match=r"divisible by 3 \* num_heads = 6, got 100"):
        attention_qkv(torch.randn(1, 8, 100, device=device), 2)
