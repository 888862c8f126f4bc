"""`fastdeit.patch(model)`: swap the LayerNorm / Attention / Mlp of an existing DeiT for fused ones, in place.

Supported: timm's `VisionTransformer` / `VisionTransformerDistilled` (DeiT configurations), Hugging Face
transformers>=5 `DeiTModel`, `DeiTForImageClassification`, `DeiTForImageClassificationWithTeacher`,
`ViTModel` and `ViTForImageClassification`, and fastdeit's own models (their backend is switched). The new
modules share the original parameters (same tensors: optimizers and checkpoints keep working); each block
becomes a fastdeit `Block`, so its residual adds are fused too.
"""

from __future__ import annotations

import torch
from torch import nn

from fastdeit.layers import Attention, Block, LayerNorm, Mlp, prepare
from fastdeit.models import VisionTransformer

SUPPORTED = (
    "timm VisionTransformer / VisionTransformerDistilled (DeiT configurations)",
    "transformers DeiTModel, DeiTForImageClassification, DeiTForImageClassificationWithTeacher",
    "transformers ViTModel, ViTForImageClassification",
    "fastdeit VisionTransformer",
)
_HF_BACKBONES = ("DeiTModel", "ViTModel")


def _drop_prob(module: nn.Module) -> float:
    return float(getattr(module, "drop_prob", 0.0)) if not isinstance(module, nn.Identity) else 0.0


def _dropout_p(module: nn.Module | float) -> float:
    return float(module) if isinstance(module, (int, float)) else float(getattr(module, "p", 0.0))


def _layer_norm(ln: nn.Module, backend: str, where: str) -> LayerNorm:
    if not isinstance(ln, nn.LayerNorm) or ln.weight is None or len(ln.normalized_shape) != 1:
        raise TypeError(f"fastdeit.patch: {where} must be a LayerNorm over the last dim with weights, got {ln!r}")
    new = LayerNorm(ln.normalized_shape[0], eps=ln.eps, backend=backend)
    new.weight, new.bias = ln.weight, ln.bias
    return new


def _attention(
    qkv: nn.Module, proj: nn.Linear, num_heads: int, attn_drop: float, proj_drop: float, backend: str
) -> Attention:
    attn = Attention(
        proj.in_features,
        num_heads,
        qkv_bias=qkv.bias is not None,
        attn_drop=attn_drop,
        proj_drop=proj_drop,
        backend=backend,
    )
    attn.qkv, attn.proj = qkv, proj
    return attn


def _mlp(fc1: nn.Linear, fc2: nn.Linear, drop1: float, drop2: float, backend: str) -> Mlp:
    mlp = Mlp(fc1.in_features, fc1.out_features, fc2.out_features, bias=fc1.bias is not None, backend=backend)
    mlp.fc1, mlp.fc2 = fc1, fc2
    mlp.drop1.p, mlp.drop2.p = drop1, drop2
    return mlp


def _check_gelu(act: nn.Module | object, where: str) -> None:
    exact = isinstance(act, nn.GELU) and act.approximate == "none"
    hf_exact = type(act).__name__ == "GELUActivation" and getattr(act, "act", None) is nn.functional.gelu
    if not (exact or hf_exact):
        raise TypeError(f"fastdeit.patch: {where} must be the exact (erf) GELU, got {act!r}")


class _PackedQKV(nn.Module):
    """Presents Hugging Face's separate q/k/v projections as one packed qkv linear (timm's layout).

    The packed weight is concatenated on each call (3 * C * C elements, small next to the activations), so
    the original parameters stay the ones trained and saved.
    """

    def __init__(self, q: nn.Linear, k: nn.Linear, v: nn.Linear) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = q, k, v
        self.in_features, self.out_features = q.in_features, 3 * q.out_features

    @property
    def weight(self) -> torch.Tensor:
        return torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight], dim=0)

    @property
    def bias(self) -> torch.Tensor | None:
        if self.q_proj.bias is None:
            return None
        return torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias], dim=0)


