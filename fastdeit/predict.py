"""Batch inference with DeiT: top-k classes and pre-logits embeddings of image files, folders or tensors.

    import fastdeit
    predictor = fastdeit.Predictor("deit_small_patch16_224", checkpoint="deit_small_patch16_224.pth")
    preds = predictor.predict("photos/", topk=5)         # a folder (recursive), file paths, or a (B, 3, H, W) tensor
    for p in preds:
        print(p.source, p.labels[0], p.probs[0])
    feats = predictor.embed(["a.jpg", "b.png"])           # (2, 384) float32: forward_head(pre_logits=True)
    print(predictor.last_report.summary())                # images/s, and where the time went

Files are decoded by DALI (nvJPEG on the GPU when the model is on one, else its CPU decoder) with DeiT's eval
transform (shorter side resized to img_size / crop_pct, bicubic; center crop; ImageNet normalization), a few
batches ahead of the model (fastdeit.data.build_predict_loader); PIL is the fallback where DALI cannot be imported.
Unreadable, truncated and non-image files are skipped, named in a DataWarning and listed in the report.

On a CUDA GPU the model runs the throughput path:
- bf16 weights and activations (`dtype="auto"`; fp32 on the CPU, where bf16 is slower and only emulated), softmax
  and outputs in fp32;
- channels-last input to the patch-embedding convolution (its output then flattens to tokens without a copy);
- the largest batch that fits (`batch_size="auto"`): the largest power of two up to 1024 that runs without running
  out of memory, probed once and cached in ~/.cache/fastdeit/predict_batch_sizes.json per model, dtype, backend
  and GPU;
- CUDA graphs (`cuda_graphs=True`) of the forward: one per batch shape (and logits or features), captured on first
  use before decoding starts; the last, shorter batch is padded to the captured size and its pad rows dropped;
- pinned-memory, non-blocking copies for batches decoded on the CPU (PIL) and for the results, with at most two
  batches in flight, so the CPU prepares the next batch while the GPU runs this one.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import torch
from tqdm import tqdm

from fastdeit.batch_size import BatchSizeCache, default_cache_path, free_memory, is_oom
from fastdeit.checkpoint import from_pretrained, load_checkpoint
from fastdeit.constants import DEFAULT_CROP_PCT, IMAGENET_MEAN, IMAGENET_STD
from fastdeit.data import DataWarning, LoaderConfig, build_predict_loader, dali_available
from fastdeit.data.common import describe_files
from fastdeit.data.folder import IMG_EXTENSIONS
from fastdeit.data.loader import ImageFileLoader
from fastdeit.models import VisionTransformer, create_model

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DECODERS = ("auto", "dali", "pil")
MAX_BATCH = 1024  # larger batches gain no throughput and make the padded last batch costlier
CPU_BATCH = 32
_IN_FLIGHT = 2  # GPU batches whose results may still be on their way to the CPU

ImageInput = torch.Tensor | str | os.PathLike | Sequence[str | os.PathLike]


# ------------------------------------------------------------------------------------------------ labels


def read_labels(path: str | os.PathLike) -> tuple[str, ...]:
    """Class names from a text file: one per line in class-index order; blank lines and lines starting with '#'
    are ignored."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"labels file {str(path)!r} not found")
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return tuple(line for line in lines if line and not line.startswith("#"))


