#!/usr/bin/env bash
# One visit to the lent GPU, in device calls sized for a 15-minute lease (machine start and idle count too).
#
#   bash benchmarks/run_gpu.sh first      at most ~6 min: install, GPU correctness, linear policy, headline ratios
#   bash benchmarks/run_gpu.sh second     ~5 min: kernels, timm + compile training, CUDA test suite, other models...
#   bash benchmarks/run_gpu.sh STAGE...   the named stages only (install first), e.g. what a budget skipped
#
# With the device tool, from the repository root, carrying the xformers wheel (carry: [".whl"]; only the kernels,
# inference-peers and training-peers stages use it), timeout_s 400. The device gets the working tree without .git,
# so the sha travels in the environment: take it here (`git rev-parse --short=12 HEAD`) and write its value in:
#       FASTDEIT_GIT_SHA=<sha> bash benchmarks/run_gpu.sh first
# The whole procedure, the stage limits and the expected and measured times: benchmarks/NOTES.md ("GPU visit").
#
# Environment: OUT (results folder, default ./gpu_out), FASTDEIT_GIT_SHA, PYTHON (default python3),
# FASTDEIT_BUDGET_S (wall seconds for this call, summary included; default 360 for `first`, 300 otherwise: a stage
# that would start with less than its minimum left is skipped, the one running at the deadline is cut),
# FASTDEIT_DRY_RUN=1 (run nothing: print every stage's commands and check them on the CPU: each `fastdeit bench`
# argument list parses through the CLI's parser and names known models/providers/ops, each pytest selection
# collects tests, each `python -m` module exists; exit 1 if any check fails).
#
# What comes back in $OUT (the device returns at most 8 files): results.csv (fastdeit's CSV, every measurement
# appended as it is taken), linear_policy.json (first), log.txt (environment, every stage's full output, the
# summary), plots.tar.gz (second). The short summary table is printed last. $OUT starts empty on every call: the
# tables and plots cover this call's rows plus those committed in benchmarks/results/results.csv, so append the
# first call's rows there before the second call (benchmarks/NOTES.md says how).
set -u -o pipefail

PY=${PYTHON:-python3}
OUT=${OUT:-$PWD/gpu_out}
DRY=${FASTDEIT_DRY_RUN:-}
CSV="$OUT/results.csv"
LOG="$OUT/log.txt"
CACHE=/tmp/fastdeit_batch_sizes.json  # kept on the machine (while it stays warm), not sent back
STAGES_FILE=$(mktemp)
trap 'rm -f "$STAGES_FILE"' EXIT
START=$SECONDS
export PY OUT CSV LOG CACHE PYTHONUNBUFFERED=1

if [ -n "$DRY" ]; then
    # Dry run: each helper checks its command instead of running it.
    install() { "$PY" -c "import fastdeit.benchmarks.roofline, fastdeit.benchmarks.common" && echo "fastdeit imports"; }
    bench() {
        "$PY" -c 'import sys; from fastdeit.benchmarks.check_args import check_bench_args; check_bench_args(sys.argv[1:])' \
            --csv "$CSV" --batch-cache "$CACHE" "$@" && echo "parses: fastdeit bench $*"
    }
    run_tests() {
        shift
        local last
        last=$("$PY" -m pytest --collect-only -q -p no:cacheprovider "$@" 2>&1 | tail -n 1)
        echo "pytest $*: $last"
        [[ $last =~ ^([0-9]+)(/[0-9]+)?\ tests?\ collected ]] && [ "${BASH_REMATCH[1]}" -gt 0 ]
    }
    pymod() {
        "$PY" -c 'import importlib.util, sys; sys.exit(0 if importlib.util.find_spec(sys.argv[1]) else "no module " + sys.argv[1])' \
            "$1" && echo "module exists: $1"
    }
    pack_plots() { command -v tar > /dev/null && echo "tar present"; }
else
    install() {
        # Against the image's torch: pip must never touch torch (no deps, no build isolation).
        "$PY" -m pip install -q -e . --no-deps --no-build-isolation || return 1
        local wheel
        wheel=$(ls .whl/xformers-*.whl 2>/dev/null | head -n 1)
        if [ -n "$wheel" ]; then
            "$PY" -m pip install -q --no-deps "$wheel"
        else
            echo "no xformers wheel under .whl/: the xformers providers will be skipped"
        fi
        nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
        "$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
        "$PY" -m pip list 2>/dev/null | grep -iE "^(timm|transformers|xformers) "
        echo "git ${FASTDEIT_GIT_SHA:-unknown (set FASTDEIT_GIT_SHA)}"
    }
    bench() { "$PY" -m fastdeit bench --csv "$CSV" --batch-cache "$CACHE" "$@"; }
    # pytest NAME ARGS...: the NAME is only a label (the full log is in log.txt).
    run_tests() { shift; "$PY" -m pytest -q -p no:cacheprovider "$@"; }
    pymod() { "$PY" -m "$@"; }
    pack_plots() { tar -czf "$OUT/plots.tar.gz" -C "$(dirname "$1")" "$(basename "$1")"; }