def _patch_timm(model: nn.Module, backend: str) -> None:
    for i, blk in enumerate(model.blocks):
        where = f"blocks.{i}"
        attn, mlp = blk.attn, blk.mlp
        extras = [name for name in ("ls1", "ls2") if not isinstance(getattr(blk, name, nn.Identity()), nn.Identity)]
        extras += [
            f"attn.{n}"
            for n in ("q_norm", "k_norm", "norm")
            if not isinstance(getattr(attn, n, nn.Identity()), nn.Identity)
        ]
        extras += ["attn.gate"] * (getattr(attn, "gate", None) is not None)
        extras += ["mlp.norm"] * (not isinstance(getattr(mlp, "norm", nn.Identity()), nn.Identity))
        if type(blk).__name__ != "Block" or extras or not hasattr(attn, "qkv") or not hasattr(mlp, "fc1"):
            raise TypeError(
                f"fastdeit.patch: {where} is not a plain DeiT block (timm Block with Attention and Mlp, no layer "
                f"scale, qk-norm or gating); found {type(blk).__name__} with {extras or 'another layout'}"
            )
        _check_gelu(mlp.act, f"{where}.mlp.act")
        model.blocks[i] = Block.from_modules(
            _layer_norm(blk.norm1, backend, f"{where}.norm1"),
            _attention(
                attn.qkv, attn.proj, attn.num_heads, _dropout_p(attn.attn_drop), _dropout_p(attn.proj_drop), backend
            ),
            _layer_norm(blk.norm2, backend, f"{where}.norm2"),
            _mlp(mlp.fc1, mlp.fc2, _dropout_p(mlp.drop1), _dropout_p(mlp.drop2), backend),
            drop_path=_drop_prob(blk.drop_path1),
        )
    if isinstance(model.norm, nn.LayerNorm):
        model.norm = _layer_norm(model.norm, backend, "norm")


def _patch_hf(backbone: nn.Module, backend: str) -> None:
    config = backbone.config
    if config.hidden_act != "gelu":
        raise TypeError(f"fastdeit.patch: hidden_act must be 'gelu' (exact), got {config.hidden_act!r}")
    layers = getattr(backbone, "layers", None)
    if layers is None:
        raise TypeError(
            "fastdeit.patch: this Hugging Face model has no `layers` list (transformers>=5 layout); "
            "upgrade transformers to >= 5"
        )
    drop = float(config.hidden_dropout_prob)
    for i, layer in enumerate(layers):
        where = f"layers.{i}"
        a = layer.attention
        _check_gelu(layer.mlp.activation_fn, f"{where}.mlp.activation_fn")
        qkv = _PackedQKV(a.q_proj, a.k_proj, a.v_proj)
        layers[i] = Block.from_modules(
            _layer_norm(layer.layernorm_before, backend, f"{where}.layernorm_before"),
            _attention(qkv, a.o_proj, a.num_attention_heads, float(a.attention_dropout), drop, backend),
            _layer_norm(layer.layernorm_after, backend, f"{where}.layernorm_after"),
            _mlp(layer.mlp.fc1, layer.mlp.fc2, 0.0, drop, backend),
        )
    backbone.layernorm = _layer_norm(backbone.layernorm, backend, "layernorm")


def patch(model: nn.Module, *, backend: str = "auto") -> nn.Module:
    """Replace `model`'s LayerNorm, Attention and Mlp modules with fastdeit's fused ones, in place.

    The new modules share the original parameters; outputs are unchanged within kernel tolerance.
    `backend` is "auto" (fused Triton kernels on CUDA, PyTorch elsewhere), "triton" or "torch".
    Returns `model`. Raises TypeError for model types it does not know (listing those it supports).
    """
    prepare(backend)
    cls = type(model)
    name, module = cls.__name__, cls.__module__
    if isinstance(model, VisionTransformer):
        for m in model.modules():
            if isinstance(m, (LayerNorm, Attention, Mlp)):
                m.backend = backend
        model.backend = backend
    elif module.startswith("timm.") and name in ("VisionTransformer", "VisionTransformerDistilled"):
        _patch_timm(model, backend)
    elif module.startswith("transformers.") and name in _HF_BACKBONES:
        _patch_hf(model, backend)
    elif module.startswith("transformers.") and type(getattr(model, "deit", getattr(model, "vit", None))).__name__ in (
        _HF_BACKBONES
    ):
        _patch_hf(getattr(model, "deit", None) or model.vit, backend)
    else:
        raise TypeError(f"fastdeit.patch does not know {module}.{name}; supported models: " + "; ".join(SUPPORTED))
    return model
