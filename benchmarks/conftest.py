"""pytest set-up for `pytest benchmarks/ --benchmark-only`.

Without a CUDA GPU the Triton kernels run in the interpreter, which must be switched on before triton is first
imported: so here, first thing (as tests/conftest.py does). `--bench-csv PATH` also appends each measurement to a
fastdeit results CSV (pytest-benchmark keeps its own JSON with --benchmark-json / --benchmark-autosave).
"""

from fastdeit._env import interpret_triton_without_gpu

interpret_triton_without_gpu()

import pytest  # noqa: E402


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--bench-csv", default=None, help="append each kernel measurement to this fastdeit results CSV")


@pytest.fixture
def bench_csv(request: pytest.FixtureRequest) -> str | None:
    return request.config.getoption("--bench-csv")
