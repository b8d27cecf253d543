"""Merging GEMMs: hand-built graphs (what merges, what must not), and the LSTM language model.

Each hand-built graph is run through the reference interpreter before and after the pass: a rows
or cols merge computes every output element as the same dot product (equal up to the matmul
budget), a sum merge adds the same terms in another order (the "order" budget of
`needlec.ir.ops.TOLERANCE`). MATMUL nodes are counted before and after.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import needlec as nc
import needlec.passes
from needlec import nn, optim
from needlec.apps.models import LanguageModel
from needlec.codegen.reference import run_graph
from needlec.ir import Graph, Node, Op
from needlec.passes import PIPELINE
from needlec.passes.merge_gemms import CALL_NS, Merge, merge_gemms
from needlec.passes.rewrite import count_ops


def inp(shape, k=0, dtype="float32") -> Node:
    return Node.leaf(Op.INPUT, dtype, shape, ("arg", k))


def values(graph: Graph, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(n.shape).astype(n.dtype) for n in graph.inputs]


def merged(graph: Graph) -> tuple[Graph, list[Merge]]:
    """The pass's result (verified) and its report; the numbers are checked against the
    original graph's on random inputs."""
    report: list[Merge] = []
    out = merge_gemms(graph, report).verify()
    xs = values(graph)
    for got, want in zip(run_graph(out, xs), run_graph(graph, xs), strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    return out, report


def gemms(graph: Graph) -> int:
    return count_ops(graph, {Op.MATMUL})


def blas_calls(graph: Graph) -> int:
    """BLAS calls the graph's products make: a batched product makes one per matrix."""
    return sum(math.prod(n.shape[:-2]) for n in graph.nodes if n.op is Op.MATMUL)


def test_products_sharing_the_right_operand_become_one_over_stacked_rows():
    w = inp((8, 6))
    xs = [inp((4, 8), k) for k in range(1, 5)]
    g = Graph([w, *xs], [(x @ w).tanh() for x in xs])
    out, report = merged(g)
    assert (gemms(g), gemms(out)) == (4, 1)
    (m,) = [n for n in out.nodes if n.op is Op.MATMUL]
    assert m.shape == (16, 6) and m.src[1] is w
    assert count_ops(out, {Op.STACK}) == 1 and count_ops(out, {Op.SLICE}) == 4
    assert [(r.kind, r.count, r.gemms, r.mkn) for r in report] == [("rows", 4, 1, (16, 8, 6))]
    assert "4 products sharing their right operand" in report[0].describe()


def test_products_sharing_the_left_operand_become_one_over_side_by_side_columns():
    # the q, k and v projections of one input
    x = inp((4, 8))
    wq, wk, wv = (inp((8, 6), k) for k in (1, 2, 3))
    g = Graph([x, wq, wk, wv], [x @ wq, x @ wk, (x @ wv).exp()])
    out, report = merged(g)
    assert (gemms(g), gemms(out)) == (3, 1)
    (m,) = [n for n in out.nodes if n.op is Op.MATMUL]
    assert m.src[0] is x and m.shape == (4, 18)
    assert [(r.kind, r.count) for r in report] == [("cols", 3)]


def test_transposed_right_operands_are_stacked_as_rows_and_read_through_a_transpose():
    # g @ W_ih^T and g @ W_hh^T: one GEMM over [W_ih; W_hh]^T, a transpose flag for BLAS
    g_ = inp((4, 12))
    wa, wb = inp((8, 12), 1), inp((8, 12), 2)
    g = Graph([g_, wa, wb], [g_ @ wa.permute((1, 0)), g_ @ wb.permute((1, 0))])
    out, _ = merged(g)
    (m,) = [n for n in out.nodes if n.op is Op.MATMUL]
    assert m.src[1].op is Op.PERMUTE and m.src[1].shape == (12, 16)


def test_a_sum_of_products_becomes_one_product_over_stacked_operands():
    # dW = sum_t x_t^T @ g_t (+ a term that is not a product), as autodiff accumulates it
    xs = [inp((4, 8), k) for k in range(4)]
    gs = [inp((4, 6), k + 4) for k in range(4)]
    extra = inp((8, 6), 8)
    dw = xs[0].permute((1, 0)) @ gs[0]
    for x, g_ in zip(xs[1:], gs[1:], strict=True):
        dw = dw + x.permute((1, 0)) @ g_
    g = Graph([*xs, *gs, extra], [dw + extra])
    out, report = merged(g)
    assert (gemms(g), gemms(out)) == (4, 1)
    (m,) = [n for n in out.nodes if n.op is Op.MATMUL]
    assert m.src[0].shape == (8, 16) and m.src[1].shape == (16, 6)
    assert [(r.kind, r.count) for r in report] == [("sum", 4)]
    # the order of the sum changes: equal within the "order" budget, not bit for bit
    vals = values(g, 3)
    got, want = run_graph(out, vals)[0], run_graph(g, vals)[0]
    scale = sum(np.abs(x.T) @ np.abs(y) for x, y in zip(vals[:4], vals[4:8], strict=True))
    assert (np.abs(got - want) <= 2 * np.finfo(np.float32).eps * np.sqrt(16) * (scale + 1)).all()


def test_a_partial_sum_read_elsewhere_is_kept():
    # (a + b) is an output of its own: the tree (a + b) + c stops there, so c is not merged
    # into it; a + b, a tree of its own, is
    xs = [inp((4, 8), k) for k in range(3)]
    gs = [inp((4, 6), k + 3) for k in range(3)]
    p = [x.permute((1, 0)) @ g_ for x, g_ in zip(xs, gs, strict=True)]
    ab = p[0] + p[1]
    g = Graph([*xs, *gs], [ab + p[2], ab])
    out, report = merged(g)
    assert gemms(out) == 2 and [(r.kind, r.count) for r in report] == [("sum", 2)]
    assert sorted(n.src[0].shape for n in out.nodes if n.op is Op.MATMUL) == [(8, 4), (8, 8)]


def test_pieces_that_are_consecutive_slices_of_one_array_are_not_copied():
    # the time steps of a sequence split from one (T, B, F) tensor: stacked, they are a view
    seq = inp((5, 4, 8))
    w = inp((8, 6), 1)
    steps = [seq.slice([(t, t + 1, 1), (0, 4, 1), (0, 8, 1)]).reshape((4, 8)) for t in range(5)]
    g = Graph([seq, w], [x @ w for x in reversed(steps)])
    out, report = merged(g)
    assert gemms(out) == 1 and count_ops(out, {Op.STACK}) == 0
    assert report[0].copied == 0


def test_a_dependent_chain_is_not_merged():
    # h_{t+1} = tanh(h_t @ W): each product reads the one before it (the recurrent part)
    w = inp((8, 8))
    h = inp((4, 8), 1)
    outs = []
    for _ in range(4):
        h = (h @ w).tanh()
        outs.append(h)
    g = Graph([w, inp((4, 8), 1)], outs)
    out, report = merged(g)
    assert gemms(out) == 4 and report == []
    assert all(a is b for a, b in zip(out.outputs, g.outputs, strict=True))


def test_independent_products_next_to_a_chain_merge_without_it():
    # x_t @ W_ih for every step merge; h @ W_hh along the chain does not
    w_ih, w_hh = inp((8, 8)), inp((8, 8), 1)
    xs = [inp((4, 8), k) for k in range(2, 6)]
    h = inp((4, 8), 6)
    for x in xs:
        h = (x @ w_ih + h @ w_hh).tanh()
    g = Graph([w_ih, w_hh, *xs, inp((4, 8), 6)], [h])
    out, report = merged(g)
    assert (gemms(g), gemms(out)) == (8, 5)
    assert [(r.kind, r.count) for r in report] == [("rows", 4)]


def test_two_groups_that_would_close_a_cycle_together_are_not_both_merged():
    # x2 reads u1 @ V and u2 reads x1 @ W: merging {x1 @ W, x2 @ W} and {u1 @ V, u2 @ V} at
    # once would make each merged product read the other's result
    w, v = inp((8, 8)), inp((8, 8), 1)
    x1, u1 = inp((4, 8), 2), inp((4, 8), 3)
    a1, b1 = x1 @ w, u1 @ v
    x2, u2 = b1.tanh(), a1.tanh()
    a2, b2 = x2 @ w, u2 @ v
    g = Graph([w, v, x1, u1], [a1, a2, b1, b2])
    out, report = merged(g)
    assert len(report) == 1 and gemms(out) == 3


def test_mixed_dtypes_are_not_merged():
    w = inp((8, 6), 0, "float64")
    x32, x64 = inp((4, 8), 1, "float32"), inp((4, 8), 2, "float64")
    g = Graph([w, x32, x64], [x32 @ w, x64 @ w])  # f32 @ f64 promotes: not one GEMM's dtype
    out, report = merged(g)
    assert gemms(out) == 2 and report == []
    # one left operand, right operands of two dtypes: the float64 @ float32 product promotes
    x = inp((4, 8), 0, "float64")
    wa, wb = inp((8, 6), 1, "float64"), inp((8, 6), 2, "float32")
    g = Graph([x, wa, wb], [x @ wa, x @ wb])
    out, report = merged(g)
    assert gemms(out) == 2 and report == []


def test_integer_products_are_not_merged():
    w = inp((8, 6), 0, "int64")
    xs = [inp((4, 8), k, "int64") for k in (1, 2)]
    g = Graph([w, *xs], [x @ w for x in xs])
    assert gemms(merged(g)[0]) == 2


def test_a_merge_that_copies_more_than_it_saves_is_not_made():
    # two [200,200] @ [200,2] products: stacking copies 80,000 elements to save one call
    w = inp((200, 2))
    xs = [inp((200, 200), k) for k in (1, 2)]
    g = Graph([w, *xs], [x @ w for x in xs])
    assert gemms(merged(g)[0]) == 2


def test_many_large_pieces_are_merged_in_chunks():
    # every stacked element selects among all the pieces of its stack, so twenty [16,256]
    # pieces are stacked a few at a time: fewer calls, each stack short
    w = inp((256, 64))
    xs = [inp((16, 256), k) for k in range(1, 21)]
    g = Graph([w, *xs], [x @ w for x in xs])
    out, (r,) = merged(g)
    assert 1 < gemms(out) == r.gemms < 20 and r.count == 20
    assert r.gain_ns >= CALL_NS


def test_a_batched_product_summed_over_its_batch_becomes_one_product():
    # the weight gradient of a Linear on (B, T, F) input: sum_b x_b^T @ g_b
    x, g_ = inp((3, 5, 4)), inp((3, 5, 6), 1)
    dw = (x.permute((0, 2, 1)) @ g_).sum((0,))
    out, report = merged(Graph([x, g_], [dw]))
    (m,) = [n for n in out.nodes if n.op is Op.MATMUL]
    assert m.shape == (4, 6) and m.src[0].shape == (4, 15) and count_ops(out, {Op.SUM}) == 0
    assert [(r.kind, r.count, r.copied) for r in report] == [("batch", 3, 0)]
    # an untransposed left operand is copied once into [A_1 | A_2 | A_3]
    a = inp((3, 4, 5), 2)
    out, report = merged(Graph([a, g_], [(a @ g_).sum((0,))]))
    assert gemms(out) == 1 and report[0].copied == 60
    # a product read elsewhere too, or summed over other axes, stays
    p = x.permute((0, 2, 1)) @ g_
    assert merged(Graph([x, g_], [p.sum((0,)), p]))[1] == []
    assert merged(Graph([x, g_], [p.sum((1,))]))[1] == []


def test_the_pass_runs_after_layouts_and_before_rematerialize():
    names = [name for name, _ in PIPELINE]
    assert names.index("assign_layouts") < names.index("merge_gemms") < names.index("verify", 3)
    assert names.index("merge_gemms") < names.index("rematerialize")


def test_debug_passes_names_each_merge(monkeypatch, capsys):
    monkeypatch.setenv("NEEDLEC_DEBUG", "passes")
    w = inp((8, 6))
    xs = [inp((4, 8), k) for k in (1, 2)]
    needlec.passes.optimize(Graph([w, *xs], [x @ w for x in xs]))
    err = capsys.readouterr().err
    assert "needlec: merge_gemms: 2 products sharing their right operand" in err


# ---------------------------------------------------------------- the LSTM language model


def _lstm_step(seed: int = 5):
    np.random.seed(seed)
    model = LanguageModel(8, 20, hidden_size=12, num_layers=2, seq_model="lstm")
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_fn = nn.SoftmaxLoss()

    def step(x, y):
        opt.reset_grad()
        loss = loss_fn(model(x)[0], y)
        loss.backward()
        opt.step()
        return loss

    return model, step


def _batch(seed: int, seq: int = 6, batch: int = 4, vocab: int = 20):
    ids = np.random.default_rng(seed).integers(0, vocab, (seq + 1, batch))
    return ids[:-1].astype("float32"), ids[1:].reshape(-1).astype("float32")


def _gemm_kernels(lowered) -> int:
    return sum(k.core is not None and k.core.op is Op.MATMUL for k in lowered.kernels.kernels)


def test_lstm_language_model_step_merges_and_jit_equals_eager(monkeypatch):
    x, y = _batch(0)
    merged_lowered = nc.jit(_lstm_step()[1]).lower(x, y)
    with monkeypatch.context() as m:
        m.setattr(needlec.passes, "merge_gemms", lambda graph, report=None: graph)
        plain = nc.jit(_lstm_step()[1]).lower(x, y)
    before, after = _gemm_kernels(plain), _gemm_kernels(merged_lowered)
    print(f"\n  LSTM LM 2x12, seq 6, batch 4: {before} -> {after} GEMM kernels")
    # per layer: 6 input projections, 6 input gradients and the two weight-gradient sums
    # (6 products each) merge; the 6 recurrent products and 6 recurrent gradients stay
    assert after < before - 30
    eager_model, eager_step = _lstm_step()
    jit_model, step = _lstm_step()
    jitted = nc.jit(step)
    for i in range(4):
        x, y = _batch(i % 2)
        le = eager_step(nc.Tensor(x, requires_grad=False), nc.Tensor(y, requires_grad=False))
        lj = jitted(x, y)
        np.testing.assert_allclose(lj.numpy(), le.numpy(), rtol=1e-5, atol=1e-6)
    for a, b in zip(eager_model.parameters(), jit_model.parameters(), strict=True):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-4, atol=1e-5)
    assert jitted.trace_count == 1


