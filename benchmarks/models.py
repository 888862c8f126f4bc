"""Model throughput (images/s) of the DeiT models, for every provider in one run, as the DeiT paper measures it.

Method:
- Inference: forward under `torch.inference_mode()`. Training: forward, DeiT's loss (cross-entropy, and for a
  distilled model the mean of the class-token and distillation-token losses, the latter against the teacher's
  argmax when `teacher` is set), backward, AdamW step (fused kernel where torch has one), gradients set to None.
  With `teacher_cache`, each distilled step is measured two ways on the same model and batch: with the live
  teacher, and with the teacher's labels replayed as train.py's --teacher-cache does (int16 labels already on the
  device, widened per step; fastdeit.training.teacher_cache). Their timed runs alternate, so a busy machine slows
  both alike; the ratio is what recording the teacher once saves.
- Precision, identical for every provider; bf16 on the GPU by default. Inference: the whole model is cast
  (`model.to(dtype)`), as a deployment would. Training: mixed precision as in the DeiT recipe and timm's AMP,
  fp32 weights and optimizer, forward and loss under `torch.autocast(dtype)` (fp32 runs without autocast).
  No gradient scaler: it costs the same for every provider, and fp16 overflow does not change the timing.
- Batch: the largest that fits (`fastdeit.batch_size.find_max_batch`, up to `max_batch`, cached), or the one given.
  The CPU has no out-of-memory signal worth probing: a small fixed batch (8) there.
- Timing: `warmup` calls (the first also autotunes or compiles), then `repeats` runs of back-to-back steps timed
  with CUDA events (perf_counter on the CPU), each run long enough to take `min_time` seconds; the median run is
  reported, with the slowest and fastest beside it in the CSV. Inputs are random normal images, never zeros.
- MFU = img/s x FLOPs per image (forward; x3 for training, + the teacher's forward) / 790e12, the bf16 matrix
  product ceiling measured on H100 and H200 (torch.matmul 8192^3 on random bf16 data; the datasheets' dense figure is
  989); only computed for bf16/fp16 on those GPUs.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import fastdeit
from fastdeit._env import show_progress
from fastdeit.batch_size import BatchSizeCache, find_max_batch, free_memory
from fastdeit.cuda_graphs import capture
from fastdeit.models import model_config
from fastdeit.models.convnet import create_convnet, is_convnet, list_convnets
from fastdeit.text import did_you_mean

from .common import (
    Row,
    append_rows,
    device_name,
    format_columns,
    median,
    repeat_timings,
    time_iterations,
)
from .providers import (
    MODES,
    PROVIDERS,
    BuildSpec,
    LogitsAdapter,
    Provider,
    build_context,
    build_model,
    unavailable_reason,
)

# The DeiT paper, Table 1: inference img/s on one 16 GB V100, fp32, largest batch that fits, mean of 30 runs
# (Touvron et al. 2020, arXiv 2012.12877). Valid beside our numbers at the native image size only.
PAPER_V100_FP32 = {
    "deit_tiny_patch16_224": 2536.5,
    "deit_small_patch16_224": 940.4,
    "deit_base_patch16_224": 292.3,
    "deit_base_patch16_384": 85.9,
    "deit_tiny_distilled_patch16_224": 2529.5,
    "deit_small_distilled_patch16_224": 936.2,
    "deit_base_distilled_patch16_224": 290.9,
    "deit_base_distilled_patch16_384": 85.8,
}
# Short names for --models.
MODEL_ALIASES = {
    "ti": "deit_tiny_patch16_224",
    "s": "deit_small_patch16_224",
    "b": "deit_base_patch16_224",
    "b384": "deit_base_patch16_384",
    "ti-dist": "deit_tiny_distilled_patch16_224",
    "s-dist": "deit_small_distilled_patch16_224",
    "b-dist": "deit_base_distilled_patch16_224",
    "b384-dist": "deit_base_distilled_patch16_384",
}
# Forward GFLOP per 224x224 image of timm teachers that are not fastdeit models: 2 x the GMACs timm publishes in its
# benchmark tables (results/benchmark-infer-*.csv, column infer_gmacs: regnety_160 15.96).
TEACHER_GFLOP_224 = {"regnety_160": 31.9}
PEAK_FLOPS = 790e12  # bf16 matrix products, H100 and H200, measured (as above; benchmarks/roofline.py's GPU table)
MFU_GPUS = ("H100", "H200")
CPU_BATCH = 8
NUM_CLASSES = 1000
CACHE_SUFFIX = "+cache"  # the mode of a distilled step whose teacher labels come from a teacher cache


def resolve_models(names: list[str] | None) -> list[str]:
    """Model names or aliases (None or ['all']: all 8) -> fastdeit model names, in the order given."""
    if not names or names == ["all"]:
        return fastdeit.list_models()
    out = []
    for name in names:
        full = MODEL_ALIASES.get(name, name)
        if full not in fastdeit.list_models():
            raise ValueError(
                f"unknown model {name!r}; expected 'all', one of {', '.join(fastdeit.list_models())}, "
                f"or an alias: {', '.join(f'{a}={n}' for a, n in MODEL_ALIASES.items())}"
            )
        out.append(full)
    return list(dict.fromkeys(out))


@dataclass
class BenchConfig:
    """Everything one `fastdeit bench` run measures, and how."""

    models: list[str]
    providers: list[Provider]
    modes: list[str]
    dtype: torch.dtype
    device: torch.device
    batch_size: int | None = None
    max_batch: int = 1024
    img_size: int | None = None
    teacher: str | None = None
    teacher_cache: bool = False
    drop_path_rate: float = 0.0
    warmup: int = 5
    repeats: int = 10
    min_time: float = 0.1
    csv: Path | None = None
    batch_cache: BatchSizeCache = field(default_factory=BatchSizeCache)
    progress: bool | None = None  # a progress bar on stderr; None: only when stderr is a terminal

    def __post_init__(self) -> None:
        bad = [m for m in self.modes if m not in MODES]
        if bad:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {', '.join(map(repr, bad))}")
        if self.img_size is not None and (self.img_size < 16 or self.img_size % 16):
            raise ValueError(f"img_size must be a positive multiple of the patch size 16, got {self.img_size}")
        for name, value, low in (
            ("batch_size", self.batch_size, 1),
            ("max_batch", self.max_batch, 1),
            ("repeats", self.repeats, 1),
            ("warmup", self.warmup, 0),
        ):
            if value is not None and value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        if self.teacher is not None:
            plain = [m for m in self.models if not model_config(m)["distilled"]]
            if plain:
                raise ValueError(
                    f"a teacher distils into the distillation token, so it needs *_distilled_* students; "
                    f"got {', '.join(plain)} (choose distilled models with --models, e.g. b-dist)"
                )
            check_teacher(self.teacher)
        if self.teacher_cache and (self.teacher is None or "training" not in self.modes):
            raise ValueError(
                "teacher_cache compares the distilled training step with the live teacher and with its cached labels: "
                "it needs a teacher and the training mode (--teacher NAME --mode training)"
            )

    def model_img_size(self, model: str) -> int:
        return self.img_size or model_config(model)["img_size"]

    @property
    def dtype_name(self) -> str:
        return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[self.dtype]

    def mode_label(self, mode: str, cached: bool = False) -> str:
        """The CSV `mode`: 'inference', 'training', 'training+TEACHER', or with the teacher's labels replayed from a
        cache 'training+TEACHER+cache'."""
        if mode != "training" or not self.teacher:
            return mode
        return f"{mode}+{self.teacher}" + (CACHE_SUFFIX if cached else "")


@dataclass
class Measurement:
    """The throughput of one (model, provider, mode), with what the table prints beside it."""

    model: str
    provider: str
    mode: str
    dtype: str
    batch: int
    img_size: int
    img_per_s: float
    img_per_s_min: float
    img_per_s_max: float
    gpu_name: str
    peak_memory_gib: float | None = None
    mfu: float | None = None

    @property
    def shape(self) -> str:
        return f"3x{self.img_size}x{self.img_size}"

    @property
    def peer(self) -> bool:
        provider = PROVIDERS.get(self.provider)
        return provider is not None and provider.peer

    @property
    def paper(self) -> float | None:
        """The paper's V100 fp32 inference img/s, for inference rows at the model's native size."""
        native = model_config(self.model)["img_size"] if self.model in fastdeit.list_models() else None
        return PAPER_V100_FP32.get(self.model) if self.mode == "inference" and self.img_size == native else None

    def rows(self) -> list[Row]:
        base = dict(
            model_or_op=self.model,
            provider=self.provider,
            mode=self.mode,
            dtype=self.dtype,
            batch=self.batch,
            shape=self.shape,
        )
        rows = [
            Row(**base, metric="throughput", value=self.img_per_s, unit="img/s"),
            Row(**base, metric="throughput_min", value=self.img_per_s_min, unit="img/s"),
            Row(**base, metric="throughput_max", value=self.img_per_s_max, unit="img/s"),
        ]
        if self.mfu is not None:
            rows.append(Row(**base, metric="mfu", value=100 * self.mfu, unit="%"))
        if self.peak_memory_gib is not None:
            rows.append(Row(**base, metric="peak_memory", value=self.peak_memory_gib, unit="GiB"))
        return rows


@dataclass
class Outcome:
    """A run's measurements, and the lines saying what was skipped or failed and why."""

    measurements: list[Measurement] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def _loss(outs: tuple[torch.Tensor, ...], labels: torch.Tensor, teacher_labels: torch.Tensor | None) -> torch.Tensor:
    """DeiT's training loss: cross-entropy; with a distillation head, the mean of the class-token loss and the
    distillation-token loss (hard distillation: against the teacher's argmax, else the labels). fp32 logits."""
    if len(outs) == 1:
        return F.cross_entropy(outs[0].float(), labels)
    cls, dist = outs
    target = labels if teacher_labels is None else teacher_labels
    return 0.5 * F.cross_entropy(cls.float(), labels) + 0.5 * F.cross_entropy(dist.float(), target)


