"""The training configuration: one typed dataclass whose defaults are the DeiT recipe (the official repository's
main.py), filled from YAML/JSON files and `--key value` arguments.

    config = parse_config(["--config", "train/configs/deit_small.yaml", "--lr", "1e-3", "--eval-only"])

Precedence: dataclass defaults < each `--config` file in order < command-line arguments. Keys may be
written with dashes or underscores. Unknown keys, values of the wrong type and values out of range raise
ConfigError naming the key, what was expected and what was given, before anything is built.

The architecture keys (ARCHITECTURE_KEYS) left unset are filled by `TrainConfig.resolve`: from the checkpoint a run
resumes (or evaluates), else from the model name.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import os
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from fastdeit.constants import DEFAULT_CROP_PCT
from fastdeit.data.augment import CROP_SCALE, DEIT_RAND_AUGMENT, HFLIP
from fastdeit.data.common import DataConfigError
from fastdeit.data.config import LoaderConfig
from fastdeit.data.mix import Mixup, RandomErasing
from fastdeit.losses import DISTILLATION_TYPES, DistillationLoss
from fastdeit.models import MODEL_CONFIGS
from fastdeit.text import did_you_mean
from fastdeit.training.optim import DEIT_LR

AMP_MODES = ("auto", "bf16", "fp16", "none")
OPTIMIZERS = ("adamw", "apex_fused_adam")
MODEL_BACKENDS = ("auto", "triton", "torch")
DEFAULT_MODEL = "deit_base_patch16_224"
DEFAULT_IMG_SIZE = 224  # DeiT's; the size of a model whose name gives none (the convnets take any)
# What the model is: left unset, taken from the checkpoint a run resumes, else from the model name (`resolve`).
ARCHITECTURE_KEYS = ("model", "img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio")
# Keys that may differ on resume without changing the run itself.
_ARCH_HELP = "architecture override (unset: what the --resume or --finetune checkpoint records, else the model's)"
RUN_ONLY_KEYS = frozenset(
    {"resume", "eval_only", "output_dir", "progress", "tensorboard", "log_interval", "data_threads",
     "allow_class_mismatch"}
)  # fmt: skip


class ConfigError(ValueError):
    """A configuration a user gave is invalid (unknown key, wrong type, value out of range, missing file)."""


class TrainingWarning(UserWarning):
    """Something about a run that is allowed but likely unintended (a recipe too long for a short run, classes that
    differ where they were allowed to)."""


@contextlib.contextmanager
def user_errors(what: str, hint: str = "") -> Iterator[None]:
    """Report a ValueError raised inside as a ConfigError about `what`: the user's input is wrong, not the code.
    `hint`, when given, follows the message (what to change on train.py's command line)."""
    try:
        yield
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(f"{what}: {e}" + (f"; {hint}" if hint else "")) from e


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Every knob of train/train.py. Defaults are DeiT's (official main.py); `--help` lists them with their help."""

    # --- data
    data: str = _opt("", "ImageFolder root (with train/ and val/), 'digits' or 'synthetic' (required)")
    data_backend: str = _opt("auto", "image decoder: auto (the faster one for the device and split), dali or pil")
    data_threads: int | None = _opt(None, "decoding threads per process (default: CPU count, at most 8)")
    img_size: int | None = _opt(
        None,
        "training and eval input size; unset: what the --resume or --finetune checkpoint records, else the model's "
        "(224, or 384 for *_384)",
    )
    crop_pct: float = _opt(DEFAULT_CROP_PCT, "eval: resize the shorter side to img_size / crop_pct, then center crop")
    # --- model
    model: str | None = _opt(
        None,
        f"fastdeit model name (DeiT, or a convnet such as convnet_small); unset: what the --resume or --finetune "
        f"checkpoint records, else {DEFAULT_MODEL}",
    )
    backend: str = _opt("auto", "DeiT layers: auto (Triton on CUDA, PyTorch elsewhere), triton or torch")
    patch_size: int | None = _opt(None, _ARCH_HELP)
    embed_dim: int | None = _opt(None, _ARCH_HELP)
    depth: int | None = _opt(None, _ARCH_HELP)
    num_heads: int | None = _opt(None, _ARCH_HELP)
    mlp_ratio: float | None = _opt(None, _ARCH_HELP)
    drop_path: float = _opt(0.1, "stochastic depth rate of the last block")
    grad_checkpointing: bool = _opt(False, "recompute blocks in backward to save memory")
    compile: bool = _opt(False, "torch.compile the model")
    # --- optimization
    epochs: int = _opt(300, "training epochs")
    batch_size: int = _opt(64, "images per step per process (the global batch is batch_size x world size)")
    eval_batch_size: int | None = _opt(None, "eval images per step per process (default 1.5 x batch_size)")
    opt: str = _opt("adamw", "adamw (torch, fused on CUDA) or apex_fused_adam (NVIDIA apex, AdamW mode)")
    lr: float = _opt(DEIT_LR, "peak learning rate for a global batch of 512; scaled by global batch / 512")
    opt_eps: float = _opt(1e-8, "AdamW epsilon")
    opt_betas: tuple[float, float] = _opt((0.9, 0.999), "AdamW betas, e.g. 0.9,0.999")
    weight_decay: float = _opt(0.05, "AdamW weight decay (not applied to norms, biases, tokens, pos-embed)")
    clip_grad: float | None = _opt(None, "clip the gradient norm to this value (off by default, as DeiT)")
    warmup_epochs: float = _opt(5.0, "linear warmup from warmup_lr to the peak lr")
    warmup_lr: float = _opt(1e-6, "learning rate at step 0")
    min_lr: float = _opt(1e-5, "learning rate the cosine decays to at the last step")
    amp: str = _opt("auto", "autocast: auto (bf16 on CUDA, none on CPU), bf16, fp16 (with a GradScaler) or none")
    # --- augmentation and regularization
    smoothing: float = _opt(0.1, "label smoothing")
    mixup: float = _opt(0.8, "mixup alpha (0 = off)")
    cutmix: float = _opt(1.0, "cutmix alpha (0 = off)")
    mixup_prob: float = _opt(1.0, "probability that a batch is mixed")
    mixup_switch_prob: float = _opt(0.5, "probability of cutmix rather than mixup when both are on")
    reprob: float = _opt(0.25, "random erasing probability per image")
    rand_augment: str = _opt(DEIT_RAND_AUGMENT, "RandAugment policy (timm syntax), or 'none'")
    crop_scale: tuple[float, float] = _opt(
        CROP_SCALE, "random-resized-crop area range as fractions of the image, lo,hi with 0 < lo <= hi <= 1"
    )
    hflip: float = _opt(HFLIP, "probability of mirroring a train image horizontally")
    repeated_aug: int = _opt(3, "repeated augmentation count, applied under DDP only (as DeiT)")
    # --- EMA of the weights
    model_ema: bool = _opt(True, "keep an EMA of the weights and evaluate it too")
    model_ema_decay: float = _opt(0.99996, "EMA decay per step")
    # --- distillation
    distillation_type: str = _opt("none", "none, soft or hard (hard is DeiT's choice for its distilled models)")
    distillation_alpha: float = _opt(0.5, "weight of the distillation term")
    distillation_tau: float = _opt(1.0, "soft distillation temperature")
    teacher_model: str = _opt(
        "", "teacher architecture: a timm name (regnety_160) or a fastdeit model; empty: read from teacher_path"
    )
    teacher_path: str = _opt("", "teacher weights or model file, or a training output folder (its latest checkpoint)")
    teacher_cache: str = _opt(
        "",
        "folder of the teacher's recorded outputs for these batches: replayed where recorded, else computed by the "
        "teacher and added (a later student then needs no teacher; fastdeit/training/teacher_cache.py)",
    )
    teacher_cache_topk: int = _opt(
        0, "with teacher_cache: also record the teacher's top-k logits and the mass of the rest, for soft distillation"
    )
    # --- fine-tuning, resuming, evaluation
    finetune: str = _opt(
        "", "initial weights (any format fastdeit reads): pos-embed resampled, head replaced if the class count differs"
    )
    resume: str = _opt(
        "",
        "training checkpoint or run folder (its newest readable checkpoint) to continue from, or 'auto' (output_dir's, "
        "if any); the model is rebuilt as the checkpoint records it",
    )
    eval_only: bool = _opt(False, "evaluate the --resume or --finetune weights and exit")
    allow_class_mismatch: bool = _opt(
        False, "go on (with a warning) when a teacher or --resume checkpoint names other classes than the dataset"
    )
    eval_interval: int = _opt(1, "evaluate every this many epochs (and after the last)")
    # --- checkpoints and logs
    output_dir: str = _opt("runs/train", "checkpoints, metrics.jsonl, config.json and TensorBoard logs")
    ckpt_interval: int = _opt(0, "also save a checkpoint every this many steps (0: at epoch ends only)")
    keep_last: int = _opt(3, "checkpoints kept (older ones are deleted)")
    log_interval: int = _opt(50, "steps between train metrics (loss, lr, img/s) and non-finite loss checks")
    progress: bool | None = _opt(
        None, "a progress bar on stderr (unset: only when stderr is a terminal); without one, a line per log interval"
    )
    tensorboard: bool | None = _opt(
        None, "TensorBoard logs in output_dir/tensorboard (unset: when tensorboard is installed; true needs it)"
    )
    seed: int = _opt(0, "seed of the model init, data order, augmentations and drop path")
    device: str = _opt("auto", "auto (cuda when present), cuda or cpu")

    def loader_config(self, split: str, distributed: bool = False) -> LoaderConfig:
        """The data loader settings of `split` ("train" or "val") of a resolved config (see `resolve`); repeated
        augmentation only when `distributed` (DeiT repeats only under DDP). Raises DataConfigError naming
        LoaderConfig's field (see `check`)."""
        if self.img_size is None:
            raise ValueError("loader_config needs the image size: resolve() the config first")
        config = LoaderConfig(
            img_size=self.img_size,
            batch_size=self.batch_size,
            seed=self.seed,
            rand_augment=self.rand_augment,
            crop_scale=self.crop_scale,
            hflip=self.hflip,
            repeated_aug=self.repeated_aug if distributed else 1,
            crop_pct=self.crop_pct,
            backend=self.data_backend,
            num_threads=self.data_threads,
        )
        if split == "train":
            return config
        eval_batch = self.eval_batch_size if self.eval_batch_size is not None else int(1.5 * self.batch_size)
        return config.replace(batch_size=eval_batch)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (tuples as lists): what checkpoints and config.json store."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def changed_keys(self, recorded: dict[str, Any]) -> list[str]:
        """The keys whose value differs from `recorded` (an earlier run's `to_dict()`), RUN_ONLY_KEYS left out."""
        return sorted(k for k, v in self.to_dict().items() if k not in RUN_ONLY_KEYS and recorded.get(k) != v)

    def with_architecture_of(self, recorded: Any) -> TrainConfig:
        """--finetune without --model: this config with its unset architecture keys (ARCHITECTURE_KEYS) taken from
        `recorded`, the architecture the weights record (`fastdeit.models.Checkpoint.config`: train.py checkpoints,
        `save_pretrained` and Hugging Face folders). Bare weights record none (None): the config is returned as it is,
        and `resolve` falls back to DEFAULT_MODEL, as the official DeiT does. With --model given, the weights are
        checked against that model when they load, and nothing is taken from them.

        A DeiT that records no fastdeit name (a Hugging Face folder) is named as the fastdeit model of its architecture
        (any image size), else as DeiT-B with its distillation token or not; every other key is set, so the
        architecture built is the recorded one.
        """
        from fastdeit.models import VisionTransformerConfig, list_models
        from fastdeit.models.build import registry_name

        if self.model is not None or recorded is None:
            return self
        if not isinstance(recorded, VisionTransformerConfig):  # a convnet: its name is all there is to it
            return self.replace(model=recorded.name) if recorded.name else self
        name = recorded.name if recorded.name in list_models() else registry_name(recorded, any_img_size=True)
        if name is None:  # an architecture of its own: every key below is set, the name only gives the token count
            name = "deit_base_distilled_patch16_224" if recorded.distilled else "deit_base_patch16_224"
        fields = {
            "img_size": _first(recorded.img_size),
            "patch_size": _first(recorded.patch_size),
            "embed_dim": recorded.embed_dim,
            "depth": recorded.depth,
            "num_heads": recorded.num_heads,
            "mlp_ratio": recorded.mlp_ratio,
        }
        return self.replace(model=name, **{k: v for k, v in fields.items() if getattr(self, k) is None})

    def resolve(self, checkpoint: dict[str, Any] | None = None, where: str = "the checkpoint") -> TrainConfig:
        """This config with its unset architecture keys (ARCHITECTURE_KEYS) filled in.

        checkpoint: the state of a train.py checkpoint this run resumes or evaluates (`where` names it in
            messages): its model is rebuilt as it was trained, so unset keys take the values of the run that wrote
            it, and a key set here to another value than its model's raises ConfigError naming both.
        Without one, the model is DEFAULT_MODEL and the image size the model's (DEFAULT_IMG_SIZE for a convnet).
        """
        if checkpoint is None:
            model = self.model or DEFAULT_MODEL
            size = MODEL_CONFIGS.get(model, {}).get("img_size", DEFAULT_IMG_SIZE)
            return self.replace(model=model, img_size=self.img_size if self.img_size is not None else size)
        run = checkpoint.get("config") or {}
        recorded = _recorded_architecture(checkpoint)
        for key in ARCHITECTURE_KEYS:
            given = getattr(self, key)
            if given is not None and key in recorded and not _same_value(given, recorded[key]):
                raise ConfigError(
                    f"{key}: {given!r} given, but {where} records {_first(recorded[key])!r} (its model is "
                    f"{recorded.get('model')}); leave it out to use the checkpoint's, or start from its weights with "
                    "--finetune instead of --resume"
                )
        # An override the run left unset stays so (the model's default, as then); model and image size are set.
        unset = [k for k in ARCHITECTURE_KEYS if getattr(self, k) is None]
        return self.replace(
            **{k: run[k] if k in run and k not in ("model", "img_size") else _first(recorded.get(k)) for k in unset}
        )

    def check(self) -> TrainConfig:
        """Raise ConfigError on the first invalid value; return self. Settings that the code using them validates
        (data loader, mixup, random erasing, the loss) are checked by that code, here named by their keys."""
        from fastdeit.models import list_models
        from fastdeit.models.convnet import is_convnet, list_convnets

        def fail(key: str, expected: str) -> typing.NoReturn:
            raise ConfigError(f"{key}: expected {expected}, got {getattr(self, key)!r}")

        if not self.data:
            fail("data", "an ImageFolder path, 'digits' or 'synthetic' (--data is required)")
        if self.data not in ("digits", "synthetic"):
            # Both splits are required: a folder of classes alone would be trained on and scored on the same images.
            root = Path(self.data).expanduser()
            needed = ("val",) if self.eval_only else ("train", "val")
            missing = [f"{split}/" for split in needed if not (root / split).is_dir()]
            if not root.is_dir() or missing:
                found = f"has no {' and no '.join(missing)} folder" if root.is_dir() else "is not a directory"
                raise ConfigError(
                    f"data: {self.data!r} {found}; expected an ImageFolder root (root/train/<class>/..., "
                    "root/val/<class>/...; --eval-only needs only val/), 'digits' or 'synthetic'"
                )
        if self.model is not None and self.model not in list_models() and not is_convnet(self.model):
            known = list_models() + list_convnets()
            hint = did_you_mean(self.model, known)
            raise ConfigError(f"model: unknown model {self.model!r}{hint} Available: {', '.join(known)}")
        resolved = self.resolve()
        loader_keys = {"backend": "data_backend", "num_threads": "data_threads"}
        data_checks: list[tuple[typing.Callable[[], object], dict[str, str]]] = [
            (lambda: resolved.loader_config("train", distributed=True), loader_keys),
            (lambda: resolved.loader_config("val"), {**loader_keys, "batch_size": "eval_batch_size"}),
            (
                lambda: Mixup.check_settings(
                    self.mixup, self.cutmix, self.mixup_prob, self.mixup_switch_prob, self.smoothing
                ),
                {
                    "mixup_alpha": "mixup",
                    "cutmix_alpha": "cutmix",
                    "prob": "mixup_prob",
                    "switch_prob": "mixup_switch_prob",
                    "label_smoothing": "smoothing",
                },
            ),
            (lambda: RandomErasing.check_settings(self.reprob), {"prob": "reprob"}),
        ]
        for validate, keys in data_checks:
            try:
                validate()
            except DataConfigError as e:
                raise ConfigError(f"{keys.get(e.field, e.field)}: expected {e.expected}, got {e.value!r}") from None
        # The loss checks its settings; built with one of them at a time (the others DeiT's), its error is that key's.
        for key, argument in (("distillation_alpha", "alpha"), ("distillation_tau", "tau")):
            settings = {"alpha": 0.5, "tau": 1.0, argument: getattr(self, key)}
            with user_errors(key):
                DistillationLoss(nn.Identity(), None, "none", **settings)
        choices = {
            "backend": MODEL_BACKENDS,
            "opt": OPTIMIZERS,
            "amp": AMP_MODES,
            "distillation_type": DISTILLATION_TYPES,
            "device": ("auto", "cuda", "cpu"),
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                fail(key, f"one of {', '.join(allowed)}")
        if self.tensorboard and importlib.util.find_spec("tensorboard") is None:
            raise ConfigError(
                "tensorboard: true, but the tensorboard package is not installed (pip install tensorboard, or leave "
                "--tensorboard out); metrics.jsonl in output_dir holds the same numbers"
            )
        positive = ["epochs", "lr", "opt_eps", "eval_interval", "keep_last", "log_interval", "clip_grad"]
        for key in positive + ["patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio"]:
            value = getattr(self, key)
            if value is not None and not value > 0:
                fail(key, "a value > 0")
        for key in ["weight_decay", "warmup_epochs", "warmup_lr", "min_lr", "ckpt_interval", "teacher_cache_topk"]:
            if not getattr(self, key) >= 0:
                fail(key, "a value >= 0")
        if not 0 <= self.model_ema_decay <= 1:
            fail("model_ema_decay", "a value in [0, 1]")
        if not 0 <= self.drop_path < 1:
            fail("drop_path", "a value in [0, 1)")
        if not all(0 <= b < 1 for b in self.opt_betas):
            fail("opt_betas", "two values in [0, 1)")
        self._check_teacher()
        if self.resume and self.finetune:
            raise ConfigError("give --resume (continue a run) or --finetune (start from weights), not both")
        if self.eval_only and not (self.resume or self.finetune):
            raise ConfigError("eval_only needs weights: --resume CHECKPOINT or --finetune WEIGHTS")
        if self.finetune and not Path(self.finetune).expanduser().exists():
            raise FileNotFoundError(f"finetune: file not found: {self.finetune!r}")
        if self.resume not in ("", "auto") and not Path(self.resume).expanduser().exists():
            raise FileNotFoundError(f"resume: checkpoint not found: {self.resume!r} (or pass 'auto')")
        return self

    def _check_teacher(self) -> None:
        """Distillation needs a teacher (or its recorded outputs), and a teacher needs distillation."""
        distill = self.distillation_type != "none"
        if distill and not (self.teacher_path or self.teacher_cache):
            raise ConfigError(
                f"distillation_type={self.distillation_type!r} needs a teacher: --teacher-path (a fastdeit checkpoint "
                "or output folder, a TorchScript or .pt2 file, or the weights of --teacher-model, e.g. regnety_160), "
                "or --teacher-cache (a folder of its recorded outputs)"
            )
        if self.teacher_path and not distill:
            # DeiT's main.py defaults to no distillation and then ignores a teacher: a silent no-op, refused here.
            raise ConfigError(
                "teacher_path is given but distillation_type is 'none' (the default): the teacher would not be used; "
                "add --distillation-type hard (DeiT's choice for its distilled models) or soft, or leave out "
                "--teacher-path"
            )
        if self.teacher_cache and not distill:
            raise ConfigError(
                "teacher_cache: expected no value without distillation (--distillation-type hard or soft), got "
                f"{self.teacher_cache!r}"
            )
        if self.teacher_cache_topk and not self.teacher_cache:
            raise ConfigError(f"teacher_cache_topk: expected 0 without --teacher-cache, got {self.teacher_cache_topk}")
        if self.teacher_cache and self.distillation_type == "soft" and not self.teacher_cache_topk:
            raise ConfigError(
                "teacher_cache with soft distillation needs --teacher-cache-topk K: the cache then keeps the teacher's "
                "K largest logits and the probability of the rest, an approximation of the full distribution whose "
                "error the README gives (hard distillation needs only the labels, and is exact)"
            )
        if self.teacher_path and not Path(self.teacher_path).expanduser().exists():
            raise FileNotFoundError(f"teacher_path: file not found: {self.teacher_path!r}")


def _recorded_architecture(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """ARCHITECTURE_KEYS -> the value of the model a train.py checkpoint holds: its run's config, overridden by what
    its model records (the whole architecture, where the run may have left keys to the model's defaults)."""
    run = checkpoint.get("config") or {}
    recorded = {k: run[k] for k in ARCHITECTURE_KEYS if run.get(k) is not None}
    if checkpoint.get("model_name"):
        recorded["model"] = checkpoint["model_name"]
    model = checkpoint.get("model_config") or {}
    recorded.update({k: model[k] for k in ARCHITECTURE_KEYS if k in model})
    return recorded


def _same_value(given: Any, recorded: Any) -> bool:
    """A single number given for a recorded (height, width) pair means a square one."""
    if isinstance(recorded, list | tuple) and not isinstance(given, list | tuple):
        return all(r == given for r in recorded)
    return given == recorded


def _first(value: Any) -> Any:
    """A square (height, width) pair as the one number train.py's keys hold."""
    return value[0] if isinstance(value, list | tuple) and len(set(value)) == 1 else value


# ----------------------------------------------------------------------------------------------- parsing

_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_TYPES = typing.get_type_hints(TrainConfig)


def _describe_type(tp: Any) -> str:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe_type(a) for a in args)
    if typing.get_origin(tp) is tuple:
        return f"{len(args)} comma-separated numbers"
    return tp.__name__


def _convert(key: str, value: Any, tp: Any, from_text: bool) -> Any:
    """`value` as type `tp`; text from the command line is parsed, file values are only checked."""
    err = ConfigError(f"{key}: expected {_describe_type(tp)}, got {value!r}")
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)][0]
        if value is None or (from_text and str(value).lower() in ("none", "null")):
            return None
        try:
            return _convert(key, value, inner, from_text)
        except ConfigError:
            raise err from None
    if typing.get_origin(tp) is tuple:
        parts = value.split(",") if from_text and isinstance(value, str) else value
        if not isinstance(parts, list | tuple) or len(parts) != len(typing.get_args(tp)):
            raise err
        return tuple(_convert(key, p, a, from_text) for p, a in zip(parts, typing.get_args(tp), strict=True))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if from_text and str(value).lower() in ("true", "1", "yes", "false", "0", "no"):
            return str(value).lower() in ("true", "1", "yes")
        raise err
    if from_text and isinstance(value, str):
        try:
            return tp(value)
        except ValueError:
            raise err from None
    # bool is an int subclass: `epochs: true` in a file is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int | float if tp is float else tp):
        raise err
    return tp(value)