fi
# The committed results plus this call's rows, in one CSV for the tables and plots of the whole visit.
all_results() {
    local all=/tmp/fastdeit_all_results.csv committed=benchmarks/results/results.csv
    if [ -s "$committed" ]; then
        cp "$committed" "$all" && { [ ! -s "$CSV" ] || tail -n +2 "$CSV" >> "$all"; }
    else
        cp "$CSV" "$all" 2> /dev/null || : > "$all"
    fi
    echo "$all"
}
export -f install bench run_tests pymod pack_plots all_results

# The stages: name -> time limit (s), minimum time left to start it (s), command (bash; may use the helpers above).
declare -A LIMIT MIN CMD
ORDER=()
define() { LIMIT[$1]=$2; MIN[$1]=$3; CMD[$1]=$4; ORDER+=("$1"); }
DIST="b-dist s-dist ti-dist"
REST="b s ti b384 b384-dist"

define install 40 20 'install'
# Every kernel fwd+bwd in bf16 (and fp16 attention at 577 tokens) at DeiT-B shapes against fp32/fp64 references (the
# gpu-marked kernel tests), then the triton-vs-torch model parity tests (fp32, fp16 and bf16 autocast).
define tests-gpu 100 30 'run_tests gpu -m gpu tests/kernels tests/models/test_backends.py; rc=$?
    run_tests backends -m "not gpu" -k "not compile" tests/models/test_backends.py || rc=1; exit $rc'
# Triton vs cuBLAS on the four linear shapes at M ~ 50k: fills the linear policy table.
define linear-policy 45 20 'pymod fastdeit.benchmarks.linear_policy --csv "$CSV" --out "$OUT/linear_policy.json"'
# The headline: the distilled 224 models in bf16 at batch 1024, eager providers and CUDA graphs.
define inference-eager 60 30 "bench --mode inference --models $DIST --batch-size 1024 \
    --providers fastdeit fastdeit-cudagraph timm"
# torch.compile costs ~40-60 s per model: timm's three first (a target), fastdeit's after the training step.
define inference-compile-timm 120 45 "bench --mode inference --models $DIST --batch-size 1024 --providers timm-compile"
define training 45 25 'bench --mode training --models b-dist --batch-size 256 --providers fastdeit timm'
define inference-compile-fastdeit 60 40 'bench --mode inference --models b-dist --batch-size 1024 \
    --providers fastdeit-compile'
define training-compile 100 75 'bench --mode training --models b-dist --batch-size 256 --providers timm-compile'
define kernels 75 30 'bench --kernels --providers fastdeit torch sdpa-flash sdpa-efficient sdpa-cudnn xformers apex'
define tests-cuda 100 40 'run_tests cuda -m "not gpu" tests; rc=$?
    run_tests gpu-rest -m gpu tests/test_predict.py tests/test_cuda_graphs.py || rc=1; exit $rc'
# Issue 14's measurement: the distilled DeiT-S step with RegNetY-16GF live and with its labels replayed (the ratio
# recording the teacher once saves), random weights: the cost is the same.
define teacher-cache 60 30 'bench --mode training --models s-dist --batch-size 256 --providers fastdeit \
    --teacher regnety_160 --teacher-cache'
define inference-rest 60 30 "bench --mode inference --models $REST --batch-size 1024 --repeats 5 --warmup 2 \
    --providers fastdeit fastdeit-cudagraph timm"
define inference-peers 90 30 'bench --mode inference --models all --batch-size 1024 --repeats 5 --warmup 2 \
    --providers hf torch-xformers fastdeit-torch'
define training-peers 60 25 'bench --mode training --models b-dist --batch-size 256 \
    --providers fastdeit-torch torch-xformers hf fastdeit-compile'
define fp32-inference 60 30 'bench --mode inference --dtype fp32 --models all --batch-size 256 --repeats 5 \
    --warmup 2 --providers fastdeit timm'
