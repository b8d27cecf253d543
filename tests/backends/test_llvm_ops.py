"""Every op compiled by the LLVM backend vs the reference interpreter, under the op's budget.

Each case builds a small graph with the IR API, runs it through the pass pipeline and the LLVM
backend (`needlec.codegen.llvm.program.compile_program`), and compares each output with
`reference.run_graph` under `needlec.ir.ops.TOLERANCE[op]`: bit-exact ops bit for bit (any NaN
matches any NaN; -0.0 is not 0.0), math functions in ulps, sums under the summation-order bound.
Inputs mix seeded random values with the special ones (NaN, +-inf, +-0.0, denormals, extremes).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from needlec.codegen.llvm import render, runtime
from needlec.codegen.llvm.program import compile_program as compile_llvm
from needlec.codegen.reference import run_graph
from needlec.ir import ELEMENTWISE, Graph, Node, Op, ShapeError, infer, stack
from needlec.ir.kernel import KOp
from needlec.ir.ops import DTYPES, FLOATS, LEAF, TOLERANCE
from needlec.ir.semantics import EVAL
from needlec.passes import compile_program
from needlec.passes.autodiff import differentiate

RNG_SEED = 20240612
INTS = {"int32": np.int32, "int64": np.int64}


# ---------------------------------------------------------------- running and comparing


def arg(dtype: str, shape, k: int) -> Node:
    return Node.leaf(Op.INPUT, dtype, shape, ("arg", k))


def run_both(inputs, outputs, arrays):
    """(executable, compiled outputs, reference outputs) of the graph `inputs -> outputs`."""
    graph = Graph(inputs, outputs)
    ex = compile_llvm(compile_program(graph))
    got = ex.run([a.copy() for a in arrays])
    want = run_graph(graph, arrays)
    return ex, got, want


def _bits(a: np.ndarray) -> np.ndarray:
    return a.view({1: np.uint8, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def _report(what, bad, got, want, bound=None, sources=()) -> str:
    idx = np.argwhere(bad)[:6]
    lines = [f"{what}: {int(bad.sum())} of {bad.size} elements differ"]
    for i in map(tuple, idx):
        line = f"  at {i}: compiled {got[i]!r}, reference {want[i]!r}"
        if bound is not None:
            line += f", budget {np.broadcast_to(bound, bad.shape)[i]:.3g}"
        srcs = [s[i] for s in sources if s.shape == bad.shape]
        if srcs:
            line += f", inputs {srcs!r}"
        lines.append(line)
    return "\n".join(lines)


def assert_within(op: Op, got, want, *, n=1, scale=None, what="", sources=()) -> None:
    """`got` matches `want` under `TOLERANCE[op]` (see needlec/ir/ops.py for the definitions)."""
    what = f"{op.name.lower()} {what} {want.dtype}{list(want.shape)}".strip()
    assert got.shape == want.shape, f"{what}: compiled shape {got.shape}"
    assert got.dtype == want.dtype, f"{what}: compiled dtype {got.dtype}"
    kind, c = TOLERANCE[op]
    if want.dtype.kind != "f":
        bad = got != want
        assert not bad.any(), _report(what, bad, got, want, sources=sources)
        return
    if kind == "exact":
        bad = (_bits(got) != _bits(want)) & ~(np.isnan(got) & np.isnan(want))
        assert not bad.any(), _report(what, bad, got, want, sources=sources)
        return
    g, w = got.astype(np.float64), want.astype(np.float64)
    finite = np.isfinite(w)
    bad = np.isnan(g) != np.isnan(w)
    bad |= np.isinf(w) & (g != w)
    if kind == "ulp":
        bound = c * np.spacing(np.abs(want)).astype(np.float64)
    else:
        eps = float(np.finfo(want.dtype).eps)
        bound = c * eps * np.sqrt(np.maximum(n, 1)) * scale
    with np.errstate(invalid="ignore"):
        bad |= finite & ~(np.abs(g - w) <= bound)
    assert not bad.any(), _report(what, bad, got, want, bound, sources)


# ---------------------------------------------------------------- input values


def specials(dtype: str) -> np.ndarray:
    """The values every elementwise case sees (as x, and paired with each other as x, y)."""
    if dtype in FLOATS:
        fi = np.finfo(dtype)
        vals = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 0.5, -2.5, 3.0, 7.0]
        vals += [fi.tiny, -fi.tiny, fi.smallest_subnormal, float(fi.max), -float(fi.max)]
        return np.array(vals, dtype)
    if dtype == "bool":
        return np.array([False, True])
    ii = np.iinfo(dtype)
    return np.array([0, 1, -1, 2, -2, 3, 7, ii.min, ii.max, ii.min + 1], dtype)


def random_values(dtype: str, n: int, rng, lo: float, hi: float) -> np.ndarray:
    if dtype == "bool":
        return rng.random(n) < 0.5
    if dtype in INTS:
        return rng.integers(int(lo), int(hi), n, endpoint=True).astype(dtype)
    return rng.uniform(lo, hi, n).astype(dtype)


def pair(dtype: str, n: int, rng, lo, hi, ylo=None, yhi=None, special_y=None):
    """x, y of n values: every pair of special values first, then random ones (a quarter of
    the random y equal to x, so comparisons and maximum see ties)."""
    sx = specials(dtype)
    sy = sx if special_y is None else np.asarray(special_y, dtype)
    px, py = np.repeat(sx, len(sy)), np.tile(sy, len(sx))
    rest = n - len(px)
    x = np.concatenate([px, random_values(dtype, rest, rng, lo, hi)])[:n]
    yr = random_values(dtype, rest, rng, lo if ylo is None else ylo, hi if yhi is None else yhi)
    if special_y is None:
        tie = rng.random(rest) < 0.25
        yr[tie] = x[len(px) :][tie]
    y = np.concatenate([py, yr])[:n]
    return x, y


# per op: the range of the random values (x, and y where it differs)
DOMAIN = {
    Op.EXP: {"float32": (-80, 80), "float64": (-700, 700), "int": (-60, 60)},
    Op.LOG: {"float32": (0, 1e4), "float64": (0, 1e4), "int": (0, 10**6)},
    Op.TANH: {"float32": (-12, 12), "float64": (-25, 25), "int": (-20, 20)},
    Op.SQRT: {"float32": (0, 1e6), "float64": (0, 1e6), "int": (0, 10**6)},
    Op.POW: {"float32": (0, 8), "float64": (0, 8), "int": (-9, 9)},
    Op.POW_SCALAR: {"float32": (-30, 30), "float64": (-30, 30), "int": (-1000, 1000)},
}
WIDE = {"float32": (-1e3, 1e3), "float64": (-1e3, 1e3), "int": (-(10**4), 10**4)}
POW_Y = {"float32": (-6, 6), "float64": (-6, 6), "int": (0, 7)}

SCALARS = {
    Op.ADD_SCALAR: (1.5, 0.0, -0.0, 3, -7),
    Op.MUL_SCALAR: (3.0, 0.5, 0.0, -1, 1, 0),
    Op.DIV_SCALAR: (4.0, 3, 0.1, -0.0),
    Op.POW_SCALAR: (3, 4, 2, 0.5, 2.5, -1, 0, 1),
}


def _domain(op, dtype, table=None):
    table = table or DOMAIN.get(op, WIDE)
    return table["int" if dtype in INTS else dtype] if dtype != "bool" else (0, 1)


def _valid(op: Op, dtypes, a=None) -> bool:
    try:
        infer(op, [(3,)] * len(dtypes), dtypes, a)
    except ShapeError:
        return False
    return True


# cases that find a genuine mismatch with the reference (for the backend's fix list)
XFAIL: dict = {}


def _case(op, dtype, c=None):
    name = f"{op.name.lower()}-{dtype}" + ("" if c is None else f"-c={c!r}")
    why = XFAIL.get((op.name.lower(), dtype, c))
    marks = [pytest.mark.xfail(strict=True, reason=why)] if why else []
    return pytest.param(op, dtype, c, id=name, marks=marks)


def _cases():
    for op in sorted(ELEMENTWISE, key=lambda o: o.name):
        for dtype in DTYPES:
            if op in SCALARS:
                yield from (_case(op, dtype, c) for c in SCALARS[op] if _valid(op, [dtype], c))
            elif op is Op.WHERE:
                if _valid(op, ["bool", dtype, dtype]):
                    yield _case(op, dtype)
            elif op is Op.CAST or _valid(op, [dtype] * (2 if op in BINARY_OPS else 1)):
                yield _case(op, dtype)


BINARY_OPS = {Op.ADD, Op.MUL, Op.DIV, Op.POW, Op.MAXIMUM, Op.CMPLT, Op.CMPEQ}
N = 1025  # odd, above a vector multiple; the first few hundred values are the special pairs


def _build(op: Op, x: Node, y: Node, c: Node, scalar) -> list[Node]:
    if op is Op.CAST:
        return [x.cast(d) for d in DTYPES if d != x.dtype]
    if op in SCALARS:
        return [Node.make(op, x, arg=scalar)]
    if op is Op.WHERE:
        return [c.where(x, y)]
    if op in BINARY_OPS:
        return [Node.make(op, x, y)]
    return [Node.make(op, x)]


ZERO_TIES = {Op.MAXIMUM, Op.RELU}  # their -0.0 vs 0.0 ties are the test below


@pytest.mark.parametrize("op,dtype,scalar", list(_cases()))
def test_elementwise_op_matches_reference(op, dtype, scalar):
    rng = np.random.default_rng(RNG_SEED)
    lo, hi = _domain(op, dtype)
    if op is Op.POW:
        ylo, yhi = _domain(op, dtype, POW_Y)
        sy = [0, 1, 2, 3, 7] if dtype in INTS else None  # numpy refuses negative int powers
        x, y = pair(dtype, N, rng, lo, hi, ylo, yhi, special_y=sy)
    else:
        x, y = pair(dtype, N, rng, lo, hi)
    if op in ZERO_TIES and dtype in FLOATS:
        x, y = x + 0, y + 0  # -0.0 -> 0.0
    cond = rng.random(N) < 0.5
    xs, ys, cs = arg(dtype, (N,), 0), arg(dtype, (N,), 1), arg("bool", (N,), 2)
    outs = _build(op, xs, ys, cs, scalar)
    _, got, want = run_both([xs, ys, cs], outs, [x, y, cond])
    for node, g, w in zip(outs, got, want, strict=True):
        what = f"c={node.arg!r}" if node.arg is not None else ""
        assert_within(node.op, g, w, what=what, sources=(x, y, cond))


def test_int_and_float_scalars_of_equal_value_compute_apart():
    """int64 * 3 computes in int64 (wrapping) and int64 * 3.0 in float64, in one process in
    either order: 3 == 3.0 and they hash alike, so no cache may hold one for the other."""
    big = np.array([2**62 + 12345, -(2**62) - 7, 5], np.int64)
    for first, second in ((3.0, 3), (3, 3.0), (3.0, 3)):
        xs = arg("int64", big.shape, 0)
        outs = [xs * first, xs * second]
        _, got, want = run_both([xs], outs, [big])
        for g, w in zip(got, want, strict=True):
            assert g.dtype == w.dtype
            np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("dtype", FLOATS)
def test_maximum_and_relu_on_signed_zero_ties(dtype):
    x = np.array([-0.0, 0.0, -0.0, 0.0, 1.0], dtype)
    y = np.array([0.0, -0.0, -0.0, 0.0, -0.0], dtype)
    xs, ys = arg(dtype, x.shape, 0), arg(dtype, y.shape, 1)
    outs = [xs.maximum(ys), xs.relu()]
    _, got, want = run_both([xs, ys], outs, [x, y])
    for node, g, w in zip(outs, got, want, strict=True):
        assert_within(node.op, g, w, sources=(x, y))


MIXED = [("int32", "int64"), ("int32", "float32"), ("int64", "float32"), ("float32", "float64")]
MIXED += [("bool", "int32"), ("int64", "float64")]


@pytest.mark.parametrize("a,b", MIXED, ids=[f"{a}-{b}" for a, b in MIXED])
def test_binary_ops_on_mixed_dtypes_compute_as_numpy_does(a, b):
    rng = np.random.default_rng(RNG_SEED)
    x = random_values(a, N, rng, -50, 50)
    y = random_values(b, N, rng, -50, 50)
    xs, ys = arg(a, (N,), 0), arg(b, (N,), 1)
    outs = [xs + ys, xs * ys, ys + xs]
    if "bool" not in (a, b):
        outs += [xs / ys, xs.maximum(ys), xs < ys, xs.eq(ys), (xs < ys).where(xs, ys)]
    _, got, want = run_both([xs, ys], outs, [x, y])
    for node, g, w in zip(outs, got, want, strict=True):
        assert_within(node.op, g, w, what=f"{a} {b}", sources=(x, y))


# ---------------------------------------------------------------- sizes, 0-d and size-0 dims

SHAPES = [(), (1,), (7,), (9,), (1023,), (1025,), (0,), (3, 0, 2), (1, 1, 1)]


@pytest.mark.parametrize("dtype", ["float32", "int32"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)) or "0d")
def test_sizes_and_empty_dims(shape, dtype):
    rng = np.random.default_rng(RNG_SEED)
    n = math.prod(shape)
    x = random_values(dtype, n, rng, 1, 40).reshape(shape)
    y = random_values(dtype, n, rng, 1, 40).reshape(shape)
    xs, ys = arg(dtype, shape, 0), arg(dtype, shape, 1)
    outs = [xs + ys, xs * 2.5, (xs < ys).where(xs, ys), xs.exp(), xs.sqrt(), xs**3, -xs]
    _, got, want = run_both([xs, ys], outs, [x, y])
    for node, g, w in zip(outs, got, want, strict=True):
        assert_within(node.op, g, w, what=f"shape {shape}")


# ---------------------------------------------------------------- strided and broadcast views

VIEWS = {
    "transpose": ((5, 7), lambda v: v.permute((1, 0))),
    "permute3": ((2, 3, 4), lambda v: v.permute((2, 0, 1))),
    "broadcast": ((3, 1), lambda v: v.broadcast_to((2, 3, 9))),
    "slice_steps": ((9, 7), lambda v: v.slice([(1, 9, 2), (0, 7, 3)])),
    "flip": ((7, 9), lambda v: v.flip((0, 1))),
    "pad": ((3, 5), lambda v: v.pad(((1, 2), (3, 0)))),
    "pad_flip": ((5, 4), lambda v: v.pad(((2, 1), (0, 3))).flip((0, 1))),
    "pad_slice_into_padding": ((4,), lambda v: v.pad(((3, 2),)).slice([(0, 9, 2)]).flip(0)),
    "slice_flip_pad_t": (
        (6, 5),
        lambda v: v.slice([(1, 6, 2), (0, 5, 1)]).flip(1).pad(((2, 0), (1, 1))).permute((1, 0)),
    ),
    "broadcast_masked": ((1, 3), lambda v: v.pad(((0, 0), (1, 0))).broadcast_to((2, 2, 4))),
    "reshape_of_transpose": ((4, 6), lambda v: v.permute((1, 0)).reshape((3, 8))),
    "dilate": ((3, 4), lambda v: v.dilate((0, 1), 2)),
    "stack_views": (
        (4, 5),
        lambda v: stack([v, v.flip(0), v.pad(((0, 0), (1, 0))).slice([(0, 4, 1), (0, 5, 1)])], 1),
    ),
}


def _view_cases():
    for name in VIEWS:
        for dtype in ("float64", "int32", "bool"):
            yield pytest.param(name, dtype, id=f"{name}-{dtype}")


@pytest.mark.parametrize("name,dtype", list(_view_cases()))
def test_movement_views_feed_exact_ops(name, dtype):
    shape, chain = VIEWS[name]
    rng = np.random.default_rng(RNG_SEED)
    x = random_values(dtype, math.prod(shape), rng, -100, 100).reshape(shape)
    if dtype == "float64":
        x.flat[:3] = [-0.0, np.nan, -np.inf][: x.size]
    xs = arg(dtype, shape, 0)
    v = chain(xs)
    outs = [v, v.cast("int64")]
    if dtype != "bool":
        outs += [v * 3, -v, v + v.flip(tuple(range(v.ndim))), v.sum(), v.max()]
    outs = [o for o in outs if o is not xs]
    _, got, want = run_both([xs], outs, [x])
    scale = np.sum(np.abs(run_graph(Graph([xs], [v]), [x])[0].astype(np.float64)))
    for node, g, w in zip(outs, got, want, strict=True):
        assert_within(node.op, g, w, n=math.prod(v.shape), scale=scale, what=name)


# A stack of k pieces is one kernel whose every element selects among k masked reads; the
# renderer splits its loops where the masks start and stop, so each piece's rows read that
# piece only. Same values as the reference, whatever the number of pieces (past the cap on
# copies the loops stay whole), the axis, serial or on the pool, and with padded borders.
SPLIT_CASES = {
    "stack2_axis0": ((3, 4), 2, 0),
    "stack20_axis0": ((16, 64), 20, 0),
    "stack20_axis1": ((16, 64), 20, 1),
    "stack7_axis2": ((5, 3), 7, 2),
    "stack70_axis0": ((4, 8), 70, 0),  # more pieces than MAX_LOOP_COPIES: one loop
    "stack8_large": ((256, 512), 8, 0),  # large enough for the thread pool
}


@pytest.mark.parametrize("name", list(SPLIT_CASES))
def test_loops_split_at_mask_edges_compute_the_same(name):
    shape, k, axis = SPLIT_CASES[name]
    rng = np.random.default_rng(RNG_SEED)
    xs = [arg("float32", shape, i) for i in range(k)]
    arrays = [rng.standard_normal(shape).astype("float32") for _ in range(k)]
    arrays[0].flat[:2] = [-0.0, np.nan]
    st = stack(xs, axis)
    outs = [st, st * 2.0 + 1.0, st.sum((axis,))]
    _, got, want = run_both(xs, outs, arrays)
    np.testing.assert_array_equal(got[0], np.stack(arrays, axis))  # a copy: exact, -0.0 kept
    assert np.array_equal(np.signbit(got[0]), np.signbit(want[0]))
    for g, w in zip(got[1:], want[1:], strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-5)


def test_padded_borders_split_on_two_dims():
    rng = np.random.default_rng(RNG_SEED)
    x = rng.standard_normal((6, 33, 33)).astype("float32")
    xs = arg("float32", x.shape, 0)
    padded = xs.pad(((0, 0), (2, 1), (1, 3)))
    outs = [padded * 3.0, (padded + padded.flip((1, 2))).sum((0,))]
    _, got, want = run_both([xs], outs, [x])
    np.testing.assert_array_equal(got[0], np.pad(x, ((0, 0), (2, 1), (1, 3))) * np.float32(3))
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6, atol=1e-5)


# ---------------------------------------------------------------- reductions


def _subsets(ndim: int):
    return [c for r in range(ndim + 1) for c in itertools.combinations(range(ndim), r)]


RED_SHAPES = [(3, 4, 5), (7, 1, 9), (2, 0, 3), (3, 1025), (1023, 2), ()]
RED_CASES = [
    pytest.param(op, dtype, shape, id=f"{op.name.lower()}-{dtype}-{'x'.join(map(str, shape))}")
    for op in (Op.SUM, Op.MAX, Op.LOGSUMEXP)
    for dtype in DTYPES
    for shape in RED_SHAPES
    if not (op is Op.LOGSUMEXP and dtype == "bool")
    if dtype in FLOATS or shape in ((3, 4, 5), (2, 0, 3))
]


@pytest.mark.parametrize("op,dtype,shape", RED_CASES)
def test_reduction_over_every_axis_subset(op, dtype, shape):
    rng = np.random.default_rng(RNG_SEED)
    x = random_values(dtype, math.prod(shape), rng, -20, 20).reshape(shape)
    xs = arg(dtype, shape, 0)
    subsets = _subsets(len(shape))
    if op is Op.MAX:  # numpy has no max of no elements
        subsets = [a for a in subsets if all(shape[i] for i in a)]
    outs = [Node.make(op, xs, arg=a) for a in subsets]
    _, got, want = run_both([xs], outs, [x])
    for axes, g, w in zip(subsets, got, want, strict=True):
        n = math.prod(shape[i] for i in axes)
        if op is Op.SUM:
            scale = np.sum(np.abs(x.astype(np.float64)), axis=axes)
        else:
            scale = 1 + np.abs(w.astype(np.float64))
        assert_within(op, g, w, n=n, scale=scale, what=f"axes={axes}")


def _special_rows(dtype: str) -> np.ndarray:
    nan, inf = np.nan, np.inf
    rows = [
        [1.0, nan, 2.0, -3.0, 0.5],  # NaN in the middle
        [nan, 1.0, 2.0, 3.0, 4.0],  # NaN first
        [1.0, 2.0, 3.0, 4.0, nan],  # NaN last
        [1.0, inf, 2.0, -3.0, 0.5],
        [-inf, -inf, -inf, -inf, -inf],
        [inf, -inf, 1.0, 2.0, 3.0],
        [-0.0, -0.0, -0.0, -0.0, -0.0],  # max keeps the sign of an all -0.0 row
        [-0.0, 0.0, -0.0, 0.0, -0.0],  # a tie between -0.0 and 0.0
        [-1.0, -0.0, -5.0, -0.0, -2.0],
        [3e38, 3e38, -1.0, 2.0, 1.0],  # overflows a float32 sum
    ]
    return np.array(rows, dtype)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("op", [Op.SUM, Op.MAX, Op.LOGSUMEXP], ids=lambda o: o.name.lower())
def test_reduction_special_values(op, dtype):
    x = _special_rows(dtype)
    xs = arg(dtype, x.shape, 0)
    # rows, the same rows read through a transpose (a strided reduction), and a reversed copy
    outs = [
        Node.make(op, xs, arg=(1,)),
        Node.make(op, xs.permute((1, 0)), arg=(0,)),
        Node.make(op, xs.flip(1), arg=(1,)),
    ]
    _, got, want = run_both([xs], outs, [x])
    zeros = x == 0
    mixed = (zeros & np.signbit(x)).any(1) & (zeros & ~np.signbit(x)).any(1)
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        if op is Op.MAX:  # a row with both zeros: IEEE maximum's +0 (numpy's sign is order)
            assert (g[mixed] == 0).all() and not np.signbit(g[mixed]).any(), g[mixed]
            g = np.where(mixed, w, g)
        scale = np.sum(np.abs(x.astype(np.float64)), axis=1) if op is Op.SUM else 1 + np.abs(w)
        assert_within(op, g, w, n=x.shape[1], scale=scale, what=f"output {k}", sources=())


# ---------------------------------------------------------------- matmul and conv

MATMULS = {
    "2d": ((7, 9), (9, 5), None, None),
    "1x1": ((1, 1), (1, 1), None, None),
    "vector_rows": ((1, 9), (9, 1), None, None),
    "k1": ((6, 1), (1, 4), None, None),
    "batched": ((3, 7, 9), (3, 9, 5), None, None),
    "broadcast_batch": ((2, 1, 4, 6), (3, 6, 5), None, None),
    "batch_of_one": ((1, 4, 6), (6, 5), None, None),
    "a_transposed": ((9, 7), (9, 5), (1, 0), None),
    "b_transposed": ((7, 9), (5, 9), None, (1, 0)),
    "both_transposed_batched": ((3, 9, 7), (3, 5, 9), (0, 2, 1), (0, 2, 1)),
    "large": ((65, 129), (129, 33), None, None),
    "k0": ((4, 0), (0, 3), None, None),
    "m0": ((0, 5), (5, 3), None, None),
    "batch0": ((0, 2, 3), (3, 4), None, None),
}


def _matmul_graph(a_shape, b_shape, pa, pb, dtype):
    a, b = arg(dtype, a_shape, 0), arg(dtype, b_shape, 1)
    av = a.permute(pa) if pa else a
    bv = b.permute(pb) if pb else b
    return a, b, av, bv


def _matmul_budget(av_val, bv_val):
    scale = np.matmul(np.abs(av_val.astype(np.float64)), np.abs(bv_val.astype(np.float64)))
    return av_val.shape[-1], scale


def _matmul_cases():
    for name in MATMULS:
        for dtype in FLOATS:
            yield pytest.param(name, dtype, id=f"{name}-{dtype}")


@pytest.mark.parametrize("name,dtype", list(_matmul_cases()))
def test_matmul(name, dtype):
    a_shape, b_shape, pa, pb = MATMULS[name]
    rng = np.random.default_rng(RNG_SEED)
    x = rng.standard_normal(a_shape).astype(dtype)
    y = rng.standard_normal(b_shape).astype(dtype)
    a, b, av, bv = _matmul_graph(a_shape, b_shape, pa, pb, dtype)
    out = av @ bv
    ex, (got, got_relu), (want, want_relu) = run_both([a, b], [out, out.relu() * 2.0], [x, y])
    assert not ex.fallbacks, ex.fallbacks
    n, scale = _matmul_budget(*run_graph(Graph([a, b], [av, bv]), [x, y]))
    assert_within(Op.MATMUL, got, want, n=n, scale=scale, what=name)
    assert_within(Op.MATMUL, got_relu, want_relu, n=n, scale=2 * scale, what=f"{name} epilogue")


MATMUL_VIEWS = {
    "sliced_rows": lambda v: v.slice([(0, 9, 2), (0, 9, 1)]),
    "flipped": lambda v: v.flip((0,)),
    "padded": lambda v: v.pad(((1, 1), (0, 0))).slice([(0, 9, 1), (0, 9, 1)]),
    "broadcast_row": lambda v: v.slice([(0, 1, 1), (0, 9, 1)]).broadcast_to((9, 9)),
}


@pytest.mark.parametrize("name", list(MATMUL_VIEWS))
def test_matmul_of_strided_or_masked_operands(name):
    rng = np.random.default_rng(RNG_SEED)
    x = rng.standard_normal((9, 9)).astype("float32")
    y = rng.standard_normal((9, 4)).astype("float32")
    a, b = arg("float32", (9, 9), 0), arg("float32", (9, 4), 1)
    av = MATMUL_VIEWS[name](a)
    _, (got,), (want,) = run_both([a, b], [av @ b], [x, y])
    n, scale = _matmul_budget(*run_graph(Graph([a, b], [av, b]), [x, y]))
    assert_within(Op.MATMUL, got, want, n=n, scale=scale, what=name)


def int_values(dtype: str, shape, rng, wide: bool = False) -> np.ndarray:
    """Seeded values of an int or bool dtype: small ones, or (`wide`) over the dtype's whole
    range, so products and sums overflow and must wrap as numpy's do."""
    if dtype == "bool":
        return rng.random(shape) < 0.5
    ii = np.iinfo(dtype)
    lo, hi = (ii.min, ii.max) if wide else (-50, 50)
    return rng.integers(lo, hi, shape, dtype=dtype, endpoint=True)


