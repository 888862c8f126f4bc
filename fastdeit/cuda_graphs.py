"""CUDA graphs of a forward pass, for the Predictor and the benchmarks: captured once per batch shape on a static
input buffer, then replayed for every batch (one launch instead of one per kernel).

    pool = GraphPool(lambda x, pre_logits: forward(x, pre_logits), sample_shape=(3, 224, 224), device="cuda")
    out = pool.get(batch=256, variant=False).run(x)    # x (n <= 256, 3, 224, 224); out[:n], a view: clone to keep

A graph computes its captured batch size; a shorter batch (the last of a run) is copied into the first n rows of the
static input, and the rows after n keep whatever the previous batch left there: every image of a DeiT is computed
independently of the others, so the pad rows cost time but never change a real row, and their outputs are dropped.

The capture follows torch.cuda.graphs' rules: a few warm-up calls on a side stream first (lazy initialisation,
cuBLAS workspaces, Triton compilation and autotuning must not happen inside a capture), then the capture with
`capture_error_mode="thread_local"`, so that other threads (a decoder's workers still running from an earlier
batch) may make CUDA calls meanwhile: only this thread's calls could invalidate the capture.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Protocol

import torch

Outputs = torch.Tensor | tuple[torch.Tensor, ...]


class Replayable(Protocol):
    def replay(self) -> None: ...


@dataclass
class GraphedForward:
    """A captured forward: `graph.replay()` reads `inputs` (batch, *sample_shape) and writes `output` (a tensor or
    tuple of tensors, batch rows each)."""

    graph: Replayable
    inputs: torch.Tensor
    output: Outputs

    @property
    def batch(self) -> int:
        return self.inputs.shape[0]

    def run(self, x: torch.Tensor) -> Outputs:
        """The forward of x (n, *sample_shape), n <= batch: copies x into the first n input rows, replays the graph
        and returns the first n output rows: views of the static output, which the next replay overwrites."""
        n = x.shape[0]
        if tuple(x.shape[1:]) != tuple(self.inputs.shape[1:]) or not 1 <= n <= self.batch:
            raise ValueError(
                f"a graph captured for ({self.batch}, {', '.join(map(str, self.inputs.shape[1:]))}) inputs takes "
                f"1 to {self.batch} such rows, got shape {tuple(x.shape)}"
            )
        self.inputs[:n].copy_(x, non_blocking=True)
        self.graph.replay()
        if isinstance(self.output, tuple):
            return tuple(o[:n] for o in self.output)
        return self.output[:n]


def capture(fn: Callable[[torch.Tensor], Outputs], inputs: torch.Tensor, *, warmup: int = 2) -> GraphedForward:
    """Capture `fn(inputs)` in a CUDA graph; `inputs` (a CUDA tensor) becomes the graph's static input.

    `fn` runs `warmup` times on a side stream first (see the module docstring). Gradient mode (no_grad,
    inference_mode) is the caller's, as for a plain call.
    """
    if inputs.device.type != "cuda":
        raise ValueError(f"CUDA graphs need CUDA tensors, got inputs on {inputs.device}")
    # The inputs' device current: torch.cuda.graph captures on a stream of the current device.
    with torch.cuda.device(inputs.device):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                fn(inputs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            output = fn(inputs)
    return GraphedForward(graph, inputs, output)


class GraphPool:
    """The graphs of `fn(x, variant)`, one per (batch size, variant), each captured on first use on a zero-filled
    static input (batch, *sample_shape) of `dtype` on `device`.

    `variant` selects what fn computes (the Predictor: logits or pre-logits features); `capture_fn` is `capture`
    (tests stand in an eager replay on the CPU).
    """

    def __init__(
        self,
        fn: Callable[[torch.Tensor, Hashable], Outputs],
        sample_shape: tuple[int, ...],
        device: torch.device | str,
        *,
        dtype: torch.dtype = torch.float32,
        capture_fn: Callable[[Callable[[torch.Tensor], Outputs], torch.Tensor], GraphedForward] = capture,
    ) -> None:
        self.fn = fn
        self.sample_shape = tuple(sample_shape)
        self.device = torch.device(device)
        self.dtype = dtype
        self._capture = capture_fn
        self.graphs: dict[tuple[int, Hashable], GraphedForward] = {}

    def get(self, batch: int, variant: Hashable = None) -> GraphedForward:
        key = (batch, variant)
        if key not in self.graphs:
            inputs = torch.zeros(batch, *self.sample_shape, device=self.device, dtype=self.dtype)
            self.graphs[key] = self._capture(lambda x: self.fn(x, variant), inputs)
        return self.graphs[key]
