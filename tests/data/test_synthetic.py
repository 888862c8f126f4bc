import pytest
import torch

from fastdeit.data import LoaderConfig, SyntheticLoader


def make(seed=0, batch_size=8, **kw):
    config = LoaderConfig(img_size=16, batch_size=batch_size, seed=seed)
    return SyntheticLoader(config, **{"num_classes": 10, "num_samples": 50, **kw})


def test_shapes_and_length():
    ld = make(world_size=2, rank=1)
    assert len(ld) == 3  # 25 samples per rank, 8 per batch, last partial batch dropped
    batches = list(ld)
    assert len(batches) == 3
    images, labels = batches[0]
    assert images.shape == (8, 3, 16, 16) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and 0 <= labels.min() and labels.max() < 10


def test_deterministic_resume_and_rank_dependent():
    a, b = make(seed=3), make(seed=3)
    a.set_epoch(2)
    full = list(a)
    b.set_epoch(2, start_step=4)
    tail = list(b)
    assert len(tail) == len(full) - 4
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(full[4:], tail, strict=True))
    a.set_epoch(3)
    assert not torch.equal(next(iter(a))[0], full[0][0])
    assert not torch.equal(next(iter(make(seed=3, rank=1, world_size=2)))[0], next(iter(make(seed=3, world_size=2)))[0])


def test_bad_arguments():
    with pytest.raises(ValueError, match="batch_size=64 is larger than the 50 samples per rank"):
        make(batch_size=64)
    with pytest.raises(ValueError, match="num_classes: expected a positive integer, got 0"):
        make(num_classes=0)
