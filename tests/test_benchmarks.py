"""The benchmark harness on the CPU: `fastdeit bench` end to end on tiny cases, the CSV, plots, the batch finder.

These check that the harness measures and records correctly; the numbers themselves are never asserted on.
"""

from __future__ import annotations

import csv
import sys
import types

import pytest
import torch
from fastdeit.benchmarks import kernels
from fastdeit.benchmarks.common import CSV_COLUMNS, Row, append_rows, latest_rows, parse_dtype, read_rows
from fastdeit.benchmarks.models import BenchConfig, Measurement, format_table, resolve_models
from fastdeit.benchmarks.plot import plot_results
from fastdeit.benchmarks.providers import PROVIDERS, XformersAttention, check_providers
from fastdeit.benchmarks.topk_distillation import main as topk_main
from fastdeit.benchmarks.topk_distillation import measure as topk_measure

from fastdeit.batch_size import BatchSizeCache, find_max_batch, is_oom
from fastdeit.cli import main
from fastdeit.layers import Attention

# The CPU on every machine: on a GPU machine the Triton providers must still be reported as skipped here.
TINY = "--device cpu --models ti-dist --img-size 32 --batch-size 2 --repeats 2 --warmup 0".split()


@pytest.fixture(autouse=True)
def _one_thread():
    """One CPU thread: these tests time nothing that matters, and on a busy machine torch's spinning worker threads
    make a tiny forward ~100x slower than on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_bench(argv: list[str]) -> int:
    """`fastdeit bench ARGV`, through the command line's entry point."""
    return main(["bench", *argv])


def check_csv(path) -> list[dict[str, str]]:
    """The CSV has exactly the documented header, and every row a number, a unit and the environment stamp."""
    with open(path, newline="") as f:
        assert next(csv.reader(f)) == list(CSV_COLUMNS)
    rows = read_rows(path)
    assert rows
    for r in rows:
        assert float(r["value"]) == float(r["value"])  # parses, not NaN
        assert r["unit"] and r["gpu_name"] and r["torch_version"] == torch.__version__ and r["git_sha"]
        assert r["date"].startswith("20")
    return rows


def test_bench_cli_cpu_inference_and_training(tmp_path, capsys):
    path = tmp_path / "results.csv"
    argv = TINY + ["--mode", "inference", "training", "--providers", "fastdeit-torch", "hf", "timm", "fastdeit"]
    assert run_bench([*argv, "--csv", str(path)]) == 0
    out = capsys.readouterr().out
    assert "skipped fastdeit: needs a CUDA GPU" in out  # the Triton providers are GPU-only
    if "timm" not in sys.modules:  # timm does not import on this CPU machine: it must say so, not fail
        assert "skipped timm:" in out
    rows = check_csv(path)
    measured = {(r["provider"], r["mode"]) for r in rows if r["metric"] == "throughput"}
    assert measured >= {(p, m) for p in ("fastdeit-torch", "hf") for m in ("inference", "training")}
    for r in rows:
        assert (r["model_or_op"], r["dtype"], r["batch"], r["shape"]) == (
            "deit_tiny_distilled_patch16_224", "fp32", "2", "3x32x32"
        )  # fmt: skip
        if r["metric"] == "throughput":
            assert float(r["value"]) > 0 and r["unit"] == "img/s"
    assert not {"mfu", "peak_memory"} & {r["metric"] for r in rows}  # neither means anything on a CPU
    assert "vs best peer" in out and "deit_tiny_distilled_patch16_224 @32" in out

    # --summary prints the same table again from the CSV alone.
    assert run_bench(["--summary", "--csv", str(path)]) == 0
    summary = capsys.readouterr().out
    assert "training, fp32" in summary and "fastdeit-torch" in summary and "hf" in summary


def test_bench_training_with_teacher(tmp_path, capsys):
    path = tmp_path / "results.csv"
    argv = TINY + ["--mode", "training", "--providers", "fastdeit-torch", "--teacher", "ti-dist"]
    assert run_bench([*argv, "--csv", str(path)]) == 0
    rows = check_csv(path)
    assert {r["mode"] for r in rows} == {"training+ti-dist"}


def test_bench_teacher_cache_measures_live_and_cached_in_one_run(tmp_path, capsys):
    path = tmp_path / "results.csv"
    argv = TINY + "--mode training --providers fastdeit-torch --teacher convnet_tiny --teacher-cache".split()
    assert run_bench([*argv, "--csv", str(path)]) == 0
    out = capsys.readouterr().out
    rows = [r for r in check_csv(path) if r["metric"] == "throughput"]
    assert sorted(r["mode"] for r in rows) == ["training+convnet_tiny", "training+convnet_tiny+cache"]
    assert len({r["batch"] for r in rows}) == 1  # the same batch: the two differ by the teacher alone
    ratio_block = out[out.index("teacher cache: the distilled step") :].splitlines()
    assert ratio_block[1].rstrip().endswith("live teacher img/s  cached labels img/s  cached / live")
    assert ratio_block[2].startswith("deit_tiny_distilled_patch16_224 @32") and ratio_block[2].endswith("x")


