"""DALI pipelines for DeiT's train and eval transforms, and the loader that drives them.

The pipelines are fed through `fn.external_source` by DaliLoader, which decides the order of the
files (shuffling, sharding, repeated augmentation, resume) and every random choice of the train
transform (fastdeit.data.augment); the DALI graph itself is deterministic. It is built once per
loader and reused for every epoch.

Train: decode -> random-resized-crop (bicubic, antialiased) to img_size -> horizontal flip ->
RandAugment -> normalize to CHW float32. Eval: decode -> resize the shorter side to
int(img_size / crop_pct) (bicubic, antialiased) -> center crop img_size -> normalize.
Decoding runs on the GPU (nvJPEG, the "mixed" decoder) when the loader's device is CUDA, else on the CPU.

RandAugment uses DALI's auto_aug implementations of the ops (`nvidia.dali.auto_aug.augmentations`)
and its `select` to send each sample to its op, but the op, magnitude and sign come from the host
rather than from `rand_augment`'s own random operators, so the magnitude noise (mstd) and the per-op
probability of DeiT's policy can be reproduced. Known differences from DeiT's (timm's PIL) RandAugment:
rotate/shear/translate interpolate bilinearly (DALI's warp supports no bicubic) and fill with gray 115
(the mean of timm's per-channel fill (124, 116, 104)); equalize follows OpenCV's formula, sharpness
leaves a 1-pixel border unfiltered.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from nvidia.dali import fn, types
from nvidia.dali import math as dmath
from nvidia.dali.auto_aug import augmentations as aa
from nvidia.dali.auto_aug.core import select
from nvidia.dali.backend import TensorListCPU, TensorListGPU
from nvidia.dali.data_node import DataNode
from nvidia.dali.pipeline import Pipeline, pipeline_def
from nvidia.dali.plugin.pytorch import feed_ndarray

from fastdeit.data.augment import CROP_ATTEMPTS, CROP_RATIO, RAND_AUGMENT_OPS
from fastdeit.data.common import IMAGENET_MEAN, IMAGENET_STD
from fastdeit.data.loader import BatchStream, ImageFileLoader, ReadyBatch

_FILL = 115  # warps take one fill value: the mean of timm's per-channel fill (124, 116, 104)
_MEAN_255 = [255.0 * m for m in IMAGENET_MEAN]
_STD_255 = [255.0 * s for s in IMAGENET_STD]
_SMOOTH = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=np.float32) / 13.0  # PIL's ImageFilter.SMOOTH
_IDENTITY_KERNEL = np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]], dtype=np.float32)


# --- RandAugment ops: (images HWC uint8, param (2,) float32) -> images; param as in augment._op_argument ---


def _like(param: DataNode, images: DataNode) -> DataNode:
    """Arguments that DALI's auto_aug keeps on the images' device (`param_device="auto"`) must move there."""
    return param.gpu() if images.device == "gpu" else param


# DALI's warps map input to output coordinates and PIL's (the reference) output to input: the negated
# argument moves the image the same way in both backends.
def _translate(images: DataNode, param: DataNode) -> DataNode:
    return aa.translate_x_no_shape.op(images, -param, fill_value=_FILL, interp_type=types.INTERP_LINEAR)


def _shear(images: DataNode, param: DataNode) -> DataNode:
    return aa.shear_x.op(images, -param, fill_value=_FILL, interp_type=types.INTERP_LINEAR)


def _rotate(images: DataNode, param: DataNode) -> DataNode:
    return aa.rotate.op(images, param[0], fill_value=_FILL, interp_type=types.INTERP_LINEAR)


def _brightness(images: DataNode, param: DataNode) -> DataNode:
    return aa.brightness.op(images, param[0])


def _contrast(images: DataNode, param: DataNode) -> DataNode:
    return aa.contrast.op(images, param[0])


def _color(images: DataNode, param: DataNode) -> DataNode:
    return aa.color.op(images, param[0])


def _sharpness(images: DataNode, param: DataNode) -> DataNode:
    # PIL blends the image with its SMOOTH-filtered self: factor * image + (1 - factor) * smooth(image)
    factor = param[0]
    kernel = types.Constant(_IDENTITY_KERNEL) * factor + types.Constant(_SMOOTH) * (1.0 - factor)
    return fn.filter(images, _like(kernel, images))  # auto_aug's sharpness, without its deprecated alias


def _posterize(images: DataNode, param: DataNode) -> DataNode:
    mask = fn.cast(256.0 - dmath.pow(2.0, 8.0 - param[0]), dtype=types.UINT8)  # keep the top `bits` bits
    return aa.posterize.op(images, _like(mask, images))


def _solarize(images: DataNode, param: DataNode) -> DataNode:
    return aa.solarize.op(images, _like(param[0], images))


def _solarize_add(images: DataNode, param: DataNode) -> DataNode:
    return aa.solarize_add.op(images, _like(fn.cast(param[0], dtype=types.UINT8), images))


def _invert(images: DataNode, param: DataNode) -> DataNode:
    return aa.invert.op(images, None)


def _equalize(images: DataNode, param: DataNode) -> DataNode:
    return fn.equalize(images)  # auto_aug's equalize, without its deprecated alias


def _auto_contrast(images: DataNode, param: DataNode) -> DataNode:
    return aa.auto_contrast.op(images, None)


def _skip(images: DataNode, param: DataNode) -> DataNode:
    return images


_OPS: dict[str, Callable[[DataNode, DataNode], DataNode]] = {
    "translate_x": _translate,
    "translate_y": _translate,
    "shear_x": _shear,
    "shear_y": _shear,
    "rotate": _rotate,
    "brightness": _brightness,
    "contrast": _contrast,
    "color": _color,
    "sharpness": _sharpness,
    "posterize": _posterize,
    "solarize": _solarize,
    "solarize_add": _solarize_add,
    "invert": _invert,
    "equalize": _equalize,
    "auto_contrast": _auto_contrast,
}
# Indexed like RAND_AUGMENT_OPS, with the "not applied" op (SKIP_OP) last.
_OP_TABLE = [_OPS[name] for name in RAND_AUGMENT_OPS] + [_skip]


def _rand_augment(images: DataNode, ops: DataNode, params: DataNode, num_ops: int) -> DataNode:
    """Apply op `ops[j]` with argument `params[j]` for j < num_ops; ops (num_ops,) int32, params (num_ops, 2)."""
    for j in range(num_ops):
        images = select(_OP_TABLE, ops[j], images, param=params[j])
    return images


def _crop_roi(
    encoded: DataNode, u: DataNode, scale: tuple[float, float], exif_orientation: bool
) -> tuple[DataNode, DataNode]:
    """fastdeit.data.augment.crop_window in DALI arithmetic: (roi_start, roi_end) as (2,) float (y, x)."""
    shape = fn.cast(fn.peek_image_shape(encoded, adjust_orientation=exif_orientation), dtype=types.FLOAT)
    height, width = shape[0], shape[1]
    log_lo, log_hi = float(np.log(CROP_RATIO[0])), float(np.log(CROP_RATIO[1]))
    target = height * width * (scale[0] + (scale[1] - scale[0]) * u[0])
    aspect = dmath.exp(log_lo + (log_hi - log_lo) * u[1])
    w = dmath.floor(dmath.sqrt(target * aspect) + 0.5)
    h = dmath.floor(dmath.sqrt(target / aspect) + 0.5)
    fits = fn.cast((w >= 1.0) & (w <= width) & (h >= 1.0) & (h <= height), dtype=types.FLOAT)
    attempt = types.Constant(np.arange(CROP_ATTEMPTS, dtype=np.float32))
    first = fn.reductions.min(attempt + (1.0 - fits) * CROP_ATTEMPTS)  # CROP_ATTEMPTS when nothing fits
    chosen = fn.cast(attempt == first, dtype=types.FLOAT)
    h_try = fn.reductions.sum(h * chosen)
    w_try = fn.reductions.sum(w * chosen)
    top_try = dmath.min(dmath.floor(fn.reductions.sum(u[2] * chosen) * (height - h_try + 1.0)), height - h_try)
    left_try = dmath.min(dmath.floor(fn.reductions.sum(u[3] * chosen) * (width - w_try + 1.0)), width - w_try)
    # Fallback: the whole image, cropped to the nearest allowed aspect ratio, centered.
    in_ratio = width / height
    narrow = fn.cast(in_ratio < CROP_RATIO[0], dtype=types.FLOAT)
    wide = fn.cast(in_ratio > CROP_RATIO[1], dtype=types.FLOAT)
    h_fb = narrow * dmath.floor(width / CROP_RATIO[0] + 0.5) + (1.0 - narrow) * height
    w_fb = wide * dmath.floor(height * CROP_RATIO[1] + 0.5) + (1.0 - wide) * width
    found = fn.cast(first < CROP_ATTEMPTS, dtype=types.FLOAT)
    h_out = found * h_try + (1.0 - found) * h_fb
    w_out = found * w_try + (1.0 - found) * w_fb
    top = found * top_try + (1.0 - found) * dmath.floor((height - h_fb) / 2.0)
    left = found * left_try + (1.0 - found) * dmath.floor((width - w_fb) / 2.0)
    return fn.stack(top, left), fn.stack(top + h_out, left + w_out)


def _decode(encoded: DataNode, on_gpu: bool, exif_orientation: bool) -> DataNode:
    return fn.decoders.image(
        encoded, device="mixed" if on_gpu else "cpu", output_type=types.RGB, adjust_orientation=exif_orientation
    )


def _normalize(images: DataNode, **kwargs) -> DataNode:
    return fn.crop_mirror_normalize(
        images, dtype=types.FLOAT, output_layout="CHW", mean=_MEAN_255, std=_STD_255, **kwargs
    )


@pipeline_def(enable_conditionals=True)
def train_pipeline(
    source: Callable[[], tuple],
    *,
    img_size: int,
    crop_scale: tuple[float, float],
    num_ops: int,
    on_gpu: bool,
    exif_orientation: bool = False,
) -> DataNode:
    """DeiT's train transform; `source()` returns a batch of (encoded, crop, flip[, ra_ops, ra_params]).

    encoded: (bytes,) uint8 files; crop (4, CROP_ATTEMPTS) float32, flip () int32, and when num_ops > 0
    ra_ops (num_ops,) int32 and ra_params (num_ops, 2) float32 per sample, as in
    fastdeit.data.augment.TrainAugParams. `crop_scale` is the random-resized-crop's area range, built
    into the graph as constants (it is fixed per loader). Output: (B, 3, img_size, img_size) float32.
    """
    dtypes = [types.UINT8, types.FLOAT, types.INT32] + ([types.INT32, types.FLOAT] if num_ops else [])
    encoded, crop, flip, *ra = fn.external_source(source=source, num_outputs=len(dtypes), batch=True, dtype=dtypes)
    roi_start, roi_end = _crop_roi(encoded, crop, crop_scale, exif_orientation)
    images = _decode(encoded, on_gpu, exif_orientation)
    images = fn.resize(
        images,
        size=[img_size, img_size],
        roi_start=roi_start,
        roi_end=roi_end,
        roi_relative=False,
        interp_type=types.INTERP_CUBIC,
        antialias=True,
    )
    if num_ops == 0:
        return _normalize(images, mirror=flip)  # nothing between flip and normalize: fuse the flip
    images = fn.flip(images, horizontal=flip)
    images = _rand_augment(images, *ra, num_ops)
    return _normalize(images)


@pipeline_def
def eval_pipeline(
    source: Callable[[], tuple], *, img_size: int, crop_pct: float, on_gpu: bool, exif_orientation: bool = False
) -> DataNode:
    """DeiT's eval transform; `source()` returns a batch of encoded files ((bytes,) uint8 each).

    Output: (B, 3, img_size, img_size) float32.
    """
    (encoded,) = fn.external_source(source=source, num_outputs=1, batch=True, dtype=[types.UINT8])
    images = _decode(encoded, on_gpu, exif_orientation)
    images = fn.resize(images, resize_shorter=int(img_size / crop_pct), interp_type=types.INTERP_CUBIC, antialias=True)
    return _normalize(images, crop=(img_size, img_size), crop_pos_x=0.5, crop_pos_y=0.5)


@pipeline_def(batch_size=1, num_threads=1, prefetch_queue_depth=1)
def _probe_pipeline(source: Callable[[], tuple], *, on_gpu: bool, exif_orientation: bool) -> tuple[DataNode, DataNode]:
    """Reads one file the ways the loader's pipelines do (header and full decode), to tell whether it is broken."""
    (encoded,) = fn.external_source(source=source, num_outputs=1, batch=True, dtype=[types.UINT8])
    return _decode(encoded, on_gpu, exif_orientation), fn.peek_image_shape(encoded, adjust_orientation=exif_orientation)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@contextlib.contextmanager
