"""Memory planning: hand-built schedules with offsets worked out by hand, a verifier that catches
broken plans, real training steps run out of one arena, and random schedules."""

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from needlec import nn
from needlec.codegen.reference import run_graph
from needlec.ir import Graph, Node, Op
from needlec.ir.schedule import Buffer, Step
from needlec.passes.memory import (
    PlanError,
    align_up,
    plan_graph,
    plan_memory,
    run_planned,
    verify_plan,
)

from .steps import lower_sgd_step


def temps(*sizes, prefix="t"):
    return [Buffer(f"{prefix}{k}", n) for k, n in enumerate(sizes)]


def chain_steps(bufs, x):
    """bufs[0] = f(x), bufs[k] = f(bufs[k-1])."""
    srcs = [x, *bufs[:-1]]
    return [Step(f"s{k}", (s,), (b,)) for k, (s, b) in enumerate(zip(srcs, bufs, strict=True))]


# ---------------------------------------------------------------- hand-built schedules


def test_chain():
    # x -> a -> b -> c -> out, 256 B each. Live: a 0..1, b 1..2, c 2..3, out 3..end.
    # Greedy (ties by first step): a at 0; b meets a -> above it, 256; c meets only b -> the
    # gap below b, 0. Arena 512 = the peak (two temps live at steps 1 and 2); no reuse is 768.
    x, out = Buffer("x", 256, "input"), Buffer("out", 256, "output")
    a, b, c = temps(256, 256, 256)
    steps = chain_steps([a, b, c, out], x)
    plan = verify_plan(steps, plan_memory(steps))
    assert [plan.offsets[t] for t in (a, b, c)] == [0, 256, 0]
    assert (plan.arena_bytes, plan.peak_live_bytes, plan.sum_temp_bytes) == (512, 512, 768)
    assert plan.output_offsets == {out: 0} and plan.output_block_bytes == 256
    assert plan.live[out] == (3, 3) and plan.live[a] == (0, 1)
    assert (plan.input_bytes, plan.output_bytes, plan.donated_bytes) == (256, 256, 0)


def test_diamond():
    # a = f(x); b = g(a); c = h(a); out = k(b, c). Sizes a 128, b 64, c 192.
    # Live: a 0..2, b 1..3, c 2..3: all three at step 2, so no reuse is possible.
    # Largest first: c at 0; a meets c -> 192; b meets both -> 320. Arena 384 = peak = sum.
    x, out = Buffer("x", 64, "input"), Buffer("out", 64, "output")
    a, b, c = temps(128, 64, 192)
    steps = [
        Step("a", (x,), (a,)),
        Step("b", (a,), (b,)),
        Step("c", (a,), (c,)),
        Step("out", (b, c), (out,)),
    ]
    plan = verify_plan(steps, plan_memory(steps))
    assert [plan.offsets[t] for t in (a, b, c)] == [192, 320, 0]
    assert (plan.arena_bytes, plan.peak_live_bytes, plan.sum_temp_bytes) == (384, 384, 384)
    assert plan.peak_step == 2


def test_long_chain_needs_two_buffers():
    # 20 temps of 1000 B in a chain: t_k live k..k+1, so two at a time. Offsets alternate
    # 0, 1024 (1000 rounded up to 64); arena align_up(1024 + 1000) = 2048, peak 2000, sum 20000.
    x = Buffer("x", 1000, "input")
    bufs = temps(*[1000] * 20)
    steps = chain_steps([*bufs, Buffer("out", 4, "output")], x)
    plan = verify_plan(steps, plan_memory(steps))
    assert [plan.offsets[t] for t in bufs] == [0, 1024] * 10
    assert (plan.arena_bytes, plan.peak_live_bytes, plan.sum_temp_bytes) == (2048, 2000, 20000)
    # with byte alignment the arena is exactly two buffers
    assert plan_memory(steps, alignment=1).arena_bytes == 2000


