from collections import Counter

import numpy as np
import pytest

from fastdeit.data.sampling import batch_rng, eval_shard, train_shard


def shards(n, world, **kw):
    return [train_shard(n, rank=r, world_size=world, **kw) for r in range(world)]


def test_train_order_depends_on_seed_and_epoch_only():
    a = train_shard(100, epoch=3, seed=7)
    assert np.array_equal(a, train_shard(100, epoch=3, seed=7))
    assert sorted(a.tolist()) == list(range(100))
    assert not np.array_equal(a, train_shard(100, epoch=4, seed=7))
    assert not np.array_equal(a, train_shard(100, epoch=3, seed=8))


@pytest.mark.parametrize("n, world", [(100, 4), (103, 4), (10, 3)])
def test_ddp_shards_equal_disjoint_and_cover(n, world):
    parts = shards(n, world, epoch=1, seed=0)
    assert {len(p) for p in parts} == {n // world}
    seen = np.concatenate(parts)
    assert len(set(seen.tolist())) == len(seen)  # disjoint
    if n % world == 0:
        assert sorted(seen.tolist()) == list(range(n))  # and covering


def test_repeated_aug_copies_go_to_different_ranks():
    n, world, reps = 96, 8, 3
    parts = shards(n, world, epoch=0, seed=0, repeated_aug=reps)
    assert {len(p) for p in parts} == {n // world}
    for part in parts:  # no rank sees a sample twice
        assert len(set(part.tolist())) == len(part)
    ranks_of = {}
    for r, part in enumerate(parts):
        for i in part.tolist():
            ranks_of.setdefault(i, []).append(r)
    copies = Counter(len(v) for v in ranks_of.values())
    # an epoch covers about n / reps distinct samples, each (but possibly the last) `reps` times
    assert copies[reps] >= n // reps - 1 and sum(k * v for k, v in copies.items()) == n
    # consecutive copies sit on consecutive ranks
    for rs in ranks_of.values():
        assert len(set(rs)) == len(rs)


def test_repeated_aug_epoch_sees_a_third_of_the_data():
    parts = shards(300, 4, epoch=2, seed=5, repeated_aug=3)
    assert len(set(np.concatenate(parts).tolist())) == 100


def test_eval_shard_each_sample_once():
    for n, world in [(10, 3), (7, 8), (16, 4)]:
        parts = [eval_shard(n, rank=r, world_size=world) for r in range(world)]
        assert sorted(np.concatenate(parts).tolist()) == list(range(n))
        assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1


def test_bad_arguments():
    with pytest.raises(ValueError, match="rank: expected an integer in \\[0, world_size=2\\), got 2"):
        train_shard(10, epoch=0, seed=0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="repeated_aug: expected a positive integer, got 0"):
        train_shard(10, epoch=0, seed=0, repeated_aug=0)
    with pytest.raises(ValueError, match="num_samples: expected a positive integer"):
        eval_shard(0)
    with pytest.raises(ValueError, match="non-negative"):
        train_shard(10, epoch=-1, seed=0)


def test_batch_rng_streams_are_distinct():
    draws = {tuple(batch_rng(0, e, r, s).random(3)) for e in range(2) for r in range(2) for s in range(2)}
    assert len(draws) == 8
    assert np.array_equal(batch_rng(1, 2, 3, 4).random(5), batch_rng(1, 2, 3, 4).random(5))
