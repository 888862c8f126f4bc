"""Losses against values computed by hand with `math` on tiny inputs."""

import math

import pytest
import torch
from torch import nn

from fastdeit.losses import (
    DistillationLoss,
    SoftTargetCrossEntropy,
    TeacherOutput,
    build_criterion,
    soft_kl,
    topk_soft_kl,
    topk_tail_logmass,
)


def log_softmax(row, t=1.0):
    scaled = [v / t for v in row]
    top = max(scaled)
    lse = top + math.log(sum(math.exp(v - top) for v in scaled))
    return [v - lse for v in scaled]


CLS = [[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]]
DIST = [[0.0, 1.0, -1.0], [2.0, 0.0, 1.0]]
TEACHER = [[0.2, 2.5, 0.1], [1.0, 0.0, 3.0]]  # argmax: 1, 2
LABELS = [2, 0]


def ce(rows, labels):
    return sum(-log_softmax(r)[y] for r, y in zip(rows, labels, strict=True)) / len(rows)


class Teacher(nn.Module):
    """Returns fixed logits scaled by a parameter (which must get no gradient) and records its inputs."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.tensor(logits)
        self.scale = nn.Parameter(torch.ones(()))
        self.seen = None
        self.dropout = nn.Dropout(0.5)

    def forward(self, x):
        self.seen = x
        return self.logits * self.scale


def student_outputs():
    return torch.tensor(CLS, requires_grad=True), torch.tensor(DIST, requires_grad=True)


def test_soft_target_cross_entropy_by_hand():
    target = [[0.0, 0.5, 0.5], [1.0, 0.0, 0.0]]
    expected = (
        sum(
            -sum(t * lp for t, lp in zip(trow, log_softmax(row), strict=True))
            for row, trow in zip(CLS, target, strict=True)
        )
        / 2
    )
    got = SoftTargetCrossEntropy()(torch.tensor(CLS), torch.tensor(target))
    assert math.isclose(got.item(), expected, rel_tol=1e-6)
    with pytest.raises(ValueError, match="soft targets must have the logits' shape"):
        SoftTargetCrossEntropy()(torch.tensor(CLS), torch.zeros(2, 4))


def test_label_smoothing_criterion_by_hand():
    s = 0.1
    expected = (
        sum(
            (1 - s) * -log_softmax(r)[y] + s * sum(-v for v in log_softmax(r)) / 3
            for r, y in zip(CLS, LABELS, strict=True)
        )
        / 2
    )
    got = build_criterion(mixup_active=False, label_smoothing=s)(torch.tensor(CLS), torch.tensor(LABELS))
    assert math.isclose(got.item(), expected, rel_tol=1e-6)
    assert isinstance(build_criterion(mixup_active=True), SoftTargetCrossEntropy)


def test_distillation_none_uses_the_class_head_only():
    loss = DistillationLoss(nn.CrossEntropyLoss(), None, "none", alpha=0.5, tau=1.0)
    x = torch.zeros(2, 3, 4, 4)
    expected = ce(CLS, LABELS)
    assert math.isclose(loss(x, torch.tensor(CLS), torch.tensor(LABELS)).item(), expected, rel_tol=1e-6)
    assert math.isclose(loss(x, student_outputs(), torch.tensor(LABELS)).item(), expected, rel_tol=1e-6)


@pytest.mark.parametrize("tau", [1.0, 3.0])
def test_distillation_soft_by_hand(tau):
    alpha = 0.3
    teacher = Teacher(TEACHER)
    loss = DistillationLoss(nn.CrossEntropyLoss(), teacher, "soft", alpha=alpha, tau=tau)
    x = torch.randn(2, 3, 4, 4)
    cls, dist = student_outputs()
    got = loss(x, (cls, dist), torch.tensor(LABELS))
    kl = 0.0
    for s_row, t_row in zip(DIST, TEACHER, strict=True):
        ls, lt = log_softmax(s_row, tau), log_softmax(t_row, tau)
        kl += sum(math.exp(b) * (b - a) for a, b in zip(ls, lt, strict=True))
    distill = kl * tau * tau / 6  # summed KL / number of logits (2 x 3)
    expected = (1 - alpha) * ce(CLS, LABELS) + alpha * distill
    assert math.isclose(got.item(), expected, rel_tol=1e-5)
    assert teacher.seen is x  # the teacher sees the student's (mixed) inputs
    got.backward()
    assert teacher.scale.grad is None  # no gradient through the teacher
    assert dist.grad is not None and dist.grad.abs().sum() > 0 and cls.grad.abs().sum() > 0


def test_distillation_hard_by_hand():
    alpha = 0.5
    loss = DistillationLoss(nn.CrossEntropyLoss(), Teacher(TEACHER), "hard", alpha=alpha, tau=1.0)
    got = loss(torch.zeros(2, 3, 4, 4), student_outputs(), torch.tensor(LABELS))
    expected = (1 - alpha) * ce(CLS, LABELS) + alpha * ce(DIST, [1, 2])
    assert math.isclose(got.item(), expected, rel_tol=1e-6)


def test_distillation_with_soft_targets_base():
    target = torch.tensor([[0.0, 0.5, 0.5], [1.0, 0.0, 0.0]])
    loss = DistillationLoss(SoftTargetCrossEntropy(), Teacher(TEACHER), "hard", alpha=1.0, tau=1.0)
    got = loss(torch.zeros(2, 3, 4, 4), student_outputs(), target)
    assert math.isclose(got.item(), ce(DIST, [1, 2]), rel_tol=1e-6)  # alpha = 1: the teacher term alone


def test_teacher_stays_in_eval_mode():
    teacher = Teacher(TEACHER).train()
    loss = DistillationLoss(nn.CrossEntropyLoss(), teacher, "soft", alpha=0.5, tau=1.0)
    assert not teacher.training
    loss.train()
    assert loss.training and not teacher.training


def test_distillation_errors():
    x, labels = torch.zeros(2, 3, 4, 4), torch.tensor(LABELS)
    soft = DistillationLoss(nn.CrossEntropyLoss(), Teacher(TEACHER), "soft", alpha=0.5, tau=1.0)
    with pytest.raises(ValueError, match=r"needs a \*_distilled_\* model"):
        soft(x, torch.tensor(CLS), labels)
    with pytest.raises(ValueError, match="a \\(cls, dist\\) pair of tensors, got tuple of length 3"):
        soft(x, (torch.tensor(CLS),) * 3, labels)
    wide = DistillationLoss(nn.CrossEntropyLoss(), Teacher([[0.0] * 4] * 2), "hard", alpha=0.5, tau=1.0)
    with pytest.raises(ValueError, match=r"teacher logits have shape \(2, 4\) but .* \(2, 3\)"):
        wide(x, student_outputs(), labels)
    with pytest.raises(ValueError, match="distillation_type must be one of"):
        DistillationLoss(nn.CrossEntropyLoss(), None, "medium", alpha=0.5, tau=1.0)
    no_teacher = DistillationLoss(nn.CrossEntropyLoss(), None, "soft", alpha=0.5, tau=1.0)
    with pytest.raises(ValueError, match="needs a teacher model or a teacher_output per call; got neither"):
        no_teacher(x, student_outputs(), labels)
    with pytest.raises(ValueError, match="soft distillation needs the teacher's logits .* hard labels only"):
        no_teacher(x, student_outputs(), labels, TeacherOutput(labels=torch.tensor([1, 2])))
    with pytest.raises(ValueError, match=r"must both be \(B, k\) with the student's B=2"):
        topk_soft_kl(torch.zeros(2, 3), torch.zeros(3, 2), torch.zeros(3, 2, dtype=torch.long), 1.0)
    with pytest.raises(ValueError, match="alpha must be in \\[0, 1\\]"):
        DistillationLoss(nn.CrossEntropyLoss(), None, "none", alpha=1.5, tau=1.0)
    with pytest.raises(ValueError, match="tau must be > 0"):
        DistillationLoss(nn.CrossEntropyLoss(), None, "none", alpha=0.5, tau=0.0)


def test_teacher_output_given_per_call_replaces_the_teacher():
    """What a teacher cache passes (labels, or top-k logits) gives the loss the live teacher gives."""
    x, labels = torch.zeros(2, 3, 4, 4), torch.tensor(LABELS)
    live = DistillationLoss(nn.CrossEntropyLoss(), Teacher(TEACHER), "hard", alpha=0.5, tau=1.0)
    cached = DistillationLoss(nn.CrossEntropyLoss(), None, "hard", alpha=0.5, tau=1.0)
    expected = live(x, student_outputs(), labels)
    assert torch.equal(cached(x, student_outputs(), labels, TeacherOutput(labels=torch.tensor([1, 2]))), expected)
    assert torch.equal(cached(x, student_outputs(), labels, TeacherOutput(logits=torch.tensor(TEACHER))), expected)
    soft = DistillationLoss(nn.CrossEntropyLoss(), None, "soft", alpha=0.5, tau=2.0)
    values, indices = torch.tensor(TEACHER).topk(3)  # k = C: the full distribution
    torch.testing.assert_close(
        soft(x, student_outputs(), labels, TeacherOutput(topk_values=values, topk_indices=indices)),
        soft(x, student_outputs(), labels, TeacherOutput(logits=torch.tensor(TEACHER))),
    )


@pytest.mark.parametrize("tau", [1.0, 3.0])
def test_topk_soft_kl_by_hand(tau):
    """k = 2 of 3 classes: the teacher's distribution renormalised over its two largest logits."""
    dist = torch.tensor(DIST, requires_grad=True)
    values, indices = torch.tensor(TEACHER).topk(2)
    got = topk_soft_kl(dist, values, indices, tau)
    kl = 0.0
    for s_row, t_row in zip(DIST, TEACHER, strict=True):
        top = sorted(range(3), key=lambda c: -t_row[c])[:2]
        lt = log_softmax([t_row[c] for c in top], tau)
        ls = log_softmax(s_row, tau)
        kl += sum(math.exp(b) * (b - ls[c]) for c, b in zip(top, lt, strict=True))
    assert math.isclose(got.item(), kl * tau * tau / 6, rel_tol=1e-5)
    got.backward()
    assert dist.grad.abs().sum() > 0


