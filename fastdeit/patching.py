"""Patching an existing DeiT/ViT in place: its LayerNorm, Attention and MLP become fastdeit's fused ones.

One function per model family (as Liger-Kernel's `apply_liger_kernel_to_*`), and `patch`, which picks the function
by the model's type:

    fastdeit.patch_timm_vit(model)   # timm VisionTransformer / VisionTransformerDistilled (DeiT configurations)
    fastdeit.patch_hf_deit(model)    # transformers>=5 DeiTModel, DeiTForImageClassification(WithTeacher)
    fastdeit.patch_hf_vit(model)     # transformers>=5 ViTModel, ViTForImageClassification
    fastdeit.patch_fastdeit(model)   # fastdeit's VisionTransformer: switches its backend
    fastdeit.patch(model)            # any of the above

The new modules hold the original parameters (the same tensors, so an optimizer built before keeps training them)
and are registered under the original names: `state_dict()` and `named_parameters()` give the keys they gave before,
so the model's own `save_pretrained` / `torch.save` checkpoints load back into an unpatched model. Each transformer
block becomes a fastdeit `Block`, so its residual adds are fused too. A model whose blocks are not plain DeiT blocks
(layer scale, qk-norm, another activation) is refused with TypeError, not patched halfway.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
from torch import nn

from fastdeit.layers import Attention, Block, LayerNorm, Mlp, prepare
from fastdeit.models import VisionTransformer

SUPPORTED = (
    "timm VisionTransformer / VisionTransformerDistilled, DeiT configurations (patch_timm_vit)",
    "transformers>=5 DeiTModel, DeiTForImageClassification, DeiTForImageClassificationWithTeacher (patch_hf_deit)",
    "transformers>=5 ViTModel, ViTForImageClassification (patch_hf_vit)",
    "fastdeit VisionTransformer (patch_fastdeit)",
)


def _imported_class(module: str, name: str) -> type | None:
    """Class `name` of `module` if that module is imported already: a model of a library's class exists only once
    the library is imported, so the check never imports timm or transformers itself."""
    return getattr(sys.modules.get(module), name, None)


def _drop_prob(module: nn.Module) -> float:
    return float(getattr(module, "drop_prob", 0.0)) if not isinstance(module, nn.Identity) else 0.0


def _dropout_p(module: nn.Module | float) -> float:
    return float(module) if isinstance(module, int | float) else float(getattr(module, "p", 0.0))


def _layer_norm(ln: nn.Module, backend: str, where: str) -> LayerNorm:
    if not isinstance(ln, nn.LayerNorm) or ln.weight is None or len(ln.normalized_shape) != 1:
        raise TypeError(f"fastdeit.patch: {where} must be a LayerNorm over the last dim with weights, got {ln!r}")
    with torch.device("meta"):  # its own parameters are replaced by ln's: allocate nothing
        new = LayerNorm(ln.normalized_shape[0], eps=ln.eps, backend=backend, bias=ln.bias is not None)
    new.weight, new.bias = ln.weight, ln.bias
    return new.train(ln.training)  # new modules start in training mode


def _attention(dim: int, num_heads: int, qkv_bias: bool, attn_drop: float, proj_drop: float, backend: str) -> Attention:
    """A fastdeit Attention without projections (on the meta device): the caller gives it the model's."""
    with torch.device("meta"):
        attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop, backend=backend)
    del attn.qkv, attn.proj
    return attn


def _mlp(fc1: nn.Linear, fc2: nn.Linear, drop1: float, drop2: float, backend: str) -> Mlp:
    with torch.device("meta"):
        mlp = Mlp(fc1.in_features, fc1.out_features, fc2.out_features, bias=fc1.bias is not None, backend=backend)
    mlp.fc1, mlp.fc2 = fc1, fc2
    mlp.drop1.p, mlp.drop2.p = drop1, drop2
    return mlp


def _check_gelu(act: object, where: str) -> None:
    exact = isinstance(act, nn.GELU) and act.approximate == "none"
    hf_gelu = _imported_class("transformers.activations", "GELUActivation")
    hf_exact = hf_gelu is not None and isinstance(act, hf_gelu) and getattr(act, "act", None) is nn.functional.gelu
    if not (exact or hf_exact):
        raise TypeError(f"fastdeit.patch: {where} must be the exact (erf) GELU, got {act!r}")


class _PackedQKV:
    """Hugging Face's separate q/k/v projections seen as one packed qkv linear (timm's layout), for Attention.

    Not a module: the projections stay registered where they were (`attention.q_proj`, ...). The packed weight is
    concatenated on each call (3 * C * C elements, small next to the activations), so the original parameters stay
    the ones trained and saved.
    """

    def __init__(self, q: nn.Linear, k: nn.Linear, v: nn.Linear) -> None:
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


