"""Eager vs jit vs hand-written numpy: one MLP training step's forward and backward.

Run: `python benchmarks/bench_eager_vs_jit.py [--repeats N]`. Prints the median time of each
variant over N runs, taken in one process, and the ratios; RESULTS.md keeps the latest table.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import needlec as nc


def loss_fn(w1, b1, w2, x, y1h):
    h = nc.ops.relu(x @ w1 + b1)
    logits = h @ w2
    return (nc.ops.logsumexp(logits, axes=(1,)) - (logits * y1h).sum(axes=(1,))).sum() / x.shape[0]


def numpy_step(w1, b1, w2, x, y1h):
    h_pre = x @ w1 + b1
    h = np.maximum(h_pre, 0)
    logits = h @ w2
    m = logits.max(axis=1, keepdims=True)
    e = np.exp(logits - m)
    s = e.sum(axis=1, keepdims=True)
    loss = (np.log(s) + m).sum() / len(x) - (logits * y1h).sum() / len(x)
    dlogits = (e / s - y1h) / len(x)
    dw2 = h.T @ dlogits
    dh = dlogits @ w2.T * (h_pre > 0)
    return loss, (x.T @ dh, dh.sum(axis=0, keepdims=True), dw2)


def median_time(fn, repeats: int) -> float:
    fn()  # warm up (and trace, for jit)
    time.sleep(0.5)  # the last column's BLAS threads spin for a while: let them go to sleep
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--batch", type=int, default=128)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    f32 = lambda *s: (rng.normal(size=s) * 0.05).astype("float32")
    w1, b1, w2 = f32(784, 256), f32(1, 256), f32(256, 10)
    x = f32(args.batch, 784)
    y1h = np.eye(10, dtype="float32")[rng.integers(0, 10, args.batch)]

    def eager():
        ts = [nc.Tensor(a) for a in (w1, b1, w2)]
        loss = loss_fn(*ts, nc.Tensor(x, requires_grad=False), nc.Tensor(y1h, requires_grad=False))
        loss.backward()
        return [t.grad.numpy() for t in ts]

    step = nc.jit(nc.value_and_grad(loss_fn, argnums=(0, 1, 2)))

    def jitted():
        _, grads = step(w1, b1, w2, x, y1h)
        return [g.numpy() for g in grads]

    ref = numpy_step(w1, b1, w2, x, y1h)[1]
    for name, fn in (("eager", eager), ("jit", jitted)):
        for g, r in zip(fn(), ref, strict=True):
            np.testing.assert_allclose(g, r, rtol=1e-3, atol=1e-5, err_msg=name)

    t = {
        "numpy (hand-written)": median_time(lambda: numpy_step(w1, b1, w2, x, y1h), args.repeats),
        "needlec eager": median_time(eager, args.repeats),
        "needlec jit": median_time(jitted, args.repeats),
    }
    print(f"MLP 784-256-10, batch {args.batch}, forward+backward, median of {args.repeats}")
    print("| variant | ms | vs numpy | vs eager |")
    print("| --- | --- | --- | --- |")
    for name, sec in t.items():
        print(
            f"| {name} | {sec * 1e3:.3f} | {sec / t['numpy (hand-written)']:.2f}x | "
            f"{sec / t['needlec eager']:.2f}x |"
        )


if __name__ == "__main__":
    main()
