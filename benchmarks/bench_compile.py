"""Compile time: tracing a training step and each step of the pass pipeline.

Run: `python benchmarks/bench_compile.py [--repeats N]`. For the MLP (784-256-10) and ResNet9
training steps (SGD with momentum), prints the median milliseconds of tracing and of every
pipeline step over N runs, the total, and what the pipeline produced (nodes, kernels).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

from needlec import nn, optim
from needlec.apps.models import ResNet9
from needlec.jit import trace_function
from needlec.passes import PIPELINE, Program


def make_step(model) -> Callable:
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_fn = nn.SoftmaxLoss()

    def step(x, y):
        opt.reset_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return step


def time_once(step: Callable, x, y) -> tuple[dict[str, float], Program]:
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    traced = trace_function(step, (x, y))
    times["trace"] = time.perf_counter() - t0
    program = Program(traced.graph, traced.n_results)
    for k, (name, run) in enumerate(PIPELINE):
        t0 = time.perf_counter()
        program = run(program)
        times[f"{k}:{name}"] = time.perf_counter() - t0
    return times, program


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    cases = [
        (
            "MLP 784-256-10, batch 128",
            lambda: nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10)),
            rng.random((128, 784), dtype="float32"),
            rng.integers(0, 10, 128).astype("float32"),
        ),
        (
            "ResNet9, batch 8",
            ResNet9,
            rng.random((8, 3, 32, 32), dtype="float32"),
            rng.integers(0, 10, 8).astype("float32"),
        ),
    ]
    for name, build, x, y in cases:
        np.random.seed(0)
        step = make_step(build())
        runs = [time_once(step, x, y) for _ in range(args.repeats)]
        program = runs[-1][1]
        keys = list(runs[0][0])
        med = {k: 1e3 * statistics.median(r[0][k] for r in runs) for k in keys}
        total = sum(med.values())
        print(
            f"\n{name}: {len(program.graph.nodes)} nodes after the graph passes, "
            f"{len(program.kernels.kernels)} kernels; median of {args.repeats}"
        )
        print("| step | ms |\n| --- | --- |")
        for k in keys:
            print(f"| {k.split(':')[-1]} | {med[k]:.1f} |")
        print(f"| **total** | **{total:.1f}** |")


if __name__ == "__main__":
    main()
