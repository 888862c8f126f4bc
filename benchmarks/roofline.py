"""Roofline floors of the DeiT models: per op, the FLOPs, the fewest bytes moved, and the time neither can go under.

    fastdeit bench --roofline --models b-dist --batch-size 256 --gpu h100
    fastdeit bench --roofline --models b-dist s-dist ti-dist --mode training --teacher regnety_160
    fastdeit bench --roofline --models b-dist --csv benchmarks/results/results.csv    (+ the achieved share)

Everything is counted from the architecture (width, depth, heads, MLP ratio, tokens including the class and
distillation tokens, patch and image size, classes); no model is built and no GPU is needed. For each op:
- FLOPs: 2 x multiply-adds of its matrix products (linear layers, the patch-embedding convolution, the two attention
  matmuls QK^T and PV). Elementwise arithmetic (LayerNorm, softmax, GELU, adds) is not counted: it runs far under
  the time its bytes take.
- bytes: the fewest the op can move through device memory: each input read once, each output written once (weights
  and saved statistics included), as the schedule's kernels see them.
- floor: max(FLOPs / matmul rate, bytes / copy bandwidth). A schedule's floor is the sum over its ops (kernels run
  one after another), and its floor img/s = batch / that sum. No real run reaches it: it is where each kernel would
  be if it ran at the chip's matmul rate or copy bandwidth, whichever binds.

Two schedules of the same model:
- fused (fastdeit today): norm2 also does the first residual add (reads x and the attention projection, writes the
  sum s and LN(s)); fc1 applies GELU in its epilogue; fc2 adds its bias and the second residual in its epilogue; qkv
  and proj are plain matmuls with the bias in the epilogue; attention is one flash kernel on the packed qkv (reads q,
  k, v once, writes o); norm1 of the next block reads the block's output.
- unfused (timm eager): every op reads its inputs and writes its output: LayerNorm, GELU and both residual adds are
  kernels of their own. Attention is fused there too (timm calls F.scaled_dot_product_attention, flash backend).

Precision. Inference: the whole model in bf16 or fp16 (2 bytes per value), as `fastdeit bench` runs it. Training: one
step of the AMP recipe that `fastdeit bench` and timm use (torch.autocast over fp32 weights): the residual stream and
the LayerNorm outputs are fp32 (autocast runs layer_norm in fp32; `x + branch` promotes), each linear layer's input
is cast to the 16-bit dtype by a separate kernel, matmul outputs, attention and GELU are 16-bit. Then:
- backward of every op: matmuls as two products (dgrad and wgrad, each the forward's FLOPs) plus the bias gradient
  (a reduction over the output gradient), the saved activations read back, the gradients written; LayerNorm and GELU
  backward; the cast kernels' backward; the gradient sums where a tensor feeds two ops (the block input feeds norm1
  and the residual); in the unfused schedule the copies autograd makes for timm's packed qkv (unbind -> stack,
  permute + reshape -> a contiguous copy; fastdeit's attention writes d(qkv) in place). Attention backward
  recomputes the probabilities: FlashAttention-2 (SDPA) does 5 N x N matmuls, fastdeit's kernel 7 (its dK/dV and dQ
  programs each recompute P), against 2 in the forward. The patch embedding has no input gradient (images).
- per step, not per image: the autocast weight casts (fp32 read, 16-bit written), the weight gradients' cast back to
  fp32, and the fused AdamW step (reads parameters, gradients and both moments in fp32, writes parameters and
  moments: 28 bytes per parameter), spread over the batch.
- a teacher (`--teacher regnety_160`): its forward FLOPs only (31.9 GFLOP per 224 image, 2 x timm's GMACs), at the
  matmul rate; its bytes are not counted.
Left out: the loss on the (batch, classes) logits and the tiny LayerNorm weight-gradient partial sums (each well
under 0.1% of a step's bytes), launch gaps, and FlashAttention-2's fp32 dQ accumulation scratch.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from fastdeit.models import model_config
from fastdeit.models.config import VisionTransformerConfig

from .common import DEFAULT_CSV, format_columns, latest_rows, read_rows
from .models import TEACHER_GFLOP_224, resolve_models

SCHEDULES = ("fused", "unfused")
ROOFLINE_DTYPES = {"bf16": 2, "fp16": 2}  # bytes per value
FP32 = 4
ADAMW_BYTES_PER_PARAM = 7 * FP32  # fp32 reads of param, grad, exp_avg, exp_avg_sq; writes of param and both moments
# Providers whose model runs fastdeit's fused schedule; every other provider is judged against the unfused one
# (torch.compile may fuse more than timm eager does, so its share of the unfused floor can exceed what eager reaches).
FUSED_PROVIDERS = ("fastdeit", "fastdeit-cudagraph", "fastdeit-compile")


@dataclass(frozen=True)
class Gpu:
    """A GPU's datasheet peaks and the ceilings the floors use (dense bf16/fp16 tensor-core rate, HBM bandwidth)."""

    key: str
    name: str
    datasheet_tflops: float
    datasheet_tbps: float
    datasheet: str
    tflops: float
    tbps: float
    ceilings: str

    @property
    def flops_per_s(self) -> float:
        return self.tflops * 1e12

    @property
    def bytes_per_s(self) -> float:
        return self.tbps * 1e12

    def describe(self) -> list[str]:
        return [
            f"GPU {self.name}: datasheet {self.datasheet_tflops:g} TFLOP/s dense bf16/fp16, "
            f"{self.datasheet_tbps:g} TB/s HBM ({self.datasheet})",
            f"floors use {self.tflops:g} TFLOP/s and {self.tbps:.1f} TB/s: {self.ceilings}",
        ]


