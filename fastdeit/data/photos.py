"""A small ImageFolder of real photos (scikit-image's samples) as ImageNet-like JPEGs, for benchmarks and tests.

ImageNet's train JPEGs are mostly about 500 px on the longer side (e.g. 500x375 or 375x500), around 110 KB each.
`write_photo_folder` makes files like them: random crops (a third of the photo's area or more, aspect ratio 3:4 to
4:3) of scikit-image's color sample photos, resized so that the longer side is 500 px, saved as JPEG at quality 95
(about 75 KB a file: the sample photos, downscaled, are smoother than camera pictures). Every file differs, and the
folder depends only on the seed. scikit-image is an optional dependency (`pip install
scikit-image`); it ships these photos, so nothing is downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

# scikit-image's bundled color photographs (no download needed).
PHOTO_NAMES = (
    "astronaut",
    "chelsea",
    "coffee",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "rocket",
    "stereo_motorcycle",
)
LONG_SIDE = 500
JPEG_QUALITY = 95


def sample_photo(name: str) -> np.ndarray:
    """scikit-image's sample photo `name` as an (H, W, C) uint8 array (C = 1 dropped for gray images)."""
    try:
        from skimage import data
    except ImportError as err:
        raise ImportError("the sample photos need scikit-image (pip install scikit-image)") from err
    image = getattr(data, name)()
    return image[0] if isinstance(image, tuple) else image  # stereo_motorcycle: (left, right, disparity)


def _random_view(photo: np.ndarray, rng: np.random.Generator):
    """A random crop of `photo` resized to LONG_SIDE on its longer side, as a PIL image."""
    from PIL import Image

    h, w = photo.shape[:2]
    area = h * w * rng.uniform(1 / 3, 1.0)
    aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
    ch = min(h, max(16, round(np.sqrt(area / aspect))))
    cw = min(w, max(16, round(np.sqrt(area * aspect))))
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = Image.fromarray(photo[top : top + ch, left : left + cw])
    scale = LONG_SIDE / max(ch, cw)
    return crop.resize((max(1, round(cw * scale)), max(1, round(ch * scale))), Image.Resampling.BICUBIC)


def write_photo_folder(root: str | os.PathLike, *, num_classes: int = 4, per_class: int = 64, seed: int = 0) -> Path:
    """Write `root/class_<k>/<i>.jpg`: `per_class` JPEGs in each of `num_classes` classes; returns `root`.

    Class k draws its crops from the photos PHOTO_NAMES[k::num_classes] (classes look different from each other).
    """
    if not 1 <= num_classes <= len(PHOTO_NAMES):
        raise ValueError(f"num_classes must be in [1, {len(PHOTO_NAMES)}] (one photo or more each), got {num_classes}")
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    photos = [sample_photo(name) for name in PHOTO_NAMES]
    for k in range(num_classes):
        folder = root / f"class_{k}"
        folder.mkdir(parents=True, exist_ok=True)
        mine = photos[k::num_classes]
        for i in range(per_class):
            view = _random_view(mine[i % len(mine)], rng)
            view.save(folder / f"{i:04d}.jpg", quality=JPEG_QUALITY)
    return root
