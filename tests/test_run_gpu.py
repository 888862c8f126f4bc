"""benchmarks/run_gpu.sh in its dry run (FASTDEIT_DRY_RUN=1) on the CPU: every stage's command must parse and name
things that exist, so that a broken script is caught here and not on the GPU, where each minute is counted."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from fastdeit.benchmarks.check_args import check_bench_args

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "run_gpu.sh"
STAGES = (
    "install tests-gpu linear-policy inference-eager inference-compile-timm training inference-compile-fastdeit "
    "training-compile kernels tests-cuda teacher-cache inference-rest inference-peers training-peers fp32-inference "
    "plots"
).split()


def _dry_run(script: Path, *args: str, out: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "FASTDEIT_DRY_RUN": "1",
        "OUT": str(out),
        "PYTHON": sys.executable,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    return subprocess.run(["bash", str(script), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _stage_table(stdout: str) -> dict[str, str]:
    table = stdout[stdout.index("=== stages (dry run") :].splitlines()[2:]
    return {m.group(1): m.group(2) for m in (re.match(r"(\S+)\s+\d+s\s+\d+s\s+(.*)", line) for line in table) if m}


@pytest.mark.slow
def test_dry_run_checks_every_stage_of_both_calls(tmp_path):
    result = _dry_run(SCRIPT, "first", "second", out=tmp_path)
    statuses = _stage_table(result.stdout)
    assert list(statuses) == STAGES, result.stdout  # each stage once, in order
    # The linear-policy module comes from another branch; until it is in the tree its stage must fail, then pass.
    policy_present = importlib.util.find_spec("fastdeit.benchmarks.linear_policy") is not None
    expected = {s: "ok" for s in STAGES} | ({} if policy_present else {"linear-policy": "FAILED rc=1"})
    assert statuses == expected, result.stdout + result.stderr
    assert result.returncode == (0 if policy_present else 1)
    bench_stages = [s for s in STAGES if s not in ("install", "tests-gpu", "tests-cuda", "linear-policy")]
    assert result.stdout.count("parses: fastdeit bench") == len(bench_stages)
    collected = re.findall(r"pytest .*: (\d+)(?:/\d+)? tests? collected", result.stdout)
    assert len(collected) == 4 and all(int(n) > 0 for n in collected)
    assert (tmp_path / "log.txt").exists()


def test_dry_run_catches_a_broken_command(tmp_path):
    broken = tmp_path / "run_gpu.sh"
    text = SCRIPT.read_text()
    assert "--providers fastdeit timm'" in text
    broken.write_text(text.replace("--providers fastdeit timm'", "--providers fastdeit timm-eager'", 1))
    result = _dry_run(broken, "training", out=tmp_path / "out")
    assert result.returncode == 1
    assert _stage_table(result.stdout) == {"install": "ok", "training": "FAILED rc=1"}
    assert "unknown provider(s) 'timm-eager'" in result.stdout + result.stderr


def test_unknown_stage_is_refused(tmp_path):
    result = _dry_run(SCRIPT, "benchmarks-all", out=tmp_path)
    assert result.returncode == 2 and "unknown stage 'benchmarks-all'" in result.stdout


def test_check_bench_args():
    check_bench_args(["--mode", "inference", "--models", "b-dist", "--providers", "timm", "fastdeit-cudagraph"])
    check_bench_args(["--data", "--providers", "pil", "dali-cpu"])
    check_bench_args(["--kernels", "--providers", "fastdeit", "sdpa-flash", "--ops", "attention"])
    with pytest.raises(ValueError, match="unknown kernel provider.*cudnn-fa3"):
        check_bench_args(["--kernels", "--providers", "cudnn-fa3"])
    with pytest.raises(ValueError, match="unknown kernel op.*softmax"):
        check_bench_args(["--kernels", "--ops", "softmax"])
    with pytest.raises(ValueError, match="unknown data pipeline provider.*timm-compile"):
        check_bench_args(["--data", "--providers", "timm-compile"])
    check_bench_args(["--mode", "training", "--models", "s-dist", "--teacher", "regnety_160", "--teacher-cache"])
    check_bench_args(["--mode", "training", "--models", "s-dist", "--teacher", "convnet_small"])
    with pytest.raises(ValueError, match="teacher 'regnety_16'"):  # not fastdeit's; timm's only where timm imports
        check_bench_args(["--mode", "training", "--models", "s-dist", "--teacher", "regnety_16"])
    with pytest.raises(ValueError, match="teacher 'convnet_smal' is not a fastdeit model; did you mean convnet_small"):
        check_bench_args(["--mode", "training", "--models", "s-dist", "--teacher", "convnet_smal"])
    with pytest.raises(ValueError, match="unknown model 'b-dsit'"):
        check_bench_args(["--models", "b-dsit"])
    with pytest.raises(SystemExit) as exc:
        check_bench_args(["--batch-size", "many"])
    assert exc.value.code == 2
