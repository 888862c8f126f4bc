"""The teacher cache: its batch key field by field, its files (atomic chunks, holes, strays), its refusals, and train.py
runs on digits that replay it, bit-identical to the live teacher (one process and two under torchrun, with resume)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from fastdeit.models.checkpoint import CheckpointWarning
from fastdeit.training import ConfigError, list_checkpoints, parse_config
from fastdeit.training.checkpoints import checkpoint_name
from fastdeit.training.distributed import DistEnv
from fastdeit.training.teacher_cache import (
    MANIFEST,
    TeacherCache,
    TeacherSource,
    batch_key,
    chunk_name,
    teacher_identity,
)
from tests.train.helpers import final_state, load_train_module, run_train, tiny_args, write_convnet_teacher

# --- the batch key ------------------------------------------------------------------------------------------------


@pytest.fixture
def image_files(tmp_path: Path) -> tuple[list[str], Path]:
    root = tmp_path / "train"
    files = []
    for i in range(4):
        path = root / str(i % 2) / f"{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\xff\xd8\xff" + bytes(10 + i))
        files.append(str(path))
    return files, root


KEY_ARGS = dict(backend="dali", world_size=1, device=torch.device("cpu"), amp="none", num_classes=10)


def _key(files, root, overrides: dict | None = None, **kwargs):
    config = parse_config(tiny_args(output_dir="unused", **(overrides or {})))
    return batch_key(config, files=files, root=root, **{**KEY_ARGS, **kwargs})


def _changed(a: dict, b: dict) -> set[str]:
    return {k for k in a if a[k] != b[k]}


# Each config change that alters the images the teacher sees, and the key field it must show up in.
BATCH_CHANGES = [
    ({"seed": 1}, "seed"),
    ({"img_size": 32}, "img_size"),
    ({"batch_size": 32}, "batch_size"),
    ({"rand_augment": "rand-m7-mstd0.5-inc1"}, "rand_augment"),
    ({"rand_augment": "none"}, "rand_augment"),
    ({"crop_scale": "0.35,1.0"}, "crop_scale"),
    ({"hflip": 0.0}, "hflip"),
    ({"mixup": 0.5}, "mixup"),
    ({"cutmix": 0.0}, "mixup"),
    ({"mixup_prob": 0.5}, "mixup"),
    ({"mixup_switch_prob": 0.3}, "mixup"),
    ({"reprob": 0.0}, "reprob"),
]
# Changes that only alter the student (or the targets): the cache must stay usable.
STUDENT_CHANGES = [
    {"lr": 0.5},
    {"drop_path": 0.0},
    {"smoothing": 0.2},
    {"epochs": 7},
    {"model_ema_decay": 0.5},
    {"distillation_alpha": 0.9},
    {"distillation_tau": 3.0},
    {"data_threads": 1},
    {"depth": 3},
    {"warmup_epochs": 2},
    {"rand_augment": "rand-mstd0.5-inc1-m9"},  # another spelling of the same policy
    {"repeated_aug": 1},  # applied under DDP only: one process reads the same batches
]


@pytest.mark.parametrize(("overrides", "field"), BATCH_CHANGES)
def test_batch_key_changes_with_what_changes_the_batches(image_files, overrides, field):
    files, root = image_files
    assert _changed(_key(files, root), _key(files, root, overrides)) == {field}


@pytest.mark.parametrize("overrides", STUDENT_CHANGES)
def test_batch_key_ignores_what_only_changes_the_student(image_files, overrides):
    files, root = image_files
    assert _key(files, root) == _key(files, root, overrides)


def test_batch_key_run_fields_and_files(image_files, tmp_path: Path):
    files, root = image_files
    base = _key(files, root)
    for kwargs, field in [
        ({"backend": "pil"}, "data_backend"),
        ({"device": torch.device("cuda", 1)}, "device"),
        ({"amp": "bf16"}, "teacher_amp"),
        ({"num_classes": 5}, "num_classes"),
    ]:
        assert _changed(base, _key(files, root, **kwargs)) == {field}
    # world size: the shards change, and under DDP repeated augmentation applies (3 by default)
    assert _changed(base, _key(files, root, world_size=2)) == {"world_size", "repeated_aug"}
    assert _changed(_key(files, root, world_size=2), _key(files, root, {"repeated_aug": 2}, world_size=2)) == {
        "repeated_aug"
    }
    # mixup off: its settings no longer matter
    off = {"mixup": 0, "cutmix": 0}
    assert _key(files, root, off)["mixup"] == "off" == _key(files, root, {**off, "mixup_prob": 0.3})["mixup"]
    # the file list: one file more, one file of another size, a file renamed; a copy elsewhere is the same data
    assert _changed(base, _key(files[:-1], root)) == {"data_files"}
    Path(files[0]).write_bytes(Path(files[0]).read_bytes() + b"\x00")
    assert _changed(base, _key(files, root)) == {"data_files"}
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    moved = [str(copy / Path(f).relative_to(root)) for f in files]
    assert _key(files, root) == _key(moved, copy)
    renamed = moved[:-1] + [moved[-1].replace("3.jpg", "3b.jpg")]
    Path(moved[-1]).rename(renamed[-1])
    assert _changed(_key(moved[:-1] + [renamed[-1]], copy), _key(files, root)) == {"data_files"}


# --- the files ----------------------------------------------------------------------------------------------------

B, C = 4, 10
TEACHER = {"file": "t.pt", "sha256": "ab" * 32, "teacher_model": ""}


def _cache(directory: Path, key: dict, **kwargs) -> TeacherCache:
    args = dict(rank=0, steps_per_epoch=6, batch_size=B, topk=0, teacher=TEACHER)
    return TeacherCache(directory, key, **{**args, **kwargs})


def _logits(epoch: int, step: int) -> torch.Tensor:
    return torch.randn(B, C, generator=torch.Generator().manual_seed(100 * epoch + step))


@pytest.fixture
def key(image_files) -> dict:
    return _key(*image_files)


def test_record_flush_lookup_round_trip(tmp_path: Path, key: dict):
    cache = _cache(tmp_path / "c", key, topk=3, tau=2.0)
    recorded = {}
    for epoch, step in [(0, 0), (0, 1), (0, 2), (0, 4), (1, 0)]:  # a hole at (0, 3): two chunks for epoch 0
        recorded[(epoch, step)] = cache.record(epoch, step, _logits(epoch, step), "teacher X")
        expected = _logits(epoch, step)
        assert torch.equal(recorded[(epoch, step)].labels, expected.argmax(1))
        assert torch.equal(recorded[(epoch, step)].topk_values, expected.topk(3).values.half().float())
        tail = 1 - torch.softmax(expected / 2.0, 1).topk(3).values.sum(1)  # at the cache's tau
        torch.testing.assert_close(recorded[(epoch, step)].topk_tail_logmass, tail.log())
    assert not (tmp_path / "c").exists()  # nothing is written before a flush
    written = cache.flush()
    assert [p.name for p in written] == [
        chunk_name(0, 0, 0, 3),
        chunk_name(0, 0, 4, 1),
        chunk_name(1, 0, 0, 1),
    ]
    assert cache.flush() == []
    manifest = json.loads((tmp_path / "c" / MANIFEST).read_text())
    assert manifest["batches"] == key and manifest["contents"]["topk"] == 3 and manifest["contents"]["tau"] == 2.0
    assert manifest["teacher"]["description"] == "teacher X" and manifest["teacher"]["sha256"] == TEACHER["sha256"]
    assert (tmp_path / "c" / chunk_name(0, 0, 0, 3)).stat().st_size < 3 * B * (2 + 3 * 4 + 4) + 500

    # A new process (a hard run, no teacher): what it reads back is what the recording run used.
    replay = _cache(tmp_path / "c", key, teacher=None)
    assert (replay.topk, replay.tau) == (3, 2.0)  # taken from the manifest
    assert replay.missing(0, 0, 2) == [(0, 3), (0, 5)] + [(1, s) for s in range(1, 6)]
    assert replay.missing(0, 4, 1) == [(0, 5)]
    for (epoch, step), out in recorded.items():
        got = replay.lookup(epoch, step)
        for name in ("labels", "topk_values", "topk_indices", "topk_tail_logmass"):
            assert torch.equal(getattr(got, name), getattr(out, name)), name
    assert replay.lookup(0, 3) is None and replay.lookup(1, 5) is None
    # A soft run needs the temperature the tail masses were recorded at; a hard one does not care.
    with pytest.raises(
        ConfigError, match="distillation_tau: recorded 2.0, this run 1.0 .*outside its top 3 at tau 2.0"
    ):
        _cache(tmp_path / "c", key, teacher=None, topk=3, tau=1.0, soft=True)
    _cache(tmp_path / "c", key, teacher=None, tau=1.0)
    # Another rank sees none of rank 0's chunks.
    assert _cache(tmp_path / "c", key, teacher=None, rank=1).steps_held() == 0


def test_partial_and_foreign_files_never_pass_for_labels(tmp_path: Path, key: dict):
    directory = tmp_path / "c"
    cache = _cache(directory, key)
    for step in range(6):
        cache.record(0, step, _logits(0, step), "t")
    cache.flush()
    # What a write killed before its rename leaves: a temporary file, ignored.
    (directory / f".{chunk_name(1, 0, 0, 6)}.x1y2.tmp").write_bytes(b"\x00" * 17)
    assert _cache(directory, key, teacher=None).missing(0, 0, 2) == [(1, s) for s in range(6)]
    # A damaged chunk is an error naming it, not labels.
    bad = directory / chunk_name(1, 0, 0, 2)
    bad.write_bytes((directory / chunk_name(0, 0, 0, 6)).read_bytes()[:50])
    with pytest.raises(ConfigError, match=f"chunk .*{bad.name}.* is unreadable.*delete it"):
        _cache(directory, key, teacher=None).lookup(1, 0)
    bad.unlink()
    # A chunk of another cache (another batch key) copied in: refused.
    other_key = {**key, "seed": 9}
    other = _cache(tmp_path / "other", other_key)
    for step in range(2):
        other.record(0, step, _logits(0, step), "t")
    other.flush()
    shutil.copy(tmp_path / "other" / chunk_name(0, 0, 0, 2), directory / chunk_name(1, 0, 0, 2))
    with pytest.raises(ConfigError, match="belongs to another cache"):
        _cache(directory, key, teacher=None).lookup(1, 0)


def test_refusals_name_the_field_and_both_values(tmp_path: Path, key: dict):
    directory = tmp_path / "c"
    with pytest.raises(ConfigError, match="holds no recording .*no --teacher-path"):
        _cache(directory, key, teacher=None)
    cache = _cache(directory, key)
    cache.record(0, 0, _logits(0, 0), "t")
    cache.flush()
    changed = {**key, "seed": 3, "data_backend": "pil"}
    with pytest.raises(ConfigError) as err:
        _cache(directory, changed)
    message = str(err.value)
    assert "seed: recorded 0, this run 3" in message
    assert 'data_backend: recorded "dali", this run "pil" (the DALI and PIL pipelines' in message
    other_teacher = {**TEACHER, "file": "u.pt", "sha256": "cd" * 32}
    with pytest.raises(ConfigError, match=r"outputs of teacher t\.pt \(sha256 abab.*this run's teacher is u\.pt"):
        _cache(directory, key, teacher=other_teacher)
    with pytest.raises(ConfigError, match="teacher_cache_topk: recorded 0, this run 5 .*hard labels only"):
        _cache(directory, key, topk=5)
    with pytest.raises(ConfigError, match="teacher_cache_topk: expected at most the 10 classes, got 11"):
        _cache(directory, key, topk=11)
    with pytest.raises(ConfigError, match="int16, at most 32768 classes"):
        _cache(tmp_path / "big", {**key, "num_classes": 40000})
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="exists and is not a folder"):
        _cache(tmp_path / "file", key)
    (directory / MANIFEST).write_text("{not json")
    with pytest.raises(ConfigError, match="not readable JSON"):
        _cache(directory, key)


def test_teacher_identity_is_the_file_content(tmp_path: Path):
    a = write_convnet_teacher(tmp_path / "run" / checkpoint_name(3))
    b = write_convnet_teacher(tmp_path / "b.pt")
    assert teacher_identity(str(tmp_path / "run"), "")["file"] == str(a)  # a folder: its latest checkpoint
    # ... that can be read, the one load_teacher loads
    (tmp_path / "run" / checkpoint_name(5)).write_bytes(a.read_bytes()[:100])
    with pytest.warns(CheckpointWarning, match="passing over"):
        assert teacher_identity(str(tmp_path / "run"), "")["file"] == str(a)
    assert teacher_identity(str(a), "")["sha256"] != teacher_identity(str(b), "")["sha256"]
    shutil.copy(a, tmp_path / "copy.pt")
    assert teacher_identity(str(a), "")["sha256"] == teacher_identity(str(tmp_path / "copy.pt"), "")["sha256"]


def test_teacher_source_builds_the_teacher_without_touching_the_students_rng(tmp_path: Path, key: dict):
    env = DistEnv(0, 0, 1, torch.device("cpu"))

    def load() -> torch.nn.Module:
        return torch.nn.Linear(3, C)  # random initialisation: draws from torch's generator

    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    lines: list[str] = []
    source = TeacherSource(load, None, env=env, epochs=1, log=lines.append)
    assert torch.equal(torch.rand(3), expected)
    # a teacher that records no class names: said once, its class count alone is checked (load_teacher)
    assert lines == ["teacher: Linear (records no class names: only its class count is checked)"]
    images = torch.randn(B, 3)
    assert torch.equal(source(images, 0, 0).logits, source.live(images))

    cache = _cache(tmp_path / "c", key, steps_per_epoch=2)
    lines.clear()
    torch.manual_seed(0)
    source = TeacherSource(load, cache, env=env, epochs=1, log=lines.append)
    assert source.live is None  # with a cache, the teacher is loaded at the first step, and only if needed
    out = source(images, 0, 0)
    assert torch.equal(torch.rand(3), expected)
    assert torch.equal(out.labels, source.live(images).argmax(1)) and out.logits is None
    assert lines[0].startswith(f"teacher cache {tmp_path / 'c'}: holds 0 of the 2 batch labels")
    source(images, 0, 1)
    source.flush()
    replay = TeacherSource(None, _cache(tmp_path / "c", key, steps_per_epoch=2, teacher=None), env=env, epochs=1)
    assert torch.equal(replay(images, 0, 1).labels, source.live(images).argmax(1)) and replay.live is None
    short = TeacherSource(None, _cache(tmp_path / "c", key, steps_per_epoch=2, teacher=None), env=env, epochs=2)
    with pytest.raises(ConfigError, match=r"lacks 2 of the 4 .*epoch 2, batch 1 of 2, rank 0.*no --teacher-path"):
        short(images, 0, 0)


# --- train.py on digits -------------------------------------------------------------------------------------------

EPOCHS = 2  # 23 steps each: 46 in all, crossing an epoch boundary
SLOW = pytest.mark.slow
# A one-epoch run is short for TINY's warmup: train.py says so (tests/train/test_train.py checks the warnings).
ONE_EPOCH = pytest.mark.filterwarnings("ignore::fastdeit.training.TrainingWarning")


@pytest.fixture(scope="module")
def train_module():
    return load_train_module()


def _args(out: Path, **overrides: object) -> list[str]:
    settings = dict(epochs=EPOCHS, distillation_type="hard", ckpt_interval=10, keep_last=10)
    return tiny_args(output_dir=out, **{**settings, **overrides})


def _assert_same_weights(ours: dict, ref: dict) -> None:
    assert ours["step"] == ref["step"]
    for part in ("model", "model_ema"):
        assert ours[part].keys() == ref[part].keys()
        for name, value in ref[part].items():
            assert torch.equal(ours[part][name], value), f"{part}.{name} differs"


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory, teacher_file: Path, train_module) -> dict[str, Path]:
    """A run with the live teacher (no cache), and the same run recording a cache."""
    tmp = tmp_path_factory.mktemp("recorded")
    train_module.main(parse_config(_args(tmp / "live", teacher_path=teacher_file)))
    train_module.main(parse_config(_args(tmp / "rec", teacher_path=teacher_file, teacher_cache=tmp / "cache")))
    return {"live": tmp / "live", "rec": tmp / "rec", "cache": tmp / "cache"}


@SLOW
def test_recording_changes_nothing_and_replay_is_bit_identical(recorded, train_module, tmp_path: Path, capsys):
    live = final_state(recorded["live"])
    _assert_same_weights(final_state(recorded["rec"]), live)
    chunks = sorted(p.name for p in recorded["cache"].glob("*.safetensors"))
    # flushed with each checkpoint (steps 10, 20, 23 = end of epoch 1, 30, 40, 46): a chunk per stretch
    assert chunks == [
        chunk_name(0, 0, 0, 10),
        chunk_name(0, 0, 10, 10),
        chunk_name(0, 0, 20, 3),
        chunk_name(1, 0, 0, 7),
        chunk_name(1, 0, 7, 10),
        chunk_name(1, 0, 17, 6),
    ]
    capsys.readouterr()
    # No --teacher-path at all: the teacher is never built, and the weights are the live run's, bit for bit.
    train_module.main(parse_config(_args(tmp_path / "replay", teacher_cache=recorded["cache"])))
    out = capsys.readouterr().out
    assert "replays all 46 batch labels of the rest of this run" in out and "teacher: " not in out
    _assert_same_weights(final_state(tmp_path / "replay"), live)


@SLOW
def test_resume_replaying_and_resume_recording(recorded, teacher_file: Path, train_module, tmp_path: Path, capsys):
    live = final_state(recorded["live"])
    # Replaying, resumed from the step-10 checkpoint of the live run.
    out = tmp_path / "resumed_replay"
    out.mkdir()
    shutil.copy(recorded["live"] / checkpoint_name(10), out)
    train_module.main(parse_config(_args(out, teacher_cache=recorded["cache"], resume="auto")))
    assert "replays all 36 batch labels" in capsys.readouterr().out
    _assert_same_weights(final_state(out), live)

    # Recording, killed after its step-20 checkpoint: the cache holds steps 0-19; the resumed run computes and
    # records the rest with the live teacher.
    out, cache = tmp_path / "resumed_record", tmp_path / "cache"
    out.mkdir()
    shutil.copy(recorded["live"] / checkpoint_name(20), out)
    cache.mkdir()
    for name in [MANIFEST, chunk_name(0, 0, 0, 10), chunk_name(0, 0, 10, 10)]:
        shutil.copy(recorded["cache"] / name, cache)
    # Without a teacher, the short cache is refused before the first step.
    short = parse_config(_args(tmp_path / "short", teacher_cache=cache))
    with pytest.raises(ConfigError, match=r"lacks 26 of the 46 .*epoch 1, batch 21 of 23, rank 0"):
        train_module.main(short)
    assert not list_checkpoints(tmp_path / "short")
    capsys.readouterr()
    train_module.main(parse_config(_args(out, teacher_cache=cache, resume="auto", teacher_path=teacher_file)))
    log = capsys.readouterr().out
    assert log.count("the live teacher computes the other 26 and they are recorded") == 1
    _assert_same_weights(final_state(out), live)
    for name in [chunk_name(0, 0, 20, 3), chunk_name(1, 0, 0, 7)]:
        np.testing.assert_array_equal(
            _labels(cache / name), _labels(recorded["cache"] / name), err_msg=f"re-recorded {name} differs"
        )
    # Now complete: a run from scratch replays it all without the teacher.
    train_module.main(parse_config(_args(tmp_path / "again", teacher_cache=cache)))
    _assert_same_weights(final_state(tmp_path / "again"), live)


def _labels(path: Path) -> np.ndarray:
    from safetensors.numpy import load_file

    return load_file(path)["labels"]


@SLOW
def test_mismatched_runs_are_refused_before_training(recorded, teacher_file: Path, train_module, tmp_path: Path):
    cases = [
        ({"data_backend": "dali"}, r'data_backend: recorded "pil", this run "dali"'),  # auto trains with PIL on a CPU
        ({"seed": 1}, "seed: recorded 0, this run 1"),
        ({"reprob": 0.5}, "reprob: recorded 0.25, this run 0.5"),
        ({"teacher_path": write_convnet_teacher(tmp_path / "other.pt")}, "holds the outputs of teacher"),
        ({"distillation_type": "soft", "teacher_cache_topk": 4}, "teacher_cache_topk: recorded 0, this run 4"),
    ]
    for overrides, message in cases:
        out = tmp_path / "out"
        config = parse_config(_args(out, **{"teacher_cache": recorded["cache"], **overrides}))
        with pytest.raises(ConfigError, match=message):
            train_module.main(config)
        assert not list_checkpoints(out), overrides


@SLOW
@ONE_EPOCH
def test_soft_distillation_from_top_k_record_equals_replay(teacher_file: Path, train_module, tmp_path: Path):
    """Soft distillation with a cache renormalises over the top-k logits in every run: the recording run (with the
    live teacher) and the replay (without) end with the same weights."""
    common = dict(distillation_type="soft", teacher_cache=tmp_path / "cache", teacher_cache_topk=3, epochs=1)
    train_module.main(parse_config(_args(tmp_path / "rec", teacher_path=teacher_file, **common)))
    train_module.main(parse_config(_args(tmp_path / "replay", **common)))
    _assert_same_weights(final_state(tmp_path / "replay"), final_state(tmp_path / "rec"))
    # a hard run uses the labels of the same cache
    train_module.main(parse_config(_args(tmp_path / "hard", teacher_cache=tmp_path / "cache", epochs=1)))


@SLOW
@ONE_EPOCH
def test_two_processes_record_and_replay_their_shards(teacher_file: Path, train_module, tmp_path: Path):
    cache = tmp_path / "cache"
    common = tiny_args(
        epochs=1, distillation_type="hard", teacher_cache=cache, repeated_aug=2, rand_augment="none", keep_last=10
    )
    rec = run_train(common + ["--output-dir", str(tmp_path / "rec"), "--teacher-path", str(teacher_file)], nproc=2)
    assert rec.returncode == 0, rec.stdout[-2000:] + rec.stderr[-3000:]
    steps = (1497 // 2) // 64
    assert sorted(p.name for p in cache.glob("*.safetensors")) == [chunk_name(0, r, 0, steps) for r in (0, 1)]
    replay = run_train(common + ["--output-dir", str(tmp_path / "replay")], nproc=2)
    assert replay.returncode == 0, replay.stdout[-2000:] + replay.stderr[-3000:]
    assert f"replays all {2 * steps} batch labels" in replay.stdout
    _assert_same_weights(final_state(tmp_path / "replay"), final_state(tmp_path / "rec"))
    # One process reads other batches: refused, naming the world size (and the repeated augmentation it implies).
    config = parse_config(
        tiny_args(epochs=1, distillation_type="hard", teacher_cache=cache, rand_augment="none", output_dir=tmp_path)
    )
    with pytest.raises(
        ConfigError, match="(?s)repeated_aug: recorded 2, this run 1.*world_size: recorded 2, this run 1"
    ):
        train_module.main(config)


def test_config_errors(teacher_file: Path, tmp_path: Path):
    def config(**overrides):
        return parse_config(tiny_args(output_dir=tmp_path, **overrides))

    config(distillation_type="hard", teacher_cache=tmp_path / "c")  # no teacher: fine with a cache
    with pytest.raises(ConfigError, match="teacher_cache: expected no value without distillation"):
        config(teacher_cache=tmp_path / "c")
    with pytest.raises(ConfigError, match="soft distillation needs --teacher-cache-topk K"):
        config(distillation_type="soft", teacher_cache=tmp_path / "c")
    with pytest.raises(ConfigError, match="teacher_cache_topk: expected 0 without --teacher-cache"):
        config(distillation_type="hard", teacher_path=teacher_file, teacher_cache_topk=5)
    with pytest.raises(ConfigError, match="needs a teacher: --teacher-path .* or --teacher-cache"):
        config(distillation_type="hard")
