# Two commands do all set-up on a fresh machine:
#   make demo   - create .venv, install, run the main job: the digits distillation experiment, then an
#                 inference throughput table of the 8 DeiT models (on a CPU: torch backend, batch 4)
#   make test   - create .venv, install, run the test suite
# With no NVIDIA GPU, torch 2.13.0 (the local CPU build) is installed first so pip never pulls CUDA wheels.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
# Under no GPU the Triton kernels run through the interpreter; it must be set before triton is imported.
ifeq ($(HAS_GPU),1)
RUN_ENV :=
else
RUN_ENV := TRITON_INTERPRET=1
endif

.PHONY: demo test install lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

install: $(PY)
ifneq ($(HAS_GPU),1)
	$(PY) -m pip install -q torch==2.13.0
endif
	$(PY) -m pip install -q -e ".[test]"

demo: install
	$(RUN_ENV) $(PY) -m fastdeit demo
	$(RUN_ENV) $(PY) -m fastdeit bench --models all --mode inference --batch-size 4 --repeats 3 --no-csv

test: install
	$(RUN_ENV) $(PY) -m pytest -q tests

lint: install
	$(PY) -m pip install -q ruff
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
