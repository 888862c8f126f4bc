"""Compile report: every Triton kernel of `fastdeit.kernels`, at every config it ships for GPUs, built for a GPU
target on any machine (no GPU needed, TRITON_INTERPRET ignored), with what the compiler made of it.

    fastdeit bench --compile-report [--arch sm_90|sm_80] [--csv PATH]
    python -m fastdeit.benchmarks.compile_report [--arch sm_90] [--csv PATH] [--quick] [--jobs N]

What is built. The launchers (`launch_*`, `attention_qkv_fwd/bwd`) are called on meta tensors shaped as a DeiT
block's, forward and backward, at batch 256 (`--batch-size`), widths 192/384/768 (Ti/S/B, heads of 64) and
197/198/577/578 tokens, in each precision a model runs in (`MODES`); the kernel launches they make are recorded,
not run. Each recorded launch is compiled at every config the kernel would try on a GPU (its autotuner's configs,
or the fixed num_warps/num_stages of its launcher), specialised as Triton's JIT specialises at launch: Triton's own
binder (`create_function_from_signature`) reads stand-ins for the tensors that carry their dtype and a pointer with
the real tensor's alignment, so stride-1 arguments become constexpr 1 and multiples of 16 get divisibility 16; then
`triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32), options=...)`. Launches with one specialisation
are built once; their row lists the DeiT shapes it covers. `--quick` builds DeiT-B at 197 tokens only (every kernel,
mode, variant and config all the same; only the LayerNorm tile follows the width).

What a row says: compiled, or the error; registers per thread; spill stores/loads in bytes (from ptxas's log of the
build itself, which Triton otherwise discards); stack frame bytes (`cuobjdump -res-usage`); shared memory per block
(Triton's dynamic allocation plus the cubin's static); blocks per SM from registers, shared memory and warps at the
target's limits (`ARCHS`); the matrix instruction in the SASS (wgmma = HGMMA, mma.sync = HMMA, FMA when a kernel with
`tl.dot` has neither, "-" without dots); the widths in bits of its global loads (LDG, LDGSTS) and stores (STG); the
ptxas warnings and performance advisories, such as C7515 "wgmma.mma_async instructions are serialized".

A case fails (exit status 1) when it does not compile, spills, needs more shared memory than a block may have, has
serialised wgmma, or leaves a 16-bit or tf32 `tl.dot` off the target's tensor cores (sm_90: wgmma, sm_80: mma.sync);
a kernel that no workload launches fails too. The summary line is printed last.

Builds are cached on disk (compile_report/ in fastdeit's cache folder: $FASTDEIT_CACHE_DIR, else
$XDG_CACHE_HOME/fastdeit, else ~/.cache/fastdeit), keyed by the triton version, the kernel's source hash (its callees
included), the specialisation, the options and the target, so a rerun rebuilds only what changed. For the triton
of the GPU machine, put a side install first on PYTHONPATH:
`pip install --no-deps --target .cache/triton-3.6.0 triton==3.6.0`, then
`PYTHONPATH=.cache/triton-3.6.0 python -m fastdeit.benchmarks.compile_report`.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import csv
import hashlib
import importlib
import io
import json
import math
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fastdeit._env import triton_interpreter

KERNEL_MODULES = ("fastdeit.kernels.layer_norm", "fastdeit.kernels.attention", "fastdeit.kernels.linear")
MODEL_WIDTHS = {192: "Ti", 384: "S", 768: "B"}
TOKENS = (197, 198, 577, 578)
HEAD_DIM = 64
DEFAULT_BATCH = 256
CSV_COLUMNS = (
    "kernel", "mode", "variant", "config", "shapes", "status", "registers", "spill_stores", "spill_loads",
    "stack_bytes", "smem_bytes", "blocks_per_sm", "mma", "load_bits", "store_bits", "ptxas_warnings", "arch",
    "triton_version",
)  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------------
# Targets
# ----------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Arch:
    """Per-SM limits of a GPU architecture (CUDA C++ Programming Guide, "Technical Specifications per Compute
    Capability"; allocation units as in NVIDIA's occupancy calculator)."""

    name: str
    capability: int
    registers_per_sm: int
    max_warps_per_sm: int
    max_blocks_per_sm: int
    smem_per_sm: int  # bytes that resident blocks share
    smem_per_block: int  # the most (static + opt-in dynamic) shared memory one block may have
    smem_reserved_per_block: int  # kept by the CUDA runtime for each resident block
    mma: str  # what a 16-bit or tf32 tl.dot must become


ARCHS = {
    "sm_90": Arch("sm_90", 90, 65536, 64, 32, 233472, 232448, 1024, "wgmma"),
    "sm_80": Arch("sm_80", 80, 65536, 64, 32, 167936, 166912, 1024, "mma.sync"),
}
_REG_ALLOC_UNIT = 256  # registers per warp, allocated in units of 256
_SMEM_ALLOC_UNIT = 128


def blocks_per_sm(arch: Arch, registers: int, smem: int, num_warps: int) -> int:
    """Resident blocks per SM: the least of the warp, register, shared-memory and block-count limits."""
    by_warps = arch.max_warps_per_sm // num_warps
    regs_per_warp = math.ceil(max(registers, 1) * 32 / _REG_ALLOC_UNIT) * _REG_ALLOC_UNIT
    by_regs = (arch.registers_per_sm // regs_per_warp) // num_warps
    smem_block = math.ceil((smem + arch.smem_reserved_per_block) / _SMEM_ALLOC_UNIT) * _SMEM_ALLOC_UNIT
    return min(by_warps, by_regs, arch.smem_per_sm // smem_block, arch.max_blocks_per_sm)


# ----------------------------------------------------------------------------------------------------------------------
# Triton 3.6 (the GPU machine's) and 3.9: everything the report asks of triton, in one place
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class Specialised:
    """One kernel specialised for a launch: what `triton.compile` takes, and the report's cache key for it."""

    src: object
    target: object
    options: dict
    key: str


class TritonAdapter:
    """The JIT's own steps, driven by hand: bind (`create_function_from_signature` + `JITFunction._pack_args`),
    compile, read ptxas's log. Both supported versions (3.6, 3.9) share these names and signatures; what differs
    between them (3.9 assembles sm_90 with its newer `ptxas-blackwell` and extra flags, 3.6 with `ptxas`; 3.6 also
    parses constexpr values as attributes) happens inside those triton functions, so each version builds exactly
    what its own JIT would."""

    def __init__(self) -> None:
        import triton
        from triton import knobs
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource, make_backend
        from triton.runtime.autotuner import Autotuner
        from triton.runtime.jit import JITFunction, create_function_from_signature

        # 3.9 announces that its default fp fusion changes in 3.10: the report builds with the default the JIT uses.
        warnings.filterwarnings("ignore", message="TRITON_DEFAULT_FP_FUSION")
        self.version = triton.__version__
        self.Autotuner, self.JITFunction = Autotuner, JITFunction
        self._compile, self._ast_source, self._make_backend = triton.compile, ASTSource, make_backend
        self._gpu_target, self._binder = GPUTarget, create_function_from_signature
        knobs.nvidia.dump_ptxas_log = True  # ptxas -v's log: registers, spills, performance advisories
        self.cuobjdump = knobs.nvidia.cuobjdump.path

    def specialise(self, fn: object, args: Sequence[object], kwargs: dict, arch: Arch) -> Specialised:
        target = self._gpu_target("cuda", arch.capability, 32)
        backend = self._make_backend(target)
        bound_args, specialization, options = self._binder(fn.signature, fn.params, backend)(*args, **kwargs)
        options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound_args, specialization, options)
        key = [self.version, fn.cache_key, signature, repr(sorted(constexprs.items())), repr(sorted(attrs.items()))]
        key += [repr(sorted(options.__dict__.items())), arch.capability]
        digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()
        return Specialised(self._ast_source(fn, signature, constexprs, attrs), target, options.__dict__, digest)

    def build(self, spec: Specialised) -> tuple[object, str]:
        """Compile; returns (the compiled kernel, ptxas's log)."""
        log = io.StringIO()
        with contextlib.redirect_stdout(log):
            kernel = self._compile(spec.src, target=spec.target, options=spec.options)
        return kernel, log.getvalue()


# ----------------------------------------------------------------------------------------------------------------------
# Recording the launches the launchers make, on meta tensors
# ----------------------------------------------------------------------------------------------------------------------
_POINTER_BASE = 1 << 21  # CUDA allocations are at least 256-byte aligned; a view adds its storage offset


class TensorStandIn:
    """What Triton's binder reads of a tensor argument: its dtype, and a pointer as aligned as the real one."""

    def __init__(self, dtype: torch.dtype, byte_offset: int) -> None:
        self.dtype = dtype
        self.byte_offset = byte_offset

    def data_ptr(self) -> int:
        return _POINTER_BASE + self.byte_offset

    def __repr__(self) -> str:
        return f"TensorStandIn({self.dtype}, +{self.byte_offset})"


def _stand_in(arg: object) -> object:
    if isinstance(arg, torch.Tensor):
        return TensorStandIn(arg.dtype, arg.storage_offset() * arg.element_size())
    return arg


@dataclass
class Launch:
    """One kernel launch as a launcher made it (tensors replaced by stand-ins)."""

    module: str
    kernel: str
    args: tuple
    kwargs: dict


def kernels_of(module: object, adapter: TritonAdapter) -> dict[str, object]:
    """A kernel module's launchable kernels: its `_*_kernel` JIT functions and autotuners."""
    return {
        name: obj
        for name, obj in vars(module).items()
        if name.endswith("_kernel") and isinstance(obj, (adapter.JITFunction, adapter.Autotuner))
    }


@contextlib.contextmanager
def recording(adapter: TritonAdapter, modules: Sequence[str]) -> Iterator[list[Launch]]:
    """Within: every launch of a kernel of `modules` is appended to the yielded list instead of run, and fastdeit's
    launchers accept meta tensors (shapes and strides, no data) as if they were CUDA tensors."""
    launches: list[Launch] = []
    utils = importlib.import_module("fastdeit.kernels._utils")
    patched = [(utils, "can_run", utils.can_run)]
    utils.can_run = lambda t: t.is_cuda or t.is_meta

    def recorder(module_name: str, name: str) -> object:
        def launch(*args: object, **kwargs: object) -> None:
            launches.append(Launch(module_name, name, tuple(map(_stand_in, args)), kwargs))

        class Recorder:
            def __getitem__(self, grid: object) -> Callable[..., None]:
                return launch

        return Recorder()

    for module_name in modules:
        module = importlib.import_module(module_name)
        for name, obj in kernels_of(module, adapter).items():
            patched.append((module, name, obj))
            setattr(module, name, recorder(module_name, name))
    try:
        yield launches
    finally:
        for module, name, obj in patched:
            setattr(module, name, obj)


# ----------------------------------------------------------------------------------------------------------------------
# Workloads: what a DeiT block launches, per precision mode and shape
# ----------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Mode:
    """A precision a DeiT model runs in, as dtypes of the tensors each op sees."""

    name: str
    compute: torch.dtype  # linear and attention inputs
    stream: torch.dtype  # the residual stream between blocks
    params: torch.dtype  # LayerNorm weight and bias
    norm_out: torch.dtype  # LayerNorm output
    fp32_matmul_precision: str = "highest"
    only: tuple[str, ...] = ()  # ops to run (all when empty)


MODES = (
    # model.to(dtype): inference (and training without autocast)
    Mode("bf16", torch.bfloat16, torch.bfloat16, torch.bfloat16, torch.bfloat16),
    Mode("fp16", torch.float16, torch.float16, torch.float16, torch.float16),
    # fp32 weights under torch.autocast on CUDA (the training recipe): fp32 residual stream and LayerNorm output
    Mode("amp-bf16", torch.bfloat16, torch.float32, torch.float32, torch.float32),
    Mode("amp-fp16", torch.float16, torch.float32, torch.float32, torch.float32),
    Mode("fp32", torch.float32, torch.float32, torch.float32, torch.float32),
    # fp32 under torch.set_float32_matmul_precision("high"): only attention's dots change (tf32)
    Mode("fp32-tf32", torch.float32, torch.float32, torch.float32, torch.float32, "high", ("attention",)),
)
MODE_NAMES = tuple(m.name for m in MODES)


@dataclass(frozen=True)
class Shape:
    width: int
    tokens: int
    batch: int

    @property
    def rows(self) -> int:
        return self.batch * self.tokens

    @property
    def label(self) -> str:
        return f"{MODEL_WIDTHS.get(self.width, self.width)}/{self.tokens}"


def _empty(*shape: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device="meta")


def _layer_norm_launches(mode: Mode, shape: Shape) -> Iterator[str]:
    """norm1 (no residual) and norm2 (with the residual add), forward and backward, as a Block runs them."""
    from fastdeit.kernels.layer_norm import _bwd_programs, launch_layer_norm_bwd, launch_layer_norm_fwd

    M, C = shape.rows, shape.width
    weight, bias = _empty(C, dtype=mode.params), _empty(C, dtype=mode.params)
    mean, rstd = _empty(M, dtype=torch.float32), _empty(M, dtype=torch.float32)
    partial = _empty(_bwd_programs(torch.device("meta")), C, dtype=torch.float32)
    stream = _empty(M, C, dtype=mode.stream)
    y = _empty(M, C, dtype=mode.norm_out)
    launch_layer_norm_fwd(stream, weight, bias, None, 1e-6, y, None, mean, rstd)
    yield "norm1 fwd"
    launch_layer_norm_bwd(y, None, stream, weight, mean, rstd, _empty(M, C, dtype=mode.stream), partial, partial)
    yield "norm1 bwd"
    branch = _empty(M, C, dtype=mode.compute)  # the attention branch's output
    s = _empty(M, C, dtype=torch.promote_types(mode.compute, mode.stream))
    launch_layer_norm_fwd(branch, weight, bias, stream, 1e-6, y, s, mean, rstd)
    yield "norm2 fwd"
    dresidual = None if mode.stream == mode.compute else _empty(M, C, dtype=mode.stream)
    launch_layer_norm_bwd(y, s, s, weight, mean, rstd, _empty(M, C, dtype=mode.compute), partial, partial, dresidual)
    yield "norm2 bwd"


def _attention_launches(mode: Mode, shape: Shape) -> Iterator[str]:
    """attention_qkv forward and backward on the packed (B, N, 3C) qkv projection."""
    from fastdeit.kernels._utils import triton_dots_fit
    from fastdeit.kernels.attention import attention_qkv_bwd, attention_qkv_fwd

    B, N, C = shape.batch, shape.tokens, shape.width
    heads = C // HEAD_DIM
    qkv = _empty(B, N, 3 * C, dtype=mode.compute)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(mode.fp32_matmul_precision)
    try:
        if not triton_dots_fit(mode.compute, torch.device("cuda")):
            return  # `attention_qkv` runs torch's SDPA there
        out, lse = attention_qkv_fwd(qkv, heads, HEAD_DIM**-0.5)
        yield "qkv fwd"
        attention_qkv_bwd(_empty(B, N, C, dtype=mode.compute), qkv, out, lse, heads, HEAD_DIM**-0.5)
        yield "qkv bwd"
    finally:
        torch.set_float32_matmul_precision(previous)


def _linear_launches(mode: Mode, shape: Shape) -> Iterator[str]:
    """qkv, proj, fc1 (+GELU, with and without the pre-activation saved for training) and fc2 (+residual): the
    fused Triton matmul where the linear policy may pick it for this dtype, and the epilogue kernel that follows
    cuBLAS; then fc1's GELU backward."""
    from fastdeit.kernels.linear import launch_gelu_bwd, launch_linear_epilogue, launch_linear_fwd
    from fastdeit.kernels.linear_policy import allowed_paths, dtype_name

    M, C = shape.rows, shape.width
    dt = mode.compute
    out_fc2 = torch.promote_types(dt, mode.stream)
    if "triton" in allowed_paths(dtype_name(dt)):
        for kind, K, N, activation, residual, pre in (
            ("qkv", C, 3 * C, None, False, False),
            ("proj", C, C, None, False, False),
            ("fc1", C, 4 * C, "gelu", False, False),
            ("fc1+pre", C, 4 * C, "gelu", False, True),
            ("fc2", 4 * C, C, None, True, False),
        ):
            launch_linear_fwd(
                _empty(M, K, dtype=dt),
                _empty(N, K, dtype=dt),
                _empty(N, dtype=dt),
                _empty(M, N, dtype=mode.stream) if residual else None,
                activation,
                _empty(M, N, dtype=out_fc2 if residual else dt),
                _empty(M, N, dtype=dt) if pre else None,
            )
            yield kind
    launch_linear_epilogue(_empty(M, 4 * C, dtype=dt), None, "gelu", _empty(M, 4 * C, dtype=dt))
    yield "fc1 after cuBLAS"
    launch_linear_epilogue(_empty(M, C, dtype=dt), _empty(M, C, dtype=mode.stream), None, _empty(M, C, dtype=out_fc2))
    yield "fc2 after cuBLAS"
    launch_gelu_bwd(_empty(M, 4 * C, dtype=dt), _empty(M, 4 * C, dtype=dt), _empty(M, 4 * C, dtype=dt))
    yield "fc1 bwd"


Workload = Callable[[Mode, Shape], Iterator[str]]
WORKLOADS: dict[str, Workload] = {
    "layer_norm": _layer_norm_launches,
    "attention": _attention_launches,
    "linear": _linear_launches,
}


def record_workloads(
    adapter: TritonAdapter,
    workloads: dict[str, Workload],
    modules: Sequence[str],
    modes: Sequence[Mode],
    shapes: Sequence[Shape],
) -> list[tuple[str, Shape, str, Launch]]:
    """(mode, shape, variant, launch) for every kernel launch of every workload."""
    recorded = []
    with recording(adapter, modules) as launches:
        for mode in modes:
            for shape in shapes:
                for op, workload in workloads.items():
                    if mode.only and op not in mode.only:
                        continue
                    for variant in workload(mode, shape):
                        recorded.extend((mode.name, shape, variant, launch) for launch in launches)
                        launches.clear()
    return recorded


# ----------------------------------------------------------------------------------------------------------------------
# Cases: a recorded launch at one of the kernel's configs
# ----------------------------------------------------------------------------------------------------------------------
_DEFAULT_WARPS, _DEFAULT_STAGES = 4, 3  # Triton's defaults for a launch that names neither (CUDAOptions)


def _config_label(kwargs: dict, num_warps: int, num_stages: int) -> str:
    """'M128 N256 K64 GROUP_M8 w8 s3' from the tile constexprs (BLOCK_ prefix dropped) and the launch options."""
    tiles = [f"{k.removeprefix('BLOCK_')}{v}" for k, v in kwargs.items() if k.startswith(("BLOCK_", "GROUP_"))]
    return " ".join([*tiles, f"w{num_warps}", f"s{num_stages}"])


def launch_configs(adapter: TritonAdapter, launch: Launch) -> tuple[object, list[tuple[str, dict]]]:
    """The JIT function behind a launch and, per config it may run with on a GPU, (label, complete launch kwargs)."""
    obj = getattr(importlib.import_module(launch.module), launch.kernel)
    if isinstance(obj, adapter.Autotuner):
        configs = obj.configs
        if obj.early_config_prune:
            configs = obj.early_config_prune(
                configs, dict(zip(obj.arg_names, launch.args, strict=False)), **launch.kwargs
            )
        return obj.fn, [
            (_config_label(c.kwargs, c.num_warps, c.num_stages), {**launch.kwargs, **c.all_kwargs()}) for c in configs
        ]
    warps, stages = launch.kwargs.get("num_warps", _DEFAULT_WARPS), launch.kwargs.get("num_stages", _DEFAULT_STAGES)
    return obj, [(_config_label(launch.kwargs, warps, stages), dict(launch.kwargs))]


@dataclass
class Case:
    """One row: a kernel at one config, for the launches of one (mode, variant) that share a specialisation."""

    kernel: str
    mode: str
    variant: str
    config: str
    key: str
    task: tuple  # what a worker needs to build it
    shapes: list[Shape] = field(default_factory=list)
    result: dict = field(default_factory=dict)


def collect_cases(adapter: TritonAdapter, arch: Arch, recorded: list[tuple]) -> list[Case]:
    cases: dict[tuple, Case] = {}
    for mode, shape, variant, launch in recorded:
        fn, configs = launch_configs(adapter, launch)
        for label, kwargs in configs:
            key = adapter.specialise(fn, launch.args, kwargs, arch).key
            ident = (launch.kernel, mode, variant, label, key)
            if ident not in cases:
                task = (launch.module, launch.kernel, launch.args, kwargs, arch.name, key)
                cases[ident] = Case(launch.kernel, mode, variant, label, key, task)
            cases[ident].shapes.append(shape)
    return list(cases.values())


# ----------------------------------------------------------------------------------------------------------------------
# Building one case (in a worker process) and reading the compiler's output
# ----------------------------------------------------------------------------------------------------------------------
_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_RES_USAGE = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")
_RES_USAGE_FIELDS = ("registers", "stack", "static_smem", "local")
_OPCODE = re.compile(r"^\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", re.MULTILINE)
_WIDTHS = {"128": 128, "64": 64, "U16": 16, "S16": 16, "U8": 8, "S8": 8}


def _dot_operands(ttir: str) -> list[str]:
    """Per tl.dot in the TTIR, its operand element type ('f16', 'bf16') or, for f32, 'f32-tf32' / 'f32-ieee' (the
    TTIR prints the input precision only when it is not ieee)."""
    dots = []
    for line in ttir.splitlines():
        match = re.search(r"= tt\.dot .*?: tensor<[0-9x]+x(\w+)>", line)
        if match:
            kind = match.group(1)
            if kind == "f32":
                precision = re.search(r"inputPrecision = (\w+)", line)
                kind += f"-{precision.group(1) if precision else 'ieee'}"
            dots.append(kind)
    return dots


def facts(kernel: object, ptxas_log: str, cuobjdump: str) -> dict:
    """What the report keeps of a build (and caches): ptxas's log, cuobjdump's resource usage, the SASS opcode
    counts, the tl.dot operand types, Triton's dynamic shared memory and warps."""
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "kernel.cubin"
        cubin.write_bytes(kernel.asm["cubin"])
        usage = subprocess.run([cuobjdump, "-res-usage", str(cubin)], capture_output=True, text=True, check=True)
        sass = subprocess.run([cuobjdump, "-sass", str(cubin)], capture_output=True, text=True, check=True).stdout
    return {
        "ptxas_log": ptxas_log,
        "res_usage": dict(zip(_RES_USAGE_FIELDS, map(int, _RES_USAGE.search(usage.stdout).groups()), strict=True)),
        "opcodes": dict(Counter(_OPCODE.findall(sass))),
        "dots": _dot_operands(kernel.asm["ttir"]),
        "dynamic_smem": kernel.metadata.shared,
        "num_warps": kernel.metadata.num_warps,
    }


def _access_widths(opcodes: dict[str, int], ops: tuple[str, ...]) -> str:
    """The distinct widths in bits of the memory instructions `ops` (LDG, LDGSTS, STG), widest first: '128,32'."""
    widths = set()
    for opcode in opcodes:
        name, *suffixes = opcode.split(".")
        if name in ops:
            widths.add(next((_WIDTHS[s] for s in suffixes if s in _WIDTHS), 32))
    return ",".join(str(w) for w in sorted(widths, reverse=True)) or "-"


def analyse(built: dict, arch: Arch) -> dict:
    """The report's columns for one build, with its failure reasons."""
    if "error" in built:
        return {"status": built["error"], "reasons": ["error"]}
    usage, opcodes, dots = built["res_usage"], built["opcodes"], built["dots"]
    spills = [sum(int(m[i]) for m in _SPILLS.findall(built["ptxas_log"])) for i in (0, 1)]
    smem = built["dynamic_smem"] + usage["static_smem"]
    lines = built["ptxas_log"].splitlines()
    warning_lines = [line.strip() for line in lines if re.search(r"warning|\(C\d{4}\)", line)]
    names = {opcode.split(".")[0] for opcode in opcodes}
    mma = "-"
    if dots:
        mma = "wgmma" if "HGMMA" in names else "mma.sync" if "HMMA" in names else "FMA"
    reasons = []
    if spills[0] or spills[1] or usage["local"]:
        reasons.append("spills")
    if smem > arch.smem_per_block:
        reasons.append("smem")
    if any("C7515" in line or "serialized" in line for line in warning_lines):
        reasons.append("serialised")
    if any(d != "f32-ieee" for d in dots) and mma != arch.mma:
        reasons.append(f"{mma} not {arch.mma}")
    return {
        "status": "ok" if not reasons else " ".join(reasons),
        "reasons": reasons,
        "registers": usage["registers"],
        "spill_stores": spills[0],
        "spill_loads": spills[1],
        "stack_bytes": usage["stack"],
        "smem_bytes": smem,
        "blocks_per_sm": blocks_per_sm(arch, usage["registers"], smem, built["num_warps"]),
        "mma": mma + (f" ({'+'.join(sorted(set(dots)))})" if dots else ""),
        "load_bits": _access_widths(opcodes, ("LDG", "LDGSTS")),
        "store_bits": _access_widths(opcodes, ("STG",)),
        "ptxas_warnings": " | ".join(dict.fromkeys(warning_lines)),
    }


_worker: TritonAdapter | None = None


def _init_worker() -> None:
    """A build process: Triton's own cache off (a build must run ptxas, whose log the report reads; the report's
    cache stands in front), no interpreter."""
    global _worker
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="fastdeit-compile-report-")
    _worker = TritonAdapter()


def build_case(task: tuple) -> dict:
    """Compile one case; its `facts` (in a worker)."""
    module, kernel, args, kwargs, arch_name, key = task
    if _worker is None:
        _init_worker()
    arch = ARCHS[arch_name]
    obj = getattr(importlib.import_module(module), kernel)
    fn = obj.fn if isinstance(obj, _worker.Autotuner) else obj
    spec = _worker.specialise(fn, args, kwargs, arch)
    assert spec.key == key, "the worker specialised differently from the parent"
    try:
        compiled, log = _worker.build(spec)
    except Exception as e:  # a compile error is a result (the row says which), not a crash of the report
        return {"error": f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"}
    return facts(compiled, log, _worker.cuobjdump)


def _init_warm_worker() -> None:
    """A build process that fills Triton's own on-disk cache, where the JIT finds the same builds later."""
    global _worker
    os.environ.pop("TRITON_INTERPRET", None)
    _worker = TritonAdapter()


def _warm(task: tuple) -> str | None:
    """Build one case into Triton's cache (in a worker); the error, if any."""
    module, kernel, args, kwargs, arch_name, _key = task
    obj = getattr(importlib.import_module(module), kernel)
    fn = obj.fn if isinstance(obj, _worker.Autotuner) else obj
    try:
        _worker.build(_worker.specialise(fn, args, kwargs, ARCHS[arch_name]))
    except Exception as e:  # the JIT will meet (and report) the same error; the warm-up only saves time
        return f"{kernel}: {type(e).__name__}: {' '.join(str(e).split())[:200]}"
    return None


def warm_triton_cache(
    arch_name: str, workloads: dict[str, Workload], modes: Sequence[Mode], shapes: Sequence[Shape], jobs: int
) -> tuple[int, list[str]]:
    """On a GPU machine, before timing: build every config of every launch the workloads make, `jobs` at a time,
    into Triton's own cache, so the autotuner's first calls load them instead of compiling one after another.
    Returns (builds, errors)."""
    adapter = TritonAdapter()
    arch = ARCHS[arch_name]
    cases = collect_cases(adapter, arch, record_workloads(adapter, workloads, KERNEL_MODULES, modes, shapes))
    tasks = {case.key: case.task for case in cases}
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_warm_worker) as pool:
        errors = [e for e in pool.map(_warm, tasks.values()) if e]
    return len(tasks), errors


# ----------------------------------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    from fastdeit._env import cache_dir

    return cache_dir() / "compile_report"


def _shapes_label(shapes: Sequence[Shape]) -> str:
    """'Ti,S,B x 197,198,577,578' for a full grid, else the shapes one by one."""
    widths = sorted({s.width for s in shapes})
    tokens = sorted({s.tokens for s in shapes})
    labels = {(s.width, s.tokens) for s in shapes}
    if len(labels) == len(widths) * len(tokens) and len(labels) > 1:
        return f"{','.join(MODEL_WIDTHS.get(w, str(w)) for w in widths)} x {','.join(map(str, tokens))}"
    return " ".join(s.label for s in sorted(shapes, key=lambda s: (s.width, s.tokens)))


def run_cases(cases: Sequence[Case], cache_dir: Path, jobs: int, progress: Callable[[str], None]) -> None:
    """Fill each case's result, from the disk cache or by building it (distinct builds only, in `jobs` processes)."""
    todo: dict[str, tuple] = {}
    results: dict[str, dict] = {}
    for case in cases:
        path = cache_dir / f"{case.key}.json"
        if case.key not in results and path.exists():
            results[case.key] = json.loads(path.read_text())
        elif case.key not in results:
            todo.setdefault(case.key, case.task)
    if todo:
        from fastdeit.io import atomic_write

        progress(f"building {len(todo)} kernels in {jobs} processes ({len(results)} from the cache)")
        cache_dir.mkdir(parents=True, exist_ok=True)
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker) as pool:
            futures = {pool.submit(build_case, task): key for key, task in todo.items()}
            for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
                key = futures[future]
                results[key] = future.result()
                atomic_write(cache_dir / f"{key}.json", lambda tmp, r=results[key]: tmp.write_text(json.dumps(r)))
                if done % 10 == 0 or done == len(todo):
                    progress(f"  {done}/{len(todo)} built")
    for case in cases:
        case.result = analyse(results[case.key], ARCHS[case.task[4]])