def _native_stderr() -> Iterator[Callable[[], str]]:
    """Capture what native code writes to file descriptor 2 (DALI's decoders log there, without the file name).

    Yields a function returning the text captured so far, without color codes and "[ERROR]" tags.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:

            def text() -> str:
                tmp.seek(0)
                lines = _ANSI.sub("", tmp.read().decode(errors="replace")).replace("[ERROR] ", "").splitlines()
                return "; ".join(dict.fromkeys(line.strip() for line in lines if line.strip()))

            yield text
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _decode_error(err: Exception, logged: str) -> str:
    """Why DALI could not decode a file, from its exception and the lines its decoder logged."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    detail = next((line for line in lines if "failure" in line or "rror:" in line), lines[-1] if lines else "")
    return f"DALI could not decode it: {logged or detail}"


def _single(data: np.ndarray) -> Callable[[], tuple]:
    # No default-argument lambda: DALI passes an argument to callbacks whose signature accepts one.
    return lambda: ([data],)


class _Feeder:
    """The external_source callback: hands the stream's batches to DALI and remembers those in flight."""

    def __init__(self, train: bool, rand_augment: bool) -> None:
        self.train = train
        self.rand_augment = rand_augment
        self.stream: BatchStream | None = None
        self.in_flight: deque[ReadyBatch] = deque()
        self.error: BaseException | None = None

    def __call__(self) -> tuple:
        if self.stream is None:
            raise StopIteration
        try:
            ready = next(self.stream)
        except StopIteration:
            raise
        except BaseException as err:  # DALI wraps callback errors; keep the original to re-raise it
            self.error = err
            raise
        self.in_flight.append(ready)
        if not self.train:
            return (ready.encoded,)
        aug = ready.aug
        if self.rand_augment:
            return ready.encoded, aug.crop, aug.flip, aug.ra_ops, aug.ra_params
        return ready.encoded, aug.crop, aug.flip


