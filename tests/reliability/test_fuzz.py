"""Random small programs, eager and under jit with each executor, on special values.

A program is a chain of ops (elementwise, reductions, broadcasting, stack, reshape, transpose,
flip) on float32 or float64 inputs drawn from NaN, +-inf, +-0, denormals and ordinary numbers,
with some dims of size 0. Every op of the chain but the last is exact (`TOLERANCE` says the same
bits), so each executor must match eager bit for bit up to the last op (any NaN matches any NaN;
-0.0 is not 0.0); the last op may be inexact and is held to its own budget from `TOLERANCE`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest

import needlec as nc
from needlec import ops
from needlec.ir import Op
from needlec.ir.ops import TOLERANCE

EXECUTORS = ["reference", "kernels", "compiled"]
SEEDS = range(200)


def pool(dtype: str) -> np.ndarray:
    tiny = np.finfo(dtype).smallest_subnormal
    return np.array(
        [np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 0.5, -2.5, 3.0, 7.25, -0.125, 100.0]
        + [tiny, -tiny, 3 * tiny, np.finfo(dtype).tiny / 4],
        dtype=dtype,
    )


@dataclass
class Program:
    """Steps applied to a value, starting from input 0; some steps read inputs of their own."""

    dtype: str
    shapes: list[tuple[int, ...]]
    steps: list[tuple[str, Callable, Op, tuple | None]] = field(default_factory=list)

    def __call__(self, *xs):
        v = xs[0]
        for _, step, _, _ in self.steps:
            v = step(v, xs)
        return v

    def prefix(self, *xs):
        """The value fed to the last step."""
        v = xs[0]
        for _, step, _, _ in self.steps[:-1]:
            v = step(v, xs)
        return v

    def describe(self) -> str:
        return f"{self.dtype} {self.shapes}: " + " -> ".join(step[0] for step in self.steps)


def other_shape(rng, shape: tuple[int, ...]) -> tuple[int, ...]:
    """A shape that broadcasts to `shape` (some dims 1, some leading dims dropped)."""
    out = tuple(1 if rng.random() < 0.3 else d for d in shape)
    return out[rng.integers(0, len(out) + 1) :] if out and rng.random() < 0.3 else out


def generate(seed: int) -> Program:
    rng = np.random.default_rng(seed)
    dtype = ["float32", "float64"][seed % 2]
    shape = tuple(
        int(d) for d in rng.choice([0, 1, 2, 3], size=rng.integers(1, 4), p=[0.1, 0.2, 0.35, 0.35])
    )
    prog = Program(dtype, [shape])

    def add(name, fn, op, axes=None):
        prog.steps.append((name, fn, op, axes))

    for _ in range(rng.integers(1, 5)):  # exact steps
        kind = rng.choice(["unary", "scalar", "binary", "where", "move", "stack", "max"])
        nd = len(shape)
        if kind == "unary":
            name = str(rng.choice(["neg", "relu", "sqrt"]))
            fn = {
                "neg": lambda v, xs: -v,
                "relu": lambda v, xs: ops.relu(v),
                "sqrt": lambda v, xs: ops.sqrt(v),
            }
            add(name, fn[name], {"neg": Op.NEG, "relu": Op.RELU, "sqrt": Op.SQRT}[name])
        elif kind == "scalar":
            c = float(rng.choice([0.0, -0.0, 1.5, -2.0, 3.0, np.inf, -np.inf, np.nan]))
            name = str(rng.choice(["add", "mul", "div"]))
            fn = {
                "add": lambda v, xs, c=c: v + c,
                "mul": lambda v, xs, c=c: v * c,
                "div": lambda v, xs, c=c: v / c,
            }[name]
            add(
                f"{name}_scalar({c})",
                fn,
                {"add": Op.ADD_SCALAR, "mul": Op.MUL_SCALAR, "div": Op.DIV_SCALAR}[name],
            )
        elif kind in ("binary", "where"):
            k = len(prog.shapes)
            prog.shapes.append(other_shape(rng, shape))
            if kind == "where":  # compare and select: exact
                add(
                    f"where(x<in{k})",
                    lambda v, xs, k=k: (v < xs[k]).where(v, xs[k] + 0 * v),
                    Op.WHERE,
                )
                continue
            name = str(rng.choice(["add", "mul", "div", "maximum"]))
            fn = {
                "add": lambda v, xs, k=k: v + xs[k],
                "mul": lambda v, xs, k=k: xs[k] * v,
                "div": lambda v, xs, k=k: v / xs[k],
                "maximum": lambda v, xs, k=k: v.maximum(xs[k]),
            }[name]
            add(
                f"{name}(in{k})",
                fn,
                {"add": Op.ADD, "mul": Op.MUL, "div": Op.DIV, "maximum": Op.MAXIMUM}[name],
            )
        elif kind == "move":
            move = str(rng.choice(["reshape", "transpose", "flip", "broadcast"]))
            if move == "reshape":
                new = (-1,) if rng.random() < 0.5 else tuple(reversed(shape))
                add(f"reshape{new}", lambda v, xs, new=new: v.reshape(new), Op.RESHAPE)
                shape = (math.prod(shape),) if new == (-1,) else new
            elif move == "transpose" and nd >= 2:
                add("transpose", lambda v, xs: ops.transpose(v), Op.PERMUTE)
                shape = shape[:-2] + (shape[-1], shape[-2])
            elif move == "flip" and nd >= 1:
                axes = (int(rng.integers(0, nd)),)
                add(f"flip{axes}", lambda v, xs, axes=axes: ops.flip(v, axes), Op.FLIP)
            else:
                new = (2, *shape)
                add(
                    f"broadcast_to{new}",
                    lambda v, xs, new=new: ops.broadcast_to(v, new),
                    Op.BROADCAST,
                )
                shape = new
        elif kind == "stack":
            k = len(prog.shapes)
            prog.shapes.append(shape)
            axis = int(rng.integers(0, nd + 1))
            add(
                f"stack(in{k}, axis={axis})",
                lambda v, xs, k=k, a=axis: ops.stack([v, -xs[k]], a),
                Op.STACK,
            )
            shape = shape[:axis] + (2,) + shape[axis:]
        else:  # max over a non-empty axis
            axes = [a for a in range(nd) if shape[a] > 0]
            if not axes:
                continue
            a = int(rng.choice(axes))
            add(f"max({a})", lambda v, xs, a=a: v.max((a,)), Op.MAX)
            shape = shape[:a] + shape[a + 1 :]
    if rng.random() < 0.8:  # one inexact step last
        name = str(rng.choice(["exp", "log", "tanh", "pow", "sum", "logsumexp"]))
        if name in ("sum", "logsumexp"):
            axes = tuple(int(a) for a in range(len(shape)) if rng.random() < 0.5) or None
            fn = (
                (lambda v, xs, a=axes: v.sum(a))
                if name == "sum"
                else (lambda v, xs, a=axes: v.logsumexp(a))
            )
            add(f"{name}({axes})", fn, Op.SUM if name == "sum" else Op.LOGSUMEXP, axes)
        elif name == "pow":
            c = float(rng.choice([2.0, 3.0, 0.5, -1.0, -0.5, 1.5]))
            add(f"pow_scalar({c})", lambda v, xs, c=c: v**c, Op.POW_SCALAR)
        else:
            fn = {"exp": ops.exp, "log": ops.log, "tanh": ops.tanh}[name]
            add(
                name,
                lambda v, xs, fn=fn: fn(v),
                {"exp": Op.EXP, "log": Op.LOG, "tanh": Op.TANH}[name],
            )
    if not prog.steps:
        add("neg", lambda v, xs: -v, Op.NEG)
    return prog


def inputs(prog: Program, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(1000 + seed)
    values = pool(prog.dtype)
    return [rng.choice(values, size=s).astype(prog.dtype) for s in prog.shapes]


def assert_within(got, want, op: Op, before, axes, where: str) -> None:
    """got matches want within op's TOLERANCE budget (the same bits for "exact"); `before` is
    the op's input and `axes` its reduced axes (for the "order" budget of sums)."""
    assert got.shape == want.shape and got.dtype == want.dtype, where
    kind, c = TOLERANCE[op]
    nan = np.isnan(want)
    assert (np.isnan(got) == nan).all(), f"{where}: NaN at different places\n{got}\n{want}"
    inf = np.isinf(want)
    assert (got[inf] == want[inf]).all(), f"{where}: infinities differ\n{got}\n{want}"
    finite = np.isfinite(want)
    assert np.isfinite(got[finite]).all(), f"{where}: non-finite where eager is finite"
    g, w = got[finite].astype("float64"), want[finite].astype("float64")
    if kind == "exact":
        same = (g == w) & (np.signbit(got[finite]) == np.signbit(want[finite]))
        assert same.all(), f"{where}: not the same bits\n{got}\n{want}"
        return
    if kind == "ulp":
        budget = c * np.spacing(np.abs(want[finite])).astype("float64")
    else:  # "order": a sum of n terms in any order
        n = max(1, before.size // max(1, want.size))
        eps = float(np.finfo(want.dtype).eps)
        if op is Op.SUM:
            terms = np.abs(before.astype("float64"))
            scale = np.sum(np.where(np.isfinite(terms), terms, 0), axis=axes)[finite]
        else:
            scale = 1 + np.abs(w)
        budget = c * eps * math.sqrt(n) * scale
    assert (np.abs(g - w) <= budget).all(), (
        f"{where}: |diff| {np.abs(g - w).max()} over the budget\n{got}\n{want}"
    )


# compiled-executor disagreements found by this test: seed -> reason (see the module docstring)
COMPILED_XFAIL: dict[int, str] = {}


def _cases():
    for seed in SEEDS:
        for ex in EXECUTORS:
            marks = []
            if ex == "compiled" and seed in COMPILED_XFAIL:
                marks = [pytest.mark.xfail(strict=True, reason=COMPILED_XFAIL[seed])]
            yield pytest.param(seed, ex, id=f"{seed}-{ex}", marks=marks)


@pytest.mark.parametrize("seed,executor", list(_cases()))
def test_random_program_agrees_with_eager(seed, executor, monkeypatch):
    prog = generate(seed)
    xs = inputs(prog, seed)
    where = f"seed {seed}, {executor}: {prog.describe()}"
    tensors = [nc.Tensor(x, requires_grad=False) for x in xs]
    want = prog(*tensors).numpy()
    before = prog.prefix(*tensors).numpy()
    monkeypatch.setenv("NEEDLEC_EXECUTE", executor)
    got = nc.jit(prog)(*xs).numpy()
    _, _, op, axes = prog.steps[-1]
    assert_within(got, want, op, before, axes, where)
    exact_prefix = nc.jit(prog.prefix)(*xs).numpy()  # every op before the last: the same bits
    assert_within(exact_prefix, before, Op.NEG, before, None, where + " (before the last op)")
