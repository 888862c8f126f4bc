"""train/train.py end to end on digits: a distilled run, exact resume after SIGKILL, two processes under
torchrun, evaluation only, divergence handling, and setup errors reported before training starts."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fastdeit.training import ConfigError, list_checkpoints, parse_config, read_metrics
from fastdeit.training.checkpoints import checkpoint_name
from tests.train.helpers import (
    PHOTO_CLASSES,
    TRAIN_SCRIPT,
    final_state,
    load_train_module,
    photo_image_folder,
    run_train,
    tiny_args,
    write_convnet_teacher,
)

pytestmark = pytest.mark.slow

EPOCHS = 2  # 23 steps each at batch 64 over the 1,497 train digits: 46 in all


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"train.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _distilled_args(out: Path, teacher: Path, **overrides: object) -> list[str]:
    return tiny_args(
        epochs=EPOCHS,
        output_dir=out,
        distillation_type="hard",
        teacher_path=teacher,
        ckpt_interval=5,
        keep_last=10,
        **overrides,
    )


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory, teacher_file: Path) -> Path:
    """An uninterrupted 2-epoch run with hard distillation and every augmentation on."""
    out = tmp_path_factory.mktemp("reference")
    _ok(run_train(_distilled_args(out, teacher_file)))
    return out


def test_short_distilled_run(reference_run: Path):
    epochs = read_metrics(reference_run, kind="epoch")
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert epochs[-1]["val_count"] == 300  # every val digit once, padding rows not counted
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert 0 <= epochs[-1]["ema_top1"] <= 100 and epochs[-1]["val_top5"] >= epochs[-1]["val_top1"]
    state = final_state(reference_run)
    assert (state["step"], state["epoch"], state["epoch_step"]) == (46, 2, 0)
    assert state["config"]["distillation_type"] == "hard" and state["model_name"] == "deit_tiny_distilled_patch16_224"
    assert set(state) >= {"model", "model_ema", "optimizer", "scaler", "scheduler", "rng", "class_names"}
    assert json.loads((reference_run / "config.json").read_text())["epochs"] == EPOCHS
    # The student is a fastdeit training checkpoint: it loads back as a model, EMA weights included.
    import fastdeit

    overrides = {k: state["model_config"][k] for k in ("img_size", "patch_size", "embed_dim", "depth", "num_heads")}
    model = fastdeit.create_model(
        state["model_name"],
        num_classes=10,
        backend="torch",
        **overrides,
        checkpoint=list_checkpoints(reference_run)[-1],
        use_ema=True,
    )
    assert model.distilled


def test_killed_run_resumes_to_the_same_weights(reference_run: Path, teacher_file: Path, tmp_path: Path):
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, str(TRAIN_SCRIPT)] + _distilled_args(out, teacher_file),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # Kill it in its first epoch, right after its checkpoint of step 15 exists (saves are atomic: any moment
        # works, and the resumed run then crosses an epoch boundary).
        deadline = time.monotonic() + 240
        while not (out / checkpoint_name(15)).exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its step-15 checkpoint"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    resumed_from = list_checkpoints(out)[-1]
    resumed_step = torch.load(resumed_from, weights_only=True)["step"]
    assert resumed_step < 46, "the kill came too late to test anything"
    # A newer checkpoint that cannot be read (a copy cut short, a full disk): resume passes over it, saying so.
    truncated = out / checkpoint_name(resumed_step + 1)
    truncated.write_bytes(resumed_from.read_bytes()[:2000])

    proc = _ok(run_train(_distilled_args(out, teacher_file, resume="auto")))
    assert f"passing over {truncated}" in proc.stderr and f"resumed from {resumed_from}" in proc.stdout
    ours, ref = final_state(out), final_state(reference_run)
    assert ours["step"] == ref["step"] == 46
    for part in ("model", "model_ema"):
        for key, value in ref[part].items():
            # Same ops on the same CPU in the same order: bitwise equal in practice; 1e-6 leaves room for
            # a different thread split of a reduction.
            torch.testing.assert_close(ours[part][key], value, rtol=1e-6, atol=1e-6, msg=f"{part}.{key}")
    # The metrics log reads like one run: the killed run's lines after the resume point were dropped.
    train_steps = [r["step"] for r in read_metrics(out, kind="train")]
    assert train_steps == sorted(set(train_steps))
    ref_losses = {r["step"]: r["loss"] for r in read_metrics(reference_run, kind="train")}
    our_losses = {r["step"]: r["loss"] for r in read_metrics(out, kind="train") if r["step"] > resumed_step}
    assert our_losses and all(abs(our_losses[s] - ref_losses[s]) < 1e-5 for s in our_losses)


def test_two_processes_with_torchrun(reference_run: Path, tmp_path: Path):
    # Started from a run folder whose newest checkpoint is unreadable: every rank reads the folder, rank 0 alone
    # says that it passes over that file; the same for the warnings about the recipe (one epoch is short).
    weights = tmp_path / "weights"
    weights.mkdir()
    shutil.copy(list_checkpoints(reference_run)[-1], weights)
    (weights / checkpoint_name(99)).write_bytes(b"PK\x03\x04 cut short")
    out = tmp_path / "run"
    args = tiny_args(epochs=1, output_dir=out, repeated_aug=2, rand_augment="none", finetune=weights)
    proc = _ok(run_train(args, nproc=2))
    assert "2 process(es)" in proc.stdout
    assert proc.stderr.count("passing over") == 1 and proc.stderr.count("warning: warmup") == 1, proc.stderr
    state = final_state(out)
    assert len(state["rng"]) == 2  # each rank's random streams, for an exact resume
    assert state["step"] == (1497 // 2) // 64  # the loader shards the data: each rank reads half
    last = read_metrics(out, kind="epoch")[-1]
    assert last["val_count"] == 300  # eval shards summed over ranks: every sample counted once


def test_eval_only(reference_run: Path, tmp_path: Path):
    last = list_checkpoints(reference_run)[-1]
    proc = _ok(run_train(tiny_args(output_dir=tmp_path, eval_only="true", resume=last, rand_augment="none")))
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = read_metrics(reference_run, kind="epoch")[-1]
    assert results["val_top1"] == pytest.approx(expected["val_top1"])
    assert results["ema_top1"] == pytest.approx(expected["ema_top1"])
    assert read_metrics(tmp_path, kind="eval")[0]["val_count"] == 300


def test_finetune_weights_alone_say_the_model(reference_run: Path, tmp_path: Path):
    # No --model nor any architecture flag: the checkpoint's (a 2-block, 32-wide distilled tiny at 16 px) is built,
    # where the default (deit_base) would fail to load it. Its classes are the dataset's: the scores are the run's.
    no_arch = {key: None for key in ("model", "img_size", "patch_size", "embed_dim", "depth", "num_heads")}
    last = list_checkpoints(reference_run)[-1]
    args = tiny_args(output_dir=tmp_path, eval_only="true", finetune=last, rand_augment="none", **no_arch)
    proc = _ok(run_train(args))
    assert (
        "model deit_tiny_distilled_patch16_224 (embed_dim=32, depth=2, num_heads=2, patch 4, 16x16 px," in proc.stdout
    )
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert results["val_top1"] == pytest.approx(read_metrics(reference_run, kind="epoch")[-1]["val_top1"])


def test_finetune_from_a_hugging_face_folder_keeps_what_its_weights_need(tmp_path: Path):
    # The Hub's DeiT models have LayerNorm eps 1e-12 (timm's: 1e-6), which no train.py flag sets: the run takes it from
    # the weights (before: a mismatch error, with --model or without), keeps it in its checkpoints, and its resume or
    # evaluation builds the same model again.
    import fastdeit

    hf = tmp_path / "hf"
    arch = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=10, layer_norm_eps=1e-12)
    fastdeit.save_hf(fastdeit.create_model("deit_tiny_distilled_patch16_224", backend="torch", **arch), hf)
    no_arch = {key: None for key in ("model", "img_size", "patch_size", "embed_dim", "depth", "num_heads")}
    run = tmp_path / "run"
    proc = _ok(run_train(tiny_args(output_dir=run, epochs=1, finetune=hf, rand_augment="none", **no_arch)))
    assert "layer_norm_eps=1e-12" in proc.stdout
    assert final_state(run)["model_config"]["layer_norm_eps"] == 1e-12
    proc = _ok(run_train(["--eval-only", "--resume", str(run), "--data", "digits", "--output-dir", str(tmp_path)]))
    assert "layer_norm_eps=1e-12" in proc.stdout  # the model the run trained, not one with timm's eps
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert results["val_top1"] == pytest.approx(read_metrics(run, kind="epoch")[-1]["val_top1"])


def test_the_eval_crop_the_run_scored_with_is_the_models(tmp_path: Path):
    # Before: the model kept its name's crop (0.875 at 224, 1.0 at 384) whatever --crop-pct the run validated with,
    # so predict and export preprocessed otherwise than the reported accuracy.
    _ok(run_train(tiny_args(output_dir=tmp_path, epochs=1, rand_augment="none", crop_pct=1.0)))
    assert final_state(tmp_path)["model_config"]["crop_pct"] == 1.0


def test_resuming_a_finished_run_says_so_and_trains_nothing(reference_run: Path, teacher_file: Path, tmp_path: Path):
    out = tmp_path / "run"
    out.mkdir()
    final = shutil.copy(list_checkpoints(reference_run)[-1], out)
    (out / checkpoint_name(50)).write_bytes(Path(final).read_bytes()[:1000])  # unreadable: passed over
    before = sorted(p.name for p in out.iterdir())
    proc = _ok(run_train(_distilled_args(out, teacher_file, resume="auto")))
    assert f"passing over {out / checkpoint_name(50)}" in proc.stderr
    assert f"{final} ends a finished run (epoch 2 of 2, step 46): nothing to train" in proc.stdout
    assert "--epochs" in proc.stdout and "--eval-only" in proc.stdout  # how to train further or evaluate it
    assert sorted(p.name for p in out.iterdir()) == before  # no checkpoint, no log, no config.json written


def test_a_fresh_run_sets_an_earlier_run_in_its_folder_aside(reference_run: Path, tmp_path: Path):
    # Before: the earlier run's newer checkpoint (step 46) stayed beside this run's (23), and `--resume auto`,
    # `predict --model DIR` and `from_pretrained(DIR)` took it.
    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    earlier = sorted(p.name for p in out.iterdir())
    proc = _ok(run_train(tiny_args(epochs=1, output_dir=out, rand_augment="none")))
    assert (
        f"note: {out} held an earlier run; its checkpoints and logs are now in {out / 'earlier_run_1'}" in proc.stdout
    )
    assert sorted(p.name for p in (out / "earlier_run_1").iterdir()) == earlier  # all of it, nothing lost
    assert [p.name for p in list_checkpoints(out)] == [checkpoint_name(23)]
    assert [r["step"] for r in read_metrics(out, kind="epoch")] == [23]


def test_divergence_stops_and_keeps_the_last_good_checkpoint(reference_run: Path, tmp_path: Path):
    out = tmp_path / "run"
    out.mkdir()
    good = out / checkpoint_name(46)
    good.write_bytes(list_checkpoints(reference_run)[-1].read_bytes())
    before = good.read_bytes()
    # Resume for a third epoch at an absurd learning rate: the weights overflow within a few steps.
    proc = run_train(
        tiny_args(
            epochs=3,
            output_dir=out,
            resume="auto",
            lr="1e30",
            log_interval=2,
            ckpt_interval=4,
            distillation_type="none",
            rand_augment="none",
        )
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "stopping" in proc.stderr and f"the last good checkpoint is {good} (kept)" in proc.stderr
    assert [p.name for p in list_checkpoints(out)] == [good.name] and good.read_bytes() == before


# --- setup errors: raised by main() before the first step, with the key and the expectation in the message


@pytest.fixture(scope="module")
def train_module():
    return load_train_module()


def _config(tmp_path: Path, **overrides: object):
    return parse_config(tiny_args(output_dir=tmp_path, **overrides))


def test_distillation_needs_a_distilled_student(train_module, teacher_file: Path, tmp_path: Path):
    config = _config(tmp_path, model="deit_tiny_patch16_224", distillation_type="soft", teacher_path=teacher_file)
    with pytest.raises(ConfigError, match="needs a student with a distillation token.*deit_tiny_patch16_224"):
        train_module.main(config)
    assert not list_checkpoints(tmp_path)


def test_teacher_of_another_class_count(train_module, tmp_path: Path):
    teacher = write_convnet_teacher(tmp_path / "teacher5.pt", num_classes=5)
    config = _config(tmp_path / "out", distillation_type="hard", teacher_path=teacher)
    with pytest.raises(ConfigError, match=r"teacher: .*returns logits of shape \(64, 5\).*10 classes"):
        train_module.main(config)


def test_finetune_weights_of_another_model_say_how_to_build_theirs(train_module, reference_run: Path, tmp_path: Path):
    config = _config(tmp_path, finetune=list_checkpoints(reference_run)[-1], depth=3)
    with pytest.raises(ConfigError, match="finetune: .*depth: 2 vs 3.*or leave out --model and the architecture flags"):
        train_module.main(config)


def test_resume_with_another_global_batch_is_refused(train_module, reference_run: Path, tmp_path: Path):
    # Before: step 46 of 64-image batches went on as step 46 of 32-image ones, on a cosine schedule over other steps.
    config = _config(tmp_path, resume=list_checkpoints(reference_run)[-1], batch_size=32, epochs=3)
    expected = r"global batches of 64 images \(batch_size 64 x 1 process\(es\)\); this run's are 32 \(32 x 1\)"
    with pytest.raises(ConfigError, match=expected + r".*resume with --batch-size 64 on 1 process"):
        train_module.main(config)
    assert not list_checkpoints(tmp_path)


def test_eval_only_of_weights_for_other_classes_says_what_to_do_here(train_module, reference_run, tmp_path: Path):
    # Before: only the Python API's advice ("pass drop_head=True ... or num_classes"), which train.py has no flag for.
    photos = photo_image_folder(tmp_path / "photos")
    config = _config(tmp_path / "out", eval_only="true", finetune=list_checkpoints(reference_run)[-1], data=photos)
    with pytest.raises(ConfigError, match="finetune: .*10.*3.*--eval-only scores the weights' own head"):
        train_module.main(config)


def test_bad_data_folder(train_module, tmp_path: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises((ConfigError, FileNotFoundError), match="empty"):
        train_module.main(_config(tmp_path / "out", data=tmp_path / "empty"))


def test_command_line_errors_are_one_line(tmp_path: Path):
    proc = run_train(["--data", str(tmp_path / "nowhere"), "--output-dir", str(tmp_path)])
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith("train.py: error: data: ")
    assert "Traceback" not in proc.stderr
    assert not os.listdir(tmp_path)


# --- a user's run on an ImageFolder of photos: no architecture flags afterwards -----------------------------------


@pytest.fixture(scope="module")
def photo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """(run folder, ImageFolder, the run's process): one epoch of 3 steps on 24 photos, without --progress (this
    process's stderr is a pipe, not a terminal)."""
    root = tmp_path_factory.mktemp("photo_run")
    data = photo_image_folder(root / "photos")
    args = tiny_args(data=data, output_dir=root / "run", epochs=1, batch_size=8, progress=None, lr=None)
    proc = _ok(run_train(args))
    return root / "run", data, proc


def test_run_on_photos_carries_its_class_names_and_draws_no_bar_in_a_pipe(photo_run):
    run, _, proc = photo_run
    assert "epoch 1/1:" not in proc.stderr and "it/s" not in proc.stderr  # no progress bar redraws in a log
    assert "epoch 1/1 | step 3 |" in proc.stdout
    state = final_state(run)
    assert state["class_names"] == state["model_config"]["class_names"] == list(PHOTO_CLASSES)  # the model's own


def test_short_run_warnings_name_the_numbers(photo_run):
    """3 steps with TINY's recipe and DeiT's lr: its warmup, EMA and scaled lr are all wrong for so short a run."""
    stderr = photo_run[2].stderr
    assert "warning: warmup 0.5 epochs = 2 steps of the run's 3" in stderr
    assert "warning: EMA decay 0.9 averages over ~10 steps, the run has 3" in stderr
    assert "warning: lr 0.0005 x global batch 8 / 512 = 7.81e-06" in stderr


def test_eval_only_of_a_run_folder_needs_no_architecture_flags(photo_run, tmp_path: Path):
    run, data, _ = photo_run
    proc = _ok(run_train(["--eval-only", "--resume", str(run), "--data", str(data), "--output-dir", str(tmp_path)]))
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = read_metrics(run, kind="epoch")[-1]
    assert results["val_top1"] == pytest.approx(expected["val_top1"]) and results["val_count"] == 6
    assert results["ema_top1"] == pytest.approx(expected["ema_top1"])
    assert "3 classes (cat, coffee, rocket)" in proc.stdout


def test_eval_only_refuses_flags_that_contradict_the_checkpoint(photo_run, tmp_path: Path):
    run, data, _ = photo_run
    proc = run_train(["--eval-only", "--resume", str(run), "--data", str(data), "--depth", "4"])
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("train.py: error: depth: 4 given, but ") and "records 2" in error


def test_eval_only_on_other_class_names_fails_with_both_lists(photo_run, tmp_path: Path):
    """The same photos with the cat folder named "zebra": labels 0, 1, 2 now mean coffee, rocket, zebra."""
    run, data, _ = photo_run
    other = Path(shutil.copytree(data, tmp_path / "photos"))
    for split in ("train", "val"):
        (other / split / "cat").rename(other / split / "zebra")
    args = ["--eval-only", "--resume", str(run), "--data", str(other), "--output-dir", str(tmp_path / "out")]
    proc = run_train(args)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "resume: the checkpoint's classes are not the dataset's" in proc.stderr
    assert "class 0: checkpoint 'cat', dataset 'coffee'" in proc.stderr
    assert "checkpoint (3): ['cat', 'coffee', 'rocket']" in proc.stderr
    assert "dataset (3): ['coffee', 'rocket', 'zebra']" in proc.stderr
    allowed = _ok(run_train(args + ["--allow-class-mismatch"]))
    assert "warning: the checkpoint's classes are not the dataset's" in allowed.stderr
    assert "val_top1" in allowed.stdout.strip().splitlines()[-1]


def test_teacher_of_other_class_names(train_module, tmp_path: Path):
    """A teacher trained on the digits in another order (same count) would teach wrong labels: refused."""
    teacher = write_convnet_teacher(tmp_path / "teacher.pt", class_names=[str(i) for i in reversed(range(10))])
    config = _config(tmp_path / "out", distillation_type="hard", teacher_path=teacher, epochs=2)
    with pytest.raises(ConfigError, match=r"(?s)teacher: the teacher's classes are not the dataset's.*class 0: "
                       r"teacher '9', dataset '0'"):  # fmt: skip
        train_module.main(config)
    assert not list_checkpoints(tmp_path / "out")
