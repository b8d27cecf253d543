"""Data-parallel training on 1 and 2 processes: samples per second and the all-reduce's share.

Run: `python -m benchmarks.bench_distributed [--repeats N]` (or `python -m benchmarks
--distributed`). For the MLP 784-512-512-512-10 and MLPResNet on MNIST shapes, a global batch of
256, SGD with momentum, it times the jitted step

- in one process with one thread, the plain optimizer (the baseline), and
- on 2 processes (`mpiexec -n 2`, one thread each, 128 examples each), gradients averaged by
  `needlec.distributed.DistributedOptimizer` inside the step,

and, on 2 processes, the same all-reduces alone (the step's buckets, as a jitted function of
their own): the time a step spends communicating. Each figure is the fastest of `--repeats`
blocks of 5 steps (the cores are shared: the minimum is the least disturbed), all ranks started
together by a barrier. BatchNorm's statistics stay per rank
here (as PyTorch's DistributedDataParallel keeps them). Writes `results/distributed.json` and
`results/distributed.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MODELS = {
    "mlp-784-512x3-10": "MLP 784-512-512-512-10",
    "mlpresnet": "MLPResNet 784-100x3-10",
}
GLOBAL_BATCH = 256
BLOCK = 5  # steps per timed block


def _build(name: str):
    from .steps import _mlp_resnet, mlp

    return mlp((784, 512, 512, 512, 10)) if name.startswith("mlp-") else _mlp_resnet()


def _best_block(fn, repeats: int, barrier) -> float:
    """Seconds per call in the fastest of `repeats` blocks of BLOCK calls (a barrier before
    each): the 2 cores are shared, and the minimum is the figure least disturbed by others."""
    for _ in range(3):  # warm up: the first call traces and compiles
        fn()
    times = []
    for _ in range(repeats):
        barrier()
        t0 = time.perf_counter()
        for _ in range(BLOCK):
            fn()
        times.append((time.perf_counter() - t0) / BLOCK)
    return min(times)


def worker(name: str, repeats: int, distributed: bool, batch: int | None = None) -> dict:
    """Time one configuration in this process (one rank of it under mpiexec); `batch`: the
    examples per rank (default: the global batch split over the ranks)."""
    import needlec as nc
    from needlec import distributed as dist

    if distributed:
        dist.init()
    n, rank = dist.world_size(), dist.rank()
    np.random.seed(0)
    model = _build(name)
    opt = nc.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    if distributed:
        dist.broadcast_parameters(model)
        opt = dist.DistributedOptimizer(opt)
    loss_fn = nc.nn.SoftmaxLoss()
    rng = np.random.default_rng(rank)
    batch = GLOBAL_BATCH // n if batch is None else batch
    x = rng.random((batch, 784), dtype="float32")
    y = rng.integers(0, 10, batch).astype("float32")

    @nc.jit
    def step(x, y):
        opt.reset_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss

    step_s = _best_block(lambda: step(x, y).numpy(), repeats, dist.barrier)
    out = {"ranks": n, "batch": batch, "step_ms": 1e3 * step_s, "samples_per_s": n * batch / step_s}
    if distributed:  # the step's all-reduces alone, bucket by bucket
        sizes = [sum(int(np.prod(p.shape)) for p in b) for b in opt.buckets()]
        grads = [nc.Tensor(np.ones(s, dtype="float32")) for s in sizes]
        reduce_all = nc.jit(lambda gs: [dist.all_reduce(g, "sum") for g in gs])
        comm_s = _best_block(lambda: [g.numpy() for g in reduce_all(grads)], repeats, dist.barrier)
        out.update(allreduce_ms=1e3 * comm_s, buckets=len(sizes), floats=sum(sizes))
    return out


def _launch(name: str, n: int, repeats: int, batch: int | None = None) -> dict:
    env = dict(os.environ, NEEDLEC_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    env["PYTHONPATH"] = f"{HERE.parent}{os.pathsep}{env.get('PYTHONPATH', '')}"
    cmd = [sys.executable, "-m", "benchmarks.bench_distributed", "--worker", name]
    cmd += ["--repeats", str(repeats)] + (["--batch", str(batch)] if batch else [])
    if n > 1:
        mpiexec = Path(sys.executable).parent / "mpiexec"
        cmd = [str(mpiexec if mpiexec.exists() else "mpiexec"), "-n", str(n), *cmd, "--mpi"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown(rows: list[dict]) -> str:
    lines = [
        f"Global batch {GLOBAL_BATCH}, SGD with momentum, one thread per process; the fastest "
        f"of the blocks of {BLOCK} steps. Ideal speedup: one process's step on the "
        f"global batch over its step on half of it (what 2 processes would reach with free "
        "communication and a core each).",
        "",
        "| model | 1 process: samples/s | 2 processes: samples/s | speedup | ideal speedup "
        "| all-reduce ms/step | step ms (2 processes) | all-reduce share |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        one, two = r["1"], r["2"]
        lines.append(
            f"| {MODELS[r['model']]} | {one['samples_per_s']:.0f} | {two['samples_per_s']:.0f} "
            f"| {two['samples_per_s'] / one['samples_per_s']:.2f}x "
            f"| {one['step_ms'] / r['half']['step_ms']:.2f}x | {two['allreduce_ms']:.2f} "
            f"({two['buckets']} buckets, {two['floats'] / 1e6:.2f}M floats) | {two['step_ms']:.1f} "
            f"| {100 * two['allreduce_ms'] / two['step_ms']:.0f}% |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_distributed")
    ap.add_argument("--repeats", type=int, default=30, help="timed blocks per figure")
    ap.add_argument("--only", choices=list(MODELS), action="append", help="one model")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--worker", choices=list(MODELS), help=argparse.SUPPRESS)
    ap.add_argument("--mpi", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        out = worker(args.worker, args.repeats, args.mpi, args.batch)
        from needlec import distributed as dist

        if dist.rank() == 0:
            print(json.dumps(out))
        return 0
    rows = []
    for name in args.only or list(MODELS):
        row = {"model": name, **{str(n): _launch(name, n, args.repeats) for n in (1, 2)}}
        row["half"] = _launch(name, 1, args.repeats, GLOBAL_BATCH // 2)  # one rank's share
        rows.append(row)
        print(f"{name}: {json.dumps(rows[-1])}", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "distributed.json").write_text(json.dumps(rows, indent=1) + "\n")
    md = markdown(rows)
    (args.out / "distributed.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
