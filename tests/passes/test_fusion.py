"""Fusion: golden kernel text for small graphs, refusals, recompute, random graphs against the
reference interpreter, and the kernel counts of real training steps (MLP, ResNet9)."""

from __future__ import annotations

import math
import sys
import textwrap

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import needlec as nc
from needlec import nn
from needlec.codegen.kernels import run_kernels
from needlec.codegen.reference import run_graph
from needlec.ir import COMPUTE, ELEMENTWISE, Graph, Node, Op, stack
from needlec.ir.ops import CONVS
from needlec.ir.schedule import schedule_of_graph
from needlec.passes.fusion import fuse

from .steps import sgd_step_graph


def _x(shape, k=0, dtype="float32"):
    return Node.leaf(Op.INPUT, dtype, shape, ("arg", k))


def _golden(kg, text: str) -> None:
    want = textwrap.dedent(text).strip()
    got = (kg.as_text() + "\n" + kg.report.as_text()).strip()
    assert got == want, f"\n--- got\n{got}\n--- want\n{want}"


def _same_numbers(graph: Graph, kg, xs, rtol=1e-12, atol=1e-12) -> None:
    for a, b in zip(run_graph(graph, xs), run_kernels(kg, xs), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(b, a, rtol=rtol, atol=atol)


# ---------------------------------------------------------------- golden text


def test_elementwise_chain_is_one_kernel():
    x, y = _x((4, 8)), _x((8,), 1)
    kg = fuse(Graph([x, y], [((x * 2.0).exp() + y.broadcast_to((4, 8))).relu().cast("float64")]))
    _golden(
        kg,
        """
        kernels(%0:f32[4,8], %1:f32[8]):
          k0 = elementwise space=(4,8) reads(%0, %1) writes(%7)
            v0:f32[4,8] = load %0 strides=(8,1) offset=0
            v1:f32[4,8] = mul_scalar v0 c=2.0
            v2:f32[4,8] = exp v1
            v3:f32[1,8] = load %1 strides=(0,1) offset=0
            v4:f32[4,8] = add v2 v3
            v5:f32[4,8] = relu v4
            v6:f64[4,8] = cast v5 dtype=float64
            store %7:f64[4,8][i0,i1] = v6
          return (%7)
        fusion: 1 kernels from 8 nodes, 0 refused fusions
          k0 elementwise (4,8) 6 nodes -> %7
        """,
    )


def test_bias_relu_epilogue_joins_the_gemm():
    a, w, b = _x((8, 16)), _x((16, 4), 1), _x((1, 4), 2)
    kg = fuse(Graph([a, w, b], [(a @ w + b.broadcast_to((8, 4))).relu()]))
    _golden(
        kg,
        """
        kernels(%0:f32[8,16], %1:f32[16,4], %2:f32[1,4]):
          k0 = gemm space=(8,4) reads(%0, %1, %2) writes(%6)
            core:f32[8,4] = matmul(%0 shape=(8,16) strides=(16,1) offset=0, %1 shape=(16,4) strides=(4,1) offset=0) at [i0,i1]
            v0:f32[1,4] = load %2 strides=(0,1) offset=0
            v1:f32[8,4] = add core v0
            v2:f32[8,4] = relu v1
            store %6:f32[8,4][i0,i1] = v2
          return (%6)
        fusion: 1 kernels from 7 nodes, 0 refused fusions
          k0 gemm (8,4) 4 nodes -> %6
        """,
    )


def test_transposed_operand_is_a_stride():
    a, w = _x((16, 8)), _x((4, 16), 1)
    kg = fuse(Graph([a, w], [a.transpose() @ w.transpose()]))
    (k,) = kg.kernels
    assert [o.view.strides for o in k.core.operands] == [(1, 8), (1, 16)]


def test_transposed_b_of_several_gemms_is_made_row_major_once():
    """An RNN's backward multiplies each step's gradient by the transposed recurrent weight:
    one copy to row-major order, then every GEMM reads B's rows in place. Autodiff's separate
    transposes of one weight count together; a single use stays a stride."""
    w, hs = _x((6, 12), 0), [_x((3, 12), k + 1) for k in range(3)]
    outs = [h @ w.transpose() for h in hs]  # a transpose node for each, as autodiff writes
    kg = fuse(Graph([w, *hs], outs))
    assert [k.kind for k in kg.kernels] == ["copy", "gemm", "gemm", "gemm"]
    copy = kg.kernels[0]
    assert copy.exprs[0].arg.view.strides == (1, 12)  # reads w transposed, writes it compact
    (made,) = copy.outputs
    for k in kg.kernels[1:]:
        a, b = k.core.operands
        assert b.buffer is made and b.view.strides == (6, 1)
    assert kg.report.notes == [
        f"note: {made.name} in k0: copied: transposed B operand of 3 GEMMs, made row-major once"
    ]
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal(x.shape).astype("float32") for x in kg.graph.inputs]
    _same_numbers(kg.graph, kg, xs, rtol=1e-6, atol=1e-6)
    one = fuse(Graph([w, hs[0]], [hs[0] @ w.transpose()]))
    assert [k.kind for k in one.kernels] == ["gemm"]
    assert one.kernels[0].core.operands[1].view.strides == (1, 12)


