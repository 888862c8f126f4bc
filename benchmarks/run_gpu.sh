#!/usr/bin/env bash
# Everything one visit to the lent GPU does, in one device call: install, GPU tests, model and kernel benchmarks.
#
#   device run, from the repository root, carrying the xformers wheel (carry: [".whl"]):
#       FASTDEIT_GIT_SHA=$(git rev-parse --short=12 HEAD) bash benchmarks/run_gpu.sh
#   (the device gets a copy of the working tree without .git: the sha is passed in so every CSV row names its
#   commit; add "+dirty" by hand if the tree had uncommitted changes.)
#
# Results land in $OUT: results.csv (fastdeit's CSV format; append it to benchmarks/results/results.csv with
# `tail -n +2 results.csv >> benchmarks/results/results.csv`), plots/*.png, summary.txt, tests_*.txt, env.txt,
# bench_stderr.txt (progress bars, tracebacks). The model table is printed last.
#
# Budget: a device call may run 600 s. Every stage has its own time limit (they add up to ~530 s, plus the
# machine's start-up outside the call) and a stage that hits it keeps every row it wrote, since each measurement
# is appended to the CSV as it is taken. Stage exit codes are listed in stages.txt and printed at the end.
set -u -o pipefail

OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
CSV="$OUT/results.csv"
ERR="$OUT/bench_stderr.txt"
CACHE="$OUT/batch_sizes.json"
START=$SECONDS
export PYTHONUNBUFFERED=1 OUT CSV ERR CACHE

# stage NAME LIMIT_S 'COMMAND': run COMMAND (a bash string; may use the exported functions below) under a time
# limit and record its exit code (124: cut by the limit).
stage() {
    local name=$1 limit=$2 cmd=$3
    echo "=== $name: limit ${limit}s, starting at $((SECONDS - START))s"
    timeout -k 10 "$limit" bash -c "$cmd"
    local rc=$?
    [ "$rc" -eq 124 ] && echo "=== $name: cut at its ${limit}s limit; the rows written so far are kept"
    echo "$name rc=$rc at $((SECONDS - START))s" | tee -a "$OUT/stages.txt"
}

install() {
    # Against the image's torch: never let pip touch torch (no deps, no build isolation).
    python -m pip install -q -e . --no-deps --no-build-isolation || return 1
    local wheel
    wheel=$(ls .whl/xformers-*.whl 2>/dev/null | head -n 1)
    if [ -n "$wheel" ]; then
        python -m pip install -q --no-deps "$wheel"
    else
        echo "no xformers wheel under .whl/: the torch-xformers provider will be skipped"
    fi
    {
        nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
        python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
        python -m pip list 2>/dev/null | grep -iE "^(timm|transformers|xformers|apex) "
        echo "git ${FASTDEIT_GIT_SHA:-unknown}"
    } > "$OUT/env.txt" 2>&1
    cat "$OUT/env.txt"
}

bench() {
    fastdeit bench --csv "$CSV" --batch-cache "$CACHE" "$@" 2>> "$ERR"
}

# pytest with its full log in $OUT/$1.txt and its tail on the terminal.
run_tests() {
    local log="$OUT/$1.txt"
    shift
    python -m pytest -q -p no:cacheprovider "$@" > "$log" 2>&1
    local rc=$?
    tail -n 15 "$log"
    return $rc
}
export -f install bench run_tests

# Model order: DeiT-B first (the headline), then the rest; each model's providers run together.
MODELS="b ti s b384 b-dist ti-dist s-dist b384-dist"

stage install 45 'install'
stage tests-gpu 40 'run_tests tests_gpu -m gpu tests'
stage tests-cuda 50 'run_tests tests_cuda -m "not gpu" tests'
# bf16 inference, eager providers and CUDA graphs: the largest batch that fits, up to 1024.
stage bf16-inference 150 "bench --mode inference --models $MODELS \
    --providers fastdeit fastdeit-cudagraph fastdeit-torch torch-xformers timm hf"
# torch.compile, both sides, on two models (each compile costs tens of seconds); batch from the eager runs' cache.
stage bf16-compile 70 'bench --mode inference --models b ti --providers fastdeit-compile timm-compile'
# fp32, the paper's precision: the column beside the V100 numbers.
stage fp32-inference 45 "bench --mode inference --dtype fp32 --models $MODELS --providers fastdeit timm"
# Training (forward, backward, fused AdamW) at the recipe's per-GPU scale.
stage bf16-training 40 'bench --mode training --models b-dist --batch-size 256 \
    --providers fastdeit fastdeit-torch torch-xformers timm hf'
# Kernels: the quick shape set, most telling shape first. torch.compile is left out here (one compile per op, shape
# and direction would take the whole stage); the bf16-compile stage compares compiled models instead.
stage kernels 70 'python -m fastdeit.benchmarks.kernels --csv "$CSV" \
    --providers fastdeit torch sdpa-flash sdpa-efficient sdpa-cudnn xformers apex > "$OUT/kernels.txt" 2>> "$ERR"
    rc=$?; tail -n 25 "$OUT/kernels.txt"; exit $rc'
stage plots 20 'fastdeit bench --plot --csv "$CSV" --plot-dir "$OUT/plots" &&
    fastdeit bench --summary --csv "$CSV" > "$OUT/summary.txt"'

echo
echo "=== stages (rc 124: cut by its limit; partial rows kept)"
cat "$OUT/stages.txt"
echo "=== FAILED runs (details in bench_stderr.txt)"
grep -h "^FAILED" "$ERR" 2>/dev/null | sort -u | head -n 20
echo "=== model throughput ($(cat "$OUT/env.txt" 2>/dev/null | sed -n 2p))"
fastdeit bench --summary models --csv "$CSV" 2>&1
