"""Small pieces shared by the data modules: constants, the warning and error categories, seeding, argument checks."""

from __future__ import annotations

import numbers
import struct
from collections.abc import Sequence

import numpy as np

from fastdeit.constants import IMAGENET_MEAN, IMAGENET_STD  # noqa: F401  (re-exported for the data modules)

# Label of eval rows that are padding (or stand in for an unreadable file): metrics must ignore them.
PAD_LABEL = -1


class DataWarning(UserWarning):
    """Files were skipped or replaced, or a slower fallback is in use."""


class DataConfigError(ValueError):
    """A data setting is invalid: `field` names it, `expected` says what it must be, `value` is what was given."""

    def __init__(self, field: str, expected: str, value: object) -> None:
        self.field, self.expected, self.value = field, expected, value
        super().__init__(f"{field}: expected {expected}, got {value!r}")


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


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)  # True is not a count


def is_number(value: object) -> bool:
    """A real number, not a bool (True is not a scale or a probability)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_positive_int(name: str, value: object) -> int:
    if not _is_int(value) or value <= 0:
        raise DataConfigError(name, "a positive integer", value)
    return int(value)


def check_non_negative_int(name: str, value: object) -> int:
    if not _is_int(value) or value < 0:
        raise DataConfigError(name, "a non-negative integer", value)
    return int(value)


def check_probability(name: str, value: object) -> float:
    if not (is_number(value) and 0.0 <= value <= 1.0):  # the comparison also rejects NaN
        raise DataConfigError(name, "a probability in [0, 1]", value)
    return float(value)


def check_rank(rank: object, world_size: object) -> tuple[int, int]:
    world_size = check_positive_int("world_size", world_size)
    if not _is_int(rank) or not 0 <= rank < world_size:
        raise DataConfigError("rank", f"an integer in [0, world_size={world_size})", rank)
    return int(rank), world_size
