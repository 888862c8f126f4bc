"""Tests for benchmarks/compile_report.py: tiny kernels really built for sm_90 / sm_80 (in a process without the
Triton interpreter), and the pass rule on hand-made compiler facts."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastdeit.benchmarks.compile_report import ARCHS, _dot_operands, analyse, blocks_per_sm

REPO = Path(__file__).resolve().parents[2]
_REPORT = """
import sys
from pathlib import Path
from fastdeit.benchmarks import compile_report as cr
from tests.benchmarks import compile_report_kernels as kernels

arch, csv_path, cache, *names = sys.argv[1:]
workloads = {name: getattr(kernels, f"{name}_workload") for name in names}
sys.exit(cr.report(arch, Path(csv_path), shapes=cr.deit_shapes(quick=True), modes=cr.MODES[:1], workloads=workloads,
                   modules=("tests.benchmarks.compile_report_kernels",), cache_dir=Path(cache), jobs=2))
"""


@pytest.fixture(scope="module")
def build_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("compile_report_cache")


def _report(arch: str, workloads: list[str], tmp_path: Path, cache: Path) -> tuple[int, str, dict[str, dict]]:
    """Run the report on the test kernels: (exit status, stdout, CSV rows by variant)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    csv_path = tmp_path / "report.csv"
    done = subprocess.run(
        [sys.executable, "-c", _REPORT, arch, str(csv_path), str(cache), *workloads],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode in (0, 1), f"report crashed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    with csv_path.open() as f:
        rows = {row["variant"]: row for row in csv.DictReader(f)}
    return done.returncode, done.stdout, rows


def test_report_sm90_reads_the_compiler_and_flags_a_spilling_kernel(tmp_path, build_cache):
    status, stdout, rows = _report("sm_90", ["copy", "dot", "spill"], tmp_path, build_cache)
    copy, dot, spill = rows["copy"], rows["dot"], rows["spill"]
    assert copy["status"] == "ok" and 1 <= int(copy["registers"]) <= 64
    assert (copy["spill_stores"], copy["spill_loads"], copy["mma"]) == ("0", "0", "-")
    assert copy["load_bits"] == copy["store_bits"] == "128"  # fp16 x 8 per thread, 16-byte aligned
    assert copy["blocks_per_sm"] == "16"  # 4 warps of at most 64 registers: the warp limit (64 per SM)
    assert dot["status"] == "ok" and dot["mma"] == "wgmma (f16)" and int(dot["smem_bytes"]) > 0
    assert spill["status"] == "spills" and int(spill["spill_stores"]) > 0 and int(spill["registers"]) == 255
    assert status == 1
    assert (
        stdout.strip().splitlines()[-1].startswith("compile report sm_90, triton ")
        and ": 3 cases, 1 failures, 1 spills, 0 serialised, 0 compile errors" in stdout.splitlines()[-1]
    )


def test_report_reuses_its_cache_and_fails_on_a_kernel_never_launched(tmp_path, build_cache):
    _report("sm_90", ["copy", "dot", "spill"], tmp_path, build_cache)
    status, stdout, rows = _report("sm_90", ["copy", "dot"], tmp_path, build_cache)
    assert "building" not in stdout  # both builds came from the cache
    assert rows["copy"]["status"] == rows["dot"]["status"] == "ok"
    assert "tests.benchmarks.compile_report_kernels._spill_kernel: launched by no workload" in stdout
    assert status == 1 and stdout.strip().splitlines()[-1].endswith("1 kernels never launched")


def test_report_sm80_wants_mma_sync(tmp_path, build_cache):
    _, _, rows = _report("sm_80", ["dot", "copy", "spill"], tmp_path, build_cache)
    assert rows["dot"]["status"] == "ok" and rows["dot"]["mma"] == "mma.sync (f16)"


# --- the pass rule, on facts as `facts()` records them -------------------------------------------------------------
def _facts(**changes: object) -> dict:
    facts = {
        "ptxas_log": "ptxas info    : Used 128 registers, used 1 barriers\n"
        "    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads",
        "res_usage": {"registers": 128, "stack": 0, "static_smem": 1024, "local": 0},
        "opcodes": {"HGMMA.64x128x16.F32.BF16": 8, "LDGSTS.E.BYPASS.128": 16, "LDG.E.U16": 1, "STG.E.128": 4},
        "dots": ["bf16"],
        "dynamic_smem": 65536,
        "num_warps": 4,
    }
    facts.update(changes)
    return facts


def test_analyse_clean_wgmma_kernel():
    result = analyse(_facts(), ARCHS["sm_90"])
    assert result["status"] == "ok" and result["reasons"] == []
    assert (result["mma"], result["load_bits"], result["store_bits"]) == ("wgmma (bf16)", "128,16", "128")
    assert result["smem_bytes"] == 65536 + 1024 and result["blocks_per_sm"] == 3  # 3 x (66.5 KiB + 1 KiB) <= 228 KiB


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({"ptxas_log": "ptxas info    : (C7515) Potential Performance Loss: wgmma.mma_async instructions are "
          "serialized due to non wgmma instructions defining accumulator registers"}, "serialised"),
        ({"ptxas_log": "    504 bytes stack frame, 532 bytes spill stores, 552 bytes spill loads"}, "spills"),
        ({"res_usage": {"registers": 255, "stack": 64, "static_smem": 0, "local": 64}}, "spills"),
        ({"dynamic_smem": 232448}, "smem"),  # plus 1 KiB static: over the 227 KiB a block may have
        ({"opcodes": {"HMMA.16816.F32.BF16": 8}}, "mma.sync not wgmma"),
        ({"opcodes": {"FFMA": 64}, "dots": ["f32-tf32"]}, "FMA not wgmma"),
    ],
)  # fmt: skip
def test_analyse_flags(changes, reason):
    assert reason in analyse(_facts(**changes), ARCHS["sm_90"])["reasons"]


