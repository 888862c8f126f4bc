"""The roofline model (benchmarks/roofline.py, `fastdeit bench --roofline`): counts against independent figures, the
fused schedule against the unfused one, floors against the GPU ceilings, the CLI and the achieved-share table."""

from __future__ import annotations

import csv
import dataclasses
import math

import pytest
import torch
from fastdeit.benchmarks.common import CSV_COLUMNS
from fastdeit.benchmarks.models import MODEL_ALIASES
from fastdeit.benchmarks.roofline import (
    GPUS,
    SCHEDULES,
    architecture,
    gpu_of,
    inference_ops,
    measured_shares,
    roofline,
)

import fastdeit
from fastdeit.cli import main

# Forward GMACs per image as timm reports them (timm's results/benchmark-infer-amp-nchw-pt240-cu124-rtx4090.csv,
# column infer_gmacs; attention matmuls included). FLOPs = 2 x MACs.
TIMM_GMACS = {
    "deit_tiny_patch16_224": 1.26,
    "deit_tiny_distilled_patch16_224": 1.27,
    "deit_small_patch16_224": 4.61,
    "deit_small_distilled_patch16_224": 4.63,
    "deit_base_patch16_224": 17.58,
    "deit_base_distilled_patch16_224": 17.68,
    "deit_base_patch16_384": 55.54,
    "deit_base_distilled_patch16_384": 55.65,
}
B_DIST = "deit_base_distilled_patch16_224"


def _forward_gflop(model: str) -> float:
    return roofline(architecture(model), "inference", 1, "fused").flops / 1e9


@pytest.mark.parametrize("model", sorted(TIMM_GMACS))
def test_forward_flops_match_timm_within_1_percent(model):
    assert _forward_gflop(model) == pytest.approx(2 * TIMM_GMACS[model], rel=0.01)


@pytest.mark.parametrize("model", fastdeit.list_models())
def test_forward_flops_equal_the_models_own_count(model):
    """The architecture read from the config gives the FLOPs that the built model counts from its layers."""
    with torch.device("meta"):
        built = fastdeit.create_model(model, backend="torch")
    assert _forward_gflop(model) * 1e9 == pytest.approx(built.flops_per_image(), rel=1e-12)
    arch = architecture(model)
    assert arch.tokens == built.patch_embed.num_patches + built.num_prefix_tokens
    assert arch.tokens == {224: 197, 384: 577}[arch.img_size] + arch.distilled


def test_deit_b_batch_256_per_block_counts():
    """The hand count of issue 10 at DeiT-B-distilled, batch 256, bf16: per block ~748 GFLOP of matmuls, ~2.1 GB
    fused against ~3.0 GB unfused, and exactly the activation passes each schedule makes."""
    arch = architecture(B_DIST)
    B, N, C = 256, 198, 768
    tok = B * N * C
    weights = 12 * C * C + 9 * C + 2 * 2 * C  # four linear layers' weights and biases, two LayerNorms
    blocks = {s: [op for op in inference_ops(arch, B, s) if op.part == "block"] for s in SCHEDULES}
    linear = 2 * B * N * 12 * C * C
    attention = 4 * B * N * N * C
    for ops in blocks.values():
        assert sum(op.flops for op in ops) == linear + attention
        assert all(op.count == arch.depth for op in ops)
    # In (B, N, C) passes: norm1 2, qkv 4, attention 4, proj 2, then fused norm2+add1 4, fc1+GELU 5, fc2+add2 6 (27)
    # against add1 3, norm2 2, fc1 5, GELU 8, fc2 5, add2 3 (38).
    assert sum(op.bytes for op in blocks["fused"]) == 2 * (27 * tok + weights)
    assert sum(op.bytes for op in blocks["unfused"]) == 2 * (38 * tok + weights)
    assert linear / 1e9 == pytest.approx(717.5, abs=0.1) and attention / 1e9 == pytest.approx(30.8, abs=0.1)
    assert sum(op.bytes for op in blocks["fused"]) / 1e9 == pytest.approx(2.1, rel=0.02)
    assert sum(op.bytes for op in blocks["unfused"]) / 1e9 == pytest.approx(3.0, rel=0.02)
    h100 = GPUS["h100"]
    fused, unfused = (roofline(arch, "inference", B, s).img_per_s(h100) for s in SCHEDULES)
    assert fused == pytest.approx(18_000, rel=0.02) and unfused == pytest.approx(14_200, rel=0.02)