def _register(module: nn.Module, children: dict[str, nn.Module], attributes: dict[str, object]) -> None:
    """Register `children` (name -> module) first among the module's children, and set `attributes` as plain
    instance attributes, which its forward reads and `state_dict()`, `.to()` and `named_parameters()` never see:
    a fastdeit layer whose submodules keep another library's names. Its other children stay, after them."""
    existing = dict(module.named_children())
    for name in existing:
        delattr(module, name)
    kept = {name: child for name, child in existing.items() if name not in attributes and name not in children}
    for name, child in (children | kept).items():
        module.add_module(name, child)
    for name, value in attributes.items():
        object.__setattr__(module, name, value)


def _set_backend(root: nn.Module, backend: str) -> None:
    """Switch every fastdeit layer under `root` to `backend` (a model patched before, or a fastdeit model)."""
    for m in root.modules():
        if isinstance(m, LayerNorm | Attention | Mlp):
            m.backend = backend


def patch_timm_vit(model: nn.Module, *, backend: str = "auto") -> nn.Module:
    """Patch a timm `VisionTransformer` / `VisionTransformerDistilled` of a DeiT configuration (or a model of
    timm's layout: `blocks` of timm Blocks with `attn.qkv`, `attn.proj`, `mlp.fc1`, `mlp.fc2`, and `norm`) in place.

    Parameter names are timm's before and after. `backend`: "auto" (fused Triton kernels on CUDA, PyTorch
    elsewhere), "triton" or "torch". Returns `model`; TypeError for blocks with layer scale, qk-norm, gating or
    another activation.
    """
    prepare(backend)
    if all(isinstance(blk, Block) for blk in model.blocks):  # patched before: only the backend changes
        _set_backend(model, backend)
        return model
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
        if extras or not hasattr(attn, "qkv") or not hasattr(mlp, "fc1") or not hasattr(blk, "norm1"):
            raise TypeError(
                f"fastdeit.patch: {where} is not a plain DeiT block (timm Block with Attention and Mlp, no layer "
                f"scale, qk-norm or gating); found {type(blk).__name__} with {extras or 'another layout'}"
            )
        _check_gelu(mlp.act, f"{where}.mlp.act")
        new_attn = _attention(
            attn.proj.in_features,
            attn.num_heads,
            attn.qkv.bias is not None,
            _dropout_p(attn.attn_drop),
            _dropout_p(attn.proj_drop),
            backend,
        )
        new_attn.qkv, new_attn.proj = attn.qkv, attn.proj
        block = Block.from_modules(
            _layer_norm(blk.norm1, backend, f"{where}.norm1"),
            new_attn,
            _layer_norm(blk.norm2, backend, f"{where}.norm2"),
            _mlp(mlp.fc1, mlp.fc2, _dropout_p(mlp.drop1), _dropout_p(mlp.drop2), backend),
            drop_path=_drop_prob(blk.drop_path1),
        )
        model.blocks[i] = block.train(blk.training)  # new modules start in training mode
    if isinstance(model.norm, nn.LayerNorm):
        model.norm = _layer_norm(model.norm, backend, "norm")
    return model


def _refuse_layer_outputs(module: nn.Module, args: tuple, kwargs: dict) -> None:
    """Forward pre-hook of a patched Hugging Face model: transformers records hidden states and attention maps from
    its own layer classes, which the patch replaced, so it would return them empty; fused attention has no map."""
    config = module.config
    asked = [
        flag
        for flag in ("output_hidden_states", "output_attentions")
        if kwargs.get(flag) or (kwargs.get(flag) is None and getattr(config, flag, False))
    ]
    if asked:
        raise ValueError(
            f"fastdeit.patch: a patched {type(module).__name__} cannot return {' or '.join(asked)} (transformers "
            "collects them from its own layers, which the patch replaced); run an unpatched copy for them"
        )


