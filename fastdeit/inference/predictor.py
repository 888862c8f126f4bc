"""The Predictor: runs a DeiT model over image files, folders or tensors, at full speed on a GPU.

The loop: batches from the predict loader (or the tensor), each through the model (eagerly or as a CUDA graph
replay, fastdeit.cuda_graphs), outputs collected on the CPU (`_HostCollector`). The pieces it uses: inputs.py (file
discovery, tensor checks), labels.py (class names), results.py (what it returns), fastdeit.batch_size (the largest
batch that fits), fastdeit.cuda_graphs (capture and replay). See the package docstring for the GPU path.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Literal

import torch
from tqdm import tqdm

from fastdeit._env import cache_dir
from fastdeit.batch_size import BatchSizeCache, find_max_batch
from fastdeit.constants import IMAGENET_MEAN, IMAGENET_STD
from fastdeit.cuda_graphs import GraphPool
from fastdeit.data import LoaderConfig, build_predict_loader, dali_available
from fastdeit.data.loader import ImageFileLoader
from fastdeit.inference.inputs import ImageFiles, ImageInput, check_image_tensor, collect_images, normalise_pixels
from fastdeit.inference.labels import resolve_labels
from fastdeit.inference.results import Embeddings, Predictions, RunReport
from fastdeit.models import VisionTransformer, load_model

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DECODERS = ("auto", "dali", "pil")
DEFAULT_TOPK = 5
MAX_BATCH = 1024  # larger batches gain no throughput and make the padded last batch costlier
CPU_BATCH = 32
_IN_FLIGHT = 2  # GPU batches whose results may still be on their way to the CPU


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


class Predictor:
    """Top-k classes and embeddings of images with a DeiT model, at full speed on a GPU (see fastdeit.inference).

    Args:
        model: a model name (`fastdeit.list_models()`), a saved model (`save_pretrained` or Hugging Face folder,
            training checkpoint or run folder; see `fastdeit.load_model`), or a VisionTransformer (moved, cast and
            put in eval mode in place).
        checkpoint: weights to load, in any format `fastdeit.load_checkpoint` reads.
        num_classes: class count of the head (default: 1000 for a model name, the model's own otherwise).
        labels: class names, one per class index: a sequence, or a file with one name per line. Default: the names
            the model records (`model.class_names`), else ImageNet-1k's for a 1000-class head, else none. Labels
            other than the recorded names are used with a warning naming both; the recorded names in another order
            raise ValueError.
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
        img_size: build the model at this input size (its position embedding resampled; see `load_model`).

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
        img_size: int | None = None,
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

        model = load_model(
            model, checkpoint=checkpoint, num_classes=num_classes, img_size=img_size, backend=backend, use_ema=use_ema
        )
        if not isinstance(model, VisionTransformer):
            raise ValueError(f"the Predictor runs DeiT models; this is {model.config.describe()}")
        self.label_names = resolve_labels(labels, model.num_classes, model.class_names)
        height, width = model.img_size
        if height != width:
            raise ValueError(f"the image loader makes square crops; the model takes {height}x{width} images")
        config = model.config
        if (config.mean, config.std) != (IMAGENET_MEAN, IMAGENET_STD):
            raise ValueError(
                f"the image loader normalizes with the ImageNet mean/std; the model expects {model.pretrained_cfg}"
            )
        self.img_size = height
        self.mean, self.std, self.crop_pct = config.mean, config.std, config.crop_pct
        self.model_name = getattr(model, "model_name", type(model).__name__)
        # The conv weight in channels-last too, so cuDNN runs the patch embedding in NHWC without converting.
        self.model = model.eval().to(device=self.device, dtype=self.dtype, memory_format=torch.channels_last)
        self.num_classes = model.num_classes
        self.embed_dim = model.embed_dim
        self._max_batch: int | None = None
        self._graphs = GraphPool(self._step, (3, self.img_size, self.img_size), self.device)

    # --- public API -------------------------------------------------------------------------------------------

    def predict(self, images: ImageInput, topk: int | None = None, *, progress: bool = False) -> Predictions:
        """The `topk` most probable classes of each image.

        Args:
            images: image file paths or directories (walked recursively), or a (B, 3, S, S) tensor at the model's
                image size S: float and preprocessed, or uint8 pixels (see fastdeit.inference.inputs).
            topk: classes per image, at most the model's class count; default 5, or all of a model with fewer.
            progress: show a progress bar (images/s) on stderr.

        Returns:
            Predictions with indices (N, topk) int64 and probs (N, topk) float32 on the CPU; N counts the images
            that could be read (skipped files are in `report.skipped`).
        """
        if self.num_classes == 0:
            raise ValueError("the model has no classifier head (num_classes=0); use embed()")
        if topk is None:
            topk = min(DEFAULT_TOPK, self.num_classes)
        if isinstance(topk, bool) or not isinstance(topk, int) or not 1 <= topk <= self.num_classes:
            raise ValueError(f"topk must be an integer in [1, {self.num_classes}], got {topk!r}")
        outputs, sources, report = self._run(images, topk, progress)
        if outputs is None:
            outputs = [torch.empty(0, topk, dtype=torch.int64), torch.empty(0, topk)]
        return Predictions(outputs[0], outputs[1], sources, self.label_names, report)

    def embed(self, images: ImageInput, *, progress: bool = False) -> Embeddings:
        """Pre-logits features of each image, as timm's `forward_head(x, pre_logits=True)`.

        `images` as for `predict`. Returns Embeddings: features (N, embed_dim) float32 on the CPU, one row per image
        that could be read, the file (or input row) of each row, and the run's report.
        """
        outputs, sources, report = self._run(images, None, progress)
        features = outputs[0] if outputs is not None else torch.empty(0, self.embed_dim)
        return Embeddings(features, sources, report)

    # --- the loop ---------------------------------------------------------------------------------------------

    def _run(
        self, images: ImageInput, topk: int | None, progress: bool
    ) -> tuple[list[torch.Tensor] | None, list[str | int], RunReport]:
        """Run the model over `images`; topk=None returns features. Returns (outputs, sources, report)."""
        files: list[str] = []
        skipped: dict[str, str] = {}
        if isinstance(images, torch.Tensor):
            check_image_tensor(images, self.img_size)
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
                self._graphs.get(batch, topk is None)
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
        return outputs, sources, report

    def _tensor_batches(self, images: torch.Tensor, batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, images.shape[0], batch):
            chunk = images[start : start + batch]
            if chunk.dtype == torch.uint8:
                # Converted on the model's device: a quarter of the bytes of float32 cross to it.
                chunk = normalise_pixels(chunk.to(self.device), self.mean, self.std)
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
        cache = BatchSizeCache(cache_dir() / "predict_batch_sizes.json")
        # The architecture decides the memory; the class names do not (and would make the key kilobytes long).
        architecture = {k: v for k, v in self.model.model_config.items() if k != "class_names"}
        config = json.dumps(architecture, sort_keys=True, default=str)
        key = BatchSizeCache.key(
            "predict", self.model_name, config, self.img_size, self.embed_dim, _dtype_name(self.dtype),
            getattr(self.model, "backend", "?"), torch.cuda.get_device_name(self.device),
        )  # fmt: skip

        def step(batch: int) -> None:
            self._step(torch.randn(batch, 3, self.img_size, self.img_size, device=self.device), False)
            torch.cuda.synchronize(self.device)

        probe = lambda: find_max_batch(step, start=MAX_BATCH, cap=MAX_BATCH, what=self.model_name)
        return cache.get_or_probe(key, MAX_BATCH, probe)

    # --- forward ----------------------------------------------------------------------------------------------

    def _step(self, x: torch.Tensor, pre_logits: bool) -> torch.Tensor:
        """x (B, 3, S, S) -> logits (B, num_classes) float32, or features (B, embed_dim) float32 if `pre_logits`."""
        # One copy casts to the model dtype and makes the input channels-last: the patch-embedding conv then runs
        # in NHWC and its output flattens to (B, tokens, D) without a transpose copy.
        x = x.to(self.dtype, memory_format=torch.channels_last)
        return self.model.forward_head(self.model.forward_features(x), pre_logits=pre_logits).float()

    def _forward(self, x: torch.Tensor, batch: int, pre_logits: bool) -> torch.Tensor:
        """`_step` of the n <= batch images of x, on the model's device."""
        if x.device.type == "cpu" and self.device.type == "cuda":
            # Through pinned memory the host-to-device copy is asynchronous; the caching host allocator keeps the
            # pinned block until the copy is done.
            x = x.pin_memory()
        if not self.cuda_graphs:
            return self._step(x.to(self.device, non_blocking=True), pre_logits)
        # A short last batch runs the graph captured for the full batch (fastdeit.cuda_graphs pads it). A copy
        # (B x num_classes floats, negligible next to the forward): the next replay overwrites the output.
        return self._graphs.get(batch, pre_logits).run(x).clone()