@functools.cache
def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names shipped with fastdeit (fastdeit/data/imagenet_classes.txt).

    They are the first WordNet lemma of each synset, as in Keras' imagenet_class_index.json (the list pytorch/hub
    also ships as imagenet_classes.txt): 0 "tench", 1 "goldfish", ..., 999 "toilet tissue".
    """
    with resources.as_file(resources.files("fastdeit.data") / "imagenet_classes.txt") as path:
        return read_labels(path)


# ------------------------------------------------------------------------------------------------ inputs


class ImageFiles(list[str]):
    """Image file paths found by `collect_images`, with the files it left out (`skipped`: path -> reason)."""

    def __init__(self, files: Sequence[str], skipped: dict[str, str]) -> None:
        super().__init__(files)
        self.skipped = skipped


def collect_images(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> ImageFiles:
    """The image files named by `paths`, in order, and the files left out.

    Files are kept as given, whatever their extension (the loader checks their content). Directories are walked
    recursively in sorted order, ignoring hidden entries; their files whose extension is not an image type are
    left out and named in one DataWarning.

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
            for dirpath, dirnames, filenames in os.walk(path, followlinks=True):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in sorted(f for f in filenames if not f.startswith(".")):
                    file = os.path.join(dirpath, name)
                    ext = os.path.splitext(name)[1].lower()
                    if ext in IMG_EXTENSIONS:
                        files.append(file)
                    else:
                        skipped[file] = f"extension {ext or '(none)'!r} is not an image type"
        elif os.path.exists(path):
            files.append(path)
        else:
            raise FileNotFoundError(f"input path {path!r} does not exist")
    if skipped:
        warnings.warn(
            f"skipped {len(skipped)} non-image file(s): {describe_files(list(skipped.items()))}",
            DataWarning,
            stacklevel=2,
        )
    if not files:
        shown = ", ".join(repr(p) for p in paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
        raise ValueError(f"no image files in {shown} (image extensions: {', '.join(sorted(IMG_EXTENSIONS))})")
    return ImageFiles(files, skipped)


def load_model(
    model: str | os.PathLike | VisionTransformer,
    *,
    checkpoint: str | os.PathLike | None = None,
    num_classes: int | None = None,
    backend: str = "auto",
    use_ema: bool = False,
) -> VisionTransformer:
    """A DeiT model from a name (`fastdeit.list_models()`), a `save_pretrained` folder, or an instance as is;
    then the weights of `checkpoint`, if given.

    `num_classes` defaults to 1000 for a name and to the model's own otherwise; a model or checkpoint with another
    class count raises ValueError.
    """
    if isinstance(model, VisionTransformer):
        built = model
    elif isinstance(model, str | os.PathLike):
        path = Path(model).expanduser()
        if path.is_dir():
            built = from_pretrained(path, backend=backend)
        elif os.sep in os.fspath(model) or path.suffix:
            raise FileNotFoundError(
                f"model {os.fspath(model)!r} is neither a model name nor a save_pretrained folder "
                "(weights files go to checkpoint)"
            )
        else:
            classes = 1000 if num_classes is None else num_classes
            built = create_model(os.fspath(model), num_classes=classes, backend=backend)
    else:
        raise TypeError(f"model must be a model name, a save_pretrained folder or a VisionTransformer, got {model!r}")
    if num_classes is not None and built.num_classes != num_classes:
        raise ValueError(f"num_classes={num_classes} but the model has {built.num_classes} classes")
    if checkpoint is not None:
        load_checkpoint(built, checkpoint, use_ema=use_ema)
    return built


# ------------------------------------------------------------------------------------------------ results


@dataclass(frozen=True)
class RunReport:
    """What one `predict`/`embed` call did and where its time went.

    `wait_seconds` is the time the model waited for decoded batches (the decoder's start-up, and decoding the
    prefetch did not hide);
    `model_seconds` the rest of the loop: host-to-device copies, the forward passes and waiting for the GPU.
    `setup_seconds` (batch-size probe, CUDA graph capture) comes before and is not part of the throughput.
    """

    model: str
    images: int
    skipped: dict[str, str]
    batch_size: int
    device: str
    dtype: str
    cuda_graphs: bool
    decoder: str
    setup_seconds: float
    wait_seconds: float
    model_seconds: float

    @property
    def seconds(self) -> float:
        return self.wait_seconds + self.model_seconds

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """A few lines for people: throughput, where the time went, skipped files."""
        total = max(self.seconds, 1e-9)
        graphs = ", CUDA graphs" if self.cuda_graphs else ""
        lines = [
            f"{self.images} images in {self.seconds:.2f} s: {self.images_per_second:.1f} images/s "
            f"({self.model}, {self.device}, {self.dtype}, batch {self.batch_size}{graphs}; decoder: {self.decoder})",
            f"time: waiting for decoded batches {self.wait_seconds:.2f} s ({self.wait_seconds / total:.0%}), "
            f"model {self.model_seconds:.2f} s ({self.model_seconds / total:.0%}); "
            f"setup (batch-size probe, graph capture) {self.setup_seconds:.2f} s",
        ]
        if self.skipped:
            total_files = self.images + len(self.skipped)
            lines.append(f"skipped {len(self.skipped)} of {total_files} files (named in the warnings)")
        return "\n".join(lines)


@dataclass(frozen=True)
class Prediction:
    """The top-k classes of one image, most probable first; `source` is its file path (or row, for a tensor)."""

    source: str | int
    indices: tuple[int, ...]
    probs: tuple[float, ...]
    labels: tuple[str, ...] | None


@dataclass(frozen=True)
class Predictions:
    """Top-k classes of every image that could be read, in input order; iterate or index for `Prediction`s.

    Attributes:
        indices: (N, k) int64 class indices, most probable first.
        probs: (N, k) float32 softmax probabilities.
        sources: the file path of each row (its row in the input batch, for tensor input).
        label_names: the name of every class index, or None when unknown.
        report: timings and skipped files of the run.
    """

    indices: torch.Tensor
    probs: torch.Tensor
    sources: list[str | int]
    label_names: tuple[str, ...] | None
    report: RunReport

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int) -> Prediction:
        indices = tuple(self.indices[i].tolist())
        labels = tuple(self.label_names[c] for c in indices) if self.label_names is not None else None
        return Prediction(self.sources[i], indices, tuple(self.probs[i].tolist()), labels)

    def __iter__(self) -> Iterator[Prediction]:
        return (self[i] for i in range(len(self)))