class DaliLoader(ImageFileLoader):
    """ImageFileLoader decoding with DALI; see ImageFileLoader for the arguments and what it yields.

    The config's `num_threads` are DALI's worker threads and `prefetch` its prefetch queue depth.
    """

    backend = "dali"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_gpu = self.device.type == "cuda"
        self._device_id: int | None = None  # DALI's "no GPU": CPU-only pipelines
        if self._on_gpu:
            self._device_id = self.device.index if self.device.index is not None else torch.cuda.current_device()
            self.device = torch.device("cuda", self._device_id)
        self._num_ops = self.rand_augment.num_ops if self.rand_augment else 0
        self._feeder = _Feeder(train=self.mode == "train", rand_augment=self._num_ops > 0)
        self._pipe: Pipeline | None = None
        self._needs_reset = False
        self._generation = 0

    def _build(self) -> Pipeline:
        cfg = self.config
        kwargs = dict(
            source=self._feeder,
            on_gpu=self._on_gpu,
            exif_orientation=self.exif_orientation,
            img_size=cfg.img_size,
            batch_size=cfg.batch_size,
            num_threads=cfg.num_threads,
            device_id=self._device_id,
            prefetch_queue_depth=cfg.prefetch,
        )
        if self.mode == "train":
            pipe = train_pipeline(crop_scale=cfg.crop_scale, num_ops=self._num_ops, **kwargs)
        else:
            pipe = eval_pipeline(crop_pct=cfg.crop_pct, **kwargs)
        pipe.build()
        self._needs_reset = False
        return pipe

    def _drain(self) -> None:
        """Finish an abandoned epoch: let DALI run out the batches it already took, then reset it."""
        if self._feeder.stream is not None:
            self._feeder.stream.close()
        try:
            while True:
                self._pipe.run()
        except StopIteration:
            self._pipe.reset()
        except Exception:
            self._pipe = None  # a failure while draining: the next epoch gets a fresh pipeline
        self._feeder.in_flight.clear()
        self._needs_reset = False

    def _undecodable(self, batches: list[ReadyBatch]) -> dict[int, str]:
        """Decode each file of `batches` alone, as the pipeline does; the indices of those that fail, with why."""
        pending = {
            f: data
            for batch in batches
            for f, data in zip(batch.files.tolist(), batch.encoded, strict=True)
            if f >= 0 and f not in self._bad
        }
        failed = {}
        for f, data in pending.items():
            probe = _probe_pipeline(
                source=_single(data),
                on_gpu=self._on_gpu,
                exif_orientation=self.exif_orientation,
                device_id=self._device_id,
            )
            probe.build()
            with _native_stderr() as logged:
                try:
                    probe.run()
                except Exception as err:
                    failed[f] = _decode_error(err, logged())
        return failed

    def _to_torch(self, images: TensorListCPU | TensorListGPU, ready: ReadyBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Copy the pipeline's (B, 3, S, S) output into a new torch tensor (DALI reuses its buffers)."""
        dense = images.as_tensor()
        out = torch.empty(dense.shape(), dtype=torch.float32, device=self.device)
        stream = torch.cuda.current_stream(self.device) if self._on_gpu else None
        feed_ndarray(dense, out, cuda_stream=stream)
        targets = torch.from_numpy(ready.targets).to(self.device, non_blocking=True)
        return out, targets

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._generation += 1
        generation = self._generation
        if self._pipe is not None and self._needs_reset:
            self._drain()
        with ThreadPoolExecutor(max_workers=self.config.read_threads, thread_name_prefix="fastdeit-read") as pool:
            stream = self._stream(pool)
            self._feeder.stream = stream
            self._feeder.error = None
            self._feeder.in_flight.clear()
            try:
                while True:
                    if self._pipe is None:
                        self._pipe = self._build()
                    self._needs_reset = True
                    try:
                        (images,) = self._pipe.run()
                    except StopIteration:
                        self._pipe.reset()
                        self._needs_reset = False
                        break
                    except Exception as err:
                        if self._feeder.error is not None:
                            raise self._feeder.error from err
                        in_flight = list(self._feeder.in_flight)
                        failed = self._undecodable(in_flight)
                        if not failed:
                            raise
                        for f, why in failed.items():
                            self._mark_bad(f, why)
                        # Now, not at the end of the epoch: DALI has just logged errors that name no file.
                        self._report_bad()
                        self._feeder.in_flight.clear()
                        stream.redo(in_flight)
                        self._pipe = None  # DALI pipelines cannot run again after an error
                        continue
                    ready = self._feeder.in_flight.popleft()
                    yield self._to_torch(images, ready)
                    if generation != self._generation:
                        raise RuntimeError("this loader was iterated again: the previous iterator is no longer valid")
            finally:
                stream.close()
                self._report_bad()
