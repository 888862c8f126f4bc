"""fastdeit.cuda_graphs: the static-buffer bookkeeping (padding a short batch, one graph per shape and variant) on
the CPU with graphs replayed eagerly; the real capture on a GPU."""

from __future__ import annotations

import pytest
import torch

from fastdeit.cuda_graphs import GraphedForward, GraphPool, capture
from tests.graph_helpers import EagerGraph, eager_capture


def rowwise(x: torch.Tensor) -> torch.Tensor:
    """A function computing every row independently of the others, as a DeiT does its images."""
    return (x * 2 + 1).sum(dim=(1, 2))


def test_short_batch_is_padded_and_its_pad_rows_dropped():
    replays: list[int] = []
    inputs = torch.zeros(4, 2, 3)
    graph = EagerGraph(rowwise, inputs, replays)
    graphed = GraphedForward(graph, inputs, graph.output)
    full, short = torch.randn(4, 2, 3), torch.randn(3, 2, 3)
    torch.testing.assert_close(graphed.run(full), rowwise(full))
    out = graphed.run(short)
    assert out.shape == (3,) and replays == [4, 4]  # the captured batch runs every time
    torch.testing.assert_close(out, rowwise(short))
    torch.testing.assert_close(inputs[3], full[3])  # the pad row is what the previous batch left
    assert out.data_ptr() == graphed.output.data_ptr()  # a view of the static output: the next replay overwrites it


def test_tuple_outputs_are_cut_to_the_batch():
    inputs = torch.zeros(4, 3)
    fn = lambda x: (x + 1, x.sum(dim=1))
    graph = EagerGraph(fn, inputs, [])
    graphed = GraphedForward(graph, inputs, graph.output)
    x = torch.randn(2, 3)
    plus_one, sums = graphed.run(x)
    torch.testing.assert_close(plus_one, x + 1)
    torch.testing.assert_close(sums, x.sum(dim=1))


def test_run_refuses_other_shapes_naming_both():
    inputs = torch.zeros(4, 2, 3)
    graphed = GraphedForward(EagerGraph(rowwise, inputs, []), inputs, rowwise(inputs))
    with pytest.raises(ValueError, match=r"\(4, 2, 3\) inputs takes 1 to 4 such rows, got shape \(5, 2, 3\)"):
        graphed.run(torch.zeros(5, 2, 3))
    with pytest.raises(ValueError, match=r"got shape \(2, 3, 2\)"):
        graphed.run(torch.zeros(2, 3, 2))
    with pytest.raises(ValueError, match=r"got shape \(0, 2, 3\)"):
        graphed.run(torch.zeros(0, 2, 3))


def test_pool_captures_once_per_batch_and_variant():
    replays: list[int] = []
    captured: list[tuple[int, object]] = []
    eager = eager_capture(replays)

    def counting_capture(fn, inputs):
        captured.append((inputs.shape[0], inputs.dtype))
        assert not inputs.any()  # a zero-filled static input
        return eager(fn, inputs)

    pool = GraphPool(lambda x, scale: rowwise(x) * scale, (2, 3), "cpu", capture_fn=counting_capture)
    a = pool.get(4, 1.0)
    assert pool.get(4, 1.0) is a and pool.get(4, 3.0) is not a and pool.get(2, 1.0) is not a
    assert captured == [(4, torch.float32), (4, torch.float32), (2, torch.float32)]
    x = torch.randn(3, 2, 3)
    torch.testing.assert_close(pool.get(4, 3.0).run(x), rowwise(x) * 3)
    assert sorted(pool.graphs, key=str) == sorted([(4, 1.0), (4, 3.0), (2, 1.0)], key=str)


def test_capture_needs_cuda_tensors():
    with pytest.raises(ValueError, match="CUDA graphs need CUDA tensors, got inputs on cpu"):
        capture(rowwise, torch.zeros(2, 2, 3))


@pytest.mark.gpu
def test_captured_graph_equals_eager_with_a_padded_batch():
    layer = torch.nn.Linear(8, 5).cuda()
    with torch.no_grad():
        graphed = capture(layer, torch.zeros(4, 8, device="cuda"))
        for n in (4, 3, 1):  # a short batch after a full one: pad rows hold the earlier batch's rows
            x = torch.randn(n, 8, device="cuda")
            torch.testing.assert_close(graphed.run(x).clone(), layer(x))
    assert isinstance(graphed.graph, torch.cuda.CUDAGraph)


@pytest.mark.gpu
def test_bench_graphed_step_replays():
    """The benchmarks' CUDA-graph provider: each timed step copies the batch into the graph's input and replays."""
    from fastdeit.benchmarks.models import StepRunner
    from fastdeit.benchmarks.providers import PROVIDERS, BuildSpec

    spec = BuildSpec("deit_tiny_patch16_224", 32, "inference", torch.float32, torch.device("cuda"), 0.0)
    step = StepRunner(PROVIDERS["fastdeit-cudagraph"], spec).step(4)
    for _ in range(2):
        step()
    torch.cuda.synchronize()