def test_late_read_keeps_a_buffer_alive():
    # a = f(x) is read at step 1 and again at step 5; b..e chain through steps 1..4; 512 B each.
    # Live: a 0..5, b 1..2, c 2..3, d 3..4, e 4..5. a at 0; b -> 512; c meets a, b -> 1024;
    # d meets a, c -> the gap 512; e meets a, d -> 1024. Arena 1536: a plus two of the chain.
    x = Buffer("x", 512, "input")
    a, b, c, d, e = temps(*[512] * 5)
    out = Buffer("out", 512, "output")
    steps = [
        Step("a", (x,), (a,)),
        Step("b", (a,), (b,)),
        Step("c", (b,), (c,)),
        Step("d", (c,), (d,)),
        Step("e", (d,), (e,)),
        Step("out", (a, e), (out,)),
    ]
    plan = verify_plan(steps, plan_memory(steps))
    assert plan.live[a] == (0, 5)
    assert [plan.offsets[t] for t in (a, b, c, d, e)] == [0, 512, 1024, 512, 1024]
    assert plan.arena_bytes == plan.peak_live_bytes == 1536


def test_multi_write_step_and_dead_temp():
    # one step writes p and q (a fused kernel); q is never read. Live: p 0..1, q 0..0, r 1..1.
    # Largest first: p at 0; r meets p -> 128; q meets p (not r) -> 128. Arena 256 (228 aligned);
    # peak 200 at step 1 (p and r).
    x = Buffer("x", 8, "input")
    p, q, r = temps(100, 50, 100)
    steps = [Step("pq", (x,), (p, q)), Step("r", (p,), (r,))]
    plan = verify_plan(steps, plan_memory(steps))
    assert plan.live[q] == (0, 0)
    assert plan.offsets == {p: 0, r: 128, q: 128}
    assert plan.arena_bytes == 256 and plan.peak_live_bytes == 200


def test_zero_sized_buffers_take_no_space():
    x = Buffer("x", 8, "input")
    a, z, b = temps(64, 0, 64)
    steps = [Step("a", (x,), (a,)), Step("z", (a,), (z,)), Step("b", (a, z), (b,))]
    plan = verify_plan(steps, plan_memory(steps))
    assert plan.offsets[z] == 0 and plan.arena_bytes == 128


@pytest.mark.parametrize(
    "steps, message",
    [
        ([Step("s", (Buffer("a", 4),), ())], "which no earlier step writes"),
        ([Step("s", (), (Buffer("x", 4, "input"),))], "a buffer of kind 'input'"),
        ([Step("s", (), (Buffer("a", 4, "bogus"),))], "a buffer of kind 'bogus'"),
    ],
)
def test_bad_schedules_are_refused(steps, message):
    with pytest.raises(PlanError, match=message):
        plan_memory(steps)


def test_a_buffer_written_twice_is_refused():
    a = Buffer("a", 4)
    with pytest.raises(PlanError, match="already written by step 0"):
        plan_memory([Step("s0", (), (a,)), Step("s1", (), (a,))])


# ---------------------------------------------------------------- donations


def sgd_schedule(elementwise=True, read_later=False):
    """g = grad(x); w_new = update(w, g) donated over w; optionally a later step reads w."""
    x, w = Buffer("x", 256, "input"), Buffer("w", 256, "input")
    g, w_new, y = Buffer("g", 256), Buffer("w_new", 256, "output"), Buffer("y", 256, "output")
    steps = [
        Step("g", (x, w), (g,)),
        Step("w_new", (w, g), (w_new,), {"elementwise": elementwise}),
    ]
    if read_later:
        steps.append(Step("y", (w,), (y,)))
    return steps, w, w_new