def _row(case: Case, arch: Arch, triton_version: str) -> dict[str, str]:
    r = case.result
    return {
        "kernel": case.kernel,
        "mode": case.mode,
        "variant": case.variant,
        "config": case.config,
        "shapes": _shapes_label(case.shapes),
        **{c: str(r[c]) for c in CSV_COLUMNS if c in r},
        "arch": arch.name,
        "triton_version": triton_version,
    }


def summary(cases: Sequence[Case], missing: Sequence[str], arch: Arch, triton_version: str) -> tuple[str, bool]:
    """The last line, and whether everything passed."""
    failed = [c for c in cases if c.result["reasons"]]

    def count(reason: str) -> int:
        return sum(any(r == reason or r.endswith(f"not {reason}") for r in c.result["reasons"]) for c in cases)

    line = (
        f"compile report {arch.name}, triton {triton_version}: {len(cases)} cases, {len(failed) + len(missing)} "
        f"failures, {count('spills')} spills, {count('serialised')} serialised, {count('error')} compile errors, "
        f"{count('smem')} over shared memory, {count(arch.mma)} off {arch.mma}, {len(missing)} kernels never launched"
    )
    return line, not failed and not missing


def deit_shapes(quick: bool, batch: int = DEFAULT_BATCH) -> list[Shape]:
    """Ti/S/B x 197/198/577/578 tokens, or DeiT-B at 197 tokens (`quick`)."""
    widths, tokens = ((768,), (197,)) if quick else (tuple(MODEL_WIDTHS), TOKENS)
    return [Shape(w, t, batch) for w in widths for t in tokens]


