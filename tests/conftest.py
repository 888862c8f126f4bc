"""Test set-up shared by every test module.

Triton kernels run on the CPU through the interpreter: `TRITON_INTERPRET=1` must be set before triton
is imported anywhere, so it is set here, first thing, whenever no CUDA GPU is visible. torch.compile's
on-disk cache gets one directory per CPU vector ISA (see `inductor_cache_per_cpu_isa`): a cache shared
with a run under another `ATEN_CPU_CAPABILITY` made compiled graphs return garbage.
"""

from fastdeit._env import inductor_cache_per_cpu_isa, interpret_triton_without_gpu

interpret_triton_without_gpu()
inductor_cache_per_cpu_isa()

import pytest  # noqa: E402
import torch  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)


@pytest.fixture
def device() -> str:
    """The device kernels run on: CUDA when present, else the CPU under the Triton interpreter."""
    return DEVICE


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
