"""`fastdeit export`: a DeiT model to ONNX, TorchScript or a torch.export ExportedProgram, verified.

    fastdeit export --model deit_small_patch16_224 --checkpoint deit_small.pth --format onnx --out deit_small.onnx
    fastdeit export --model my_finetuned/ --format exported-program --out model.pt2
    fastdeit export --model deit_tiny_patch16_224 --checkpoint w.pth --format torchscript --out model.ts

The export uses the plain PyTorch backend: the fused Triton kernels are not exportable (the exported model
computes the same function with PyTorch's ops). It is fp32, takes preprocessed images (B, 3, H, W) at the model's
size with a dynamic batch B, and returns logits (B, num_classes). The written file is run on a fresh batch and
compared with the eager model: the max abs difference is printed, and the command fails (exit 1, no file written)
above --atol. ONNX: the torch.export-based exporter when onnxscript is installed, else the TorchScript-based one;
verified with onnxruntime when installed. See fastdeit.export.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fastdeit.commands import add_command
from fastdeit.commands.predict import add_model_arguments, has_weights, model_errors_in_flags


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from fastdeit.export import DEFAULT_ATOL, FORMATS, ONNX_EXPORTERS

    p = add_command(subparsers, "export", __doc__)
    add_model_arguments(p)
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", type=Path, required=True, help="file to write")
    p.add_argument(
        "--atol", type=float, default=DEFAULT_ATOL, help=f"largest accepted abs diff (default {DEFAULT_ATOL})"
    )
    p.add_argument(
        "--onnx-exporter",
        default="auto",
        choices=ONNX_EXPORTERS,
        help="auto: torch.export-based if onnxscript is there",
    )
    p.add_argument("--opset", type=int, help="ONNX opset (default 18 torch.export-based, 17 TorchScript-based)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fastdeit.export import ExportVerificationError, export_model
    from fastdeit.models import VisionTransformer, load_model

    with model_errors_in_flags(args):
        model = load_model(
            args.model,
            checkpoint=args.checkpoint,
            num_classes=args.num_classes,
            img_size=args.img_size,
            backend="torch",
            use_ema=args.ema,
        )
    if not isinstance(model, VisionTransformer):
        raise ValueError(f"fastdeit export exports DeiT models; --model {args.model} is {model.config.describe()}")
    if not has_weights(args):
        print("fastdeit export: note: no --checkpoint: exporting random weights", file=sys.stderr)
    try:
        result = export_model(
            model, args.out, args.format, atol=args.atol, onnx_exporter=args.onnx_exporter, opset=args.opset
        )
    except ExportVerificationError as e:
        print(f"fastdeit export: error: {e}", file=sys.stderr)
        return 1
    print(result.summary())
    return 0