def _write_csv(path: Path, rows: Sequence[dict[str, str]]) -> None:
    from fastdeit.io import atomic_write

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, restval="-")
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)


def report(
    arch_name: str = "sm_90",
    csv_path: Path | None = None,
    *,
    shapes: Sequence[Shape] | None = None,
    modes: Sequence[Mode] = MODES,
    workloads: dict[str, Workload] = WORKLOADS,
    modules: Sequence[str] = KERNEL_MODULES,
    jobs: int | None = None,
    cache_dir: Path | None = None,
    out: Callable[[str], None] = print,
) -> int:
    """Build every case, print the table and the summary line (last); returns the exit status (1: a case failed)."""
    from fastdeit.benchmarks.common import format_columns

    if arch_name not in ARCHS:
        raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {arch_name!r}")
    arch = ARCHS[arch_name]
    start = time.perf_counter()
    adapter = TritonAdapter()
    recorded = record_workloads(adapter, workloads, modules, modes, shapes or deit_shapes(quick=False))
    cases = collect_cases(adapter, arch, recorded)
    launched = {(launch.module, launch.kernel) for *_, launch in recorded}
    missing = [
        f"{module}.{name}"
        for module in modules
        for name in kernels_of(importlib.import_module(module), adapter)
        if (module, name) not in launched
    ]
    run_cases(cases, cache_dir or default_cache_dir(), jobs or min(os.cpu_count() or 1, 8), out)
    rows = [_row(c, arch, adapter.version) for c in cases]
    columns = [c for c in CSV_COLUMNS if c not in ("arch", "triton_version")]
    out("\n".join(format_columns(columns, [[r.get(c, "-") for c in columns] for r in rows], left=6)))
    for name in missing:
        out(f"{name}: launched by no workload (add it to compile_report.WORKLOADS)")
    if csv_path is not None:
        _write_csv(csv_path, rows)
        out(f"wrote {len(rows)} rows to {csv_path}")
    line, ok = summary(cases, missing, arch, adapter.version)
    out(f"{len({c.key for c in cases})} distinct builds, {time.perf_counter() - start:.0f} s")
    out(line)
    return 0 if ok else 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", choices=tuple(ARCHS), default="sm_90", help="GPU target (default sm_90)")
    parser.add_argument("--csv", type=Path, help="also write the table to this CSV")
    parser.add_argument("--quick", action="store_true", help="DeiT-B at 197 tokens only (what CI runs)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, help=f"default {DEFAULT_BATCH}")
    parser.add_argument("--ops", nargs="+", choices=tuple(WORKLOADS), help="workloads (default all)")
    parser.add_argument("--modes", nargs="+", choices=MODE_NAMES, help="precision modes (default all)")
    parser.add_argument("--jobs", type=int, help="build processes (default: the CPU count, at most 8)")
    parser.add_argument("--cache-dir", type=Path, help="build cache (default $FASTDEIT_CACHE_DIR/compile_report)")


def run_from_args(args: argparse.Namespace) -> int:
    """Run the report for parsed `add_arguments` options (also `fastdeit bench --compile-report`)."""
    if triton_interpreter():
        # The kernels must be real JIT functions with their GPU configs; under TRITON_INTERPRET=1 triton makes them
        # interpreted functions with the interpreter's configs, so the report runs in a fresh process without it.
        argv = ["--arch", args.arch, "--batch-size", str(args.batch_size)]
        for flag, value in (("--csv", args.csv), ("--jobs", args.jobs), ("--cache-dir", args.cache_dir)):
            argv += [flag, str(value)] if value is not None else []
        argv += ["--quick"] if args.quick else []
        argv += ["--ops", *args.ops] if args.ops else []
        argv += ["--modes", *args.modes] if args.modes else []
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        return subprocess.run([sys.executable, "-m", "fastdeit.benchmarks.compile_report", *argv], env=env).returncode
    ops = args.ops or list(WORKLOADS)
    return report(
        args.arch,
        args.csv,
        shapes=deit_shapes(args.quick, args.batch_size),
        modes=[m for m in MODES if not args.modes or m.name in args.modes],
        workloads={op: WORKLOADS[op] for op in ops},
        modules=[f"fastdeit.kernels.{op}" for op in ops],  # each workload runs its own kernel module's launchers
        jobs=args.jobs,
        cache_dir=args.cache_dir,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run_from_args(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