def test_analyse_ieee_fp32_dots_need_no_tensor_cores_and_errors_are_rows():
    result = analyse(_facts(opcodes={"FFMA": 64}, dots=["f32-ieee"]), ARCHS["sm_90"])
    assert result["status"] == "ok" and result["mma"] == "FMA (f32-ieee)"
    assert analyse(_facts(opcodes={"HMMA.16816.F32.BF16": 8}), ARCHS["sm_80"])["status"] == "ok"
    error = analyse({"error": "CompilationError: at 3:4: boom"}, ARCHS["sm_90"])
    assert error == {"status": "CompilationError: at 3:4: boom", "reasons": ["error"]}


def test_blocks_per_sm_limits():
    sm90 = ARCHS["sm_90"]
    assert blocks_per_sm(sm90, registers=32, smem=0, num_warps=4) == 16  # warps: 64 / 4
    assert blocks_per_sm(sm90, registers=255, smem=0, num_warps=8) == 1  # registers: 8 warps x 8192 = 65536
    assert blocks_per_sm(sm90, registers=16, smem=0, num_warps=1) == 32  # the block limit
    assert blocks_per_sm(sm90, registers=64, smem=100_000, num_warps=4) == 2  # shared memory: 2 x 101 KiB


def test_dot_operands_from_ttir():
    ttir = "\n".join(
        [
            "%a = tt.dot %x, %y, %z : tensor<64x64xf16> * tensor<64x64xf16> -> tensor<64x64xf32> loc(#loc1)",
            "%b = tt.dot %x, %y, %z, inputPrecision = tf32 : tensor<64x64xf32> * tensor<64x64xf32> -> tensor<64x1xf32>",
            "%c = tt.dot %x, %y, %z : tensor<64x64xf32> * tensor<64x64xf32> -> tensor<64x64xf32>",
            "%d = tt.load %p : tensor<64x64x!tt.ptr<bf16>>",
        ]
    )
    assert _dot_operands(ttir) == ["f16", "f32-tf32", "f32-ieee"]


def test_bench_cli_passes_quick_and_arch(monkeypatch):
    """`fastdeit bench --compile-report --quick` (before: 'unrecognized arguments: --quick', the module's flag only)."""
    from fastdeit.benchmarks import compile_report as cr

    from fastdeit import cli

    seen = []
    monkeypatch.setattr(cr, "run_from_args", lambda args: seen.append(args) or 0)
    assert cli.main(["bench", "--compile-report", "--quick", "--arch", "sm_80"]) == 0
    assert seen[0].quick and seen[0].arch == "sm_80"
    assert cli.main(["bench", "--compile-report"]) == 0 and not seen[1].quick
