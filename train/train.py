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
Resume a run:       the same command plus --resume auto (the newest readable checkpoint in --output-dir)
Teacher once:       add --teacher-cache DIR: records the teacher's labels; later students with the same data
                    settings and --teacher-cache DIR replay them (no --teacher-path needed, bit-identical weights)
Evaluate:           python train/train.py --eval-only --resume RUN_DIR_OR_CKPT --data /data/imagenet
                    (the model is rebuilt as the checkpoint records it: no architecture flags)
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
import os
import sys
import warnings
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from fastdeit.data import Mixup, RandomErasing, build_loader
from fastdeit.losses import DistillationLoss, build_criterion
from fastdeit.models import VisionTransformer, read_checkpoint
from fastdeit.training import (
    CheckpointManager,
    ConfigError,
    MetricsLog,
    TeacherSource,
    TrainConfig,
    TrainingDiverged,
    TrainingWarning,
    TrainProgress,
    all_finite,
    all_gather_objects,
    build_model,
    build_optimizer,
    capture_rng,
    check_class_names,
    check_same_global_batch,
    cleanup,
    cosine_lr,
    epoch_summary,
    evaluate_models,
    init_distributed,
    load_finetune_weights,
    load_resume_checkpoint,
    parse_config,
    report_run_warnings,
    restore_rng,
    scaled_lr,
    seed_rank_generators,
    set_aside_earlier_run,
    short_run_warnings,
    user_errors,
    weights_fields,
)


