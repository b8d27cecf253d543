"""Whole training steps, eager vs jit: reset_grad, forward, loss, backward and optimizer step.

Run: `python benchmarks/bench_train_step.py [--repeats N]`. For each model the same needle step
runs eagerly and under `needlec.jit` on the same batch; it prints the median time per step over N
runs taken in one process, the ratio, and the time of the first jitted call (tracing included).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

import needlec as nc
from needlec import nn, optim
from needlec.apps.mlp_resnet import MLPResNet
from needlec.apps.models import LanguageModel, ResNet9


def make_step(model, opt, loss_fn: Callable) -> Callable:
    def step(x, y):
        opt.reset_grad()
        out = model(x)
        loss = loss_fn(out[0] if isinstance(out, tuple) else out, y)
        loss.backward()
        opt.step()
        return loss

    return step


def median_ms(fn: Callable, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def case(name: str, build: Callable, x: np.ndarray, y: np.ndarray, repeats: int) -> list[str]:
    np.random.seed(0)
    model = build()
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    step = make_step(model, opt, nn.SoftmaxLoss())
    xt, yt = nc.Tensor(x, requires_grad=False), nc.Tensor(y, requires_grad=False)
    step(xt, yt)  # warm up
    eager = median_ms(lambda: step(xt, yt), repeats)
    jitted = nc.jit(step)
    t0 = time.perf_counter()
    jitted(x, y)
    first = 1e3 * (time.perf_counter() - t0)
    jit = median_ms(lambda: jitted(x, y), repeats)
    return [
        name,
        f"{eager:.2f}",
        f"{jit:.2f}",
        f"{jit / eager:.2f}x",
        f"{eager / jit:.1f}x",
        f"{first:.0f}",
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    labels = lambda n, k: rng.integers(0, k, n).astype("float32")
    rows = [
        case(
            "MLPResNet 64-100x3-10, batch 64 (digits)",
            lambda: MLPResNet(64, hidden_dim=100, num_blocks=3, drop_prob=0.0),
            rng.random((64, 64), dtype="float32"),
            labels(64, 10),
            args.repeats,
        ),
        case(
            "MLPResNet 784-100x3-10, batch 128 (MNIST)",
            lambda: MLPResNet(784, hidden_dim=100, num_blocks=3, drop_prob=0.0),
            rng.random((128, 784), dtype="float32"),
            labels(128, 10),
            args.repeats,
        ),
        case(
            "LSTM LM 2x64, seq 20, batch 16, vocab 200",
            lambda: LanguageModel(32, 200, hidden_size=64, num_layers=2, seq_model="lstm"),
            rng.integers(0, 200, (20, 16)).astype("float32"),
            labels(20 * 16, 200),
            max(3, args.repeats // 4),
        ),
        case(
            "ResNet9, batch 8, 32x32 (CIFAR-10)",
            ResNet9,
            rng.random((8, 3, 32, 32), dtype="float32"),
            labels(8, 10),
            max(3, args.repeats // 4),
        ),
    ]
    head = ["step", "eager ms", "jit ms", "jit/eager", "speedup", "first jit call ms"]
    print("| " + " | ".join(head) + " |")
    print("|" + " --- |" * len(head))
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
