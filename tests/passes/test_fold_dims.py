"""Folded dims: no kernel iterates over a space larger than its largest value, and folding
changes no number beyond the summation order."""

from __future__ import annotations

import math

import numpy as np
import pytest

from needlec import nn
from needlec.codegen.kernels import run_kernels
from needlec.codegen.reference import run_graph
from needlec.ir import Graph, Node, Op
from needlec.ir.kernel import KOp
from needlec.passes import fusion
from needlec.passes.fold_dims import fold_dims

from .steps import lower_sgd_step


def _volume(e) -> int:
    return math.prod(e.shape)


def _models():
    from needlec.apps.models import ResNet9

    rng = np.random.default_rng(0)
    yield (
        "batchnorm2d",
        nn.Sequential(
            nn.Conv(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 4)
        ),
        rng.standard_normal((4, 3, 6, 6)).astype("float32"),
        4,
    )
    yield (
        "batchnorm1d",
        nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)),
        rng.standard_normal((5, 6)).astype("float32"),
        3,
    )
    yield "resnet9", ResNet9(), rng.random((2, 3, 32, 32), dtype="float32"), 10


MODELS = {name: (m, x, c) for name, m, x, c in _models()}


@pytest.mark.parametrize("name", list(MODELS))
def test_no_kernel_space_is_larger_than_its_largest_value(name):
    np.random.seed(0)
    model, x, classes = MODELS[name]
    y = np.random.default_rng(1).integers(0, classes, x.shape[0]).astype("float32")
    lowered, arrays = lower_sgd_step(model, x, y)
    for k in lowered.kernels.kernels:
        largest = max(_volume(e) for e in k.exprs)
        if k.core is not None:
            largest = max(largest, math.prod(k.core.shape))
        assert math.prod(k.space) <= largest, k.as_text()


def test_statistics_and_normalization_of_one_input_share_their_dims(monkeypatch):
    """A per-channel mean of x read as (N*H*W, C) rows, subtracted from x read as (N, C, H, W):
    unfolded, the rows are a dim of their own; folded, the two reads of x are one value and
    the sum runs over (N, H, W). The numbers agree with the reference."""
    x = Node.leaf(Op.INPUT, "float32", (4, 8, 6, 6), ("arg", 0))
    rows = x.permute((0, 2, 3, 1)).reshape((144, 8))
    mean = (rows.sum((0,)) / 144.0).reshape((1, 8, 1, 1)).broadcast_to(x.shape)
    graph = Graph([x], [(x - mean) * 2.0])
    folded = fusion.fuse(graph)
    monkeypatch.setattr(fusion, "fold_dims", lambda k: k)
    plain = fusion.fuse(graph)
    spaces_f = [math.prod(k.space) for k in folded.kernels]
    spaces_p = [math.prod(k.space) for k in plain.kernels]
    assert sum(spaces_f) < sum(spaces_p)
    arrays = [np.random.default_rng(0).standard_normal(x.shape).astype("float32")]
    want = run_graph(graph, arrays)
    for kg in (folded, plain):
        got = run_kernels(kg, [np.array(a, copy=True) for a in arrays])
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-6)


def test_fold_dims_keeps_a_kernel_without_twin_dims():
    np.random.seed(0)
    model, x, classes = MODELS["batchnorm1d"]
    y = np.random.default_rng(1).integers(0, classes, x.shape[0]).astype("float32")
    lowered, _ = lower_sgd_step(model, x, y)
    for k in lowered.kernels.kernels:
        assert fold_dims(k) is k  # already folded: nothing left to do
        assert all(e.op is not KOp.REDUCE or e.arg.dims for e in k.exprs)


@pytest.mark.parametrize("axes", [(0,), (3,), (0, 1)])
@pytest.mark.parametrize("red", ["max", "sum"])
def test_a_reduction_over_a_broadcast_dim_is_not_folded_away(axes, red):
    """A reduction runs over the dims it reduces even where its source is broadcast along
    them (max over a broadcast dim, a sum that multiplies by its extent): those dims are not
    free to fold another into."""
    from needlec.ir import Graph, Node, Op

    x = Node.leaf(Op.INPUT, "float64", (2, 2, 2), ("arg", 0))
    y = getattr(x.broadcast_to((2, 2, 2, 2)), red)(axes).exp()
    graph = Graph([x], [y])
    a = np.arange(8.0).reshape(2, 2, 2) / 8
    (got,) = run_kernels(fusion.fuse(graph), [a])
    np.testing.assert_allclose(got, run_graph(graph, [a])[0], rtol=1e-12)
