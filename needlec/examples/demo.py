"""A first look at needlec: eager needle code, the same code under `jit`, and `grad`.

Run with `python -m needlec.examples.demo`. It fits a small two-layer tanh network to a toy
regression problem three ways (eager `backward()`, `grad`, and `jit(value_and_grad)`), checks
that they agree, and prints the traced graph of the gradient and the code it runs.
"""

from __future__ import annotations

import time

import numpy as np

import needlec as nc


def loss_fn(w1, w2, x, y):
    """Mean squared error of a 2-layer tanh network."""
    pred = nc.ops.tanh(x @ w1) @ w2
    diff = pred - y
    return (diff * diff).sum() / y.shape[0]


def main(steps: int = 200, lr: float = 0.1) -> None:
    """Fit a small network eagerly, with `grad` and under `jit`; check they agree; print the
    traced graph, the fused kernels and the code the reference backend runs."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    y = np.sin(x.sum(axis=1, keepdims=True)).astype("float32")
    w1_0 = (rng.normal(size=(8, 32)) / np.sqrt(8)).astype("float32")
    w2_0 = (rng.normal(size=(32, 1)) / np.sqrt(32)).astype("float32")

    # 1. eager needle code: backward() fills .grad
    w1, w2 = nc.Tensor(w1_0), nc.Tensor(w2_0)
    xt, yt = nc.Tensor(x, requires_grad=False), nc.Tensor(y, requires_grad=False)
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = loss_fn(w1, w2, xt, yt)
        loss.backward()
        w1 = nc.Tensor(w1.numpy() - lr * w1.grad.numpy())
        w2 = nc.Tensor(w2.numpy() - lr * w2.grad.numpy())
    eager_time = time.perf_counter() - t0
    eager_loss = float(loss_fn(w1, w2, xt, yt))

    # 2. the same step as a transform, traced once and run as a graph
    step = nc.jit(nc.value_and_grad(loss_fn, argnums=(0, 1)))
    v1, v2 = w1_0, w2_0
    t0 = time.perf_counter()
    for _ in range(steps):
        loss, (g1, g2) = step(v1, v2, x, y)
        v1, v2 = v1 - lr * g1.numpy(), v2 - lr * g2.numpy()
    jit_time = time.perf_counter() - t0
    jit_loss = float(step(v1, v2, x, y)[0])

    print(f"loss after {steps} steps: eager {eager_loss:.6f}, jit {jit_loss:.6f}")
    print(f"max |w1 eager - w1 jit| = {np.abs(w1.numpy() - v1).max():.2e}")
    print(
        f"time per step: eager {1e3 * eager_time / steps:.2f} ms, "
        f"jit {1e3 * jit_time / steps:.2f} ms (traced {step.trace_count} time)"
    )

    lowered = step.lower(v1, v2, x, y)
    print("\nThe optimized graph of value_and_grad(loss_fn):")
    print(lowered.as_text())
    print("\nThe code it runs (reference backend):")
    print(lowered.source("python"))
    print("\nThe loop-nest kernels it fuses into, and what they cost:")
    print(lowered.kernels.as_text())
    print(lowered.cost_analysis().as_text())


if __name__ == "__main__":
    main()
