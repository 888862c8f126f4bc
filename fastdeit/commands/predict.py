"""`fastdeit predict`: the top-k ImageNet (or --labels) classes of image files and folders.

    fastdeit predict --model deit_small_patch16_224 --checkpoint deit_small.pth photos/ extra.jpg
    fastdeit predict --model my_finetuned/ --labels classes.txt --topk 3 --out results.jsonl photos/
    fastdeit predict --model deit_base_patch16_224 --checkpoint w.pth --out results.csv --batch-size 256 imgs/

--model is a model name (`fastdeit.list_models()`) or a saved model: a `fastdeit.save_pretrained` or Hugging Face
folder, a training checkpoint or a run folder (its newest checkpoint), with its class names. Folders of images are
read recursively. Files are decoded by DALI (on the GPU when there is one) with DeiT's eval transform; PIL only
where DALI is missing. Unreadable files, and images in other formats (GIF, HEIC, ...), are named and skipped.
Without --topk, the 5 most probable classes (all classes of a model with fewer). Without --out, results go to
stdout; the summary (images/s, time waiting for decoding vs in the model, skipped files) goes to stderr, and so does
a progress bar when stderr is a terminal (--progress / --no-progress to choose). See fastdeit.inference.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from fastdeit._env import show_progress
from fastdeit.commands import add_command
from fastdeit.io import atomic_write

if TYPE_CHECKING:  # imported when the command runs: `fastdeit predict --help` stays quick
    from fastdeit.inference import Predictions, Predictor

OUT_FORMATS = {".jsonl": "jsonl", ".csv": "csv"}


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """--model, --checkpoint, --num-classes, --ema, --img-size (see fastdeit.models.load_model)."""
    p.add_argument(
        "--model",
        required=True,
        help="model name (see fastdeit.list_models()), or a saved model: save_pretrained or Hugging Face folder, "
        "training checkpoint or run folder (its architecture and class names are read from it)",
    )
    p.add_argument("--checkpoint", help="weights: timm/official DeiT .pth, Hugging Face, safetensors, fastdeit")
    p.add_argument("--num-classes", type=int, help="classes of the checkpoint's head (default 1000 for a model name)")
    p.add_argument("--ema", action="store_true", help="load the EMA weights of a fastdeit training checkpoint")
    p.add_argument("--img-size", type=int, help="build the model at this input size (position embedding resampled)")


def add_runtime_arguments(p: argparse.ArgumentParser) -> None:
    """How the model runs and images are decoded: what `predictor_from_args` reads."""
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    p.add_argument(
        "--dtype", default="auto", choices=("auto", "bf16", "fp16", "fp32"), help="default: bf16 on CUDA, fp32 on CPU"
    )
    p.add_argument(
        "--batch-size", default="auto", type=_batch_size, help="number, or auto: the largest that fits (probed, cached)"
    )
    p.add_argument("--no-cuda-graphs", action="store_true", help="run the forward eagerly instead of graph replays")
    p.add_argument("--decoder", default="auto", choices=("auto", "dali", "pil"), help="default: DALI if installed")
    p.add_argument("--num-threads", type=int, help="decoding threads (default: CPU count, at most 8)")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        help="a progress bar on stderr (default: only when stderr is a terminal)",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files and folders (read recursively)")


def _batch_size(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number, got {value!r}") from None


def has_weights(args: argparse.Namespace) -> bool:
    """Whether the model gets trained weights: a checkpoint, or a saved model (folder or file)."""
    return args.checkpoint is not None or Path(args.model).expanduser().exists()


@contextlib.contextmanager
def model_errors_in_flags(args: argparse.Namespace) -> Iterator[None]:
    """Errors from building the model, with their remedy in command-line flags rather than Python arguments."""
    from fastdeit.models.build import ArchitectureMismatch

    try:
        yield
    except ArchitectureMismatch as e:
        # The library's hint (leave out the name) would leave --model out, which the command requires.
        raise ValueError(
            f"{e.mismatch}; to build the model the checkpoint records, give it as --model: --model {args.checkpoint} "
            "(without --checkpoint)"
        ) from None


def predictor_from_args(args: argparse.Namespace, labels: str | None = None) -> Predictor:
    """The Predictor the command-line arguments describe (builds the model and loads the weights)."""
    from fastdeit.inference import Predictor

    with model_errors_in_flags(args):
        return Predictor(
            args.model,
            checkpoint=args.checkpoint,
            num_classes=args.num_classes,
            labels=labels,
            device=args.device,
            dtype=args.dtype,
            batch_size=args.batch_size,
            cuda_graphs=not args.no_cuda_graphs,
            decoder=args.decoder,
            num_threads=args.num_threads,
            use_ema=args.ema,
            img_size=args.img_size,
        )


def run_reporting_warnings(body: Callable[[], tuple[int, str]]) -> int:
    """Run `body`, which returns (exit code, summary); show the warnings it raised (skipped files, the PIL fallback)
    when it is done, then print the summary on stderr: after the progress bar rather than through it."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            code, summary = body()
    finally:
        for w in caught:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    print(summary, file=sys.stderr)
    return code


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(subparsers, "predict", __doc__)
    add_model_arguments(p)
    p.add_argument("--topk", type=int, help="classes per image (default 5, or all of a model with fewer classes)")
    p.add_argument("--labels", help="class names, one per line (default: ImageNet-1k's for a 1000-class head)")
    p.add_argument("--out", type=Path, help="write results to FILE.jsonl or FILE.csv instead of stdout")
    add_runtime_arguments(p)
    p.set_defaults(func=run)