def test_a_batch_of_transposed_b_matrices_is_made_row_major_once():
    """Attention's q @ k^T: one GEMM over 6 small products whose B is transposed is read from
    a row-major copy (each product would otherwise pack its own padded panel)."""
    q, k = _x((2, 3, 5, 4), 0), _x((2, 3, 5, 4), 1)
    kg = fuse(Graph([q, k], [q @ k.permute((0, 1, 3, 2))]))
    assert [kk.kind for kk in kg.kernels] == ["copy", "gemm"]
    (made,) = kg.kernels[0].outputs
    assert kg.kernels[1].core.operands[1].buffer is made
    assert kg.report.notes == [
        f"note: {made.name} in k0: copied: transposed B operand of 6 batched products, "
        "made row-major once"
    ]
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal(x.shape).astype("float32") for x in kg.graph.inputs]
    _same_numbers(kg.graph, kg, xs, rtol=1e-6, atol=1e-6)


def test_softmax_is_one_kernel():
    x = _x((4, 10))
    e = (x - x.max((1,)).reshape((4, 1)).broadcast_to((4, 10))).exp()
    kg = fuse(Graph([x], [e / e.sum((1,)).reshape((4, 1)).broadcast_to((4, 10))]))
    _golden(
        kg,
        """
        kernels(%0:f32[4,10]):
          k0 = reduce space=(4,10) reads(%0) writes(%10)
            v0:f32[4,10] = load %0 strides=(10,1) offset=0
            v1:f32[4,1] = reduce_max v0 over=(i1) identity=-inf combiner=maximum
            v2:f32[4,1] = neg v1
            v3:f32[4,10] = add v0 v2
            v4:f32[4,10] = exp v3
            v5:f32[4,1] = reduce_sum v4 over=(i1) identity=0 combiner=add
            v6:f32[4,10] = div v4 v5
            store %10:f32[4,10][i0,i1] = v6
          return (%10)
        fusion: 1 kernels from 11 nodes, 0 refused fusions
          k0 reduce (4,10) 10 nodes -> %10
        """,
    )


def test_reductions_join_the_gemm_epilogue():
    # a column sum and a row sum of a matmul's output run after the core, in its kernel: the
    # output is never written (the bias gradient next to a weight gradient in a training step)
    a, w = _x((8, 16)), _x((16, 4), 1)
    y = a @ w
    kg = fuse(Graph([a, w], [y.sum((0,)), (y * y).sum((1,))]))
    _golden(
        kg,
        """
        kernels(%0:f32[8,16], %1:f32[16,4]):
          k0 = gemm space=(8,4) reads(%0, %1) writes(%3, %5)
            core:f32[8,4] = matmul(%0 shape=(8,16) strides=(16,1) offset=0, %1 shape=(16,4) strides=(4,1) offset=0) at [i0,i1]
            v0:f32[1,4] = reduce_sum core over=(i0) identity=0 combiner=add
            v1:f32[8,4] = mul core core
            v2:f32[8,1] = reduce_sum v1 over=(i1) identity=0 combiner=add
            store %3:f32[4][i1] = v0
            store %5:f32[8][i0] = v2
          return (%3, %5)
        fusion: 1 kernels from 6 nodes, 0 refused fusions
          k0 gemm (8,4) 4 nodes -> %3, %5
        """,
    )
    _same_numbers(kg.graph, kg, [np.random.randn(8, 16), np.random.randn(16, 4)], 1e-5, 1e-5)


