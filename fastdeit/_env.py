"""Facts about the machine and the environment (GPU, cache folders, terminal, CPU vector ISA), read without
importing torch or triton at module import: some are needed before triton or torch's compiler is first used."""

import getpass
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Name prefix of the per-ISA subdirectories of torch inductor's cache (see `inductor_cache_per_cpu_isa`).
_ISA_DIR_PREFIX = "cpu-isa-"


def has_cuda_gpu() -> bool:
    """Whether an NVIDIA GPU is visible, asked of nvidia-smi so that nothing initialises CUDA."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return False
    if shutil.which("nvidia-smi") is None:
        return False
    return subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0


def triton_interpreter() -> bool:
    """Whether Triton runs kernels on the CPU through its interpreter (`TRITON_INTERPRET` set, and not to 0)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def interpret_triton_without_gpu() -> None:
    """Without a GPU, run Triton kernels on the CPU through the interpreter (`TRITON_INTERPRET=1`).

    Must run before triton is first imported; an explicit setting in the environment wins.
    """
    if not has_cuda_gpu():
        os.environ.setdefault("TRITON_INTERPRET", "1")


def cache_dir() -> Path:
    """fastdeit's cache folder (probed batch sizes, the digits dataset): $FASTDEIT_CACHE_DIR when set, else
    fastdeit/ under the XDG cache home ($XDG_CACHE_HOME, by default ~/.cache). Not created here."""
    explicit = os.environ.get("FASTDEIT_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "fastdeit"


def show_progress(flag: bool | None) -> bool:
    """Whether to draw a progress bar on stderr: `flag` when given (--progress / --no-progress), else only on a
    terminal: in a pipe or a log file the bar's redraws are noise."""
    return flag if flag is not None else sys.stderr.isatty()


def inductor_cache_per_cpu_isa() -> str:
    """Give torch inductor's on-disk cache a directory of its own for each CPU vector ISA; returns that directory.

    Inductor generates its C++ kernels for one vector width (16 floats with AVX-512, 8 with AVX2 or none; the
    widest the CPU has, or the one `ATEN_CPU_CAPABILITY` names) but leaves the ISA out of its FX-graph cache key,
    and a cached graph's kernels are rebuilt with the compiler flags of the process that loads them. So a graph
    cached by an AVX-512 process and loaded by an AVX2 one (or the reverse) runs 16-float loops on 8-float vectors:
    garbage results (1e22..1e35 seen) and heap corruption, with no error (torch 2.13). This happens whenever one
    cache directory (by default /tmp/torchinductor_<user>) serves processes with different capabilities, e.g. a
    run with `ATEN_CPU_CAPABILITY=avx2` after a plain one. Call before the first torch.compile; a
    `TORCHINDUCTOR_CACHE_DIR` already set is the base the per-ISA directory goes under.
    """
    import torch

    base = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if not base:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = f"uid_{os.getuid()}"
        base = os.path.join(tempfile.gettempdir(), f"torchinductor_{user}")
    if os.path.basename(base).startswith(_ISA_DIR_PREFIX):  # already set by this function in a parent process
        base = os.path.dirname(base)
    path = os.path.join(os.path.abspath(base), _ISA_DIR_PREFIX + torch.backends.cpu.get_cpu_capability().lower())
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = path
    return path
