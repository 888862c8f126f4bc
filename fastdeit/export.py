"""Exporting a DeiT model to ONNX, TorchScript or a torch.export ExportedProgram, verified against eager PyTorch.

    model = fastdeit.create_model("deit_small_patch16_224", checkpoint="deit_small.pth", backend="torch")
    result = export_model(model, "deit_small.onnx", "onnx")
    print(result.max_abs_diff)

The export goes through the plain PyTorch backend: the fused Triton kernels are not exportable (neither ONNX nor
TorchScript can express them, and an ExportedProgram holding them would need fastdeit and a GPU to run). The model
is exported in fp32 on the CPU with a dynamic batch dimension; its input is `images` (B, 3, H, W) at the model's
image size, already preprocessed (as `fastdeit.data`'s eval transform does), its output `logits` (B, num_classes)
(`features` (B, embed_dim) for a model without head).

Every exported file carries the model's facts (`model_metadata`): class names, image size, mean and std,
crop_pct, interpolation, the full model config and the fastdeit version. ONNX: in the model's `metadata_props`
(onnxruntime: `session.get_modelmeta().custom_metadata_map`); TorchScript and ExportedProgram: in the extra file
"fastdeit.json" (a JSON object). ONNX metadata values are strings: each is JSON text there. `read_metadata(path,
format)` reads them back, decoded.

Every export is verified: the written file is loaded and run on a batch of another size than the one traced, and
its outputs are compared with the eager model's; the largest absolute difference is reported and an export above
the tolerance raises ExportVerificationError. The file is written atomically: a failed export leaves nothing behind.

Formats:
- "onnx": `torch.onnx.export`. With onnxscript installed, the torch.export-based ("dynamo") exporter, PyTorch's
  default since 2.9; without it the TorchScript-based one (deprecated by PyTorch, still shipped by 2.13, which
  needs no extra package). Verified with onnxruntime when it is installed, else only checked with onnx.checker.
- "torchscript": `torch.jit.trace` (TorchScript is deprecated by PyTorch in favour of torch.export; it still loads
  with `torch.jit.load` everywhere, C++ included).
- "exported-program": `torch.export.export` + `torch.export.save` (a .pt2 file; `torch.export.load(f).module()`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from fastdeit._version import __version__
from fastdeit.models import VisionTransformer

FORMATS = ("onnx", "torchscript", "exported-program")
ONNX_EXPORTERS = ("auto", "dynamo", "legacy")
# fp32 outputs of the exported and the eager model differ by kernel choice and operation order only (2e-6 for
# deit_base_distilled through ONNX and onnxruntime); a wrong weight or operator shows as differences of 0.1 and more.
DEFAULT_ATOL = 1e-3
_TRACE_BATCH = 2  # not 1: a batch of 1 would let the exporters specialize the batch dimension
_VERIFY_BATCH = 3  # another size than the traced one, to check that the batch dimension stayed dynamic
METADATA_FILE = "fastdeit.json"  # the extra file of TorchScript and ExportedProgram files holding the metadata


class ExportVerificationError(RuntimeError):
    """The exported file's outputs differ from the eager model's by more than the tolerance."""


@dataclass(frozen=True)
class ExportResult:
    """What `export_model` wrote and how it was checked.

    `exporter` names the exporter used; `verified_with` the runtime that ran the file (None when none was
    available, see `note`); `max_abs_diff` the largest absolute difference from the eager outputs; `metadata` what
    the file records about the model (`model_metadata`).
    """

    path: Path
    format: str
    exporter: str
    verified_with: str | None
    max_abs_diff: float | None
    tolerance: float
    metadata: dict[str, Any]
    note: str = ""

    def summary(self) -> str:
        size = self.path.stat().st_size / 2**20
        names = self.metadata["class_names"]
        height, width = self.metadata["img_size"]
        line = (
            f"exported to {self.path} ({self.format}, {size:.1f} MiB) with {self.exporter}\n"
            f"metadata in the file: {f'{len(names)} class names' if names else 'no class names'}, {height}x{width} "
            f"input, mean {self.metadata['mean']}, std {self.metadata['std']}, the model config"
        )
        if self.verified_with is None:
            return f"{line}\nnot verified: {self.note}"
        return (
            f"{line}\nverified with {self.verified_with} on a batch of {_VERIFY_BATCH}: max abs diff of the outputs "
            f"vs eager PyTorch {self.max_abs_diff:.3g} (tolerance {self.tolerance:g})"
        )


def model_metadata(model: VisionTransformer) -> dict[str, Any]:
    """The facts an exported file records about `model` (plain JSON types): what the input must be (image size,
    mean, std; crop_pct and interpolation of the eval resize), what the outputs mean (class names, None when
    unknown), the full model config and the fastdeit version."""
    c = model.config
    return {
        "fastdeit_version": __version__,
        "architecture": c.name,
        "class_names": list(c.class_names) if c.class_names is not None else None,
        "img_size": list(c.img_size),
        "mean": list(c.mean),
        "std": list(c.std),
        "crop_pct": c.crop_pct,
        "interpolation": c.interpolation,
        "input": "images (B, 3, H, W) float32: RGB scaled to [0, 1], then normalised with mean and std",
        "output": "logits (B, num_classes)" if c.num_classes > 0 else "features (B, embed_dim), pre-logits",
        "model_config": c.to_dict(),
    }


def read_metadata(path: str | os.PathLike, format: Literal["onnx", "torchscript", "exported-program"]) -> dict:
    """The metadata `export_model` wrote into the file at `path`, values decoded from JSON ({} if it has none)."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    path = os.fspath(path)
    if format == "onnx":
        import onnx

        props = {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
        decoded = {}
        for key, value in props.items():
            try:
                decoded[key] = json.loads(value)
            except ValueError:
                decoded[key] = value  # an exporter's own entry, not JSON: kept as written
        return decoded
    files = {METADATA_FILE: ""}
    if format == "torchscript":
        _load_torchscript(path, files)
    else:
        torch.export.load(path, extra_files=files)
    return json.loads(files[METADATA_FILE]) if files[METADATA_FILE] else {}


def _load_torchscript(path: str, extra_files: dict[str, str]) -> torch.jit.ScriptModule:
    """`torch.jit.load`, filling `extra_files` with the file's extra files of those names."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=DeprecationWarning)  # said in the module docstring
        return torch.jit.load(path, _extra_files=extra_files)


def _write_onnx_metadata(path: Path, metadata: dict[str, Any]) -> None:
    import onnx

    model = onnx.load(str(path))
    existing = {p.key: p for p in model.metadata_props}
    for key, value in metadata.items():
        entry = existing[key] if key in existing else model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value, ensure_ascii=False)
    onnx.save(model, str(path))


def onnxscript_available() -> bool:
    """Whether torch.onnx's torch.export-based exporter can run (it needs the onnxscript package)."""
    return importlib.util.find_spec("onnxscript") is not None


def _example(model: VisionTransformer, batch: int) -> torch.Tensor:
    height, width = model.img_size
    generator = torch.Generator().manual_seed(batch)
    return torch.randn(batch, model.patch_embed.in_chans, height, width, generator=generator)


def _export_onnx(
    model: VisionTransformer, x: torch.Tensor, path: Path, output: str, exporter: str, opset: int | None
) -> str:
    if exporter == "auto":
        exporter = "dynamo" if onnxscript_available() else "legacy"
    if exporter == "dynamo":
        if not onnxscript_available():
            raise ValueError("onnx_exporter='dynamo' needs the onnxscript package (pip install onnxscript)")
        opset = opset or 18
        # external_data=False: DeiT-B is 350 MB, far below ONNX's 2 GB limit, and a self-contained file is what
        # gets moved into place (a side file of weights would stay behind in the temporary folder).
        torch.onnx.export(
            model, (x,), str(path), dynamo=True, input_names=["images"], output_names=[output],
            dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=opset, external_data=False,
            verbose=False,
        )  # fmt: skip
        return f"torch.onnx.export (torch.export-based, opset {opset})"
    opset = opset or 17
    with warnings.catch_warnings():
        # The legacy exporter's deprecation notice, and TracerWarnings from the input-size checks of the patch
        # embedding: those are constant for a model of fixed image size, as the trace records them.
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export")
        torch.onnx.export(
            model, (x,), str(path), dynamo=False, input_names=["images"], output_names=[output],
            dynamic_axes={"images": {0: "batch"}, output: {0: "batch"}}, opset_version=opset,
        )  # fmt: skip
    return f"torch.onnx.export (TorchScript-based, opset {opset})"


def _export_torchscript(model: VisionTransformer, x: torch.Tensor, path: Path, extra_files: dict[str, str]) -> str:
    with warnings.catch_warnings():
        # As for ONNX: the shape checks are constant in the trace; and TorchScript is deprecated, as the docs say.
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        torch.jit.save(torch.jit.trace(model, x), str(path), _extra_files=extra_files)
    return "torch.jit.trace"


def _export_program(model: VisionTransformer, x: torch.Tensor, path: Path, extra_files: dict[str, str]) -> str:
    program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(path), extra_files=extra_files)
    return "torch.export.export"


