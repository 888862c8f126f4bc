"""The implementations `fastdeit bench` compares, each building the same DeiT architecture with random weights.

- fastdeit            fastdeit, Triton backend, eager
- fastdeit-cudagraph  the same, forward captured once in a CUDA graph and replayed (inference only)
- fastdeit-compile    the same under torch.compile (the Triton ops are custom ops, traced through their fake impls)
- fastdeit-torch      fastdeit's plain PyTorch backend (F.scaled_dot_product_attention), the CPU provider
- torch-xformers      fastdeit's PyTorch backend with xformers' memory_efficient_attention as the attention kernel
- timm, timm-compile  `timm.create_model(name)` (attention through F.scaled_dot_product_attention), eager / compiled
- hf                  Hugging Face transformers from a config, SDPA attention: DeiTForImageClassificationWithTeacher
                      for distilled models, ViTForImageClassification otherwise (the non-distilled DeiTs are ViTs)

Peers (`peer=True`) are the implementations a user would pick instead of fastdeit; "best peer" in the tables is
the fastest of them in the same run.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

import fastdeit
from fastdeit.layers import Attention
from fastdeit.models import model_config

MODES = ("inference", "training")


class XformersAttention(Attention):
    """fastdeit's Attention (same parameters, timm's names) with xformers' memory-efficient attention kernel.

    x (B, N, C) -> (B, N, C). xformers takes (B, N, H, D), which is how the packed qkv projection is laid out
    already, so q, k and v are strided views of it: no permute copies.
    """

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        import xformers.ops as xops

        B, N, C = x.shape
        qkv = F.linear(x, self.qkv.weight, self.qkv.bias).reshape(B, N, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.unbind(2)
        p = self.attn_drop if self.training else 0.0
        out = xops.memory_efficient_attention(q, k, v, p=p, scale=self.scale).reshape(B, N, C)
        out = self.proj_drop(self.proj(out))
        return out if residual is None else out + residual


class LogitsAdapter(nn.Module):
    """Gives every implementation one calling convention: images (B, 3, H, W) -> a tuple of logits (B, classes).

    The tuple is (logits,), or (cls_logits, dist_logits) for a distilled model in training, so a training step can
    apply DeiT's two-head loss to any provider.
    """

    def __init__(self, model: nn.Module, hugging_face: bool = False) -> None:
        super().__init__()
        self.model = model
        self.hugging_face = hugging_face

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.hugging_face:
            out = self.model(pixel_values=x)
            if self.training and hasattr(out, "distillation_logits"):
                return out.cls_logits, out.distillation_logits
            return (out.logits,)
        out = self.model(x)
        return tuple(out) if isinstance(out, tuple) else (out,)


@dataclass(frozen=True)
class BuildSpec:
    """What a provider builds: model `name` at `img_size`, on `device` in `dtype`, for `mode`."""

    name: str
    img_size: int
    mode: str
    dtype: torch.dtype
    device: torch.device
    drop_path_rate: float = 0.0


def _fastdeit(spec: BuildSpec, backend: str, attn_layer: type[nn.Module] | None = None) -> nn.Module:
    kwargs = {} if attn_layer is None else {"attn_layer": attn_layer}
    return fastdeit.create_model(
        spec.name, img_size=spec.img_size, backend=backend, drop_path_rate=spec.drop_path_rate, **kwargs
    )


def _timm(spec: BuildSpec) -> nn.Module:
    import timm

    return timm.create_model(
        spec.name, pretrained=False, num_classes=1000, img_size=spec.img_size, drop_path_rate=spec.drop_path_rate
    )


def _hugging_face(spec: BuildSpec) -> nn.Module:
    import transformers

    cfg = model_config(spec.name)
    common = dict(
        image_size=spec.img_size,
        patch_size=16,
        num_channels=3,
        hidden_size=cfg["embed_dim"],
        num_hidden_layers=cfg["depth"],
        num_attention_heads=cfg["num_heads"],
        intermediate_size=4 * cfg["embed_dim"],
        hidden_act="gelu",
        layer_norm_eps=1e-6,
        qkv_bias=True,
        num_labels=1000,
        attn_implementation="sdpa",
    )
    if cfg["distilled"]:
        return transformers.DeiTForImageClassificationWithTeacher(transformers.DeiTConfig(**common))
    return transformers.ViTForImageClassification(transformers.ViTConfig(**common))


@dataclass(frozen=True)
class Provider:
    """One implementation to measure.

    Attributes:
        build: spec -> the model (an nn.Module returning timm/fastdeit-style logits, or a transformers model).
        peer: counts as a peer (not fastdeit) for the "vs best peer" ratio.
        needs_cuda: runs only on a CUDA GPU (Triton kernels, compile and CUDA graphs are GPU paths here).
        requires: modules that must import for the provider to run.
        modes: the modes it supports.
        probe_as: measure with the batch size found for this (eager) provider. Compiled and graphed variants reuse
            it instead of recompiling at every probed size, and fastdeit's Triton providers reuse their torch twin's
            so the probe does not run the Triton autotuners at every size it tries.
        compile: wrap the model in torch.compile (default mode).
        cuda_graph: capture the forward in a CUDA graph.
        hugging_face: the model takes `pixel_values=` and returns an output object.
        drop_path: supports stochastic depth.
    """

    name: str
    description: str
    build: Callable[[BuildSpec], nn.Module]
    peer: bool
    needs_cuda: bool = False
    requires: tuple[str, ...] = ()
    modes: tuple[str, ...] = MODES
    probe_as: str | None = None
    compile: bool = False
    cuda_graph: bool = False
    hugging_face: bool = False
    drop_path: bool = True


PROVIDERS: dict[str, Provider] = {
    p.name: p
    for p in (
        Provider("fastdeit", "fastdeit, Triton kernels, eager", partial(_fastdeit, backend="triton"), peer=False,
                 needs_cuda=True, requires=("triton",), probe_as="fastdeit-torch"),
        Provider("fastdeit-cudagraph", "fastdeit, Triton kernels, CUDA graph replay",
                 partial(_fastdeit, backend="triton"), peer=False, needs_cuda=True, requires=("triton",),
                 modes=("inference",), probe_as="fastdeit-torch", cuda_graph=True),
        Provider("fastdeit-compile", "fastdeit, Triton kernels, torch.compile", partial(_fastdeit, backend="triton"),
                 peer=False, needs_cuda=True, requires=("triton",), probe_as="fastdeit-torch", compile=True),
        Provider("fastdeit-torch", "fastdeit, PyTorch backend (SDPA), eager", partial(_fastdeit, backend="torch"),
                 peer=False),
        Provider("torch-xformers", "fastdeit PyTorch backend + xformers attention",
                 partial(_fastdeit, backend="torch", attn_layer=partial(XformersAttention, backend="torch")),
                 peer=True, needs_cuda=True, requires=("xformers.ops",)),
        Provider("timm", "timm, SDPA attention, eager", _timm, peer=True, requires=("timm",)),
        Provider("timm-compile", "timm, torch.compile", _timm, peer=True, needs_cuda=True, requires=("timm",),
                 probe_as="timm", compile=True),
        Provider("hf", "Hugging Face transformers, SDPA attention", _hugging_face, peer=True,
                 requires=("transformers",), hugging_face=True, drop_path=False),
    )
}  # fmt: skip


def check_providers(names: list[str]) -> list[Provider]:
    """Provider names -> providers, in the order given; a clear error for an unknown name."""
    unknown = [n for n in names if n not in PROVIDERS]
    if unknown:
        raise ValueError(
            f"unknown provider(s) {', '.join(map(repr, unknown))}; expected some of {', '.join(PROVIDERS)}"
        )
    return [PROVIDERS[n] for n in dict.fromkeys(names)]


def unavailable_reason(provider: Provider, device: torch.device) -> str | None:
    """Why `provider` cannot run here (None when it can): no GPU, or a package missing or failing to import."""
    if provider.needs_cuda and device.type != "cuda":
        return "needs a CUDA GPU"
    for module in provider.requires:
        try:
            importlib.import_module(module)
        except ImportError as e:
            return f"{module.split('.')[0]} is not installed ({e})"
        except Exception as e:  # e.g. timm importing a torchvision that does not match torch
            return f"{module.split('.')[0]} cannot be imported ({type(e).__name__}: {e})"
    return None


def build_context(device: torch.device) -> contextlib.AbstractContextManager:
    """Where models are built: directly on a GPU (initialising 86M parameters on the host, then copying, is slower);
    on the CPU no device context, which would only add a dispatch layer to every initialisation op."""
    return device if device.type == "cuda" else contextlib.nullcontext()


def build_model(provider: Provider, spec: BuildSpec) -> LogitsAdapter:
    """The provider's model for `spec`, on the device, in the dtype, in train or eval mode, compiled if asked."""
    with build_context(spec.device):
        model = provider.build(spec)
    training = spec.mode == "training"
    # Training is mixed precision as in the DeiT recipe and timm's AMP: fp32 weights, autocast in the step.
    model = model.to(device=spec.device, dtype=torch.float32 if training else spec.dtype)
    if training and model_config(spec.name)["distilled"] and hasattr(model, "set_distilled_training"):
        model.set_distilled_training(True)  # fastdeit and timm return (cls, dist) logits only when asked
    if provider.compile:
        model = torch.compile(model)
    adapter = LogitsAdapter(model, hugging_face=provider.hugging_face)
    adapter.train(training)
    return adapter