def test_donation_accepted_by_an_elementwise_update():
    steps, w, w_new = sgd_schedule()
    plan = verify_plan(steps, plan_memory(steps, {w_new: w}))
    assert plan.aliases == {w_new: w} and w_new not in plan.output_offsets
    assert plan.output_block_bytes == 0 and plan.donated_bytes == 256
    (d,) = plan.accepted
    assert d.reason == "w last read at step 1, w_new written at step 1"


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        ({"elementwise": False}, "step 1 (w_new) reads w while writing w_new and is not marked"),
        ({"read_later": True}, "w is read by step 2 (y), after step 1 writes w_new"),
    ],
)
def test_donation_refused(kwargs, reason):
    steps, w, w_new = sgd_schedule(**kwargs)
    plan = verify_plan(steps, plan_memory(steps, {w_new: w}))
    assert not plan.aliases and w_new in plan.output_offsets
    (d,) = plan.refused
    assert d.reason.startswith(reason)


def test_donation_refusals_name_the_reason():
    x, small = Buffer("x", 256, "input"), Buffer("small", 4, "input")
    a, b = Buffer("a", 256, "output"), Buffer("b", 256, "output")
    t = Buffer("t", 256)
    steps = [Step("t", (x,), (t,)), Step("a", (t,), (a,)), Step("b", (t,), (b,))]
    cases = [
        ({a: x, b: x}, "x is already donated to a"),
        ({a: small}, "a needs 256 bytes, small has 4"),
        ({t: x}, "t is a temp buffer, not an output"),
        ({a: t}, "t is a temp buffer, not an input"),
        ({Buffer("nobody", 4, "output"): x}, "no step writes nobody"),
    ]
    for donations, reason in cases:
        plan = verify_plan(steps, plan_memory(steps, donations))
        assert plan.refused[-1].reason == reason
    plan = plan_memory(steps, {a: x}, keep=[x])
    assert plan.refused[0].reason == "x is returned as it is, so its value must survive the call"


# ---------------------------------------------------------------- the verifier


def good_plan():
    x = Buffer("x", 256, "input")
    a, b, c = temps(256, 256, 256)
    out = Buffer("out", 256, "output")
    steps = chain_steps([a, b, c, out], x)
    return steps, plan_memory(steps), (x, a, b, c, out)


@pytest.mark.parametrize(
    "broken, message",
    [
        (
            lambda p, a, b, c, o: {"offsets": {a: 0, b: 128, c: 0}},
            r"t0 \[0, 256\) live at steps 0..1 and t1 \[128, 384\) live at steps 1..2 overlap in the arena; both are live at step 1",
        ),
        (
            lambda p, a, b, c, o: {"offsets": {a: 0, b: 256, c: 32}},
            "t2 at arena offset 32 is not aligned to 64",
        ),
        (
            lambda p, a, b, c, o: {"arena_bytes": 384},
            r"t1 at \[256, 512\) exceeds the arena of 384 bytes",
        ),
        (lambda p, a, b, c, o: {"offsets": {a: 0, b: 256}}, "temp t2 must have exactly one home"),
        (lambda p, a, b, c, o: {"output_offsets": {}}, "output out must have exactly one home"),
        (lambda p, a, b, c, o: {"offsets": {a: 0, b: 256, c: 0, o: 256}}, "output out must have"),
    ],
)
def test_verifier_catches_broken_plans(broken, message):
    steps, plan, (_, a, b, c, out) = good_plan()
    verify_plan(steps, plan)
    bad = dataclasses.replace(plan, **broken(plan, a, b, c, out))
    with pytest.raises(PlanError, match=message):
        verify_plan(steps, bad)


def test_verifier_catches_bad_donations():
    steps, w, w_new = sgd_schedule(read_later=True)
    plan = plan_memory(steps, {w_new: w})
    assert plan.refused
    y_only = {b: o for b, o in plan.output_offsets.items() if b is not w_new}
    forced = dataclasses.replace(plan, aliases={w_new: w}, output_offsets=y_only)
    with pytest.raises(PlanError, match=r"w_new is written over w at step 1, but step 2 \(y\)"):
        verify_plan(steps, forced)
    steps, w, w_new = sgd_schedule(elementwise=False)
    forced = dataclasses.replace(plan_memory(steps), aliases={w_new: w}, output_offsets={})
    with pytest.raises(PlanError, match="which it reads, and is not marked elementwise"):
        verify_plan(steps, forced)


