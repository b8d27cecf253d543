"""GPU benchmarks of the CUDA backend (`python -m benchmarks.gpu.bench_cuda`), run on a GPU machine."""
