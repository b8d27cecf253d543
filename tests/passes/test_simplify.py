"""The rewrite engine, simplification and layout: golden text per rule, numerics preserved.

Golden tests build a small graph by hand, run one pass, and compare the printed result with the
expected text. The property tests run random graphs and real training steps through the reference
interpreter before and after, and require the same numbers bit for bit (every rule is exact).
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from needlec import nn
from needlec.codegen.reference import run_graph
from needlec.ir import Graph, Node, Op
from needlec.passes import optimize
from needlec.passes.layout import assign_layouts
from needlec.passes.rewrite import P, RewriteError, count_ops, rewrite
from needlec.passes.simplify import simplify

from .steps import lower_sgd_step


def inp(shape, k=0, dtype="float32"):
    return Node.leaf(Op.INPUT, dtype, shape, ("arg", k))


def body(g: Graph) -> list[str]:
    """The printed node lines (no header, no return)."""
    return [line.strip() for line in g.as_text().splitlines()[1:-1]]


# ---------------------------------------------------------------- the engine


def test_pattern_binds_names_and_checks_args():
    x = inp((3,))
    n = (x * 2.0).exp()
    pat = P(Op.EXP, P(Op.MUL_SCALAR, P.var("a"), arg=2.0, name="m"))
    assert pat.match(n) == {"a": x, "m": x * 2.0}
    assert P(Op.EXP, P(Op.MUL_SCALAR, P.var("a"), arg=3.0)).match(n) is None
    assert P(Op.LOG).match(n) is None


def test_a_name_used_twice_must_bind_one_node():
    x, y = inp((3,)), inp((3,), 1)
    same = P(Op.ADD, P.var("a"), P.var("a"))
    assert same.match(x + x) == {"a": x}
    assert same.match(x + y) is None


def test_rewrite_reaches_a_fixed_point_through_new_nodes():
    # the rule makes a node another rule rewrites: exp(neg(neg(x))) needs both to settle
    x = inp((3,))
    rules = [
        (P(Op.LOG, P.var("x")), lambda x: x.neg().neg()),  # log x -> --x (a test rule)
        (P(Op.NEG, P(Op.NEG, P.var("x"))), lambda x: x),  # --x -> x
    ]
    g = rewrite(Graph([x], [x.log().exp()]), rules)
    assert g.outputs[0] is x.exp()


def test_rewrite_is_iterative_on_deep_graphs():
    x = inp((2,))
    y = x
    for _ in range(5000):
        y = (y * 1.0).tanh()
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    try:
        g = simplify(Graph([x], [y]))
    finally:
        sys.setrecursionlimit(limit)
    assert count_ops(g, {Op.MUL_SCALAR}) == 0 and count_ops(g, {Op.TANH}) == 5000


def test_a_rule_that_changes_the_type_is_an_error():
    x = inp((3,))
    bad = [(P(Op.EXP, P.var("x")), lambda x: x.sum())]
    with pytest.raises(RewriteError, match=r"f32\[3\] exp into f32\[\]"):
        rewrite(Graph([x], [x.exp()]), bad)


def test_a_rule_cycle_is_reported():
    x = inp((3,))
    flip = [
        (P(Op.EXP, P.var("x")), lambda x: x.tanh()),
        (P(Op.TANH, P.var("x")), lambda x: x.exp()),
    ]
    with pytest.raises(RewriteError, match="no fixed point"):
        rewrite(Graph([x], [x.exp()]), flip, max_steps=100)


# ---------------------------------------------------------------- simplify, golden text


def test_golden_scalar_identities():
    x = inp((2, 3))
    g = simplify(Graph([x], [((x * 1.0) - 0.0).neg().neg().exp() / 1.0]))
    assert body(g) == ["%1:f32[2,3] = exp %0"]


def test_adding_plus_zero_is_kept_since_it_turns_minus_zero_positive():
    x = inp((2,))
    g = simplify(Graph([x], [x + 0.0]))
    assert body(g) == ["%1:f32[2] = add_scalar %0 c=0.0"]
    out = run_graph(g, [np.array([-0.0, 1.0], dtype="float32")])[0]
    assert not np.signbit(out[0])  # -0.0 + 0.0 is +0.0, as numpy computes it


def test_minus_zero_and_zero_args_are_different_nodes():
    x = inp((2,))
    assert (x * -0.0) is not (x * 0.0)
    c = Node.const(np.array([-0.0, 0.0], dtype="float32"))
    g = simplify(Graph([x], [x * c]))  # not folded into one fill of 0.0
    out = run_graph(g, [np.ones(2, dtype="float32")])[0]
    assert list(np.signbit(out)) == [True, False]


def test_golden_constant_folding_keeps_fills_small():
    x = inp((2, 2))
    c = Node.const(2.0, (2, 2))
    folded = (c * 3.0).exp()  # a fill: folded into one constant
    g = simplify(Graph([x], [x + folded]))
    value = float(np.float32(np.exp(np.float32(6.0))))
    assert body(g) == [f"%1:f32[2,2] = const {value!r}", "%2:f32[2,2] = add %0 %1"]


def test_golden_movement_chains_collapse():
    x = inp((2, 3, 4))
    y = x.reshape((6, 4)).reshape((24,)).reshape((2, 12))
    z = x.permute((1, 0, 2)).permute((1, 0, 2))  # the inverse: gone
    w = x.permute((2, 0, 1)).permute((2, 0, 1))  # composes into one
    g = simplify(Graph([x], [y, z, w]))
    assert body(g) == [
        "%1:f32[2,12] = reshape %0 shape=(2,12)",
        "%2:f32[3,4,2] = permute %0 perm=(1,2,0)",
    ]
    assert g.outputs[1] is x


def test_golden_broadcast_of_broadcast_and_fill_movement():
    x = inp((3,))
    y = x.broadcast_to((2, 3)).broadcast_to((4, 2, 3))
    c = Node.const(1.5, (3,)).broadcast_to((2, 3)).permute((1, 0))
    g = simplify(Graph([x], [y, c]))
    assert body(g) == [
        "%1:f32[4,2,3] = broadcast %0 shape=(4,2,3)",
        "%2:f32[3,2] = const 1.5",
    ]


def test_inexact_rewrites_are_not_made():
    x = inp((3,))
    kept = [(x * 3.0) * 5.0, x.log().exp(), x * 0.0, x - x]  # rounding, domain, NaN
    g = simplify(Graph([x], kept))
    assert g.outputs == tuple(kept)


def test_random_nodes_are_never_merged_or_dropped_as_duplicates():
    seed = Node.leaf(Op.INPUT, "int64", (), ("seed", 0))
    a = Node.leaf(Op.RAND, "float32", (4,), ("uniform", 0), src=(seed,))
    b = Node.leaf(Op.RAND, "float32", (4,), ("uniform", 1), src=(seed,))
    g = simplify(Graph([seed], [a * 1.0, b * 1.0]))
    assert g.outputs == (a, b)


def test_int_identities_keep_their_type():
    i = inp((3,), dtype="int64")
    g = simplify(Graph([i], [i * 1.0]))  # int * 1.0 is a float: not the same value type
    assert g.outputs[0].dtype == "float32" and g.outputs[0].src == (i,)


# ---------------------------------------------------------------- layout


def test_golden_nchw_nhwc_pairs_cancel_across_an_activation():
    x = inp((2, 4, 4, 3))  # NHWC, as a convolution computes
    nchw = x.permute((0, 3, 1, 2))
    act = (nchw.relu() * 2.0).permute((0, 2, 3, 1))  # back to NHWC for the next convolution
    g = assign_layouts(simplify(Graph([x], [act])))
    assert body(g) == ["%1:f32[2,4,4,3] = relu %0", "%2:f32[2,4,4,3] = mul_scalar %1 c=2.0"]


def test_layout_leaves_a_permute_that_cannot_cancel():
    x = inp((2, 3))
    g = assign_layouts(Graph([x], [x.exp().permute((1, 0))]))
    assert body(g) == ["%1:f32[2,3] = exp %0", "%2:f32[3,2] = permute %1 perm=(1,0)"]


# ---------------------------------------------------------------- numerics preserved


BUILD = {
    "mul1": lambda a, b, shape: a * 1.0,
    "add0": lambda a, b, shape: a + 0.0,
    "neg": lambda a, b, shape: a.neg(),
    "tanh": lambda a, b, shape: a.tanh(),
    "add": lambda a, b, shape: a + b,
    "mul": lambda a, b, shape: a * b,
    "tt": lambda a, b, shape: a.permute((1, 0)).permute((1, 0)),
    "rr": lambda a, b, shape: a.reshape((12,)).reshape(shape),
    "bsum": lambda a, b, shape: a.sum((0,)).broadcast_to(shape),
    "cmul": lambda a, b, shape: a * Node.const(1.0, shape),
    "cadd": lambda a, b, shape: a + Node.const(2.0, shape).exp(),
    "relu": lambda a, b, shape: a.relu(),
}


def _random_graph(draw_ops, shape=(3, 4)):
    x, y = inp(shape), inp(shape, 1)
    vals = [x, y]
    for op, i, j in draw_ops:
        vals.append(BUILD[op](vals[i % len(vals)], vals[j % len(vals)], shape))
    return Graph([x, y], vals[2:][-3:])


OPS = sorted(BUILD)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(OPS), st.integers(0, 20), st.integers(0, 20)),
        min_size=1,
        max_size=12,
    ),
    st.integers(0, 2**31 - 1),
)
def test_random_graphs_give_the_same_numbers_after_each_pass(ops, seed):
    g = _random_graph(ops)
    rng = np.random.default_rng(seed)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -1.0], dtype="float32")
    xs = []
    for _ in range(2):
        x = rng.standard_normal((3, 4)).astype("float32")
        mask = rng.random((3, 4)) < 0.3  # some zeros of both signs, infinities and NaNs
        x[mask] = rng.choice(special, mask.sum())
        xs.append(x)
    want = run_graph(g, xs)
    for step in (simplify, assign_layouts, optimize):
        got = run_graph(step(g), xs)
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)  # NaN where NaN
            np.testing.assert_array_equal(np.signbit(a), np.signbit(b))  # and -0.0 where -0.0


def _mlp():
    np.random.seed(0)
    model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
    rng = np.random.default_rng(0)
    x = rng.random((16, 784), dtype="float32")
    return model, x, rng.integers(0, 10, 16).astype("float32")


def _resnet9():
    from needlec.apps.models import ResNet9

    np.random.seed(0)
    rng = np.random.default_rng(0)
    x = rng.random((2, 3, 32, 32), dtype="float32")
    return ResNet9(), x, rng.integers(0, 10, 2).astype("float32")


@pytest.mark.parametrize("make", [_mlp, _resnet9], ids=["mlp", "resnet9"])
def test_real_training_steps_keep_their_numbers_and_shrink(make, capsys):
    lowered, values = lower_sgd_step(*make())
    traced, optimized = lowered.traced.graph, lowered.graph
    for a, b in zip(run_graph(optimized, values), run_graph(traced, values), strict=True):
        np.testing.assert_array_equal(a, b)
    before, after = len(traced.nodes), len(optimized.nodes)
    permutes = count_ops(traced, {Op.PERMUTE}), count_ops(optimized, {Op.PERMUTE})
    with capsys.disabled():
        print(f"\n  {make.__name__}: {before} -> {after} nodes, permutes {permutes}")
    assert after < before
    # no identity left behind: x*1, x+0, reshape/broadcast to the same shape
    for n in optimized.nodes:
        assert not (n.op is Op.MUL_SCALAR and n.arg == 1.0)
        assert not (n.op is Op.ADD_SCALAR and n.arg == 0.0)
        assert not (n.op in (Op.RESHAPE, Op.BROADCAST) and n.shape == n.src[0].shape)
        assert not (n.op is Op.PERMUTE and n.src[0].op is Op.PERMUTE)


def _draw(shape=(3, 4), stream=0):
    seed = Node.leaf(Op.INPUT, "int64", (), ("seed", 0))
    return seed, Node.leaf(Op.RAND, "float32", shape, ("uniform", stream), src=(seed,))


@pytest.mark.parametrize(
    "op,bound,value",
    [(Op.CMPLT, 1.0, True), (Op.CMPLT, 2.0, True), (Op.CMPLT, 0.0, False), (Op.CMPEQ, 1.0, False)],
)
def test_a_uniform_draw_against_a_bound_it_always_meets_is_a_constant(op, bound, value):
    seed, u = _draw()
    out = Node.make(op, u, Node.const(bound, u.shape, "float32"))
    g = simplify(Graph([seed], [out]))
    assert g.outputs[0].op is Op.CONST and g.outputs[0].arg == value
    assert count_ops(g, [Op.RAND]) == 0  # the draw went with its only use


@pytest.mark.parametrize("op,bound", [(Op.CMPLT, 0.5), (Op.CMPEQ, 0.5), (Op.CMPLT, 0.999)])
def test_a_uniform_draw_against_a_bound_inside_its_range_stays(op, bound):
    seed, u = _draw()
    out = Node.make(op, u, Node.const(bound, u.shape, "float32"))
    g = simplify(Graph([seed], [out]))
    assert count_ops(g, [Op.RAND]) == 1


def test_dropout_with_p_zero_is_the_identity_under_jit_and_other_draws_keep_their_streams():
    import needlec as nc

    np.random.seed(0)
    keep, drop = nn.Dropout(0.0), nn.Dropout(0.5)
    x = np.random.rand(6, 7).astype("float32")
    f = nc.jit(lambda a: (keep(a), drop(a)))
    low = f.lower(x)
    assert count_ops(low.graph, [Op.RAND]) == 1  # only p=0.5's mask is drawn
    np.random.seed(3)
    same, dropped = f(x)
    np.testing.assert_array_equal(same.numpy(), x)
    assert 0 < (dropped.numpy() == 0).mean() < 1