# name: (a shape, b shape, a permute, b permute)
INT_MATMULS = {
    "1x1x1": ((1, 1), (1, 1), None, None),
    "7x9x33": ((7, 9), (9, 33), None, None),
    "33x1x7": ((33, 1), (1, 7), None, None),
    "9x33x1": ((9, 33), (33, 1), None, None),
    "batched": ((2, 7, 9), (2, 9, 5), None, None),
    "batch_broadcast": ((3, 1, 7, 9), (4, 9, 5), None, None),
    "vector_broadcast": ((2, 3, 1, 9), (9, 7), None, None),
    "a_transposed": ((9, 7), (9, 33), (1, 0), None),
    "b_transposed": ((7, 9), (33, 9), None, (1, 0)),
    "both_transposed_batched": ((3, 9, 7), (3, 5, 9), (0, 2, 1), (0, 2, 1)),
    "batch_permuted": ((7, 2, 9), (9, 5), (1, 0, 2), None),
    "parallel_rows": ((3, 70, 129), (129, 65), None, None),
    "empty_k": ((4, 0), (0, 5), None, None),
    "empty_rows": ((0, 3), (3, 5), None, None),
    "empty_cols": ((4, 3), (3, 0), None, None),
    "empty_batch": ((0, 2, 3), (3, 4), None, None),
}


