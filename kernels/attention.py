"""Fused non-causal multi-head attention (flash-attention 2 style), forward and backward.

For one (batch, head), with Q, K, V of shape (N, D) and s = `scale` (default D**-0.5):

    S = s Q K^T                 (N, N) scores, never stored
    P = softmax(S) row-wise     never stored
    O = P V                     (N, D), in Q's dtype
    L = logsumexp(S) row-wise   (N,) fp32, saved for the backward in base 2: `lse` = L * log2(e)

Forward: a program owns BLOCK_M query rows and streams K/V tiles of BLOCK_N keys, keeping a running row max m,
row sum l of exp(S - m) and an unnormalised accumulator acc (online softmax); statistics and accumulation are fp32.
At the end O = acc / l and L = m + log(l). Exponentials use exp2 with log2(e) folded into the score scale.
The autograd saves q, k, v, O and lse (`attention_qkv`: qkv, O and lse).

Backward, given dO = dLoss/dO:

    P     = exp(S - L)          recomputed from Q, K and the saved L
    dV    = P^T dO
    dP    = dO V^T
    delta = rowsum(dO * O)      (equal to rowsum(P * dP)), from a small preprocess kernel
    dS    = P * (dP - delta)
    dQ    = s dS K,   dK = s dS^T Q

dK/dV are accumulated in registers by a program that owns a key block and loops over the query blocks; dQ by a
program that owns a query block and loops over the key blocks; one launch holds both kinds of program. This computes
P twice instead of adding into dQ with atomics, but it is deterministic, needs no fp32 dQ scratch buffer (zero-filled,
then converted), and writes dQ straight into any strided destination such as the packed d(qkv); at DeiT lengths
(N <= 578) the recompute is cheap.

Every load and store of a ragged last block is masked (padded keys get -inf scores in the forward and P = 0 in the
backward), so any N >= 1 works on unpadded inputs. Tensors are addressed through their strides, so q/k/v can
be views, e.g. of timm's packed qkv projection output, which `attention_qkv` reads in place.

fp32 inputs: `tl.dot` follows torch's matmul setting, ieee for `torch.get_float32_matmul_precision() == "highest"`
(the default) and tf32 otherwise, the same choice torch makes for its own fp32 matmuls (`dot_precision`). On a GPU,
ieee fp32 runs torch's SDPA instead: that tl.dot has no tensor-core form and Triton's fallback spills
(`triton_dots_fit`). fp16/bf16 inputs: the dots take that dtype (P and dS are rounded to it before their dots, as in
flash attention) and accumulate in fp32.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from fastdeit._env import triton_interpreter

from ._utils import AUTOTUNE_KWARGS, check_same, check_tensor, dot_precision, triton_dots_fit

HEAD_DIMS = (16, 32, 64, 128)
LOG2E = math.log2(math.e)


def _configs(
    interpreted: list[dict], gpu: list[tuple[dict, int, int, bool]]
) -> tuple[list[triton.Config], list[triton.Config]]:
    """(every config, those for tf32 dots): one small config under the interpreter (small tiles still exercise
    multi-block paths), else Hopper configs, each with whether it is also built for tf32."""
    if triton_interpreter():
        configs = [triton.Config(kw, num_warps=4, num_stages=1) for kw in interpreted]
        return configs, configs
    configs = [(triton.Config(kw, num_warps=w, num_stages=s), tf32) for kw, w, s, tf32 in gpu]
    return [c for c, _ in configs], [c for c, tf32 in configs if tf32]


def _by_dot_precision(tf32_configs: list[triton.Config]) -> dict[str, Callable[..., list[triton.Config]]]:
    """The autotuner's pruning: fp32 operands with tf32 dots try only `tf32_configs`."""

    def prune(configs: list[triton.Config], named_args: dict, **kwargs: object) -> list[triton.Config]:
        return tf32_configs if kwargs["DOT_PRECISION"] == "tf32" else configs

    return {"early_config_prune": prune}


