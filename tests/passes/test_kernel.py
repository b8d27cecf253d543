"""The kernel IR: views composed from movement ops vs numpy, the kernel interpreter vs
`reference.run_graph`, and the KernelGraph's printers, schedule and cost analysis."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from needlec.codegen.kernels import read_view, run_kernels, to_kernel_space
from needlec.codegen.reference import run_graph
from needlec.ir import Graph, Node, Op, stack
from needlec.ir.callback import Callback
from needlec.ir.kernel import KOp
from needlec.ir.semantics import EVAL
from needlec.ir.view import View
from needlec.passes.fusion import fuse


def numpy_chain(x: np.ndarray, chain) -> np.ndarray:
    """The movement ops applied by numpy (the reference's rows)."""
    for op, arg in chain:
        x = np.asarray(EVAL[op](x, arg))
    return x


def view_chain(shape, chain) -> View | None:
    v = View.contiguous(shape)
    for op, arg in chain:
        v = v.apply(op, arg)
        if v is None:
            return None
    return v


CHAINS = {
    "permute": ((2, 3, 4), [(Op.PERMUTE, (2, 0, 1))]),
    "broadcast": ((3, 1), [(Op.BROADCAST, (2, 3, 4))]),
    "slice_steps": ((5, 7), [(Op.SLICE, ((1, 5, 2), (0, 7, 3)))]),
    "flip": ((3, 4), [(Op.FLIP, (0, 1))]),
    "pad": ((2, 3), [(Op.PAD, ((1, 2), (0, 1)))]),
    "reshape": ((2, 3, 4), [(Op.RESHAPE, (6, 4)), (Op.RESHAPE, (24,)), (Op.RESHAPE, (4, 3, 2))]),
    "reshape_unit_dims": ((2, 3), [(Op.RESHAPE, (1, 2, 1, 3, 1))]),
    "permute_then_split": ((2, 3, 4), [(Op.PERMUTE, (1, 0, 2)), (Op.RESHAPE, (3, 2, 2, 2))]),
    "transpose_merge_kept": ((4, 2, 3), [(Op.PERMUTE, (0, 1, 2)), (Op.RESHAPE, (8, 3))]),
    "slice_flip_pad": (
        (6, 5),
        [
            (Op.SLICE, ((1, 6, 2), (0, 5, 1))),
            (Op.FLIP, (1,)),
            (Op.PAD, ((2, 0), (1, 1))),
            (Op.PERMUTE, (1, 0)),
        ],
    ),
    "pad_then_slice_into_padding": (
        (4,),
        [(Op.PAD, ((3, 2),)), (Op.SLICE, ((0, 9, 2),)), (Op.FLIP, (0,))],
    ),
    "broadcast_masked": ((1, 3), [(Op.PAD, ((0, 0), (1, 0))), (Op.BROADCAST, (2, 2, 4))]),
    "stepped_slice_reshape": ((4, 6), [(Op.SLICE, ((0, 4, 1), (0, 6, 2))), (Op.RESHAPE, (12,))]),
}


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_view_of_a_movement_chain_reads_what_numpy_computes(name):
    shape, chain = CHAINS[name]
    x = np.arange(math.prod(shape), dtype=np.float64).reshape(shape) + 1
    v = view_chain(shape, chain)
    assert v is not None, f"{name}: the chain should have a view"
    want = numpy_chain(x, chain)
    assert v.shape == want.shape
    np.testing.assert_array_equal(read_view(x, v), want)


@pytest.mark.parametrize(
    "shape,chain",
    [
        ((2, 3), [(Op.PERMUTE, (1, 0)), (Op.RESHAPE, (6,))]),  # a transpose, flattened
        (
            (3,),
            [
                (Op.PAD, ((1, 1),)),
                (Op.RESHAPE, (5, 1)),
                (Op.RESHAPE, (5,)),
                (Op.BROADCAST, (2, 5)),
                (Op.RESHAPE, (10,)),
            ],
        ),
        ((4, 4), [(Op.SLICE, ((0, 4, 1), (0, 4, 2))), (Op.PERMUTE, (1, 0)), (Op.RESHAPE, (8,))]),
        ((2, 2), [(Op.PAD, ((0, 0), (1, 1))), (Op.RESHAPE, (8,))]),  # padding merged into a dim
    ],
)
def test_a_reshape_with_no_view_returns_none(shape, chain):
    assert view_chain(shape, chain) is None


def test_view_text_and_contiguity():
    v = View.contiguous((3, 4))
    assert v.is_contiguous and v.as_text() == "shape=(3,4) strides=(4,1) offset=0"
    t = v.permute((1, 0))
    assert not t.is_contiguous and t.strides == (1, 4)
    p = View.contiguous((3,)).pad(((1, 1),)).flip((0,))
    assert p.as_text() == "shape=(5,) strides=(-1,) offset=3 mask=((1,4),)"


MOVES = st.sampled_from(["permute", "broadcast", "slice", "flip", "pad", "reshape"])


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_random_movement_chains_match_numpy(data):
    shape = tuple(data.draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
    x = np.arange(math.prod(shape), dtype=np.float64).reshape(shape) - 3.5
    v, cur, chain = View.contiguous(shape), shape, []
    for _ in range(data.draw(st.integers(1, 5))):
        move = data.draw(MOVES)
        n = len(cur)
        if move == "permute":
            arg = tuple(data.draw(st.permutations(range(n))))
            op = Op.PERMUTE
        elif move == "broadcast":
            arg = tuple(data.draw(st.sampled_from([2, 3])) if d == 1 else d for d in cur)
            arg = (2,) * data.draw(st.integers(0, 1)) + arg
            op = Op.BROADCAST
        elif move == "slice":
            spec = []
            for d in cur:
                a = data.draw(st.integers(0, d - 1))
                b = data.draw(st.integers(a + 1, d))
                spec.append((a, b, data.draw(st.integers(1, 3))))
            op, arg = Op.SLICE, tuple(spec)
        elif move == "flip":
            op, arg = Op.FLIP, tuple(sorted(data.draw(st.sets(st.integers(0, n - 1), min_size=1))))
        elif move == "pad":
            op, arg = (
                Op.PAD,
                tuple((data.draw(st.integers(0, 2)), data.draw(st.integers(0, 2))) for _ in cur),
            )
        else:
            total, dims = math.prod(cur), []
            while total > 1 and len(dims) < 3:
                d = data.draw(st.sampled_from([k for k in range(2, total + 1) if total % k == 0]))
                dims.append(d)
                total //= d
            op, arg = Op.RESHAPE, tuple(dims) + ((total,) if total > 1 else ()) or (1,)
        if math.prod(arg if op in (Op.BROADCAST, Op.RESHAPE) else cur) > 4096:
            break
        chain.append((op, arg))
        nxt = v.apply(op, arg)
        if nxt is None:  # only a reshape may have no view
            assert op is Op.RESHAPE
            break
        v = nxt
        cur = v.shape
        np.testing.assert_array_equal(read_view(x, v), numpy_chain(x, chain))


def test_embed_lays_a_view_over_kernel_dims():
    x = np.arange(24.0).reshape(2, 3, 4)
    v = View.contiguous((2, 3, 4)).permute((2, 0, 1))  # (4, 2, 3)
    space = (2, 3, 4, 5)
    dims = ((2,), (0,), (1,))  # logical (4, 2, 3) over kernel dims i2, i0, i1; i3 broadcast
    kv, empty = v.embed(dims, space)
    assert not empty and kv.shape == (2, 3, 4, 1)
    want = to_kernel_space(np.transpose(x, (2, 0, 1)), dims, space)
    np.testing.assert_array_equal(read_view(x, kv), want)
    merged = View.contiguous((6, 4)).embed(((0, 1), (2,)), (2, 3, 4))[0]  # 6 split over i0,i1
    np.testing.assert_array_equal(read_view(x.reshape(6, 4), merged), x)
    padded = View.contiguous((6,)).pad(((1, 1),))
    assert padded.embed(((0, 1),), (2, 4)) is None  # a masked dim cannot be split


# ---------------------------------------------------------------- the interpreter


def _inputs(graph: Graph, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.asarray(rng.standard_normal(n.shape)).astype(n.dtype) for n in graph.inputs]


def _x(shape, k=0, dtype="float64"):
    return Node.leaf(Op.INPUT, dtype, shape, ("arg", k))


def _mlp():
    x, w, b = _x((8, 16)), _x((16, 4), 1), _x((1, 4), 2)
    h = (x @ w + b.broadcast_to((8, 4))).relu()
    return Graph([x, w, b], [h.logsoftmax(), h.logsumexp((0,))])


def _conv():
    x, w = _x((2, 6, 6, 3)), _x((3, 3, 3, 4), 1)
    y = x.conv(w, stride=2, padding=1)
    return Graph([x, w], [y.relu().sum((0, 1, 2)), y.dilate((1, 2), 1)])


def _movement():
    x, y = _x((3, 4)), _x((4, 3), 1)
    s = stack([x, y.transpose(), x.flip((0,))], axis=1)  # (3, 3, 4)
    p = s.pad(((1, 0), (0, 0), (2, 1))).slice(((0, 4, 2), (0, 3, 1), (1, 7, 3)))
    return Graph([x, y], [p.exp(), s.reshape((9, 4)).sum((1,)), x.transpose().reshape((12,))])


def _random():
    seed = Node.leaf(Op.INPUT, "int64", (), ("arg", 1))
    x = _x((4, 5))
    r = Node.leaf(Op.RAND, "float64", (5, 4), ("uniform", 3), (seed,))
    return Graph([x, seed], [x + r.transpose(), (r < 0.5).cast("float64").sum((0,))])


def _ints_and_bools():
    x = _x((3, 4), 0, "int32")
    b = x < x.flip((1,))
    return Graph([x], [b.cast("int64").sum((1,)), stack([b, b.logical_not()], 0), x * 3])


GRAPHS = {
    "mlp": _mlp,
    "conv": _conv,
    "movement": _movement,
    "random": _random,
    "ints": _ints_and_bools,
}


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_kernel_interpreter_matches_run_graph(name):
    graph = GRAPHS[name]()
    xs = _inputs(graph)
    if name == "ints":
        xs = [np.arange(12, dtype="int32").reshape(3, 4) % 5]
    if name == "random":
        xs[1] = np.asarray(1234, dtype="int64")
    kg = fuse(graph)
    want = run_graph(graph, xs)
    got = run_kernels(kg, xs)
    for a, b in zip(want, got, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- every op


def _one(op: Op):
    """A small graph around one op (inputs positive, so log, sqrt and pow are defined)."""
    x, y = _x((2, 3), 0, "float64"), _x((2, 3), 1, "float64")
    unary = {
        Op.NEG: x.neg, Op.EXP: x.exp, Op.LOG: x.log, Op.TANH: x.tanh, Op.RELU: x.relu,
        Op.SQRT: x.sqrt, Op.CAST: lambda: x.cast("float32"), Op.STOP_GRADIENT: x.stop_gradient,
        Op.ADD_SCALAR: lambda: x + 1.5, Op.MUL_SCALAR: lambda: x * 3.0,
        Op.DIV_SCALAR: lambda: x / 4.0, Op.POW_SCALAR: lambda: x**2.5,
        Op.SUM: lambda: x.sum((1,)), Op.MAX: lambda: x.max((0,)),
        Op.LOGSUMEXP: lambda: x.logsumexp((1,)), Op.RESHAPE: lambda: x.reshape((3, 2)),
        Op.BROADCAST: lambda: x.broadcast_to((4, 2, 3)), Op.PERMUTE: lambda: x.permute((1, 0)),
        Op.FLIP: lambda: x.flip((1,)), Op.PAD: lambda: x.pad(((1, 0), (2, 1))),
        Op.SLICE: lambda: x.slice([(0, 2, 1), (0, 3, 2)]), Op.DILATE: lambda: x.dilate((1,), 2),
        Op.LOGSOFTMAX: x.logsoftmax, Op.INPUT: lambda: x,
        Op.CONST: lambda: Node.const(np.arange(6.0).reshape(2, 3)) * x,
    }  # fmt: skip
    if op in unary:
        return Graph([x], [unary[op]()])
    if op in (Op.ADD, Op.MUL, Op.DIV, Op.POW, Op.MAXIMUM, Op.CMPLT, Op.CMPEQ):
        return Graph([x, y], [Node.make(op, x, y)])
    if op is Op.WHERE:
        return Graph([x, y], [(x < y).where(x, y)])
    if op is Op.STACK:
        return Graph([x, y], [stack([x, y], 1)])
    if op is Op.CALLBACK:  # a Python function between two fused neighbours
        cb = Callback(np.sin, (2, 3), "float64", "Sin", "<test>", key=("sin",))
        return Graph([x], [Node.make(Op.CALLBACK, x.exp(), arg=cb) * 2.0])
    if op is Op.ALLREDUCE:  # one process: a copy between two fused neighbours
        return Graph([x], [x.exp().all_reduce("max") * 2.0])
    if op is Op.MATMUL:
        a, b = _x((4, 2, 3), 0, "float64"), _x((3, 5), 1, "float64")
        return Graph([a, b], [a @ b])
    if op is Op.CONV:
        a, w = _x((1, 5, 5, 2), 0, "float64"), _x((3, 3, 2, 4), 1, "float64")
        return Graph([a, w], [a.conv(w, 2, 1)])
    seed = Node.leaf(Op.INPUT, "int64", (), ("arg", 1))
    return Graph([x, seed], [Node.leaf(Op.RAND, "float64", (2, 3), ("normal", 2), (seed,)) + x])


@pytest.mark.parametrize("op", list(Op), ids=lambda op: op.name)
def test_every_op_fuses_and_runs(op):
    graph = _one(op)
    rng = np.random.default_rng(0)
    xs = [np.asarray(rng.uniform(0.5, 2.0, n.shape)).astype(n.dtype) for n in graph.inputs]
    for a, b in zip(run_graph(graph, xs), run_kernels(fuse(graph), xs), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12)


def every_kernel_value() -> Graph:
    """A graph whose kernels hold every kind of kernel value (`KOp`): a GEMM core with a random
    draw and a constant in its epilogue, loads, and a reduction."""
    x, w = _x((4, 3), 0), _x((3, 5), 1)
    seed = Node.leaf(Op.INPUT, "int64", (), ("arg", 2))
    r = Node.leaf(Op.RAND, "float64", (4, 5), ("uniform", 0), (seed,))
    c = Node.leaf(Op.CONST, "float64", (4, 5), 1.5)
    return Graph([x, w, seed], [x @ w + r * c, x.sum((1,))])


@pytest.mark.parametrize("kop", list(KOp), ids=lambda k: k.name)
def test_every_kernel_value_kind_is_made_and_interpreted(kop):
    graph = every_kernel_value()
    kg = fuse(graph)
    assert any(e.op is kop for k in kg.kernels for e in k.exprs), f"no kernel holds a {kop} value"
    xs = _inputs(graph)
    xs[2] = np.asarray(7, dtype="int64")
    for a, b in zip(run_graph(graph, xs), run_kernels(kg, xs), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12)


def test_kernels_run_from_their_description_alone():
    graph = _movement()
    xs = _inputs(graph)
    kg = fuse(graph)
    bare = dataclasses.replace(kg, graph=None, names={}, report=None)
    bare.kernels = tuple(dataclasses.replace(k, nodes=()) for k in kg.kernels)
    for a, b in zip(run_graph(graph, xs), run_kernels(bare, xs), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-12)


def test_schedule_buffers_and_cost_analysis():
    graph = _mlp()
    kg = fuse(graph)
    steps = kg.schedule()
    assert [s.name for s in steps] == [k.name for k in kg.kernels]
    kinds = {b.name: b.kind for s in steps for b in s.reads + s.writes}
    assert {kinds[b.name] for b in kg.inputs if b.name in kinds} == {"input"}
    assert all(b.kind == "output" for b in kg.outputs)
    written = [b for s in steps for b in s.writes]
    assert len(written) == len(set(map(id, written)))  # each buffer has one writer
    cost = kg.cost_analysis()
    gemm = next(k for k in cost.kernels if k.kind == "gemm")
    assert gemm.flops >= 2 * 8 * 16 * 4  # the GEMM alone is 2*M*N*K
    assert gemm.bytes_read == (8 * 16 + 16 * 4 + 4) * 8  # x, w, b read once each
    assert cost.flops == sum(k.flops for k in cost.kernels)
    text = cost.as_text()
    assert text.splitlines()[0].split() == ["kernel", "kind", "flops", "read", "B", "written", "B"]
    assert text.splitlines()[-1].startswith("total")


def test_to_dot_has_one_cluster_per_kernel():
    kg = fuse(_conv())
    dot = kg.to_dot()
    assert dot.startswith("digraph kernels {") and dot.rstrip().endswith("}")
    for k in kg.kernels:
        assert f"subgraph cluster_{k.name} {{" in dot
    assert dot.count("subgraph cluster_") == len(kg.kernels)
    assert "fillcolor=lightblue" in dot  # the inputs, outside the clusters
