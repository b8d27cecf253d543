"""Schedules against the kernel interpreter: `run_schedule` walks each kernel's loop nest element
by element (its loops, shared sweeps, register and scratch accumulators, hoisted and kept values)
and must give what `run_kernel` computes from the kernel's description."""

from __future__ import annotations

import numpy as np
import pytest

from needlec import nn
from needlec.codegen.kernels import run_kernel
from needlec.codegen.schedule import Keep, items, run_schedule, schedule_kernel

from .steps import lower_sgd_step


def _check_every_kernel(kg, arrays) -> list:
    """Run each kernel both ways on the same inputs (the interpreter's results feed the next
    kernel); returns the schedules."""
    env = dict(zip(kg.inputs, (np.asarray(a, order="C") for a in arrays), strict=True))
    env.update(kg.constants)
    schedules = []
    for k in kg.kernels:
        s = schedule_kernel(k)
        schedules.append(s)
        mine = {b: env[b] for b in k.inputs}
        run_schedule(s, mine)
        run_kernel(k, env)
        for b in k.outputs:
            want, got = env[b], mine[b]
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=k.as_text())
    return schedules


MODELS = {
    "mlp": lambda: nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)),
    "batchnorm1d": lambda: nn.Sequential(
        nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)
    ),
    "layernorm": lambda: nn.Sequential(nn.Linear(6, 8), nn.LayerNorm1d(8), nn.Linear(8, 3)),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_training_step_schedules_match_the_kernel_interpreter(name):
    np.random.seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 6)).astype("float32")
    y = rng.integers(0, 3, 5).astype("float32")
    lowered, arrays = lower_sgd_step(MODELS[name](), x, y)
    _check_every_kernel(lowered.kernels, arrays)


def test_batchnorm_keeps_its_per_channel_values():
    """BatchNorm's reciprocal standard deviation varies over the channels only: its kernels
    compute it once per channel into scratch (`keep`) instead of at every element."""
    np.random.seed(0)
    rng = np.random.default_rng(0)
    model = nn.Sequential(nn.Linear(6, 40), nn.BatchNorm1d(40), nn.ReLU(), nn.Linear(40, 3))
    x = rng.standard_normal((64, 6)).astype("float32")
    lowered, arrays = lower_sgd_step(model, x, rng.integers(0, 3, 64).astype("float32"))
    schedules = _check_every_kernel(lowered.kernels, arrays)
    kept = [it for s in schedules for it in items(s.body) if isinstance(it, Keep)]
    assert kept, "\n".join(s.as_text() for s in schedules)
    assert all(it.expr in s.kept for s in schedules for it in items(s.body) if isinstance(it, Keep))
    assert any("keep" in s.as_text() for s in schedules)


def test_a_stored_exp_is_read_back_not_computed_again():
    """Softmax stores exp(x - max) (for its gradient), then sums it and divides by the sum in
    loops of their own: those read the stored values back (`reload`) instead of three exps."""
    import needlec as nc
    from needlec.codegen.schedule import Reload

    def softmax(a):
        m = a.max(axes=(1,)).reshape((6, 1)).broadcast_to(a.shape)
        e = (a - m).exp()
        return e / e.sum(axes=(1,)).reshape((6, 1)).broadcast_to(a.shape), e

    x = np.random.default_rng(0).standard_normal((6, 9)).astype("float32")
    low = nc.jit(softmax).lower(x)
    schedules = _check_every_kernel(low.kernels, [x])
    reloads = [it for s in schedules for it in items(s.body) if isinstance(it, Reload)]
    assert len(reloads) == 2, "\n".join(s.as_text() for s in schedules)
    text = "\n".join(s.as_text() for s in schedules)
    assert "reload" in text
    got, e = nc.jit(softmax)(x)
    want = np.exp(x - x.max(1, keepdims=True))
    np.testing.assert_allclose(e.numpy(), want, rtol=1e-6)
    np.testing.assert_allclose(got.numpy(), want / want.sum(1, keepdims=True), rtol=1e-6)


def test_a_column_sum_over_a_gemm_output_runs_row_by_row():
    """A GEMM's output is a row-major buffer: a column sum of an epilogue value over it (a
    bias gradient after a softmax) accumulates into scratch in the loop that stores the rows,
    not column by column over the whole output, computing the epilogue again at a stride."""
    import needlec as nc
    from needlec.codegen.schedule import Accumulate, Loop

    def f(a, w):
        e = (a @ w).exp()
        return e, e.sum(axes=(0,))

    rng = np.random.default_rng(0)
    a = rng.standard_normal((12, 5)).astype("float32")
    w = rng.standard_normal((5, 9)).astype("float32")
    low = nc.jit(f).lower(a, w)
    (k,) = [k for k in low.kernels.kernels if k.core is not None]
    (s,) = [s for s in _check_every_kernel(low.kernels, [a, w]) if s.kernel is k]
    (acc,) = [it for it in items(s.body) if isinstance(it, Accumulate)]
    assert acc.mode == "scratch", s.as_text()
    rows = next(it for it in s.body if isinstance(it, Loop))  # then the sums are written out
    (cols,) = [it for it in rows.body if isinstance(it, Loop)]
    assert (rows.dim, cols.dim) == (0, 1) and acc in cols.body, s.as_text()
    e, col = nc.jit(f)(a, w)
    want = np.exp(a.astype(np.float64) @ w)
    np.testing.assert_allclose(e.numpy(), want, rtol=1e-5)
    np.testing.assert_allclose(col.numpy(), want.sum(0), rtol=1e-5)


def test_a_stored_exp_after_a_gemm_is_read_back_too():
    """The same in the epilogue of a batched GEMM (attention's softmax, whose exp the backward
    keeps): the sum and the division read the stored exp back."""
    import needlec as nc
    from needlec.codegen.schedule import Reload

    def attention(q, k):
        s = q @ k
        m = s.max(axes=(2,)).reshape((3, 4, 1)).broadcast_to(s.shape)
        e = (s - m).exp()
        return e / e.sum(axes=(2,)).reshape((3, 4, 1)).broadcast_to(s.shape), e

    rng = np.random.default_rng(0)
    q = rng.standard_normal((3, 4, 5)).astype("float32")
    k = rng.standard_normal((3, 5, 6)).astype("float32")
    low = nc.jit(attention).lower(q, k)
    schedules = _check_every_kernel(low.kernels, [q, k])
    (s,) = [s for s in schedules if s.kernel.core is not None]
    assert len([it for it in items(s.body) if isinstance(it, Reload)]) == 2, s.as_text()
    got, e = nc.jit(attention)(q, k)
    logits = q.astype(np.float64) @ k
    want = np.exp(logits - logits.max(2, keepdims=True))
    np.testing.assert_allclose(e.numpy(), want, rtol=1e-5)
    np.testing.assert_allclose(got.numpy(), want / want.sum(2, keepdims=True), rtol=1e-5)
