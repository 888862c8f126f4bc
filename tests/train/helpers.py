"""Shared pieces of the training tests: running train/train.py, a tiny fast model configuration, a teacher file."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import torch

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
    """TINY plus `--key value` overrides (underscores in keys become dashes)."""
    args = list(TINY)
    for key, value in overrides.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
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


def write_convnet_teacher(path: Path, num_classes: int = 10) -> Path:
    """An (untrained) convnet saved as train.py saves its checkpoints: enough to test the distillation plumbing."""
    model = create_convnet("convnet_tiny", num_classes=num_classes)
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