def _int_matmul_cases():
    for name in INT_MATMULS:
        for dtype in INTS:
            for wide in (False, True):
                yield pytest.param(
                    name, dtype, wide, id=f"{name}-{dtype}-{'wide' if wide else 'small'}"
                )


@pytest.mark.parametrize("name,dtype,wide", list(_int_matmul_cases()))
def test_integer_matmul_is_native_and_exact(name, dtype, wide):
    """Integer matmul renders as a loop kernel (no fallback), bit for bit numpy's: with values
    over the whole range, products and sums wrap around as numpy's do."""
    a_shape, b_shape, pa, pb = INT_MATMULS[name]
    rng = np.random.default_rng(RNG_SEED)
    x, y = int_values(dtype, a_shape, rng, wide), int_values(dtype, b_shape, rng, wide)
    a, b, av, bv = _matmul_graph(a_shape, b_shape, pa, pb, dtype)
    out = av @ bv
    ex, got, want = run_both([a, b], [out, (out * 3).relu()], [x, y])
    assert not ex.fallbacks, ex.fallbacks
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(g, w)


def test_integer_matmul_wraps_like_numpy():
    """A sum that overflows int32 (and each product of int32.max with itself) wraps exactly."""
    x = np.full((3, 5), np.iinfo(np.int32).max, np.int32)
    y = np.full((5, 2), np.iinfo(np.int32).max, np.int32)
    a, b = arg("int32", x.shape, 0), arg("int32", y.shape, 1)
    ex, (got,), (want,) = run_both([a, b], [a @ b], [x, y])
    assert not ex.fallbacks, ex.fallbacks
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got, np.matmul(x, y))


