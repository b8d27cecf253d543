"""Compile time: tracing a training step and each step of the pass pipeline.

Run: `python benchmarks/bench_compile.py [--repeats N] [--processes P]`. For the MLP
(784-256-10) and ResNet9 training steps (SGD with momentum), prints the median milliseconds of
tracing and of every pipeline step over N runs, the total, and what the pipeline produced
(nodes, kernels). Then the MLP step's first call in P new processes that find it in the disk
cache (one process filled it first): the medians of `import needlec` (the process's first
import, numpy included), ready (trace, then the disk cache's entries), the two summed, and the
first step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

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


def new_processes(n: int, step: str = "mlp-784-256-10-b32") -> list[dict]:
    """`first_call_only` of `step` in one process that fills an empty disk cache, then in `n`
    processes that read it; the `n` results."""
    root = Path(__file__).resolve().parent.parent
    if str(root) not in sys.path:  # run as a script: the `benchmarks` package is beside it
        sys.path.insert(0, str(root))
    from benchmarks.run import FIRST_CALL_SCRIPT

    with tempfile.TemporaryDirectory(prefix="needlec-bench-cache-") as cache:
        env = {**os.environ, "NEEDLEC_CACHE_DIR": cache}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
        runs = []
        for _ in range(n + 1):
            out = subprocess.run(
                [sys.executable, "-c", FIRST_CALL_SCRIPT, step],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return runs[1:]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--processes", type=int, default=7, help="new processes (0: none)")
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
    if args.processes > 0:
        runs = new_processes(args.processes)
        keys = ["import_ms", "ready_ms", "import_and_ready_ms", "first_step_ms"]
        med = {k: statistics.median(r[k] for r in runs) for k in keys}
        hits = sum(r["program_cache_hits"] for r in runs)
        pyc = "" if runs[0]["bytecode_cached"] else " (no .pyc: sources compiled at each import)"
        print(
            f"\nMLP 784-256-10 step, first call in a new process from the disk cache: median "
            f"of {len(runs)} processes, {hits} program entries loaded{pyc}"
        )
        print("| import needlec | ready | import + ready | first step |\n| --- | --- | --- | --- |")
        print("| " + " | ".join(f"{med[k]:.1f}" for k in keys) + " |")


if __name__ == "__main__":
    main()