# (the later --csv wins over the one bench() passes)
define plots 30 0 'bench --plot --csv "$(all_results)" --plot-dir /tmp/fastdeit_plots && pack_plots /tmp/fastdeit_plots'

FIRST="install tests-gpu linear-policy inference-eager inference-compile-timm training inference-compile-fastdeit
    training-compile"
SECOND="install kernels training-compile tests-cuda teacher-cache inference-rest inference-peers training-peers fp32-inference plots"

[ $# -gt 0 ] || { echo "usage: bash benchmarks/run_gpu.sh first | second | STAGE...  (stages: ${ORDER[*]})"; exit 2; }
STAGES=(install)
for arg in "$@"; do
    case $arg in
        first) names=$FIRST ;;
        second) names=$SECOND ;;
        *) [ -n "${CMD[$arg]+x}" ] || { echo "unknown stage '$arg'; stages: ${ORDER[*]}"; exit 2; }; names=$arg ;;
    esac
    for name in $names; do
        [[ " ${STAGES[*]} " == *" $name "* ]] || STAGES+=("$name")
    done
done
BUDGET=${FASTDEIT_BUDGET_S:-$([ "$*" = first ] && echo 360 || echo 300)}
mkdir -p "$OUT"
DEADLINE=$((START + BUDGET - 25))  # 25 s kept for the summary
: > "$STAGES_FILE"

# run_stage NAME: run its command under its limit (cut to the deadline; plots always get theirs), output appended to
# log.txt with its tail on the terminal; record "name limit seconds status".
run_stage() {
    local name=$1 limit=${LIMIT[$1]} left=$((DEADLINE - SECONDS)) status
    if [ -z "$DRY" ] && [ "$name" != plots ] && [ "$left" -lt "${MIN[$name]}" ]; then
        echo "=== $name: skipped, ${left}s of the budget left (it needs ${MIN[$name]}s)"
        echo "$name $limit 0 skipped" >> "$STAGES_FILE"
        return
    fi
    [ -z "$DRY" ] && [ "$name" != plots ] && [ "$limit" -gt "$left" ] && limit=$left
    local t0=$SECONDS size
    echo "=== $name: limit ${limit}s, at $((t0 - START))s: $(echo "${CMD[$name]//$'\\\n'/ }" | tr -s ' \n' ' ')" | tee -a "$LOG"
    size=$(stat -c %s "$LOG")
    timeout -k 10 "$limit" bash -c "${CMD[$name]}" >> "$LOG" 2>&1
    local rc=$?
    tail -c +$((size + 1)) "$LOG" | tr '\r' '\n' | grep -v "%|" | tail -n 12  # no progress-bar lines
    case $rc in
        0) status=ok ;;
        124 | 137) status="cut at ${limit}s (rows so far kept)" ;;
        *) status="FAILED rc=$rc" ;;
    esac
    echo "$name $limit $((SECONDS - t0)) $status" >> "$STAGES_FILE"
}

for name in "${STAGES[@]}"; do
    run_stage "$name"
done

{
    echo
    echo "=== stages ($([ -n "$DRY" ] && echo "dry run, nothing measured" || echo "$*"), $((SECONDS - START))s)"
    printf "%-28s %6s %6s  %s\n" stage limit took status
    while read -r name limit took status; do printf "%-28s %5ss %5ss  %s\n" "$name" "$limit" "$took" "$status"; done \
        < "$STAGES_FILE"
} | tee -a "$LOG"
if [ -n "$DRY" ]; then
    awk '$4 != "ok" { bad = 1 } END { exit bad }' "$STAGES_FILE"
    exit $?  # every check must pass
fi
{
    echo "=== FAILED runs"
    grep -h "^FAILED" "$LOG" | sort -u | head -n 20
    all=$(all_results)
    if [ -s "$all" ]; then
        echo "=== model throughput (this call's rows and the committed ones)"
        "$PY" -m fastdeit bench --summary models --csv "$all" 2>&1
        gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 | grep -oiE "h100|h200|a100")
        "$PY" -m fastdeit bench --roofline --gpu "$(echo "${gpu:-h100}" | tr A-Z a-z)" --models $DIST \
            --mode inference training --csv "$all" 2>&1 | sed -n '/^achieved share/,$p'
    fi
} 2>&1 | tee -a "$LOG"
awk '$4 == "FAILED" { bad = 1 } END { exit bad }' "$STAGES_FILE"  # exit 1 when a stage failed (a cut one is not)
