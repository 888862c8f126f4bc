"""Machine facts needed before triton is imported (this module imports neither torch nor triton)."""

import os
import shutil
import subprocess


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
