"""fastdeit.export: ONNX (onnxruntime), TorchScript and ExportedProgram round trips with a dynamic batch, the
model's facts (class names, preprocessing, config) carried in every file, the verification, and clear errors."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import fastdeit
import fastdeit.export as export
from fastdeit.export import METADATA_FILE, ExportVerificationError, export_model, read_metadata

CLASSES = tuple(f"kind {i}" for i in range(10))


def tiny_model(num_classes: int = 10, backend: str = "torch") -> fastdeit.VisionTransformer:
    """A 2-block distilled DeiT on 32x32 images (both heads and the distillation token are exported)."""
    torch.manual_seed(0)
    return fastdeit.create_model(
        "deit_tiny_distilled_patch16_224", num_classes=num_classes, img_size=32, patch_size=8, depth=2, embed_dim=64,
        num_heads=2, backend=backend, class_names=CLASSES if num_classes == 10 else None,
    )  # fmt: skip


def check_metadata(metadata: dict, model: fastdeit.VisionTransformer) -> None:
    """The file says what its input must be and what its outputs mean (before: nothing but the graph)."""
    assert metadata["class_names"] == (list(CLASSES) if model.num_classes == 10 else None)
    assert metadata["img_size"] == [32, 32] and metadata["crop_pct"] == model.config.crop_pct
    assert metadata["mean"] == list(model.config.mean) and metadata["std"] == list(model.config.std)
    assert metadata["interpolation"] == "bicubic" and metadata["fastdeit_version"] == fastdeit.__version__
    assert fastdeit.VisionTransformerConfig.from_dict(metadata["model_config"]) == model.config


def eager(model: fastdeit.VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


# fp32 on the CPU: the exported graphs run other kernels in another order, a few ulps of logits ~1.
ATOL = 1e-5


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_onnx_round_trip_with_onnxruntime(tmp_path, exporter):
    ort = pytest.importorskip("onnxruntime")
    if exporter == "dynamo" and not export.onnxscript_available():
        pytest.skip("the torch.export-based ONNX exporter needs onnxscript")
    model = tiny_model()
    reference = copy.deepcopy(model)
    result = export_model(model, tmp_path / "model.onnx", "onnx", onnx_exporter=exporter)
    assert result.verified_with.startswith("onnxruntime") and result.max_abs_diff < ATOL
    assert ("TorchScript-based" in result.exporter) == (exporter == "legacy")
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    # Read by onnxruntime itself: each value is JSON text; read_metadata decodes them.
    custom = session.get_modelmeta().custom_metadata_map
    assert json.loads(custom["class_names"]) == list(CLASSES) and json.loads(custom["img_size"]) == [32, 32]
    metadata = read_metadata(tmp_path / "model.onnx", "onnx")
    check_metadata(metadata, reference)
    assert {key: metadata[key] for key in result.metadata} == result.metadata
    for batch in (1, 5):  # the batch dimension is dynamic
        x = torch.randn(batch, 3, 32, 32)
        (logits,) = session.run(None, {"images": x.numpy()})
        torch.testing.assert_close(torch.from_numpy(logits), eager(reference, x), rtol=0, atol=ATOL)
    assert list(tmp_path.iterdir()) == [tmp_path / "model.onnx"]  # no temporary files left


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_torchscript_round_trip(tmp_path):
    model = tiny_model()
    result = export_model(model, tmp_path / "model.ts", "torchscript")
    assert result.max_abs_diff < ATOL
    extra_files = {METADATA_FILE: ""}
    loaded = torch.jit.load(str(tmp_path / "model.ts"), _extra_files=extra_files)
    check_metadata(json.loads(extra_files[METADATA_FILE]), model)
    assert read_metadata(tmp_path / "model.ts", "torchscript") == result.metadata
    for batch in (1, 4):
        x = torch.randn(batch, 3, 32, 32)
        torch.testing.assert_close(loaded(x), eager(model, x), rtol=0, atol=ATOL)


def test_exported_program_round_trip_headless(tmp_path):
    """A model without head exports its pre-logits features."""
    model = tiny_model(num_classes=0)
    result = export_model(model, tmp_path / "model.pt2", "exported-program")
    assert result.max_abs_diff < ATOL and result.verified_with.startswith("torch.export.load")
    extra_files = {METADATA_FILE: ""}
    loaded = torch.export.load(str(tmp_path / "model.pt2"), extra_files=extra_files).module()
    check_metadata(json.loads(extra_files[METADATA_FILE]), model)
    assert json.loads(extra_files[METADATA_FILE])["output"].startswith("features (B, embed_dim)")
    x = torch.randn(4, 3, 32, 32)
    out = loaded(x)
    assert out.shape == (4, 64)
    torch.testing.assert_close(out, eager(model, x), rtol=0, atol=ATOL)


def test_failed_verification_raises_and_writes_nothing(tmp_path, monkeypatch):
    real_runner = export._runner

    def wrong_runner(fmt, path):
        run, runtime, note = real_runner(fmt, path)
        return (lambda x: run(x) + 0.5), runtime, note

    monkeypatch.setattr(export, "_runner", wrong_runner)
    with pytest.raises(ExportVerificationError, match="differ from the eager model's by up to 0.5"):
        export_model(tiny_model(), tmp_path / "model.ts", "torchscript")
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="format must be one of onnx, torchscript, exported-program"):
        export_model(tiny_model(), tmp_path / "m.tflite", "tflite")
    with pytest.raises(ValueError, match="onnx_exporter"):
        export_model(tiny_model(), tmp_path / "m.onnx", "onnx", onnx_exporter="tf2onnx")
    with pytest.raises(ValueError, match="Triton kernels cannot be exported"):
        export_model(tiny_model(backend="triton"), tmp_path / "m.onnx", "onnx")
    with pytest.raises(TypeError, match="VisionTransformer"):
        export_model(torch.nn.Linear(2, 2), tmp_path / "m.onnx", "onnx")
