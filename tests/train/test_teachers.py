"""Teachers from every source load frozen and give the same logits as the model they came from; wrong ones fail
clearly before training."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from fastdeit.models.convnet import create_convnet
from fastdeit.training import TrainingWarning
from fastdeit.training.checkpoints import checkpoint_name
from fastdeit.training.teachers import load_teacher
from tests.train.helpers import write_convnet_teacher

LOAD = dict(num_classes=10, img_size=16, batch_size=4, device="cpu")


def _reference(path: Path) -> torch.nn.Module:
    model = create_convnet("convnet_tiny", num_classes=10)
    model.load_state_dict(torch.load(path, weights_only=True)["model"])
    return model.eval()


def test_from_a_training_checkpoint_and_its_folder(tmp_path: Path):
    path = write_convnet_teacher(tmp_path / checkpoint_name(7))
    x = torch.randn(4, 3, 16, 16)
    for source in (path, tmp_path):  # a folder means its latest checkpoint
        teacher = load_teacher(source, **LOAD)
        assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
        teacher.train()  # DistillationLoss.train() must not wake the teacher up
        assert not teacher.module.training
        torch.testing.assert_close(teacher(x), _reference(path)(x))


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")  # TorchScript files are still a teacher source
def test_teacher_carries_the_class_names_it_records(tmp_path: Path):
    """What the next check (teacher classes vs the dataset's) reads; None where the teacher does not record them."""
    path = write_convnet_teacher(tmp_path / checkpoint_name(3))
    state = torch.load(path, weights_only=True)
    names = [f"digit {i}" for i in range(10)]
    torch.save({**state, "class_names": names}, path)
    assert load_teacher(path, **LOAD).class_names == tuple(names)
    assert load_teacher(path, "convnet_tiny", **LOAD).class_names == tuple(names)
    torch.jit.save(torch.jit.script(_reference(path)), tmp_path / "t_script.pt")
    assert load_teacher(tmp_path / "t_script.pt", **LOAD).class_names is None


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")  # TorchScript files are still a teacher source
def test_class_names_are_checked_against_the_datasets(tmp_path: Path):
    """Same count, other order: the teacher's logit i is another class than the dataset's label i (a student
    distilled from it learns wrong labels), refused with both lists, the differing entries first."""
    names = [f"digit {i}" for i in range(10)]
    path = write_convnet_teacher(tmp_path / "t.pt", class_names=names)
    load_teacher(path, **LOAD, class_names=names)
    other = names[:8] + names[:7:-1]  # the last two swapped
    with pytest.raises(ValueError) as err:
        load_teacher(path, **LOAD, class_names=other)
    lines = str(err.value).splitlines()
    assert lines[0].startswith("the teacher's classes are not the dataset's")
    assert lines[1:3] == [
        "  class 8: teacher 'digit 8', dataset 'digit 9'",
        "  class 9: teacher 'digit 9', dataset 'digit 8'",
    ]
    assert f"  teacher (10): {names}" in lines and f"  dataset (10): {other}" in lines
    assert "--allow-class-mismatch" in lines[-1]
    with pytest.warns(TrainingWarning, match="the teacher's classes are not the dataset's"):
        load_teacher(path, **LOAD, class_names=other, allow_class_mismatch=True)
    # A teacher that records no names (TorchScript, timm weights): its class count alone is checked.
    torch.jit.save(torch.jit.script(_reference(path)), tmp_path / "t_script.pt")
    assert load_teacher(tmp_path / "t_script.pt", **LOAD, class_names=other).class_names is None


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")  # TorchScript files are still a teacher source
def test_from_torchscript_and_torch_export(tmp_path: Path):
    reference = _reference(write_convnet_teacher(tmp_path / "t.pt"))
    torch.jit.save(torch.jit.script(reference), tmp_path / "t_script.pt")
    batch = torch.export.Dim("batch", min=2)
    program = torch.export.export(reference, (torch.randn(4, 3, 16, 16),), dynamic_shapes={"x": {0: batch}})
    torch.export.save(program, tmp_path / "t.pt2")
    x = torch.randn(4, 3, 16, 16)
    for name in ("t_script.pt", "t.pt2"):
        teacher = load_teacher(tmp_path / name, **LOAD)
        torch.testing.assert_close(teacher(x), reference(x))


def test_fastdeit_model_name_with_weights(tmp_path: Path):
    path = write_convnet_teacher(tmp_path / "t.pt")
    teacher = load_teacher(path, "convnet_tiny", **LOAD)
    x = torch.randn(4, 3, 16, 16)
    torch.testing.assert_close(teacher(x), _reference(path)(x))


def test_class_count_mismatch_is_caught_by_a_dummy_forward(tmp_path: Path):
    path = write_convnet_teacher(tmp_path / "t.pt", num_classes=7)
    with pytest.raises(ValueError, match=r"returns logits of shape \(4, 7\).*expected \(4, 10\).*10 classes"):
        load_teacher(path, **LOAD)


def test_missing_and_unusable_files(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="teacher_path not found"):
        load_teacher(tmp_path / "nope.pt", **LOAD)
    with pytest.raises(FileNotFoundError, match=r"nor a training run folder \(no ckpt_<step>.pt\)"):
        load_teacher(tmp_path, **LOAD)
    torch.save(create_convnet("convnet_tiny").state_dict(), tmp_path / "weights.pt")
    with pytest.raises(ValueError, match="without an architecture.*--teacher-model"):
        load_teacher(tmp_path / "weights.pt", **LOAD)


@pytest.mark.skipif(importlib.util.find_spec("timm") is not None, reason="timm is installed")
def test_timm_teacher_without_timm_is_a_clear_error(tmp_path: Path):
    path = write_convnet_teacher(tmp_path / "t.pt")
    with pytest.raises(ImportError, match="timm teachers need timm installed"):
        load_teacher(path, "regnety_160", **LOAD)
