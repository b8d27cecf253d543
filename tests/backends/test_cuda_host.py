"""The generated CUDA C, run on the host (`cuda_emulation`), against the reference interpreter.

Without a GPU this is the numeric check of the CUDA renderer: the op table's cases (the LLVM
backend's inputs, special values included) under each op's tolerance; reductions over every axis
subset (one block per row, two-stage whole-tensor reductions); tiled matmuls and direct
convolutions; random draws bit for bit. The math functions are the host's libm here, so the
device's own exp/log/tanh/pow accuracy is checked only on a GPU.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest

from needlec.codegen.reference import run_graph
from needlec.ir import Graph, Node, Op
from needlec.ir.ops import FLOATS
from needlec.ir.semantics import EVAL

from . import cuda_emulation as emu
from . import test_llvm_ops as T

pytestmark = pytest.mark.skipif(emu.CXX is None, reason="no C++ compiler to run CUDA C on the host")


def _elementwise():
    for p in T._cases():
        op, dtype, scalar = p.values
        rng = np.random.default_rng(T.RNG_SEED)
        lo, hi = T._domain(op, dtype)
        if op is Op.POW:
            ylo, yhi = T._domain(op, dtype, T.POW_Y)
            sy = [0, 1, 2, 3, 7] if dtype in T.INTS else None
            x, y = T.pair(dtype, T.N, rng, lo, hi, ylo, yhi, special_y=sy)
        else:
            x, y = T.pair(dtype, T.N, rng, lo, hi)
        if op in T.ZERO_TIES and dtype in FLOATS:
            x, y = x + 0, y + 0
        cond = rng.random(T.N) < 0.5
        xs, ys, cs = T.arg(dtype, (T.N,), 0), T.arg(dtype, (T.N,), 1), T.arg("bool", (T.N,), 2)
        outs = T._build(op, xs, ys, cs, scalar)
        yield p.id, Graph([xs, ys, cs], outs), [x, y, cond], None


def _reductions():
    for p in T.RED_CASES:
        op, dtype, shape = p.values
        rng = np.random.default_rng(T.RNG_SEED)
        x = T.random_values(dtype, math.prod(shape), rng, -20, 20).reshape(shape)
        xs = T.arg(dtype, shape, 0)
        subsets = T._subsets(len(shape))
        if op is Op.MAX:
            subsets = [a for a in subsets if all(shape[i] for i in a)]
        outs = [Node.make(op, xs, arg=a) for a in subsets]
        budgets = []
        for axes in subsets:
            n = math.prod(shape[i] for i in axes)
            scale = np.sum(np.abs(x.astype(np.float64)), axis=axes) if op is Op.SUM else None
            budgets.append((n, scale))
        yield p.id, Graph([xs], outs), [x], budgets


def _matmuls():
    for name, (a_shape, b_shape, pa, pb) in T.MATMULS.items():
        rng = np.random.default_rng(T.RNG_SEED)
        x = rng.standard_normal(a_shape).astype("float32")
        y = rng.standard_normal(b_shape).astype("float32")
        a, b, av, bv = T._matmul_graph(a_shape, b_shape, pa, pb, "float32")
        n, scale = T._matmul_budget(*run_graph(Graph([a, b], [av, bv]), [x, y]))
        out = av @ bv
        yield (
            f"matmul-{name}",
            Graph([a, b], [out, out.relu() * 2.0]),
            [x, y],
            [(n, scale), (n, 2 * scale, Op.MATMUL)],
        )
    for name, (a_shape, b_shape, pa, pb) in list(T.INT_MATMULS.items())[:8]:
        rng = np.random.default_rng(T.RNG_SEED)
        x, y = T.int_values("int32", a_shape, rng, True), T.int_values("int32", b_shape, rng, True)
        a, b, av, bv = T._matmul_graph(a_shape, b_shape, pa, pb, "int32")
        yield f"int-matmul-{name}", Graph([a, b], [av @ bv]), [x, y], None


def _convs():
    for name, (xs_shape, w_shape, stride, pad) in T.CONVS.items():
        rng = np.random.default_rng(T.RNG_SEED)
        x = rng.standard_normal(xs_shape).astype("float32")
        w = rng.standard_normal(w_shape).astype("float32")
        y_shape = EVAL[Op.CONV](x, w, (stride, pad)).shape
        g = rng.standard_normal(y_shape).astype("float32")
        xs, ws, gs = (
            T.arg("float32", xs_shape, 0),
            T.arg("float32", w_shape, 1),
            T.arg("float32", y_shape, 2),
        )
        outs = [
            xs.conv(ws, stride, pad),
            gs.conv_input_grad(ws, stride, pad, xs_shape[1:3]),
            xs.conv_weight_grad(gs, stride, pad, w_shape[:2]),
        ]
        ax, aw, ag = (np.abs(v).astype("f8") for v in (x, w, g))
        budgets = [
            (max(math.prod(w_shape[:3]), 1), EVAL[Op.CONV](ax, aw, (stride, pad))),
            (
                max(w_shape[0] * w_shape[1] * w_shape[3], 1),
                EVAL[Op.CONV_INPUT_GRAD](ag, aw, (stride, pad, *xs_shape[1:3])),
            ),
            (
                max(math.prod(y_shape[:3]), 1),
                EVAL[Op.CONV_WEIGHT_GRAD](ax, ag, (stride, pad, *w_shape[:2])),
            ),
        ]
        yield f"conv-{name}", Graph([xs, ws, gs], outs), [x, w, g], budgets


def _random():
    seed = T.arg("int64", (), 0)
    outs = [
        Node.leaf(Op.RAND, dtype, (7, 300), (dist, 5), src=(seed,))
        for dtype in FLOATS
        for dist in ("uniform", "normal")
    ]
    yield "random", Graph([seed], outs), [np.asarray(12345678901, "int64")], "exact"


def _softmax():
    x = T.arg("float32", (33, 700), 0)
    rng = np.random.default_rng(T.RNG_SEED)
    xv = rng.standard_normal((33, 700)).astype("float32")
    yield "logsoftmax-and-column-sum", Graph([x], [x.logsoftmax(), x.sum((0,))]), [xv], "close"


GROUPS = {
    "elementwise": _elementwise,
    "reductions": _reductions,
    "matmuls": _matmuls,
    "convs": _convs,
    "random": lambda: [*_random(), *_softmax()],
}


@functools.cache
def group_results(group: str) -> dict:
    """Case id -> (graph, inputs, budgets, outputs of the CUDA kernels run on the host)."""
    found = list(GROUPS[group]())
    cases = [emu.prepare(g, f"c{j}_") for j, (_, g, _, _) in enumerate(found)]
    outs = emu.run_cases(cases, [arrays for _, _, arrays, _ in found])
    return {
        name: (g, arrays, b, got) for (name, g, arrays, b), got in zip(found, outs, strict=True)
    }


def _ids(group: str) -> list[str]:
    return [name for name, *_ in GROUPS[group]()]


def _check(group: str, name: str) -> None:
    graph, arrays, budgets, got = group_results(group)[name]
    compare(name, graph, arrays, budgets, got)


def compare(name: str, graph: Graph, arrays: list, budgets, got: list) -> None:
    """`got` (a backend's outputs of `graph` on `arrays`) against the reference, under the
    case's budgets: None (each op's tolerance), "exact", "close", or (n, scale[, op]) per output."""
    want = run_graph(graph, arrays)
    for j, (node, g, w) in enumerate(zip(graph.outputs, got, want, strict=True)):
        g = np.asarray(g).astype(w.dtype) if g.dtype != w.dtype else g
        if budgets == "exact":
            np.testing.assert_array_equal(g, w, err_msg=f"{name} output {j}")
        elif budgets == "close":
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5, err_msg=f"{name} output {j}")
        elif budgets is None:
            T.assert_within(node.op, g, w, what=name, sources=tuple(arrays))
        else:
            n, scale, *op = budgets[j]  # op: the core an epilogue's budget is the core's
            scale = 1 + np.abs(w.astype(np.float64)) if scale is None else scale
            op = op[0] if op else node.op
            T.assert_within(op, g, w, n=n, scale=scale, what=f"{name} output {j}")


@pytest.mark.parametrize("name", _ids("elementwise"))
def test_elementwise_cuda_on_host(name):
    _check("elementwise", name)


@pytest.mark.parametrize("name", _ids("reductions"))
def test_reduction_cuda_on_host(name):
    _check("reductions", name)


@pytest.mark.parametrize("name", _ids("matmuls"))
def test_matmul_cuda_on_host(name):
    _check("matmuls", name)


@pytest.mark.parametrize("name", _ids("convs"))
def test_conv_cuda_on_host(name):
    _check("convs", name)


@pytest.mark.parametrize("name", _ids("random"))
def test_random_and_softmax_cuda_on_host(name):
    _check("random", name)


# ---------------------------------------------------------------- training steps


@pytest.mark.parametrize("name", ["mlp", "mlpresnet", "lstm", "transformer", "resnet9"])
def test_training_step_cuda_on_host_matches_the_kernel_interpreter(name):
    """A whole training step's kernels (forward, backward, SGD update), run as CUDA C on the
    host, against the kernel interpreter on the same inputs (values in [0.1, 1): the labels are
    then no class, which changes no kernel)."""
    from needlec.codegen.kernels import run_kernels

    from .test_cuda_source import lowered_step

    program = lowered_step(name).program
    rng = np.random.default_rng(0)
    arrays = [
        rng.uniform(0.1, 1.0, b.shape).astype(b.dtype)
        if b.dtype in FLOATS
        else rng.integers(0, 2**31, b.shape).astype(b.dtype)
        for b in program.kernels.inputs
    ]
    case = emu.Case(
        None, program, emu.render_program(program.kernels, prefix="s_", with_header=False)
    )
    (got,) = emu.run_cases([case], [arrays])
    want = run_kernels(program.kernels, [a.copy() for a in arrays])
    for j, (g, w) in enumerate(zip(got, want, strict=True)):
        w = np.asarray(w)
        tol = 1e-4 * max(1.0, float(np.max(np.abs(w), initial=0.0))) if w.dtype.kind == "f" else 0
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=tol, err_msg=f"{name} output {j}")