_MEASURED = (
    "measured with plain torch (no fastdeit code) on the H100 and H200 machines fastdeit is lent, not datasheet "
    "figures: bf16 matmul ~790 TFLOP/s "
    "(torch.matmul 8192x8192x8192 on random data), copy bandwidth from a large device-to-device copy counting bytes "
    "read plus written"
)
GPUS: dict[str, Gpu] = {
    g.key: g
    for g in (
        Gpu("h100", "NVIDIA H100 SXM5 80 GB", 989, 3.35,
            "NVIDIA H100 Tensor Core GPU datasheet: 1,979 TFLOP/s bf16 with 2:4 sparsity, half that dense", 790, 3.0,
            _MEASURED),
        Gpu("h200", "NVIDIA H200 SXM 141 GB", 989, 4.8,
            "NVIDIA H200 Tensor Core GPU datasheet: 1,979 TFLOP/s bf16 with 2:4 sparsity, half that dense", 790, 4.3,
            _MEASURED),
        Gpu("a100", "NVIDIA A100 SXM4 80 GB", 312, 2.039,
            "NVIDIA A100 Tensor Core GPU datasheet: 312 TFLOP/s bf16 dense, 2,039 GB/s for the 80 GB SXM4", 312, 2.039,
            "the datasheet figures: not measured here, so these floors are further from reach than the H100/H200 ones"),
    )
}  # fmt: skip


def gpu_of(name: str) -> Gpu | None:
    """The GPU a results row's `gpu_name` names (e.g. 'NVIDIA H200'), or None for any other device."""
    upper = name.upper()
    for key, gpu in GPUS.items():
        if key.upper() in upper:
            return gpu
    return None


@dataclass(frozen=True)
class Arch:
    """What the counts need of a DeiT model (from its `VisionTransformerConfig`)."""

    name: str
    img_size: int
    patch_size: int
    in_chans: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float
    num_classes: int
    distilled: bool

    @property
    def patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    @property
    def prefix(self) -> int:
        """Class token, plus the distillation token of a distilled model; one classifier head each."""
        return 2 if self.distilled else 1

    @property
    def tokens(self) -> int:
        return self.patches + self.prefix

    @property
    def hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)


def architecture(name: str, img_size: int | None = None) -> Arch:
    """The architecture of fastdeit model `name` (a full name; aliases go through `resolve_models`) at `img_size`
    (default: the model's own), read from the config fastdeit builds it from."""
    cfg = VisionTransformerConfig(name=name, **model_config(name))
    size = img_size or cfg.img_size[0]
    patch = cfg.patch_size[0]
    if size % patch:
        raise ValueError(f"img_size must be a multiple of the patch size {patch}, got {size}")
    return Arch(
        name=name,
        img_size=size,
        patch_size=patch,
        in_chans=cfg.in_chans,
        embed_dim=cfg.embed_dim,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_ratio,
        num_classes=cfg.num_classes,
        distilled=cfg.distilled,
    )


@dataclass(frozen=True)
class Op:
    """One kernel of a schedule, per training step or forward of the whole batch.

    `key` names the row it shares with the other schedule's op doing the same work; `absorbs` lists the keys of the
    unfused ops this one also does (fused epilogues); `count` is how often it runs per step (depth for block ops).
    """

    key: str
    name: str
    part: str
    flops: float
    bytes: float
    count: int = 1
    absorbs: tuple[str, ...] = ()

    def seconds(self, gpu: Gpu) -> float:
        """Floor time of one run of the op."""
        return max(self.flops / gpu.flops_per_s, self.bytes / gpu.bytes_per_s)

    def bound(self, gpu: Gpu) -> str:
        return "compute" if self.flops / gpu.flops_per_s > self.bytes / gpu.bytes_per_s else "memory"


def _op(key: str, name: str, part: str, *, flops: float = 0.0, reads: Iterable[float] = (),
        writes: Iterable[float] = (), count: int = 1, absorbs: tuple[str, ...] = ()) -> Op:  # fmt: skip
    return Op(key, name, part, float(flops), float(sum(reads) + sum(writes)), count, absorbs)


