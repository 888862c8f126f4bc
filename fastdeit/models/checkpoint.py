"""The state-dict side of checkpoints: reading weights in every format a timm, official-DeiT, Hugging Face or
fastdeit user has, converting timm <-> Hugging Face names, and loading them into a model with every known fact
checked. Building a model from a checkpoint is `fastdeit.models.build`'s job.

Formats are detected from the content, not the file name:
- official DeiT / timm `.pth`: a state dict, or one under "model" / "state_dict" (EMA: "model_ema" /
  "state_dict_ema"); `module.` (DDP) and `_orig_mod.` (torch.compile) prefixes are removed.
- Hugging Face: `DeiTForImageClassificationWithTeacher`, `DeiTModel`, `ViTForImageClassification` (non-distilled
  DeiT on the Hub) and `ViTModel`, in the Hub's key names and in transformers>=5's, from `model.safetensors` or
  `pytorch_model.bin` (a folder, whose `config.json` is read too, or the file); q/k/v are merged into qkv.
- safetensors files; fastdeit's `save_pretrained` folders (model.safetensors + config.json); fastdeit training
  checkpoints (`{"model", "model_ema", "config", "model_name", "model_config", "class_names", ...}`), one file or
  a run folder of `ckpt_<step>.pt` files (the newest readable one is used).
Every `torch.load` uses `weights_only=True`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import load_file
from torch import nn

from fastdeit.models.config import VisionTransformerConfig
from fastdeit.models.convnet import CONVNET_CONFIGS, ConvNetConfig
from fastdeit.models.deit import VisionTransformer
from fastdeit.models.pos_embed import resample_pos_embed
from fastdeit.models.registry import MODEL_CONFIGS

StateDict = dict[str, torch.Tensor]
T = TypeVar("T")

logger = logging.getLogger(__name__)

HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
CONFIG_NAME = "config.json"
_HEAD_KEYS = ("head.weight", "head.bias", "head_dist.weight", "head_dist.bias")
_RUN_CHECKPOINT = re.compile(r"^ckpt_(\d+)\.pt$")


class CheckpointWarning(UserWarning):
    """A checkpoint was passed over (unreadable) or loaded with something left out."""


@dataclass
class Checkpoint:
    """Weights read by `read_checkpoint`, in timm's names, with what the checkpoint records about them.

    `config` is the architecture the checkpoint records (training checkpoints, `save_pretrained` and Hugging Face
    folders), None for bare weights, and for a recorded architecture fastdeit does not build (`unsupported` says
    why); `class_names` the name of each output of the weights' head, None when unknown.
    """

    state_dict: StateDict
    format: str
    path: Path
    config: VisionTransformerConfig | ConvNetConfig | None = None
    class_names: tuple[str, ...] | None = None
    unsupported: str | None = None


@dataclass
class LoadResult:
    """What `load_checkpoint` did: the detected format, the file read, and anything it adapted or left out."""

    format: str
    path: str
    resampled_pos_embed: tuple[tuple[int, ...], tuple[int, ...]] | None = None
    dropped_head: bool = False
    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------- training runs


def checkpoint_name(step: int) -> str:
    """The file name train.py gives the checkpoint of `step`."""
    return f"ckpt_{step:08d}.pt"


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """The training checkpoints (`ckpt_<step>.pt`) in `directory`, oldest (lowest step) first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _RUN_CHECKPOINT.match(p.name)) and p.is_file()]
    return [p for _, p in sorted(found)]


def load_newest(directory: str | os.PathLike, load: Callable[[Path], T]) -> tuple[Path, T]:
    """`load` the newest checkpoint of a training run folder that it can read, newest first.

    A checkpoint `load` fails on with ValueError (truncated, corrupt) is passed over with a CheckpointWarning
    naming it and the error. Returns (the file, what `load` returned); FileNotFoundError when the folder holds no
    checkpoint, ValueError naming every error when none is readable.
    """
    candidates = list_checkpoints(directory)[::-1]
    if not candidates:
        raise FileNotFoundError(f"{str(directory)!r} holds no training checkpoint (ckpt_<step>.pt)")
    errors = []
    for path in candidates:
        try:
            loaded = load(path)
        except ValueError as e:
            errors.append(f"{path.name}: {e}")
            warnings.warn(f"passing over {path}: it cannot be read ({e})", CheckpointWarning, stacklevel=2)
            continue
        skipped = f", passing over {len(errors)} newer unreadable one(s)" if errors else ""
        logger.info("%s: using %s, the newest of %d checkpoint(s)%s", directory, path.name, len(candidates), skipped)
        return path, loaded
    raise ValueError(
        f"none of the {len(candidates)} checkpoints in {str(directory)!r} can be read:\n  " + "\n  ".join(errors)
    )


