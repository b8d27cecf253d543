"""The whole pipeline on real training steps: what it decides, and that the numbers hold.

The MLP step (784-256-10, SGD with momentum) and ResNet9's step go through `jit(...).lower()`;
the tests pin down the kernel counts, bytes moved and memory plan with bounds explained inline,
and compare the fused program's outputs with the reference interpreter on the traced graph.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import needlec as nc
from needlec import nn
from needlec.codegen.kernels import run_kernels
from needlec.codegen.reference import run_graph
from needlec.ir import ELEMENTWISE, Graph, Node, Op
from needlec.ir.ops import CONVS
from needlec.passes import GRAPH_STEPS, PIPELINE, compile_program

from .steps import lower_sgd_step


@pytest.fixture(scope="module")
def mlp():
    np.random.seed(0)
    model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
    rng = np.random.default_rng(0)
    x = rng.random((128, 784), dtype="float32")
    return lower_sgd_step(model, x, rng.integers(0, 10, 128).astype("float32"))


@pytest.fixture(scope="module")
def resnet9():
    from needlec.apps.models import ResNet9

    np.random.seed(0)
    rng = np.random.default_rng(0)
    x = rng.random((2, 3, 32, 32), dtype="float32")
    return lower_sgd_step(ResNet9(), x, rng.integers(0, 10, 2).astype("float32"))


def test_the_pipeline_is_one_list_of_named_steps():
    names = [name for name, _ in PIPELINE]
    assert names == [
        "verify",
        "simplify",
        "assign_layouts",
        "merge_gemms",
        "verify",
        "rematerialize",
        "fuse",
        "legalize",
        "plan_memory",
    ]
    assert GRAPH_STEPS == names.index("rematerialize")


@pytest.mark.parametrize("case", ["mlp", "resnet9"])
def test_the_fused_program_computes_what_the_traced_graph_does(case, request):
    lowered, values = request.getfixturevalue(case)
    want = run_graph(lowered.traced.graph, values)
    got = run_kernels(lowered.kernels, values)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def report(name, lowered) -> str:
    cost, mem = lowered.cost_analysis(), lowered.memory_analysis()
    remat = lowered.program.remat
    return (
        f"\n  {name}: {len(lowered.traced.graph.nodes)} -> {len(lowered.graph.nodes)} nodes, "
        f"{len(lowered.kernels.kernels)} kernels, {cost.flops:,} flops, {cost.bytes:,} B moved; "
        f"arena {mem.arena_bytes:,} B vs {mem.sum_temp_bytes:,} B of intermediates, "
        f"{mem.donated_bytes:,} B updated in place; remat saves {remat.saved_bytes:,} B "
        f"({len(remat.saved)} values) instead of {remat.naive_bytes:,} B, "
        f"recomputes {len(remat.recompute)}"
    )


def test_mlp_step_kernels_bytes_and_memory(mlp, capsys):
    lowered, _ = mlp
    kg = lowered.kernels
    with capsys.disabled():
        print(report("mlp", lowered))
    kinds = [k.kind for k in kg.kernels]
    # six matmuls (2 forward, 2 for dX/dW of the last layer, dW of the first; dX of the first
    # layer's input is dead and removed): each is one GEMM kernel with its epilogue, and the
    # loss row reductions and the bias-gradient column sums run after the cores of the GEMMs
    # whose outputs they read: no other kernel
    assert kinds == ["gemm"] * 5
    # every elementwise node runs inside a kernel with a GEMM or a reduction: no elementwise op
    # of the backward runs alone
    for k in kg.kernels:
        if any(n.op in ELEMENTWISE for n in k.nodes):
            assert k.core is not None or any(n.op in (Op.SUM, Op.MAX) for n in k.nodes)
    cost = lowered.cost_analysis()
    matmul_flops = sum(
        2 * np.prod(n.shape) * n.src[0].shape[-1] for n in lowered.graph.nodes if n.op is Op.MATMUL
    )
    assert cost.flops >= matmul_flops
    # bytes moved: the parameters and the batch are read a few times, never once per node
    params = sum(v.nbytes for v in _captured(lowered))
    assert cost.bytes < 6 * params
    mem = lowered.memory_analysis()
    # the intermediates left between the five kernels (activations, output gradients) are
    # mostly live at once: the arena holds no more than their sum
    assert mem.peak_live_bytes <= mem.arena_bytes <= mem.sum_temp_bytes
    # the first layer's weight and its momentum (98% of the state) are updated in place; the
    # small ones written by reduction kernels, or before their last reader, are refused (the
    # plan says why) and go to the output block
    # (W2's update could also wait for the dX GEMM that reads the old W2, but that keeps the
    # 128 KiB hidden activation alive longer than the 20 KiB it saves: the planner keeps the
    # order that needs less memory)
    w1 = 784 * 256 * 4
    assert mem.donated_bytes >= 2 * w1
    refused = lowered.program.memory.refused
    assert all(d.reason for d in refused) and sum(d.output.nbytes for d in refused) < params / 50


def _captured(lowered):
    return [t.numpy() for t in lowered.traced.captured]


def test_resnet9_step_kernels_bytes_and_memory(resnet9, capsys):
    lowered, _ = resnet9
    kg = lowered.kernels
    with capsys.disabled():
        print(report("resnet9", lowered))
    kinds = [k.kind for k in kg.kernels]
    convs = sum(1 for n in lowered.graph.nodes if n.op in CONVS)
    assert kinds.count("conv") == convs  # one kernel per convolution or gradient, epilogues inside
    # BatchNorm, ReLU, residual adds and the weight updates fuse into their neighbours: no
    # elementwise, copy or fill kernel is left
    assert kinds.count("elementwise") + kinds.count("copy") + kinds.count("fill") == 0
    # the rest: GEMMs (the linear layer), and reductions: BatchNorm statistics forward and
    # backward (8 batch norms), bias gradient sums and the loss
    assert kinds.count("reduce") <= 4 * 8 + 2
    assert len(kinds) == convs + kinds.count("gemm") + kinds.count("reduce")
    mem = lowered.memory_analysis()
    # temps share memory: the arena is within a few alignment pads of the most live at once
    # (about 61% of the intermediates: the loss and bias-gradient reductions in the last GEMM's
    # kernel keep its buffers live together)
    assert mem.arena_bytes < mem.sum_temp_bytes * 0.65
    assert mem.arena_bytes <= mem.peak_live_bytes * 1.05


def test_rematerialization_saves_less_than_every_forward_value(mlp, resnet9):
    for lowered, _ in (mlp, resnet9):
        remat = lowered.program.remat
        assert remat.saved_bytes < remat.naive_bytes
        assert not any(n.op in (Op.MATMUL, Op.CONV, Op.RAND) for n in remat.recompute)


def test_to_dot_draws_kernels_as_clusters(mlp):
    lowered, _ = mlp
    dot = lowered.graph.to_dot()
    assert dot.startswith("digraph")
    for k in lowered.kernels.kernels:
        assert f"subgraph cluster_{k.name} {{" in dot


def test_render_needs_graphviz_or_says_so(mlp, tmp_path):
    import shutil

    lowered, _ = mlp
    if shutil.which("dot") is None:
        with pytest.raises(RuntimeError, match="Graphviz"):
            lowered.graph.render(str(tmp_path / "step.svg"))
    else:
        path = lowered.graph.render(str(tmp_path / "step.svg"))
        assert (tmp_path / "step.svg").read_text().lstrip().startswith(("<?xml", "<svg"))
        assert path.endswith("step.svg")


def test_debug_passes_prints_every_step(monkeypatch, capsys):
    monkeypatch.setenv("NEEDLEC_DEBUG", "passes,fusion")
    f = nc.jit(lambda x: (nc.ops.relu(x) * 1.0).sum())
    f(np.ones((2, 3), dtype="float32"))
    err = capsys.readouterr().err
    for name, _ in PIPELINE:
        assert f"--- after {name}" in err
    assert "--- fusion" in err and "k0 = " in err
    assert "memory plan:" in err


def test_kernels_are_reordered_so_an_update_follows_the_last_reader():
    from types import SimpleNamespace as K

    from needlec.ir.schedule import Buffer
    from needlec.passes.memory import order_for_donations

    w, g, w_new, dx, x = (Buffer(n, 64) for n in ("w", "g", "w_new", "dx", "x"))
    update = K(name="update", inputs=(w, g), outputs=(w_new,))  # w - lr * g
    reader = K(name="dx", inputs=(x, w), outputs=(dx,))  # reads the old w, independent of update
    order = order_for_donations([update, reader], {w_new: w})
    assert [k.name for k in order] == ["dx", "update"]
    # a reader that needs the update's result cannot move before it: the order stays
    late = K(name="late", inputs=(w, w_new), outputs=(dx,))
    assert [k.name for k in order_for_donations([update, late], {w_new: w})] == ["update", "late"]


# ---------------------------------------------------------------- random graphs, every step

SHAPE = (4, 6)
BUILD = {
    "tanh": lambda a, b: a.tanh(),
    "relu": lambda a, b: a.relu(),
    "add": lambda a, b: a + b,
    "mul": lambda a, b: a * b,
    "scale": lambda a, b: a * 1.0 - 0.0,
    "rowsum": lambda a, b: a.sum((1,)).reshape((4, 1)).broadcast_to(SHAPE),
    "colmax": lambda a, b: a.max((0,)).reshape((1, 6)).broadcast_to(SHAPE),
    "mm": lambda a, b: (a @ b.permute((1, 0))) @ Node.const(np.eye(4, 6, dtype="float32")),
    "flip": lambda a, b: a.flip((0,)),
    "tt": lambda a, b: a.permute((1, 0)).reshape((24,)).reshape((6, 4)).permute((1, 0)),
    "pad": lambda a, b: a.pad(((1, 0), (0, 2))).slice(((0, 4, 1), (1, 7, 1))),
    "where": lambda a, b: (a < b).where(a, b.exp()),
}


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(sorted(BUILD)), st.integers(0, 30), st.integers(0, 30)),
        min_size=1,
        max_size=10,
    ),
    st.integers(1, 3),
    st.integers(0, 2**31 - 1),
)
def test_random_graphs_keep_their_numbers_through_the_whole_pipeline(ops, n_out, seed):
    x, y = (Node.leaf(Op.INPUT, "float32", SHAPE, ("arg", k)) for k in range(2))
    vals = [x, y]
    for op, i, j in ops:
        vals.append(BUILD[op](vals[i % len(vals)], vals[j % len(vals)]))
    g = Graph([x, y], vals[-n_out:])
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal(SHAPE).astype("float32") for _ in range(2)]
    program = compile_program(g, n_results=1)
    want = run_graph(g, xs)
    for a, b in zip(run_kernels(program.kernels, xs), want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_an_empty_reduction_gives_its_identity_in_kernels():
    x = Node.leaf(Op.INPUT, "float32", (0, 3), ("arg", 0))
    g = Graph([x], [x.logsumexp((0,)), x.sum((0,))])
    xs = [np.zeros((0, 3), dtype="float32")]
    got = run_kernels(compile_program(g).kernels, xs)
    np.testing.assert_array_equal(got[0], np.full(3, -np.inf, dtype="float32"))
    np.testing.assert_array_equal(got[1], np.zeros(3, dtype="float32"))


def test_strided_conv_gradients_cost_what_the_forward_costs():
    """The weight and input gradients of a stride-4 7x7 convolution are single cores of their
    own (no dilated gradient, no phases): each does the forward's multiply-adds, and the
    SGD update reads the gradient in the weight's own layout."""
    rng = np.random.default_rng(0)
    conv = nn.Conv(3, 8, 7, stride=4)
    x = nc.Tensor(rng.standard_normal((2, 3, 32, 32)).astype("float32"), requires_grad=False)
    opt = nc.optim.SGD(conv.parameters(), lr=0.1)

    @nc.jit
    def step(x):
        opt.reset_grad()
        loss = conv(x).sum()
        loss.backward()
        opt.step()
        return loss

    low = step.lower(x)
    kernels = {k.core.op: k for k in low.kernels.kernels if k.core is not None}
    assert set(kernels) == {Op.CONV, Op.CONV_WEIGHT_GRAD}  # x needs no gradient
    forward = kernels[Op.CONV].core.flops()
    assert kernels[Op.CONV_WEIGHT_GRAD].core.flops() == forward
    text = kernels[Op.CONV_WEIGHT_GRAD].as_text()
    assert "store" in text and len(low.kernels.kernels) <= 4  # the update is its epilogue
