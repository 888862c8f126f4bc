"""The model-building side: a model from a name or from anything saved (checkpoint files, `save_pretrained` and
Hugging Face folders, training checkpoints and run folders), and saving one so that it comes back the same.

    model = fastdeit.create_model("deit_small_patch16_224", checkpoint="deit_small_patch16_224.pth")
    model = fastdeit.from_pretrained("runs/digits")        # a training run: its newest checkpoint
    model = fastdeit.from_pretrained("hf/deit-base-distilled-patch16-384")
    fastdeit.save_pretrained(model, "my_model")            # fastdeit.from_pretrained("my_model") rebuilds it
    fastdeit.save_hf(model, "my_model_hf")                 # transformers' from_pretrained reads it

A checkpoint that records its architecture (training checkpoints, `save_pretrained` and Hugging Face folders) is
rebuilt as it was: architecture, LayerNorm eps, image size, class names; arguments the caller gives are checked
against what it records, and a conflict raises ValueError naming both sides. Bare weights (timm/official .pth,
safetensors) need the model name; their image size and class count are read off the weights.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import nn

from fastdeit._version import __version__
from fastdeit.io import atomic_path, atomic_write
from fastdeit.models.checkpoint import (
    CONFIG_NAME,
    Checkpoint,
    StateDict,
    load_checkpoint,
    load_state_dict,
    read_checkpoint,
    timm_to_hf,
)
from fastdeit.models.config import CHECKED_FIELDS, VisionTransformerConfig
from fastdeit.models.convnet import ConvNet, ConvNetConfig, create_convnet, is_convnet
from fastdeit.models.deit import VisionTransformer
from fastdeit.models.registry import MODEL_CONFIGS, list_models, model_config

_WEIGHTS_NAME = "model.safetensors"
_CONFIG_FIELDS = {f for f in VisionTransformerConfig.__dataclass_fields__ if f != "name"}
_LAYER_ARGUMENTS = {"norm_layer", "attn_layer", "mlp_layer"}
# What a model name says about the architecture (besides the image size, handled on its own).
_NAMED_FIELDS = ("embed_dim", "depth", "num_heads", "distilled", "patch_size", "mlp_ratio")


def registry_name(config: VisionTransformerConfig, *, any_img_size: bool = False) -> str | None:
    """The `list_models()` name whose architecture (`_NAMED_FIELDS`) and image size `config` has, if any; with
    `any_img_size`, one of any image size (its own first): the name to build `config` from with overrides."""
    named = [VisionTransformerConfig(name=n, **MODEL_CONFIGS[n]) for n in list_models()]
    same = [c for c in named if all(getattr(c, f) == getattr(config, f) for f in _NAMED_FIELDS)]
    sized = [c.name for c in same if c.img_size == config.img_size]
    return (sized or ([c.name for c in same] if any_img_size else []) or [None])[0]


def _weights_facts(sd: StateDict) -> dict[str, Any]:
    """What bare weights tell about the model: class count, and the image size where the patch grid is square."""
    facts: dict[str, Any] = {}
    head = sd.get("head.weight")
    facts["num_classes"] = int(head.shape[0]) if head is not None else 0
    pos, proj = sd.get("pos_embed"), sd.get("patch_embed.proj.weight")
    if pos is not None and proj is not None and pos.dim() == 3:
        patches = pos.shape[1] - (2 if "dist_token" in sd else 1)
        side = math.isqrt(max(patches, 0))
        if side * side == patches:
            facts["img_size"] = (side * proj.shape[-2], side * proj.shape[-1])
    return facts


class ArchitectureMismatch(ValueError):
    """A checkpoint that records another architecture than the model name given with it.

    The message ends with what a Python caller does about it (leave out the name); `mismatch` is the message
    without that hint, for front ends that say it in their own terms (the command line: give the checkpoint as
    --model).
    """

    def __init__(self, mismatch: str) -> None:
        super().__init__(f"{mismatch}; leave out the name to build the checkpoint's model")
        self.mismatch = mismatch


def _check_name(recorded: VisionTransformerConfig, named: VisionTransformerConfig, where: str) -> None:
    """A checkpoint recording another model than the name names (with the caller's overrides): ArchitectureMismatch."""
    differences = [
        f"{f}: {getattr(recorded, f)!r} vs {getattr(named, f)!r}"
        for f in _NAMED_FIELDS
        if getattr(recorded, f) != getattr(named, f)
    ]
    if differences:
        raise ArchitectureMismatch(
            f"{where} holds {recorded.describe()}, not a {named.name}: {'; '.join(differences)} (checkpoint vs "
            f"{named.name})"
        )


def _config_for(
    name: str | None, ckpt: Checkpoint | None, requested: dict[str, Any], drop_head: bool
) -> VisionTransformerConfig:
    """The config of the model to build: the checkpoint's (or the name's) with the caller's `requested` fields.
    A request that contradicts what the checkpoint records raises ValueError naming both sides."""
    where = f"checkpoint {str(ckpt.path)!r}" if ckpt is not None else "create_model"
    recorded = ckpt.config if ckpt is not None else None
    if isinstance(recorded, ConvNetConfig):
        raise ValueError(
            f"{where} holds {recorded.describe()}, not a DeiT: create_model builds DeiT models "
            f"({', '.join(list_models())}); fastdeit.models.load_model builds convnets too"
        )
    checked = {f: requested[f] for f in CHECKED_FIELDS if f in requested}
    # The caller's model: the name's, with the fields asked for (timm-style overrides).
    named = VisionTransformerConfig(name=name, **{**model_config(name), **checked}) if name is not None else None
    if recorded is None and named is None:
        raise ValueError(
            (ckpt.unsupported if ckpt is not None else None)
            or f"{where} holds bare weights that do not record their architecture: pass the model name too "
            f"(create_model(name, checkpoint=...); one of {', '.join(list_models())})"
        )
    if recorded is None:
        base = named
        known = _weights_facts(ckpt.state_dict) if ckpt is not None else {}
    else:
        known = {"num_classes": recorded.num_classes, "img_size": recorded.img_size}
        base = recorded if recorded.name is not None else recorded.replace(name=registry_name(recorded))
        if named is not None and recorded.name != name:
            _check_name(recorded, named, where)
            base = recorded.replace(name=name)
        conflicts = recorded.differences(recorded.replace(**checked))
        if conflicts:
            raise ValueError(
                f"{where} holds {recorded.describe()}; asked for another model: {'; '.join(conflicts)} "
                "(checkpoint vs asked)"
            )
    changes = dict(requested)
    if "img_size" in known and "img_size" not in changes:
        # Resampling the position embedding changes the outputs: only when asked for. A name says which size the
        # caller expects (unless it is the checkpoint's own name, whose recorded size is part of its overrides).
        size = tuple(known["img_size"])
        if named is not None and (recorded is None or recorded.name != name) and named.img_size != size:
            raise ValueError(
                f"{where} holds weights for {size[0]}x{size[1]} images but {name} is a {named.img_size[0]}x"
                f"{named.img_size[1]} model: pass img_size={named.img_size[0]} to resample its position embedding, "
                f"or img_size={size[0]} to build the model at the checkpoint's size (fastdeit predict, embed, export: "
                f"--img-size)"
            )
        changes["img_size"] = size
    changes.setdefault("num_classes", known.get("num_classes", base.num_classes))
    if "class_names" not in changes:
        keeps_head = ckpt is not None and not drop_head and changes["num_classes"] == known.get("num_classes")
        changes["class_names"] = ckpt.class_names if keeps_head else None
    return base.replace(**changes)


def create_model(
    name: str | None = None,
    *,
    checkpoint: str | os.PathLike | None = None,
    num_classes: int | None = None,
    img_size: int | tuple[int, int] | None = None,
    backend: str = "auto",
    drop_path_rate: float = 0.0,
    drop_head: bool = False,
    use_ema: bool = False,
    **kwargs: Any,
) -> VisionTransformer:
    """Build DeiT model `name` (see `list_models()`), or the model a checkpoint records, optionally with its weights.

    Args:
        name: the architecture; may be left out when `checkpoint` records one (training checkpoints and run folders,
            `save_pretrained` and Hugging Face folders), and is then checked against it.
        checkpoint: weights in any format `fastdeit.load_checkpoint` reads. The model is built as the checkpoint
            records it (architecture, LayerNorm eps, image size, class names); bare weights give their image size
            and class count.
        num_classes: classifier size (0: no head, `forward` returns pre-logits features); default the checkpoint's,
            else 1000. Another count than the checkpoint's needs `drop_head`.
        img_size: input size; default the checkpoint's, else the name's (a name of another size than the
            checkpoint's raises: say which). A checkpoint of another size than img_size has its position embedding
            resampled (bicubic, over the patch grid; cls/dist tokens kept).
        backend: "auto" (Triton kernels on CUDA, PyTorch elsewhere), "triton" or "torch".
        drop_path_rate: stochastic depth rate of the last block (linear in depth).
        drop_head: load a checkpoint whose head has another class count, keeping this model's fresh head.
        use_ema: load the EMA weights of a training checkpoint.
        kwargs: other `VisionTransformerConfig` fields (embed_dim, depth, num_heads, patch_size, mlp_ratio,
            layer_norm_eps, class_names, ...) and the layer classes norm_layer, attn_layer, mlp_layer.

    Raises ValueError for an unknown name or argument, and for anything asked for that contradicts the checkpoint
    (each naming both sides; ArchitectureMismatch, a ValueError, for a name of another architecture).
    """
    unknown = sorted(set(kwargs) - _CONFIG_FIELDS - _LAYER_ARGUMENTS)
    if unknown:
        accepted = sorted(_CONFIG_FIELDS | _LAYER_ARGUMENTS | {"checkpoint", "backend", "drop_head", "use_ema"})
        raise ValueError(f"create_model got unknown arguments {unknown}; accepted: {accepted}")
    ckpt = read_checkpoint(checkpoint, use_ema=use_ema) if checkpoint is not None else None
    return _build(name, ckpt, num_classes, img_size, backend, drop_path_rate, drop_head, kwargs)


def _build(
    name: str | None,
    ckpt: Checkpoint | None,
    num_classes: int | None,
    img_size: int | tuple[int, int] | None,
    backend: str,
    drop_path_rate: float,
    drop_head: bool,
    kwargs: dict[str, Any],
) -> VisionTransformer:
    layers = {k: kwargs[k] for k in _LAYER_ARGUMENTS & set(kwargs)}
    requested = {k: v for k, v in kwargs.items() if k in _CONFIG_FIELDS}
    requested["drop_path_rate"] = drop_path_rate
    if num_classes is not None:
        requested["num_classes"] = num_classes
    if img_size is not None:
        requested["img_size"] = img_size
    config = _config_for(name, ckpt, requested, drop_head)
    model = VisionTransformer(config, backend=backend, **layers)
    if ckpt is not None:
        load_state_dict(model, ckpt, strict=True, drop_head=drop_head)
    return model


def from_pretrained(
    path: str | os.PathLike, *, backend: str = "auto", use_ema: bool = False, **kwargs: Any
) -> VisionTransformer:
    """The DeiT model saved at `path`, rebuilt from what it records: a `save_pretrained` or Hugging Face folder, a
    training checkpoint file or run folder (its newest readable checkpoint). `kwargs` as for `create_model`
    (img_size to resample, num_classes with drop_head for a new head, ...); `create_model(checkpoint=path)` is the
    same."""
    return create_model(checkpoint=path, backend=backend, use_ema=use_ema, **kwargs)


def model_from_checkpoint(
    ckpt: Checkpoint, *, img_size: int | tuple[int, int] | None = None, backend: str = "auto"
) -> nn.Module:
    """The model a checkpoint read by `read_checkpoint` records (a DeiT, or a convnet of fastdeit.models.convnet),
    with its weights; `img_size` builds a DeiT at another size (convnets take any). ValueError for bare weights."""
    if isinstance(ckpt.config, ConvNetConfig):
        model = ConvNet(ckpt.config)
        load_state_dict(model, ckpt)
        return model
    return _build(None, ckpt, None, img_size, backend, 0.0, False, {})


def load_model(
    model: str | os.PathLike | nn.Module,
    *,
    checkpoint: str | os.PathLike | None = None,
    num_classes: int | None = None,
    img_size: int | tuple[int, int] | None = None,
    backend: str = "auto",
    use_ema: bool = False,
) -> nn.Module:
    """A model from anything that names one, then the weights of `checkpoint`, if given; what `fastdeit predict`,
    `embed` and `export` do with --model and --checkpoint.

    `model` is a module (used as it is), a model name (`fastdeit.list_models()`, or a convnet of
    `fastdeit.models.convnet`), or a path: a `save_pretrained` or Hugging Face folder, or a training checkpoint file
    or run folder (its newest readable checkpoint), rebuilt with its architecture and class names. A name with a
    `checkpoint` is built as `create_model(name, checkpoint=...)` does (the checkpoint's class count, names and
    size, checked against the name). `num_classes` defaults to the checkpoint's or the saved model's, else 1000; a
    model of another class count raises ValueError. `img_size` builds the model at another size (its position
    embedding resampled).
    """
    if isinstance(model, nn.Module):
        built = model
    elif isinstance(model, str | os.PathLike):
        path = Path(model).expanduser()
        if path.exists():
            built = model_from_checkpoint(read_checkpoint(path, use_ema=use_ema), img_size=img_size, backend=backend)
        elif os.sep in os.fspath(model) or path.suffix or (os.altsep and os.altsep in os.fspath(model)):
            raise FileNotFoundError(
                f"model {os.fspath(model)!r} is neither a model name nor a save_pretrained folder, Hugging Face "
                "folder, training checkpoint or run folder: no such path"
            )
        elif is_convnet(os.fspath(model)):
            built = create_convnet(os.fspath(model), num_classes=10 if num_classes is None else num_classes)
        else:
            # With a checkpoint, the model is built as the checkpoint records it (class count, names, size),
            # checked against the name; the checkpoint is then loaded here, once.
            classes = 1000 if num_classes is None and checkpoint is None else num_classes
            built = create_model(
                os.fspath(model), checkpoint=checkpoint, num_classes=classes, img_size=img_size, backend=backend,
                use_ema=use_ema,
            )  # fmt: skip
            checkpoint = None
    else:
        raise TypeError(
            f"model must be a model name, a path to a saved model or an nn.Module, got {type(model).__name__}"
        )
    if num_classes is not None and built.num_classes != num_classes:
        raise ValueError(f"num_classes={num_classes} but the model has {built.num_classes} classes")
    if checkpoint is not None:
        load_checkpoint(built, checkpoint, use_ema=use_ema)
    return built


# ---------------------------------------------------------------------------------------------- writing


def _plain_state_dict(model: nn.Module) -> StateDict:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def _check_saveable(model: nn.Module, what: str) -> VisionTransformer:
    if not isinstance(model, VisionTransformer):
        raise TypeError(f"{what} expects a fastdeit VisionTransformer, got {type(model).__name__}")
    return model


def save_pretrained(model: VisionTransformer, directory: str | os.PathLike) -> Path:
    """Write `model` to `directory` as model.safetensors plus config.json (its `config`: architecture, eps, class
    names, preprocessing), both written atomically. `fastdeit.from_pretrained(directory)` rebuilds it."""
    model = _check_saveable(model, "save_pretrained")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "format": "fastdeit",
        "fastdeit_version": __version__,
        "architecture": model.config.name,
        "model_config": model.config.to_dict(),
        "pretrained_cfg": model.pretrained_cfg,
    }
    atomic_write(directory / _WEIGHTS_NAME, lambda tmp: save_file(_plain_state_dict(model), str(tmp)))
    atomic_write(directory / CONFIG_NAME, lambda tmp: tmp.write_text(json.dumps(config, indent=2) + "\n"))
    return directory


def save_hf(model: VisionTransformer, directory: str | os.PathLike) -> Path:
    """Write `model` as a Hugging Face folder (config.json + model.safetensors in the Hub's key names), loadable with
    transformers' `from_pretrained`: distilled models as `DeiTForImageClassificationWithTeacher`, others as
    `ViTForImageClassification`; LayerNorm eps, image size and class names (id2label) included, and the eval transform
    with its mean and std in preprocessor_config.json (transformers' AutoImageProcessor reads it)."""
    model = _check_saveable(model, "save_hf")
    hf_config = model.config.to_hf_config()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / _WEIGHTS_NAME) as tmp:
        save_file(timm_to_hf(_plain_state_dict(model)), str(tmp), metadata={"format": "pt"})
    atomic_write(directory / CONFIG_NAME, lambda tmp: tmp.write_text(json.dumps(hf_config, indent=2) + "\n"))
    processor = json.dumps(model.config.to_hf_preprocessor(), indent=2) + "\n"
    atomic_write(directory / "preprocessor_config.json", lambda tmp: tmp.write_text(processor))
    return directory