def _patch_hf_backbone(backbone: nn.Module, backend: str) -> None:
    """Patch the encoder layers and final LayerNorm of a transformers>=5 DeiTModel / ViTModel, keeping its names.
    Patching again only switches the backend."""
    prepare(backend)
    if getattr(backbone, "_fastdeit_patched", False):
        _set_backend(backbone, backend)
        return
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
        attn = _attention(
            a.o_proj.in_features, a.num_attention_heads, a.q_proj.bias is not None, float(a.attention_dropout), drop,
            backend,
        )  # fmt: skip
        _register(
            attn,
            {"q_proj": a.q_proj, "k_proj": a.k_proj, "v_proj": a.v_proj, "o_proj": a.o_proj},
            {"qkv": _PackedQKV(a.q_proj, a.k_proj, a.v_proj), "proj": a.o_proj},
        )
        norm1 = _layer_norm(layer.layernorm_before, backend, f"{where}.layernorm_before")
        norm2 = _layer_norm(layer.layernorm_after, backend, f"{where}.layernorm_after")
        mlp = _mlp(layer.mlp.fc1, layer.mlp.fc2, 0.0, drop, backend)
        block = Block.from_modules(norm1, attn, norm2, mlp)
        # Registered under transformers' names (layers.N.attention.q_proj, layers.N.layernorm_before, ...), so the
        # state dict and transformers' save_pretrained keep the keys transformers loads back.
        _register(
            block,
            {"attention": attn, "layernorm_before": norm1, "layernorm_after": norm2, "mlp": mlp},
            {"attn": attn, "norm1": norm1, "norm2": norm2},
        )
        layers[i] = block.train(layer.training)  # new modules start in training mode
    backbone.layernorm = _layer_norm(backbone.layernorm, backend, "layernorm")
    backbone._fastdeit_patched = True


def _patch_hf(model: nn.Module, backbone: nn.Module, backend: str) -> None:
    _patch_hf_backbone(backbone, backend)
    for module in {id(m): m for m in (model, backbone)}.values():
        if not getattr(module, "_fastdeit_refuses_layer_outputs", False):
            module.register_forward_pre_hook(_refuse_layer_outputs, with_kwargs=True)
            module._fastdeit_refuses_layer_outputs = True


def _hf_backbone(model: nn.Module, backbone_class: type | None, attribute: str, family: str) -> nn.Module:
    if backbone_class is not None and isinstance(model, backbone_class):
        return model
    backbone = getattr(model, attribute, None)
    if backbone_class is None or not isinstance(backbone, backbone_class):
        raise TypeError(f"fastdeit.patch_hf_{family}: expected a transformers {family} model, got {type(model)}")
    return backbone


def patch_hf_deit(model: nn.Module, *, backend: str = "auto") -> nn.Module:
    """Patch a transformers>=5 `DeiTModel`, `DeiTForImageClassification` or `DeiTForImageClassificationWithTeacher`
    in place. Its state dict keeps transformers' keys, so its `save_pretrained` folder loads back with transformers.
    `backend` as for `patch_timm_vit`. Returns `model`."""
    backbone_class = _imported_class("transformers.models.deit.modeling_deit", "DeiTModel")
    _patch_hf(model, _hf_backbone(model, backbone_class, "deit", "deit"), backend)
    return model


def patch_hf_vit(model: nn.Module, *, backend: str = "auto") -> nn.Module:
    """Patch a transformers>=5 `ViTModel` or `ViTForImageClassification` in place (as `patch_hf_deit`)."""
    backbone_class = _imported_class("transformers.models.vit.modeling_vit", "ViTModel")
    _patch_hf(model, _hf_backbone(model, backbone_class, "vit", "vit"), backend)
    return model


def patch_fastdeit(model: VisionTransformer, *, backend: str = "auto") -> VisionTransformer:
    """Switch a fastdeit `VisionTransformer` (and every fastdeit layer in it) to `backend`, in place."""
    prepare(backend)
    _set_backend(model, backend)
    model.backend = backend
    return model


def _families() -> list[tuple[tuple[type, ...], Callable[..., nn.Module]]]:
    """(the classes of a family that are imported, its patch function)."""

    def imported(*names: tuple[str, str]) -> tuple[type, ...]:
        return tuple(c for c in (_imported_class(module, name) for module, name in names) if c is not None)

    return [
        ((VisionTransformer,), patch_fastdeit),
        (
            imported(
                ("timm.models.vision_transformer", "VisionTransformer"),
                ("timm.models.deit", "VisionTransformerDistilled"),
            ),
            patch_timm_vit,
        ),
        (imported(("transformers.models.deit.modeling_deit", "DeiTPreTrainedModel")), patch_hf_deit),
        (imported(("transformers.models.vit.modeling_vit", "ViTPreTrainedModel")), patch_hf_vit),
    ]


def patch(model: nn.Module, *, backend: str = "auto") -> nn.Module:
    """Patch `model` with the function of its family (see the module docstring), chosen by isinstance.

    `backend` is "auto" (fused Triton kernels on CUDA, PyTorch elsewhere), "triton" or "torch". Returns `model`.
    Raises TypeError for a model of another type, naming the supported families; a model of one of their layouts
    but another class can be given to the family's function directly.
    """
    prepare(backend)
    for classes, patch_family in _families():
        if classes and isinstance(model, classes):
            return patch_family(model, backend=backend)
    cls = type(model)
    raise TypeError(
        f"fastdeit.patch does not know {cls.__module__}.{cls.__qualname__}; supported models: " + "; ".join(SUPPORTED)
    )
