"""Convolutions on needlec's own GEMM (mgemm): the forward conv and both gradients against the
reference interpreter through the in-place and the packed paths, `NEEDLEC_GEMM=blas` keeping
them on BLAS, and the same bits whatever the thread count the step was compiled for."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from needlec.codegen.llvm import mgemm, runtime
from needlec.codegen.llvm.program import compile_program as compile_llvm
from needlec.codegen.reference import run_graph
from needlec.ir import Graph, Op
from needlec.ir.semantics import EVAL
from needlec.passes import compile_program

from .test_llvm_ops import RNG_SEED, arg, assert_within

compiled_only = pytest.mark.skipif(
    os.environ.get("NEEDLEC_EXECUTE", "compiled") != "compiled",
    reason="thread counts are the compiled backend's",
)

# (input, weight, stride, pad): ResNet9's 4x4 block (B in place); a wide layer whose weight
# (576 x 512) is past what the in-place path reads, so the forward conv and the input gradient
# pack it; a strided stem
CASES = {
    "4x4_32to32": ((64, 4, 4, 32), (3, 3, 32, 32), 1, 1),
    "wide_packed": ((16, 4, 4, 64), (3, 3, 64, 512), 1, 1),  # tiles of 2 images: 32 rows
    "stem_7x7_s4": ((4, 32, 32, 3), (7, 7, 3, 16), 4, 3),
}


def _graph(case: str, dtype: str = "float32"):
    xs_shape, w_shape, stride, pad = CASES[case]
    xs, ws = arg(dtype, xs_shape, 0), arg(dtype, w_shape, 1)
    y = xs.conv(ws, stride, pad)
    gs = arg(dtype, y.shape, 2)
    dx = gs.conv_input_grad(ws, stride, pad, xs_shape[1:3])
    dw = xs.conv_weight_grad(gs, stride, pad, w_shape[:2])
    return Graph([xs, ws, gs], [y, dx, dw])


def _arrays(graph: Graph, dtype: str = "float32"):
    rng = np.random.default_rng(RNG_SEED)
    return [rng.standard_normal(n.shape).astype(dtype) for n in graph.inputs]


def _check(case: str, got, arrays) -> None:
    _, w_shape, stride, pad = CASES[case]
    x, w, g = (np.abs(a).astype("f8") for a in arrays)
    want = run_graph(_graph(case, str(arrays[0].dtype)), arrays)
    scales = [
        EVAL[Op.CONV](x, w, (stride, pad)),
        EVAL[Op.CONV_INPUT_GRAD](g, w, (stride, pad, *x.shape[1:3])),
        EVAL[Op.CONV_WEIGHT_GRAD](x, g, (stride, pad, *w_shape[:2])),
    ]
    terms = [math.prod(w_shape[:3]), math.prod(w_shape[:2]) * w_shape[3], math.prod(g.shape[:3])]
    ops = (Op.CONV, Op.CONV_INPUT_GRAD, Op.CONV_WEIGHT_GRAD)
    for op, a, b, s, n in zip(ops, got, want, scales, terms, strict=True):
        assert_within(op, a, b, n=n, scale=s, what=case)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", list(CASES))
def test_conv_and_gradients_on_our_gemm(monkeypatch, case, dtype):
    monkeypatch.setenv("NEEDLEC_GEMM", "own")
    graph = _graph(case, dtype)
    ex = compile_llvm(compile_program(graph))
    src = ex.source("llvm-unoptimized")
    assert "needlec_gemm" in src and "needlec_sgemm" not in src and "needlec_dgemm" not in src
    if case == "wide_packed":
        assert f"needlec_gemm_{dtype}" in src  # the packed driver
    arrays = _arrays(graph, dtype)
    _check(case, ex.run(arrays), arrays)


def test_the_wide_case_takes_the_packed_path():
    _, (kh, kw, ci, co), _, _ = CASES["wide_packed"]
    assert mgemm.choose("float32", 32, co, kh * kw * ci) == "packed"


def test_needlec_gemm_blas_keeps_convolutions_on_blas(monkeypatch):
    monkeypatch.setenv("NEEDLEC_GEMM", "blas")
    graph = _graph("4x4_32to32")
    ex = compile_llvm(compile_program(graph))
    src = ex.source("llvm-unoptimized")
    assert "needlec_sgemm" in src and "needlec_gemm" not in src
    arrays = _arrays(graph)
    _check("4x4_32to32", ex.run(arrays), arrays)


@compiled_only
@pytest.mark.parametrize("case", ["4x4_32to32", "wide_packed"])
def test_one_thread_and_two_give_the_same_bits(monkeypatch, case):
    """Image tiles and weight-gradient groups are fixed by the shapes, and each GEMM sums over
    K in one order: compiled for (and run on) 1 or 2 threads, the same bits."""
    monkeypatch.setenv("NEEDLEC_GEMM", "own")
    graph = _graph(case)
    arrays = _arrays(graph)
    before = runtime.num_threads()
    outs = []
    try:
        for threads in (1, 2):
            runtime.set_num_threads(threads)
            ex = compile_llvm(compile_program(graph))
            assert 'call void @"needlec_parallel_for"' in ex.source("llvm-unoptimized")
            outs.append(ex.run(arrays))
    finally:
        runtime.set_num_threads(before)
    for a, b in zip(*outs, strict=True):
        np.testing.assert_array_equal(a, b)
