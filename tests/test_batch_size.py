"""fastdeit.batch_size: the one largest-batch search (upwards from a start, or downwards from the cap, or backing
off by a caller's step), its cache, and the benchmarks' use of it when a measured step runs out of memory."""

from __future__ import annotations

import json

import pytest
import torch

from fastdeit.batch_size import BatchSizeCache, default_cache_path, find_max_batch


class FakeOOM:
    """A step that runs out of memory above `limit` images, recording every batch it was asked for."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.tried: list[int] = []

    def __call__(self, batch: int) -> None:
        self.tried.append(batch)
        if batch > self.limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate for batch {batch}")


@pytest.mark.parametrize("limit, expected", [(5000, 1024), (1024, 1024), (1000, 512), (300, 256), (1, 1)])
def test_downwards_from_the_cap_gives_the_largest_power_of_two(limit, expected):
    """The Predictor's probe: the first size that fits, from the cap down, halving; nothing larger is ever run."""
    step = FakeOOM(limit)
    assert find_max_batch(step, start=1024, cap=1024, on_oom=lambda: None) == expected
    assert step.tried[-1] == expected and all(b > limit for b in step.tried[:-1])


def test_backing_off_with_the_callers_step():
    """The benchmarks' back-off after a measured step ran out of memory: 3/4 at a time until one fits."""
    step = FakeOOM(100)
    three_quarters = lambda b: b * 3 // 4
    assert find_max_batch(step, start=256, cap=256, shrink=three_quarters, on_oom=lambda: None) == 81
    assert step.tried == [256, 192, 144, 108, 81]


def test_even_one_does_not_fit_names_what():
    with pytest.raises(RuntimeError, match="deit_tiny runs out of memory even at batch size 1"):
        find_max_batch(FakeOOM(0), start=4, cap=4, what="deit_tiny", on_oom=lambda: None)
    # A shrink step that does not shrink still ends: every retry is smaller.
    step = FakeOOM(0)
    with pytest.raises(RuntimeError, match="even at batch size 1"):
        find_max_batch(step, start=3, cap=3, shrink=lambda b: max(1, b), on_oom=lambda: None)
    assert step.tried == [3, 2, 1]


def test_cache_is_written_atomically_and_probed_once(tmp_path):
    cache = BatchSizeCache(tmp_path / "sizes.json")
    probes: list[int] = []

    def probe() -> int:
        probes.append(1)
        return 384

    key = cache.key("deit_small_patch16_224", "bf16", "H200")
    assert cache.get_or_probe(key, 1024, probe) == 384
    assert cache.get_or_probe(key, 1024, probe) == 384 and len(probes) == 1
    assert json.loads((tmp_path / "sizes.json").read_text()) == {key: {"batch": 384, "cap": 1024}}
    assert [p.name for p in tmp_path.iterdir()] == ["sizes.json"]  # no temporary file left behind


def test_cache_files_live_in_fastdeits_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTDEIT_CACHE_DIR", str(tmp_path / "mine"))
    assert default_cache_path() == tmp_path / "mine" / "bench_batch_sizes.json"
    assert BatchSizeCache().path == default_cache_path()


def test_bench_backs_off_when_a_measured_step_runs_out_of_memory(monkeypatch):
    """ModelBenchmark times at the given batch; a step that runs out of memory there is retried at 3/4 (kept a
    multiple of 8 from 16 up) until one fits, and the measurement says which batch it ran."""
    import fastdeit.benchmarks.models as bench
    from fastdeit.benchmarks.providers import PROVIDERS

    real_step = bench.StepRunner.step
    tried: list[int] = []

    def step(self, batch: int, cached: bool = False):
        tried.append(batch)
        run = real_step(self, batch, cached)
        if batch > 5:
            raise torch.OutOfMemoryError(f"CUDA out of memory (batch {batch})")
        return run

    monkeypatch.setattr(bench.StepRunner, "step", step)
    cfg = bench.BenchConfig(
        models=["deit_tiny_patch16_224"], providers=[PROVIDERS["fastdeit-torch"]], modes=["inference"],
        dtype=torch.float32, device=torch.device("cpu"), batch_size=8, img_size=32, warmup=0, repeats=1,
        min_time=0.0, csv=None,
    )  # fmt: skip
    benchmark = bench.ModelBenchmark(cfg)
    (measurement,) = benchmark._measure(
        PROVIDERS["fastdeit-torch"], benchmark._spec("deit_tiny_patch16_224", "inference")
    )
    assert tried == [8, 6, 4] and measurement.batch == 4 and measurement.img_per_s > 0
