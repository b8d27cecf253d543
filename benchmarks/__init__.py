"""needlec's benchmarks: `python -m benchmarks` times whole training steps against numpy, torch
and jax (see `benchmarks.run`); the bench_*.py scripts time single pieces."""
