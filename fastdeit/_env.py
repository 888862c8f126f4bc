"""Facts about the machine and the environment (GPU, cache folder, terminal), read without importing torch or
triton: some are needed before triton is first imported."""

import os
import shutil
import subprocess
import sys
from pathlib import Path


def has_cuda_gpu() -> bool:
    """Whether an NVIDIA GPU is visible, asked of nvidia-smi so that nothing initialises CUDA."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return False
    if shutil.which("nvidia-smi") is None:
        return False
    return subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0


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
