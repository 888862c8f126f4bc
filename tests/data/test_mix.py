import math

import numpy as np
import pytest
import torch

from fastdeit.data import Mixup, RandomErasing
from fastdeit.data.mix import MixParams

C = 5


def batch(b=6, h=8, w=10):
    images = torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 3, h, w).clone()  # sample i is all i
    labels = torch.tensor([0, 1, 2, 3, 4, 0][:b])
    return images, labels


def smoothed(label, smoothing=0.1):
    row = torch.full((C,), smoothing / C)
    row[label] = 1 - smoothing + smoothing / C
    return row


def test_mixup_is_a_convex_combination_by_hand():
    images, labels = batch()
    mix = Mixup(C, generator=0)
    out, targets = mix.apply(images, labels, MixParams("mixup", 0.7))
    for i in range(6):
        j = 5 - i
        assert torch.allclose(out[i], 0.7 * images[i] + 0.3 * images[j])
        assert torch.allclose(targets[i], 0.7 * smoothed(labels[i]) + 0.3 * smoothed(labels[j]))
    assert torch.allclose(targets.sum(1), torch.ones(6))
    assert torch.equal(images, batch()[0])  # the input is left untouched


def test_cutmix_lambda_is_the_pasted_area():
    images, labels = batch()
    mix = Mixup(C, mixup_alpha=0.0, cutmix_alpha=1.0, generator=1)
    for _ in range(50):
        params = mix.sample(8, 10)
        assert params.kind == "cutmix"
        out, targets = mix.apply(images, labels, params)
        pasted = (out[0, 0] != images[0, 0]).float().mean().item()  # pixels taken from sample 5
        assert math.isclose(pasted, 1 - params.lam, abs_tol=1e-6)
        top, bottom, left, right = params.box
        assert 0 <= top <= bottom <= 8 and 0 <= left <= right <= 10
        assert torch.allclose(targets[0], params.lam * smoothed(0) + (1 - params.lam) * smoothed(0))
        assert torch.allclose(targets[1], params.lam * smoothed(1) + (1 - params.lam) * smoothed(4))
        assert torch.allclose(targets.sum(1), torch.ones(6))


def test_switch_prob_and_prob():
    mix = Mixup(C, generator=2)
    kinds = [mix.sample(8, 8).kind for _ in range(400)]
    assert 150 < kinds.count("cutmix") < 250 and kinds.count("mixup") + kinds.count("cutmix") == 400
    off = Mixup(C, prob=0.0, generator=2)
    images, labels = batch()
    out, targets = off(images, labels)
    assert torch.equal(out, images)
    assert torch.allclose(targets, torch.stack([smoothed(int(y)) for y in labels]))


def test_mixup_determinism():
    a, b = Mixup(C, generator=7), Mixup(C, generator=7)
    assert [a.sample(8, 8) for _ in range(5)] == [b.sample(8, 8) for _ in range(5)]
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    c, d = Mixup(C, generator=g1), Mixup(C, generator=g2)
    assert [c.sample(8, 8) for _ in range(5)] == [d.sample(8, 8) for _ in range(5)]


def test_mixup_bad_arguments():
    with pytest.raises(ValueError, match="num_classes: expected a positive integer"):
        Mixup(0)
    with pytest.raises(ValueError, match="label_smoothing: expected a number in \\[0, 1\\), got 1.0"):
        Mixup(C, label_smoothing=1.0)
    with pytest.raises(ValueError, match="labels must be a \\(B,\\) tensor with B=6"):
        Mixup(C)(batch()[0], torch.zeros(5, dtype=torch.int64))


def test_random_erasing_box_area_ratio_and_prob():
    erase = RandomErasing(0.25)
    boxes = erase.sample(np.random.default_rng(0), 8000, 40, 60)
    hit = boxes[:, 2] > 0
    assert abs(hit.mean() - 0.25) < 0.02
    h, w = boxes[hit, 2], boxes[hit, 3]
    # sides are rounded: h * w is within (h + w) / 2 + 1/4 pixels of the drawn area, h / w near the drawn ratio
    slack = (h + w) / 2 + 0.25
    assert (h * w >= 0.02 * 2400 - slack).all() and (h * w <= 2400 / 3 + slack).all()
    assert ((h + 0.5) / (w - 0.5) >= 0.3).all() and ((h - 0.5) / (w + 0.5) <= 1 / 0.3).all()
    assert (h < 40).all() and (w < 60).all()
    assert (boxes[hit, 0] + h <= 40).all() and (boxes[hit, 1] + w <= 60).all()
    assert np.median(h * w) > 0.1 * 2400  # areas spread over the range, not stuck at the minimum


def test_random_erasing_fills_only_the_boxes_with_noise():
    images = torch.zeros(64, 3, 16, 16)
    out = RandomErasing(0.5, generator=4)(images)
    assert torch.equal(images, torch.zeros(64, 3, 16, 16))
    erased = (out != 0).flatten(1).any(1)
    assert 16 < erased.sum() < 48
    for i in torch.nonzero(erased).flatten().tolist():
        nz = torch.nonzero(out[i, 0] != 0)
        (y0, x0), (y1, x1) = nz.min(0).values.tolist(), nz.max(0).values.tolist()
        box = out[i, :, y0 : y1 + 1, x0 : x1 + 1]
        assert (box != 0).float().mean() > 0.99  # a full rectangle of per-pixel noise
        assert box.std() > 0.5 and not torch.equal(box[0], box[1])  # per pixel and per channel
    assert torch.equal(RandomErasing(0.5, generator=4)(images), out)  # seeded: reproducible
    assert torch.equal(RandomErasing(0.0)(images), images)
