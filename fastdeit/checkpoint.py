"""Reading and writing DeiT weights in every format a timm, official-DeiT or Hugging Face user has.

Formats are detected from the content, not the file name:
- official DeiT / timm `.pth`: a state dict, or one under "model" / "state_dict" (EMA: "model_ema" /
  "state_dict_ema"); `module.` (DDP) and `_orig_mod.` (torch.compile) prefixes are removed.
- Hugging Face: `DeiTForImageClassificationWithTeacher`, `DeiTForImageClassification`, `DeiTModel` and
  `ViTForImageClassification` (non-distilled DeiT on the Hub), in the Hub's key names and in transformers>=5's,
  from `model.safetensors` or `pytorch_model.bin` (a folder or the file); q/k/v are merged into qkv.
- safetensors files, fastdeit's `save_pretrained` folders (model.safetensors + config.json) and fastdeit
  training checkpoints (`{"model", "model_ema", "config", ...}`).
Every `torch.load` uses `weights_only=True`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from fastdeit._version import __version__
from fastdeit.io import atomic_path, atomic_write
from fastdeit.models.deit import VisionTransformer
from fastdeit.models.pos_embed import resample_pos_embed
from fastdeit.models.registry import create_model

StateDict = dict[str, torch.Tensor]

_HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_HEAD_KEYS = ("head.weight", "head.bias", "head_dist.weight", "head_dist.bias")


@dataclass
class LoadResult:
    """What `load_checkpoint` did: the detected format and anything it adapted or left out."""

    format: str
    path: str
    resampled_pos_embed: tuple[tuple[int, ...], tuple[int, ...]] | None = None
    dropped_head: bool = False
    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------- reading


def _resolve_path(path: str | os.PathLike) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"checkpoint not found: {str(p)!r}")
    if p.is_dir():
        for name in _HF_WEIGHT_FILES:
            if (p / name).is_file():
                return p / name
        raise FileNotFoundError(
            f"checkpoint folder {str(p)!r} holds none of {list(_HF_WEIGHT_FILES)}; "
            f"found: {sorted(q.name for q in p.iterdir())[:10]}"
        )
    return p


def _read_file(path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8:
        raise ValueError(f"checkpoint {str(path)!r} is empty or truncated ({len(head)} bytes)")
    # torch.save writes a zip archive ("PK"); legacy torch files are raw pickles (protocol byte 0x80).
    if head[:2] == b"PK" or head[:1] == b"\x80":
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(
                f"could not read {str(path)!r} as a torch checkpoint with weights_only=True "
                f"(only tensors and plain containers are accepted): {e}"
            ) from e
    try:
        return load_file(str(path), device="cpu")
    except Exception as e:
        raise ValueError(
            f"{str(path)!r} is neither a torch checkpoint nor a safetensors file (first bytes {head!r}): {e}"
        ) from e


def _unwrap(obj: Any, use_ema: bool, path: Path) -> tuple[StateDict, str]:
    """Find the model state dict inside a loaded checkpoint object."""
    if not isinstance(obj, dict):
        raise ValueError(f"checkpoint {str(path)!r} holds a {type(obj).__name__}, expected a dict of tensors")
    if use_ema:
        for key in ("model_ema", "state_dict_ema"):
            if isinstance(obj.get(key), dict):
                return obj[key], "ema"
        raise ValueError(
            f"use_ema=True but checkpoint {str(path)!r} has no EMA weights ('model_ema' or 'state_dict_ema'); "
            f"its top-level keys: {sorted(obj)[:10]}"
        )
    for key in ("model", "state_dict"):
        if isinstance(obj.get(key), dict):
            return obj[key], "training" if "config" in obj else "wrapped"
    return obj, "plain"


def _clean_keys(sd: StateDict) -> StateDict:
    out = {}
    for k, v in sd.items():
        if k == "n_averaged":  # torch.optim.swa_utils.AveragedModel bookkeeping
            continue
        for prefix in ("module.", "_orig_mod."):
            while k.startswith(prefix):
                k = k[len(prefix) :]
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"checkpoint entry {k!r} is a {type(v).__name__}, expected a tensor")
        out[k] = v
    return out


# ------------------------------------------------------------------------------- Hugging Face key mapping

_HF_LAYER_RULES = [  # (Hub name, transformers>=5 name, timm name) inside one encoder layer
    ("attention.output.dense", "attention.o_proj", "attn.proj"),
    ("intermediate.dense", "mlp.fc1", "mlp.fc1"),
    ("output.dense", "mlp.fc2", "mlp.fc2"),
    ("layernorm_before", "layernorm_before", "norm1"),
    ("layernorm_after", "layernorm_after", "norm2"),
]
_HF_QKV = [
    ("attention.attention.query", "attention.q_proj"),
    ("attention.attention.key", "attention.k_proj"),
    ("attention.attention.value", "attention.v_proj"),
]
_HF_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.distillation_token": "dist_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_HF_HEADS = {"cls_classifier": "head", "classifier": "head", "distillation_classifier": "head_dist"}
_HF_LAYER_RE = re.compile(r"^(?:encoder\.layer|layers)\.(\d+)\.(.+)$")


def _is_hf(sd: StateDict) -> bool:
    return any(k.startswith(("deit.", "vit.", "embeddings.")) for k in sd)


def hf_to_timm(sd: StateDict) -> tuple[StateDict, list[str]]:
    """Hugging Face DeiT/ViT keys -> timm keys, q/k/v merged into qkv. Returns (state dict, ignored keys)."""
    out: StateDict = {}
    ignored: list[str] = []
    qkv: dict[tuple[int, str], dict[int, torch.Tensor]] = {}
    for key, value in sd.items():
        k = re.sub(r"^(deit|vit)\.", "", key)
        head = k.split(".")[0]
        if head in _HF_HEADS and k.count(".") == 1:
            out[f"{_HF_HEADS[head]}.{k.split('.')[1]}"] = value
            continue
        if k in _HF_TOP:
            out[_HF_TOP[k]] = value
            continue
        m = _HF_LAYER_RE.match(k)
        if m is None:
            ignored.append(key)  # pooler, mask token: not part of DeiT's classifier
            continue
        i, rest = int(m.group(1)), m.group(2)
        for j, names in enumerate(_HF_QKV):
            name = next((n for n in names if rest.startswith(n + ".")), None)
            if name is not None:
                qkv.setdefault((i, rest[len(name) + 1 :]), {})[j] = value
                break
        else:
            for hub, new, timm_name in _HF_LAYER_RULES:
                name = hub if rest.startswith(hub + ".") else new if rest.startswith(new + ".") else None
                if name is not None:
                    out[f"blocks.{i}.{timm_name}.{rest[len(name) + 1 :]}"] = value
                    break
            else:
                ignored.append(key)
    for (i, param), parts in qkv.items():
        if sorted(parts) != [0, 1, 2]:
            raise ValueError(f"Hugging Face checkpoint: layer {i} {param} lacks some of query/key/value")
        out[f"blocks.{i}.attn.qkv.{param}"] = torch.cat([parts[0], parts[1], parts[2]], dim=0)
    return out, ignored


def timm_to_hf(sd: StateDict) -> StateDict:
    """timm keys -> Hugging Face Hub keys: `DeiTForImageClassificationWithTeacher` for a distilled state
    dict, `ViTForImageClassification` otherwise (how the Hub stores non-distilled DeiT)."""
    distilled = "dist_token" in sd
    prefix = "deit." if distilled else "vit."
    heads = {"head": "cls_classifier" if distilled else "classifier", "head_dist": "distillation_classifier"}
    top = {v: k for k, v in _HF_TOP.items()}
    out: StateDict = {}
    for k, v in sd.items():
        name, _, param = k.rpartition(".")
        if k in top:
            out[prefix + top[k]] = v
        elif name in heads:
            out[f"{heads[name]}.{param}"] = v
        elif (m := re.match(r"^blocks\.(\d+)\.(.+)$", name)) is not None:
            layer = f"{prefix}encoder.layer.{m.group(1)}."
            if m.group(2) == "attn.qkv":
                for (hub, _), part in zip(_HF_QKV, v.chunk(3, dim=0), strict=True):
                    out[f"{layer}{hub}.{param}"] = part.contiguous()
            else:
                hub = next((h for h, _, t in _HF_LAYER_RULES if t == m.group(2)), None)
                if hub is None:
                    raise ValueError(f"timm_to_hf: no Hugging Face name for {k!r}")
                out[f"{layer}{hub}.{param}"] = v
        else:
            raise ValueError(f"timm_to_hf: no Hugging Face name for {k!r}")
    return out


# ---------------------------------------------------------------------------------------------- loading


def read_checkpoint(path: str | os.PathLike, *, use_ema: bool = False) -> tuple[StateDict, str]:
    """Read weights from `path` into a timm-named state dict. Returns (state dict, format name)."""
    file = _resolve_path(path)
    sd, kind = _unwrap(_read_file(file), use_ema, file)
    sd = _clean_keys(sd)
    if _is_hf(sd):
        sd, _ = hf_to_timm(sd)
        return sd, "huggingface"
    fmt = {"training": "fastdeit-training", "ema": "ema"}.get(kind, "timm")
    if file.suffix == ".safetensors" and kind == "plain":
        fmt = "safetensors"
    return sd, fmt


def _describe(sd: StateDict) -> str:
    """A short architecture summary of a timm-named state dict, for error messages."""
    dim = sd["cls_token"].shape[-1] if "cls_token" in sd else "?"
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    head = sd.get("head.weight")
    classes = head.shape[0] if head is not None else "none"
    return f"embed_dim={dim}, depth={depth}, distilled={'dist_token' in sd}, num_classes={classes}"


def load_checkpoint(
    model: VisionTransformer,
    path: str | os.PathLike,
    *,
    strict: bool = True,
    drop_head: bool = False,
    use_ema: bool = False,
) -> LoadResult:
    """Load weights from `path` (any supported format) into `model`, in place.

    A position embedding of another grid is resampled (bicubic over the patch grid, prefix tokens kept).
    A head of another class count raises unless `drop_head=True` (the model keeps its own head). Shape
    mismatches always raise; missing/unexpected keys raise when `strict`, listing them.
    """
    sd, fmt = read_checkpoint(path, use_ema=use_ema)
    return load_state_dict(model, sd, fmt=fmt, path=path, strict=strict, drop_head=drop_head)


def load_state_dict(
    model: VisionTransformer,
    sd: StateDict,
    *,
    fmt: str,
    path: str | os.PathLike,
    strict: bool = True,
    drop_head: bool = False,
) -> LoadResult:
    """`load_checkpoint` for a state dict already read by `read_checkpoint(path)` (timm names); `sd` is adapted
    in place (resampled pos_embed, dropped head)."""
    result = LoadResult(format=fmt, path=str(path))
    own = model.state_dict()

    pos = sd.get("pos_embed")
    if pos is not None and pos.shape != own["pos_embed"].shape and pos.dim() == 3:
        if pos.shape[-1] != own["pos_embed"].shape[-1] or ("dist_token" in sd) != model.distilled:
            raise ValueError(
                f"checkpoint {str(path)!r} is for another architecture ({_describe(sd)}); "
                f"the model has {_describe(own)}"
            )
        sd["pos_embed"] = resample_pos_embed(pos, model.patch_embed.grid_size, model.num_prefix_tokens)
        result.resampled_pos_embed = (tuple(pos.shape), tuple(sd["pos_embed"].shape))

    head_keys = [k for k in _HEAD_KEYS if k in sd and k in own]
    if any(sd[k].shape != own[k].shape for k in head_keys) or (drop_head and head_keys):
        if not drop_head:
            got = sd["head.weight"].shape[0] if "head.weight" in sd else "?"
            raise ValueError(
                f"checkpoint {str(path)!r} has a head for {got} classes but the model has {model.num_classes}; "
                "pass drop_head=True to keep the model's new head (fine-tuning), or num_classes to match"
            )
        for k in head_keys:
            del sd[k]
        result.dropped_head = True

    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in sd.items()
        if k in own and v.shape != own[k].shape
    ]
    if mismatched:
        raise ValueError(
            f"checkpoint {str(path)!r} ({fmt}) does not fit the model: it looks like {_describe(sd)}, the model "
            f"has {_describe(own)}. Shape differences:\n  " + "\n  ".join(mismatched[:20])
        )
    missing = sorted(k for k in own if k not in sd and not (result.dropped_head and k in _HEAD_KEYS))
    unexpected = sorted(k for k in sd if k not in own)
    if strict and (missing or unexpected):
        raise ValueError(
            f"checkpoint {str(path)!r} ({fmt}, {_describe(sd)}) does not match the model ({_describe(own)}):\n"
            f"  missing keys: {missing[:20]}{' ...' if len(missing) > 20 else ''}\n"
            f"  unexpected keys: {unexpected[:20]}{' ...' if len(unexpected) > 20 else ''}\n"
            "pass strict=False to load the matching keys only"
        )
    result.missing_keys, result.unexpected_keys = missing, unexpected
    model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
    return result


# ---------------------------------------------------------------------------------------------- writing

_CONFIG_NAME = "config.json"
_WEIGHTS_NAME = "model.safetensors"


def _plain_state_dict(model: VisionTransformer) -> StateDict:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def save_pretrained(model: VisionTransformer, directory: str | os.PathLike) -> Path:
    """Write `model` to `directory` as model.safetensors plus a small config.json (both written atomically).

    `fastdeit.from_pretrained(directory)` rebuilds it; `load_checkpoint` and `create_model(checkpoint=...)`
    read it too.
    """
    if not isinstance(model, VisionTransformer):
        raise TypeError(f"save_pretrained expects a fastdeit VisionTransformer, got {type(model).__name__}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "architecture": getattr(model, "model_name", None),
        "model_config": getattr(model, "model_config", None),
        "pretrained_cfg": getattr(model, "pretrained_cfg", None),
        "format": "fastdeit",
        "fastdeit_version": __version__,
    }
    if config["architecture"] is None or config["model_config"] is None:
        raise ValueError("save_pretrained needs a model built by fastdeit.create_model (it records the config)")
    atomic_write(directory / _WEIGHTS_NAME, lambda tmp: save_file(_plain_state_dict(model), str(tmp)))
    atomic_write(directory / _CONFIG_NAME, lambda tmp: tmp.write_text(json.dumps(config, indent=2) + "\n"))
    return directory


def from_pretrained(directory: str | os.PathLike, *, backend: str = "auto", **kwargs: Any) -> VisionTransformer:
    """Rebuild a model written by `save_pretrained`; kwargs override `create_model` arguments."""
    directory = Path(directory).expanduser()
    config_file = directory / _CONFIG_NAME
    if not config_file.is_file():
        raise FileNotFoundError(f"{str(config_file)!r} not found: expected a folder written by save_pretrained")
    try:
        config = json.loads(config_file.read_text())
        name, model_config = config["architecture"], dict(config["model_config"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{str(config_file)!r} is not a fastdeit config (architecture, model_config): {e}") from e
    model_config.pop("distilled", None)
    model_config.update(kwargs)
    return create_model(name, checkpoint=directory, backend=backend, **model_config)


def save_hf(model: VisionTransformer, directory: str | os.PathLike) -> Path:
    """Write `model` as a Hugging Face folder (config.json + model.safetensors in the Hub's key names).

    Distilled models become `DeiTForImageClassificationWithTeacher`, others `ViTForImageClassification`,
    loadable with transformers' `from_pretrained`.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    block = model.blocks[0]
    config = {
        "architectures": ["DeiTForImageClassificationWithTeacher" if model.distilled else "ViTForImageClassification"],
        "model_type": "deit" if model.distilled else "vit",
        "hidden_size": model.embed_dim,
        "num_hidden_layers": len(model.blocks),
        "num_attention_heads": block.attn.num_heads,
        "intermediate_size": block.mlp.fc1.out_features,
        "hidden_act": "gelu",
        "layer_norm_eps": model.norm.eps,
        "image_size": model.img_size[0],
        "patch_size": model.patch_size[0],
        "num_channels": model.patch_embed.in_chans,
        "qkv_bias": block.attn.qkv.bias is not None,
        "id2label": {str(i): f"LABEL_{i}" for i in range(model.num_classes)},
        "label2id": {f"LABEL_{i}": i for i in range(model.num_classes)},
    }
    with atomic_path(directory / _WEIGHTS_NAME) as tmp:
        save_file(timm_to_hf(_plain_state_dict(model)), str(tmp), metadata={"format": "pt"})
    atomic_write(directory / _CONFIG_NAME, lambda tmp: tmp.write_text(json.dumps(config, indent=2) + "\n"))
    return directory
