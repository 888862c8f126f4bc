"""A whole backend="triton" model equals the backend="torch" model, forward and backward; torch.compile
traces it without graph breaks."""

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