# ------------------------------------------------------------------------------------------------ device helpers


@dataclass
class _Graph:
    """A captured forward: `graph.replay()` reads `inputs` (batch, 3, S, S) float32 and writes `output`."""

    graph: torch.cuda.CUDAGraph
    inputs: torch.Tensor
    output: torch.Tensor


class _HostCollector:
    """Moves each batch's outputs to the CPU, in order.

    From a GPU the copies are asynchronous, into pinned memory, with at most `_IN_FLIGHT` batches outstanding: the
    CPU queues batch i + 1 while the GPU runs batch i, and the time the CPU waits for the GPU is counted where it
    belongs (the model). Finished batches move to pageable memory, so the pinned blocks are reused.
    """

    def __init__(self) -> None:
        self._done: list[tuple[torch.Tensor, ...]] = []
        self._pending: deque[tuple[torch.cuda.Event, tuple[torch.Tensor, ...]]] = deque()

    def add(self, tensors: tuple[torch.Tensor, ...]) -> None:
        if not any(t.is_cuda for t in tensors):
            self._done.append(tensors)
            return
        host = tuple(
            torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t, non_blocking=True) if t.is_cuda else t
            for t in tensors
        )
        event = torch.cuda.Event()
        event.record()
        self._pending.append((event, host))
        while len(self._pending) > _IN_FLIGHT:
            self._retire()

    def _retire(self) -> None:
        event, host = self._pending.popleft()
        event.synchronize()
        self._done.append(tuple(torch.empty(t.shape, dtype=t.dtype).copy_(t) if t.is_pinned() else t for t in host))

    def finish(self) -> list[torch.Tensor] | None:
        """The outputs of all batches concatenated along the batch dimension (None if there were none)."""
        while self._pending:
            self._retire()
        if not self._done:
            return None
        return [torch.cat(parts) for parts in zip(*self._done, strict=True)]


def _resolve_device(device: str | torch.device) -> torch.device:
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from e
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} was asked for but torch sees no CUDA GPU; use 'cpu' or 'auto'")
        resolved = torch.device("cuda", resolved.index if resolved.index is not None else torch.cuda.current_device())
    elif resolved.type != "cpu":
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return resolved


