"""Helpers writing small test images (imported by the data tests; conftest.py holds the fixtures)."""

from __future__ import annotations

import struct
import zlib
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


def png16_bytes(pixels: np.ndarray) -> bytes:
    """A 16-bit PNG of `pixels`, (H, W) gray or (H, W, 3) RGB uint16, written by hand: Pillow writes 16-bit gray
    (mode I;16) but no 48-bit RGB."""
    h, w = pixels.shape[:2]
    rows = b"".join(b"\0" + pixels[y].astype(">u2").tobytes() for y in range(h))  # filter 0, big-endian samples

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", w, h, 16, 0 if pixels.ndim == 2 else 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def to_16_bit(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """8-bit pixels as 16-bit ones with real low bits (v * 257 + noise): what round(v16 / 257) must give back."""
    noise = rng.integers(-128, 129, pixels.shape)
    return np.clip(pixels.astype(np.int64) * 257 + noise, 0, 65535).astype(np.uint16)
