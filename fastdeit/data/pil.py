"""The PIL loader: decoding and transforms with Pillow in a thread pool (the `pil` backend).

Same interface, plan and random choices as DaliLoader (fastdeit.data.loader, fastdeit.data.augment),
so for a given (seed, epoch, rank, step) both backends crop, flip and pick RandAugment ops alike.
The transforms are timm's: the RandAugment ops follow timm's PIL implementation (bicubic warps filled
with the ImageNet mean color), and the eval resize rounds sizes and the center-crop offset the way
DALI does (half up), so eval batches of the two backends differ only by their bicubic resampling.
"""

from __future__ import annotations

import io
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps

from fastdeit.data.augment import RAND_AUGMENT_OPS, SKIP_OP, crop_window
from fastdeit.data.common import IMAGENET_MEAN, IMAGENET_STD
from fastdeit.data.loader import BLANK, BatchStream, ImageFileLoader, ReadyBatch

_BICUBIC = Image.Resampling.BICUBIC
_FILL = tuple(round(255 * m) for m in IMAGENET_MEAN)  # timm's `img_mean` fill for the warping ops
_MEAN = np.array(IMAGENET_MEAN, dtype=np.float32) * 255.0
_INV_STD = 1.0 / (np.array(IMAGENET_STD, dtype=np.float32) * 255.0)
_SOLARIZE_ADD_THRESHOLD = 128


def _affine(img: Image.Image, coeffs: tuple[float, ...]) -> Image.Image:
    return img.transform(img.size, Image.Transform.AFFINE, coeffs, resample=_BICUBIC, fillcolor=_FILL)


def _posterize(img: Image.Image, bits: float) -> Image.Image:
    # Magnitude 10 keeps 0 bits: a black image, as DALI's mask of 0 gives (Pillow refuses bits=0).
    if bits < 1:
        return Image.new(img.mode, img.size)
    return img if bits >= 8 else ImageOps.posterize(img, int(bits))


def _solarize_add(img: Image.Image, add: float) -> Image.Image:
    lut = [min(255, i + int(add)) if i < _SOLARIZE_ADD_THRESHOLD else i for i in range(256)]
    return img.point(lut * len(img.getbands()))


# (image, (x, y) argument from augment._op_argument) -> image
_PIL_OPS: dict[str, Callable[[Image.Image, np.ndarray], Image.Image]] = {
    "translate_x": lambda img, p: _affine(img, (1, 0, float(p[0]), 0, 1, 0)),
    "translate_y": lambda img, p: _affine(img, (1, 0, 0, 0, 1, float(p[1]))),
    "shear_x": lambda img, p: _affine(img, (1, float(p[0]), 0, 0, 1, 0)),
    "shear_y": lambda img, p: _affine(img, (1, 0, 0, float(p[1]), 1, 0)),
    "rotate": lambda img, p: img.rotate(float(p[0]), resample=_BICUBIC, fillcolor=_FILL),
    "brightness": lambda img, p: ImageEnhance.Brightness(img).enhance(float(p[0])),
    "contrast": lambda img, p: ImageEnhance.Contrast(img).enhance(float(p[0])),
    "color": lambda img, p: ImageEnhance.Color(img).enhance(float(p[0])),
    "sharpness": lambda img, p: ImageEnhance.Sharpness(img).enhance(float(p[0])),
    "posterize": lambda img, p: _posterize(img, float(p[0])),
    "solarize": lambda img, p: ImageOps.solarize(img, int(p[0])),
    "solarize_add": lambda img, p: _solarize_add(img, float(p[0])),
    "invert": lambda img, p: ImageOps.invert(img),
    "equalize": lambda img, p: ImageOps.equalize(img),
    "auto_contrast": lambda img, p: ImageOps.autocontrast(img),
}
_PIL_OP_TABLE = [_PIL_OPS[name] for name in RAND_AUGMENT_OPS]


