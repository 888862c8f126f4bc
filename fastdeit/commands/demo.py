"""`fastdeit demo`: the paper's central experiment in miniature, on a CPU in a few minutes.

    fastdeit demo                            teacher + 3 students x 2 seeds on digits, then the accuracy table
    fastdeit demo --epochs 5 --seeds 3       shorter, one other seed

1. trains a small convnet teacher on scikit-learn's digits (train/configs/digits_teacher.yaml);
2. trains the same tiny DeiT (with a distillation token) three times per seed, same recipe
   (train/configs/digits_student.yaml): without distillation, with soft and with hard distillation;
3. prints the val accuracy of each, averaged over the seeds (a single seed is too noisy on 300 images).

Each run is `python train/train.py ...` in its own process: the demo runs exactly the commands it prints,
which a user can rerun or change. train/ is a script folder, not part of the installed package, so the
demo needs a source checkout (`pip install -e .`, as `make demo` does).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import fastdeit
from fastdeit.commands import add_command

STUDENT_RUNS = ("none", "soft", "hard")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(subparsers, "demo", __doc__)
    p.add_argument("--output-dir", type=Path, default=Path("runs/demo"), help="where the runs go (default runs/demo)")
    p.add_argument("--epochs", type=int, help="epochs of every run (default: the configs', 15)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="student seeds (default 0 1)")
    p.add_argument("--train-script", type=Path, help="train.py to run (default: train/train.py of this checkout)")
    p.set_defaults(func=run)


def find_train_script(explicit: Path | None = None) -> Path:
    """train/train.py of the source checkout fastdeit is installed from (editable install)."""
    script = explicit or Path(fastdeit.__file__).resolve().parent.parent / "train" / "train.py"
    if not script.is_file():
        raise FileNotFoundError(
            f"train script not found at {str(script)!r}: `fastdeit demo` runs train/train.py from a source checkout "
            "(pip install -e . in the repository, as `make demo` does), or pass --train-script"
        )
    return script


def _run(name: str, cmd: list[str], log_file: Path) -> float:
    """Run `cmd`, echoing its lines prefixed with `name` and keeping them in `log_file`; returns seconds."""
    print(f"\n[{name}] $ {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with (
        open(log_file, "w") as log,
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as proc,
    ):
        for line in proc.stdout:
            log.write(line)
            print(f"[{name}] {line.rstrip()}", flush=True)
    if proc.returncode != 0:
        raise RuntimeError(f"the {name} run failed (exit code {proc.returncode}); its full output: {log_file}")
    return time.perf_counter() - start


def _final_epoch(output_dir: Path) -> dict:
    from fastdeit.training import read_metrics

    epochs = read_metrics(output_dir, kind="epoch")
    if not epochs or "val_top1" not in epochs[-1]:
        raise RuntimeError(f"{output_dir}/metrics.jsonl has no final evaluation")
    return epochs[-1]


def run(args: argparse.Namespace) -> int:
    script = find_train_script(args.train_script)
    configs = script.parent / "configs"
    out: Path = args.output_dir
    py = [sys.executable, str(script)]
    epochs = ["--epochs", str(args.epochs)] if args.epochs else []
    start = time.perf_counter()

    teacher_dir = out / "teacher"
    teacher_cmd = py + ["--config", str(configs / "digits_teacher.yaml"), "--output-dir", str(teacher_dir)] + epochs
    teacher_time = _run("teacher", teacher_cmd, out / "teacher.log")
    results: dict[str, list[dict]] = {kind: [] for kind in STUDENT_RUNS}
    times = dict.fromkeys(STUDENT_RUNS, 0.0)
    for seed in args.seeds:
        for kind in STUDENT_RUNS:
            run_dir = out / f"student_{kind}_seed{seed}"
            student = ["--config", str(configs / "digits_student.yaml"), "--output-dir", str(run_dir)]
            cmd = py + student + ["--distillation-type", kind, "--seed", str(seed)] + epochs
            if kind != "none":
                cmd += ["--teacher-path", str(teacher_dir)]
            times[kind] += _run(f"{kind} seed {seed}", cmd, out / f"student_{kind}_seed{seed}.log")
            results[kind].append(_final_epoch(run_dir))

    teacher = _final_epoch(teacher_dir)
    rows = [("teacher: convnet_tiny", "labels", [teacher], teacher_time)]
    labels = {"none": "labels", "soft": "labels + teacher's softmax", "hard": "labels + teacher's argmax"}
    rows += [(f"DeiT student, {kind} distillation", labels[kind], results[kind], times[kind]) for kind in STUDENT_RUNS]
    print("\n" + _table(rows, args.seeds))
    print(
        f"\nval top-1: percent of the {int(teacher['val_count'])} held-out digits whose true class is the model's "
        "first guess, after the last epoch (final weights, no EMA); mean over the seeds, each seed's in brackets. "
        "The students share the architecture (a 4-block DeiT with a distillation token), recipe and, per seed, "
        "initial weights and data order; only the loss differs. One image is 0.33 points and seeds differ by a few "
        "points: read differences smaller than that as noise. The paper's claim, at ImageNet scale over 300 epochs, "
        "is that a convnet teacher helps the transformer and that hard distillation helps most."
    )
    print(f"runs, logs and metrics.jsonl in {out}/; total {time.perf_counter() - start:.0f} s")
    return 0


def _table(rows: list[tuple[str, str, list[dict], float]], seeds: list[int]) -> str:
    header = ("model", "trained on", "val top-1", "val top-5", "time")
    body = []
    for name, trained_on, finals, secs in rows:
        top1 = [m["val_top1"] for m in finals]
        mean1 = sum(top1) / len(top1)
        per_seed = f" ({' / '.join(f'{v:.1f}' for v in top1)})" if len(top1) > 1 else ""
        mean5 = sum(m["val_top5"] for m in finals) / len(finals)
        body.append((name, trained_on, f"{mean1:.1f}%{per_seed}", f"{mean5:.1f}%", f"{secs:.0f} s"))
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:  # text columns left-aligned, numbers right-aligned
        padded = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return "  ".join(padded)

    seeds_note = f"students: seeds {', '.join(map(str, seeds))}"
    return "\n".join([seeds_note, line(header), "  ".join("-" * w for w in widths), *map(line, body)])
