"""Helpers writing small test images (imported by the data tests; conftest.py holds the fixtures)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

NUM_CLASSES = 3
PER_CLASS = 12


def write_image(path: Path, rng: np.random.Generator, fmt: str = "JPEG") -> None:
    """A smooth gradient with mild noise, of random size 40-119 px a side (aspect ratios from ~1:3 to 3:1)."""
    h, w = (int(v) for v in rng.integers(40, 120, 2))
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 127 // (w + h) + int(rng.integers(0, 128))], -1)
    img = np.clip(img + rng.integers(0, 24, img.shape), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(path, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))