# Autotuning is keyed on the sequence length and head dim (and, automatically, the dtypes), never on the batch size.
# DeiT uses a handful of lengths (197/198/577/578), so the exact length is a fine key.
# Every GPU config builds for sm_90 with wgmma, no spills and no serialised wgmma in bf16 and fp16, and those marked
# so also for fp32 with tf32 dots (whose fp32 operands take twice the registers), on triton 3.6 and 3.9
# (`fastdeit bench --compile-report`). fp32 with IEEE dots never runs these kernels on a GPU (`triton_dots_fit`).
_FWD_CONFIGS, _FWD_TF32_CONFIGS = _configs(
    [{"BLOCK_M": 32, "BLOCK_N": 16}],
    [
        ({"BLOCK_M": 128, "BLOCK_N": 64}, 4, 3, False),  # tf32: spills (4-160 bytes)
        ({"BLOCK_M": 128, "BLOCK_N": 64}, 8, 3, True),
        ({"BLOCK_M": 128, "BLOCK_N": 128}, 8, 3, True),
        ({"BLOCK_M": 128, "BLOCK_N": 32}, 4, 4, True),
        ({"BLOCK_M": 64, "BLOCK_N": 64}, 4, 3, True),
        ({"BLOCK_M": 64, "BLOCK_N": 64}, 4, 4, True),
        ({"BLOCK_M": 64, "BLOCK_N": 32}, 4, 3, True),
        ({"BLOCK_M": 64, "BLOCK_N": 128}, 8, 2, True),
    ],
)
_BWD_CONFIGS, _BWD_TF32_CONFIGS = _configs(
    [{"BLOCK_OWN": 32, "BLOCK_ITER": 16}],
    [
        ({"BLOCK_OWN": 128, "BLOCK_ITER": 32}, 8, 3, True),
        ({"BLOCK_OWN": 128, "BLOCK_ITER": 32}, 8, 2, True),
        ({"BLOCK_OWN": 128, "BLOCK_ITER": 64}, 8, 2, False),  # tf32: spills (20 bytes)
        ({"BLOCK_OWN": 64, "BLOCK_ITER": 32}, 4, 3, True),
        ({"BLOCK_OWN": 64, "BLOCK_ITER": 32}, 4, 2, True),
        ({"BLOCK_OWN": 64, "BLOCK_ITER": 64}, 8, 2, True),
    ],
)
_PREPROCESS_BLOCK_M = 64


# ----------------------------------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------------------------------
@triton.jit
def _load_rows(ptr, rows, offs_d, stride_n, stride_d, seq_len, MASK: tl.constexpr):
    """The (len(rows), HEAD_DIM) tile ptr[rows, :]; with MASK, rows past seq_len read as 0."""
    ptrs = ptr + rows[:, None] * stride_n + offs_d[None, :] * stride_d
    if MASK:
        tile = tl.load(ptrs, mask=(rows < seq_len)[:, None], other=0.0)
    else:
        tile = tl.load(ptrs)
    return tile


@triton.jit
def _load_stat(ptr, rows, seq_len, MASK: tl.constexpr):
    """The per-row fp32 statistic ptr[rows]; with MASK, rows past seq_len read as 0."""
    if MASK:
        stat = tl.load(ptr + rows, mask=rows < seq_len, other=0.0)
    else:
        stat = tl.load(ptr + rows)
    return stat


@triton.jit
def _store_rows(ptr, rows, offs_d, stride_n, stride_d, seq_len, tile):
    """ptr[rows, :] = tile for the rows below seq_len, converted to ptr's dtype."""
    ptrs = ptr + rows[:, None] * stride_n + offs_d[None, :] * stride_d
    tl.store(ptrs, tile.to(ptr.dtype.element_ty), mask=(rows < seq_len)[:, None])