def _runner(fmt: str, path: Path) -> tuple[Callable[[torch.Tensor], torch.Tensor] | None, str | None, str]:
    """A function running the exported file, the runtime's name, and why there is none (if so)."""
    if fmt == "torchscript":
        module = _load_torchscript(str(path), {})
        return module, f"torch.jit.load (torch {torch.__version__})", ""
    if fmt == "exported-program":
        module = torch.export.load(str(path)).module()
        return module, f"torch.export.load (torch {torch.__version__})", ""
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        run = lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])
        return run, f"onnxruntime {onnxruntime.__version__}", ""
    note = "onnxruntime is not installed (pip install onnxruntime)"
    if importlib.util.find_spec("onnx") is not None:
        import onnx

        onnx.checker.check_model(str(path))
        note += "; onnx.checker found the model well-formed"
    return None, None, note


def export_model(
    model: VisionTransformer,
    path: str | os.PathLike,
    format: Literal["onnx", "torchscript", "exported-program"],
    *,
    atol: float = DEFAULT_ATOL,
    onnx_exporter: Literal["auto", "dynamo", "legacy"] = "auto",
    opset: int | None = None,
) -> ExportResult:
    """Export `model` to `path` in `format` and verify the file against the eager model (see the module docstring).

    The file carries the model's facts (`model_metadata`). The model is put in eval mode, fp32, on the CPU, in
    place. `onnx_exporter`: "auto" (torch.export-based when
    onnxscript is installed, else TorchScript-based), "dynamo" or "legacy"; `opset`: ONNX opset (default 18 for
    dynamo, 17 for legacy).

    Raises:
        ValueError: unknown format or exporter, a model on the Triton backend, ONNX without the onnx package (which
            writes the metadata).
        ExportVerificationError: the file's outputs differ from the eager outputs by more than `atol`.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    if onnx_exporter not in ONNX_EXPORTERS:
        raise ValueError(f"onnx_exporter must be one of {', '.join(ONNX_EXPORTERS)}, got {onnx_exporter!r}")
    if not isinstance(model, VisionTransformer):
        raise TypeError(f"export_model expects a fastdeit VisionTransformer, got {type(model).__name__}")
    if model.backend == "triton":
        raise ValueError(
            "the fused Triton kernels cannot be exported; build the model with backend='torch' "
            "(same weights, same outputs up to rounding)"
        )
    if format == "onnx" and importlib.util.find_spec("onnx") is None:
        raise ValueError(
            "ONNX export writes the model's class names and preprocessing into the file with the onnx "
            "package, which is not installed (pip install onnx)"
        )
    metadata = model_metadata(model)
    extra_files = {METADATA_FILE: json.dumps(metadata, ensure_ascii=False)}
    # backend "auto" runs the PyTorch ops on CPU tensors, so it traces like "torch".
    model = model.eval().float().cpu()
    output = "logits" if model.num_classes > 0 else "features"
    path = Path(path)
    x = _example(model, _TRACE_BATCH)
    check = _example(model, _VERIFY_BATCH)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), tempfile.TemporaryDirectory(prefix=".fastdeit-export-", dir=path.parent) as tmp_dir:
        expected = model(check)
        # Written under the final name in a temporary folder (torch.export.save wants the .pt2 suffix), moved into
        # place only once verified: a failed export leaves nothing behind.
        tmp = Path(tmp_dir) / path.name
        if format == "onnx":
            exporter = _export_onnx(model, x, tmp, output, onnx_exporter, opset)
            _write_onnx_metadata(tmp, metadata)
        elif format == "torchscript":
            exporter = _export_torchscript(model, x, tmp, extra_files)
        else:
            exporter = _export_program(model, x, tmp, extra_files)
        run, runtime, note = _runner(format, tmp)
        diff = None
        if run is not None:
            got = run(check)
            if got.shape != expected.shape:
                raise ExportVerificationError(
                    f"the exported {format} model returns shape {tuple(got.shape)} for a batch of {_VERIFY_BATCH}, "
                    f"the eager model {tuple(expected.shape)}"
                )
            diff = (got.float() - expected).abs().max().item()
            if not diff <= atol:  # also catches NaN
                raise ExportVerificationError(
                    f"the exported {format} model's outputs differ from the eager model's by up to {diff:.3g} "
                    f"(tolerance {atol:g}); nothing was written to {str(path)!r}"
                )
        os.replace(tmp, path)
    return ExportResult(path, format, exporter, runtime, diff, atol, metadata, note)
