"""Tests for fastdeit/layers/backend.py: `ops_for` is the one backend decision, its two namespaces share signatures,
and each layer names its kind (qkv, proj, fc1, fc2) to the linear op, whose path follows the policy for that kind."""

import copy
import inspect

import fastdeit.kernels.linear as linear_module
import pytest
import torch

from fastdeit.layers import Attention, Mlp
from fastdeit.layers.backend import FusedOps, TorchOps, ops_for, prepare

C, HEADS = 64, 2


def test_layers_name_their_kind_and_the_op_takes_the_tables_path(monkeypatch):
    table = {"qkv": "cublas", "proj": "triton", "fc1": "cublas", "fc2": "triton"}
    asked, launched = [], []

    def path_for(kind: str, dtype: torch.dtype, rows: int, device: torch.device) -> str:
        asked.append((kind, rows))
        return table[kind]

    def spy(name: str, launcher):
        return lambda *args: (launched.append(name), launcher(*args))[1]

    monkeypatch.setattr(linear_module, "path_for", path_for)
    monkeypatch.setattr(linear_module, "_launch_linear_fwd", spy("fused", linear_module._launch_linear_fwd))
    monkeypatch.setattr(
        linear_module, "_launch_linear_epilogue", spy("epilogue", linear_module._launch_linear_epilogue)
    )
    attn, mlp = Attention(C, num_heads=HEADS, qkv_bias=True, backend="triton"), Mlp(C, 4 * C, backend="triton")
    attn_torch, mlp_torch = copy.deepcopy(attn), copy.deepcopy(mlp)
    attn_torch.backend = mlp_torch.backend = "torch"
    x = torch.randn(2, 10, C)
    out = mlp(attn(x), residual=x)
    rows = 2 * 10
    assert asked == [("qkv", rows), ("proj", rows), ("fc1", rows), ("fc2", rows)]
    # qkv on cuBLAS needs no epilogue (bias only); fc1 on cuBLAS runs the GELU epilogue kernel after addmm.
    assert launched == ["fused", "epilogue", "fused"]
    expected = mlp_torch(attn_torch(x), residual=x)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_ops_namespaces_share_signatures():
    for name in ("layer_norm", "linear", "attention_qkv"):
        assert inspect.signature(getattr(TorchOps, name)) == inspect.signature(getattr(FusedOps, name)), name


def test_ops_for_is_the_backend_decision():
    prepare("triton")
    x = torch.randn(2, 3)
    assert ops_for("torch", x) is TorchOps and ops_for("auto", x) is TorchOps  # auto: fused only on CUDA
    assert ops_for("triton", x) is FusedOps  # the CPU under TRITON_INTERPRET=1 (tests/conftest.py)
    assert ops_for("triton", x, dropout=0.1) is TorchOps  # the fused attention has no dropout
    with pytest.raises(ValueError, match="backend='triton' needs CUDA tensors .* got a tensor on meta"):
        ops_for("triton", x.to("meta"))
    with pytest.raises(ValueError, match="the fused attention has no dropout"):
        FusedOps.attention_qkv(torch.randn(1, 4, 96), 2, 0.25, dropout_p=0.1)


def test_layer_norm_without_affine_on_the_fused_backend():
    """Before: TypeError 'layer_norm: weight must be a torch.Tensor' (the kernel has an affine step): torch's op."""
    from fastdeit.layers import LayerNorm

    torch.manual_seed(0)
    x, r = torch.randn(3, 5, 32), torch.randn(3, 5, 32)
    for affine in (False, True):
        fused, plain = LayerNorm(32, elementwise_affine=affine, backend="triton"), LayerNorm(32, backend="torch")
        expected = torch.nn.functional.layer_norm(x, (32,), eps=fused.eps)
        torch.testing.assert_close(fused(x), expected, atol=1e-5, rtol=1e-5)
        y, s = fused(x, residual=r)
        torch.testing.assert_close(s, x + r)
        torch.testing.assert_close(y, plain(x + r), atol=1e-5, rtol=1e-5)


def test_head_dims_the_fused_kernel_lacks():
    """Before: a model of head dim 24 built with backend='triton' failed at its first forward, deep in the kernel; and
    'auto' on CUDA would have taken the same path. Now: refused when built ('triton'); 'auto' runs SDPA for them."""
    with pytest.raises(ValueError, match=r"fused attention takes head dims \(16, 32, 64, 128\); this layer's is 24"):
        Attention(96, num_heads=4, backend="triton")
    torch.manual_seed(0)
    layer = Attention(96, num_heads=4, qkv_bias=True, backend="auto")
    reference = copy.deepcopy(layer)
    reference.backend = "torch"
    x = torch.randn(2, 7, 96)
    torch.testing.assert_close(layer(x), reference(x))
    layer.backend = "triton"  # as fastdeit.patch switches a built model: the linears fused, SDPA for the attention
    torch.testing.assert_close(layer(x), reference(x), atol=1e-5, rtol=1e-5)
