"""Which forward path each linear layer of a DeiT takes on a GPU: the fused Triton matmul or cuBLAS. One table.

The table maps (op kind, dtype, shape bucket) to a path:
    op kinds  qkv, proj    bias only (attention's input and output projections)
              fc1          bias + exact (erf) GELU
              fc2          bias + residual add
    dtypes    bf16, fp16, fp32 (the compute dtype: x's)
    buckets   by rows M = batch x tokens: "small" (M <= 4096, batch <= 20 at 197 tokens), "large"
    paths     "triton"  one kernel: the matmul with bias, GELU and residual applied to its fp32 accumulator
              "cublas"  torch.addmm (cuBLASLt adds the bias in its epilogue), then for fc1/fc2 a Triton elementwise
                        kernel for the GELU or the residual add

Numerics of the paths (both accumulate in fp32 and add the bias in fp32):
    qkv, proj  one rounding to the output dtype either way; the paths differ only in summation order.
    fc1, fc2   "triton" rounds once, after GELU / the residual add; "cublas" also rounds the pre-activation to the
               compute dtype before them (2^-8 relative in bf16), exactly as eager `F.gelu(F.linear(...))` and timm do.
    fp32       always "cublas", which follows torch's fp32 matmul precision (IEEE by default): F.linear's results.
               Triton's IEEE fp32 tl.dot has no tensor-core form and spills, and tf32 would change the numerics.

Paths weighed and not taken (no path is kept that the table cannot pick):
    torch._addmm_activation(..., use_gelu=True): cuBLASLt's bias+GELU epilogue computes the tanh approximation on
        CUDA (PyTorch's aten/src/ATen/native/cuda/Blas.cpp, addmm_out_cuda_impl: its non-Lt branch applies
        `gelu_(result, "tanh")` to match); DeiT's GELU is exact erf, and the two differ by up to 4.7e-4 (at x = -2.70),
        so it would change every model's outputs. (On the CPU the same op is exact.)
    Folding fc2's bias into the residual stream that norm2 already writes, for `addmm(residual + bias, h, W^T)` with
        no epilogue kernel: rounds residual + bias to the stream dtype once more, changes the LayerNorm op's outputs,
        and under autocast the fp32 stream cannot be addmm's C for bf16 operands. Worth a GPU measurement only if
        fc2 moves to cuBLAS.
    A persistent TMA matmul for the fused epilogues: Triton's tensor-descriptor API differs between 3.6 and 3.9 and
        no GPU has run a line of it here; the non-persistent kernel stays until a GPU session can compare the two.

Defaults, before any GPU measurement: qkv and proj on cuBLAS (their only epilogue is the bias, which cuBLASLt already
fuses, so a non-persistent Triton matmul can at best tie); fc1 and fc2 on Triton (fusing the GELU saves writing and
re-reading the (M, 4C) pre-activation, 0.6 GB per block at DeiT-B batch 256 in bf16; fusing the residual saves one
(M, C) pass); fp32 on cuBLAS. A GPU stage measures both paths (`python -m fastdeit.benchmarks.linear_policy --csv CSV
--out POLICY.json`) and writes a table in this module's JSON format; `load_policy(path)`, or the environment variable
FASTDEIT_LINEAR_POLICY=path read at import, puts it in force.

On the CPU (the Triton interpreter, for tests) the table is not consulted: every kind runs the fused Triton path,
which the tests check against fp64. `forced_path("triton" | "cublas")` overrides the choice on every device.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from collections.abc import Iterator
from pathlib import Path

import torch

OP_KINDS = ("qkv", "proj", "fc1", "fc2")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
BUCKETS = ("small", "large")
SMALL_MAX_ROWS = 4096
PATHS = ("triton", "cublas")
FORMAT = "fastdeit.linear_policy/1"
ENV_VAR = "FASTDEIT_LINEAR_POLICY"

Policy = dict[str, dict[str, dict[str, str]]]  # kind -> dtype name -> bucket -> path

DEFAULT_POLICY: Policy = {
    kind: {
        dtype: {bucket: "cublas" if kind in ("qkv", "proj") or dtype == "fp32" else "triton" for bucket in BUCKETS}
        for dtype in DTYPES
    }
    for kind in OP_KINDS
}

_policy: Policy = copy.deepcopy(DEFAULT_POLICY)
_forced: str | None = None


def bucket(rows: int) -> str:
    """The shape bucket of a linear with `rows` rows (M = batch x tokens)."""
    return "small" if rows <= SMALL_MAX_ROWS else "large"


def dtype_name(dtype: torch.dtype) -> str:
    for name, d in DTYPES.items():
        if d == dtype:
            return name
    raise TypeError(f"linear policy: dtype must be one of {[str(d) for d in DTYPES.values()]}, got {dtype}")


def allowed_paths(dtype: str) -> tuple[str, ...]:
    """The paths a table may give `dtype` ("bf16", "fp16", "fp32"): fp32 only "cublas" (Triton's IEEE fp32 dot
    spills, and tf32 would change the numerics)."""
    return ("cublas",) if dtype == "fp32" else PATHS


def _check_choice(where: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"linear policy: {where} must be one of {allowed}, got {value!r}")


def validate(table: object, source: str = "table") -> Policy:
    """A complete policy from `table` (entries it leaves out keep the defaults); raises a ValueError naming the first
    bad entry. fp32 entries may only say "cublas"."""
    if not isinstance(table, dict):
        raise ValueError(f"linear policy {source}: expected {{kind: {{dtype: {{bucket: path}}}}}}, got {table!r}")
    merged = copy.deepcopy(DEFAULT_POLICY)
    for kind, by_dtype in table.items():
        _check_choice(f"{source}: op kind", kind, OP_KINDS)
        if not isinstance(by_dtype, dict):
            raise ValueError(f"linear policy {source}: [{kind}] must map dtypes to buckets, got {by_dtype!r}")
        for dtype, by_bucket in by_dtype.items():
            _check_choice(f"{source}: [{kind}] dtype", dtype, tuple(DTYPES))
            if not isinstance(by_bucket, dict):
                raise ValueError(
                    f"linear policy {source}: [{kind}][{dtype}] must map buckets to paths, got {by_bucket!r}"
                )
            for shape_bucket, path in by_bucket.items():
                where = f"{source}: [{kind}][{dtype}][{shape_bucket}]"
                _check_choice(f"{source}: [{kind}][{dtype}] bucket", shape_bucket, BUCKETS)
                _check_choice(f"{where} path", path, PATHS)
                if path not in allowed_paths(dtype):
                    raise ValueError(
                        f"linear policy {where}: fp32 runs only on 'cublas' (Triton's IEEE fp32 dot spills, tf32 "
                        f"would change the numerics), got {path!r}"
                    )
                merged[kind][dtype][shape_bucket] = path
    return merged


def policy() -> Policy:
    """The table in force (a copy)."""
    return copy.deepcopy(_policy)


def set_policy(table: object | None) -> Policy:
    """Put `table` in force over the defaults (None: the defaults alone); returns the complete table."""
    global _policy
    _policy = validate(table) if table is not None else copy.deepcopy(DEFAULT_POLICY)
    return policy()


def load_policy(path: str | os.PathLike) -> Policy:
    """Read a policy JSON (as `fastdeit.benchmarks.linear_policy` writes it) and put it in force."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"linear policy file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"linear policy file {path} is not JSON: {e}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT or "policy" not in document:
        raise ValueError(f"linear policy file {path}: expected a JSON object with format {FORMAT!r} and a 'policy'")
    return set_policy(validate(document["policy"], source=str(path)))


def document(table: Policy, **facts: object) -> dict:
    """The JSON document for `table`, with facts about where it was measured."""
    return {"format": FORMAT, **facts, "policy": validate(table)}


@contextlib.contextmanager
def forced_path(path: str) -> Iterator[None]:
    """Within: every linear takes `path`, on every device and dtype (tests and benchmarks)."""
    global _forced
    _check_choice("forced path", path, PATHS)
    previous, _forced = _forced, path
    try:
        yield
    finally:
        _forced = previous


def path_for(kind: str, dtype: torch.dtype, rows: int, device: torch.device) -> str:
    """The path ("triton" or "cublas") of one linear of op `kind` on `dtype` inputs with `rows` rows on `device`."""
    _check_choice("op kind", kind, OP_KINDS)
    name = dtype_name(dtype)
    if _forced is not None:
        return _forced
    if device.type != "cuda":
        return "triton"
    return _policy[kind][name][bucket(rows)]


if os.environ.get(ENV_VAR):
    load_policy(os.environ[ENV_VAR])