# ----------------------------------------------------------------------------------------------- reading


def _head(path: Path) -> bytes:
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8:
        raise ValueError(f"checkpoint {str(path)!r} is empty or truncated ({len(head)} bytes)")
    return head


def _is_torch_file(head: bytes) -> bool:
    # torch.save writes a zip archive ("PK"); legacy torch files are raw pickles (protocol byte 0x80).
    return head[:2] == b"PK" or head[:1] == b"\x80"


def load_torch_file(path: str | os.PathLike) -> Any:
    """`torch.load(path, weights_only=True)` on the CPU, with a ValueError saying what the file is when it is not
    a torch checkpoint that loads so (empty, truncated, another format, objects beyond tensors and containers)."""
    path = Path(path)
    return _load_torch(path, _head(path))


def _load_torch(path: Path, head: bytes) -> Any:
    """`load_torch_file` for a file whose first bytes `head` were read already."""
    if not _is_torch_file(head):
        raise ValueError(f"{str(path)!r} is not a torch checkpoint (first bytes {head!r})")
    if head[:2] == b"PK":  # torch.save's zip archive: its directory is at the end, so a cut-short copy has none
        try:
            zipfile.ZipFile(path).close()
        except zipfile.BadZipFile as e:
            raise ValueError(f"checkpoint {str(path)!r} is truncated or corrupt (its zip archive: {e})") from e
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(
            f"could not read {str(path)!r} as a torch checkpoint with weights_only=True "
            f"(only tensors and plain containers are accepted): {type(e).__name__}: {e}"
        ) from e


def _read_file(path: Path) -> Any:
    head = _head(path)
    if _is_torch_file(head):
        return _load_torch(path, head)
    try:
        return load_file(str(path), device="cpu")
    except Exception as e:
        with open(path, "rb") as f:  # safetensors: an 8-byte header length, then the JSON header
            f.seek(8)
            safetensors_like = f.read(1) == b"{"
        what = (
            "a safetensors file that is truncated or corrupt"
            if safetensors_like
            else f"neither a torch checkpoint nor a safetensors file (first bytes {head!r})"
        )
        raise ValueError(f"{str(path)!r} is {what}: {e}") from e


def _unwrap(obj: Any, use_ema: bool, path: Path) -> tuple[StateDict, str]:
    """Find the model state dict inside a loaded checkpoint object; returns it and the wrapping's kind."""
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


def recorded_config(
    name: str | None, config: dict[str, Any] | None, where: str
) -> VisionTransformerConfig | ConvNetConfig | None:
    """The architecture a fastdeit checkpoint records: its model name and `model_config` (the full config since
    fastdeit records one; earlier checkpoints hold the name's overrides, completed here from the name). None when
    there is no model_config: a name alone does not say which overrides the weights were trained with."""
    if config is None:
        return None
    config = dict(config or {})
    name = name if name is not None else config.get("name")
    config.pop("name", None)
    try:
        if name in CONVNET_CONFIGS:
            return ConvNetConfig(**{"name": name, **CONVNET_CONFIGS[name], **config})
        # Fields an earlier version did not record take the defaults it built with (layer_norm_eps 1e-6).
        return VisionTransformerConfig.from_dict({**MODEL_CONFIGS.get(name, {}), **config, "name": name})
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where} records a model config fastdeit cannot read ({name!r}, {config}): {e}") from e


def _hf_normalisation(folder: Path) -> dict[str, tuple[float, ...]]:
    """mean and std of a Hugging Face folder's image processor (preprocessor_config.json), where it has one."""
    file = folder / "preprocessor_config.json"
    if not file.is_file():
        return {}
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{str(file)!r} is not valid JSON: {e}") from e
    if not isinstance(data, dict) or "image_mean" not in data or "image_std" not in data:
        return {}
    return {"mean": tuple(data["image_mean"]), "std": tuple(data["image_std"])}


def _read_folder_config(
    folder: Path,
) -> tuple[VisionTransformerConfig | ConvNetConfig | None, str | None, str | None]:
    """The config.json next to the weights of a `save_pretrained` or Hugging Face folder: the config, the format it
    names, and why a Hugging Face architecture fastdeit does not build is not a config (None, None, None without a
    config.json)."""
    file = folder / CONFIG_NAME
    if not file.is_file():
        return None, None, None
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{str(file)!r} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{str(file)!r} holds a {type(data).__name__}, expected a JSON object")
    if data.get("format") == "fastdeit":
        return recorded_config(data.get("architecture"), data.get("model_config"), str(file)), "fastdeit", None
    if "model_type" in data:
        try:
            fields = VisionTransformerConfig.fields_from_hf_config(data, str(file))
        except ValueError as e:  # the weights may still load into a model the caller builds
            return None, "huggingface", str(e)
        return VisionTransformerConfig(**fields, **_hf_normalisation(folder)), "huggingface", None
    raise ValueError(
        f"{str(file)!r} is neither a fastdeit save_pretrained config (format: fastdeit) nor a Hugging Face one "
        f"(model_type); its keys: {sorted(data)[:10]}"
    )


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


