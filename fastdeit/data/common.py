"""Small pieces shared by the data modules: constants, the warning category, seeding, argument checks."""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

from fastdeit.constants import IMAGENET_MEAN, IMAGENET_STD  # noqa: F401  (re-exported for the data modules)

# Label of eval rows that are padding (or stand in for an unreadable file): metrics must ignore them.
PAD_LABEL = -1


class DataWarning(UserWarning):
    """Files were skipped or replaced, or a slower fallback is in use."""


def describe_files(items: Sequence[tuple[str, str]], limit: int = 10) -> str:
    """`"a.txt (reason), b.jpg (reason)"` for the first `limit` (path, reason) pairs, then "and N more"."""
    shown = ", ".join(f"{path} ({reason})" for path, reason in items[:limit])
    if len(items) > limit:
        shown += f", and {len(items) - limit} more"
    return shown


def derive_seed(*keys: int) -> int:
    """A 63-bit seed that depends on every key (seed, epoch, rank, step...), stable across platforms."""
    if any(k < 0 for k in keys):
        raise ValueError(f"seed keys must be non-negative integers, got {keys}")
    return int(np.random.SeedSequence(list(keys)).generate_state(2, dtype=np.uint32).view(np.uint64)[0] >> 1)


def blank_bmp(size: int = 8) -> bytes:
    """A valid `size` x `size` black 24-bit BMP.

    It stands in for unreadable or padding eval rows: every decoder (DALI CPU/GPU, PIL) reads BMP,
    and writing one needs no image library.
    """
    row = (size * 3 + 3) // 4 * 4
    pixels = bytes(row * size)
    header = struct.pack("<2sIHHI", b"BM", 54 + len(pixels), 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, size, size, 1, 24, 0, len(pixels), 2835, 2835, 0, 0)
    return header + info + pixels


def check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_rank(rank: object, world_size: object) -> tuple[int, int]:
    world_size = check_positive_int("world_size", world_size)
    if isinstance(rank, bool) or not isinstance(rank, int | np.integer) or not 0 <= rank < world_size:
        raise ValueError(f"rank must be an integer in [0, world_size={world_size}), got {rank!r}")
    return int(rank), world_size