def out_format(path: Path | None, formats: dict[str, str]) -> str | None:
    """The output format named by `path`'s extension; ValueError for another extension."""
    if path is None:
        return None
    if path.suffix.lower() not in formats:
        raise ValueError(f"--out must end with {' or '.join(formats)}, got {str(path)!r}")
    return formats[path.suffix.lower()]


def _write_jsonl(preds: Predictions, path: Path) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            for p in preds:
                row = {"path": p.source, "classes": list(p.indices), "probs": [round(v, 6) for v in p.probs]}
                if p.labels is not None:
                    row["labels"] = list(p.labels)
                f.write(json.dumps(row, ensure_ascii=False) + "\n")

    atomic_write(path, write)


def _write_csv(preds: Predictions, path: Path) -> None:
    """One row per image: path, then class_i, [label_i,] prob_i for i = 1..topk."""
    named = preds.label_names is not None
    topk = preds.indices.shape[1]

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            out = csv.writer(f)
            header = ["path"]
            for i in range(1, topk + 1):
                header += [f"class_{i}", f"label_{i}", f"prob_{i}"] if named else [f"class_{i}", f"prob_{i}"]
            out.writerow(header)
            for p in preds:
                row: list[object] = [p.source]
                for i in range(topk):
                    row += [p.indices[i], p.labels[i]] if named else [p.indices[i]]
                    row.append(f"{p.probs[i]:.6f}")
                out.writerow(row)

    atomic_write(path, write)


def _print_results(preds: Predictions) -> None:
    for p in preds:
        names = p.labels if p.labels is not None else [f"class {i}" for i in p.indices]
        print(f"{p.source}: " + ", ".join(f"{name} {prob:.4f}" for name, prob in zip(names, p.probs, strict=True)))


def run(args: argparse.Namespace) -> int:
    def body() -> tuple[int, str]:
        from fastdeit.inference import collect_images

        # Whatever a user can get wrong fails before any image is decoded; what needs no model, before it loads.
        fmt = out_format(args.out, OUT_FORMATS)
        files = collect_images(args.paths)
        if args.labels is not None and not Path(args.labels).expanduser().is_file():
            raise FileNotFoundError(f"labels file {args.labels!r} not found")
        predictor = predictor_from_args(args, labels=args.labels)
        if predictor.num_classes == 0:
            raise ValueError("the model has no classifier head (num_classes=0); use fastdeit embed")
        # Without --topk, Predictor.predict's default: 5, or all classes of a model with fewer.
        if args.topk is not None and not 1 <= args.topk <= predictor.num_classes:
            raise ValueError(f"--topk must be in [1, {predictor.num_classes}] (the model's classes), got {args.topk}")
        if not has_weights(args):
            print("fastdeit predict: note: no --checkpoint: the model has random weights", file=sys.stderr)
        preds = predictor.predict(files, topk=args.topk, progress=show_progress(args.progress))
        if fmt == "jsonl":
            _write_jsonl(preds, args.out)
        elif fmt == "csv":
            _write_csv(preds, args.out)
        else:
            _print_results(preds)
        summary = preds.report.summary()
        if args.out is not None:
            summary += f"\nwrote {len(preds)} predictions to {args.out}"
        if len(preds) == 0:
            return 1, f"{summary}\nfastdeit predict: error: none of the files could be read"
        return 0, summary

    return run_reporting_warnings(body)
