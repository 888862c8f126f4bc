"""A whole backend="triton" model equals the backend="torch" model, forward and backward, also under autocast;
torch.compile traces it without graph breaks.

Every comparison is judged against the same model in fp64 by `assert_rel_within_2x` (tests/helpers.py): the triton
model's relative error may be at most twice the torch model's plus one unit roundoff, on a CPU under the interpreter
and on a GPU alike. fp32 means IEEE fp32 on both backends (torch's default: no tf32 for matmuls).
"""

import copy

import pytest
import torch

import fastdeit
from tests.conftest import DEVICE
from tests.helpers import assert_rel_within_2x, small_model


def _outputs(model: torch.nn.Module, x: torch.Tensor, seed: int | None = None) -> list[torch.Tensor]:
    """The model's outputs (a list: two heads for a distilled model in training) and, after a backward of their
    squares' sum, every parameter's gradient; `seed` is set just before the forward (drop path draws)."""
    if seed is not None:
        torch.manual_seed(seed)
    outs = model(x)
    outs = list(outs) if isinstance(outs, tuple) else [outs]
    sum(o.square().sum() for o in outs).backward()
    return [o.detach() for o in outs] + [p.grad for p in model.parameters()]


def _check_fp32_matches_torch(distilled: bool, seed: int | None = None, **overrides) -> None:
    torch.manual_seed(0)
    ref = small_model(distilled=distilled, backend="torch", **overrides).to(DEVICE).train()
    model = small_model(distilled=distilled, backend="triton", **overrides).to(DEVICE).train()
    model.load_state_dict(ref.state_dict())
    exact_model = copy.deepcopy(ref).double()
    if distilled:
        for m in (ref, model, exact_model):
            m.set_distilled_training(True)
    x = torch.randn(2, 3, 32, 32, device=DEVICE)
    ours, theirs, exact = _outputs(model, x, seed), _outputs(ref, x, seed), _outputs(exact_model, x.double(), seed)
    names = [f"output {i}" for i in range(len(ours) - len(list(model.parameters())))]
    names += [name for name, _ in model.named_parameters()]
    for name, a, b, c in zip(names, ours, theirs, exact, strict=True):
        assert_rel_within_2x(name, a, b, c, torch.float32)


@pytest.mark.parametrize("distilled", [True, False])
def test_triton_model_matches_torch_model(distilled):
    _check_fp32_matches_torch(distilled)


def test_triton_model_with_drop_path_trains():
    """Stochastic depth takes the unfused residual path; the same random draws give the same result."""
    _check_fp32_matches_torch(distilled=False, seed=5, drop_path_rate=0.3)


def test_compile_has_no_graph_breaks():
    model = small_model(backend="triton").to(DEVICE).eval()
    x = torch.randn(2, 3, 32, 32, device=DEVICE)
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        exact_model = small_model(backend="torch").to(DEVICE).double().eval()
        exact_model.load_state_dict(model.state_dict())
        exact = exact_model(x.double())
        assert_rel_within_2x("compiled output", compiled(x), model(x), exact, torch.float32)


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


# Under autocast both backends run every linear (and attention) in the low precision, the fused kernels adding the
# residual and the bias to the fp32 accumulator instead of to rounded results; judged by the same rule.
def _check_amp_matches_torch(device: str, dtype: torch.dtype, name: str | None = None) -> None:
    """`small_model` (training mode), or the full-size model `name` (eval mode: a distilled one averages its heads)."""
    torch.manual_seed(0)
    if name is None:
        ref = small_model(distilled=False, backend="torch").to(device).train()
        model = small_model(distilled=False, backend="triton").to(device).train()
    else:
        ref = fastdeit.create_model(name, backend="torch").to(device).eval()
        model = fastdeit.create_model(name, backend="triton").to(device).eval()
    model.load_state_dict(ref.state_dict())
    exact_model = copy.deepcopy(ref).double()
    size = ref.config.img_size
    x = torch.randn(2, 3, *size, device=device)
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
        assert_rel_within_2x(name, ours, theirs, exact, dtype)


def test_triton_model_under_autocast_matches_torch():
    """fp16 autocast (on the CPU under the interpreter; CUDA on a GPU machine), fp32 parameters, as AMP trains."""
    _check_amp_matches_torch(DEVICE, torch.float16)


@pytest.mark.gpu
def test_triton_model_under_bf16_autocast_matches_torch():
    """bf16 autocast on CUDA, where torch's autocast also runs layer_norm in fp32."""
    _check_amp_matches_torch("cuda", torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", ["deit_tiny_distilled_patch16_224", "deit_base_distilled_patch16_224"])
def test_full_size_triton_model_matches_torch(name, dtype):
    """DeiT-Ti and DeiT-B at 224 (198 tokens, every kernel at its real width) under autocast, forward and every
    parameter's gradient, triton vs torch backend, both judged against the fp64 model."""
    _check_amp_matches_torch("cuda", dtype, name)
