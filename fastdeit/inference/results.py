"""What `Predictor.predict` and `Predictor.embed` return: the outputs, the source of each row, and a report of the
run (throughput, where the time went, skipped files)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch


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


@dataclass(frozen=True)
class Embeddings:
    """Pre-logits features of every image that could be read, in input order.

    Attributes:
        features: (N, embed_dim) float32, as timm's `forward_head(x, pre_logits=True)`.
        sources: the file path of each row (its row in the input batch, for tensor input).
        report: timings and skipped files of the run.
    """

    features: torch.Tensor
    sources: list[str | int]
    report: RunReport

    def __len__(self) -> int:
        return len(self.sources)
