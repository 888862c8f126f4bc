"""Tests for benchmarks/linear_policy.py that need no GPU: the cases it times, how timings become a policy table, and
its refusal to run without CUDA."""

from __future__ import annotations

import pytest
import torch
from fastdeit.benchmarks.linear_policy import Case, cases, choose, main
from fastdeit.kernels.linear_policy import validate


def test_cases_cover_the_four_kinds_both_buckets_and_fc1_training():
    grid = cases([768], batch=256)
    assert {(c.kind, c.dtype, c.rows) for c in grid} == {
        (kind, dtype, rows) for kind in ("qkv", "proj", "fc1", "fc2") for dtype in ("bf16", "fp16") for rows in
        (256 * 197, 8 * 197)
    }  # fmt: skip
    assert sum(c.save_pre for c in grid) == 4 and all(c.kind == "fc1" for c in grid if c.save_pre)
    assert Case("fc2", "bf16", 768, 50432, False).in_out == (3072, 768)


def test_choose_sums_widths_ignores_training_rows_and_gives_a_valid_table():
    big, small = 256 * 197, 8 * 197
    times = {
        (Case("fc1", "bf16", 768, big, False), "triton"): 1.0,
        (Case("fc1", "bf16", 768, big, False), "cublas"): 1.2,
        (Case("fc1", "bf16", 192, big, False), "triton"): 0.3,
        (Case("fc1", "bf16", 192, big, False), "cublas"): 0.2,  # Ti alone prefers cuBLAS; the sum still Triton
        (Case("fc1", "bf16", 768, big, True), "triton"): 9.0,  # training forward: recorded, not chosen on
        (Case("fc1", "bf16", 768, big, True), "cublas"): 1.0,
        (Case("qkv", "fp16", 768, small, False), "triton"): 0.30,
        (Case("qkv", "fp16", 768, small, False), "cublas"): 0.25,
    }
    table = choose(times)
    assert table == {"fc1": {"bf16": {"large": "triton"}}, "qkv": {"fp16": {"small": "cublas"}}}
    assert validate(table)["fc1"]["bf16"]["large"] == "triton"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message torch gives without a GPU")
def test_needs_a_gpu(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "policy.json")]) == 2
    assert "linear_policy: needs a CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "policy.json").exists()