def test_refused_fusion_prints_its_reason():
    x, w = _x((2, 4, 4, 3)), _x((3, 3, 3, 2), 1)
    y = x.conv(w, padding=1)
    kg = fuse(Graph([x, w], [y.sum((0, 1, 2)), (y * y).sum((3,))]))
    _golden(
        kg,
        """
        kernels(%0:f32[2,4,4,3], %1:f32[3,3,3,2]):
          k0 = conv space=(2,4,4,2) reads(%0, %1) writes(%2)
            core:f32[2,4,4,2] = conv(%0 shape=(2,4,4,3) strides=(48,12,3,1) offset=0, %1 shape=(3,3,3,2) strides=(18,6,2,1) offset=0) stride,padding=(1, 1) at [i0,i1,i2,i3]
            store %2:f32[2,4,4,2][i0,i1,i2,i3] = core
          k1 = reduce space=(2,4,4,2) reads(%2) writes(%3, %5)
            v0:f32[2,4,4,2] = load %2 strides=(32,8,2,1) offset=0
            v1:f32[1,1,1,2] = reduce_sum v0 over=(i0,i1,i2) identity=0 combiner=add
            v2:f32[2,4,4,2] = mul v0 v0
            v3:f32[2,4,4,1] = reduce_sum v2 over=(i3) identity=0 combiner=add
            store %3:f32[2][i3] = v1
            store %5:f32[2,4,4][i0,i1,i2] = v3
          return (%3, %5)
        fusion: 2 kernels from 6 nodes, 2 refused fusions
          k0 conv (2,4,4,2) 1 nodes -> %2
          k1 reduce (2,4,4,2) 3 nodes -> %3, %5
          refused: %2 into k1: also read by 1 other kernel; would recompute conv %2 (never duplicated)
          refused: k0 (writes %2) into k1: a reduction cannot join the epilogue of conv %2
        """,
    )


def test_horizontal_fusion_of_two_reductions_over_one_input():
    x = _x((4, 8))
    kg = fuse(Graph([x], [x.sum((0,)), (x * x).sum((0,))]))
    _golden(
        kg,
        """
        kernels(%0:f32[4,8]):
          k0 = reduce space=(8,4) reads(%0) writes(%1, %3)
            v0:f32[8,4] = load %0 strides=(1,8) offset=0
            v1:f32[8,1] = reduce_sum v0 over=(i1) identity=0 combiner=add
            v2:f32[8,4] = mul v0 v0
            v3:f32[8,1] = reduce_sum v2 over=(i1) identity=0 combiner=add
            store %1:f32[8][i0] = v1
            store %3:f32[8][i0] = v3
          return (%1, %3)
        fusion: 1 kernels from 4 nodes, 0 refused fusions
          k0 reduce (8,4) 3 nodes -> %1, %3
        """,
    )


def test_multi_output_gemm_epilogue():
    a, w = _x((8, 16)), _x((16, 4), 1)
    y = a @ w
    kg = fuse(Graph([a, w], [y.relu(), y.exp()]))
    (k,) = kg.kernels
    assert k.kind == "gemm" and [b.name for b in k.outputs] == ["%3", "%4"]  # y itself not stored


def test_reshape_with_no_view_is_copied_once():
    x, w = _x((4, 6)), _x((8, 2), 1)
    t = x.transpose().reshape((3, 8))  # a GEMM operand must be a view: this one has none
    kg = fuse(Graph([x, w], [t @ w]))
    assert [k.kind for k in kg.kernels] == ["copy", "gemm"]
    assert kg.report.notes == ["note: %2 in k0: copied: reshape %3 has no view of it"]
    copy = kg.kernels[0]
    assert copy.stores[0].buffer.name == "%2" and copy.exprs[0].arg.view.strides == (1, 6)
    # a kernel reading the same transposed input over the same loop nest takes the copy along
    kg2 = fuse(Graph([x, w], [t @ w, x.transpose().reshape((24,)).exp()]))
    assert [k.kind for k in kg2.kernels] == ["elementwise", "gemm"]
    assert [b.name for b in kg2.kernels[0].outputs] == ["%2", "%6"]
    xs = [np.arange(24.0, dtype="float32").reshape(4, 6), np.ones((8, 2), "float32")]
    _same_numbers(kg.graph, kg, xs)


# ---------------------------------------------------------------- recompute


