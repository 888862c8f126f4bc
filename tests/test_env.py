"""Tests for fastdeit/_env.py: torch inductor's cache kept apart per CPU vector ISA.

torch's FX-graph cache key leaves out the vector ISA that the cached C++ kernels were generated for, so a graph
compiled under one `ATEN_CPU_CAPABILITY` and loaded under another computed garbage (tests/kernels' torch.compile
tests failed under `ATEN_CPU_CAPABILITY=avx2` after a plain run had filled /tmp/torchinductor_<user>). Each case runs
in fresh processes, since a process picks its ISA once.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest

# A small compiled graph with a vectorised C++ kernel (the matmul result scaled), checked against eager in-process.
_COMPILE_AND_CHECK = """
import torch
from fastdeit._env import inductor_cache_per_cpu_isa
inductor_cache_per_cpu_isa()
x, w = torch.randn(2, 37, 32, generator=torch.Generator().manual_seed(0)), torch.randn(32, 96) * 32 ** -0.5
fn = lambda x, w: torch.relu(x @ w) * 2.0
print((torch.compile(fn)(x, w) - fn(x, w)).abs().max().item())
"""


def _python(code: str, cache_dir: Path, capability: str | None) -> str:
    """Run `code` in a fresh interpreter with the given ATEN_CPU_CAPABILITY (None: the CPU's own); its stdout."""
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "TORCHINDUCTOR_CACHE_DIR")}
    env["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir)
    if capability is not None:
        env["ATEN_CPU_CAPABILITY"] = capability
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"subprocess failed ({done.returncode}):\n{done.stderr[-3000:]}"
    return done.stdout.strip().splitlines()[-1]


@functools.cache
def _native_capability() -> str:
    """What torch picks on this CPU when ATEN_CPU_CAPABILITY is unset (this process may run under another)."""
    code = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    return _python(code, Path(os.devnull), None)


def test_inductor_cache_dir_differs_per_cpu_capability(tmp_path):
    """torch's "default" capability (no vector ISA) is valid on every CPU and differs from any x86 CPU's own."""
    if _native_capability() == "DEFAULT":
        pytest.skip("this CPU has no vector ISA beyond torch's default")
    code = "from fastdeit._env import inductor_cache_per_cpu_isa; print(inductor_cache_per_cpu_isa())"
    native, default = _python(code, tmp_path, None), _python(code, tmp_path, "default")
    assert native != default
    assert Path(native).parent == Path(default).parent == tmp_path


def test_inductor_cache_dir_is_not_nested_twice(tmp_path, monkeypatch):
    """A child process inherits the per-ISA directory in TORCHINDUCTOR_CACHE_DIR; it must not nest another one."""
    from fastdeit._env import inductor_cache_per_cpu_isa

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    first = inductor_cache_per_cpu_isa()
    assert Path(first).parent == tmp_path and os.environ["TORCHINDUCTOR_CACHE_DIR"] == first
    assert inductor_cache_per_cpu_isa() == first


def test_compiled_graph_right_after_another_isa_filled_the_cache(tmp_path):
    """The failure itself: a graph cached by an AVX-512 process, then compiled under AVX2 (8-float vectors), gave
    errors of 1e1..1e35 with one shared cache directory. Needs a CPU with AVX-512, the only one whose native vector
    width differs from every other capability's."""
    if _native_capability() != "AVX512":
        pytest.skip(f"needs an AVX-512 CPU, this one's best is {_native_capability()}")
    for capability in (None, "avx2"):
        err = float(_python(_COMPILE_AND_CHECK, tmp_path, capability))
        assert err < 1e-4, f"compiled graph off by {err:.3g} under ATEN_CPU_CAPABILITY={capability or 'unset'}"
