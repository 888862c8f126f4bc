"""fastdeit benchmark suites, installed as `fastdeit.benchmarks`: model throughput (`fastdeit bench`), kernel
microbenchmarks (`python -m fastdeit.benchmarks.kernels`), plots. See README.md and NOTES.md here."""