def _shared_exp():
    x, x2, w = _x((4, 8), 0, "float64"), _x((4, 3), 1, "float64"), _x((3, 8), 2, "float64")
    x3 = _x((4, 5), 3, "float64")
    w3 = _x((5, 8), 4, "float64")
    t = x.exp()
    return Graph([x, x2, w, x3, w3], [(x3 @ w3) + t, (x2 @ w) * t]), t


def test_a_value_read_by_two_kernels_is_written_once():
    graph, t = _shared_exp()
    kg = fuse(graph)
    stored = [b.name for k in kg.kernels for b in k.outputs]
    assert "%6" in stored  # t = exp(x), read by the epilogues of two GEMMs
    assert sum(e.op is Op.EXP for k in kg.kernels for e in k.exprs) == 1


def test_recompute_duplicates_into_each_consumer_kernel():
    graph, t = _shared_exp()
    kg = fuse(graph, recompute=frozenset({t}))
    stored = [b.name for k in kg.kernels for b in k.outputs]
    assert "%6" not in stored
    assert sum(e.op is Op.EXP for k in kg.kernels for e in k.exprs) == 2
    rng = np.random.default_rng(0)
    _same_numbers(graph, kg, [rng.standard_normal(n.shape) for n in graph.inputs])


def test_matmul_is_never_duplicated_even_if_asked():
    a, w = _x((8, 16)), _x((16, 4), 1)
    y = a @ w
    kg = fuse(Graph([a, w], [y.sum((0,)), y.max((1,))]), recompute=frozenset({y}))
    assert sum(k.core is not None for k in kg.kernels) == 1


# ---------------------------------------------------------------- random graphs


def _bcast_ok(a, b) -> bool:
    return all(x == y or 1 in (x, y) for x, y in zip(reversed(a), reversed(b), strict=False))


def _factor(n: int, pick) -> tuple:
    out = []
    while n > 1 and len(out) < 3:
        d = pick([d for d in range(2, n + 1) if n % d == 0])
        out.append(d)
        n //= d
        if pick([0, 1, 2]) == 0:
            out.append(1)
    return tuple(out) + ((n,) if n > 1 else ()) or (1,)


UNARY = [
    lambda v: -v, lambda v: v.tanh(), lambda v: v.relu(), lambda v: v.tanh().exp(),
    lambda v: v * 1.5, lambda v: v + 0.25, lambda v: v / 3.0, lambda v: v.stop_gradient(),
    lambda v: (v * v + 1.0).sqrt(), lambda v: (v * v + 1.0).log(), lambda v: v**2,
    lambda v: v.cast("float32").cast("float64"),
]  # fmt: skip
BINARY = [  # x, z broadcastable to shape s
    lambda x, z, s: x + z, lambda x, z, s: x * z, lambda x, z, s: x.maximum(z),
    lambda x, z, s: x - z, lambda x, z, s: x.eq(z).cast("float64") + x,
    lambda x, z, s: (x < z).where(x.broadcast_to(s), z.broadcast_to(s)),
]  # fmt: skip
REDUCTIONS = [lambda x, a: x.sum(a), lambda x, a: x.max(a), lambda x, a: x.logsumexp(a)]


