"""Loading the teacher of DeiT's distillation, frozen, from wherever it comes from.

    teacher = load_teacher(path="runs/teacher", num_classes=10, img_size=32, batch_size=64, device="cpu")

Sources (`model` names the architecture; empty means "read it from `path`"):
- a fastdeit checkpoint that records its architecture (train.py's `ckpt_<step>.pt`, or the run folder: its newest
  readable one; a `save_pretrained` or Hugging Face folder) of a DeiT or of a convnet (fastdeit.models.convnet),
  rebuilt as it records itself;
- a TorchScript file (`torch.jit.save`) or a `torch.export` program (`.pt2`, exported in eval mode);
- `model` = a fastdeit model name (DeiT or convnet) with weights in `path` (any format fastdeit reads);
- `model` = a timm model name (DeiT's teacher is `regnety_160`) with weights in `path`, when timm is
  installed (the official DeiT repository's `regnety_160-a5fe301d.pth` holds {"model": state dict}).

The returned FrozenTeacher is in eval mode (and stays there), has no trainable parameters, and feeds its
inputs channels_last (the fast layout for convolutions under autocast). Before training, one forward
on a dummy batch checks that it returns (batch, num_classes) logits: a teacher trained on another label
set (ImageNet-1k's 1000 classes for a 10-class dataset) is an error, not a silent mismatch. A teacher that records
its class names (fastdeit models) is also checked against the dataset's: the same count in another order would
teach the student wrong labels.
"""

from __future__ import annotations

import contextlib
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from fastdeit.models import list_models, read_checkpoint
from fastdeit.models.build import model_from_checkpoint
from fastdeit.models.convnet import is_convnet
from fastdeit.training.models import build_model, check_class_names, load_finetune_weights


class FrozenTeacher(nn.Module):
    """Wraps a teacher: eval mode whatever `train()` says, no gradients, channels_last inputs.

    forward: images (B, C, H, W) -> logits (B, num_classes). `class_names`: the names of the logits that the
    teacher records (fastdeit models), None when it does not (TorchScript, torch.export, timm).
    """

    def __init__(self, module: nn.Module, description: str, channels_last: bool = True) -> None:
        super().__init__()
        self.module = module
        self.description = description
        self.class_names: tuple[str, ...] | None = getattr(module, "class_names", None)
        self.channels_last = channels_last
        for p in module.parameters():
            p.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> FrozenTeacher:
        # A torch.export GraphModule refuses train()/eval(): it keeps the mode it was exported in.
        if not isinstance(self.module, torch.fx.GraphModule):
            self.module.train(False)
        self.training = False
        return self

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.module(images)


def _archive_kind(path: Path) -> str:
    """What wrote the zip archive at `path`: "export", "torchscript" or "torch_save" (all three write zips)."""
    if not zipfile.is_zipfile(path):
        return "torch_save"  # legacy pickles and other files: torch.load reports what is wrong
    names = zipfile.ZipFile(path).namelist()
    if any(n.endswith("/archive_format") for n in names):
        return "export"
    if any("/code/" in n for n in names):
        return "torchscript"
    return "torch_save"


def _from_fastdeit_checkpoint(path: Path, img_size: int) -> tuple[nn.Module, str]:
    ckpt = read_checkpoint(path)
    if ckpt.config is None:
        raise ValueError(
            f"teacher_path {str(ckpt.path)!r} holds weights without an architecture ({ckpt.format}): name the "
            "architecture with --teacher-model (a fastdeit model or a timm name such as regnety_160)"
        )
    # A DeiT teacher gets the student's input size, its position embedding resampled.
    model = model_from_checkpoint(ckpt, img_size=img_size)
    return model, f"{model.model_name} from fastdeit checkpoint {ckpt.path}"


