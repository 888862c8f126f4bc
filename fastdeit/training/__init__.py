"""The reusable parts of train/train.py: config, optimizer and schedule, DDP set-up, checkpoints, teachers, metrics.

train/train.py is the script that runs the DeiT recipe top to bottom; this package holds what it calls,
so that the loop itself stays short and each piece is tested on its own.
"""

from fastdeit.training.checkpoints import (
    CheckpointManager,
    TrainingDiverged,
    all_finite,
    capture_rng,
    check_same_global_batch,
    latest_checkpoint,
    list_checkpoints,
    load_resume_checkpoint,
    load_training_checkpoint,
    restore_rng,
    seed_rank_generators,
    set_aside_earlier_run,
)
from fastdeit.training.config import (
    ConfigError,
    TrainConfig,
    TrainingWarning,
    load_config_file,
    parse_config,
    user_errors,
)
from fastdeit.training.distributed import (
    DistEnv,
    all_gather_objects,
    all_reduce_sum,
    broadcast_object,
    cleanup,
    init_distributed,
)
from fastdeit.training.metrics import (
    MetricsLog,
    TrainProgress,
    epoch_summary,
    evaluate,
    evaluate_models,
    read_metrics,
    report_run_warnings,
)
from fastdeit.training.models import build_model, check_class_names, load_finetune_weights, weights_fields
from fastdeit.training.optim import build_optimizer, cosine_lr, param_groups, scaled_lr, short_run_warnings
from fastdeit.training.teacher_cache import TeacherSource
from fastdeit.training.teachers import FrozenTeacher, load_teacher

__all__ = [
    "CheckpointManager",
    "ConfigError",
    "DistEnv",
    "FrozenTeacher",
    "MetricsLog",
    "TeacherSource",
    "TrainConfig",
    "TrainProgress",
    "TrainingDiverged",
    "TrainingWarning",
    "all_finite",
    "all_gather_objects",
    "all_reduce_sum",
    "broadcast_object",
    "build_model",
    "build_optimizer",
    "capture_rng",
    "check_class_names",
    "check_same_global_batch",
    "cleanup",
    "cosine_lr",
    "epoch_summary",
    "evaluate",
    "evaluate_models",
    "init_distributed",
    "latest_checkpoint",
    "list_checkpoints",
    "load_config_file",
    "load_finetune_weights",
    "load_resume_checkpoint",
    "load_teacher",
    "load_training_checkpoint",
    "param_groups",
    "parse_config",
    "read_metrics",
    "report_run_warnings",
    "restore_rng",
    "scaled_lr",
    "seed_rank_generators",
    "set_aside_earlier_run",
    "short_run_warnings",
    "user_errors",
    "weights_fields",
]
