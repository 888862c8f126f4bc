"""A whole backend="triton" model equals the backend="torch" model, forward and backward, also under autocast;
torch.compile traces it without graph breaks."""

import copy

import pytest
import torch

from tests.conftest import DEVICE
from tests.helpers import small_model

# fp32 both ways; the fused kernels sum in another order (and use tf32 for fp32 dots on GPU).
ATOL = 1e-4 if DEVICE == "cpu" else 2e-2


@pytest.mark.parametrize("distilled", [True, False])
def test_triton_model_matches_torch_model(distilled):
    torch.manual_seed(0)
    ref = small_model(distilled=distilled, backend="torch").to(DEVICE).train()
    model = small_model(distilled=distilled, backend="triton").to(DEVICE).train()
    model.load_state_dict(ref.state_dict())
    if distilled:
        ref.set_distilled_training(True)
        model.set_distilled_training(True)
    x = torch.randn(2, 3, 32, 32, device=DEVICE)
    outs, refs = model(x), ref(x)
    outs, refs = (outs, refs) if distilled else ((outs,), (refs,))
    for o, r in zip(outs, refs, strict=True):
        torch.testing.assert_close(o, r, atol=ATOL, rtol=ATOL)
    sum(o.square().sum() for o in outs).backward()
    sum(r.square().sum() for r in refs).backward()
    for (name, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, atol=10 * ATOL, rtol=10 * ATOL, msg=name)


def test_triton_model_with_drop_path_trains():
    """Stochastic depth takes the unfused residual path; same random draws give the same result."""
    ref = small_model(backend="torch", drop_path_rate=0.3).to(DEVICE).train()
    model = small_model(backend="triton", drop_path_rate=0.3).to(DEVICE).train()
    model.load_state_dict(ref.state_dict())
    x = torch.randn(4, 3, 32, 32, device=DEVICE)
    torch.manual_seed(5)
    out = model(x)
    torch.manual_seed(5)
    torch.testing.assert_close(out, ref(x), atol=ATOL, rtol=ATOL)


def test_compile_has_no_graph_breaks():
    model = small_model(backend="triton").to(DEVICE).eval()
    x = torch.randn(2, 3, 32, 32, device=DEVICE)
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), atol=ATOL, rtol=ATOL)


# Under autocast, judged as the kernels are: against the fp64 model, the triton model's error may be at most twice the
# torch model's error under the same autocast plus AMP_ATOL. Both run every linear (and attention) in the low
# precision (errors ~1e-4 to 5e-3 here, at most ~1.5x torch's in fp16); the fused kernels add the residual and the
# bias to the fp32 accumulator instead of to rounded results, so they may be more accurate than torch, not less.
# AMP_ATOL only absorbs a tensor whose torch error happens to be ~0; none here is below 1e-5.
AMP_ATOL = 1e-5


def _run_amp(model: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype | None) -> tuple:
    """Forward under autocast (none when dtype is None), backward outside; returns (out, dtypes, grads).

    dtypes: per block, those of the attention branch, of norm2's two outputs LN(s) and s (the residual stream after
    the attention) and of the block's output (the stream after the MLP).
    """
    seen: list[torch.dtype] = []
    record = lambda m, i, out: seen.extend(o.dtype for o in (out if isinstance(out, tuple) else (out,)))
    hooks = [m.register_forward_hook(record) for b in model.blocks for m in (b.attn, b.norm2, b)]
    with torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        out = model(x)
    for hook in hooks:
        hook.remove()
    out.float().square().sum().backward()
    return out.detach(), seen, {name: p.grad for name, p in model.named_parameters()}


def _check_amp_matches_torch(device: str, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    ref = small_model(distilled=False, backend="torch").to(device).train()
    model = small_model(distilled=False, backend="triton").to(device).train()
    model.load_state_dict(ref.state_dict())
    exact_model = copy.deepcopy(ref).double()
    x = torch.randn(2, 3, 32, 32, device=device)
    out, dtypes, grads = _run_amp(model, x, dtype)
    ref_out, ref_dtypes, ref_grads = _run_amp(ref, x, dtype)
    exact_out, _, exact_grads = _run_amp(exact_model, x.double(), None)
    # Torch's autocast: the attention branch in the low precision, the residual stream fp32 (the pos_embed add and
    # `x + branch` promote) and so LN(s) too; the fused kernels must give the same.
    fp32 = torch.float32
    assert ref_dtypes == dtypes == [dtype, fp32, fp32, fp32] * len(model.blocks), (ref_dtypes, dtypes)
    assert out.dtype == ref_out.dtype == dtype  # the head is an nn.Linear under autocast on both backends
    pairs = [("out", out, ref_out, exact_out)] + [(n, grads[n], ref_grads[n], exact_grads[n]) for n in exact_grads]
    for name, ours, theirs, exact in pairs:
        assert ours.dtype == theirs.dtype, f"{name}: dtype {ours.dtype} != {theirs.dtype}"
        err, torch_err = (ours.double() - exact).abs().max().item(), (theirs.double() - exact).abs().max().item()
        assert err <= 2 * torch_err + AMP_ATOL, f"{name}: error {err:.3g} vs torch's {torch_err:.3g} under autocast"


def test_triton_model_under_autocast_matches_torch():
    """fp16 autocast (on the CPU under the interpreter; CUDA on a GPU machine), fp32 parameters, as AMP trains."""
    _check_amp_matches_torch(DEVICE, torch.float16)


@pytest.mark.gpu
def test_triton_model_under_bf16_autocast_matches_torch():
    """bf16 autocast on CUDA, where torch's autocast also runs layer_norm in fp32."""
    _check_amp_matches_torch("cuda", torch.bfloat16)