def to_rgb(img: Image.Image) -> Image.Image:
    """`img` as 8-bit RGB. 16-bit gray (modes I;16*, and I as Pillow opens some 16-bit files) is scaled to 8 bits
    as DALI does, round(v / 257), where Pillow's own conversion clips it (a 16-bit PNG would come out white).

    Raises ValueError for pixels with no defined 8-bit scale (32-bit values beyond 16 bits, float images).
    """
    if img.mode.startswith("I"):
        values = np.asarray(img).astype(np.int64)  # native order whatever the file's (I;16B is big-endian)
        if values.size and (values.min() < 0 or values.max() > 0xFFFF):
            raise ValueError(
                f"{img.mode} pixels span {values.min()}..{values.max()}, beyond 16 bits: no defined 8-bit scale"
            )
        return Image.fromarray(((values + 128) // 257).astype(np.uint8)).convert("RGB")  # round(v / 257)
    if img.mode == "F":
        raise ValueError("32-bit float pixels (mode F) have no defined 8-bit scale")
    return img.convert("RGB")


def decode(data: np.ndarray | bytes, exif_orientation: bool = False) -> Image.Image:
    """A fully decoded 8-bit RGB image (see to_rgb); raises (OSError, ValueError...) on a broken file."""
    img = Image.open(io.BytesIO(data))
    img.load()
    if exif_orientation:
        img = ImageOps.exif_transpose(img)
    return to_rgb(img)


def eval_transform(img: Image.Image, img_size: int, crop_pct: float) -> Image.Image:
    """Resize the shorter side to int(img_size / crop_pct) (bicubic), center crop img_size, rounding like DALI."""
    scale = int(img_size / crop_pct)
    w, h = img.size
    if w <= h:
        size = (scale, int(np.floor(scale * h / w + 0.5)))
    else:
        size = (int(np.floor(scale * w / h + 0.5)), scale)
    img = img.resize(size, _BICUBIC)
    top = (size[1] - img_size + 1) // 2
    left = (size[0] - img_size + 1) // 2
    return img.crop((left, top, left + img_size, top + img_size))


def train_transform(
    img: Image.Image,
    img_size: int,
    crop_scale: tuple[float, float],
    crop: np.ndarray,
    flip: int,
    ra_ops: np.ndarray,
    ra_params: np.ndarray,
) -> Image.Image:
    """Random-resized-crop (area in `crop_scale`), flip and RandAugment with one row of TrainAugParams."""
    top, left, h, w = crop_window(crop, img.height, img.width, crop_scale)
    img = img.resize((img_size, img_size), _BICUBIC, box=(left, top, left + w, top + h))
    if flip:
        img = ImageOps.mirror(img)
    for op, param in zip(ra_ops.tolist(), ra_params, strict=True):
        if op != SKIP_OP:
            img = _PIL_OP_TABLE[op](img, param)
    return img


def to_tensor(img: Image.Image) -> torch.Tensor:
    """(3, H, W) float32 normalized with the ImageNet mean and std."""
    arr = (np.asarray(img, dtype=np.float32) - _MEAN) * _INV_STD
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


class PilLoader(ImageFileLoader):
    """ImageFileLoader decoding with PIL in `num_threads` threads; see ImageFileLoader for the arguments."""

    backend = "pil"

    def _row(self, ready: ReadyBatch, row: int) -> torch.Tensor | str:
        """Row `row` of the batch as a (3, S, S) tensor, or why its file could not be decoded."""
        try:
            img = decode(ready.encoded[row], self.exif_orientation)
        except Exception as err:  # PIL raises many types for broken files
            return f"PIL could not decode it: {err}"
        cfg = self.config
        if self.mode == "train":
            aug = ready.aug
            img = train_transform(
                img, cfg.img_size, cfg.crop_scale, aug.crop[row], aug.flip[row], aug.ra_ops[row], aug.ra_params[row]
            )
        else:
            img = eval_transform(img, cfg.img_size, cfg.crop_pct)
        return to_tensor(img)

    def _assemble(self, ready: ReadyBatch, pool: ThreadPoolExecutor) -> tuple[torch.Tensor, torch.Tensor] | None:
        while True:
            rows = list(pool.map(self._row, [ready] * len(ready.files), range(len(ready.files))))
            failed = {
                f: why for f, why in zip(ready.files.tolist(), rows, strict=True) if isinstance(why, str) and f != BLANK
            }
            if not failed:
                break
            for f, why in failed.items():
                self._mark_bad(f, why)
            ready = self._resolve(ready.planned, ready.data)
            if not len(ready.files):
                return None
        return torch.stack(rows), torch.from_numpy(ready.targets)

    def _next_batch(self, stream: BatchStream, pool: ThreadPoolExecutor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The next non-empty batch of the stream, or None at its end."""
        for ready in stream:
            batch = self._assemble(ready, pool)
            if batch is not None:
                return batch
        return None

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        try:
            with (
                ThreadPoolExecutor(self.config.read_threads, thread_name_prefix="fastdeit-read") as read_pool,
                ThreadPoolExecutor(self.config.num_threads, thread_name_prefix="fastdeit-pil") as pool,
                ThreadPoolExecutor(1, thread_name_prefix="fastdeit-batch") as assembler,
            ):
                # All stream and unreadable-file bookkeeping happens in the one assembler thread, in order.
                stream = self._stream(read_pool)
                pending: deque[Future] = deque()
                try:
                    while True:
                        while len(pending) <= self.config.prefetch:
                            pending.append(assembler.submit(self._next_batch, stream, pool))
                        batch = pending.popleft().result()
                        if batch is None:
                            break
                        yield batch[0].to(self.device), batch[1].to(self.device)
                finally:
                    for fut in pending:
                        fut.cancel()
                    assembler.submit(stream.close)
        finally:
            self._report_bad()
