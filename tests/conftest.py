"""Test set-up shared by every test module.

Triton kernels run on the CPU through the interpreter: `TRITON_INTERPRET=1` must be set before triton
is imported anywhere, so it is set here, first thing, whenever no CUDA GPU is visible.
"""

from fastdeit._env import interpret_triton_without_gpu

interpret_triton_without_gpu()

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