def _from_timm(name: str, path: Path, num_classes: int) -> tuple[nn.Module, str]:
    try:
        import timm
    except ImportError as e:
        raise ImportError(
            f"teacher_model {name!r} is not a fastdeit model ({', '.join(list_models())}, convnet_*); "
            "timm teachers need timm installed (pip install timm)"
        ) from e
    if not timm.is_model(name):
        raise ValueError(f"teacher_model {name!r} is neither a fastdeit model nor a timm model")
    model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    try:
        model.load_state_dict(read_checkpoint(path).state_dict)
    except RuntimeError as e:
        raise ValueError(
            f"teacher weights {str(path)!r} do not fit timm's {name} with num_classes={num_classes} (the dataset's "
            f"class count); a teacher must be trained on the student's classes: {e}"
        ) from e
    return model, f"timm {name} from {path}"


def load_teacher(
    path: str | os.PathLike = "",
    model: str = "",
    *,
    num_classes: int,
    img_size: int,
    batch_size: int,
    device: str | torch.device,
    autocast: contextlib.AbstractContextManager | None = None,
    class_names: Sequence[str] | None = None,
    allow_class_mismatch: bool = False,
) -> FrozenTeacher:
    """The frozen teacher described by `path` and `model` (see the module docstring), on `device`, checked to
    predict `num_classes` classes on a (batch_size, 3, img_size, img_size) batch under `autocast`, and, when it
    records class names, to name them as `class_names` (the dataset's; see `check_class_names`, whose
    `allow` is `allow_class_mismatch`)."""
    device = torch.device(device)
    if not path:
        raise ValueError(f"a teacher needs weights: pass teacher_path (teacher_model={model!r} alone is untrained)")
    file = Path(path).expanduser()
    if not file.exists():
        raise FileNotFoundError(f"teacher_path not found: {str(file)!r}")

    if model and (model in list_models() or is_convnet(model)):
        module = build_model(model, num_classes=num_classes, img_size=img_size, backend="auto")
        load_finetune_weights(module, file, allow_new_head=False)
        description = f"{model} from {file}"
    elif model:
        module, description = _from_timm(model, file, num_classes)
    else:
        kind = "torch_save" if file.is_dir() else _archive_kind(file)
        if kind == "export":
            module, description = torch.export.load(str(file)).module(), f"torch.export program {file}"
        elif kind == "torchscript":
            module, description = torch.jit.load(str(file), map_location="cpu"), f"TorchScript module {file}"
        else:
            module, description = _from_fastdeit_checkpoint(file, img_size)

    module = module.to(device)
    if not isinstance(module, torch.jit.ScriptModule):
        module = module.to(memory_format=torch.channels_last)
    teacher = FrozenTeacher(module, description)
    check_teacher(
        teacher, num_classes=num_classes, img_size=img_size, batch_size=batch_size, device=device, autocast=autocast
    )
    if class_names is not None and teacher.class_names is not None:
        check_class_names(teacher.class_names, class_names, what="teacher", allow=allow_class_mismatch)
    return teacher


def check_teacher(
    teacher: nn.Module,
    *,
    num_classes: int,
    img_size: int,
    batch_size: int,
    device: torch.device,
    autocast: contextlib.AbstractContextManager | None = None,
) -> None:
    """One forward on zeros (batch_size, 3, img_size, img_size): the teacher must return (batch_size, num_classes)."""
    x = torch.zeros(batch_size, 3, img_size, img_size, device=device)
    description = getattr(teacher, "description", type(teacher).__name__)
    try:
        with torch.no_grad(), autocast or contextlib.nullcontext():
            out = teacher(x)
    except Exception as e:
        raise ValueError(f"the teacher ({description}) failed on a {tuple(x.shape)} batch: {e}") from e
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"the teacher ({description}) must return a logits tensor, got {type(out).__name__}")
    if tuple(out.shape) != (batch_size, num_classes):
        raise ValueError(
            f"the teacher ({description}) returns logits of shape {tuple(out.shape)} for a {tuple(x.shape)} batch, "
            f"expected ({batch_size}, {num_classes}): it must predict the dataset's {num_classes} classes"
        )