class _Counts:
    """Element counts and FLOPs of one model at one batch size, shared by every schedule and mode."""

    def __init__(self, arch: Arch, batch: int) -> None:
        if batch < 1:
            raise ValueError(f"batch size must be >= 1, got {batch}")
        a = arch
        C, F, N = a.embed_dim, a.hidden, a.tokens
        self.C, self.F, self.N = C, F, N
        self.tok = batch * N * C  # one (B, N, C) activation
        self.hid = batch * N * F  # one (B, N, hidden) activation
        self.rows = batch * N  # LayerNorm rows (one fp32 mean and rstd each)
        self.lse = batch * a.num_heads * N  # attention's per-row statistics
        self.image = batch * a.in_chans * a.img_size**2
        self.kernel = a.in_chans * a.patch_size**2  # patch-embedding reduction width
        self.patch_out = batch * a.patches * C
        self.head_in = batch * a.prefix * C  # the prefix tokens the heads read
        self.logits = batch * a.prefix * a.num_classes
        # Parameters: (weight, bias) element counts of every matmul layer, and all parameters.
        self.linears = {"qkv": (3 * C * C, 3 * C), "proj": (C * C, C), "fc1": (F * C, F), "fc2": (C * F, C)}
        self.patch_params = (C * self.kernel, C)
        self.head_params = (a.prefix * a.num_classes * C, a.prefix * a.num_classes)
        matmul_per_block = sum(w + b for w, b in self.linears.values())
        self.cast_params = a.depth * matmul_per_block + sum(self.patch_params) + sum(self.head_params)
        norms = (2 * a.depth + 1) * 2 * C
        embeddings = a.prefix * C + N * C
        self.all_params = self.cast_params + norms + embeddings
        # Forward FLOPs of the matmuls.
        self.flops = {k: 2.0 * self.rows * w for k, (w, _) in self.linears.items()}
        self.flops["attention"] = 2 * 2.0 * batch * N * N * C  # QK^T and PV over all heads
        self.flops["patch_embed"] = 2.0 * self.patch_out * self.kernel
        self.flops["heads"] = 2.0 * self.head_in * a.num_classes

    def weight(self, key: str) -> int:
        return sum(self.linears[key])


