"""How far soft distillation from a teacher cache's top-k logits is from DeiT's soft distillation, on real teacher
outputs.

    python -m fastdeit.benchmarks.topk_distillation --teacher runs/demo/teacher --data digits --img-size 16
    python -m fastdeit.benchmarks.topk_distillation --teacher random:convnet_small --num-classes 1000 --data digits

A teacher cache recorded with `--teacher-cache-topk K` keeps the teacher's K largest logits in fp16 and the log of
its probability outside them (fp32), and soft distillation spreads that tail mass evenly over the other classes
(fastdeit.losses.topk_soft_kl). For each K and temperature tau, over the images of the data's val split (eval
transform), against `soft_kl` on the full fp32 logits, this prints for that uniform tail ("tail") and for dropping
the tail and renormalising the top K ("renorm", what a cache without the tail mass could do):
- loss error: |top-k loss - full loss| / full loss, the losses summed over all images;
- grad error: ||g_k - g|| / ||g||, g the gradient of the loss with respect to the student's logits, over all images
  (what training feels: the loss value itself never reaches the weights);
- tail mass: the teacher's probability outside its top K at tau, averaged over the images;
- bytes per image: what the cache stores per image and epoch (int16 label + K x (fp16 value + int16 index) + the
  fp32 tail mass).
The student's logits are a fastdeit checkpoint's (`--student`), or all zeros: a student at initialisation, whose
prediction is uniform. `--teacher random:NAME` is a fastdeit convnet with random weights (seed 0) and
`--num-classes` outputs: a 1000-class teacher when no trained one is at hand, far less confident than a trained one.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from fastdeit.losses import soft_kl, topk_soft_kl, topk_tail_logmass

from .common import format_columns


def _teacher(spec: str, num_classes: int, img_size: int) -> tuple[nn.Module, str]:
    if spec.startswith("random:"):
        from fastdeit.models.convnet import create_convnet

        torch.manual_seed(0)
        name = spec.removeprefix("random:")
        return create_convnet(name, num_classes=num_classes).eval(), f"{name}, random weights, {num_classes} classes"
    from fastdeit.training.teachers import load_teacher

    teacher = load_teacher(spec, num_classes=num_classes, img_size=img_size, batch_size=2, device="cpu")
    return teacher, teacher.description


def _batches(data: str, img_size: int, batch_size: int, max_batches: int) -> Iterator[torch.Tensor]:
    from fastdeit.data import PAD_LABEL, LoaderConfig, build_loader

    config = LoaderConfig(img_size=img_size, batch_size=batch_size, backend="pil")
    loader, _ = build_loader(data, split="val", config=config)
    for i, (images, targets) in enumerate(loader):
        if i == max_batches:
            return
        yield images[targets != PAD_LABEL]


def measure(
    teacher_logits: torch.Tensor, student_logits: torch.Tensor, ks: Sequence[int], taus: Sequence[float]
) -> list[dict[str, float]]:
    """One row per (k, tau): loss and grad errors of the uniform tail and of renormalising, tail mass, bytes (see the
    module docstring).

    teacher_logits, student_logits: (N, C), every image of the measurement at once.
    """
    teacher = teacher_logits.double()
    rows = []
    for tau in taus:
        student = student_logits.double().requires_grad_(True)
        full = soft_kl(student, teacher, tau)
        (g_full,) = torch.autograd.grad(full, student)
        probs = torch.softmax(teacher / tau, dim=1)
        for k in ks:
            values, indices = teacher_logits.float().topk(k, dim=1)
            values = values.half().double()  # as the cache stores them
            row = {"k": k, "tau": tau}
            for name, tail in [("tail", topk_tail_logmass(teacher_logits, indices, tau)), ("renorm", None)]:
                approx = topk_soft_kl(student, values, indices, tau, tail)
                (g_k,) = torch.autograd.grad(approx, student)
                row[f"loss_error_{name}"] = abs(approx.item() - full.item()) / full.item()
                row[f"grad_error_{name}"] = ((g_k - g_full).norm() / g_full.norm()).item()
            row["tail_mass"] = max(0.0, (1 - probs.gather(1, indices).sum(1)).mean().item())  # never -0.000
            row["bytes"] = 2 + 4 * k + 4
            rows.append(row)
    return rows


def format_rows(rows: list[dict[str, float]]) -> list[str]:
    cols = ("k", "tau", "tail mass", "grad error tail", "loss error tail", "grad error renorm", "loss error renorm",
            "bytes/image")  # fmt: skip
    lines = [
        (str(r["k"]), f"{r['tau']:g}", f"{r['tail_mass']:.3f}", f"{r['grad_error_tail']:.2e}",
         f"{r['loss_error_tail']:.2e}", f"{r['grad_error_renorm']:.2e}", f"{r['loss_error_renorm']:.2e}",
         str(r["bytes"]))
        for r in rows
    ]  # fmt: skip
    return format_columns(cols, lines, left=0)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True, help="teacher path (any load_teacher source) or random:CONVNET")
    p.add_argument("--student", help="a fastdeit training checkpoint or folder; default: a uniform student")
    p.add_argument("--data", default="digits", help="an ImageFolder root or 'digits' (its val split is read)")
    p.add_argument("--img-size", type=int, default=16)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--max-batches", type=int, default=10)
    p.add_argument("--k", type=int, nargs="+", default=[1, 2, 3, 5, 10])
    p.add_argument("--tau", type=float, nargs="+", default=[1.0, 3.0])
    args = p.parse_args(argv)
    bad = [k for k in args.k if not 1 <= k <= args.num_classes]
    if bad:
        p.error(f"--k values must be in [1, --num-classes={args.num_classes}], got {bad}")
    torch.set_grad_enabled(True)
    teacher, description = _teacher(args.teacher, args.num_classes, args.img_size)
    student = None
    if args.student:
        from fastdeit.training.teachers import load_teacher

        student = load_teacher(
            args.student, num_classes=args.num_classes, img_size=args.img_size, batch_size=2, device="cpu"
        )
    teacher_logits, student_logits = [], []
    with torch.no_grad():
        for images in _batches(args.data, args.img_size, args.batch_size, args.max_batches):
            t = teacher(images)
            teacher_logits.append(t)
            student_logits.append(student(images) if student is not None else torch.zeros_like(t))
    teacher_all, student_all = torch.cat(teacher_logits), torch.cat(student_logits)
    if teacher_all.shape[1] != args.num_classes:
        p.error(f"the teacher gives {teacher_all.shape[1]} classes, --num-classes is {args.num_classes}")
    who = student.description if student is not None else "uniform (zero logits)"
    print(f"teacher: {description}\nstudent: {who}\n{len(teacher_all)} images of {args.data} (val)")
    print("\n".join(format_rows(measure(teacher_all, student_all, args.k, args.tau))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
