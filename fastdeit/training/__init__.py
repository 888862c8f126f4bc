"""The reusable parts of train/train.py: config, optimizer and schedule, DDP set-up, checkpoints, metrics.

train/train.py is the script that runs the DeiT recipe top to bottom; this package holds what it calls,
so that the loop itself stays short and each piece is tested on its own.
"""

from fastdeit.training.checkpoints import (
    CheckpointManager,
    capture_rng,
    latest_checkpoint,
    list_checkpoints,
    load_training_checkpoint,
    resolve_resume,
    restore_rng,
)
from fastdeit.training.config import ConfigError, TrainConfig, load_config_file, parse_config
from fastdeit.training.distributed import DistEnv, all_gather_objects, all_reduce_sum, cleanup, init_distributed
from fastdeit.training.metrics import MetricsLog, evaluate, read_metrics
from fastdeit.training.models import build_model, load_finetune_weights
from fastdeit.training.optim import build_optimizer, cosine_lr, param_groups, scaled_lr

__all__ = [
    "CheckpointManager",
    "ConfigError",
    "DistEnv",
    "MetricsLog",
    "TrainConfig",
    "all_gather_objects",
    "all_reduce_sum",
    "build_model",
    "build_optimizer",
    "capture_rng",
    "cleanup",
    "cosine_lr",
    "evaluate",
    "init_distributed",
    "latest_checkpoint",
    "list_checkpoints",
    "load_config_file",
    "load_finetune_weights",
    "load_training_checkpoint",
    "param_groups",
    "parse_config",
    "read_metrics",
    "resolve_resume",
    "restore_rng",
    "scaled_lr",
]