def main(config: TrainConfig) -> dict[str, float]:
    """Train (or with eval_only, evaluate) as `config` says; returns the last evaluation's metrics."""
    # ------------------------------------------------------------------------------------------ set-up
    env = init_distributed(config.device)
    device = env.device
    log = print if env.is_main else (lambda *args, **kwargs: None)
    report_run_warnings(env)  # every rank reads the same data and checkpoints: rank 0 alone warns about them
    out_dir = Path(config.output_dir)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls outside autocast (eval of fp32 layers)
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True  # fixed shapes: the teacher's convolutions pick their fastest kernels
    amp = config.amp if config.amp != "auto" else ("bf16" if device.type == "cuda" else "none")
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[amp]
    autocast = partial(torch.autocast, device.type, dtype=amp_dtype) if amp_dtype else nullcontext
    log(f"device {device}, {env.world_size} process(es), autocast {amp}")

    # ------------------------------------------------------------------------------------------ resume
    # Read first: the model is rebuilt as the checkpoint records it (architecture flags left out come from it).
    with user_errors("resume"):
        resume_path, ckpt = load_resume_checkpoint(config.resume, out_dir, env)
    with user_errors("finetune"):  # the same for the weights a run starts from, when --model is left out
        weights = read_checkpoint(config.finetune) if config.finetune else None
        given_model = config.model is not None
        config = config.with_architecture_of(weights and weights.config)
    with user_errors("resume"):
        config = config.resolve(ckpt or None, where=str(resume_path))
        if ckpt and not config.eval_only:
            check_same_global_batch(ckpt, config.batch_size, env.world_size, where=str(resume_path))
    if resume_path is not None:
        changed = config.changed_keys(ckpt["config"])
        log(
            f"resumed from {resume_path}: epoch {ckpt['epoch']}, step {ckpt['step']}"
            + (f"; config keys changed since: {', '.join(changed)}" if changed else "")
        )
    elif config.resume == "auto":
        log(f"resume=auto: no checkpoint in {out_dir} yet, starting fresh")
    elif not config.eval_only and (earlier := set_aside_earlier_run(out_dir, env)) is not None:
        log(f"note: {out_dir} held an earlier run; its checkpoints and logs are now in {earlier} (--resume auto "
            "continues a run instead)")  # fmt: skip
    if ckpt and ckpt["epoch"] >= config.epochs and not config.eval_only:
        log(
            f"{resume_path} ends a finished run (epoch {ckpt['epoch']} of {config.epochs}, step {ckpt['step']}): "
            f"nothing to train. Its last evaluation: {json.dumps(ckpt.get('metrics', {}))}. To train further, "
            "raise --epochs; to evaluate it, --eval-only."
        )
        cleanup(env)
        return ckpt.get("metrics", {})

    # ------------------------------------------------------------------------------------------- data
    # Batches depend only on (seed, epoch, rank, step): resuming mid-epoch replays nothing and skips nothing.
    place = dict(device=device, rank=env.rank, world_size=env.world_size)
    with user_errors("data"):
        if not config.eval_only:
            train_config = config.loader_config("train", distributed=env.distributed)
            train_loader, train_info = build_loader(config.data, split="train", config=train_config, **place)
        val_loader, val_info = build_loader(config.data, split="val", config=config.loader_config("val"), **place)
    class_names = val_info.class_names  # the train split's (val is labelled with its class list)
    splits = {"val": val_info} if config.eval_only else {"train": train_info, "val": val_info}
    counts = " / ".join(f"{info.num_samples} {split}" for split, info in splits.items())
    decoders = ", ".join(f"{info.backend} ({split})" for split, info in splits.items())
    shown = ", ".join(class_names[:5]) + (", ..." if len(class_names) > 5 else "")
    log(f"data {config.data}: {counts} images, {len(class_names)} classes ({shown}); decoders: {decoders}")
    if ckpt.get("class_names") is not None:  # labels are indices: output i must be the dataset's class i
        with user_errors("resume"):
            check_class_names(ckpt["class_names"], class_names, what="checkpoint", allow=config.allow_class_mismatch)

    # ------------------------------------------------------------------------------------------ model
    torch.manual_seed(config.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    with user_errors("model"):
        model = build_model(
            config.model,
            num_classes=len(class_names),
            img_size=config.img_size,
            backend=config.backend,
            drop_path_rate=config.drop_path,
            patch_size=config.patch_size,
            embed_dim=config.embed_dim,
            depth=config.depth,
            num_heads=config.num_heads,
            mlp_ratio=config.mlp_ratio,
            **weights_fields(ckpt["model_config"] if ckpt else weights and weights.config, config.model),
        )
    model.set_class_names(class_names)  # checkpoints and save_pretrained carry them
    if isinstance(model, VisionTransformer):  # predict and export then use the eval transform the run scored with
        model.config = model.config.replace(crop_pct=config.crop_pct)
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
        hints = []  # what to change on this command line, after the loader's message
        if given_model and weights.config is not None:
            hints.append("or leave out --model and the architecture flags: train.py then builds the model they record")
        if config.eval_only:
            hints.append("--eval-only scores the weights' own head: give data with its classes, or fine-tune a new one")
        with user_errors("finetune", "; ".join(hints)):
            log(load_finetune_weights(model, weights, allow_new_head=not config.eval_only))
    if ckpt:
        model.load_state_dict(ckpt["model"])
    model.to(device)
    raw_model = model  # the unwrapped module: what the optimizer, the EMA and checkpoints see
    log(f"model {model.config.describe()}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
    # torch's AveragedModel with an EMA update (DeiT's ModelEma), over weights and buffers (BatchNorm statistics);
    # it starts as a copy of the weights just loaded, or as the checkpoint's EMA.
    ema = None
    if config.model_ema and not (config.eval_only and "model_ema" not in ckpt):
        ema = AveragedModel(raw_model, multi_avg_fn=get_ema_multi_avg_fn(config.model_ema_decay), use_buffers=True)
        if "model_ema" in ckpt:
            ema.load_state_dict(ckpt["model_ema"])
    evaluated = {"val": raw_model, **({"ema": ema.module} if ema is not None else {})}

    if config.eval_only:
        results = evaluate_models(evaluated, val_loader, env, autocast())
        log(json.dumps(results))
        MetricsLog(out_dir, enabled=env.is_main, tensorboard=False, start_step=None).log(
            {"kind": "eval", "step": ckpt.get("step", 0), "weights": str(resume_path or config.finetune), **results}
        )
        cleanup(env)
        return results

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
    # DeiT's recipe is made for 300 ImageNet epochs: say what would keep a short run from training.
    for message in short_run_warnings(
        warmup_epochs=config.warmup_epochs,
        lr=config.lr,
        ema_decay=config.model_ema_decay if config.model_ema else None,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        global_batch=global_batch,
    ):
        warnings.warn(message, TrainingWarning, stacklevel=1)

    # ---------------------------------------------------------------------- augmentation, loss, teacher
    generators = seed_rank_generators(config.seed, env.rank)  # each rank's drop path, mixes and erasures
    mixup = None
    if (config.mixup > 0 or config.cutmix > 0) and config.mixup_prob > 0:
        mixup = Mixup(
            len(class_names),
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
        with user_errors("teacher"):
            teacher = TeacherSource.build(
                config, env=env, amp=amp, autocast=autocast(), loader=train_loader, data_info=train_info, log=log
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

    # ------------------------------------------------------------ resume the optimizer and random streams
    step, start_epoch, start_step = 0, 0, 0
    if ckpt:
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
    progress = TrainProgress(env, global_batch, progress=config.progress, log_interval=config.log_interval, log=log)

    def save_checkpoint(epoch: int, epoch_step: int, last_eval: dict[str, float]) -> None:
        if teacher is not None:
            teacher.flush()  # the teacher cache holds every step a checkpoint holds
        # Never replace good checkpoints with diverged weights (keep_last would delete the good ones).
        if not all_finite(raw_model):
            raise TrainingDiverged(f"the weights hold NaN/inf at step {step}: stopping; {ckpts.last_good()}")
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
                "class_names": list(class_names),
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
        progress.start_epoch(epoch, config.epochs, steps_per_epoch, start_step)
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
            progress.add(loss)

            end_of_epoch = epoch_step + 1 == steps_per_epoch
            save_now = config.ckpt_interval > 0 and step % config.ckpt_interval == 0 and not end_of_epoch
            if step % config.log_interval == 0 or save_now or end_of_epoch:
                # One collective per interval: the loss summed over ranks is the mean loss and, being NaN/inf
                # when any rank's is, the non-finite check (no per-step host sync).
                mean_loss, img_per_s = progress.reduce()
                if not math.isfinite(mean_loss):
                    raise TrainingDiverged(
                        f"loss is {mean_loss} at step {step} (epoch {epoch + 1}): stopping; {ckpts.last_good()}. "
                        "Try a lower --lr, --amp bf16 instead of fp16, or --clip-grad 1.0"
                    )
                metrics.log(dict(kind="train", step=step, epoch=epoch + 1, loss=mean_loss, lr=lr, img_per_s=img_per_s))
                progress.show(step, mean_loss, lr, img_per_s)
            if save_now:
                save_checkpoint(epoch, epoch_step + 1, last_eval)
        start_step = 0

        record = {"kind": "epoch", "step": step, "epoch": epoch + 1, "lr": lr, **progress.end_epoch()}
        if (epoch + 1) % config.eval_interval == 0 or epoch + 1 == config.epochs:
            last_eval = evaluate_models(evaluated, val_loader, env, autocast())
            record.update(last_eval)
        metrics.log(record)
        log(epoch_summary(record, config.epochs))
        save_checkpoint(epoch + 1, 0, last_eval)

    metrics.close()
    cleanup(env)
    return last_eval


if __name__ == "__main__":
    try:
        main(parse_config(sys.argv[1:], description=__doc__))
    except (ConfigError, FileNotFoundError, ImportError) as e:
        sys.exit(f"train.py: error: {e}")
    except TrainingDiverged as e:
        sys.exit(f"train.py: {e}")
    # Done: checkpoints and logs are written and closed. Leave without the interpreter's teardown, where the native
    # threads of DALI's pipelines and of the process group can still be running when their objects are destroyed
    # (seen once in CI: a torchrun rank aborting with "terminate called without an active exception" after its run).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
