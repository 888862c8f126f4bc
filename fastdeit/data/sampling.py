"""Which samples each rank reads in an epoch: shuffling, DDP sharding and repeated augmentation.

Train (DeiT's RASampler semantics, generalised to any `repeated_aug` >= 1):
    1. the epoch's order is a permutation of all N samples from a generator seeded by (seed, epoch);
    2. each index is repeated `repeated_aug` times in a row;
    3. the list is padded (by wrapping around) to a multiple of `world_size`, and rank r takes every
       `world_size`-th entry starting at r, so the copies of one sample land on `repeated_aug`
       consecutive ranks, all different when `world_size >= repeated_aug`;
    4. each rank keeps the first N // world_size entries: an epoch costs the same number of steps
       whatever `repeated_aug` is (DeiT rounds down to a multiple of 256 first; we do not), and every
       rank has the same count.
   With repeated_aug=1 the ranks are disjoint and, when world_size divides N, cover the dataset.

Eval: rank r takes samples r, r + world_size, ... so every sample is read by exactly one rank; the
ranks' counts differ by at most one, and the loader pads them to the same number of batches.
"""

from __future__ import annotations

import numpy as np

from fastdeit.data.common import check_positive_int, check_rank, derive_seed


def train_shard(
    num_samples: int, *, epoch: int, seed: int, rank: int = 0, world_size: int = 1, repeated_aug: int = 1
) -> np.ndarray:
    """Sample indices (num_samples // world_size,) int64 read by `rank` in `epoch`, in order."""
    num_samples = check_positive_int("num_samples", num_samples)
    repeated_aug = check_positive_int("repeated_aug", repeated_aug)
    rank, world_size = check_rank(rank, world_size)
    order = np.random.default_rng(derive_seed(seed, epoch)).permutation(num_samples)
    repeated = np.repeat(order, repeated_aug)
    total = -(-len(repeated) // world_size) * world_size
    padded = np.resize(repeated, total)  # np.resize repeats the array to fill: the wrap-around padding
    return padded[rank::world_size][: num_samples // world_size].astype(np.int64)


def eval_shard(num_samples: int, *, rank: int = 0, world_size: int = 1) -> np.ndarray:
    """Sample indices int64 read by `rank` for evaluation: every world_size-th sample from `rank`."""
    num_samples = check_positive_int("num_samples", num_samples)
    rank, world_size = check_rank(rank, world_size)
    return np.arange(rank, num_samples, world_size, dtype=np.int64)


def batch_rng(seed: int, epoch: int, rank: int, step: int) -> np.random.Generator:
    """The generator of one train batch's augmentation choices."""
    return np.random.default_rng(derive_seed(seed, epoch, rank, step))
