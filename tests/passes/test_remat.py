"""Rematerialization: hand-built forward/backward graphs with golden plans, and real training steps.

Hand-built graphs use f32[4,8] values (128 B each) unless said otherwise; each test works out the
minimum cut by hand in its comments. Run with `pytest -s` to see what remat chose on the steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pytest

from needlec import nn
from needlec.ir import COMPUTE, LEAF, MOVEMENT, RANDOM, Graph, Node, Op, toposort
from needlec.passes.remat import (
    MAX_RECOMPUTE_DEPTH,
    RematPlan,
    banned_nodes,
    recomputable,
    rematerialize,
    split_forward,
)

from .steps import sgd_step_graph


def arg(i: int, shape=(4, 8), dtype: str = "float32") -> Node:
    return Node.leaf(Op.INPUT, dtype, shape, ("arg", i))


def assert_valid(graph: Graph, forward_outputs: Sequence[Node], plan: RematPlan) -> None:
    """Every value a backward node reads is a leaf, a backward value, saved, or recomputable from
    saved values and leaves (walked back, never reaching a value that must not be recomputed)."""
    forward = set(toposort(forward_outputs))
    assert not plan.saved & plan.recompute
    assert plan.saved <= forward and plan.recompute <= forward
    assert not any(n.op in LEAF for n in plan.saved | plan.recompute)
    assert plan.saved_bytes <= plan.naive_bytes
    for n in plan.recompute:
        assert n.op not in COMPUTE and n.op not in RANDOM, n
    for b in graph.nodes:
        if b in forward or b.op in LEAF:
            continue
        todo = [s for s in b.src if s in forward]
        while todo:  # walk back from each backward input to saved values and leaves
            n = todo.pop()
            if n.op in LEAF or n in plan.saved:
                continue
            assert n in plan.recompute, f"backward reads {n!r}: neither saved nor recomputed"
            assert recomputable(n), n
            todo.extend(n.src)


def plan_of(outputs: Sequence[Node], inputs: Sequence[Node], **kw) -> tuple[Graph, RematPlan]:
    graph = Graph(inputs, outputs)
    plan = rematerialize(graph, outputs[:1], **kw)
    assert_valid(graph, outputs[:1], plan)
    return graph, plan


# ---------------------------------------------------------------- hand-built graphs


def test_matmul_saved_relu_tanh_chain_recomputed():
    # forward: h = x @ w, a = relu(h), t = tanh(a), loss = sum(t)
    # backward: dh = (1 - t*t) * (h > 0), dw = x^T @ dh; it reads t and h
    # naive: save t and h = 256 B. Cut: save h (128 B, a matmul: never recomputed) and
    # recompute a = relu(h), t = tanh(a) in the backward: 128 B.
    x, w = arg(0), arg(1, (8, 8))
    h = x @ w
    a = h.relu()
    t = a.tanh()
    loss = t.sum()
    dh = (1.0 - t * t) * (h > 0).cast("float32")
    _, plan = plan_of([loss, x.transpose() @ dh], [x, w])
    assert plan.needed == {h, t}
    assert plan.saved == {h} and plan.recompute == {a, t}
    assert (plan.saved_bytes, plan.naive_bytes) == (128, 256)


def test_max_depth_zero_recomputes_nothing():
    # same graph; max_depth=0 bans every non-movement recompute, so both t and h are saved
    x, w = arg(0), arg(1, (8, 8))
    h = x @ w
    t = h.relu().tanh()
    dh = (1.0 - t * t) * (h > 0).cast("float32")
    _, plan = plan_of([t.sum(), x.transpose() @ dh], [x, w], max_depth=0)
    assert plan.saved == {h, t} and not plan.recompute
    assert plan.saved_bytes == plan.naive_bytes == 256


def test_random_is_saved_not_redrawn():
    # forward: r = rand(seed), y = x * r, loss = sum(y); backward: dx = g * r reads r.
    # Recomputing r from the seed (an input, free) would cost 0 B, but random draws are never
    # recomputed: source -> r.in is infinite, so the cut saves r: 128 B.
    seed = arg(2, (), "int64")
    x = arg(0)
    r = Node.leaf(Op.RAND, "float32", (4, 8), ("uniform", 0), src=(seed,))
    loss = (x * r).sum()
    dx = Node.const(1.0, (4, 8)) * r
    _, plan = plan_of([loss, dx], [x, arg(1), seed])
    assert plan.saved == {r} and not plan.recompute
    assert (plan.saved_bytes, plan.naive_bytes) == (128, 128)


def test_random_saved_exp_of_it_recomputed():
    # forward: r = rand, e = exp(r), loss = sum(x * e); backward reads r and e (naive 256 B).
    # Cut: save r (128 B), recompute e = exp(r).
    seed = arg(1, (), "int64")
    x = arg(0)
    r = Node.leaf(Op.RAND, "float32", (4, 8), ("normal", 0), src=(seed,))
    e = r.exp()
    loss = (x * e).sum()
    _, plan = plan_of([loss, e * r], [x, seed])
    assert plan.saved == {r} and plan.recompute == {e}
    assert (plan.saved_bytes, plan.naive_bytes) == (128, 256)


def test_save_the_input_of_two_cheap_ops():
    # forward: h = x @ w, e = exp(h), t = tanh(h), loss = sum(e * t)
    # backward reads e and t (two outputs, 256 B). Saving their common input h (128 B) and
    # recomputing both beats saving both.
    x, w = arg(0), arg(1, (8, 8))
    h = x @ w
    e, t = h.exp(), h.tanh()
    loss = (e * t).sum()
    back = e + (1.0 - t * t)
    _, plan = plan_of([loss, back], [x, w])
    assert plan.saved == {h} and plan.recompute == {e, t}
    assert (plan.saved_bytes, plan.naive_bytes) == (128, 256)


def test_tie_saves_the_later_value():
    # forward: h = x @ w, a = relu(h), loss = sum(a); backward reads a only.
    # Saving h (recompute a) and saving a both cost 128 B; on a tie the cut nearest the sink is
    # taken: save a, recompute nothing.
    x, w = arg(0), arg(1, (8, 8))
    a = (x @ w).relu()
    _, plan = plan_of([a.sum(), a * 2.0], [x, w])
    assert plan.saved == {a} and not plan.recompute


def test_bool_mask_is_cheaper_than_its_float_cast():
    # forward: h = x @ w, m = h > 0 (bool, 32 B), f = cast(m) (f32, 128 B), loss = sum(h * f)
    # backward reads f only: save m (32 B) and recompute the cast, rather than f or h (128 B).
    x, w = arg(0), arg(1, (8, 8))
    h = x @ w
    m = h > 0
    f = m.cast("float32")
    _, plan = plan_of([(h * f).sum(), f * 3.0], [x, w])
    assert plan.saved == {m} and plan.recompute == {f}
    assert (plan.saved_bytes, plan.naive_bytes) == (32, 128)


def test_recompute_depth_is_bounded():
    # forward: h = x @ w, x1 = exp(h), ..., x12 = exp(x11), loss = sum(x12);
    # backward reads h and x12 (256 B naive).
    # Unbounded: save h, recompute the 12 exps (128 B).
    # max_depth=8: x9 is at depth 9 > 8, so it may not be recomputed; x12 can then only come from
    # a saved x9, x10, x11 or itself, all 128 B: the tie saves x12, recompute nothing (256 B).
    x, w = arg(0), arg(1, (8, 8))
    h = x @ w
    chain = [h]
    for _ in range(12):
        chain.append(chain[-1].exp())
    outs = [chain[-1].sum(), chain[-1] * h]
    _, free = plan_of(outs, [x, w], max_depth=None)
    assert free.saved == {h} and free.recompute == set(chain[1:])
    assert free.saved_bytes == 128
    _, bounded = plan_of(outs, [x, w], max_depth=8)
    assert bounded.saved == {h, chain[-1]} and not bounded.recompute
    forward, _ = split_forward(Graph([x, w], outs), outs[:1])
    assert banned_nodes(forward, 8) == {h, chain[9], outs[0]}  # the loss: 32 -> 1 sum


def test_movement_ops_do_not_count_toward_depth():
    # eight exps with a reshape between each pair: depth 8 (movement counts 0), so allowed
    x, w = arg(0), arg(1, (8, 8))
    h = x @ w
    v = h
    for k in range(8):
        v = v.exp().reshape((8, 4) if k % 2 == 0 else (4, 8))
    _, plan = plan_of([v.sum(), v * h], [x, w])
    assert plan.saved == {h} and len(plan.recompute) == 16


def test_small_reductions_are_recomputed_large_ones_saved():
    # h = x @ w: f32[4,2] (32 B); s = sum(h, axis 1): f32[4] (16 B), reduces 2 elements per output
    # (<= REDUCE_RATIO): backward reads h and s, so save h and recompute s (32 B, naive 48 B).
    x = arg(0)
    h = x @ arg(1, (8, 2))
    s = h.sum((1,))
    _, plan = plan_of([s.sum(), h * s.reshape((4, 1)).broadcast_to((4, 2))], [x, arg(1, (8, 2))])
    assert plan.saved == {h} and plan.recompute == {s}
    assert (plan.saved_bytes, plan.naive_bytes) == (32, 48)
    # h: f32[4,8], s reduces 8 elements per output (> 4): not recomputed, both saved (128 + 16 B)
    w = arg(1, (8, 8))
    h = x @ w
    s = h.sum((1,))
    _, plan = plan_of([s.sum(), h * s.reshape((4, 1)).broadcast_to((4, 8))], [x, w])
    assert plan.saved == {h, s} and not plan.recompute


def test_inputs_and_constants_are_free():
    # the backward reads only inputs and a forward constant: nothing to save
    x, w = arg(0), arg(1, (8, 8))
    c = Node.const(np.arange(32, dtype="float32").reshape(4, 8))
    loss = (x * c).sum()
    _, plan = plan_of([loss, x * c * 2.0 + w.sum()], [x, w])
    assert plan.needed == {x * c}
    # x * c is recomputed from an input and a constant for free
    assert not plan.saved and plan.recompute == {x * c} and plan.saved_bytes == 0


def test_forward_only_graph_has_an_empty_plan():
    x, w = arg(0), arg(1, (8, 8))
    _, plan = plan_of([(x @ w).relu().sum()], [x, w])
    assert not plan.saved and not plan.recompute and plan.naive_bytes == 0


def test_recomputable_table():
    x = arg(0, (8, 2))
    w = arg(1, (2, 2))
    yes = [x.exp(), x * 2.0, x.reshape((16,)), x.transpose(), x.sum((1,)), x > 0]
    no = [x @ w, x, x.sum((0,)), x.logsoftmax()]
    no.append(Node.leaf(Op.RAND, "float32", (8, 2), ("uniform", 0), src=(arg(2, (), "int64"),)))
    assert all(recomputable(n) for n in yes)
    assert not any(recomputable(n) for n in no)


def test_as_text_golden():
    x, w = arg(0), arg(1, (8, 8))
    h = x @ w
    t = h.relu().tanh()
    dh = (1.0 - t * t) * (h > 0).cast("float32")
    graph, plan = plan_of([t.sum(), x.transpose() @ dh], [x, w])
    assert plan.as_text().splitlines()[:4] == [
        "remat: save 1 values, 128 B (naive: 2 values, 256 B; 50% less); recompute 2 values",
        "  save      %2:f32[4,8] = matmul %0 %1" + " " * 42 + "128 B",
        "  recompute %3:f32[4,8] = relu %2",
        "  recompute %4:f32[4,8] = tanh %3",
    ]


def test_pure_function_of_the_graph():
    x, w = arg(0), arg(1, (8, 8))
    h = x @ w
    t = h.relu().tanh()
    graph = Graph([x, w], [t.sum(), x.transpose() @ ((1.0 - t * t) * (h > 0).cast("float32"))])
    before = graph.as_text()
    a, b = rematerialize(graph, graph.outputs[:1]), rematerialize(graph, graph.outputs[:1])
    assert graph.as_text() == before
    assert (a.saved, a.recompute, a.saved_bytes) == (b.saved, b.recompute, b.saved_bytes)


# ---------------------------------------------------------------- real training steps


def _mlp() -> Graph:
    rng = np.random.default_rng(0)
    model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
    x = rng.standard_normal((8, 784)).astype("float32")
    return sgd_step_graph(model, x, rng.integers(0, 10, 8).astype("float32"))


def _mlp_resnet() -> Graph:
    from needlec.apps.mlp_resnet import MLPResNet

    rng = np.random.default_rng(0)
    model = MLPResNet(64, hidden_dim=32, num_blocks=2, drop_prob=0.0)
    x = rng.standard_normal((8, 64)).astype("float32")
    return sgd_step_graph(model, x, rng.integers(0, 10, 8).astype("float32"))


def _resnet9() -> Graph:
    from needlec.apps.models import ResNet9

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 32, 32)).astype("float32")
    return sgd_step_graph(ResNet9(), x, rng.integers(0, 10, 2).astype("float32"))


STEPS: dict[str, Callable[[], Graph]] = {
    "mlp": _mlp,
    "mlp_resnet": _mlp_resnet,
    "resnet9": _resnet9,
}


def _depths(recompute: frozenset[Node], order: list[Node]) -> int:
    """The longest chain of non-movement ops inside `recompute` (what the backward replays)."""
    depth: dict[Node, int] = {}
    for n in order:
        if n in recompute:
            inner = [depth[s] for s in n.src if s in depth]
            depth[n] = (n.op not in MOVEMENT) + max(inner, default=0)
    return max(depth.values(), default=0)


@pytest.mark.parametrize("name", list(STEPS))
def test_training_step(name: str):
    graph = STEPS[name]()
    before = graph.as_text()
    loss = graph.outputs[0]
    plan = rematerialize(graph, [loss])
    assert graph.as_text() == before
    assert_valid(graph, [loss], plan)
    assert 0 < plan.saved_bytes < plan.naive_bytes
    assert not any(n.op in (Op.MATMUL, Op.CONV, Op.RAND) for n in plan.recompute)
    assert _depths(plan.recompute, graph.nodes) <= MAX_RECOMPUTE_DEPTH
    ops = sorted({n.op.name.lower() for n in plan.recompute})
    print(
        f"\n[{name}] {len(graph.nodes)} nodes; saved {len(plan.saved)} values,"
        f" {plan.saved_bytes} B; naive {len(plan.needed)} values, {plan.naive_bytes} B;"
        f" recompute {len(plan.recompute)} values ({', '.join(ops)})"
    )
    print(plan.as_text())


def test_mlp_step_plan():
    # forward: h = x @ W1 + b1 (8x256), a = relu(h), logits = a @ W2 + b2 (8x10), loss.
    # The backward reads h (for the relu mask), a (for dW2), logits and logsumexp (softmax) and the
    # one-hot labels. Saving h (8 KiB) and recomputing a = relu(h) beats saving both (16 KiB).
    graph = _mlp()
    plan = rematerialize(graph, graph.outputs[:1])
    saved = {n.op for n in plan.saved}
    recomputed = {n.op for n in plan.recompute}
    assert Op.RELU in recomputed and Op.RELU not in saved
    assert Op.ADD in saved  # h = x @ W1 + b1
    assert plan.saved_bytes <= plan.naive_bytes - 8 * 256 * 4