def _resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be 'auto', {', '.join(map(repr, DTYPES))} or such a torch dtype, got {dtype!r}")
    return DTYPES[dtype]


def _dtype_name(dtype: torch.dtype) -> str:
    return next(name for name, d in DTYPES.items() if d == dtype)


def _next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


# ------------------------------------------------------------------------------------------------ predictor


class Predictor:
    """Top-k classes and embeddings of images with a DeiT model, at full speed on a GPU (see the module docstring).

    Args:
        model: a model name (`fastdeit.list_models()`), a `save_pretrained` folder, or a VisionTransformer (moved,
            cast and put in eval mode in place).
        checkpoint: weights to load, in any format `fastdeit.load_checkpoint` reads.
        num_classes: class count of the head (default: 1000 for a model name, the model's own otherwise).
        labels: class names, one per class index: a sequence, or a file with one name per line. Default: the
            ImageNet-1k names for a 1000-class head, none otherwise.
        device: "auto" (CUDA when present), "cpu", "cuda" or "cuda:N".
        dtype: "auto" (bf16 on CUDA, fp32 on the CPU), "bf16", "fp16" or "fp32": the dtype of the weights and
            activations; probabilities and embeddings are returned in fp32.
        batch_size: "auto" (on CUDA the largest power of two up to 1024 that fits, probed once and cached; 32 on
            the CPU) or a number. A run with fewer images uses the next power of two above their count.
        cuda_graphs: replay the forward as a CUDA graph per batch shape (CUDA only).
        decoder: "auto" (DALI if importable, else PIL), "dali" or "pil".
        num_threads: decoding threads (default: the CPU count, at most 8).
        backend: the model's kernels when it is built here: "auto" (fused Triton kernels on CUDA), "triton", "torch".
        use_ema: load the EMA weights of a fastdeit training checkpoint.

    Raises ValueError (unknown model, head/checkpoint/labels of another class count, unavailable device or
    decoder) and FileNotFoundError (missing checkpoint or labels file) here, before any image is read.
    """

    def __init__(
        self,
        model: str | os.PathLike | VisionTransformer,
        *,
        checkpoint: str | os.PathLike | None = None,
        num_classes: int | None = None,
        labels: str | os.PathLike | Sequence[str] | None = None,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        batch_size: int | Literal["auto"] = "auto",
        cuda_graphs: bool = True,
        decoder: Literal["auto", "dali", "pil"] = "auto",
        num_threads: int | None = None,
        backend: str = "auto",
        use_ema: bool = False,
    ) -> None:
        self.device = _resolve_device(device)
        self.dtype = _resolve_dtype(dtype, self.device)
        if batch_size != "auto" and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size must be 'auto' or a positive integer, got {batch_size!r}")
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        if decoder == "dali" and not dali_available():
            raise ValueError("decoder='dali' but DALI cannot be imported (pip install nvidia-dali-cuda130); use 'auto'")
        self.batch_size = batch_size
        self.cuda_graphs = bool(cuda_graphs) and self.device.type == "cuda"
        self.decoder = decoder
        self.num_threads = num_threads

        model = load_model(model, checkpoint=checkpoint, num_classes=num_classes, backend=backend, use_ema=use_ema)
        self.label_names = self._resolve_labels(labels, model.num_classes)
        height, width = model.img_size
        if height != width:
            raise ValueError(f"the image loader makes square crops; the model takes {height}x{width} images")
        cfg = getattr(model, "pretrained_cfg", None) or {}
        norm = (tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD)))
        if norm != (IMAGENET_MEAN, IMAGENET_STD):
            raise ValueError(f"the image loader normalizes with the ImageNet mean/std; the model expects {cfg}")
        self.img_size = height
        self.crop_pct = float(cfg.get("crop_pct", DEFAULT_CROP_PCT))
        self.model_name = getattr(model, "model_name", type(model).__name__)
        # The conv weight in channels-last too, so cuDNN runs the patch embedding in NHWC without converting.
        self.model = model.eval().to(device=self.device, dtype=self.dtype, memory_format=torch.channels_last)
        self.num_classes = model.num_classes
        self.embed_dim = model.embed_dim
        self._max_batch: int | None = None
        self._graphs: dict[tuple[int, bool], _Graph] = {}
        self.last_report: RunReport | None = None
        self._last_sources: list[str | int] = []

    @staticmethod
    def _resolve_labels(labels: str | os.PathLike | Sequence[str] | None, num_classes: int) -> tuple[str, ...] | None:
        if labels is None:
            return imagenet_labels() if num_classes == 1000 else None
        names = read_labels(labels) if isinstance(labels, str | os.PathLike) else tuple(str(n) for n in labels)
        if len(names) != num_classes:
            source = f"labels file {os.fspath(labels)!r}" if isinstance(labels, str | os.PathLike) else "labels"
            raise ValueError(f"{source} has {len(names)} names but the model has {num_classes} classes")
        return names

    # --- public API -------------------------------------------------------------------------------------------

    def predict(self, images: ImageInput, topk: int = 5, *, progress: bool = False) -> Predictions:
        """The `topk` most probable classes of each image.

        Args:
            images: a (B, 3, S, S) float tensor already preprocessed (S the model's image size), image file paths,
                or directories (walked recursively).
            topk: classes per image, at most the model's class count.
            progress: show a progress bar (images/s) on stderr.

        Returns:
            Predictions with indices (N, topk) int64 and probs (N, topk) float32 on the CPU; N counts the images
            that could be read (skipped files are in `report.skipped`).
        """
        if self.num_classes == 0:
            raise ValueError("the model has no classifier head (num_classes=0); use embed()")
        if isinstance(topk, bool) or not isinstance(topk, int) or not 1 <= topk <= self.num_classes:
            raise ValueError(f"topk must be an integer in [1, {self.num_classes}], got {topk!r}")
        outputs, sources, report = self._run(images, topk, progress)
        if outputs is None:
            outputs = [torch.empty(0, topk, dtype=torch.int64), torch.empty(0, topk)]
        return Predictions(outputs[0], outputs[1], sources, self.label_names, report)

    def embed(self, images: ImageInput, *, progress: bool = False) -> torch.Tensor:
        """Pre-logits features of each image, as timm's `forward_head(x, pre_logits=True)`.

        `images` as for `predict`. Returns (N, embed_dim) float32 on the CPU, one row per image that could be read;
        `last_report` names the skipped files and `last_sources` the file (or input row) of each row.
        """
        outputs, _, _ = self._run(images, None, progress)
        return outputs[0] if outputs is not None else torch.empty(0, self.embed_dim)

    @property
    def last_sources(self) -> list[str | int]:
        """The file path (or input row) of each output row of the last `predict`/`embed` call."""
        return self._last_sources

    # --- the loop ---------------------------------------------------------------------------------------------

    def _run(
        self, images: ImageInput, topk: int | None, progress: bool
    ) -> tuple[list[torch.Tensor] | None, list[str | int], RunReport]:
        """Run the model over `images`; topk=None returns features. Returns (outputs, sources, report)."""
        files: list[str] = []
        skipped: dict[str, str] = {}
        if isinstance(images, torch.Tensor):
            self._check_tensor(images)
            count = images.shape[0]
        else:
            # An ImageFiles (the CLI checks its inputs before loading the model) is not walked again.
            found = images if isinstance(images, ImageFiles) else collect_images(images)
            files, skipped = list(found), dict(found.skipped)
            count = len(files)
        on_gpu = self.device.type == "cuda"
        with torch.no_grad(), torch.cuda.device(self.device) if on_gpu else contextlib.nullcontext():
            setup = time.perf_counter()
            batch = self._batch_for(count)
            # Before decoding starts: the probe must see the memory the model alone needs, and no decoder work
            # on the GPU may overlap a capture.
            if self.cuda_graphs:
                self._graph(batch, topk is None)
            setup = time.perf_counter() - setup
            loader = None
            if isinstance(images, torch.Tensor):
                batches, decoder = self._tensor_batches(images, batch), "none (tensor input)"
            else:
                loader, decoder = self._loader(files, batch)
                batches = iter(loader)

            collector = _HostCollector()
            wait = model = 0.0
            with tqdm(total=count, unit="img", disable=not progress, dynamic_ncols=True, leave=False) as bar:
                while True:
                    start = time.perf_counter()
                    item = next(batches, None)
                    wait += time.perf_counter() - start
                    if item is None:
                        break
                    start = time.perf_counter()
                    x, rows = item
                    out = self._forward(x, batch, pre_logits=topk is None)
                    if topk is None:
                        collector.add((rows, out))
                    else:
                        probs, indices = out.softmax(dim=-1).topk(topk, dim=-1)
                        collector.add((rows, indices, probs))
                    model += time.perf_counter() - start
                    bar.update(x.shape[0])
            start = time.perf_counter()
            gathered = collector.finish()
            model += time.perf_counter() - start

        outputs, sources = None, []
        if gathered is not None:
            rows, *outputs = gathered
            sources = rows.tolist() if not files else [files[i] for i in rows.tolist()]
        if loader is not None:
            skipped.update(loader.skipped_files)
        report = RunReport(
            model=self.model_name,
            images=len(sources),
            skipped=skipped,
            batch_size=batch,
            device=str(self.device),
            dtype=_dtype_name(self.dtype),
            cuda_graphs=self.cuda_graphs,
            decoder=decoder,
            setup_seconds=setup,
            wait_seconds=wait,
            model_seconds=model,
        )
        self.last_report, self._last_sources = report, sources
        return outputs, sources, report

    def _check_tensor(self, images: torch.Tensor) -> None:
        expected = (3, self.img_size, self.img_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected or not images.is_floating_point():
            raise ValueError(
                f"images must be a preprocessed float batch of shape (B, {', '.join(map(str, expected))}), "
                f"got {images.dtype} {tuple(images.shape)}"
            )
        if images.shape[0] == 0:
            raise ValueError("images is an empty batch")

    def _tensor_batches(self, images: torch.Tensor, batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, images.shape[0], batch):
            chunk = images[start : start + batch]
            yield chunk, torch.arange(start, start + chunk.shape[0])

    def _loader(self, files: list[str], batch: int) -> tuple[ImageFileLoader, str]:
        """The predict loader over `files`, and the decoder it uses, in words."""
        use_dali = self.decoder == "dali" or (self.decoder == "auto" and dali_available())
        # DALI decodes on the model's GPU (nvJPEG, "mixed") and hands over CUDA tensors; PIL decodes on the CPU, and
        # its batches travel through pinned memory in _forward.
        on_gpu = use_dali and self.device.type == "cuda"
        config = LoaderConfig(
            img_size=self.img_size,
            batch_size=batch,
            crop_pct=self.crop_pct,
            num_threads=self.num_threads,
            backend=self.decoder,
        )
        loader = build_predict_loader(files, config, device=self.device if on_gpu else "cpu")
        if not use_dali:
            why = "decoder='pil'" if self.decoder == "pil" else "DALI is not importable"
            return loader, f"PIL on the CPU ({why})"
        return loader, "DALI on the GPU (nvJPEG)" if on_gpu else "DALI on the CPU"

    # --- batch size -------------------------------------------------------------------------------------------

    def _batch_for(self, count: int) -> int:
        """The batch of a run over `count` images: the predictor's batch size, or the power of two just above
        `count` when that is smaller (few images capture a small graph, and few graph sizes ever exist)."""
        wanted = _next_pow2(count)
        if self.batch_size != "auto":
            return min(self.batch_size, wanted)
        if self.device.type != "cuda" or wanted <= CPU_BATCH:
            return min(CPU_BATCH, wanted)  # 32 images of any DeiT fit on any GPU: no probe needed
        if self._max_batch is None:
            self._max_batch = self._probe_batch_size()
        return min(self._max_batch, wanted)

    def _probe_batch_size(self) -> int:
        """The largest power of two up to MAX_BATCH whose forward fits in GPU memory, cached on disk.

        Powers of two only (no bisection to the exact limit) leave headroom for what the probe does not see: DALI's
        decoding buffers and the CUDA graph's memory pool. They are tried from MAX_BATCH down, halving on out of
        memory, rather than doubling up, so the first size that fits is the one used (and autotuned for).
        """

        cache = BatchSizeCache(default_cache_path().with_name("predict_batch_sizes.json"))
        config = json.dumps(getattr(self.model, "model_config", None), sort_keys=True, default=str)
        key = BatchSizeCache.key(
            "predict", self.model_name, config, self.img_size, self.embed_dim, _dtype_name(self.dtype),
            getattr(self.model, "backend", "?"), torch.cuda.get_device_name(self.device),
        )  # fmt: skip
        cached = cache.get(key, MAX_BATCH)
        if cached is not None:
            return cached
        batch = MAX_BATCH
        while batch >= 1:
            oom = False
            try:
                self._step(torch.randn(batch, 3, self.img_size, self.img_size, device=self.device), False)
                torch.cuda.synchronize(self.device)
            except Exception as err:
                if not is_oom(err):
                    raise
                oom = True
            if not oom:
                cache.set(key, batch, MAX_BATCH)
                return batch
            free_memory()  # outside the except block, whose traceback holds the failed step's tensors
            batch //= 2
        raise RuntimeError(f"{self.model_name} does not fit in GPU memory even at batch size 1")

    # --- forward ----------------------------------------------------------------------------------------------

    def _step(self, x: torch.Tensor, pre_logits: bool) -> torch.Tensor:
        """x (B, 3, S, S) -> logits (B, num_classes) float32, or features (B, embed_dim) float32 if `pre_logits`."""
        # One copy casts to the model dtype and makes the input channels-last: the patch-embedding conv then runs
        # in NHWC and its output flattens to (B, tokens, D) without a transpose copy.
        x = x.to(self.dtype, memory_format=torch.channels_last)
        return self.model.forward_head(self.model.forward_features(x), pre_logits=pre_logits).float()

    def _graph(self, batch: int, pre_logits: bool) -> _Graph:
        """The CUDA graph of `_step` at this batch size, captured on first use."""
        key = (batch, pre_logits)
        if key not in self._graphs:
            inputs = torch.zeros(batch, 3, self.img_size, self.img_size, device=self.device)
            # Warm up on a side stream, as torch.cuda.graphs asks: lazy initialization (cuBLAS workspaces, Triton
            # compilation and autotuning) must happen before the capture.
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(2):
                    self._step(inputs, pre_logits)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            # thread_local: the worker threads of a decoder still alive from an earlier run may make CUDA calls;
            # only this thread's calls could invalidate the capture.
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                output = self._step(inputs, pre_logits)
            self._graphs[key] = _Graph(graph, inputs, output)
        return self._graphs[key]

    def _forward(self, x: torch.Tensor, batch: int, pre_logits: bool) -> torch.Tensor:
        """`_step` of the n <= batch images of x, on the model's device."""
        n = x.shape[0]
        if x.device.type == "cpu" and self.device.type == "cuda":
            # Through pinned memory the host-to-device copy is asynchronous; the caching host allocator keeps the
            # pinned block until the copy is done.
            x = x.pin_memory()
        if not self.cuda_graphs:
            return self._step(x.to(self.device, non_blocking=True), pre_logits)
        graph = self._graph(batch, pre_logits)
        # Rows n: keep whatever the previous batch left: every image is computed independently and pad rows are
        # dropped, so a short last batch runs the graph captured for the full batch.
        graph.inputs[:n].copy_(x, non_blocking=True)
        graph.graph.replay()
        # A copy (B x num_classes floats, negligible next to the forward): the next replay overwrites the output.
        return graph.output[:n].clone()
