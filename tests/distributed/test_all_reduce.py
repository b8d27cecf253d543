"""all_reduce over mpiexec: sum, mean and max for every dtype, 0-d to large, eager and jitted,
and its gradient; checked on every rank against numpy over all ranks' data."""

import pytest

from .mpirun import run

SCRIPT = """
import numpy as np
import needlec as nc
from needlec import distributed as dist

dist.init()
r, n = dist.rank(), dist.world_size()
assert n == {n}, n


def data(rank, dtype, shape):
    rng = np.random.default_rng(100 + rank)
    if dtype == "bool":
        return rng.random(shape) < 0.3
    if dtype.startswith("int"):
        return rng.integers(-1000, 1000, shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def step(x):
    return (
        dist.all_reduce(x, "sum"),
        dist.all_reduce(x, "max"),
        dist.all_reduce(x.cast("int64") if x.dtype == "bool" else x, "mean"),
    )


jitted = nc.jit(step)
for dtype in ("float32", "float64", "int32", "int64", "bool"):
    for shape in ((), (7,), (3, 5), (300_000,)):
        xs = [data(k, dtype, shape) for k in range(n)]
        if dtype == "bool":
            want_sum = np.logical_or.reduce(xs)
            mean = np.mean([x.astype("int64") for x in xs], axis=0)
        else:
            want_sum = np.sum(xs, axis=0, dtype=dtype)
            mean = np.sum(xs, axis=0) / n
        want = (want_sum, np.max(xs, axis=0), mean)
        for how, f in (("eager", step), ("jit", jitted)):
            got = f(nc.Tensor(xs[r], dtype=dtype))
            for name, g, w in zip(("sum", "max", "mean"), got, want):
                g = g.numpy()
                assert g.shape == tuple(shape), (how, dtype, name, g.shape)
                if dtype in ("float32", "float64") and name != "max" or name == "mean":
                    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5, err_msg=f"{{how}} {{dtype}} {{name}}")
                else:
                    assert str(g.dtype) == dtype, (how, dtype, name, g.dtype)
                    np.testing.assert_array_equal(g, w, err_msg=f"{{how}} {{dtype}} {{name}}")

# the gradient of a sum over ranks is the sum of every rank's cotangent
w = nc.Tensor(data(r, "float64", (4,)), dtype="float64")
scale = float(r + 1)
f = lambda w: (dist.all_reduce(w * w, "sum") * scale).sum()
for g in (nc.grad(f)(w), nc.jit(nc.grad(f))(w)):
    total = sum(k + 1.0 for k in range(n))
    np.testing.assert_allclose(g.numpy(), 2 * w.numpy() * total, rtol=1e-12)
# several tensors in one call (a bucket): each comes back reduced, in its own shape
def together(a, b):
    return dist.reduce_together([a, b], "sum") + dist.reduce_together([a, b], "max")


a_all = [data(k, "float32", (2, 3)) for k in range(n)]
b_all = [data(k, "float32", (5,)) for k in range(n)]
want = (np.sum(a_all, 0), np.sum(b_all, 0), np.max(a_all, 0), np.max(b_all, 0))
for f in (together, nc.jit(together)):
    got = f(nc.Tensor(a_all[r]), nc.Tensor(b_all[r]))
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g.numpy(), w, rtol=1e-6)
# and their gradients: each rank's own stretch of the all-reduced cotangent
a, b = nc.Tensor(a_all[r], dtype="float64"), nc.Tensor(b_all[r], dtype="float64")
h = lambda a, b: sum(((t * c).sum() for t, c in zip(dist.reduce_together([a, b]), (scale, 2 * scale))), nc.Tensor(0.0, dtype="float64"))
for ga, gb in (nc.grad(h, argnums=(0, 1))(a, b), nc.jit(nc.grad(h, argnums=(0, 1)))(a, b)):
    total = sum(k + 1.0 for k in range(n))
    np.testing.assert_allclose(ga.numpy(), np.full((2, 3), total), rtol=1e-12)
    np.testing.assert_allclose(gb.numpy(), np.full(5, 2 * total), rtol=1e-12)
graph = nc.jit(step).lower(nc.Tensor(data(r, "float32", (3,)))).as_text()
assert "allreduce" in graph, graph
open(f"ok.{{r}}", "w").close()  # this rank checked everything
"""


@pytest.mark.parametrize("n", [2, 3])
def test_all_reduce_matches_numpy_on_every_rank(n, tmp_path):
    run(n, SCRIPT.format(n=n), tmp_path)
    assert all((tmp_path / f"ok.{k}").exists() for k in range(n))