@pytest.mark.parametrize(
    "a_dtype,b_dtype", [("int32", "int64"), ("bool", "int32"), ("bool", "bool")]
)
def test_mixed_integer_and_bool_matmul(a_dtype, b_dtype):
    """Operands of different integer dtypes (or bool) compute in the promoted dtype; bool @ bool
    is numpy's OR of ANDs."""
    rng = np.random.default_rng(RNG_SEED)
    x, y = int_values(a_dtype, (2, 7, 9), rng, True), int_values(b_dtype, (9, 5), rng, True)
    a, b = arg(a_dtype, x.shape, 0), arg(b_dtype, y.shape, 1)
    ex, (got,), (want,) = run_both([a, b], [a @ b], [x, y])
    assert not ex.fallbacks, ex.fallbacks
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", list(MATMUL_VIEWS))
def test_integer_matmul_of_strided_or_masked_operands(name):
    rng = np.random.default_rng(RNG_SEED)
    x, y = int_values("int64", (9, 9), rng, True), int_values("int64", (9, 4), rng, True)
    a, b = arg("int64", (9, 9), 0), arg("int64", (9, 4), 1)
    ex, (got,), (want,) = run_both([a, b], [MATMUL_VIEWS[name](a) @ b], [x, y])
    assert not ex.fallbacks, ex.fallbacks
    np.testing.assert_array_equal(got, want)