def random_graph(draw_int) -> Graph:
    """A random DAG of elementwise, reduce, movement, matmul, conv and composite ops (float64),
    every choice drawn from `draw_int(lo, hi)`."""

    def pick(seq):
        return seq[draw_int(0, len(seq) - 1)]

    inputs, pool = [], []

    def new_input(shape):
        x = _x(shape, len(inputs), "float64")
        inputs.append(x)
        pool.append(x)
        return x

    for _ in range(draw_int(1, 3)):
        new_input(tuple(pick([1, 2, 3, 4]) for _ in range(draw_int(0, 3))))
    for _ in range(draw_int(1, 16)):
        x = pick(pool[-6:]) if draw_int(0, 3) else pick(pool)
        kind = draw_int(0, 13)
        if kind == 0:
            y = pick(UNARY)(x)
        elif kind in (1, 2):
            z = pick([n for n in pool if _bcast_ok(n.shape, x.shape)])
            s = tuple(np.broadcast_shapes(x.shape, z.shape))
            y = pick(BINARY)(x, z, s)
        elif kind == 3 and x.ndim:
            axes = tuple(a for a in range(x.ndim) if draw_int(0, 1)) or (draw_int(0, x.ndim - 1),)
            y = pick(REDUCTIONS)(x, axes)
        elif kind == 4:
            y = x.reshape(_factor(math.prod(x.shape), pick))
        elif kind == 5:
            y = x.permute(sorted(range(x.ndim), key=lambda _: draw_int(0, 9)))
        elif kind == 6:
            shape = [pick([2, 3]) if d == 1 and draw_int(0, 1) else d for d in x.shape]
            y = x.broadcast_to(([2] if draw_int(0, 1) and len(shape) < 4 else []) + shape)
        elif kind == 7 and x.ndim:
            spec = []
            for d in x.shape:
                a = draw_int(0, d - 1)
                spec.append((a, draw_int(a + 1, d), draw_int(1, 2)))
            y = x.slice(spec)
        elif kind == 8 and x.ndim:
            y = x.flip(tuple(a for a in range(x.ndim) if draw_int(0, 1)) or (0,))
        elif kind == 9:
            y = x.pad([(draw_int(0, 2), draw_int(0, 1)) for _ in x.shape])
        elif kind == 10 and x.ndim:
            y = x.dilate(tuple(a for a in range(x.ndim) if draw_int(0, 1)) or (0,), draw_int(1, 2))
        elif kind == 11:
            z = pick([n for n in pool if n.shape == x.shape])
            y = stack([x, z] + [x] * draw_int(0, 1), draw_int(0, x.ndim))
        elif kind == 12:
            x = x.reshape(x.shape + (1,) * (2 - x.ndim)) if x.ndim < 2 else x
            ws = [n for n in pool if n.ndim == 2 and n.shape[0] == x.shape[-1]]
            w = pick(ws) if ws and draw_int(0, 1) else new_input((x.shape[-1], pick([1, 2, 3])))
            y = x @ w
        elif kind == 13 and x.ndim == 2:
            y = x.logsoftmax()
        elif kind == 13:
            h = pick([3, 4, 5])
            xi = new_input((pick([1, 2]), h, h, pick([1, 2])))
            kk = pick([1, 2, 3])
            w = new_input((kk, kk, xi.shape[3], pick([1, 2])))
            y = xi.conv(w, stride=pick([1, 2]), padding=pick([0, 1]))
        else:
            continue
        pool.append(y)
    outs = [pool[-1]] + [pick(pool) for _ in range(draw_int(0, 2))]
    return Graph(inputs, outs)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_graphs_compute_the_same_numbers(data):
    graph = random_graph(lambda lo, hi: data.draw(st.integers(lo, hi)))
    recompute = frozenset(n for n in graph.nodes if data.draw(st.booleans()))
    kg = fuse(graph, recompute)
    kg.as_text(), kg.to_dot(), kg.cost_analysis().as_text(), kg.report.as_text()
    rng = np.random.default_rng(0)
    xs = [np.asarray(rng.standard_normal(n.shape)) for n in graph.inputs]
    _same_numbers(graph, kg, xs, rtol=1e-9, atol=1e-9)


def test_deep_graphs_do_not_recurse():
    x = _x((4, 3), 0, "float64")
    y = x
    for i in range(4000):  # 12,000 nodes in one loop nest: reductions chained through rows
        y = (y * 0.5 + x).tanh() if i % 3 else y + y.sum((1,)).reshape((4, 1)).broadcast_to((4, 3))
    graph = Graph([x], [y])
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(500)
    try:
        kg = fuse(graph)
        kg.as_text()
        kg.to_dot()
        out = run_kernels(kg, [np.ones((4, 3))])
    finally:
        sys.setrecursionlimit(limit)
    assert len(kg.kernels) == 1
    np.testing.assert_allclose(out[0], run_graph(graph, [np.ones((4, 3))])[0], rtol=1e-12)


# ---------------------------------------------------------------- real training steps


def _step_inputs(graph: Graph, labels: np.ndarray) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    xs = [np.asarray(rng.standard_normal(n.shape) * 0.5).astype(n.dtype) for n in graph.inputs]
    xs[1] = labels.astype(graph.inputs[1].dtype)
    for i, n in enumerate(graph.inputs):
        if n.shape == ():  # hyperparameters: lr, momentum, weight decay
            xs[i] = np.asarray(0.05, dtype=n.dtype)
    return xs