def inference_ops(arch: Arch, batch: int, schedule: str, act: int = 2) -> list[Op]:
    """The forward of `arch` at `batch` in a 16-bit dtype of `act` bytes, as `schedule` runs it."""
    _check_schedule(schedule)
    c = _Counts(arch, batch)
    tok, hid, C, N, e, d = c.tok, c.hid, c.C, c.N, act, arch.depth
    W = {k: c.weight(k) * e for k in c.linears}  # weight and bias bytes of each linear layer
    # fmt: off
    ops = [
        _op("patch_embed", "patch_embed (conv as matmul)", "embed", flops=c.flops["patch_embed"],
            reads=(c.image * e, sum(c.patch_params) * e), writes=(c.patch_out * e,)),
        _op("tokens", "prepend cls/dist tokens", "embed", reads=(c.patch_out * e, arch.prefix * C * e),
            writes=(tok * e,)),
        _op("pos_embed", "pos_embed add", "embed", reads=(tok * e, N * C * e), writes=(tok * e,)),
        _op("norm1", "norm1", "block", reads=(tok * e, 2 * C * e), writes=(tok * e,), count=d),
        _op("qkv", "qkv (+bias)", "block", flops=c.flops["qkv"], reads=(tok * e, W["qkv"]), writes=(3 * tok * e,),
            count=d),
        _op("attention", "attention (flash)", "block", flops=c.flops["attention"], reads=(3 * tok * e,),
            writes=(tok * e,), count=d),
        _op("proj", "proj (+bias)", "block", flops=c.flops["proj"], reads=(tok * e, W["proj"]), writes=(tok * e,),
            count=d),
    ]
    if schedule == "unfused":
        ops += [
            _op("add1", "add1 (x + attn)", "block", reads=(2 * tok * e,), writes=(tok * e,), count=d),
            _op("norm2", "norm2", "block", reads=(tok * e, 2 * C * e), writes=(tok * e,), count=d),
            _op("fc1", "fc1 (+bias)", "block", flops=c.flops["fc1"], reads=(tok * e, W["fc1"]), writes=(hid * e,),
                count=d),
            _op("gelu", "GELU", "block", reads=(hid * e,), writes=(hid * e,), count=d),
            _op("fc2", "fc2 (+bias)", "block", flops=c.flops["fc2"], reads=(hid * e, W["fc2"]), writes=(tok * e,),
                count=d),
            _op("add2", "add2 (x + mlp)", "block", reads=(2 * tok * e,), writes=(tok * e,), count=d),
        ]
    else:
        ops += [
            _op("norm2", "norm2 (+add1)", "block", reads=(2 * tok * e, 2 * C * e), writes=(2 * tok * e,), count=d,
                absorbs=("add1",)),
            _op("fc1", "fc1 (+bias, GELU)", "block", flops=c.flops["fc1"], reads=(tok * e, W["fc1"]),
                writes=(hid * e,), count=d, absorbs=("gelu",)),
            _op("fc2", "fc2 (+bias, add2)", "block", flops=c.flops["fc2"], reads=(hid * e, tok * e, W["fc2"]),
                writes=(tok * e,), count=d, absorbs=("add2",)),
        ]
    ops += [
        _op("norm", "final norm", "head", reads=(tok * e, 2 * C * e), writes=(tok * e,)),
        _op("heads", "heads (cls, dist)" if arch.distilled else "head (cls)", "head", flops=c.flops["heads"],
            reads=(c.head_in * e, sum(c.head_params) * e), writes=(c.logits * e,)),
    ]
    if arch.distilled:
        ops.append(_op("head_mean", "mean of the two heads", "head", reads=(c.logits * e,),
                       writes=(c.logits // 2 * e,)))
    # fmt: on
    return ops


def training_ops(arch: Arch, batch: int, schedule: str, act: int = 2) -> list[Op]:
    """One AMP training step of `arch` at `batch` (forward, backward, AdamW), autocast to a dtype of `act` bytes."""
    _check_schedule(schedule)
    c = _Counts(arch, batch)
    tok, hid, C, F, N = c.tok, c.hid, c.C, c.F, c.N
    e, f, d, prefix = act, FP32, arch.depth, arch.prefix
    W = {k: c.weight(k) * e for k in c.linears}
    stats = 2 * c.rows * f  # LayerNorm mean and rstd
    fused = schedule == "fused"

    def block(*args: object, **kw: object) -> Op:
        return _op(*args, count=d, **kw)  # type: ignore[arg-type]

    def linear_bwd(key: str, x_bytes: float, y_bytes: float, width_in: int, width_out: int) -> list[Op]:
        """dgrad, wgrad and the bias gradient of one linear layer; its input x was saved in the 16-bit dtype."""
        w = width_in * width_out * e
        # fmt: off
        return [
            block(f"{key} dgrad", f"{key} dgrad", "block bwd", flops=c.flops[key], reads=(y_bytes, w),
                  writes=(x_bytes,)),
            block(f"{key} wgrad", f"{key} wgrad", "block bwd", flops=c.flops[key], reads=(y_bytes, x_bytes),
                  writes=(w,)),
            block(f"{key} bgrad", f"{key} bias grad", "block bwd", reads=(y_bytes,), writes=(width_out * f,)),
        ]
        # fmt: on

    # fmt: off
    # Per step: the autocast weight casts, their gradients back to fp32, the optimizer.
    ops = [
        _op("weight casts", "weight casts to 16-bit (autocast)", "weights", reads=(c.cast_params * f,),
            writes=(c.cast_params * e,)),
        _op("weight grads", "weight grads to fp32 (cast bwd)", "weights", reads=(c.cast_params * e,),
            writes=(c.cast_params * f,)),
        _op("adamw", "AdamW (fused, fp32 state)", "weights", reads=(c.all_params * ADAMW_BYTES_PER_PARAM,)),
    ]
    # Embedding, forward: images cast by autocast for the conv; cat with the fp32 cls/dist tokens promotes to fp32.
    ops += [
        _op("image cast", "image cast (autocast)", "embed", reads=(c.image * f,), writes=(c.image * e,)),
        _op("patch_embed", "patch_embed (conv as matmul)", "embed", flops=c.flops["patch_embed"],
            reads=(c.image * e, sum(c.patch_params) * e), writes=(c.patch_out * e,)),
        _op("tokens", "prepend cls/dist tokens (-> fp32)", "embed", reads=(c.patch_out * e, prefix * C * f),
            writes=(tok * f,)),
        _op("pos_embed", "pos_embed add", "embed", reads=(tok * f, N * C * f), writes=(tok * f,)),
    ]
    # Blocks, forward.
    ops += [
        block("norm1", "norm1 (fp32 out)", "block", reads=(tok * f, 2 * C * f), writes=(tok * f, stats)),
        block("cast1", "cast qkv input", "block", reads=(tok * f,), writes=(tok * e,)),
        block("qkv", "qkv (+bias)", "block", flops=c.flops["qkv"], reads=(tok * e, W["qkv"]), writes=(3 * tok * e,)),
        block("attention", "attention (flash)", "block", flops=c.flops["attention"], reads=(3 * tok * e,),
              writes=(tok * e, c.lse * f)),
        block("proj", "proj (+bias)", "block", flops=c.flops["proj"], reads=(tok * e, W["proj"]), writes=(tok * e,)),
    ]
    if fused:
        ops += [
            block("norm2", "norm2 (+add1; s and LN(s) fp32)", "block", reads=(tok * e, tok * f, 2 * C * f),
                  writes=(2 * tok * f, stats), absorbs=("add1",)),
            block("cast2", "cast fc1 input", "block", reads=(tok * f,), writes=(tok * e,)),
            block("fc1", "fc1 (+bias, GELU; keeps pre-GELU)", "block", flops=c.flops["fc1"],
                  reads=(tok * e, W["fc1"]), writes=(2 * hid * e,), absorbs=("gelu",)),
            block("fc2", "fc2 (+bias, add2; fp32 out)", "block", flops=c.flops["fc2"],
                  reads=(hid * e, tok * f, W["fc2"]), writes=(tok * f,), absorbs=("add2",)),
        ]
    else:
        ops += [
            block("add1", "add1 (fp32 x + 16-bit attn)", "block", reads=(tok * f, tok * e), writes=(tok * f,)),
            block("norm2", "norm2 (fp32 out)", "block", reads=(tok * f, 2 * C * f), writes=(tok * f, stats)),
            block("cast2", "cast fc1 input", "block", reads=(tok * f,), writes=(tok * e,)),
            block("fc1", "fc1 (+bias)", "block", flops=c.flops["fc1"], reads=(tok * e, W["fc1"]), writes=(hid * e,)),
            block("gelu", "GELU", "block", reads=(hid * e,), writes=(hid * e,)),
            block("fc2", "fc2 (+bias)", "block", flops=c.flops["fc2"], reads=(hid * e, W["fc2"]), writes=(tok * e,)),
            block("add2", "add2 (fp32 x + 16-bit mlp)", "block", reads=(tok * f, tok * e), writes=(tok * f,)),
        ]
    # Head, forward: the final norm over every token (as timm), the heads on the prefix tokens.
    ops += [
        _op("norm", "final norm (fp32 out)", "head", reads=(tok * f, 2 * C * f), writes=(tok * f, stats)),
        _op("heads cast", "cast heads input", "head", reads=(c.head_in * f,), writes=(c.head_in * e,)),
        _op("heads", "heads", "head", flops=c.flops["heads"], reads=(c.head_in * e, sum(c.head_params) * e),
            writes=(c.logits * e,)),
    ]
    # Backward, in the order autograd runs it. Head: each head's token select gives a zero-filled (B, N, C) fp32
    # gradient; a distilled model's two are summed.
    ops += [
        _op("heads dgrad", "heads dgrad", "head bwd", flops=c.flops["heads"],
            reads=(c.logits * e, c.head_params[0] * e), writes=(c.head_in * e,)),
        _op("heads wgrad", "heads wgrad", "head bwd", flops=c.flops["heads"], reads=(c.logits * e, c.head_in * e),
            writes=(c.head_params[0] * e,)),
        _op("heads cast bwd", "heads input grad to fp32", "head bwd", reads=(c.head_in * e,),
            writes=(c.head_in * f,)),
        _op("select bwd", "token select bwd (zero-filled grads)", "head bwd", reads=(c.head_in * f,),
            writes=(prefix * tok * f,)),
    ]
    if prefix > 1:
        ops.append(_op("select sum", "sum of the heads' token grads", "head bwd", reads=(prefix * tok * f,),
                       writes=(tok * f,)))
    ops.append(_op("norm bwd", "final norm bwd", "head bwd", reads=(2 * tok * f, stats, C * f), writes=(tok * f,)))
    # Blocks, backward: the gradient of the block output arrives in fp32.
    ops.append(block("fc2 dz", "fc2 output grad to 16-bit", "block bwd", reads=(tok * f,), writes=(tok * e,)))
    ops += linear_bwd("fc2", hid * e, tok * e, F, C)
    ops.append(block("gelu bwd", "GELU bwd (reads pre-GELU)", "block bwd", reads=(2 * hid * e,), writes=(hid * e,)))
    ops += linear_bwd("fc1", tok * e, hid * e, C, F)
    ops.append(block("cast2 bwd", "fc1 input grad to fp32", "block bwd", reads=(tok * e,), writes=(tok * f,)))
    if fused:
        ops.append(block("norm2 bwd", "norm2 bwd (+add1: ds in; d(attn) 16-bit, dx fp32 out)", "block bwd",
                         reads=(3 * tok * f, stats, C * f), writes=(tok * e, tok * f),
                         absorbs=("norm2 grad sum", "add1 bwd")))
    else:
        ops += [
            block("norm2 bwd", "norm2 bwd", "block bwd", reads=(2 * tok * f, stats, C * f), writes=(tok * f,)),
            block("norm2 grad sum", "grad sum (norm2 input: norm2 + add2)", "block bwd", reads=(2 * tok * f,),
                  writes=(tok * f,)),
            block("add1 bwd", "attn output grad to 16-bit", "block bwd", reads=(tok * f,), writes=(tok * e,)),
        ]
    ops += linear_bwd("proj", tok * e, tok * e, C, C)
    # fastdeit's kernel recomputes P in both its dK/dV and its dQ programs (7 N x N matmuls); FA2 does 5.
    matmuls = 7 if fused else 5
    ops += [
        block("attention delta", "attention bwd: rowsum(dO * O)", "block bwd", reads=(2 * tok * e,),
              writes=(c.lse * f,)),
        block("attention bwd", "attention bwd (recomputes P)", "block bwd", flops=c.flops["attention"] * matmuls / 2,
              reads=(3 * tok * e, tok * e, 2 * c.lse * f), writes=(3 * tok * e,)),
    ]
    if not fused:
        ops += [
            block("qkv grad stack", "d(q, k, v) stacked (unbind bwd)", "block bwd", reads=(3 * tok * e,),
                  writes=(3 * tok * e,)),
            block("qkv grad copy", "d(qkv) made contiguous (permute/reshape bwd)", "block bwd", reads=(3 * tok * e,),
                  writes=(3 * tok * e,)),
        ]
    ops += linear_bwd("qkv", tok * e, 3 * tok * e, C, 3 * C)
    ops += [
        block("cast1 bwd", "qkv input grad to fp32", "block bwd", reads=(tok * e,), writes=(tok * f,)),
        block("norm1 bwd", "norm1 bwd", "block bwd", reads=(2 * tok * f, stats, C * f), writes=(tok * f,)),
        block("norm1 grad sum", "grad sum (block input: norm1 + residual)", "block bwd", reads=(2 * tok * f,),
              writes=(tok * f,)),
    ]
    # Embedding, backward (images need no gradient: no dgrad for the patch embedding).
    ops += [
        _op("pos_embed bwd", "pos_embed grad (sum over batch)", "embed bwd", reads=(tok * f,), writes=(N * C * f,)),
        _op("tokens bwd", "token grads split (patches to 16-bit)", "embed bwd", reads=(tok * f,),
            writes=(c.patch_out * e, prefix * C * f)),
        _op("patch_embed wgrad", "patch_embed wgrad", "embed bwd", flops=c.flops["patch_embed"],
            reads=(c.patch_out * e, c.image * e), writes=(c.patch_params[0] * e,)),
        _op("patch_embed bgrad", "patch_embed bias grad", "embed bwd", reads=(c.patch_out * e,), writes=(C * f,)),
    ]
    # fmt: on
    return ops


def teacher_op(teacher: str, img_size: int, batch: int) -> Op:
    """A CNN teacher's forward per step, compute only (its FLOPs scale with the pixels)."""
    if teacher not in TEACHER_GFLOP_224:
        raise ValueError(f"the roofline knows the FLOPs of teachers {', '.join(TEACHER_GFLOP_224)}, got {teacher!r}")
    flops = TEACHER_GFLOP_224[teacher] * 1e9 * (img_size / 224) ** 2 * batch
    return Op("teacher", f"teacher forward ({teacher}; FLOPs only)", "teacher", flops, 0.0)


def _check_schedule(schedule: str) -> None:
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")


@dataclass(frozen=True)
class Roofline:
    """The ops of one (model, mode, batch, schedule), and their totals."""

    arch: Arch
    mode: str
    batch: int
    schedule: str
    ops: tuple[Op, ...]
    teacher: str | None = None

    @property
    def mode_label(self) -> str:
        """The results CSV's mode: 'inference', 'training' or 'training+TEACHER'."""
        return f"{self.mode}+{self.teacher}" if self.teacher else self.mode

    @property
    def flops(self) -> float:
        return sum(op.flops * op.count for op in self.ops)

    @property
    def bytes(self) -> float:
        return sum(op.bytes * op.count for op in self.ops)

    def seconds(self, gpu: Gpu) -> float:
        """Floor time of one step (forward, or training step) of the whole batch."""
        return sum(op.seconds(gpu) * op.count for op in self.ops)

    def img_per_s(self, gpu: Gpu) -> float:
        return self.batch / self.seconds(gpu)

    def block_ops(self) -> list[Op]:
        return [op for op in self.ops if op.part.startswith("block")]


def roofline(
    arch: Arch, mode: str, batch: int, schedule: str, dtype: str = "bf16", teacher: str | None = None
) -> Roofline:
    """The roofline of `arch` for `mode` ('inference' or 'training'), at `batch`, run as `schedule`."""
    if dtype not in ROOFLINE_DTYPES:
        raise ValueError(
            f"the roofline counts 16-bit runs (dtype {' or '.join(ROOFLINE_DTYPES)}, whose rates the GPU table "
            f"holds), got {dtype!r}"
        )
    act = ROOFLINE_DTYPES[dtype]
    if mode == "inference":
        if teacher is not None:
            raise ValueError("a teacher only runs in training (--mode training)")
        ops = inference_ops(arch, batch, schedule, act)
    elif mode == "training":
        ops = training_ops(arch, batch, schedule, act)
        if teacher is not None:
            ops.append(teacher_op(teacher, arch.img_size, batch))
    else:
        raise ValueError(f"mode must be inference or training, got {mode!r}")
    return Roofline(arch, mode, batch, schedule, tuple(ops), teacher)


def _fmt(v: float, digits: int = 1) -> str:
    return f"{v:,.{digits}f}"


def op_table(fused: Roofline, unfused: Roofline, gpu: Gpu) -> list[str]:
    """Per op: runs per step, then GFLOP, GB, floor time and what binds it in each schedule, for one run of the op.

    Rows follow the unfused schedule; where a fused op also does an unfused op's work, that op's row names it."""
    by_key = {op.key: op for op in fused.ops}
    absorbed = {k: op.key for op in fused.ops for k in op.absorbs}
    cols = ("op", "x", "fused GFLOP", "GB", "us", "bound", "unfused GFLOP", "GB", "us", "bound")
    lines = []
    for op in unfused.ops:
        cells = []
        for o in (by_key.get(op.key), op):
            if o is None:
                cells += ["", f"in {absorbed[op.key]}" if op.key in absorbed else "-", "", ""]
            else:
                cells += [_fmt(o.flops / 1e9), _fmt(o.bytes / 1e9, 3), _fmt(o.seconds(gpu) * 1e6), o.bound(gpu)]
        lines.append((op.name, str(op.count), *cells))
    merged = [f"{op.key} = {op.name}" for op in fused.ops if op.absorbs]
    return [*format_columns(cols, lines, left=1), "fused ops: " + "; ".join(merged)]


def block_summary(fused: Roofline, unfused: Roofline, gpu: Gpu) -> str:
    """One transformer block of each schedule: matmul GFLOP (linear layers + attention), GB and floor time."""
    parts = []
    for r in (fused, unfused):
        ops = r.block_ops()
        attention = sum(op.flops for op in ops if op.key.startswith("attention")) / 1e9
        linear = sum(op.flops for op in ops) / 1e9 - attention
        gb = sum(op.bytes for op in ops) / 1e9
        us = sum(op.seconds(gpu) for op in ops) * 1e6
        parts.append(
            f"{r.schedule} {linear + attention:.1f} GFLOP ({linear:.1f} linear + {attention:.1f} attention), "
            f"{gb:.2f} GB, floor {us:,.0f} us"
        )
    return f"per block (x{fused.arch.depth}): " + "; ".join(parts)


def summary_table(pairs: Sequence[tuple[Roofline, Roofline]], gpu: Gpu) -> list[str]:
    """One line per (model, mode): per-image GFLOP and GB, floor img/s of both schedules and their ratio."""
    cols = ("model", "mode", "batch", "fused GFLOP/img", "fused GB/img", "unfused GB/img", "fused img/s",
            "unfused img/s", "fused/unfused")  # fmt: skip
    lines = []
    for fused, unfused in pairs:
        lines.append(
            (
                fused.arch.name,
                fused.mode_label,
                str(fused.batch),
                _fmt(fused.flops / fused.batch / 1e9, 2),
                _fmt(fused.bytes / fused.batch / 1e6 / 1e3, 3),
                _fmt(unfused.bytes / unfused.batch / 1e6 / 1e3, 3),
                _fmt(fused.img_per_s(gpu), 0),
                _fmt(unfused.img_per_s(gpu), 0),
                f"{fused.img_per_s(gpu) / unfused.img_per_s(gpu):.2f}x",
            )
        )
    return format_columns(cols, lines, left=2)


@dataclass(frozen=True)
class Share:
    """A measured throughput against the floors of the GPU it ran on."""

    gpu: Gpu
    model: str
    mode: str
    provider: str
    batch: int
    img_per_s: float
    schedule: str
    own_floor: float
    fused_floor: float


def measured_shares(
    rows: Iterable[dict[str, str]], archs: Sequence[Arch], modes: Sequence[str], dtype: str, teacher: str | None
) -> tuple[list[Share], int]:
    """The newest throughput rows of these models, modes and dtype on an H100/H200/A100, each against its GPU's floor
    at its own batch; also the number of such rows from other devices (skipped)."""
    wanted = {(a.name, f"3x{a.img_size}x{a.img_size}"): a for a in archs}
    labels = {(f"training+{teacher}" if m == "training" and teacher else m): m for m in modes}
    shares, other_devices = [], 0
    for r in latest_rows(rows):
        arch = wanted.get((r["model_or_op"], r["shape"]))
        if arch is None or r["metric"] != "throughput" or r["dtype"] != dtype or r["mode"] not in labels:
            continue
        gpu = gpu_of(r["gpu_name"])
        if gpu is None:
            other_devices += 1
            continue
        batch, mode = int(r["batch"]), labels[r["mode"]]
        floors = {s: roofline(arch, mode, batch, s, dtype, teacher if mode == "training" else None) for s in SCHEDULES}
        schedule = "fused" if r["provider"] in FUSED_PROVIDERS else "unfused"
        own, best = floors[schedule].img_per_s(gpu), floors["fused"].img_per_s(gpu)
        shares.append(Share(gpu, arch.name, r["mode"], r["provider"], batch, float(r["value"]), schedule, own, best))
    shares.sort(key=lambda s: (s.gpu.key, s.mode, s.model, -s.img_per_s))
    return shares, other_devices


def share_table(shares: Sequence[Share]) -> list[str]:
    cols = ("gpu", "model", "mode", "provider", "batch", "img/s", "schedule", "floor img/s", "share",
            "share of fused floor")  # fmt: skip
    lines = [
        (s.gpu.key, s.model, s.mode, s.provider, str(s.batch), _fmt(s.img_per_s, 0), s.schedule, _fmt(s.own_floor, 0),
         f"{100 * s.img_per_s / s.own_floor:.1f}%", f"{100 * s.img_per_s / s.fused_floor:.1f}%")
        for s in shares
    ]  # fmt: skip
    return format_columns(cols, lines, left=4)


MODE_NOTES = {
    "inference": "inference: forward of the whole model cast to {dtype} (2 bytes per value)",
    "training": (
        "training: one AMP step ({dtype} autocast over fp32 weights: fp32 residual stream and LayerNorm outputs, "
        "16-bit matmuls), forward + backward (dgrad + wgrad, saved activations read back) + fused AdamW (28 B/param)"
    ),
}


def report(
    models: Sequence[str],
    modes: Sequence[str],
    batch: int,
    gpu: Gpu,
    dtype: str = "bf16",
    img_size: int | None = None,
    teacher: str | None = None,
    csv: Path | None = None,
) -> str:
    """The text `fastdeit bench --roofline` prints: peaks and their sources, per-op tables, the summary, and the
    achieved share of the floor for the measured rows of `csv` (if given)."""
    archs = [architecture(m, img_size) for m in models]
    if teacher is not None and "training" not in modes:
        raise ValueError("--teacher adds the teacher's forward to training steps: add --mode training")
    pairs = []
    out = [*gpu.describe(), "ceiling per op: max(FLOPs / rate, bytes / bandwidth); a schedule's floor: their sum"]
    for mode in modes:
        out.append(MODE_NOTES[mode].format(dtype=dtype))
    for arch in archs:
        for mode in modes:
            t = teacher if mode == "training" else None
            fused, unfused = (roofline(arch, mode, batch, s, dtype, t) for s in SCHEDULES)
            pairs.append((fused, unfused))
            out += ["", f"{arch.name}, {mode}, batch {batch}, {dtype}, {arch.tokens} tokens, on {gpu.key}"]
            out += op_table(fused, unfused, gpu)
            out.append(block_summary(fused, unfused, gpu))
    out += ["", f"floors on {gpu.name} ({gpu.tflops:g} TFLOP/s, {gpu.tbps:.1f} TB/s)", *summary_table(pairs, gpu)]
    if csv is not None:
        shares, other_devices = measured_shares(read_rows(csv), archs, modes, dtype, teacher)
        out += [
            "",
            f"achieved share of the floor, measured rows of {csv} (each against its own GPU's floor at its batch; "
            "fastdeit providers against the fused schedule, the others against the unfused one)",
        ]
        out += share_table(shares) if shares else ["no measured throughput rows for these models, modes and dtype"]
        if other_devices:
            out.append(f"({other_devices} rows from devices other than {', '.join(GPUS)} skipped)")
    return "\n".join(out)


DEFAULT_BATCH = 256


def run_from_args(args: argparse.Namespace) -> int:
    """`fastdeit bench --roofline`: the options of `fastdeit bench` that apply (models, mode, batch size, dtype, image
    size, teacher, CSV) and --gpu."""
    dtype = args.dtype or "bf16"
    csv = args.csv
    if csv == DEFAULT_CSV and not csv.exists():
        csv = None  # no measurements committed yet: print the floors only
    text = report(
        models=resolve_models(args.models),
        modes=args.mode,
        batch=DEFAULT_BATCH if args.batch_size is None else args.batch_size,
        gpu=GPUS[args.gpu],
        dtype=dtype,
        img_size=args.img_size,
        teacher=args.teacher,
        csv=None if args.no_csv else csv,
    )
    print(text)
    return 0
