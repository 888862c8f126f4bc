# Two commands do all set-up on a fresh machine:
#   make demo   - create .venv, install, run the main job: the digits distillation experiment, then an
#                 inference throughput table of the 8 DeiT models (on a CPU: torch backend, batch 4)
#   make test   - create .venv, install, build every Triton kernel for sm_90 (the compile report, with the project's
#                 triton and with the GPU machine's 3.6.0 in .cache/), run the test suite
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

# The triton version of the GPU machine, installed beside the project's for the compile report (no GPU needed).
TRITON_GPU := 3.6.0
TRITON_GPU_DIR := .cache/triton-$(TRITON_GPU)

.PHONY: demo test install lint clean compile-report

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

# Every kernel x every shipped GPU config at DeiT-B/197 tokens, each precision mode, forward and backward (the other
# DeiT shapes specialise the same way but for the LayerNorm tile; `fastdeit bench --compile-report` builds them all).
# Exit status 1 on a compile error, a spill, serialised wgmma or a dot off wgmma. Without the interpreter: the report
# builds real GPU code.
compile-report: install
	$(PY) -m fastdeit.benchmarks.compile_report --arch sm_90 --quick
	@if [ "$$($(PY) -c 'import triton; print(triton.__version__)')" != "$(TRITON_GPU)" ]; then \
		if [ ! -f $(TRITON_GPU_DIR)/.installed ]; then \
			rm -rf $(TRITON_GPU_DIR) && \
			$(PY) -m pip install -q --no-deps --target $(TRITON_GPU_DIR) triton==$(TRITON_GPU) && \
			touch $(TRITON_GPU_DIR)/.installed || exit 1; fi; \
		echo "compile report with triton $(TRITON_GPU) ($(TRITON_GPU_DIR)):"; \
		PYTHONPATH=$(TRITON_GPU_DIR) $(PY) -m fastdeit.benchmarks.compile_report --arch sm_90 --quick; fi

test: install compile-report
	$(RUN_ENV) $(PY) -m pytest -q tests

lint: install
	$(PY) -m pip install -q ruff
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache $(TRITON_GPU_DIR)