def test_mixed_dtype_matmul():
    rng = np.random.default_rng(RNG_SEED)
    x = rng.integers(-50, 50, (7, 9)).astype("int32")
    y = rng.standard_normal((9, 5)).astype("float32")
    a, b = arg("int32", x.shape, 0), arg("float32", y.shape, 1)
    _, (got,), (want,) = run_both([a, b], [a @ b], [x, y])
    n, scale = _matmul_budget(x, y)
    assert_within(Op.MATMUL, got, want, n=n, scale=scale)


CONVS = {
    "3x3_pad1": ((2, 7, 7, 3), (3, 3, 3, 4), 1, 1),
    "3x3_stride2": ((1, 9, 9, 2), (3, 3, 2, 5), 2, 0),
    "1x1": ((2, 5, 5, 4), (1, 1, 4, 3), 1, 0),
    "7x7_stride4_pad3": ((3, 17, 17, 3), (7, 7, 3, 5), 4, 3),
    "image_tiles_with_tail": ((9, 30, 30, 8), (3, 3, 8, 4), 1, 1),  # 4 + 4 + 1 images a tile
    "k_tiles": ((1, 40, 40, 64), (5, 5, 64, 3), 1, 2),  # K split over 5 GEMMs (beta 0, 1)
    "kernel_larger_than_input": ((2, 3, 3, 2), (5, 5, 2, 3), 1, 2),
    "one_pixel": ((4, 1, 1, 8), (3, 3, 8, 5), 1, 1),  # only the centre tap meets the input
    "two_pixels_stride2": ((3, 2, 2, 4), (3, 3, 4, 6), 2, 1),  # 4 of 9 taps meet it
    "taps_cut_at_one_side": ((2, 6, 5, 3), (5, 5, 3, 2), 3, 1),
    "empty_batch": ((0, 5, 5, 2), (3, 3, 2, 3), 1, 1),
    "empty_channels": ((2, 5, 5, 0), (3, 3, 0, 3), 1, 1),  # an empty sum: zeros
}


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("name", list(CONVS))
def test_conv_matches(name, dtype):
    xs_shape, w_shape, stride, pad = CONVS[name]
    rng = np.random.default_rng(RNG_SEED)
    x = rng.standard_normal(xs_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    xs, ws = arg(dtype, xs_shape, 0), arg(dtype, w_shape, 1)
    out = xs.conv(ws, stride, pad)
    ex, (got, got2), (want, want2) = run_both([xs, ws], [out, out.relu()], [x, w])
    assert not ex.fallbacks, ex.fallbacks
    scale = EVAL[Op.CONV](np.abs(x).astype("f8"), np.abs(w).astype("f8"), (stride, pad))
    n = max(w_shape[0] * w_shape[1] * w_shape[2], 1)
    assert_within(Op.CONV, got, want, n=n, scale=scale, what=name)
    assert_within(Op.CONV, got2, want2, n=n, scale=scale, what=f"{name} relu")


# how the input x and the gradient operand g (N, Ho, Wo, Co) are held: compact NHWC (BLAS reads
# g in place, the gather copies runs over (w, c)), or as NCHW arrays read through a permute (g
# packed first, runs over w)
CONV_VIEWS = {  # (input view, weight view): the gather's and the packing's view addressing
    "input_rows_strided": (lambda x: x.slice([(1, 3, 1), (1, 9, 2), (0, 9, 1), (0, 3, 1)]), None),
    "input_cropped_columns": (
        lambda x: x.slice([(0, 3, 1), (0, 9, 1), (2, 7, 1), (0, 3, 1)]),
        None,
    ),
    "input_held_nchw": (lambda x: x.reshape((3, 3, 9, 9)).permute((0, 2, 3, 1)), None),
    "weight_padded_rows": (None, lambda w: w.pad([(1, 0), (0, 1), (0, 0), (0, 0)])),
    "weight_flipped": (None, lambda w: w.flip((0, 1))),
}


@pytest.mark.parametrize("name", list(CONV_VIEWS))
def test_conv_over_views_matches(name):
    xv, wv = CONV_VIEWS[name]
    rng = np.random.default_rng(RNG_SEED)
    x = rng.standard_normal((3, 9, 9, 3)).astype("float32")
    w = rng.standard_normal((3, 3, 3, 4)).astype("float32")
    xs, ws = arg("float32", x.shape, 0), arg("float32", w.shape, 1)
    a, b = (xv or (lambda v: v))(xs), (wv or (lambda v: v))(ws)
    assert a.shape[3] == 3 and b.shape[2] == 3
    ex, (got,), (want,) = run_both([xs, ws], [a.conv(b, 2, 1)], [x, w])
    assert not ex.fallbacks, ex.fallbacks
    av, bv = run_graph(Graph([xs, ws], [a, b]), [x, w])
    scale = EVAL[Op.CONV](np.abs(av).astype("f8"), np.abs(bv).astype("f8"), (2, 1))
    n = math.prod(bv.shape[:3])
    assert_within(Op.CONV, got, want, n=n, scale=scale, what=name)


GRAD_LAYOUTS = {"nhwc": (0, 1, 2, 3), "nchw": (0, 3, 1, 2)}


def _conv_grad_case(name, dtype, layout):
    xs_shape, w_shape, stride, pad = CONVS[name]
    rng = np.random.default_rng(RNG_SEED)
    x = rng.standard_normal(xs_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    y_shape = EVAL[Op.CONV](x, w, (stride, pad)).shape
    perm = GRAD_LAYOUTS[layout]
    held = rng.standard_normal([y_shape[p] for p in perm]).astype(dtype)
    x_held = np.ascontiguousarray(x.transpose(perm))
    xs, ws = arg(dtype, x_held.shape, 0), arg(dtype, w_shape, 1)
    gs = arg(dtype, held.shape, 2)
    back = tuple(perm.index(d) for d in range(4))
    g = gs.permute(back) if perm != (0, 1, 2, 3) else gs
    xv = xs.permute(back) if perm != (0, 1, 2, 3) else xs
    return (x, x_held, w, held, held.transpose(back)), (xs, xv, ws, gs), g, (stride, pad)


@pytest.mark.parametrize("layout", list(GRAD_LAYOUTS))
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("name", list(CONVS))
def test_conv_gradient_cores_match(name, dtype, layout):
    """The input gradient (col2im) and the weight gradient (im2col, transposed GEMM) of each
    conv of the table, compiled natively, within the summation-order budget of the reference."""
    (x, x_held, w, held, gy), (xs, xv, ws, gs), g, (stride, pad) = _conv_grad_case(
        name, dtype, layout
    )
    dx = g.conv_input_grad(ws, stride, pad, x.shape[1:3])
    dw = xv.conv_weight_grad(g, stride, pad, w.shape[:2])
    ex, got, want = run_both([xs, ws, gs], [dx, dw], [x_held, w, held])
    assert not ex.fallbacks, ex.fallbacks
    ga = np.abs(gy).astype("f8")
    abs_x, abs_w = np.abs(x).astype("f8"), np.abs(w).astype("f8")
    scale_dx = EVAL[Op.CONV_INPUT_GRAD](ga, abs_w, (stride, pad, *x.shape[1:3]))
    scale_dw = EVAL[Op.CONV_WEIGHT_GRAD](abs_x, ga, (stride, pad, *w.shape[:2]))
    n_dx = max(w.shape[0] * w.shape[1] * w.shape[3], 1)  # terms of one input element, at most
    n_dw = max(ga.shape[0] * ga.shape[1] * ga.shape[2], 1)
    assert_within(Op.CONV_INPUT_GRAD, got[0], want[0], n=n_dx, scale=scale_dx, what=name)
    assert_within(Op.CONV_WEIGHT_GRAD, got[1], want[1], n=n_dw, scale=scale_dw, what=name)


CONV_GRADS = [((2, 9, 9, 3), (3, 3, 3, 4), 1, 1), ((2, 9, 9, 3), (3, 3, 3, 4), 2, 1)]
CONV_GRADS += [((2, 16, 16, 3), (7, 7, 3, 4), 4, 3), ((1, 6, 6, 2), (1, 1, 2, 2), 2, 0)]


@pytest.mark.parametrize("xs_shape,w_shape,stride,pad", CONV_GRADS)
def test_conv_gradients_read_through_views(xs_shape, w_shape, stride, pad):
    """Both gradients of a convolution, and their own gradients (convolutions and gradients
    again, over the views autodiff makes), compiled natively, match the reference."""
    rng = np.random.default_rng(RNG_SEED)
    x = rng.standard_normal(xs_shape).astype("float32")
    w = rng.standard_normal(w_shape).astype("float32")
    xs, ws = arg("float32", xs_shape, 0), arg("float32", w_shape, 1)
    y = xs.conv(ws, stride, pad)
    grads = differentiate(Graph([xs, ws], [y]), seeds=True)
    gy = rng.standard_normal(y.shape).astype("float32")
    graph = Graph(grads.inputs, [y, *grads.outputs])
    ex = compile_llvm(compile_program(graph))
    got, want = ex.run([x, w, gy]), run_graph(graph, [x, w, gy])
    assert not ex.fallbacks, ex.fallbacks
    for k, (a, b) in enumerate(zip(got, want, strict=True)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max(), err_msg=str(k))


INT_CONVS = {
    **CONVS,
    "3x3_stride2_pad2": ((2, 8, 7, 3), (3, 3, 3, 5), 2, 2),
    "odd_channels": ((1, 7, 9, 7), (2, 3, 7, 9), 1, 0),
    "one_by_one_image": ((1, 1, 1, 1), (1, 1, 1, 1), 1, 0),
    "empty_out_channels": ((2, 5, 5, 3), (3, 3, 3, 0), 1, 1),
}


@pytest.mark.parametrize("wide", [False, True], ids=["small", "wide"])
@pytest.mark.parametrize("layout", list(GRAD_LAYOUTS))
@pytest.mark.parametrize("dtype", list(INTS))
@pytest.mark.parametrize("name", list(INT_CONVS))
def test_integer_conv_and_gradients_are_native_and_exact(name, dtype, layout, wide):
    """An integer convolution and both its gradient cores render as loop kernels (no
    fallback), bit for bit numpy's (wrapping where the values overflow), over NHWC arrays or
    NCHW ones read through a permute."""
    xs_shape, w_shape, stride, pad = INT_CONVS[name]
    rng = np.random.default_rng(RNG_SEED)
    x, w = int_values(dtype, xs_shape, rng, wide), int_values(dtype, w_shape, rng, wide)
    y_shape = EVAL[Op.CONV](x, w, (stride, pad)).shape
    perm = GRAD_LAYOUTS[layout]
    back = tuple(perm.index(d) for d in range(4))
    x_held = np.ascontiguousarray(x.transpose(perm))
    g_held = int_values(dtype, [y_shape[p] for p in perm], rng, wide)
    xs, ws, gs = arg(dtype, x_held.shape, 0), arg(dtype, w_shape, 1), arg(dtype, g_held.shape, 2)
    xv = xs.permute(back) if perm != (0, 1, 2, 3) else xs
    g = gs.permute(back) if perm != (0, 1, 2, 3) else gs
    y = xv.conv(ws, stride, pad)
    dx = g.conv_input_grad(ws, stride, pad, x.shape[1:3])
    dw = xv.conv_weight_grad(g, stride, pad, w.shape[:2])
    ex, got, want = run_both([xs, ws, gs], [y, y * 2 + 1, dx, dw], [x_held, w, g_held])
    assert not ex.fallbacks, ex.fallbacks
    for k, (a, b) in enumerate(zip(got, want, strict=True)):
        assert a.dtype == b.dtype == np.dtype(dtype), k
        np.testing.assert_array_equal(a, b, err_msg=f"output {k}")


@pytest.mark.parametrize("name", list(CONV_VIEWS))
def test_integer_conv_over_views(name):
    xv, wv = CONV_VIEWS[name]
    rng = np.random.default_rng(RNG_SEED)
    x, w = (
        int_values("int32", (3, 9, 9, 3), rng, True),
        int_values("int32", (3, 3, 3, 4), rng, True),
    )
    xs, ws = arg("int32", x.shape, 0), arg("int32", w.shape, 1)
    a, b = (xv or (lambda v: v))(xs), (wv or (lambda v: v))(ws)
    ex, (got,), (want,) = run_both([xs, ws], [a.conv(b, 2, 1)], [x, w])
    assert not ex.fallbacks, ex.fallbacks
    np.testing.assert_array_equal(got, want)


def test_bool_and_mixed_integer_convs():
    """A conv of bools is numpy's OR of ANDs; int32 with int64 computes in int64."""
    rng = np.random.default_rng(RNG_SEED)
    for xd, wd in (("bool", "bool"), ("int32", "int64")):
        x, w = int_values(xd, (2, 6, 6, 3), rng, True), int_values(wd, (3, 3, 3, 2), rng, True)
        xs, ws = arg(xd, x.shape, 0), arg(wd, w.shape, 1)
        y = xs.conv(ws, 1, 1)
        g = int_values(y.dtype, y.shape, rng, True)
        gs = arg(y.dtype, g.shape, 2)
        dx = gs.conv_input_grad(ws, 1, 1, (6, 6))
        dw = xs.conv_weight_grad(gs, 1, 1, (3, 3))
        ex, got, want = run_both([xs, ws, gs], [y, dx, dw], [x, w, g])
        assert not ex.fallbacks, ex.fallbacks
        for a, b in zip(got, want, strict=True):
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)


def test_integer_conv_on_the_thread_pool():
    """A convolution and its input gradient large enough to be split over images on the pool,
    and the weight gradient beside them, give numpy's exact results."""
    rng = np.random.default_rng(RNG_SEED)
    x, w = (
        int_values("int64", (8, 20, 20, 16), rng, True),
        int_values("int64", (3, 3, 16, 8), rng, True),
    )
    xs, ws = arg("int64", x.shape, 0), arg("int64", w.shape, 1)
    y = xs.conv(ws, 1, 1)
    g = int_values("int64", y.shape, rng, True)
    gs = arg("int64", g.shape, 2)
    dx, dw = gs.conv_input_grad(ws, 1, 1, (20, 20)), xs.conv_weight_grad(gs, 1, 1, (3, 3))
    ex, got, want = run_both([xs, ws, gs], [y, dx, dw], [x, w, g])
    assert not ex.fallbacks, ex.fallbacks
    if runtime.available():  # each of the three cores is split over the pool
        assert ex.source("llvm").count("call void @needlec_parallel_for") >= 3
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- logsoftmax

LSM = [("float32", (7, 9)), ("float32", (1, 1)), ("float32", (3, 1025)), ("float32", (5, 1))]
LSM += [("float64", (7, 9)), ("float64", (3, 1025)), ("int32", (7, 9)), ("float32", (0, 4))]


@pytest.mark.parametrize("dtype,shape", LSM, ids=[f"{d}-{s[0]}x{s[1]}" for d, s in LSM])
def test_logsoftmax(dtype, shape):
    rng = np.random.default_rng(RNG_SEED)
    x = random_values(dtype, math.prod(shape), rng, -30, 30).reshape(shape)
    xs = arg(dtype, shape, 0)
    _, (got,), (want,) = run_both([xs], [xs.logsoftmax()], [x])
    scale = 1 + np.abs(want.astype(np.float64))
    assert_within(Op.LOGSOFTMAX, got, want, n=shape[1], scale=scale)


@pytest.mark.parametrize("dtype", FLOATS)
def test_logsoftmax_special_values(dtype):
    x = _special_rows(dtype)
    xs = arg(dtype, x.shape, 0)
    _, (got,), (want,) = run_both([xs], [xs.logsoftmax()], [x])
    scale = 1 + np.abs(want.astype(np.float64))
    assert_within(Op.LOGSOFTMAX, got, want, n=x.shape[1], scale=scale, sources=(x,))


# ---------------------------------------------------------------- the executable itself


def test_running_twice_gives_identical_bits():
    rng = np.random.default_rng(RNG_SEED)
    x = rng.standard_normal((65, 1025)).astype("float32")
    y = rng.standard_normal((1025, 33)).astype("float32")
    xs, ys = arg("float32", x.shape, 0), arg("float32", y.shape, 1)
    outs = [xs.sum((1,)), xs.sum((0,)), xs.logsumexp((1,)), xs @ ys, xs.logsoftmax(), xs.exp()]
    ex = compile_llvm(compile_program(Graph([xs, ys], outs)))
    first = ex.run([x, y])
    second = ex.run([x.copy(), y.copy()])
    for k, (a, b) in enumerate(zip(first, second, strict=True)):
        assert np.array_equal(_bits(a), _bits(b)), f"output {k} differs between runs"


def test_every_kernel_value_kind_renders():
    x, w, seed = arg("float64", (4, 3), 0), arg("float64", (3, 5), 1), arg("int64", (), 2)
    r = Node.leaf(Op.RAND, "float64", (4, 5), ("uniform", 0), (seed,))
    c = Node.leaf(Op.CONST, "float64", (4, 5), 1.5)
    graph = Graph([x, w, seed], [x @ w + r * c, x.sum((1,))])
    program = compile_program(graph)
    held = {e.op for k in program.kernels.kernels for e in k.exprs}
    assert set(KOp) <= held, f"no kernel holds a value of {sorted(set(KOp) - held)}"
    rng = np.random.default_rng(RNG_SEED)
    arrays = [rng.standard_normal((4, 3)), rng.standard_normal((3, 5)), np.asarray(7, "int64")]
    got = compile_llvm(program).run([a.copy() for a in arrays])
    for a, b in zip(run_graph(graph, arrays), got, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12)


def test_lowering_error_names_the_node(monkeypatch):
    def broken(b, xs, e, dt):
        raise ValueError("no rule today")

    monkeypatch.setitem(render.LOWER, Op.TANH, broken)
    xs = arg("float32", (4, 3), 0)
    out = (xs * 2.0).tanh() + 1.0
    with pytest.raises(render.LoweringError) as info:
        compile_llvm(compile_program(Graph([xs], [out])))
    message = str(info.value)
    assert "while lowering v" in message and "tanh" in message, message
    assert "no rule today" in message, message


# ---------------------------------------------------------------- the budget table


@pytest.mark.parametrize(
    "op", [op for op in Op if op not in LEAF | {Op.RAND}], ids=lambda o: o.name.lower()
)
def test_every_op_has_a_tolerance_row(op):
    assert op in TOLERANCE, f"{op} has no row in needlec.ir.ops.TOLERANCE"
    kind, c = TOLERANCE[op]
    assert kind in ("exact", "ulp", "order") and c >= 0 and (kind == "exact") == (c == 0)


def test_tolerance_has_no_rows_for_leaves():
    assert not set(TOLERANCE) & (LEAF | {Op.RAND})


def gemm_calls(source: str) -> int:
    """Calls of a float32 GEMM in LLVM source: BLAS's or our own (mgemm)."""
    names = (
        "needlec_sgemm",
        "needlec_gemm_float32",
        "needlec_gemms_float32",
        "needlec_gemmsn_float32",
    )
    return sum(source.count(f'call void @"{name}"') for name in names)


@pytest.mark.parametrize(
    "a_shape,b_shape,calls",
    [
        ((16, 20, 32), (32, 8), 1),  # a linear layer on (B, T, D): one GEMM over B*T rows
        ((2, 3, 1, 5), (5, 4), 1),  # one row per batch index
        ((2, 2, 3, 4), (1, 4, 6), 1),  # B broadcast over a size-1 batch dim
        ((4, 1, 7), (1, 7, 3), 1),
        ((3, 5, 7), (3, 7, 2), "loop"),  # B differs per batch: one GEMM in a batch loop
    ],
)
def test_batched_matmul_with_one_right_matrix_is_one_gemm(a_shape, b_shape, calls):
    rng = np.random.default_rng(RNG_SEED)
    x, y = (rng.standard_normal(s).astype("float32") for s in (a_shape, b_shape))
    a, b = arg("float32", a_shape, 0), arg("float32", b_shape, 1)
    ex, (got,), (want,) = run_both([a, b], [a @ b], [x, y])
    source = ex.source("llvm-unoptimized")
    assert gemm_calls(source) == 1
    assert ("bat.head" in source) == (calls == "loop")  # a loop over the batch, not unrolled
    n, scale = _matmul_budget(x, y)
    assert_within(Op.MATMUL, got, want, n=n, scale=scale)


def test_batched_matmul_over_permuted_rows_stays_per_batch():
    """Rows of consecutive batches that do not follow each other in memory: one GEMM each."""
    rng = np.random.default_rng(RNG_SEED)
    x = rng.standard_normal((5, 4, 6)).astype("float32")
    y = rng.standard_normal((6, 3)).astype("float32")
    a, b = arg("float32", x.shape, 0), arg("float32", y.shape, 1)
    av = a.permute((1, 0, 2))  # (4, 5, 6): batch stride 6, row stride 24
    ex, (got,), (want,) = run_both([a, b], [av @ b], [x, y])
    np.testing.assert_allclose(got, x.transpose(1, 0, 2) @ y, rtol=1e-5, atol=1e-5)
    n, scale = _matmul_budget(x.transpose(1, 0, 2), y)
    assert_within(Op.MATMUL, got, want, n=n, scale=scale)


def test_small_matrices_of_one_right_operand_read_through_a_transpose_are_packed_then_one_gemm():
    rng = np.random.default_rng(RNG_SEED)
    x = rng.standard_normal((16, 24, 20)).astype("float32")  # held (B, K, M), read as (B, M, K)
    y = rng.standard_normal((24, 10)).astype("float32")
    a, b = arg("float32", x.shape, 0), arg("float32", y.shape, 1)
    ex, (got,), (want,) = run_both([a, b], [a.permute((0, 2, 1)) @ b], [x, y])
    assert gemm_calls(ex.source("llvm-unoptimized")) == 1
    n, scale = _matmul_budget(x.transpose(0, 2, 1), y)
    assert_within(Op.MATMUL, got, want, n=n, scale=scale)


def test_steps_reading_other_slices_of_one_buffer_share_one_function():
    """An RNN's steps read the same buffers at other offsets (step t's slice of the inputs):
    each reads through a pointer moved to its slice, so the steps are one function in the
    module, called with other pointers, and every step's numbers are still its own."""
    import needlec as nc
    from needlec import ops

    def rnn(x, h, w):
        for xt in ops.split(x, axis=0):  # (5, 3, 4) -> five (3, 4) slices
            h = ops.tanh(xt + h @ w)
        return h

    rng = np.random.default_rng(RNG_SEED)
    x = rng.standard_normal((5, 3, 4)).astype("float32")
    h = rng.standard_normal((3, 4)).astype("float32")
    w = rng.standard_normal((4, 4)).astype("float32") * 0.5
    low = nc.jit(rnn).lower(x, h, w)
    steps = [k for k in low.kernels.kernels if k.kind == "gemm"]
    offsets = {e.arg.view.offset for k in steps for e in k.exprs if e.op.name == "LOAD"}
    assert len(steps) == 5 and len(offsets) == 5  # the steps read x at five offsets
    source = low.executable.source("llvm-unoptimized")
    assert source.count('define internal void @"kernel_') <= 2, source.count("define")
    want = h.astype(np.float64)
    for t in range(5):
        want = np.tanh(x[t].astype(np.float64) + want @ w)
    got = nc.jit(rnn)(nc.Tensor(x), nc.Tensor(h), nc.Tensor(w)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("op", ["sum", "max"])
def test_column_reductions_run_in_fixed_chunks_with_the_same_bits(op):
    """A sum over the rows of a row-major matrix (a bias gradient, BatchNorm's statistics)
    runs its rows in a fixed number of chunks on the pool, each into copies of its own that are
    combined in order: 1 and 2 threads give the same bits, and numpy's numbers."""
    from needlec.codegen.llvm import runtime
    from needlec.codegen.llvm.program import compile_program as compile_llvm
    from needlec.passes import compile_program

    rng = np.random.default_rng(RNG_SEED)
    x = rng.standard_normal((16387, 67)).astype("float32")
    a = arg("float32", x.shape, 0)
    y = a * a + a
    out = y.sum((0,)) if op == "sum" else y.max((0,))
    before = runtime.num_threads()
    try:
        got = []
        for threads in (1, 2):
            runtime.set_num_threads(threads)
            ex = compile_llvm(compile_program(Graph([a], [out])))
            assert "part.sum" in ex.source("llvm-unoptimized")  # chunked on one thread too
            got.append(ex.run([x])[0])
    finally:
        runtime.set_num_threads(before)
    if op == "max":  # exact: the elementwise part in float32, as numpy computes it
        np.testing.assert_array_equal(got[1], (x * x + x).max(0))
    else:
        x64 = x.astype(np.float64)
        np.testing.assert_allclose(got[1], (x64 * x64 + x64).sum(0), rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(got[0].view(np.int32), got[1].view(np.int32))