def _unknown_key(key: str, where: str) -> ConfigError:
    return ConfigError(f"unknown config key {key!r} in {where}{did_you_mean(key, _FIELDS)} (see train.py --help)")


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The checked key -> value mapping of a YAML or JSON config file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {str(path)!r}")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"config file {str(path)!r} is not valid {path.suffix.lstrip('.') or 'YAML'}: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys to values, got {type(data).__name__}")
    out = {}
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        if key not in _FIELDS:
            raise _unknown_key(str(raw_key), str(path))
        out[key] = _convert(key, value, _TYPES[key], from_text=False)
    return out


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        raise ConfigError(message)


def build_arg_parser(prog: str = "train.py", description: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser with one `--key` per TrainConfig field (values stay text until `parse_config`)."""
    parser = _Parser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="FILE",
        help="YAML or JSON file of config keys (repeatable; later files and flags win)",
    )
    for name, f in _FIELDS.items():
        tp = _TYPES[name]
        flags = dict.fromkeys(["--" + name.replace("_", "-"), "--" + name])  # dashes or underscores
        default = f.default if not isinstance(f.default, tuple) else ",".join(map(str, f.default))
        help_text = f"{f.metadata['help']} (default: {default})"
        if bool in (tp, *typing.get_args(tp)):
            # `--eval-only` alone means true; `--tensorboard false` turns a default-on flag off.
            parser.add_argument(
                *flags, dest=name, nargs="?", const="true", default=argparse.SUPPRESS, metavar="BOOL", help=help_text
            )
        else:
            parser.add_argument(
                *flags, dest=name, default=argparse.SUPPRESS, metavar=_describe_type(tp).upper(), help=help_text
            )
    return parser


def parse_config(argv: list[str], *, description: str | None = None) -> TrainConfig:
    """Build a TrainConfig from `--config FILE` and `--key value` arguments (see the module docstring)."""
    parser = build_arg_parser(description=description)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        flag = next((u for u in unknown if u.startswith("--")), unknown[0])
        if flag.startswith("--"):
            raise _unknown_key(flag[2:].split("=")[0].replace("-", "_"), "the command line")
        raise ConfigError(f"unexpected argument {flag!r}: arguments are --key value pairs")
    values: dict[str, Any] = {}
    for path in args.config:
        values.update(load_config_file(path))
    for name, text in vars(args).items():
        if name != "config":
            values[name] = _convert(name, text, _TYPES[name], from_text=True)
    return TrainConfig(**values).check()