def test_format_table_teacher_cache_ratio():
    live = _measurement("fastdeit", 100.0, mode="training+regnety_160")
    cached = _measurement("fastdeit", 250.0, mode="training+regnety_160+cache")
    other_batch = _measurement("timm", 50.0, mode="training+regnety_160+cache", batch=128)
    table = format_table([live, cached, other_batch])
    block = table[table.index("teacher cache:") :].splitlines()
    assert block[2].split() == ["deit_base_patch16_224", "fastdeit", "256", "100", "250", "2.50x"]
    assert not any("timm" in line for line in block)  # no live twin at its batch: no ratio
    assert "teacher cache:" not in format_table([live])


def test_bench_user_errors(capsys):
    assert run_bench(["--models", "deit_huge"]) == 2  # one line naming what was expected, no traceback
    assert "fastdeit bench: error: unknown model 'deit_huge'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown model 'deit_huge'.*expected 'all'.*deit_tiny_patch16_224"):
        resolve_models(["deit_huge"])
    with pytest.raises(ValueError, match="unknown provider.*'tensorrt'.*expected some of fastdeit"):
        check_providers(["tensorrt"])
    with pytest.raises(ValueError, match="dtype must be one of fp32, fp16, bf16, got 'fp8'"):
        parse_dtype("fp8")
    cfg = dict(providers=[PROVIDERS["fastdeit-torch"]], modes=["training"], dtype=torch.float32, device="cpu")
    with pytest.raises(ValueError, match="needs \\*_distilled_\\* students; got deit_tiny_patch16_224"):
        BenchConfig(models=["deit_tiny_patch16_224"], teacher="ti-dist", **cfg)
    with pytest.raises(ValueError, match="unknown teacher 'resnet_x'|teacher 'resnet_x' is not a fastdeit model"):
        BenchConfig(models=["deit_tiny_distilled_patch16_224"], teacher="resnet_x", **cfg)
    with pytest.raises(ValueError, match="teacher_cache compares .* needs a teacher and the training mode"):
        BenchConfig(models=["deit_tiny_distilled_patch16_224"], teacher_cache=True, **cfg)
    with pytest.raises(ValueError, match="teacher_cache compares .* needs a teacher and the training mode"):
        BenchConfig(models=["deit_tiny_distilled_patch16_224"], teacher="ti-dist", teacher_cache=True,
                    **{**cfg, "modes": ["inference"]})  # fmt: skip
    with pytest.raises(ValueError, match="img_size must be a positive multiple of the patch size 16, got 50"):
        BenchConfig(models=["deit_tiny_patch16_224"], img_size=50, **cfg)
    with pytest.raises(ValueError, match="mode must be one of inference, training, got 'serving'"):
        BenchConfig(models=["deit_tiny_patch16_224"], **{**cfg, "modes": ["serving"]})
    with pytest.raises(ValueError, match="unknown op.*'softmax'"):
        kernels.run_kernels(ops=["softmax"], csv=None)