def _read_weights_file(file: Path, use_ema: bool) -> Checkpoint:
    obj = _read_file(file)
    sd, kind = _unwrap(obj, use_ema, file)
    sd = _clean_keys(sd)
    config, class_names = None, None
    if kind in ("training", "ema") and isinstance(obj, dict):
        config = recorded_config(obj.get("model_name"), obj.get("model_config"), f"checkpoint {str(file)!r}")
        names = obj.get("class_names")
        class_names = tuple(str(n) for n in names) if names is not None else getattr(config, "class_names", None)
    if _is_hf(sd):
        sd, _ = hf_to_timm(sd)
        return Checkpoint(sd, "huggingface", file, config, class_names)
    fmt = {"training": "fastdeit-training", "ema": "ema"}.get(kind, "timm")
    if file.suffix == ".safetensors" and kind == "plain":
        fmt = "safetensors"
    return Checkpoint(sd, fmt, file, config, class_names)


def read_checkpoint(path: str | os.PathLike, *, use_ema: bool = False) -> Checkpoint:
    """Read the weights at `path` (any format in the module docstring) into timm's names, with the architecture and
    class names the checkpoint records.

    `path` is a file, a `save_pretrained` / Hugging Face folder, or a training run folder (its newest readable
    `ckpt_<step>.pt`, named in a log line). `use_ema` reads the EMA weights of a training checkpoint.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"checkpoint not found: {str(p)!r}")
    if not p.is_dir():
        return _read_weights_file(p, use_ema)
    weights = next((p / name for name in HF_WEIGHT_FILES if (p / name).is_file()), None)
    if weights is not None:
        config, fmt, unsupported = _read_folder_config(p)
        ckpt = _read_weights_file(weights, use_ema)
        if config is not None:
            ckpt.format, ckpt.config, ckpt.class_names = fmt, config, config.class_names
        ckpt.unsupported = unsupported
        return ckpt
    if list_checkpoints(p):
        return load_newest(p, lambda file: _read_weights_file(file, use_ema))[1]
    raise FileNotFoundError(
        f"checkpoint folder {str(p)!r} is neither a save_pretrained or Hugging Face folder (it holds none of "
        f"{list(HF_WEIGHT_FILES)}) nor a training run folder (no ckpt_<step>.pt); found: "
        f"{sorted(q.name for q in p.iterdir())[:10]}"
    )


def _family(sd: StateDict) -> str | None:
    """Which kind of fastdeit model a state dict is for, from its keys: "vit", "convnet" or None (cannot tell)."""
    if any(k in ("cls_token", "dist_token", "pos_embed") or k.startswith(("patch_embed.", "blocks.")) for k in sd):
        return "vit"
    if any(k.startswith("features.") for k in sd):
        return "convnet"
    return None


def _describe(sd: StateDict) -> str:
    """A short architecture summary of a timm-named state dict, for error messages."""
    if _family(sd) == "convnet":
        head = sd.get("head.weight")
        return f"a ConvNet's weights (head {tuple(head.shape) if head is not None else 'none'})"
    dim = sd["cls_token"].shape[-1] if "cls_token" in sd else "?"
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    head = sd.get("head.weight")
    classes = head.shape[0] if head is not None else "none"
    return f"embed_dim={dim}, depth={depth}, distilled={'dist_token' in sd}, num_classes={classes}"


def _describe_module(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    if isinstance(config, VisionTransformerConfig | ConvNetConfig):
        return config.describe()
    return f"a {type(model).__name__}"


def load_checkpoint(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    strict: bool = True,
    drop_head: bool = False,
    use_ema: bool = False,
) -> LoadResult:
    """Load weights from `path` (any supported format, see `read_checkpoint`) into `model`, in place.

    Everything the checkpoint records is checked against the model, and a mismatch raises ValueError naming both
    sides: the architecture (a convnet's weights never go into a DeiT; a DeiT's architecture fields, LayerNorm eps
    included), the class names. A position embedding of another grid is resampled to the model's (bicubic over the
    patch grid, prefix tokens kept). A head of another class count raises unless `drop_head=True` (the model keeps
    its own head). Shape mismatches always raise; missing/unexpected keys raise when `strict`, listing them. A model
    without class names takes the checkpoint's.
    """
    return load_state_dict(model, read_checkpoint(path, use_ema=use_ema), strict=strict, drop_head=drop_head)


def _check_recorded_facts(model: nn.Module, ckpt: Checkpoint, drop_head: bool) -> None:
    """The checkpoint's recorded architecture and class names against the model's (ValueError naming both)."""
    where = f"checkpoint {str(ckpt.path)!r}"
    own = getattr(model, "config", None)
    families = {VisionTransformerConfig: "vit", ConvNetConfig: "convnet"}
    theirs_family = families.get(type(ckpt.config)) or _family(ckpt.state_dict)
    own_family = families.get(type(own))
    if theirs_family is not None and own_family is not None and theirs_family != own_family:
        theirs = ckpt.config.describe() if ckpt.config is not None else _describe(ckpt.state_dict)
        raise ValueError(f"{where} holds another architecture: {theirs}; the model is {_describe_module(model)}")
    if isinstance(ckpt.config, VisionTransformerConfig) and isinstance(own, VisionTransformerConfig):
        differences = ckpt.config.differences(own)
        if differences:
            raise ValueError(
                f"{where} holds {ckpt.config.describe()}; the model is {own.describe()}. Differences (checkpoint vs "
                f"model): {'; '.join(differences)}. Build the model from the checkpoint instead: "
                "fastdeit.from_pretrained(path) or fastdeit.create_model(checkpoint=path)"
            )
    theirs, ours = ckpt.class_names, getattr(model, "class_names", None)
    if drop_head or theirs is None or ours is None or len(theirs) != len(ours) or tuple(theirs) == tuple(ours):
        return  # another class count is the head check's to report
    if len(theirs) <= 20:
        shown = f"  checkpoint: {list(theirs)}\n  model:      {list(ours)}"
    else:
        differ = [i for i, (a, b) in enumerate(zip(theirs, ours, strict=True)) if a != b]
        shown = "\n".join(f"  class {i}: checkpoint {theirs[i]!r}, model {ours[i]!r}" for i in differ[:10])
        shown += f"\n  ({len(differ)} of {len(theirs)} classes differ)"
    raise ValueError(
        f"{where} was trained on other classes than the model's (same index, other class):\n{shown}\n"
        "pass drop_head=True to train a new head, or give the model the checkpoint's class names"
    )


def load_state_dict(model: nn.Module, ckpt: Checkpoint, *, strict: bool = True, drop_head: bool = False) -> LoadResult:
    """`load_checkpoint` for a checkpoint already read by `read_checkpoint`; `ckpt.state_dict` is adapted in place
    (resampled pos_embed, dropped head)."""
    _check_recorded_facts(model, ckpt, drop_head)
    sd, path, fmt = ckpt.state_dict, ckpt.path, ckpt.format
    result = LoadResult(format=fmt, path=str(path))
    own = model.state_dict()

    pos = sd.get("pos_embed")
    if isinstance(model, VisionTransformer) and pos is not None and pos.shape != own["pos_embed"].shape:
        if pos.dim() != 3 or pos.shape[-1] != own["pos_embed"].shape[-1] or ("dist_token" in sd) != model.distilled:
            raise ValueError(
                f"checkpoint {str(path)!r} is for another architecture ({_describe(sd)}); "
                f"the model has {_describe(own)}"
            )
        sd["pos_embed"] = resample_pos_embed(pos, model.patch_embed.grid_size, model.num_prefix_tokens)
        result.resampled_pos_embed = (tuple(pos.shape), tuple(sd["pos_embed"].shape))

    head_keys = [k for k in _HEAD_KEYS if k in sd and k in own]
    if any(sd[k].shape != own[k].shape for k in head_keys) or (drop_head and head_keys):
        head, own_head = sd.get("head.weight"), own.get("head.weight")
        if not drop_head:
            if head is not None and own_head is not None and head.shape[1:] != own_head.shape[1:]:
                theirs = ckpt.config.describe() if ckpt.config is not None else _describe(sd)
                raise ValueError(
                    f"checkpoint {str(path)!r} has a head on {head.shape[1]} features, the model's is on "
                    f"{own_head.shape[1]}: another architecture (checkpoint: {theirs}; model: "
                    f"{_describe_module(model)})"
                )
            got = head.shape[0] if head is not None else "?"
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
    if not result.dropped_head and ckpt.class_names is not None and getattr(model, "class_names", ()) is None:
        model.set_class_names(ckpt.class_names)
    return result
