"""The layers under torch.autocast: the Triton path gives the dtypes torch's autocast gives the torch path, and values
within the same pass rule as the kernels (error against fp64 at most 2x torch's under the same autocast + ATOL)."""

import copy

import pytest
import torch
from torch import nn

from fastdeit.layers import Attention, LayerNorm, Mlp
from fastdeit.layers.backend import autocast_dtype
from tests.conftest import DEVICE

AMP = torch.float16
# Only absorbs a value whose torch error happens to be ~0; the fp16 errors here are ~1e-4 to 1e-2.
ATOL = 1e-5
C = 32


def test_autocast_dtype_policy():
    x = torch.randn(2, device=DEVICE)
    assert autocast_dtype("linear", x) is None and autocast_dtype("layer_norm", x) is None
    with torch.autocast(DEVICE, dtype=AMP):
        assert autocast_dtype("linear", x) == AMP
        # CUDA's autocast runs layer_norm in fp32; the CPU's leaves it in its input's dtype.
        assert autocast_dtype("layer_norm", x) == (torch.float32 if DEVICE == "cuda" else None)
    with pytest.raises(ValueError, match="op must be 'linear' or 'layer_norm', got 'conv'"):
        autocast_dtype("conv", x)


def _layer(kind: str, backend: str) -> nn.Module:
    torch.manual_seed(0)
    if kind.startswith("norm"):
        layer = LayerNorm(C, backend=backend)
        nn.init.normal_(layer.weight, 1.0, 0.5)
        nn.init.normal_(layer.bias)
        return layer
    if kind.startswith("mlp"):
        return Mlp(C, 2 * C, backend=backend)
    return Attention(C, num_heads=2, qkv_bias=True, backend=backend)


# (layer, dtype of x, dtype of the residual or None); x in the low precision is a branch output (what norm2 gets),
# in fp32 the residual stream.
CASES = [
    ("norm", AMP, None),
    ("norm", torch.float32, None),
    ("norm_residual", AMP, torch.float32),
    ("mlp", torch.float32, None),
    ("mlp_residual", torch.float32, torch.float32),
    ("attn", torch.float32, None),
]


def _run(layer: nn.Module, x: torch.Tensor, residual: torch.Tensor | None, amp: bool) -> list[torch.Tensor]:
    """Outputs (forward under autocast when amp) and grads of x, residual and the parameters (backward outside)."""
    inputs = [t.detach().clone().requires_grad_() for t in (x, residual) if t is not None]
    with torch.autocast(x.device.type, dtype=AMP, enabled=amp):
        outs = layer(*inputs)
    outs = list(outs) if isinstance(outs, tuple) else [outs]
    torch.manual_seed(1)
    loss = sum((o.double() * torch.randn(o.shape, dtype=torch.float64, device=o.device)).sum() for o in outs)
    loss.backward()
    return [o.detach() for o in outs] + [t.grad for t in inputs] + [p.grad for p in layer.parameters()]


@pytest.mark.parametrize("kind, x_dtype, residual_dtype", CASES)
def test_triton_layer_matches_torch_under_autocast(kind, x_dtype, residual_dtype):
    x = torch.randn(2, 9, C, dtype=x_dtype, device=DEVICE)
    residual = None if residual_dtype is None else torch.randn(2, 9, C, dtype=residual_dtype, device=DEVICE)
    ref = _layer(kind, "torch").to(DEVICE)
    exact = _run(copy.deepcopy(ref).double(), x.double(), None if residual is None else residual.double(), False)
    theirs = _run(ref, x, residual, True)
    ours = _run(_layer(kind, "triton").to(DEVICE), x, residual, True)
    for i, (o, t, e) in enumerate(zip(ours, theirs, exact, strict=True)):
        assert o.dtype == t.dtype, f"{kind} tensor {i}: dtype {o.dtype}, torch under autocast gives {t.dtype}"
        err, torch_err = (o.double() - e).abs().max().item(), (t.double() - e).abs().max().item()
        assert err <= 2 * torch_err + ATOL, f"{kind} tensor {i}: error {err:.3g} vs torch's {torch_err:.3g}"