@triton.jit
def _fwd_tile(
    acc,
    m_i,
    l_i,
    q,
    k_ptr,
    v_ptr,
    key_rows,
    offs_d,
    stride_kn,
    stride_kd,
    stride_vn,
    stride_vd,
    seq_len,
    qk_scale,
    MASK: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """One online-softmax step over the keys key_rows; MASK handles the ragged last tile. (Pointers are rebuilt from
    the row offsets in each step: carrying 2-D pointer tensors across the loop costs registers and spills.)"""
    k = _load_rows(k_ptr, key_rows, offs_d, stride_kn, stride_kd, seq_len, MASK)
    v = _load_rows(v_ptr, key_rows, offs_d, stride_vn, stride_vd, seq_len, MASK)
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
    if MASK:
        s = tl.where((key_rows < seq_len)[None, :], s, float("-inf"))
    # Every tile holds at least one valid key, so m_new is finite and exp2(-inf - m_new) = 0 on the first tile.
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.math.exp2(m_i - m_new)
    p = tl.math.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
    return acc, m_new, l_i


@triton.autotune(
    configs=_FWD_CONFIGS,
    key=["seq_len", "HEAD_DIM"],
    prune_configs_by=_by_dot_precision(_FWD_TF32_CONFIGS),
    **AUTOTUNE_KWARGS,
)
@triton.jit
def _attn_fwd_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    out_ptr,
    lse_ptr,
    stride_qb,
    stride_qh,
    stride_qn,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_kd,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_vd,
    stride_ob,
    stride_oh,
    stride_on,
    stride_od,
    num_heads,
    seq_len,
    qk_scale,
    HEAD_DIM: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    # 1-D grid, query blocks fastest: the few programs of one (batch, head) run side by side and share K/V in L2
    # (DeiT has only 2 blocks of 128 per head), and batch * heads never meets the 65535 limit of grid axes 1/2.
    num_m_blocks = tl.cdiv(seq_len, BLOCK_M)
    pid = tl.program_id(0)
    block_m = pid % num_m_blocks
    bh = pid // num_m_blocks
    off_b = (bh // num_heads).to(tl.int64)
    off_h = (bh % num_heads).to(tl.int64)
    q_ptr += off_b * stride_qb + off_h * stride_qh
    k_ptr += off_b * stride_kb + off_h * stride_kh
    v_ptr += off_b * stride_vb + off_h * stride_vh
    out_ptr += off_b * stride_ob + off_h * stride_oh
    lse_ptr += bh.to(tl.int64) * seq_len

    query_rows = block_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    q = _load_rows(q_ptr, query_rows, offs_d, stride_qn, stride_qd, seq_len, MASK=True)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    full_end = (seq_len // BLOCK_N) * BLOCK_N
    for start_n in range(0, full_end, BLOCK_N):
        acc, m_i, l_i = _fwd_tile(
            acc, m_i, l_i, q, k_ptr, v_ptr, start_n + offs_n, offs_d, stride_kn, stride_kd, stride_vn, stride_vd,
            seq_len, qk_scale, MASK=False, DOT_PRECISION=DOT_PRECISION,
        )  # fmt: skip
    if full_end < seq_len:
        acc, m_i, l_i = _fwd_tile(
            acc, m_i, l_i, q, k_ptr, v_ptr, full_end + offs_n, offs_d, stride_kn, stride_kd, stride_vn, stride_vd,
            seq_len, qk_scale, MASK=True, DOT_PRECISION=DOT_PRECISION,
        )  # fmt: skip

    _store_rows(out_ptr, query_rows, offs_d, stride_on, stride_od, seq_len, acc / l_i[:, None])
    # Stored in base 2 (L * log2(e)): the backward's exponent fma(q.k, s * log2(e), -L2) then rounds only once.
    tl.store(lse_ptr + query_rows, m_i + tl.math.log2(l_i), mask=query_rows < seq_len)


@triton.jit
def _attn_bwd_preprocess_kernel(
    out_ptr,
    d_out_ptr,
    delta_ptr,
    stride_ob,
    stride_oh,
    stride_on,
    stride_od,
    stride_dob,
    stride_doh,
    stride_don,
    stride_dod,
    num_heads,
    seq_len,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    num_m_blocks = tl.cdiv(seq_len, BLOCK_M)
    pid = tl.program_id(0)
    block_m = pid % num_m_blocks
    bh = pid // num_m_blocks
    off_b = (bh // num_heads).to(tl.int64)
    off_h = (bh % num_heads).to(tl.int64)
    rows = block_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    out = _load_rows(out_ptr + off_b * stride_ob + off_h * stride_oh, rows, offs_d, stride_on, stride_od, seq_len, True)
    d_out = _load_rows(
        d_out_ptr + off_b * stride_dob + off_h * stride_doh, rows, offs_d, stride_don, stride_dod, seq_len, True
    )
    delta = tl.sum(out.to(tl.float32) * d_out.to(tl.float32), 1)
    tl.store(delta_ptr + bh.to(tl.int64) * seq_len + rows, delta, mask=rows < seq_len)


@triton.jit
def _bwd_dkdv_tile(
    dk,
    dv,
    k,
    v,
    q_ptr,
    d_out_ptr,
    lse_ptr,
    delta_ptr,
    query_rows,
    offs_d,
    stride_qn,
    stride_qd,
    stride_don,
    stride_dod,
    seq_len,
    qk_scale,
    MASK: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Add the queries query_rows' share of the owned keys' dK (unscaled) and dV; works on transposed scores.
    Padded query rows need no masking: with q = 0 and L = 0 their P is 1, but their dO and q rows are zero."""
    q = _load_rows(q_ptr, query_rows, offs_d, stride_qn, stride_qd, seq_len, MASK)
    d_out = _load_rows(d_out_ptr, query_rows, offs_d, stride_don, stride_dod, seq_len, MASK)
    lse = _load_stat(lse_ptr, query_rows, seq_len, MASK)
    delta = _load_stat(delta_ptr, query_rows, seq_len, MASK)
    pt = tl.math.exp2(tl.fma(tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION), qk_scale, -lse[None, :]))
    dv = tl.dot(pt.to(d_out.dtype), d_out, dv, input_precision=DOT_PRECISION)
    dpt = tl.dot(v, tl.trans(d_out), input_precision=DOT_PRECISION)
    dst = pt * (dpt - delta[None, :])
    dk = tl.dot(dst.to(q.dtype), q, dk, input_precision=DOT_PRECISION)
    return dk, dv


@triton.jit
def _bwd_dq_tile(
    dq,
    q,
    d_out,
    lse,
    delta,
    k_ptr,
    v_ptr,
    key_rows,
    offs_d,
    stride_kn,
    stride_kd,
    stride_vn,
    stride_vd,
    seq_len,
    qk_scale,
    MASK: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Add the keys key_rows' share of the owned queries' dQ (unscaled)."""
    k = _load_rows(k_ptr, key_rows, offs_d, stride_kn, stride_kd, seq_len, MASK)
    v = _load_rows(v_ptr, key_rows, offs_d, stride_vn, stride_vd, seq_len, MASK)
    p = tl.math.exp2(tl.fma(tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION), qk_scale, -lse[:, None]))
    if MASK:
        # Padded keys score 0, so P = exp(-L) there, which overflows to inf (then NaN) when all scores are negative.
        p = tl.where((key_rows < seq_len)[None, :], p, 0.0)
    dp = tl.dot(d_out, tl.trans(v), input_precision=DOT_PRECISION)
    ds = p * (dp - delta[:, None])
    dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)
    return dq


@triton.autotune(
    configs=_BWD_CONFIGS,
    key=["seq_len", "HEAD_DIM"],
    prune_configs_by=_by_dot_precision(_BWD_TF32_CONFIGS),
    **AUTOTUNE_KWARGS,
)
@triton.jit
def _attn_bwd_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    d_out_ptr,
    lse_ptr,
    delta_ptr,
    dq_ptr,
    dk_ptr,
    dv_ptr,
    stride_qb,
    stride_qh,
    stride_qn,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_kd,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_vd,
    stride_dob,
    stride_doh,
    stride_don,
    stride_dod,
    stride_dqb,
    stride_dqh,
    stride_dqn,
    stride_dqd,
    stride_dkb,
    stride_dkh,
    stride_dkn,
    stride_dkd,
    stride_dvb,
    stride_dvh,
    stride_dvn,
    stride_dvd,
    num_heads,
    seq_len,
    scale,
    qk_scale,
    HEAD_DIM: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_OWN: tl.constexpr,
    BLOCK_ITER: tl.constexpr,
):
    # Two programs per (block j, batch-head bh), side by side in the same 1-D grid order as the forward: one computes
    # dK/dV for key rows j*BLOCK_OWN.., the other dQ for query rows j*BLOCK_OWN.., each looping over the other operand
    # in tiles of BLOCK_ITER rows. One launch; as two branches (not one program doing both) the two parts neither
    # share registers (doing both spilled on Hopper) nor serialise, which doubles the programs for short sequences.
    num_blocks = tl.cdiv(seq_len, BLOCK_OWN)
    pid = tl.program_id(0)
    computes_dq = pid % 2
    block = (pid // 2) % num_blocks
    bh = pid // (2 * num_blocks)
    off_b = (bh // num_heads).to(tl.int64)
    off_h = (bh % num_heads).to(tl.int64)
    q_ptr += off_b * stride_qb + off_h * stride_qh
    k_ptr += off_b * stride_kb + off_h * stride_kh
    v_ptr += off_b * stride_vb + off_h * stride_vh
    d_out_ptr += off_b * stride_dob + off_h * stride_doh
    dq_ptr += off_b * stride_dqb + off_h * stride_dqh
    dk_ptr += off_b * stride_dkb + off_h * stride_dkh
    dv_ptr += off_b * stride_dvb + off_h * stride_dvh
    lse_ptr += bh.to(tl.int64) * seq_len
    delta_ptr += bh.to(tl.int64) * seq_len

    own_rows = block * BLOCK_OWN + tl.arange(0, BLOCK_OWN)
    offs_iter = tl.arange(0, BLOCK_ITER)
    offs_d = tl.arange(0, HEAD_DIM)
    full_end = (seq_len // BLOCK_ITER) * BLOCK_ITER

    if computes_dq == 0:
        # dK, dV for the owned keys, looping over query tiles.
        k = _load_rows(k_ptr, own_rows, offs_d, stride_kn, stride_kd, seq_len, MASK=True)
        v = _load_rows(v_ptr, own_rows, offs_d, stride_vn, stride_vd, seq_len, MASK=True)
        dk = tl.zeros([BLOCK_OWN, HEAD_DIM], dtype=tl.float32)
        dv = tl.zeros([BLOCK_OWN, HEAD_DIM], dtype=tl.float32)
        for start_m in range(0, full_end, BLOCK_ITER):
            dk, dv = _bwd_dkdv_tile(
                dk, dv, k, v, q_ptr, d_out_ptr, lse_ptr, delta_ptr, start_m + offs_iter, offs_d,
                stride_qn, stride_qd, stride_don, stride_dod, seq_len, qk_scale,
                MASK=False, DOT_PRECISION=DOT_PRECISION,
            )  # fmt: skip
        if full_end < seq_len:
            dk, dv = _bwd_dkdv_tile(
                dk, dv, k, v, q_ptr, d_out_ptr, lse_ptr, delta_ptr, full_end + offs_iter, offs_d,
                stride_qn, stride_qd, stride_don, stride_dod, seq_len, qk_scale,
                MASK=True, DOT_PRECISION=DOT_PRECISION,
            )  # fmt: skip
        _store_rows(dk_ptr, own_rows, offs_d, stride_dkn, stride_dkd, seq_len, dk * scale)
        _store_rows(dv_ptr, own_rows, offs_d, stride_dvn, stride_dvd, seq_len, dv)
    else:
        # dQ for the owned queries, looping over key tiles.
        q = _load_rows(q_ptr, own_rows, offs_d, stride_qn, stride_qd, seq_len, MASK=True)
        d_out = _load_rows(d_out_ptr, own_rows, offs_d, stride_don, stride_dod, seq_len, MASK=True)
        lse = _load_stat(lse_ptr, own_rows, seq_len, MASK=True)
        delta = _load_stat(delta_ptr, own_rows, seq_len, MASK=True)
        dq = tl.zeros([BLOCK_OWN, HEAD_DIM], dtype=tl.float32)
        for start_n in range(0, full_end, BLOCK_ITER):
            dq = _bwd_dq_tile(
                dq, q, d_out, lse, delta, k_ptr, v_ptr, start_n + offs_iter, offs_d,
                stride_kn, stride_kd, stride_vn, stride_vd, seq_len, qk_scale,
                MASK=False, DOT_PRECISION=DOT_PRECISION,
            )  # fmt: skip
        if full_end < seq_len:
            dq = _bwd_dq_tile(
                dq, q, d_out, lse, delta, k_ptr, v_ptr, full_end + offs_iter, offs_d,
                stride_kn, stride_kd, stride_vn, stride_vd, seq_len, qk_scale,
                MASK=True, DOT_PRECISION=DOT_PRECISION,
            )  # fmt: skip
        _store_rows(dq_ptr, own_rows, offs_d, stride_dqn, stride_dqd, seq_len, dq * scale)


# ----------------------------------------------------------------------------------------------------------------------
# Launchers (no autograd): each public launcher checks its arguments once, then calls its `_launch_*`
# ----------------------------------------------------------------------------------------------------------------------
def _check_qkv(op: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[int, int, int, int]:
    """Check q, k, v: same (B, H, N, D) shape, dtype and device, D in HEAD_DIMS; any strides. Returns (B, H, N, D)."""
    check_tensor(op, "q", q, ndim=4)
    check_tensor(op, "k", k, ndim=4)
    check_tensor(op, "v", v, ndim=4)
    check_same(op, "q", q, k=k, v=v)
    for name, t in (("k", k), ("v", v)):
        if t.shape != q.shape:
            raise ValueError(f"{op}: {name} must have q's shape (B, H, N, D) = {tuple(q.shape)}, got {tuple(t.shape)}")
    batch, heads, seq_len, head_dim = q.shape
    if head_dim not in HEAD_DIMS:
        raise ValueError(f"{op}: head dim D = q.shape[-1] must be one of {HEAD_DIMS}, got {head_dim}")
    if seq_len < 1 or batch < 1 or heads < 1:
        raise ValueError(f"{op}: q must have B, H, N >= 1, got shape {tuple(q.shape)}")
    return batch, heads, seq_len, head_dim


def _check_buffer(
    op: str,
    name: str,
    t: torch.Tensor,
    shape: tuple[int, ...],
    like_name: str,
    like: torch.Tensor,
    written: bool = False,
) -> None:
    """Check a tensor that must have exactly `shape` and like's dtype and device; any strides, but an output (written)
    may not repeat elements through a zero stride."""
    check_tensor(op, name, t, dtypes=(like.dtype,))
    check_same(op, like_name, like, **{name: t})
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{op}: {name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    if written and any(st == 0 and n > 1 for st, n in zip(t.stride(), t.shape, strict=True)):
        raise ValueError(f"{op}: output {name} must not have zero strides (expanded tensor), got strides {t.stride()}")


def _check_stats(op: str, name: str, t: torch.Tensor, shape: tuple[int, ...], like: torch.Tensor) -> None:
    """Check a per-row fp32 statistic (lse): shape (B, H, N), contiguous, on like's device."""
    check_tensor(op, name, t, dtypes=(torch.float32,))
    if t.device != like.device:
        raise ValueError(f"{op}: {name} is on {t.device} but the inputs are on {like.device}")
    if tuple(t.shape) != tuple(shape) or not t.is_contiguous():
        raise ValueError(
            f"{op}: {name} must be a contiguous fp32 tensor of shape {tuple(shape)}, "
            f"got shape {tuple(t.shape)} with strides {t.stride()}"
        )


def _check_packed(op: str, qkv: torch.Tensor, num_heads: int) -> tuple[int, int, int, int]:
    """Check qkv (B, N, 3 * H * D) for `num_heads` heads, with D in HEAD_DIMS. Returns (B, H, N, D)."""
    check_tensor(op, "qkv", qkv, ndim=3)
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"{op}: num_heads must be a positive int, got {num_heads!r}")
    width = qkv.shape[-1]
    if width % (3 * num_heads) != 0:
        raise ValueError(
            f"{op}: qkv's last dim must be 3 * num_heads * D, divisible by 3 * num_heads = {3 * num_heads}, got {width}"
        )
    return _check_qkv(op, *_split_packed(qkv, num_heads))


def _split_packed(qkv: torch.Tensor, num_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, N, 3 * H * D) -> q, k, v views (B, H, N, D), split exactly as timm's `qkv.reshape(B, N, 3, H, D)`."""
    head_dim = qkv.shape[-1] // (3 * num_heads)
    parts = qkv.unflatten(-1, (3, num_heads, head_dim)).permute(2, 0, 3, 1, 4)
    return parts[0], parts[1], parts[2]


def _heads_view(t: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, N, H * D) -> (B, H, N, D) view."""
    return t.unflatten(-1, (num_heads, t.shape[-1] // num_heads)).transpose(1, 2)


def _default_scale(head_dim: int, scale: float | None) -> float:
    return head_dim**-0.5 if scale is None else float(scale)


def attention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    out: torch.Tensor | None = None,
    lse: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward. q, k, v: (B, H, N, D), any strides. Returns out (B, H, N, D) in q's dtype (written into
    `out` if given, which may be any strided view) and lse (B, H, N) fp32 contiguous: logsumexp of each row of scaled
    scores, in base 2 (L * log2(e))."""
    op = "attention_fwd"
    batch, heads, seq_len, _ = _check_qkv(op, q, k, v)
    if out is None:
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    else:
        _check_buffer(op, "out", out, q.shape, "q", q, written=True)
    if lse is None:
        lse = torch.empty((batch, heads, seq_len), dtype=torch.float32, device=q.device)
    else:
        _check_stats(op, "lse", lse, (batch, heads, seq_len), q)
    _launch_attention_fwd(q, k, v, scale, out, lse)
    return out, lse


def _launch_attention_fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, out: torch.Tensor, lse: torch.Tensor
) -> None:
    batch, heads, seq_len, head_dim = q.shape

    def grid(meta: dict) -> tuple[int]:
        return (triton.cdiv(seq_len, meta["BLOCK_M"]) * batch * heads,)

    _attn_fwd_kernel[grid](
        q,
        k,
        v,
        out,
        lse,
        *q.stride(),
        *k.stride(),
        *v.stride(),
        *out.stride(),
        heads,
        seq_len,
        scale * LOG2E,
        HEAD_DIM=head_dim,
        DOT_PRECISION=dot_precision(q.dtype),
    )


def attention_bwd(
    d_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    scale: float,
    dq: torch.Tensor | None = None,
    dk: torch.Tensor | None = None,
    dv: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the backward. d_out, q, k, v, out: (B, H, N, D), any strides; lse: (B, H, N) fp32 from the forward.
    Returns dq, dk, dv (B, H, N, D) in q's dtype, written into the given buffers (any strided views) if any."""
    op = "attention_bwd"
    batch, heads, seq_len, _ = _check_qkv(op, q, k, v)
    _check_buffer(op, "d_out", d_out, q.shape, "q", q)
    _check_buffer(op, "out", out, q.shape, "q", q)
    _check_stats(op, "lse", lse, (batch, heads, seq_len), q)
    grads = []
    for name, buf in (("dq", dq), ("dk", dk), ("dv", dv)):
        if buf is None:
            buf = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        else:
            _check_buffer(op, name, buf, q.shape, "q", q, written=True)
        grads.append(buf)
    _launch_attention_bwd(d_out, q, k, v, out, lse, scale, *grads)
    return grads[0], grads[1], grads[2]


def _launch_attention_bwd(
    d_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    scale: float,
    dq: torch.Tensor,
    dk: torch.Tensor,
    dv: torch.Tensor,
) -> None:
    batch, heads, seq_len, head_dim = q.shape
    delta = torch.empty((batch, heads, seq_len), dtype=torch.float32, device=q.device)
    _attn_bwd_preprocess_kernel[(triton.cdiv(seq_len, _PREPROCESS_BLOCK_M) * batch * heads,)](
        out,
        d_out,
        delta,
        *out.stride(),
        *d_out.stride(),
        heads,
        seq_len,
        HEAD_DIM=head_dim,
        BLOCK_M=_PREPROCESS_BLOCK_M,
    )

    def grid(meta: dict) -> tuple[int]:
        return (2 * triton.cdiv(seq_len, meta["BLOCK_OWN"]) * batch * heads,)

    _attn_bwd_kernel[grid](
        q,
        k,
        v,
        d_out,
        lse,
        delta,
        dq,
        dk,
        dv,
        *q.stride(),
        *k.stride(),
        *v.stride(),
        *d_out.stride(),
        *dq.stride(),
        *dk.stride(),
        *dv.stride(),
        heads,
        seq_len,
        scale,
        scale * LOG2E,
        HEAD_DIM=head_dim,
        DOT_PRECISION=dot_precision(q.dtype),
    )


def attention_qkv_fwd(
    qkv: torch.Tensor,
    num_heads: int,
    scale: float | None,
    out: torch.Tensor | None = None,
    lse: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward on a packed qkv (B, N, 3 * H * D); scale None for D**-0.5. Returns out (B, N, H * D) in
    qkv's dtype (written into `out` if given) and lse (B, H, N) fp32."""
    op = "attention_qkv_fwd"
    batch, heads, seq_len, head_dim = _check_packed(op, qkv, num_heads)
    if out is None:
        out = torch.empty((batch, seq_len, heads * head_dim), dtype=qkv.dtype, device=qkv.device)
    else:
        _check_buffer(op, "out", out, (batch, seq_len, heads * head_dim), "qkv", qkv, written=True)
    if lse is None:
        lse = torch.empty((batch, heads, seq_len), dtype=torch.float32, device=qkv.device)
    else:
        _check_stats(op, "lse", lse, (batch, heads, seq_len), qkv)
    q, k, v = _split_packed(qkv, heads)
    _launch_attention_fwd(q, k, v, _default_scale(head_dim, scale), _heads_view(out, heads), lse)
    return out, lse


def attention_qkv_bwd(
    d_out: torch.Tensor,
    qkv: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    num_heads: int,
    scale: float | None,
    d_qkv: torch.Tensor | None = None,
) -> torch.Tensor:
    """Launch the backward on a packed qkv; scale None for D**-0.5. d_out, out: (B, N, H * D); lse: (B, H, N) fp32.
    Returns d_qkv (B, N, 3 * H * D) in qkv's dtype, written into the given buffer if any."""
    op = "attention_qkv_bwd"
    batch, heads, seq_len, head_dim = _check_packed(op, qkv, num_heads)
    _check_buffer(op, "d_out", d_out, (batch, seq_len, heads * head_dim), "qkv", qkv)
    _check_buffer(op, "out", out, (batch, seq_len, heads * head_dim), "qkv", qkv)
    _check_stats(op, "lse", lse, (batch, heads, seq_len), qkv)
    if d_qkv is None:
        d_qkv = torch.empty(qkv.shape, dtype=qkv.dtype, device=qkv.device)
    else:
        _check_buffer(op, "d_qkv", d_qkv, tuple(qkv.shape), "qkv", qkv, written=True)
    q, k, v = _split_packed(qkv, heads)
    dq, dk, dv = _split_packed(d_qkv, heads)
    d_out_heads, out_heads = _heads_view(d_out, heads), _heads_view(out, heads)
    _launch_attention_bwd(d_out_heads, q, k, v, out_heads, lse, _default_scale(head_dim, scale), dq, dk, dv)
    return d_qkv


# ----------------------------------------------------------------------------------------------------------------------
# Reference
# ----------------------------------------------------------------------------------------------------------------------
def attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Plain torch attention with the kernel's rounding points: scores and softmax in fp32 (fp64 stays fp64), P
    rounded to v's dtype before P V. q, k, v: (B, H, N, D). Returns (B, H, N, D) in q's dtype."""
    scale = _default_scale(q.shape[-1], scale)
    compute = torch.promote_types(q.dtype, torch.float32)
    scores = torch.matmul(q.to(compute), k.to(compute).transpose(-2, -1)) * scale
    probs = torch.softmax(scores, dim=-1)
    return torch.matmul(probs.to(v.dtype), v).to(q.dtype)


def attention_qkv_ref(qkv: torch.Tensor, num_heads: int, scale: float | None = None) -> torch.Tensor:
    """`attention_ref` on timm's packed layout. qkv: (B, N, 3 * H * D). Returns (B, N, H * D)."""
    batch, seq_len, width = qkv.shape
    head_dim = width // (3 * num_heads)
    q, k, v = qkv.reshape(batch, seq_len, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    return attention_ref(q, k, v, scale).transpose(1, 2).reshape(batch, seq_len, num_heads * head_dim)


# ----------------------------------------------------------------------------------------------------------------------
# Custom ops: each checks its inputs once (in the launcher it calls)
# ----------------------------------------------------------------------------------------------------------------------
@torch.library.custom_op("fastdeit::attention_fwd", mutates_args=())
def _attention_fwd_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    return attention_fwd(q, k, v, scale)


@torch.library.custom_op("fastdeit::attention_bwd", mutates_args=())
def _attention_bwd_op(
    d_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return attention_bwd(d_out, q, k, v, out, lse, scale)


@torch.library.custom_op("fastdeit::attention_qkv_fwd", mutates_args=())
def _attention_qkv_fwd_op(qkv: torch.Tensor, num_heads: int, scale: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    return attention_qkv_fwd(qkv, num_heads, scale)


@torch.library.custom_op("fastdeit::attention_qkv_bwd", mutates_args=())
def _attention_qkv_bwd_op(
    d_out: torch.Tensor, qkv: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, num_heads: int, scale: float | None
) -> torch.Tensor:
    return attention_qkv_bwd(d_out, qkv, out, lse, num_heads, scale)


# ----------------------------------------------------------------------------------------------------------------------
# Fake (shape-only) implementations, for torch.compile
# ----------------------------------------------------------------------------------------------------------------------
@_attention_fwd_op.register_fake
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    batch, heads, seq_len, _ = _check_qkv("attention_fwd", q, k, v)
    return q.new_empty(q.shape), q.new_empty((batch, heads, seq_len), dtype=torch.float32)


@_attention_bwd_op.register_fake
def _(
    d_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return q.new_empty(q.shape), q.new_empty(q.shape), q.new_empty(q.shape)


@_attention_qkv_fwd_op.register_fake
def _(qkv: torch.Tensor, num_heads: int, scale: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    batch, heads, seq_len, head_dim = _check_packed("attention_qkv_fwd", qkv, num_heads)
    return (
        qkv.new_empty((batch, seq_len, heads * head_dim)),
        qkv.new_empty((batch, heads, seq_len), dtype=torch.float32),
    )


@_attention_qkv_bwd_op.register_fake
def _(
    d_out: torch.Tensor, qkv: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, num_heads: int, scale: float | None
) -> torch.Tensor:
    return qkv.new_empty(qkv.shape)


# ----------------------------------------------------------------------------------------------------------------------
# Autograd
# ----------------------------------------------------------------------------------------------------------------------
def _attention_setup_context(ctx, inputs: tuple, output: tuple) -> None:
    q, k, v, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.scale = scale
    ctx.mark_non_differentiable(lse)


def _attention_backward(ctx, d_out: torch.Tensor, d_lse: torch.Tensor | None) -> tuple:
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = _attention_bwd_op(d_out, q, k, v, out, lse, ctx.scale)
    return dq, dk, dv, None


_attention_fwd_op.register_autograd(_attention_backward, setup_context=_attention_setup_context)


def _attention_qkv_setup_context(ctx, inputs: tuple, output: tuple) -> None:
    qkv, num_heads, scale = inputs
    out, lse = output
    ctx.save_for_backward(qkv, out, lse)
    ctx.num_heads = num_heads
    ctx.scale = scale
    ctx.mark_non_differentiable(lse)


def _attention_qkv_backward(ctx, d_out: torch.Tensor, d_lse: torch.Tensor | None) -> tuple:
    qkv, out, lse = ctx.saved_tensors
    return _attention_qkv_bwd_op(d_out, qkv, out, lse, ctx.num_heads, ctx.scale), None, None


_attention_qkv_fwd_op.register_autograd(_attention_qkv_backward, setup_context=_attention_qkv_setup_context)


# ----------------------------------------------------------------------------------------------------------------------
# Public functions
# ----------------------------------------------------------------------------------------------------------------------
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Non-causal multi-head attention softmax(scale * q k^T) v, fused, with autograd.

    Args:
        q, k, v: (B, H, N, D), same shape, dtype (fp32, fp16 or bf16) and device; any strides (views are read in
            place). N >= 1 any length; D in HEAD_DIMS = (16, 32, 64, 128).
        scale: score scale, default D**-0.5.

    Returns:
        (B, H, N, D) contiguous, in q's dtype. Gradients dq, dk, dv: (B, H, N, D). fp32 on a GPU under torch's
        default "highest" fp32 matmul precision runs torch's SDPA (IEEE), see `triton_dots_fit`.
    """
    if not isinstance(q, torch.Tensor):
        raise TypeError(f"attention: q must be a torch.Tensor, got {type(q).__name__}")
    scale = _default_scale(q.shape[-1], scale)
    if not triton_dots_fit(q.dtype, q.device):
        _check_qkv("attention", q, k, v)
        return F.scaled_dot_product_attention(q, k, v, scale=scale).contiguous()
    out, _ = torch.ops.fastdeit.attention_fwd(q, k, v, scale)
    return out


def attention_qkv(qkv: torch.Tensor, num_heads: int, scale: float | None = None) -> torch.Tensor:
    """`attention` on the packed output of a fused qkv projection, in timm's layout, with no copies.

    Args:
        qkv: (B, N, 3 * H * D), read as timm's `qkv.reshape(B, N, 3, H, D)` (index 0: q, 1: k, 2: v); any strides.
            fp32, fp16 or bf16; D = qkv.shape[-1] // (3 * num_heads) in HEAD_DIMS = (16, 32, 64, 128).
        num_heads: H.
        scale: score scale, default D**-0.5.

    Returns:
        (B, N, H * D) contiguous, in qkv's dtype: timm's `(attn @ v).transpose(1, 2).reshape(B, N, H * D)`, ready for
        the output projection. The gradient for qkv comes back packed, (B, N, 3 * H * D). fp32 with IEEE dots on
        a GPU runs torch's SDPA, as `attention`.
    """
    if not isinstance(qkv, torch.Tensor):
        raise TypeError(f"attention_qkv: qkv must be a torch.Tensor, got {type(qkv).__name__}")
    if not triton_dots_fit(qkv.dtype, qkv.device):
        batch, heads, seq_len, head_dim = _check_packed("attention_qkv", qkv, num_heads)
        q, k, v = _split_packed(qkv, heads)
        out = F.scaled_dot_product_attention(q, k, v, scale=_default_scale(head_dim, scale))
        return out.transpose(1, 2).reshape(batch, seq_len, heads * head_dim)
    out, _ = torch.ops.fastdeit.attention_qkv_fwd(qkv, num_heads, scale)
    return out
