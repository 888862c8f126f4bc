"""Tests for kernels/linear_policy.py: the table (defaults, buckets, fp32), overriding it, loading a measured one, and
its errors. The numerics of both paths against fp64 are in test_linear.py (its `path` fixture forces each)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from fastdeit.kernels import linear_policy
from fastdeit.kernels.linear_policy import (
    DEFAULT_POLICY,
    FORMAT,
    OP_KINDS,
    SMALL_MAX_ROWS,
    document,
    forced_path,
    load_policy,
    path_for,
    policy,
    set_policy,
)

CUDA, CPU = torch.device("cuda"), torch.device("cpu")
BF16, F16, F32 = torch.bfloat16, torch.float16, torch.float32
LARGE = 256 * 197


@pytest.fixture(autouse=True)
def _restore_policy():
    saved = policy()
    yield
    set_policy(saved)


def test_defaults_on_a_gpu():
    """qkv and proj (bias only) on cuBLAS, fc1 and fc2 fused in Triton, fp32 always cuBLAS; both buckets alike."""
    for rows in (197, LARGE):
        for dtype in (BF16, F16):
            assert [path_for(kind, dtype, rows, CUDA) for kind in OP_KINDS] == ["cublas", "cublas", "triton", "triton"]
        assert {path_for(kind, F32, rows, CUDA) for kind in OP_KINDS} == {"cublas"}


def test_cpu_runs_the_fused_triton_path_for_every_kind():
    """Under the interpreter the table is not consulted: the tests exercise the fused kernels for every op kind."""
    set_policy({kind: {"fp16": {"small": "cublas", "large": "cublas"}} for kind in OP_KINDS})
    for kind in OP_KINDS:
        for dtype in (F16, F32):
            assert path_for(kind, dtype, LARGE, CPU) == "triton"


def test_each_kind_goes_where_the_table_says():
    table = {
        "qkv": {"bf16": {"large": "triton"}},
        "fc1": {"bf16": {"small": "cublas"}, "fp16": {"large": "cublas"}},
        "fc2": {"fp16": {"small": "cublas", "large": "triton"}},
    }
    full = set_policy(table)
    assert full["qkv"]["bf16"] == {"small": "cublas", "large": "triton"}  # the rest keeps the defaults
    assert path_for("qkv", BF16, LARGE, CUDA) == "triton" and path_for("qkv", BF16, 197, CUDA) == "cublas"
    assert path_for("qkv", F16, LARGE, CUDA) == "cublas"
    assert path_for("fc1", BF16, SMALL_MAX_ROWS, CUDA) == "cublas" and path_for("fc1", BF16, LARGE, CUDA) == "triton"
    assert path_for("fc1", F16, SMALL_MAX_ROWS + 1, CUDA) == "cublas"  # the first row count of the large bucket
    assert path_for("fc2", F16, 197, CUDA) == "cublas" and path_for("proj", BF16, LARGE, CUDA) == "cublas"
    assert set_policy(None) == DEFAULT_POLICY


def test_forced_path_overrides_table_and_device_and_nests():
    with forced_path("cublas"):
        assert path_for("fc1", BF16, LARGE, CUDA) == "cublas" and path_for("fc1", F32, 1, CPU) == "cublas"
        with forced_path("triton"):
            assert path_for("qkv", BF16, LARGE, CUDA) == "triton"
        assert path_for("qkv", F16, LARGE, CPU) == "cublas"
    assert path_for("qkv", F16, LARGE, CPU) == "triton" and path_for("qkv", F16, LARGE, CUDA) == "cublas"


@pytest.mark.parametrize(
    "table, message",
    [
        ({"fc3": {}}, r"op kind must be one of \('qkv', 'proj', 'fc1', 'fc2'\), got 'fc3'"),
        ({"fc1": {"fp64": {}}}, r"\[fc1\] dtype must be one of \('bf16', 'fp16', 'fp32'\), got 'fp64'"),
        ({"fc1": {"bf16": {"huge": "triton"}}}, r"\[fc1\]\[bf16\] bucket must be one of .*, got 'huge'"),
        ({"fc1": {"bf16": {"large": "cutlass"}}}, r"\[fc1\]\[bf16\]\[large\] path must be one of .*, got 'cutlass'"),
        ({"fc2": {"fp32": {"large": "triton"}}}, r"\[fc2\]\[fp32\]\[large\]: fp32 runs only on 'cublas'"),
        ({"fc1": "triton"}, r"\[fc1\] must map dtypes to buckets, got 'triton'"),
        (["fc1"], r"expected \{kind: \{dtype: \{bucket: path\}\}\}"),
    ],
)  # fmt: skip
def test_invalid_tables_raise_and_leave_the_policy_alone(table, message):
    before = policy()
    with pytest.raises(ValueError, match=message):
        set_policy(table)
    assert policy() == before


def test_path_for_rejects_unknown_kind_and_dtype():
    with pytest.raises(ValueError, match=r"op kind must be one of .*, got 'mlp'"):
        path_for("mlp", BF16, 1, CUDA)
    with pytest.raises(TypeError, match=r"dtype must be one of .*, got torch.float64"):
        path_for("qkv", torch.float64, 1, CUDA)
    with pytest.raises(ValueError, match=r"forced path must be one of \('triton', 'cublas'\), got 'cuda'"):
        with forced_path("cuda"):
            pass


def test_load_policy_round_trip_and_errors(tmp_path):
    measured = {kind: {"bf16": {"large": "triton"}} for kind in OP_KINDS}
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(document(measured, measured_on="NVIDIA H100 80GB HBM3", triton="3.6.0")))
    loaded = load_policy(path)
    assert loaded == policy() and {path_for(kind, BF16, LARGE, CUDA) for kind in OP_KINDS} == {"triton"}
    assert path_for("qkv", BF16, 197, CUDA) == "cublas"
    with pytest.raises(FileNotFoundError, match="linear policy file not found"):
        load_policy(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not JSON"):
        load_policy(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"policy": measured}))
    with pytest.raises(ValueError, match=f"expected a JSON object with format '{FORMAT}'"):
        load_policy(tmp_path / "other.json")
    (tmp_path / "wrong.json").write_text(
        json.dumps({"format": FORMAT, "policy": {"fc1": {"fp32": {"large": "triton"}}}})
    )
    with pytest.raises(ValueError, match=r"wrong.json: \[fc1\]\[fp32\]\[large\]: fp32 runs only on 'cublas'"):
        load_policy(tmp_path / "wrong.json")


def test_env_var_loads_a_measured_policy_at_import(tmp_path):
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(document({"fc1": {"fp16": {"large": "cublas"}}})))
    env = {**os.environ, linear_policy.ENV_VAR: str(path)}
    code = "from fastdeit.kernels.linear_policy import policy; print(policy()['fc1']['fp16']['large'])"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "cublas"