def test_topk_soft_kl_with_every_class_is_soft_kl():
    student = torch.randn(8, 50, dtype=torch.float64, requires_grad=True)
    teacher = 3 * torch.randn(8, 50, dtype=torch.float64)
    full = soft_kl(student, teacher, 2.0)
    (g_full,) = torch.autograd.grad(full, student)
    top = topk_soft_kl(student, *teacher.topk(50), 2.0)
    (g_top,) = torch.autograd.grad(top, student)
    torch.testing.assert_close(top, full, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(g_top, g_full, rtol=1e-10, atol=1e-14)
    assert topk_soft_kl(student, *teacher.topk(5), 2.0).item() != pytest.approx(full.item(), rel=1e-6)


def test_topk_soft_kl_uniform_tail():
    """With the tail's mass, the teacher's distribution is its top k and an even spread of the rest: exact when the
    tail is even, and equal to the KL of that distribution written out in full otherwise."""
    student = torch.randn(4, 7, dtype=torch.float64)
    teacher = torch.randn(4, 7, dtype=torch.float64)
    teacher[:, 3:] = teacher[:, :1] - 2.0  # the 4 classes outside the top 3 share one logit: an even tail
    values, indices = teacher.topk(3)
    torch.testing.assert_close(
        topk_soft_kl(student, values, indices, 1.5, topk_tail_logmass(teacher, indices, 1.5)),
        soft_kl(student, teacher, 1.5),
    )
    teacher = 2 * torch.randn(4, 7, dtype=torch.float64)
    values, indices = teacher.topk(2)
    log_m = topk_tail_logmass(teacher, indices, 2.0)
    probs = torch.softmax(teacher / 2.0, 1)
    spread = torch.full_like(probs, 1.0) * (log_m.exp() / 5)[:, None]
    spread.scatter_(1, indices, probs.gather(1, indices))
    expected = (spread * (spread.log() - torch.log_softmax(student / 2.0, 1))).sum() * 4.0 / student.numel()
    torch.testing.assert_close(topk_soft_kl(student, values, indices, 2.0, log_m), expected)
    # k = C: the tail is empty (-inf) and adds nothing
    values, indices = teacher.topk(7)
    assert torch.isinf(topk_tail_logmass(teacher, indices, 1.0)).all()
    torch.testing.assert_close(
        topk_soft_kl(student, values, indices, 1.0, topk_tail_logmass(teacher, indices, 1.0)),
        soft_kl(student, teacher, 1.0),
    )