@pytest.mark.parametrize("mode", ["inference", "training"])
@pytest.mark.parametrize("model", fastdeit.list_models())
def test_fused_schedule_moves_fewer_bytes(model, mode):
    fused, unfused = (roofline(architecture(model), mode, 256, s) for s in SCHEDULES)
    assert fused.bytes < unfused.bytes
    for gpu in GPUS.values():
        assert fused.img_per_s(gpu) > unfused.img_per_s(gpu)
    if mode == "inference":
        assert fused.flops == unfused.flops
    else:  # fastdeit's attention backward recomputes P in two programs: 7 N x N matmuls against FA2's 5
        arch = fused.arch
        assert fused.flops - unfused.flops == arch.depth * 2 * (2 * 256 * arch.tokens**2 * arch.embed_dim)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_training_flops_are_forward_plus_dgrad_and_wgrad(schedule):
    """Every matmul runs three times (forward, dgrad, wgrad) except the patch embedding (no input gradient: images)
    and attention (backward recomputes the probabilities)."""
    arch = architecture(B_DIST)
    forward = {op.key: op.flops * op.count for op in inference_ops(arch, 64, schedule)}
    step = roofline(arch, "training", 64, schedule)
    attention_bwd = sum(op.flops * op.count for op in step.ops if op.key == "attention bwd")
    assert attention_bwd == forward["attention"] * (3.5 if schedule == "fused" else 2.5)
    linear = sum(v for k, v in forward.items() if k not in ("attention", "patch_embed"))
    expected = 3 * linear + 2 * forward["patch_embed"] + forward["attention"] + attention_bwd
    assert step.flops == pytest.approx(expected, rel=1e-12)


def test_training_per_step_costs_spread_over_the_batch():
    """AdamW and the weight casts cost the same per step at any batch, so their share per image falls with it."""
    arch = architecture(B_DIST)
    params = sum(p.numel() for p in fastdeit.create_model(B_DIST, backend="torch").parameters())
    for batch in (8, 256):
        adamw = [op for op in roofline(arch, "training", batch, "fused").ops if op.key == "adamw"]
        assert len(adamw) == 1 and adamw[0].bytes == 28 * params
    small, large = (roofline(arch, "training", b, "fused") for b in (8, 256))
    assert small.bytes / 8 > large.bytes / 256


def test_floor_scales_with_the_gpu_ceilings():
    h100 = GPUS["h100"]
    for model in ("deit_tiny_distilled_patch16_224", B_DIST):
        for mode in ("inference", "training"):
            r = roofline(architecture(model), mode, 256, "fused")
            # Memory alone: img/s proportional to bandwidth; compute alone: to the matmul rate.
            memory_only = dataclasses.replace(h100, tflops=math.inf)
            faster_memory = dataclasses.replace(memory_only, tbps=2 * h100.tbps)
            assert r.img_per_s(faster_memory) == pytest.approx(2 * r.img_per_s(memory_only), rel=1e-12)
            assert r.img_per_s(memory_only) == pytest.approx(256 * h100.bytes_per_s / r.bytes, rel=1e-12)
            compute_only = dataclasses.replace(h100, tbps=math.inf)
            assert r.img_per_s(compute_only) == pytest.approx(256 * h100.flops_per_s / r.flops, rel=1e-12)
            # The H200 has the H100's matmul rate and 4.3/3.0 its bandwidth: faster, by less than the bandwidth ratio
            # (the matmuls stay compute-bound), the memory-bound ops exactly by that ratio.
            h200 = GPUS["h200"]
            ratio = r.img_per_s(h200) / r.img_per_s(h100)
            assert 1 < ratio < h200.tbps / h100.tbps
            for op in r.ops:
                speedup = op.seconds(h100) / op.seconds(h200)
                if op.bound(h200) == "memory":  # then memory-bound on the H100 too
                    assert speedup == pytest.approx(h200.tbps / h100.tbps)
                elif op.bound(h100) == "compute":
                    assert speedup == 1
                else:  # memory-bound on the H100, compute-bound on the H200
                    assert 1 < speedup < h200.tbps / h100.tbps
            # The A100: both ceilings lower, so a lower floor.
            assert r.img_per_s(GPUS["a100"]) < r.img_per_s(h100)