def boundary_violations(kg) -> list[str]:
    """Missed fusions: an elementwise node computed in another kernel than its elementwise
    producer, where nothing stood between them: the producer is no graph output, no other
    kernel (nor a GEMM/conv operand, nor a view) reads it, and the producer's kernel has no
    core or reduction that could refuse the consumer."""
    readers: dict = {}
    for k in kg.kernels:
        for n in k.nodes:
            for s in n.src:
                if s not in k.nodes:
                    readers.setdefault(s, set()).add(k.name if n.op not in COMPUTE else "core")
    writer = {b.name: k for k in kg.kernels for b in k.outputs}
    outputs, bad = set(kg.graph.outputs), []
    for k in kg.kernels:
        for n in k.nodes:
            for s in n.src:
                if n.op not in ELEMENTWISE or s.op not in ELEMENTWISE or s in k.nodes:
                    continue
                plain = writer[kg.names[s]].kind in ("elementwise", "copy")
                if plain and s not in outputs and len(readers[s]) < 2:
                    bad.append(f"{kg.names[s]} -> {kg.names[n]} in {k.name}")
    return bad


def test_mlp_training_step_kernels():
    np.random.seed(0)
    model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
    x = nc.Tensor(np.random.randn(8, 784).astype("float32"))
    y = nc.Tensor(np.random.randint(0, 10, 8).astype("float32"))
    graph = sgd_step_graph(model, x, y)
    kg = fuse(graph)
    cost = kg.cost_analysis()
    steps, _ = schedule_of_graph(graph)
    unfused = sum(b.nbytes for s in steps for b in s.reads + s.writes)
    print(f"\nMLP step: {len(graph.nodes)} nodes, {len(steps)} unfused steps ({unfused:,} B)")
    print(f"  {len(kg.kernels)} kernels, {cost.bytes:,} bytes moved, {cost.flops:,} flops")
    print(kg.report.as_text())
    print(cost.as_text())
    # 6 matmuls (2 forward; dW2, dh, dW1, dx backward), each the core of its own GEMM kernel
    # (two cores never share one), with the bias adds, relu mask and SGD updates as epilogues;
    # the loss (logsumexp, softmax gradient, db2's column sum) joins the second forward GEMM's
    # kernel and db1's column sum (with b1's update) the dh GEMM's kernel, after the core.
    # Nothing else runs as a kernel of its own.
    assert len(kg.kernels) == 6
    assert all(k.kind == "gemm" for k in kg.kernels)
    assert boundary_violations(kg) == []
    # fusion keeps intermediates out of memory: under a quarter of the bytes one kernel per node
    # moves; what is left is mostly W1 (read by 3 GEMMs and the update) and the outputs
    assert cost.bytes < unfused / 4
    _same_numbers(graph, kg, _step_inputs(graph, np.arange(8) % 10), rtol=1e-4, atol=1e-6)


def test_resnet9_training_step_kernels():
    from needlec.apps.models import ResNet9

    np.random.seed(0)
    model = ResNet9()
    x = nc.Tensor(np.random.randn(2, 3, 32, 32).astype("float32"))
    y = nc.Tensor(np.random.randint(0, 10, 2).astype("float32"))
    graph = sgd_step_graph(model, x, y)
    kg = fuse(graph)
    cost = kg.cost_analysis()
    steps, _ = schedule_of_graph(graph)
    unfused = sum(b.nbytes for s in steps for b in s.reads + s.writes)
    kinds = {
        kind: sum(k.kind == kind for k in kg.kernels)
        for kind in ("conv", "gemm", "reduce", "copy", "elementwise", "fill")
    }
    print(f"\nResNet9 step: {len(graph.nodes)} nodes, {len(steps)} unfused steps ({unfused:,} B)")
    print(f"  {len(kg.kernels)} kernels {kinds}, {cost.bytes:,} bytes moved, {cost.flops:,} flops")
    cores = sum(n.op in CONVS | {Op.MATMUL} for n in kg.graph.nodes)
    # every conv, conv gradient and matmul (forward and backward) is the core of its own kernel
    # (the weight updates fuse into the weight gradients' kernels); every other kernel holds a
    # reduction (batch-norm statistics forward and backward, bias gradients)
    assert kinds["conv"] + kinds["gemm"] == cores
    assert kinds["copy"] + kinds["elementwise"] + kinds["fill"] == 0
    assert len(kg.kernels) == cores + kinds["reduce"]
    assert kinds["reduce"] <= 4 * 8 + 2  # 8 batch norms (forward + backward) and 2 linear biases
    assert boundary_violations(kg) == []
    assert cost.bytes < unfused / 4
    _same_numbers(graph, kg, _step_inputs(graph, np.arange(2)), rtol=2e-3, atol=2e-4)
