"""What the Triton ops share: argument checks with clear errors (naming the argument, what was expected, what was
given), and the one fp32 rule for `tl.dot` (`dot_precision`, `triton_dots_fit`)."""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
import triton

from fastdeit._env import triton_interpreter

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Keep tuned configs in Triton's on-disk cache, so a new process does not re-run the tuning sweeps
# (`cache_results` exists in the triton versions we support; checked so an older one still imports).
AUTOTUNE_KWARGS = {"cache_results": True} if "cache_results" in inspect.signature(triton.autotune).parameters else {}


def dot_precision(dtype: torch.dtype) -> str:
    """The input precision of a `tl.dot` on `dtype` operands: fastdeit's one fp32 rule, that of torch's own fp32
    matmuls (IEEE under `torch.get_float32_matmul_precision() == "highest"`, torch's default; tf32 otherwise).
    16-bit operands ignore it."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest":
        return "tf32"
    return "ieee"


def triton_dots_fit(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether a Triton kernel with `tl.dot` should run on `dtype` operands on `device`: everywhere except IEEE fp32
    on a GPU. That dot has no tensor-core instruction, and Triton's FMA fallback spills at every attention tile tried
    (148 B to 86 KB of local memory per thread on sm_90, `fastdeit bench --compile-report`), so torch's kernels
    (cuBLAS, SDPA) run those inputs. Under the interpreter tl.dot is exact fp32 (numpy)."""
    return not (device.type == "cuda" and dtype == torch.float32 and dot_precision(dtype) == "ieee")


def can_run(t: torch.Tensor) -> bool:
    """Whether a Triton kernel can run on `t`'s device: CUDA, or the CPU under the interpreter."""
    return t.is_cuda or (t.device.type == "cpu" and triton_interpreter())


def check_tensor(
    op: str,
    name: str,
    t: object,
    *,
    ndim: int | Sequence[int] | None = None,
    dtypes: Sequence[torch.dtype] = SUPPORTED_DTYPES,
) -> torch.Tensor:
    """Validate one tensor argument of `op`; returns it so calls can be chained."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if t.dim() not in allowed:
            want = " or ".join(str(a) for a in allowed)
            raise ValueError(f"{op}: {name} must be {want}-D, got shape {tuple(t.shape)}")
    if t.dtype not in dtypes:
        raise TypeError(f"{op}: {name} must have dtype in {[str(d) for d in dtypes]}, got {t.dtype}")
    if not can_run(t):
        raise ValueError(
            f"{op}: {name} is on {t.device}; Triton kernels need a CUDA tensor "
            "(or TRITON_INTERPRET=1 set before triton is imported, to run on the CPU)"
        )
    return t


def check_same(op: str, ref_name: str, ref: torch.Tensor, **others: torch.Tensor | None) -> None:
    """Check that the given tensors share `ref`'s device and dtype."""
    for name, t in others.items():
        if t is None:
            continue
        if t.device != ref.device:
            raise ValueError(f"{op}: {name} is on {t.device} but {ref_name} is on {ref.device}")
        if t.dtype != ref.dtype:
            raise TypeError(f"{op}: {name} has dtype {t.dtype} but {ref_name} has dtype {ref.dtype}")


def check_matrix(
    op: str,
    name: str,
    t: object,
    shape: tuple[int, int],
    like: torch.Tensor,
    like_name: str = "x",
    *,
    dtype: torch.dtype | None = None,
    unit_col_stride: bool = True,
) -> torch.Tensor:
    """A 2-D tensor of `shape` on `like`'s device, of `dtype` (any supported dtype when None) and, by default, with
    unit stride along its last dim (what the kernels' row-pointer arithmetic assumes)."""
    t = check_tensor(op, name, t, ndim=2)
    if tuple(t.shape) != shape:
        raise ValueError(f"{op}: {name} must have shape {shape}, got {tuple(t.shape)}")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{op}: {name} must have dtype {dtype}, got {t.dtype}")
    if t.device != like.device:
        raise ValueError(f"{op}: {name} is on {t.device} but {like_name} is on {like.device}")
    if unit_col_stride and shape[0] > 0 and shape[1] > 1 and t.stride(1) != 1:
        raise ValueError(f"{op}: {name} must have unit stride along its last dim, got strides {t.stride()}")
    return t
