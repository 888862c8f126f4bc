r"""Train DeiT (Touvron et al., 2020) with the official recipe, optionally distilled from a convnet teacher.

One GPU:
    python train/train.py --config train/configs/deit_tiny.yaml --data /data/imagenet \
        --teacher-model regnety_160 --teacher-path regnety_160-a5fe301d.pth
One node, 8 GPUs (global batch = 8 x batch_size; the lr is scaled by global batch / 512):
    torchrun --standalone --nproc_per_node 8 train/train.py --config train/configs/deit_small.yaml \
        --data /data/imagenet --teacher-model regnety_160 --teacher-path regnety_160-a5fe301d.pth
Two nodes (run on each; NODE0 is the first node's address; --output-dir on a shared filesystem):
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint NODE0:29500 --rdzv-id deit \
        train/train.py --config train/configs/deit_base.yaml --data /data/imagenet ...
Fine-tune at 384:   ... --config train/configs/deit_base_384_finetune.yaml --finetune runs/deit_base/ckpt_<step>.pt
Resume a run:       the same command plus --resume auto (the latest checkpoint in --output-dir)
Teacher once:       add --teacher-cache DIR: records the teacher's labels; later students with the same data
                    settings and --teacher-cache DIR replay them (no --teacher-path needed, bit-identical weights)
Evaluate:           python train/train.py --data /data/imagenet --model ... --eval-only --resume CKPT
CPU, 2 processes:   torchrun --standalone --nproc_per_node 2 train/train.py --config train/configs/digits_student.yaml
Every option with its default (DeiT's): python train/train.py --help. Config files: train/configs/*.yaml.

One step: random erasing then mixup/cutmix on the device batch; forward under autocast; the loss is
cross-entropy against the (mixed, smoothed) targets, plus, with distillation, the teacher term on the
distillation head (the teacher sees the same mixed images); backward; AdamW; EMA update. The learning
rate follows a per-step cosine with warmup (fastdeit.training.optim).
"""

from __future__ import annotations

import json
import math
import sys
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from fastdeit.data import Mixup, RandomErasing, build_loader
from fastdeit.data.common import derive_seed
from fastdeit.losses import DistillationLoss, build_criterion
from fastdeit.training import (
    CheckpointManager,
    ConfigError,
    MetricsLog,
    TrainConfig,
    all_gather_objects,
    all_reduce_sum,
    build_model,
    build_optimizer,
    capture_rng,
    cleanup,
    cosine_lr,
    evaluate,
    init_distributed,
    latest_checkpoint,
    load_finetune_weights,
    load_training_checkpoint,
    parse_config,
    resolve_resume,
    restore_rng,
    scaled_lr,
)
from fastdeit.training.checkpoints import TrainingDiverged, all_finite
from fastdeit.training.config import user_errors
from fastdeit.training.distributed import broadcast_object
from fastdeit.training.teacher_cache import TeacherSource
from fastdeit.training.teachers import load_teacher

# Keys that may differ on resume without changing the run itself.
_RUN_ONLY_KEYS = {"resume", "eval_only", "output_dir", "progress", "tensorboard", "log_interval", "data_threads"}


