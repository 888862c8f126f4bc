"""A stand-in for CUDA graphs on the CPU, so that the bookkeeping around them (static buffers, padded last batch,
one graph per shape) is tested on any machine; the real capture is tested on a GPU."""

from __future__ import annotations

from collections.abc import Callable

import torch

from fastdeit.cuda_graphs import GraphedForward


class EagerGraph:
    """Replays run the captured function eagerly on the static input and write the static output in place, as a
    CUDA graph's replay does; `replays` records the batch of each replay."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, replays: list[int]) -> None:
        self.fn, self.inputs, self.replays = fn, inputs, replays
        self.output = fn(inputs)

    def replay(self) -> None:
        self.replays.append(self.inputs.shape[0])
        out = self.fn(self.inputs)
        if isinstance(out, tuple):
            for static, new in zip(self.output, out, strict=True):
                static.copy_(new)
        else:
            self.output.copy_(out)


def eager_capture(replays: list[int]) -> Callable[[Callable, torch.Tensor], GraphedForward]:
    """A `capture_fn` for fastdeit.cuda_graphs.GraphPool that builds EagerGraphs recording into `replays`."""

    def capture(fn: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor) -> GraphedForward:
        graph = EagerGraph(fn, inputs, replays)
        return GraphedForward(graph, inputs, graph.output)

    return capture