def test_verifier_catches_overlapping_outputs():
    x = Buffer("x", 8, "input")
    o1, o2 = Buffer("o1", 64, "output"), Buffer("o2", 64, "output")
    steps = [Step("o1", (x,), (o1,)), Step("o2", (x,), (o2,))]
    plan = verify_plan(steps, plan_memory(steps))
    assert plan.output_offsets == {o1: 0, o2: 64}
    with pytest.raises(PlanError, match="overlap in the output block"):
        verify_plan(steps, dataclasses.replace(plan, output_offsets={o1: 0, o2: 0}))


def test_as_text_and_analysis():
    steps, w, w_new = sgd_schedule()
    plan = plan_memory(steps, {w_new: w})
    text = plan.as_text()
    assert "arena 256 B, peak live 256 B" in text
    assert "g         temp             256  0..1        arena+0" in text
    assert "w_new     output           256  1..1        over w" in text
    assert "donate w_new -> w: accepted" in text
    a = plan.analysis()
    assert (a.arena_bytes, a.sum_temp_bytes, a.input_bytes, a.output_bytes, a.donated_bytes) == (
        256,
        256,
        512,
        256,
        256,
    )
    assert "donated_bytes" in a.as_text()


# ---------------------------------------------------------------- real training steps


def train_step_graph(model, x, y):
    lowered, arrays = lower_sgd_step(model, x, y)
    assert not lowered.traced.random
    return lowered.traced, arrays


def check_training_step(name, traced, arrays):
    graph = traced.graph
    plan = plan_graph(graph, traced)
    verify_plan(plan.steps, plan)
    a = plan.analysis()
    print(f"\n{name}: {len(plan.steps)} steps\n{a.as_text()}")
    assert a.peak_live_bytes <= a.arena_bytes < a.sum_temp_bytes
    n_data = sum(kind == "data" for kind, _ in traced.writes)
    assert len(plan.accepted) == n_data and not plan.refused
    want = run_graph(graph, arrays)
    got = run_planned(graph, plan, arrays)
    for k, (u, v) in enumerate(zip(want, got, strict=True)):
        np.testing.assert_array_equal(v, u, err_msg=f"output {k}")
    return plan


def test_mlp_training_step():
    rng = np.random.default_rng(0)
    model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
    x = rng.standard_normal((8, 784)).astype("float32")
    y = rng.integers(0, 10, 8).astype("float32")
    traced, arrays = train_step_graph(model, x, y)
    plan = check_training_step("MLP 784-256-10, batch 8", traced, arrays)
    params = sum(int(np.prod(p.shape)) * 4 for p in model.parameters())
    assert plan.donated_bytes == 2 * params  # every parameter and its momentum, in place

    # a plan that clobbers (every temp at offset 0) fails the verifier and changes the numbers
    biggest = max(b.nbytes for b in plan.offsets)
    bad = dataclasses.replace(
        plan, offsets=dict.fromkeys(plan.offsets, 0), arena_bytes=align_up(biggest, 64)
    )
    with pytest.raises(PlanError, match="overlap in the arena"):
        verify_plan(plan.steps, bad)
    got = run_planned(traced.graph, bad, arrays)
    want = run_graph(traced.graph, arrays)
    assert not all(np.array_equal(u, v) for u, v in zip(want, got, strict=True))


def test_resnet9_training_step():
    from needlec.apps.models import ResNet9

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 32, 32)).astype("float32")
    y = rng.integers(0, 10, 2).astype("float32")
    traced, arrays = train_step_graph(ResNet9(), x, y)
    check_training_step("ResNet9, batch 2", traced, arrays)


# ---------------------------------------------------------------- random schedules


