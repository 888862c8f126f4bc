"""Shared pieces of the training tests: running train/train.py, a tiny fast model configuration, a teacher file, an
ImageFolder of real photos."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from PIL import Image

from fastdeit.io import atomic_torch_save
from fastdeit.models.convnet import create_convnet

REPO = Path(__file__).resolve().parents[2]
TRAIN_SCRIPT = REPO / "train" / "train.py"

# A 2-block, 32-wide distilled DeiT on 16x16 digits with 4x4 patches, batch 64 (23 steps per epoch): a few ms
# per step on a CPU. The recipe's augmentations stay on (mixup, cutmix, erasing, RandAugment) so their code
# paths run too.
TINY = (
    "--data digits --model deit_tiny_distilled_patch16_224 --backend torch --img-size 16 --patch-size 4 "
    "--embed-dim 32 --depth 2 --num-heads 2 --batch-size 64 --data-threads 2 --progress false --tensorboard false "
    "--log-interval 10 --model-ema-decay 0.9 --lr 0.01 --warmup-epochs 0.5"
).split()


def tiny_args(**overrides: object) -> list[str]:
    """TINY plus `--key value` overrides (underscores in keys become dashes); None leaves TINY's `key` out."""
    args = list(TINY)
    for key, value in overrides.items():
        flag = f"--{key.replace('_', '-')}"
        if flag in args:
            i = args.index(flag)
            del args[i : i + 2]
        if value is not None:
            args += [flag, str(value)]
    return args


def run_train(args: list[str], *, nproc: int = 1, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run train/train.py (through torchrun when nproc > 1) and return the finished process."""
    env = dict(os.environ, OMP_NUM_THREADS="1" if nproc > 1 else os.environ.get("OMP_NUM_THREADS", "2"))
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    return subprocess.run(
        launcher + [str(TRAIN_SCRIPT)] + args, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO
    )


def load_train_module() -> ModuleType:
    """train/train.py imported as a module (train/ is a script folder, not a package)."""
    spec = importlib.util.spec_from_file_location("fastdeit_train_script", TRAIN_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_convnet_teacher(path: Path, num_classes: int = 10, class_names: list[str] | None = None) -> Path:
    """An (untrained) convnet saved as train.py saves its checkpoints: enough to test the distillation plumbing.
    Without `class_names` it records none (as a checkpoint of an earlier version)."""
    model = create_convnet("convnet_tiny", num_classes=num_classes, class_names=class_names)
    state = {
        "model": model.state_dict(),
        "model_name": model.model_name,
        "model_config": model.model_config,
        "config": {},
    }
    return atomic_torch_save(state, path)


def final_state(output_dir: Path) -> dict:
    """The newest checkpoint of a run."""
    from fastdeit.training import latest_checkpoint

    path = latest_checkpoint(output_dir)
    assert path is not None, f"no checkpoint in {output_dir}"
    return torch.load(path, map_location="cpu", weights_only=True)


PHOTO_CLASSES = ("cat", "coffee", "rocket")


def photo_image_folder(root: Path) -> Path:
    """An ImageFolder of scikit-image photos: root/{train,val}/{cat,coffee,rocket}/*.jpg, 8 and 2 crops per class."""
    from skimage import data as skimage_data

    sources = dict(zip(PHOTO_CLASSES, ("chelsea", "coffee", "rocket"), strict=True))
    rng = np.random.default_rng(0)
    for name, photo in sources.items():
        image = Image.fromarray(getattr(skimage_data, photo)())
        for split, count in (("train", 8), ("val", 2)):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                w, h = image.size
                side = int(min(w, h) * rng.uniform(0.6, 1.0))
                left, top = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
                crop = image.crop((left, top, left + side, top + side)).resize((48, 48))
                crop.save(root / split / name / f"{i}.jpg", quality=90)
    return root
