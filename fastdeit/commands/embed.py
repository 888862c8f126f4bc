"""`fastdeit embed`: pre-logits features of image files and folders, saved as safetensors.

    fastdeit embed --model deit_small_patch16_224 --checkpoint deit_small.pth --out feats.safetensors photos/

The file holds one tensor, "features" (N, embed_dim) float32: `forward_head(x, pre_logits=True)` as in timm (the
class token after the final norm; for distilled models the mean of the class and distillation tokens). Row i
belongs to the i-th path of the metadata entry "paths" (a JSON list); unreadable files are skipped, so N can be
smaller than the number of files. Read it back with:

    from safetensors import safe_open
    with safe_open("feats.safetensors", "pt") as f:
        features, paths = f.get_tensor("features"), json.loads(f.metadata()["paths"])

Decoding and the GPU path are those of `fastdeit predict` (see `fastdeit predict --help`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fastdeit._env import show_progress
from fastdeit.commands import add_command
from fastdeit.commands.predict import (
    add_model_arguments,
    add_runtime_arguments,
    has_weights,
    out_format,
    predictor_from_args,
    run_reporting_warnings,
)
from fastdeit.io import atomic_write


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(subparsers, "embed", __doc__)
    add_model_arguments(p)
    p.add_argument("--out", type=Path, required=True, help="FILE.safetensors")
    add_runtime_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    def body() -> tuple[int, str]:
        from safetensors.torch import save_file

        from fastdeit.inference import collect_images

        out_format(args.out, {".safetensors": "safetensors"})
        files = collect_images(args.paths)
        predictor = predictor_from_args(args)
        if not has_weights(args):
            print("fastdeit embed: note: no --checkpoint: the model has random weights", file=sys.stderr)
        embeddings = predictor.embed(files, progress=show_progress(args.progress))
        features = embeddings.features.contiguous()
        metadata = {
            "format": "fastdeit-embeddings",
            "model": predictor.model_name,
            "features": "pre_logits",
            "paths": json.dumps(embeddings.sources, ensure_ascii=False),
        }
        atomic_write(args.out, lambda tmp: save_file({"features": features}, str(tmp), metadata=metadata))
        summary = f"{embeddings.report.summary()}\nwrote {tuple(features.shape)} features to {args.out}"
        if len(embeddings) == 0:
            return 1, f"{summary}\nfastdeit embed: error: none of the files could be read"
        return 0, summary

    return run_reporting_warnings(body)