class _FakeOOM:
    """A step that runs out of memory above `limit` images, recording every batch it was asked for."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.tried: list[int] = []
        self.freed = 0

    def __call__(self, batch: int) -> None:
        self.tried.append(batch)
        if batch > self.limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate for batch {batch}")

    def free(self) -> None:
        self.freed += 1


@pytest.mark.parametrize("limit", [1, 7, 40, 300, 333, 1000])
def test_find_max_batch_with_fake_oom(limit):
    step = _FakeOOM(limit)
    found = find_max_batch(step, start=32, cap=1024, on_oom=step.free)
    assert found <= limit  # never a size that failed
    assert found >= limit - max(8, limit // 8) or found == limit  # within the bisection's resolution
    if found >= 32:
        assert found % 8 == 0
    assert step.freed == sum(b > limit for b in step.tried)  # memory released after every failure
    assert len(step.tried) <= 12  # doubling plus a short bisection, not a linear scan


def test_find_max_batch_cap_and_errors():
    assert find_max_batch(_FakeOOM(10**6), start=32, cap=1024, on_oom=lambda: None) == 1024
    assert find_max_batch(_FakeOOM(10**6), start=32, cap=100, on_oom=lambda: None) == 100
    with pytest.raises(RuntimeError, match="even at batch size 1"):
        find_max_batch(_FakeOOM(0), on_oom=lambda: None)

    def broken(batch: int) -> None:
        raise ValueError("a bug, not memory")

    with pytest.raises(ValueError, match="a bug"):  # only out-of-memory errors are swallowed
        find_max_batch(broken)
    assert is_oom(torch.OutOfMemoryError("x")) and is_oom(RuntimeError("CUDA error: out of memory"))
    assert not is_oom(RuntimeError("shape mismatch"))


def test_batch_size_cache(tmp_path):
    cache = BatchSizeCache(tmp_path / "sizes.json")
    key = cache.key("deit_base_patch16_224", "fastdeit-torch", "training", "bf16", 224, "H100")
    assert cache.get(key, 1024) is None
    cache.set(key, 700, 1024)  # a real memory limit: valid under any cap
    assert cache.get(key, 1024) == 700 and cache.get(key, 4096) == 700 and cache.get(key, 512) == 512
    cache.set(key, 1024, 1024)  # only the cap: says nothing about a larger cap
    assert cache.get(key, 1024) == 1024 and cache.get(key, 2048) is None
    (tmp_path / "sizes.json").write_text("{not json")
    assert cache.get(key, 1024) is None  # a damaged cache means probing again


def _measurement(provider: str, img_per_s: float, **kw) -> Measurement:
    rates = dict(img_per_s=img_per_s, img_per_s_min=img_per_s, img_per_s_max=img_per_s)
    base = dict(model="deit_base_patch16_224", provider=provider, mode="inference", dtype="bf16", batch=256,
                img_size=224, gpu_name="H100", **rates)  # fmt: skip
    return Measurement(**{**base, **kw})


def test_format_table_ratio_mfu_and_paper_column():
    table = format_table([
        _measurement("fastdeit", 3000.0, mfu=0.134, peak_memory_gib=5.25),
        _measurement("timm", 2000.0),
        _measurement("hf", 1000.0),
        _measurement("fastdeit-torch", 1500.0),
    ])  # fmt: skip
    lines = {line.split()[1]: line for line in table.splitlines() if line.startswith("deit_base")}
    assert all(" 0% " in line for line in lines.values())  # one run per provider here: no spread
    assert "1.50x" in lines["fastdeit"] and "13.4%" in lines["fastdeit"] and "5.2 GiB" in lines["fastdeit"]
    assert "1.00x" in lines["timm"] and "0.50x" in lines["hf"] and "0.75x" in lines["fastdeit-torch"]
    assert lines["timm"].rstrip().endswith("292")  # the paper's V100 fp32 img/s beside the model
    assert "MFU '-'" in table
    training = format_table([_measurement("fastdeit", 100.0, mode="training")])
    assert training.splitlines()[2].rstrip().endswith("-")  # no paper number for training, nor peer ratio


def test_kernel_suite_tiny_case(tmp_path, device):
    path = tmp_path / "results.csv"
    results, skipped = kernels.run_kernels(
        ops=["layer_norm_residual", "attention_qkv", "linear_fc1_gelu"],
        providers=["fastdeit", "torch", "sdpa-flash"],
        shapes=kernels.CPU_SHAPES,
        device=device,
        csv=path,
    )
    assert {(r.op, r.provider) for r in results} == {
        (op, p) for op in ("layer_norm_residual", "attention_qkv", "linear_fc1_gelu") for p in ("fastdeit", "torch")
    }
    assert {r.direction for r in results} == set(kernels.DIRECTIONS)
    assert all(r.ms > 0 and r.rate > 0 for r in results)
    assert skipped == []  # sdpa-flash has no attention_qkv case, so nothing to skip
    rows = check_csv(path)
    assert {r["metric"] for r in rows} == {"time", "bandwidth", "compute"}
    assert {r["unit"] for r in rows if r["model_or_op"] == "layer_norm_residual"} == {"ms", "GB/s"}
    assert len(kernels.kernel_results_from_rows(latest_rows(rows))) == len(results)
    assert "vs best peer" in kernels.format_kernel_table(results)


def test_kernel_case_under_pytest_benchmark(benchmark, device):
    shape = kernels.CPU_SHAPES[0]
    prepared = kernels.prepare("attention", "fastdeit", shape, torch.float32, torch.device(device), "fwd+bwd")
    benchmark.pedantic(prepared.fn, rounds=1, iterations=1)
    for provider in ("sdpa-cudnn", "apex"):
        with pytest.raises(kernels.Unavailable):
            kernels.prepare("attention", provider, shape, torch.float32, torch.device("cpu"), "fwd")


def test_kernel_work_counts():
    s = kernels.Shape(batch=2, tokens=197, width=768, heads=12)
    flops, unit = kernels._work("attention", s, torch.bfloat16, "fwd")
    assert unit == "TFLOP/s" and flops == 4 * 2 * 12 * 197 * 197 * 64
    assert kernels._work("attention", s, torch.bfloat16, "fwd+bwd")[0] == 3.5 * flops
    assert kernels._work("linear_fc1_gelu", s, torch.bfloat16, "bwd") == (2 * 2 * 2 * 197 * 768 * 3072, "TFLOP/s")
    nbytes, unit = kernels._work("layer_norm", s, torch.bfloat16, "fwd")
    assert unit == "GB/s" and nbytes == 2 * (2 * 197 * 768 * 2 + 2 * 768)


def test_plot_from_small_csv(tmp_path, capsys):
    path = tmp_path / "results.csv"
    model_rows = [Row("deit_tiny_patch16_224", p, "inference", "bf16", 1024, "3x224x224", "throughput", v, "img/s")
                  for p, v in (("fastdeit", 30000.0), ("timm", 20000.0))]  # fmt: skip
    kernel_rows = [Row("attention", p, "fwd", "bf16", 256, "B256_N197_C768_H12", "compute", v, "TFLOP/s")
                   for p, v in (("fastdeit", 300.0), ("sdpa-flash", 250.0))]  # fmt: skip
    append_rows(path, model_rows + kernel_rows, "cpu")
    assert run_bench(["--plot", "--csv", str(path), "--plot-dir", str(tmp_path / "plots")]) == 0
    pngs = sorted((tmp_path / "plots").glob("*.png"))
    assert [p.name.split("_")[0] for p in pngs] == ["kernels", "models"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert str(pngs[0]) in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="results CSV not found"):
        plot_results(tmp_path / "missing.csv", tmp_path)


def test_xformers_attention_layout(monkeypatch):
    """The xformers provider's attention, with a stand-in for xformers (not installed here) that takes its
    (B, N, H, D) layout: it must equal fastdeit's torch attention with the same weights."""

    def memory_efficient_attention(q, k, v, p=0.0, scale=None):
        assert q.shape[1] == 5 and q.shape[2] == 2  # (B, N, H, D), as xformers expects
        out = torch.nn.functional.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)), scale=scale)
        return out.transpose(1, 2)

    ops = types.ModuleType("xformers.ops")
    ops.memory_efficient_attention = memory_efficient_attention
    monkeypatch.setitem(sys.modules, "xformers", types.ModuleType("xformers"))
    monkeypatch.setitem(sys.modules, "xformers.ops", ops)
    ref = Attention(32, num_heads=2, qkv_bias=True, backend="torch").eval()
    xf = XformersAttention(32, num_heads=2, qkv_bias=True, backend="torch").eval()
    xf.load_state_dict(ref.state_dict())
    x, r = torch.randn(3, 5, 32), torch.randn(3, 5, 32)
    torch.testing.assert_close(xf(x), ref(x))
    torch.testing.assert_close(xf(x, residual=r), ref(x, residual=r))


