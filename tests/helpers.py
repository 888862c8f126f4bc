"""Small models shared by the tests (full-size DeiT is too slow for most CPU tests)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

import fastdeit

SMALL = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, num_classes=10)


def small_model(distilled: bool = True, **overrides: Any) -> fastdeit.VisionTransformer:
    """A 2-block DeiT on 32x32 images (16 patches of 8x8, width 64, 2 heads), torch backend by default."""
    name = "deit_tiny_distilled_patch16_224" if distilled else "deit_tiny_patch16_224"
    kwargs: dict[str, Any] = dict(SMALL, backend="torch")
    kwargs.update(overrides)
    return fastdeit.create_model(name, **kwargs)


def assert_compile_matches_eager(fn: Callable[..., torch.Tensor], inputs: list[torch.Tensor]) -> None:
    """`torch.compile(fn, fullgraph=True)` (no graph breaks) gives eager's loss and input gradients."""
    eager_inputs = [t.clone().requires_grad_() for t in inputs]
    compiled_inputs = [t.clone().requires_grad_() for t in inputs]
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True)
    loss_eager, loss_compiled = fn(*eager_inputs), compiled(*compiled_inputs)
    torch.testing.assert_close(loss_compiled, loss_eager)
    grads_eager = torch.autograd.grad(loss_eager, eager_inputs)
    grads_compiled = torch.autograd.grad(loss_compiled, compiled_inputs)
    for g_compiled, g_eager in zip(grads_compiled, grads_eager, strict=True):
        torch.testing.assert_close(g_compiled, g_eager)


def hf_config(distilled: bool, **overrides: Any) -> Any:
    """A transformers config matching `small_model`: DeiTConfig (distilled) or ViTConfig (how the Hub stores
    non-distilled DeiT); needs transformers."""
    import transformers

    cls = transformers.DeiTConfig if distilled else transformers.ViTConfig
    kwargs: dict[str, Any] = dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=256,
        image_size=32,
        patch_size=8,
        num_labels=10,
        layer_norm_eps=1e-6,
    )
    kwargs.update(overrides)
    return cls(**kwargs)


# --- the kernels' pass rule: error vs an fp64 reference no worse than 2x the same-dtype torch error + atol ----------
# The atol, picked by the dtype of the checked tensor, only matters where the same-dtype torch error is ~0; one unit
# in the last place at 1.0 for 16-bit dtypes, and ~100 fp32 ulps at 1.0 for fp32, whose error depends on the
# summation order.
KERNEL_ATOL = {torch.float32: 1e-5, torch.float16: 2**-10, torch.bfloat16: 2**-7}
# bf16 only on a GPU: under the Triton interpreter tl.dot on bf16 is wrong (triton 3.9).
FLOAT_DTYPES = [torch.float32, torch.float16, pytest.param(torch.bfloat16, marks=pytest.mark.gpu)]


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| in fp64 (0 for empty tensors)."""
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def assert_within_2x(name: str, ours: torch.Tensor, same_dtype: torch.Tensor, exact: torch.Tensor) -> None:
    """`ours` has `same_dtype`'s shape and dtype, and an error vs `exact` of at most 2x same_dtype's + atol."""
    assert ours.shape == exact.shape, f"{name}: shape {tuple(ours.shape)} != {tuple(exact.shape)}"
    assert ours.dtype == same_dtype.dtype, f"{name}: dtype {ours.dtype} != {same_dtype.dtype}"
    atol = KERNEL_ATOL[ours.dtype]
    ours_err, torch_err = max_err(ours, exact), max_err(same_dtype, exact)
    assert ours_err <= 2 * torch_err + atol, f"{name}: error {ours_err:.3g} vs torch's {torch_err:.3g} (atol {atol})"