def main(config: TrainConfig) -> dict[str, float]:
    """Train (or with eval_only, evaluate) as `config` says; returns the last evaluation's metrics."""
    # ------------------------------------------------------------------------------------------ set-up
    env = init_distributed(config.device)
    device = env.device
    log = print if env.is_main else (lambda *args, **kwargs: None)
    out_dir = Path(config.output_dir)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls outside autocast (eval of fp32 layers)
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True  # fixed shapes: the teacher's convolutions pick their fastest kernels
    amp = config.amp if config.amp != "auto" else ("bf16" if device.type == "cuda" else "none")
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[amp]
    autocast = partial(torch.autocast, device.type, dtype=amp_dtype) if amp_dtype else nullcontext
    log(f"device {device}, {env.world_size} process(es), autocast {amp}")

    # ------------------------------------------------------------------------------------------- data
    # Batches depend only on (seed, epoch, rank, step): resuming mid-epoch replays nothing and skips nothing.
    place = dict(device=device, rank=env.rank, world_size=env.world_size)
    with user_errors("data"):
        train_config = config.loader_config("train", distributed=env.distributed)
        train_loader, train_info = build_loader(config.data, split="train", config=train_config, **place)
        val_loader, val_info = build_loader(config.data, split="val", config=config.loader_config("val"), **place)
    num_classes = train_info.num_classes
    log(
        f"data {config.data}: {train_info.num_samples} train / {val_info.num_samples} val images, {num_classes} "
        f"classes; decoders: {train_info.backend} (train), {val_info.backend} (val)"
    )

    # ------------------------------------------------------------------------------------------ model
    torch.manual_seed(config.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    with user_errors("model"):
        model = build_model(
            config.model,
            num_classes=num_classes,
            img_size=config.img_size,
            backend=config.backend,
            drop_path_rate=config.drop_path,
            patch_size=config.patch_size,
            embed_dim=config.embed_dim,
            depth=config.depth,
            num_heads=config.num_heads,
            mlp_ratio=config.mlp_ratio,
        )
    distill = config.distillation_type != "none"
    if distill:
        if not getattr(model, "distilled", False):
            raise ConfigError(
                f"distillation_type={config.distillation_type!r} needs a student with a distillation token "
                f"(a *_distilled_* model such as deit_tiny_distilled_patch16_224); {config.model!r} has none"
            )
        model.set_distilled_training(True)  # training forward returns (cls_logits, dist_logits)
    if config.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if config.finetune:
        with user_errors("finetune"):
            log(load_finetune_weights(model, config.finetune, allow_new_head=not config.eval_only))
    model.to(device)
    raw_model = model  # the unwrapped module: what the optimizer, the EMA and checkpoints see
    log(f"model {config.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")

    # ------------------------------------------------------------------------------ optimizer, schedule
    global_batch = config.batch_size * env.world_size
    peak_lr = scaled_lr(config.lr, global_batch)
    with user_errors("optimizer"):
        optimizer = build_optimizer(
            raw_model,
            name=config.opt,
            lr=peak_lr,
            weight_decay=config.weight_decay,
            betas=config.opt_betas,
            eps=config.opt_eps,
            device=device,
        )
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")  # bf16 has fp32's range: no scaling
    steps_per_epoch = len(train_loader)
    total_steps = config.epochs * steps_per_epoch
    warmup_steps = round(config.warmup_epochs * steps_per_epoch)
    schedule = dict(
        peak_lr=peak_lr,
        warmup_lr=config.warmup_lr,
        min_lr=config.min_lr,
        warmup_steps=warmup_steps,
        total_steps=total_steps,
    )
    lr_at = partial(cosine_lr, **schedule)
    log(
        f"lr {config.lr:g} x global batch {global_batch} / 512 = {peak_lr:.3g}; per-step cosine over {total_steps} "
        f"steps ({steps_per_epoch}/epoch), warmup {warmup_steps} from {config.warmup_lr:g}, min {config.min_lr:g}"
    )

    # ---------------------------------------------------------------------- augmentation, loss, teacher
    # Each rank draws its own drop-path masks, mixes and erasures; the generators are checkpointed.
    torch.manual_seed(derive_seed(config.seed, 1, env.rank))
    generators = {
        "mixup": torch.Generator().manual_seed(derive_seed(config.seed, 2, env.rank)),
        "erasing": torch.Generator().manual_seed(derive_seed(config.seed, 3, env.rank)),
    }
    mixup_active = config.mixup > 0 or config.cutmix > 0
    mixup = None
    if mixup_active and config.mixup_prob > 0:
        mixup = Mixup(
            num_classes,
            mixup_alpha=config.mixup,
            cutmix_alpha=config.cutmix,
            prob=config.mixup_prob,
            switch_prob=config.mixup_switch_prob,
            label_smoothing=config.smoothing,
            generator=generators["mixup"],
        )
    erasing = RandomErasing(config.reprob, generator=generators["erasing"]) if config.reprob > 0 else None
    # The teacher's output per step: live, or replayed from --teacher-cache (fastdeit.training.teacher_cache).
    teacher = None
    if distill:
        load_live = partial(
            load_teacher,
            config.teacher_path,
            config.teacher_model,
            num_classes=num_classes,
            img_size=config.img_size,
            batch_size=config.batch_size,
            device=device,
            autocast=autocast(),
        )
        with user_errors("teacher"):
            teacher = TeacherSource.build(
                config, load_live, env=env, amp=amp, loader=train_loader, data_info=train_info, log=log
            )
        log(
            f"{config.distillation_type} distillation, alpha {config.distillation_alpha}, tau {config.distillation_tau}"
        )
    criterion = DistillationLoss(
        build_criterion(mixup_active=mixup is not None, label_smoothing=config.smoothing),
        None,  # the teacher's output comes with each call
        config.distillation_type,
        config.distillation_alpha,
        config.distillation_tau,
    )

    # ------------------------------------------------------------------------------------------ resume
    step, start_epoch, start_step = 0, 0, 0
    resume_path = broadcast_object(resolve_resume(config.resume, out_dir) if env.is_main else None, env)
    if config.resume == "auto" and resume_path is None:
        log(f"resume=auto: no checkpoint in {out_dir} yet, starting fresh")
    elif resume_path is None and not config.eval_only and latest_checkpoint(out_dir) is not None:
        log(
            f"note: {out_dir} holds checkpoints of an earlier run; this fresh run replaces them (--resume auto "
            "continues that run instead)"
        )
    ckpt = {}
    if resume_path is not None:
        with user_errors("resume"):
            ckpt = load_training_checkpoint(resume_path)
            raw_model.load_state_dict(ckpt["model"])
    # torch's AveragedModel with an EMA update (DeiT's ModelEma), over weights and buffers (BatchNorm statistics);
    # it starts as a copy of the weights just loaded.
    ema = None
    if config.model_ema:
        ema = AveragedModel(raw_model, multi_avg_fn=get_ema_multi_avg_fn(config.model_ema_decay), use_buffers=True)
        if "model_ema" in ckpt:
            ema.load_state_dict(ckpt["model_ema"])
    if resume_path is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        step, start_epoch, start_step = ckpt["step"], ckpt["epoch"], ckpt["epoch_step"]
        if len(ckpt["rng"]) == env.world_size:
            restore_rng(ckpt["rng"][env.rank], generators, device)
        else:
            log(
                f"note: the checkpoint was written by {len(ckpt['rng'])} process(es), this run has {env.world_size}: "
                "data order and random augmentations differ from the interrupted run"
            )
        changed = sorted(
            k for k, v in config.to_dict().items() if k not in _RUN_ONLY_KEYS and ckpt["config"].get(k) != v
        )
        log(
            f"resumed from {resume_path}: epoch {start_epoch}, step {step}"
            + (f"; config keys changed since: {', '.join(changed)}" if changed else "")
        )

    if config.eval_only:
        results = {f"val_{k}": v for k, v in evaluate(raw_model, val_loader, env, autocast()).items()}
        if "model_ema" in ckpt and ema is not None:
            results.update({f"ema_{k}": v for k, v in evaluate(ema.module, val_loader, env, autocast()).items()})
        log(json.dumps(results))
        MetricsLog(out_dir, enabled=env.is_main, tensorboard=False, start_step=None).log(
            {"kind": "eval", "step": step, "weights": str(resume_path or config.finetune), **results}
        )
        cleanup(env)
        return results

    if config.compile:
        model = torch.compile(model)
    if env.distributed:
        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    # ------------------------------------------------------------------------------ checkpoints, logs
    ckpts = CheckpointManager(out_dir, config.keep_last)
    if env.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    metrics = MetricsLog(out_dir, enabled=env.is_main, tensorboard=config.tensorboard, start_step=step)

    def save_checkpoint(epoch: int, epoch_step: int, last_eval: dict[str, float]) -> None:
        if teacher is not None:
            teacher.flush()  # the teacher cache holds every step a checkpoint holds
        # Never replace good checkpoints with diverged weights (keep_last would delete the good ones).
        if not all_finite(raw_model):
            raise TrainingDiverged(f"the weights hold NaN/inf at step {step}: stopping; {_last_good(ckpts)}")
        rng = all_gather_objects(capture_rng(generators, device), env)  # every rank's streams, in rank order
        if env.is_main:
            state = {
                "model": raw_model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "scheduler": schedule,
                "step": step,
                "epoch": epoch,
                "epoch_step": epoch_step,
                "rng": rng,
                "config": config.to_dict(),
                "model_name": config.model,
                "model_config": raw_model.model_config,
                "class_names": list(train_info.class_names),
                "metrics": last_eval,
            }
            if ema is not None:
                state["model_ema"] = ema.state_dict()
            ckpts.save(state, step)

    # ------------------------------------------------------------------------------------------ train
    last_eval: dict[str, float] = {}
    for epoch in range(start_epoch, config.epochs):
        train_loader.set_epoch(epoch, start_step)
        model.train()
        bar = tqdm(
            total=steps_per_epoch,
            initial=start_step,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            disable=not (env.is_main and config.progress),
            dynamic_ncols=True,
        )
        epoch_start, window_start = time.perf_counter(), time.perf_counter()
        window_loss, window_steps = torch.zeros((), device=device), 0
        epoch_loss, epoch_steps = 0.0, 0
        for epoch_step, (images, targets) in enumerate(train_loader, start=start_step):
            lr = lr_at(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            # DeiT's order: random erasing per image, then mixup/cutmix on the batch (targets become soft).
            if erasing is not None:
                images = erasing(images)
            if mixup is not None:
                images, targets = mixup(images, targets)
            with autocast():
                outputs = model(images)  # distilled training: (cls_logits, dist_logits)
                # The teacher, if any, sees the mixed images (or its output for them is replayed from the cache).
                teacher_output = teacher(images, epoch, epoch_step) if teacher is not None else None
                loss = criterion(images, outputs, targets, teacher_output)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if config.clip_grad:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(raw_model.parameters(), config.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            if ema is not None:
                ema.update_parameters(raw_model)
            step += 1
            window_loss += loss.detach().float()
            window_steps += 1
            bar.update()

            end_of_epoch = epoch_step + 1 == steps_per_epoch
            save_now = config.ckpt_interval > 0 and step % config.ckpt_interval == 0 and not end_of_epoch
            if step % config.log_interval == 0 or save_now or end_of_epoch:
                # One collective per interval: the loss summed over ranks is the mean loss and, being NaN/inf
                # when any rank's is, the non-finite check (no per-step host sync).
                total = all_reduce_sum(window_loss.clone(), env).item()
                mean_loss = total / (window_steps * env.world_size)
                if not math.isfinite(mean_loss):
                    raise TrainingDiverged(
                        f"loss is {mean_loss} at step {step} (epoch {epoch + 1}): stopping; {_last_good(ckpts)}. "
                        "Try a lower --lr, --amp bf16 instead of fp16, or --clip-grad 1.0"
                    )
                elapsed = time.perf_counter() - window_start
                img_per_s = window_steps * global_batch / elapsed
                metrics.log(
                    {
                        "kind": "train",
                        "step": step,
                        "epoch": epoch + 1,
                        "loss": mean_loss,
                        "lr": lr,
                        "img_per_s": img_per_s,
                    }
                )
                bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", img_s=f"{img_per_s:.0f}")
                if not config.progress and step % config.log_interval == 0:
                    log(f"step {step} | loss {mean_loss:.4f} | lr {lr:.3e} | {img_per_s:.0f} img/s")
                epoch_loss += total / env.world_size
                epoch_steps += window_steps
                window_loss.zero_()
                window_steps, window_start = 0, time.perf_counter()
            if save_now:
                save_checkpoint(epoch, epoch_step + 1, last_eval)
        bar.close()
        train_time = time.perf_counter() - epoch_start
        ran_steps = steps_per_epoch - start_step
        start_step = 0

        record = {
            "kind": "epoch",
            "step": step,
            "epoch": epoch + 1,
            "lr": lr,
            "epoch_time_s": train_time,
            "img_per_s": ran_steps * global_batch / train_time,
        }
        if epoch_steps:
            record["train_loss"] = epoch_loss / epoch_steps
        if (epoch + 1) % config.eval_interval == 0 or epoch + 1 == config.epochs:
            last_eval = {f"val_{k}": v for k, v in evaluate(raw_model, val_loader, env, autocast()).items()}
            if ema is not None:
                last_eval.update({f"ema_{k}": v for k, v in evaluate(ema.module, val_loader, env, autocast()).items()})
            record.update(last_eval)
        metrics.log(record)
        log(_epoch_line(record, config.epochs))
        save_checkpoint(epoch + 1, 0, last_eval)

    metrics.close()
    cleanup(env)
    return last_eval


def _last_good(ckpts: CheckpointManager) -> str:
    latest = ckpts.latest()
    return f"the last good checkpoint is {latest} (kept)" if latest else "no checkpoint was written"


def _epoch_line(record: dict[str, float], epochs: int) -> str:
    parts = [f"epoch {record['epoch']}/{epochs}", f"step {record['step']}"]
    if "train_loss" in record:
        parts.append(f"train loss {record['train_loss']:.4f}")
    if "val_top1" in record:
        parts.append(f"val top-1 {record['val_top1']:.2f}% top-5 {record['val_top5']:.2f}%")
    if "ema_top1" in record:
        parts.append(f"EMA top-1 {record['ema_top1']:.2f}%")
    parts.append(f"{record['epoch_time_s']:.1f} s, {record['img_per_s']:.0f} img/s")
    return " | ".join(parts)


if __name__ == "__main__":
    try:
        main(parse_config(sys.argv[1:], description=__doc__))
    except (ConfigError, FileNotFoundError, ImportError) as e:
        sys.exit(f"train.py: error: {e}")
    except TrainingDiverged as e:
        sys.exit(f"train.py: {e}")