def test_topk_distillation_error_measurement(capsys):
    # Logits exact in fp16: with k = C nothing is approximated.
    teacher = torch.randint(-8, 8, (6, 5)).float()
    student = torch.randn(6, 5)
    rows = topk_measure(teacher, student, ks=[1, 2, 5], taus=[1.0])
    assert [r["k"] for r in rows] == [1, 2, 5] and [r["bytes"] for r in rows] == [10, 14, 26]
    for name in ("loss_error_tail", "grad_error_tail", "loss_error_renorm", "grad_error_renorm", "tail_mass"):
        assert rows[-1][name] < 1e-12, name
    assert (
        rows[0]["grad_error_renorm"] > rows[1]["grad_error_renorm"] > 0 and rows[0]["tail_mass"] > rows[1]["tail_mass"]
    )
    assert all(r["grad_error_tail"] < r["grad_error_renorm"] for r in rows[:2])

    argv = "--teacher random:convnet_tiny --data digits --img-size 16 --max-batches 1 --batch-size 20 --k 2 10"
    assert topk_main(argv.split()) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:3] == ["teacher: convnet_tiny, random weights, 10 classes", "student: uniform (zero logits)",
                       "20 images of digits (val)"]  # fmt: skip
    assert out[3].split()[:4] == ["k", "tau", "tail", "mass"] and out[3].endswith("bytes/image")
    assert [line.split()[:2] for line in out[4:]] == [["2", "1"], ["10", "1"], ["2", "3"], ["10", "3"]]
    with pytest.raises(SystemExit):
        topk_main("--teacher random:convnet_tiny --k 11".split())


def test_kernel_bench_names_the_machine_first(capsys):
    """Before: the kernel tables named neither the machine nor the versions (the model bench's header line)."""
    assert main(["bench", "--kernels", "--ops", "layer_norm", "--providers", "torch", "--no-csv"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("CPU: ") and f"torch {torch.__version__}" in first and "| git " in first