def _adamw(model: nn.Module) -> torch.optim.Optimizer:
    """AdamW with the DeiT recipe's settings, the fused single-kernel step where this torch has it."""
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        return torch.optim.AdamW(params, lr=5e-4, weight_decay=0.05, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(params, lr=5e-4, weight_decay=0.05)


class StepRunner:
    """One provider's model (and optimizer) for one mode; `step(batch)` returns a callable doing one step on a
    fixed random batch (`step(batch, cached=True)`: with the teacher's labels replayed instead of its forward)."""

    def __init__(self, provider: Provider, spec: BuildSpec, teacher: nn.Module | None = None) -> None:
        self.provider = provider
        self.spec = spec
        self.model: LogitsAdapter = build_model(provider, spec)
        self.teacher = teacher
        self.optimizer = _adamw(self.model) if spec.mode == "training" else None

    def _images(self, batch: int) -> torch.Tensor:
        size = (batch, 3, self.spec.img_size, self.spec.img_size)
        dtype = self.spec.dtype if self.spec.mode == "inference" else torch.float32
        return torch.randn(size, device=self.spec.device, dtype=dtype)

    def step(self, batch: int, cached: bool = False) -> Callable[[], None]:
        x = self._images(batch)
        if self.spec.mode == "inference":
            if self.provider.cuda_graph:
                return self._graphed_forward(x)

            def infer() -> None:
                with torch.inference_mode():
                    self.model(x)

            return infer

        labels = torch.randint(0, NUM_CLASSES, (batch,), device=self.spec.device)
        model, optimizer, teacher = self.model, self.optimizer, self.teacher
        amp = self.spec.dtype != torch.float32
        device_type = self.spec.device.type

        recorded = None
        if teacher is not None and cached:
            # The teacher runs once, untimed; each step reads its labels as a replayed cache hands them over.
            with torch.no_grad(), torch.autocast(device_type, dtype=self.spec.dtype, enabled=amp):
                recorded = teacher(x).argmax(dim=-1).to(torch.int16)

        def train() -> None:
            with torch.autocast(device_type, dtype=self.spec.dtype, enabled=amp):
                teacher_labels = None
                if recorded is not None:
                    teacher_labels = recorded.long()
                elif teacher is not None:
                    with torch.no_grad():
                        teacher_labels = teacher(x).argmax(dim=-1)
                loss = _loss(model(x), labels, teacher_labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return train

    def _graphed_forward(self, x: torch.Tensor) -> Callable[[], None]:
        """Capture the forward on a static input once (fastdeit.cuda_graphs); each step copies a new batch in and
        replays the graph (the copy is part of real use, so it is timed)."""
        static = x.clone()  # outside inference mode: each step copies into it, which an inference tensor forbids
        with torch.inference_mode():
            graphed = capture(self.model, static, warmup=3)
        return lambda: graphed.run(x)


def check_teacher(name: str) -> None:
    """A teacher is a fastdeit model name or alias (DeiT or convnet), or a timm model name (when timm imports); else a
    clear error."""
    if MODEL_ALIASES.get(name, name) in fastdeit.list_models() or is_convnet(name):
        return
    try:
        import timm
    except Exception as e:
        raise ValueError(
            f"teacher {name!r} is not a fastdeit model{did_you_mean(name, fastdeit.list_models() + list_convnets())} "
            f"({', '.join(fastdeit.list_models() + list_convnets())}), and timm, needed for "
            f"other teachers such as regnety_160, cannot be imported ({type(e).__name__}: {e})"
        ) from e
    if name not in timm.list_models():
        raise ValueError(f"unknown teacher {name!r}: neither a fastdeit model nor a timm model name")


def build_teacher(name: str, img_size: int, device: torch.device, dtype: torch.dtype) -> tuple[nn.Module, float | None]:
    """The teacher (a fastdeit model name or alias, a fastdeit convnet, else a timm model name), eval mode, and its
    forward FLOPs per image (None when unknown). The same teacher serves every provider, so its cost is common to all
    of them."""
    fastdeit_name = MODEL_ALIASES.get(name, name)
    with build_context(device):
        if is_convnet(name):
            model, flops = create_convnet(name, num_classes=NUM_CLASSES), None
        elif fastdeit_name in fastdeit.list_models():
            model = fastdeit.create_model(fastdeit_name, img_size=img_size, num_classes=NUM_CLASSES)
            flops = model.flops_per_image()
        else:
            import timm

            model = timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES)
            gflop = TEACHER_GFLOP_224.get(name)
            flops = gflop * 1e9 * (img_size / 224) ** 2 if gflop is not None else None  # conv FLOPs scale with pixels
    return model.to(device=device, dtype=dtype).eval(), flops


_FLOPS_CACHE: dict[tuple[str, int], float] = {}


def forward_flops(model: str, img_size: int, device: torch.device) -> float:
    """Forward FLOPs per image of `model` at `img_size`, from fastdeit's count (matmuls, attention included)."""
    key = (model, img_size)
    if key not in _FLOPS_CACHE:
        with build_context(device):
            m = fastdeit.create_model(model, img_size=img_size, backend="torch")
        _FLOPS_CACHE[key] = m.flops_per_image()
    return _FLOPS_CACHE[key]


def _mfu_applies(device: torch.device, dtype: torch.dtype) -> bool:
    return (
        device.type == "cuda"
        and dtype in (torch.bfloat16, torch.float16)
        and any(g in device_name("cuda") for g in MFU_GPUS)
    )


def _alternating_timings(steps: list[Callable[[], None]], cfg: BenchConfig) -> list[list[float]]:
    """`repeat_timings` of each step, their timed runs taking turns (one step: exactly repeat_timings). Seconds per
    iteration of each run, per step."""
    if len(steps) == 1:
        return [repeat_timings(steps[0], device=cfg.device, warmup=cfg.warmup, repeats=cfg.repeats,
                               min_time=cfg.min_time)[1]]  # fmt: skip
    iters = [
        repeat_timings(s, device=cfg.device, warmup=cfg.warmup, repeats=0, min_time=cfg.min_time)[0] for s in steps
    ]
    timings: list[list[float]] = [[] for _ in steps]
    for _ in range(cfg.repeats):
        for step, n, out in zip(steps, iters, timings, strict=True):
            out.append(time_iterations(step, n, cfg.device) / n)
    return timings


def _shrink(batch: int) -> int:
    """The next batch to try after running out of memory while timing: 3/4, kept a multiple of 8 when possible."""
    smaller = batch * 3 // 4
    return smaller // 8 * 8 if smaller >= 16 else max(1, smaller)


class ModelBenchmark:
    """Runs a `BenchConfig`: every (model, mode, provider), one at a time, with a progress bar."""

    def __init__(self, cfg: BenchConfig) -> None:
        self.cfg = cfg
        self.teacher: nn.Module | None = None
        self.teacher_flops: float | None = None
        self._teacher_size: int | None = None

    def _spec(self, model: str, mode: str) -> BuildSpec:
        c = self.cfg
        return BuildSpec(model, c.model_img_size(model), mode, c.dtype, c.device, c.drop_path_rate)

    def _teacher_for(self, img_size: int) -> nn.Module:
        if self.teacher is None or self._teacher_size != img_size:
            self.teacher = None
            free_memory()
            self.teacher, self.teacher_flops = build_teacher(
                self.cfg.teacher, img_size, self.cfg.device, self.cfg.dtype
            )
            self._teacher_size = img_size
        return self.teacher

    def _runner(self, provider: Provider, spec: BuildSpec) -> StepRunner:
        teacher = self._teacher_for(spec.img_size) if spec.mode == "training" and self.cfg.teacher else None
        return StepRunner(provider, spec, teacher)

    def _batch_size(self, provider: Provider, spec: BuildSpec) -> int:
        c = self.cfg
        if c.batch_size is not None:
            return c.batch_size
        if c.device.type != "cuda":
            return CPU_BATCH
        probe = PROVIDERS[provider.probe_as] if provider.probe_as else provider
        key = c.batch_cache.key(
            spec.name,
            probe.name,
            c.mode_label(spec.mode),
            c.dtype_name,
            spec.img_size,
            f"drop_path={c.drop_path_rate}",
            device_name("cuda"),
        )
        batch = c.batch_cache.get_or_probe(key, c.max_batch, lambda: self._probe(probe, spec))
        free_memory()  # the probe's model is gone: start the measurement from clean memory
        return batch

    def _probe(self, provider: Provider, spec: BuildSpec) -> int:
        runner = self._runner(provider, spec)

        def one_step(batch: int) -> None:
            runner.step(batch)()
            torch.cuda.synchronize()

        return find_max_batch(one_step, cap=self.cfg.max_batch, what=f"{spec.name} ({provider.name})")

    def _measure(self, provider: Provider, spec: BuildSpec) -> list[Measurement]:
        """The measurement of one (model, provider, mode); with teacher_cache, of the distilled step with the live
        teacher and with its replayed labels, timed alternately on the same model and batch."""
        c = self.cfg
        variants = (False, True) if spec.mode == "training" and c.teacher_cache else (False,)
        batch = self._batch_size(provider, spec)
        runner = self._runner(provider, spec)
        if c.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        timings: list[list[float]] = []

        def timed(size: int) -> None:
            timings[:] = _alternating_timings([runner.step(size, cached) for cached in variants], c)

        # The probe's size may not survive repeated steps (fragmentation): back off by quarters until one does.
        what = f"{spec.name} ({provider.name}, {spec.mode})"
        batch = find_max_batch(timed, start=batch, cap=batch, shrink=_shrink, what=what)
        peak = torch.cuda.max_memory_allocated() / 2**30 if c.device.type == "cuda" else None
        return [
            self._measurement(provider, spec, batch, seconds, peak, cached)
            for cached, seconds in zip(variants, timings, strict=True)
        ]

    def _measurement(
        self,
        provider: Provider,
        spec: BuildSpec,
        batch: int,
        seconds: list[float],
        peak: float | None,
        cached: bool,
    ) -> Measurement:
        c = self.cfg
        rates = sorted(batch / s for s in seconds)
        mfu = None
        if _mfu_applies(c.device, c.dtype):
            flops = forward_flops(spec.name, spec.img_size, c.device) * (3 if spec.mode == "training" else 1)
            if spec.mode == "training" and c.teacher and not cached:
                flops = flops + self.teacher_flops if self.teacher_flops is not None else math.nan
            mfu = None if math.isnan(flops) else median(rates) * flops / PEAK_FLOPS
        return Measurement(
            model=spec.name,
            provider=provider.name,
            mode=c.mode_label(spec.mode, cached),
            dtype=c.dtype_name,
            batch=batch,
            img_size=spec.img_size,
            img_per_s=median(rates),
            img_per_s_min=rates[0],
            img_per_s_max=rates[-1],
            gpu_name=device_name(c.device.type),
            peak_memory_gib=peak,
            mfu=mfu,
        )

    def run(self) -> Outcome:
        c = self.cfg
        if c.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # best conv algorithm for the patch embedding (and a CNN teacher)
        outcome = Outcome()
        available: list[Provider] = []
        for p in c.providers:
            reason = unavailable_reason(p, c.device)
            if reason is None:
                available.append(p)
            else:
                outcome.skipped.append(f"skipped {p.name}: {reason}")
        per_mode: dict[str, list[Provider]] = {}
        for mode in c.modes:
            per_mode[mode] = []
            for p in available:
                if mode not in p.modes:
                    outcome.skipped.append(f"skipped {p.name} ({mode}): measures {' and '.join(p.modes)} only")
                elif mode == "training" and c.drop_path_rate > 0 and not p.drop_path:
                    outcome.skipped.append(f"skipped {p.name} (training): has no stochastic depth (drop path)")
                else:
                    per_mode[mode].append(p)
        # Model by model, every provider of a model together: a run cut short by a time limit still has complete
        # comparisons for the models it reached.
        runs = [(model, mode, p) for mode in c.modes for model in c.models for p in per_mode[mode]]
        for line in outcome.skipped:
            print(line)
        bar = tqdm(
            runs, desc="fastdeit bench", unit="run", file=sys.stderr, dynamic_ncols=True,
            disable=not show_progress(c.progress),
        )  # fmt: skip
        for model, mode, provider in bar:
            bar.set_postfix_str(f"{model} {provider.name} {c.mode_label(mode)}")
            try:
                ms = self._measure(provider, self._spec(model, mode))
            except Exception as e:  # one broken provider must not lose the others' numbers
                first_line = (str(e).strip().splitlines() or [""])[0][:300]
                line = f"FAILED {provider.name} {model} {c.mode_label(mode)}: {type(e).__name__}: {first_line}"
                outcome.failed.append(line)
                tqdm.write(line, file=sys.stderr)
            else:
                for m in ms:
                    outcome.measurements.append(m)
                    if c.csv is not None:
                        append_rows(c.csv, m.rows(), c.device.type)
            finally:
                if provider.compile:
                    torch._dynamo.reset()  # drop the compiled graphs (and what they hold) before the next model
                free_memory()
        bar.close()
        return outcome


def _model_label(m: Measurement) -> str:
    return m.model if m.img_size == model_config(m.model)["img_size"] else f"{m.model} @{m.img_size}"


def _fmt_rate(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:,.1f}"


def format_table(measurements: list[Measurement]) -> str:
    """The throughput table: per (mode, dtype, machine), one line per model and provider.

    'spread' is (fastest - slowest run) / median: a wide one means a noisy machine, not a number to quote.
    'vs best peer' divides by the fastest peer (timm, timm-compile, hf, torch-xformers) of the same model in the
    same group; MFU and peak memory print '-' where they do not apply (CPU, fp32, GPUs other than H100/H200).
    """
    if not measurements:
        return "no measurements"
    groups: dict[tuple[str, str, str], list[Measurement]] = {}
    for m in measurements:
        groups.setdefault((m.mode, m.dtype, m.gpu_name), []).append(m)
    cols = ("model", "provider", "batch", "img/s", "spread", "vs best peer", "MFU", "peak mem", "paper V100 fp32")
    blocks = []
    for (mode, dtype, gpu), ms in groups.items():
        best: dict[str, float] = {}
        for m in ms:
            if m.peer:
                best[m.model] = max(best.get(m.model, 0.0), m.img_per_s)
        lines = []
        for m in ms:
            ratio = f"{m.img_per_s / best[m.model]:.2f}x" if m.model in best else "-"
            lines.append(
                (
                    _model_label(m),
                    m.provider,
                    str(m.batch),
                    _fmt_rate(m.img_per_s),
                    f"{100 * (m.img_per_s_max - m.img_per_s_min) / m.img_per_s:.0f}%",
                    ratio,
                    f"{100 * m.mfu:.1f}%" if m.mfu is not None else "-",
                    f"{m.peak_memory_gib:.1f} GiB" if m.peak_memory_gib is not None else "-",
                    _fmt_rate(m.paper) if m.paper is not None else "-",
                )
            )
        blocks.append("\n".join([f"{mode}, {dtype}, {gpu}", *format_columns(cols, lines, left=2)]))
    cache_lines = _teacher_cache_ratios(measurements)
    if cache_lines:
        blocks.append("\n".join(["teacher cache: the distilled step with replayed teacher labels vs the live teacher",
                                  *cache_lines]))  # fmt: skip
    notes = []
    if any(m.mfu is None for m in measurements):
        notes.append("MFU '-': only meaningful for bf16/fp16 on H100/H200 (measured bf16 matmul rate 790 TFLOP/s).")
    if any(m.paper is not None for m in measurements):
        notes.append("paper V100 fp32: DeiT paper Table 1 (one V100, fp32, largest batch); compare with fp32 rows.")
    return "\n\n".join(blocks + (["\n".join(notes)] if notes else []))


def _teacher_cache_ratios(measurements: list[Measurement]) -> list[str]:
    """For each step measured both ways in a group: 'model provider batch: live X img/s, cached Y img/s: Zx'."""
    live = {(m.model, m.img_size, m.provider, m.mode, m.dtype, m.gpu_name, m.batch): m for m in measurements}
    cols = ("model", "provider", "batch", "live teacher img/s", "cached labels img/s", "cached / live")
    lines = []
    for m in measurements:
        twin = live.get(
            (m.model, m.img_size, m.provider, m.mode.removesuffix(CACHE_SUFFIX), m.dtype, m.gpu_name, m.batch)
        )
        if m.mode.endswith(CACHE_SUFFIX) and twin is not None:
            ratio = f"{m.img_per_s / twin.img_per_s:.2f}x"
            rates = _fmt_rate(twin.img_per_s), _fmt_rate(m.img_per_s)
            lines.append((_model_label(m), m.provider, str(m.batch), *rates, ratio))
    return format_columns(cols, lines, left=2) if lines else []


def measurements_from_rows(rows: list[dict[str, str]]) -> list[Measurement]:
    """Rebuild measurements from (latest) model-throughput CSV rows, to print their table again."""
    by_key: dict[tuple[str, ...], dict[str, dict[str, str]]] = {}
    for r in rows:
        if not (r["mode"] == "inference" or r["mode"].startswith("training")):
            continue  # a kernel row
        key = (r["gpu_name"], r["model_or_op"], r["provider"], r["mode"], r["dtype"], r["shape"])
        by_key.setdefault(key, {})[r["metric"]] = r
    out = []
    for (gpu, model, provider, mode, dtype, shape), metrics in by_key.items():
        if "throughput" not in metrics or model not in fastdeit.list_models():
            continue
        value = {name: float(row["value"]) for name, row in metrics.items()}
        rate = value["throughput"]
        out.append(
            Measurement(
                model=model,
                provider=provider,
                mode=mode,
                dtype=dtype,
                batch=int(metrics["throughput"]["batch"]),
                img_size=int(shape.split("x")[-1]),
                img_per_s=rate,
                img_per_s_min=value.get("throughput_min", rate),
                img_per_s_max=value.get("throughput_max", rate),
                gpu_name=gpu,
                peak_memory_gib=value.get("peak_memory"),
                mfu=value["mfu"] / 100 if "mfu" in value else None,
            )
        )
    return out