@st.composite
def schedules(draw):
    """A random DAG of steps: each reads some earlier buffers, writes one or two new ones."""
    sizes = st.integers(0, 5000)
    inputs = [Buffer(f"in{k}", draw(sizes), "input") for k in range(draw(st.integers(0, 3)))]
    avail, steps = list(inputs), []
    for i in range(draw(st.integers(1, 25))):
        reads = draw(st.lists(st.sampled_from(avail), max_size=3)) if avail else []
        kinds = st.sampled_from(["temp", "temp", "temp", "output"])
        writes = [
            Buffer(f"b{i}.{k}", draw(sizes), draw(kinds)) for k in range(draw(st.integers(1, 2)))
        ]
        steps.append(
            Step(f"s{i}", tuple(reads), tuple(writes), {"elementwise": draw(st.booleans())})
        )
        avail += writes
    outs = [b for s in steps for b in s.writes if b.kind == "output"]
    donations = {}
    if inputs and outs:
        for out in draw(st.lists(st.sampled_from(outs), unique_by=id)):
            donations[out] = draw(st.sampled_from(inputs))
    return steps, donations, draw(st.sampled_from([1, 4, 64, 256]))


@settings(max_examples=200, deadline=None)
@given(schedules())
def test_random_schedules_verify(case):
    steps, donations, alignment = case
    plan = verify_plan(steps, plan_memory(steps, donations, alignment))
    assert plan.peak_live_bytes <= plan.arena_bytes
    no_reuse = sum(align_up(b.nbytes, alignment) for b in plan.offsets)
    assert plan.arena_bytes <= no_reuse  # greedy never does worse than no reuse
    assert len(plan.donations) == len(donations)
    assert plan.output_bytes == plan.donated_bytes + sum(b.nbytes for b in plan.output_offsets)


@st.composite
def elementwise_graphs(draw):
    """A random graph over captured vectors, some outputs written back over their captures."""
    n = draw(st.integers(1, 6))
    ins = [Node.leaf(Op.INPUT, "float32", (n,), ("capture", k)) for k in range(3)]
    nodes = list(ins)
    for _ in range(draw(st.integers(1, 20))):
        x, y = draw(st.sampled_from(nodes)), draw(st.sampled_from(nodes))
        op = draw(st.sampled_from(["add", "mul", "max", "neg", "tanh", "view", "sum"]))
        if op == "view":  # a reshape there and back: reads through views
            nodes.append(Node.make(Op.RESHAPE, Node.make(Op.RESHAPE, x, arg=(n, 1)), arg=(n,)))
        elif op == "sum":  # a reduction broadcast back: not elementwise
            s = Node.make(Op.RESHAPE, Node.make(Op.SUM, x, arg=(0,)), arg=(1,))
            nodes.append(Node.make(Op.BROADCAST, s, arg=(n,)) + y)
        elif op in ("neg", "tanh"):
            nodes.append(Node.make(Op[op.upper()], x))
        else:
            nodes.append(Node.make({"add": Op.ADD, "mul": Op.MUL, "max": Op.MAXIMUM}[op], x, y))
    user = draw(st.lists(st.sampled_from(nodes), min_size=1, max_size=3))
    written = draw(st.lists(st.integers(0, 2), unique=True))
    state = [draw(st.sampled_from(nodes)) for _ in written]
    captured = [object() for _ in ins]
    traced = SimpleNamespace(writes=[("data", captured[k]) for k in written], captured=captured)
    return Graph(ins, user + state), traced, n


@settings(max_examples=200, deadline=None)
@given(elementwise_graphs(), st.integers(0, 2**31))
def test_random_graphs_run_out_of_the_arena(case, seed):
    graph, traced, n = case
    plan = plan_graph(graph, traced, alignment=4)
    verify_plan(plan.steps, plan)
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(n).astype("float32") for _ in graph.inputs]
    want = run_graph(graph, arrays)
    for u, v in zip(want, run_planned(graph, plan, arrays), strict=True):
        np.testing.assert_array_equal(v, u)
