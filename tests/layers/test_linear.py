"""Tests for fastdeit/layers/linear.py: each layer names its kind (qkv, proj, fc1, fc2) to the linear op, whose path
follows the policy for that kind, with the same results on either path."""

import copy

import fastdeit.kernels.linear as linear_module
import torch

from fastdeit.layers import Attention, Mlp

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
    monkeypatch.setattr(linear_module, "launch_linear_fwd", spy("fused", linear_module.launch_linear_fwd))
    monkeypatch.setattr(linear_module, "launch_linear_epilogue", spy("epilogue", linear_module.launch_linear_epilogue))
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