@pytest.mark.parametrize("seq_model", ["lstm", "rnn", "transformer"])
def test_the_merged_step_graph_computes_what_the_traced_graph_does(seq_model):
    np.random.seed(1)
    model = LanguageModel(8, 20, hidden_size=12, num_layers=2, seq_model=seq_model, seq_len=6)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_fn = nn.SoftmaxLoss()

    def step(x, y):
        opt.reset_grad()
        loss = loss_fn(model(x)[0], y)
        loss.backward()
        opt.step()
        return loss

    x, y = _batch(2)
    lowered = nc.jit(step).lower(x, y)
    traced = lowered.traced
    arrays = [x, y] + [t.numpy() for t in traced.captured]
    arrays += [np.array(getattr(o, name), dtype="float64") for o, name in traced.scalars]
    arrays += [np.array(7, dtype=n.dtype) for n in traced.graph.inputs[len(arrays) :]]  # seeds
    if seq_model == "transformer":  # its weight gradients are one GEMM each already (autodiff)
        assert blas_calls(lowered.graph) <= blas_calls(traced.graph)
    else:  # the input projections over time steps merge
        assert blas_calls(lowered.graph) < blas_calls(traced.graph)
    for got, want in zip(
        run_graph(lowered.graph, arrays), run_graph(traced.graph, arrays), strict=True
    ):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