def test_teacher_adds_its_forward_flops_only():
    arch = architecture(B_DIST)
    plain, taught = (roofline(arch, "training", 128, "fused", teacher=t) for t in (None, "regnety_160"))
    assert taught.flops - plain.flops == pytest.approx(31.9e9 * 128)
    assert taught.bytes == plain.bytes
    assert taught.mode_label == "training+regnety_160"


def test_gpu_names_of_results_rows():
    assert gpu_of("NVIDIA H100 80GB HBM3").key == "h100"
    assert gpu_of("NVIDIA H200").key == "h200"
    assert gpu_of("NVIDIA A100-SXM4-80GB").key == "a100"
    assert gpu_of("CPU: AMD EPYC 7B13 (2 cores)") is None


def _summary_line(out: str, model: str, mode: str) -> list[str]:
    lines = [line.split() for line in out.splitlines() if line.startswith(f"{model}  ")]
    (line,) = [cells for cells in lines if cells[1] == mode]
    return line


def test_cli_prints_fused_and_unfused_floors(capsys):
    argv = ["bench", "--roofline", "--models", "b-dist", "--batch-size", "256", "--gpu", "h100", "--no-csv"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "datasheet 989 TFLOP/s" in out and "3.35 TB/s" in out and "NVIDIA H100 Tensor Core GPU datasheet" in out
    assert "790 TFLOP/s and 3.0 TB/s: measured" in out
    header = next(line for line in out.splitlines() if line.startswith("model "))
    assert "fused img/s" in header and "unfused img/s" in header
    arch, h100 = architecture(B_DIST), GPUS["h100"]
    for mode in ("inference", "training"):  # both modes by default
        cells = _summary_line(out, B_DIST, mode)
        fused, unfused = (roofline(arch, mode, 256, s).img_per_s(h100) for s in SCHEDULES)
        assert cells[6:9] == [f"{fused:,.0f}", f"{unfused:,.0f}", f"{fused / unfused:.2f}x"]
    assert "per block (x12): fused 748.4 GFLOP" in out
    assert "fused ops: norm2 = norm2 (+add1)" in out


def test_cli_gpu_changes_the_floor(capsys):
    base = ["bench", "--roofline", "--models", "ti-dist", "--mode", "inference", "--no-csv", "--gpu"]
    rates = {}
    for gpu in ("h100", "h200"):
        assert main([*base, gpu]) == 0
        rates[gpu] = float(
            _summary_line(capsys.readouterr().out, MODEL_ALIASES["ti-dist"], "inference")[6].replace(",", "")
        )
    assert rates["h200"] > rates["h100"]


def _write_rows(path, rows: list[dict[str, str]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow(row)


def _row(provider: str, value: float, gpu: str = "NVIDIA H100 80GB HBM3", **kw: str) -> dict[str, str]:
    row = dict(model_or_op=B_DIST, provider=provider, mode="inference", dtype="bf16", batch="512",
               shape="3x224x224", metric="throughput", value=str(value), unit="img/s", gpu_name=gpu,
               torch_version="2.11", triton_version="3.6", git_sha="abc", date="2026-11-30T00:00:00+00:00")  # fmt: skip
    return {**row, **kw}


def test_cli_achieved_share_from_measured_rows(tmp_path, capsys):
    path = tmp_path / "results.csv"
    _write_rows(
        path,
        [
            _row("fastdeit", 9000.0),
            _row("timm", 7000.0),
            _row("timm", 6000.0, date="2026-11-29T00:00:00+00:00"),  # an older rerun: replaced by the newer row
            _row("timm", 3000.0, gpu="NVIDIA H200", batch="256"),
            _row("fastdeit", 50.0, gpu="CPU: AMD EPYC (2 cores)"),
            _row("timm", 800.0, dtype="fp32"),  # another dtype: not this table's
            _row("timm", 1.0, metric="throughput_min"),
        ],
    )
    assert main(["bench", "--roofline", "--models", "b-dist", "--mode", "inference", "--csv", str(path)]) == 0
    out = capsys.readouterr().out
    table = out[out.index("achieved share") :].splitlines()
    rows = {(cells[0], cells[3]): cells for cells in (line.split() for line in table[2:]) if cells[0] in GPUS}
    assert set(rows) == {("h100", "fastdeit"), ("h100", "timm"), ("h200", "timm")}
    arch = architecture(B_DIST)
    for (gpu, provider), cells in rows.items():
        batch, measured = int(cells[4]), float(cells[5].replace(",", ""))
        schedule = "fused" if provider == "fastdeit" else "unfused"
        floor = roofline(arch, "inference", batch, schedule).img_per_s(GPUS[gpu])
        assert cells[6] == schedule and cells[8] == f"{100 * measured / floor:.1f}%"
    assert rows[("h100", "timm")][5] == "7,000"
    assert "(1 rows from devices other than h100, h200, a100 skipped)" in out


def test_measured_shares_match_training_rows_with_their_teacher():
    rows = [
        _row("fastdeit", 4000.0, mode="training+regnety_160", batch="256"),
        _row("fastdeit", 5000.0, mode="training"),
    ]
    arch = architecture(B_DIST)
    shares, _ = measured_shares(rows, [arch], ["training"], "bf16", "regnety_160")
    assert [s.img_per_s for s in shares] == [4000.0]
    expected = roofline(arch, "training", 256, "fused", teacher="regnety_160").img_per_s(GPUS["h100"])
    assert shares[0].own_floor == pytest.approx(expected)


def test_user_errors(capsys, tmp_path):
    base = ["bench", "--roofline", "--models", "b-dist"]
    for extra, message in (
        (["--dtype", "fp32"], "the roofline counts 16-bit runs (dtype bf16 or fp16"),
        (["--mode", "inference", "--teacher", "regnety_160"], "--teacher adds the teacher's forward to training"),
        (["--teacher", "resnet_x"], "the roofline knows the FLOPs of teachers regnety_160, got 'resnet_x'"),
        (["--img-size", "200"], "img_size must be a multiple of the patch size 16, got 200"),
        (["--batch-size", "0"], "batch size must be >= 1, got 0"),
        (["--csv", str(tmp_path / "missing.csv")], "results CSV not found"),
    ):
        assert main([*base, *extra]) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(ValueError, match="schedule must be one of fused, unfused, got 'eager'"):
        inference_ops(architecture(B_DIST), 1, "eager")
    with pytest.raises(ValueError, match="mode must be inference or training, got 'serving'"):
        roofline(architecture(B_DIST), "serving", 1, "fused")


def test_img_size_override_counts_more_tokens():
    small, large = (architecture("deit_base_patch16_224", size) for size in (224, 384))
    assert (small.tokens, large.tokens) == (197, 577)
    assert _forward_gflop("deit_base_patch16_384") == pytest.approx(
        roofline(large, "inference", 1, "fused").flops / 1e9
    )
