"""What the Predictor takes: image files and folders (found here, decoded by fastdeit.data's predict loader), or
tensors of images already at the model's size.

Tensors are (B, 3, S, S), channels first, S the model's image size, as one of:
- float (any floating dtype): preprocessed images, normalised with the model's mean/std, as fastdeit.data's eval
  transform makes them; cast to the Predictor's dtype (as every batch is).
- uint8: RGB pixel values 0..255 (as torchvision.io.decode_image and a resize + center crop give them); converted
  to float32 and normalised with the model's mean/std (`model.config.mean`, `.std`) on the model's device.
Any other dtype, and channels-last (B, S, S, 3) batches, are refused with an error saying what to do.
"""

from __future__ import annotations

import functools
import mimetypes
import os
import warnings
from collections.abc import Sequence

import torch

from fastdeit.data.common import DataWarning, describe_files
from fastdeit.data.folder import IMG_EXTENSIONS, find_image_files

ImageInput = torch.Tensor | str | os.PathLike | Sequence[str | os.PathLike]


class ImageFiles(list[str]):
    """Image file paths found by `collect_images`, with the files it left out (`skipped`: path -> reason)."""

    def __init__(self, files: Sequence[str], skipped: dict[str, str]) -> None:
        super().__init__(files)
        self.skipped = skipped


def unsupported_image_format(path: str) -> str | None:
    """Why `path` is left out if its extension names an image format the decoders do not read (.gif, .heic, .svg,
    ...), else None (a supported format under any of its extensions, e.g. .jfif for JPEG, or not an image type)."""
    # Python's table of MIME types (plus the system's) knows image formats and their aliases a hand-kept list would
    # miss.
    mime, _ = mimetypes.guess_type(path)
    if mime is None or not mime.startswith("image/") or mime in _supported_mime_types():
        return None
    ext = os.path.splitext(path)[1].lower()
    return f"{ext} is not a supported image format; supported: {', '.join(sorted(IMG_EXTENSIONS))}"


@functools.cache
def _supported_mime_types() -> frozenset[str]:
    return frozenset(mimetypes.guess_type(f"x{ext}")[0] for ext in IMG_EXTENSIONS) - {None}


def collect_images(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> ImageFiles:
    """The image files named by `paths`, in order, and the files left out.

    Files are kept as given, whatever their extension (the loader checks their content), except images in a format
    the decoders do not read (GIF, HEIC, SVG, ...: `unsupported_image_format`). Directories are walked as
    fastdeit.data.folder walks an ImageFolder: recursively in sorted order, ignoring hidden entries; their files
    whose extension is not a supported image type are left out. Every file left out is named, with the reason, in
    one DataWarning.

    Raises:
        FileNotFoundError: a path does not exist.
        ValueError: no paths, or no image file among them (e.g. an empty directory).
    """
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise ValueError("no input paths given: expected image files or directories")
    files: list[str] = []
    skipped: dict[str, str] = {}
    for path in paths:
        if os.path.isdir(path):
            images, others = find_image_files(path)
            files += images
            skipped.update((other, unsupported_image_format(other) or why) for other, why in others)
        elif not os.path.exists(path):
            raise FileNotFoundError(f"input path {path!r} does not exist")
        elif why := unsupported_image_format(path):
            skipped[path] = why
        else:
            files.append(path)
    if skipped:
        warnings.warn(
            f"skipped {len(skipped)} file(s): {describe_files(list(skipped.items()))}", DataWarning, stacklevel=2
        )
    if not files:
        shown = ", ".join(repr(p) for p in paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
        raise ValueError(f"no image files in {shown} (supported image extensions: {', '.join(sorted(IMG_EXTENSIONS))})")
    return ImageFiles(files, skipped)


def check_image_tensor(images: torch.Tensor, img_size: int) -> None:
    """A (B, 3, img_size, img_size) float or uint8 batch (see the module docstring), else an error naming what was
    expected and what was given: ValueError for the shape, TypeError for the dtype."""
    expected = (3, img_size, img_size)
    shape = tuple(images.shape)
    if images.dim() != 4 or shape[1:] != expected:
        hint = ""
        if images.dim() == 4 and shape[1:] == (img_size, img_size, 3):
            hint = ": this looks channels-last (B, H, W, 3); pass images.permute(0, 3, 1, 2)"
        raise ValueError(f"images must be a batch of shape (B, {', '.join(map(str, expected))}), got {shape}{hint}")
    if not (images.is_floating_point() or images.dtype == torch.uint8):
        raise TypeError(
            f"images must be float (preprocessed: normalised with the model's mean/std) or uint8 (RGB pixels "
            f"0..255), got {images.dtype}"
        )
    if shape[0] == 0:
        raise ValueError("images is an empty batch")


def normalise_pixels(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 RGB pixels (B, 3, H, W) -> float32 (B, 3, H, W): (pixels / 255 - mean) / std per channel, as
    torchvision's ToTensor + Normalize compute it."""
    if pixels.dtype != torch.uint8:
        raise TypeError(f"expected uint8 pixels, got {pixels.dtype}")
    mean_t = torch.tensor(mean, dtype=torch.float32, device=pixels.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=pixels.device).view(1, -1, 1, 1)
    return (pixels.float() / 255.0 - mean_t) / std_t
