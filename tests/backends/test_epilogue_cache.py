"""A GEMM kernel's epilogue run over each block of C right after the block
(needlec/codegen/llvm/epilogue.py): the rendered code holds it inside the GEMM's block loop for
an MLP step's GEMMs, and the results match numpy (within the matmul's budget) and the
reference interpreter, with the same bits on one thread and two, through our GEMM and BLAS.
"""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

import needlec as nc
from needlec.codegen.llvm import runtime
from needlec.ir import Op

from .test_llvm_ops import assert_within

compiled_only = pytest.mark.skipif(
    os.environ.get("NEEDLEC_EXECUTE", "compiled") != "compiled",
    reason="blocks of C and thread splits are the compiled backend's",
)


def _threads(n: int) -> int:
    before = runtime.num_threads()
    runtime.set_num_threads(n)
    return before


def _functions(src: str) -> dict[str, str]:
    """name -> body of each function of an LLVM module's text."""
    out = {}
    for m in re.finditer(r'define [^@]*@"?([\w.]+)"?\(.*?\n}\n', src, re.S):
        out[m.group(1)] = m.group(0)
    return out


def _epilogue_in_block_loop(fn: str) -> bool:
    """Whether a function calls a GEMM inside its `blk` loop and the epilogue's outer loop
    (`i0`) runs inside that loop too: its exit branches back to the block loop's head."""
    blocks = dict(re.findall(r'^"?([\w.]+)"?:\n(.*?)(?=^\S|\Z)', fn, re.M | re.S))
    gemm = any(
        "blk" in lbl and re.search(r"call void @\"needlec_[sd]?gemm", body)
        for lbl, body in blocks.items()
    )
    back = 'br label %"blk.head"' in blocks.get("i0.done", "")
    return gemm and back


def _mlp_step(dims: tuple[int, ...], batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    np.random.seed(seed)
    layers: list = []
    for a, b in zip(dims[:-1], dims[1:], strict=False):
        layers += [nc.nn.Linear(a, b), nc.nn.ReLU()]
    model = nc.nn.Sequential(*layers[:-1])
    opt = nc.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nc.nn.SoftmaxLoss()

    @nc.jit
    def step(x, y):
        opt.reset_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss

    x = nc.Tensor(rng.standard_normal((batch, dims[0])).astype("float32"))
    y = nc.Tensor(rng.integers(0, dims[-1], batch))
    return model, step, x, y


@compiled_only
@pytest.mark.parametrize("threads", [1, 2])
def test_mlp_step_runs_its_epilogues_inside_the_block_loop(monkeypatch, threads):
    monkeypatch.setenv("NEEDLEC_GEMM", "own")
    before = _threads(threads)
    try:
        _, step, x, y = _mlp_step((784, 256, 10), 256)
        src = step.lower(x, y).source("llvm-unoptimized")
    finally:
        runtime.set_num_threads(before)
    fused = [name for name, fn in _functions(src).items() if _epilogue_in_block_loop(fn)]
    # the weight gradient's GEMM (784 x 256) with its momentum update, on any thread count
    assert fused, "no GEMM kernel runs its epilogue after each block"
    if threads == 2:  # ... and the first layer's forward GEMM with its bias and ReLU
        assert len(fused) >= 2, fused


def _linear_relu(m: int, n: int, k: int, ta: bool, tb: bool, dtype: str = "float32"):
    rng = np.random.default_rng(m * 7 + n * 3 + k)
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
    bias = rng.standard_normal((n,)).astype(dtype)

    def f(p, q, c):
        p = p.transpose() if ta else p
        q = q.transpose() if tb else q
        return nc.ops.relu(p @ q + c.reshape((1, n)).broadcast_to((m, n)))

    a64 = a.T.astype(np.float64) if ta else a.astype(np.float64)
    b64 = b.T.astype(np.float64) if tb else b.astype(np.float64)
    want = np.maximum(a64 @ b64 + bias, 0)
    scale = np.abs(a64) @ np.abs(b64) + np.abs(bias)
    return f, (a, b, bias), want, scale


@pytest.mark.parametrize("gemm", ["own", "blas"])
@pytest.mark.parametrize(
    "m,n,k,ta,tb",
    [
        (1, 7, 33, False, False),
        (7, 33, 257, False, False),
        (257, 1023, 33, False, False),
        (1023, 257, 33, False, False),
        (1023, 257, 40, True, False),
        (1023, 257, 40, False, True),
        (257, 33, 1023, False, False),
    ],
)
def test_matmul_bias_relu_matches_numpy_on_one_and_two_threads(monkeypatch, gemm, m, n, k, ta, tb):
    monkeypatch.setenv("NEEDLEC_GEMM", gemm)
    f, args, want, scale = _linear_relu(m, n, k, ta, tb)
    outs = []
    before = runtime.num_threads()
    try:
        for threads in (1, 2):
            runtime.set_num_threads(threads)
            got = nc.jit(f)(*(nc.Tensor(a) for a in args)).numpy()
            assert_within(Op.MATMUL, got, want.astype(np.float32), n=k, scale=scale)
            outs.append(got)
    finally:
        runtime.set_num_threads(before)
    if gemm == "own":  # OpenBLAS may take other edge kernels for a block of columns
        np.testing.assert_array_equal(outs[0].view(np.int32), outs[1].view(np.int32))


@pytest.mark.parametrize("gemm", ["own", "blas"])
def test_batched_matmul_with_an_epilogue(monkeypatch, gemm):
    monkeypatch.setenv("NEEDLEC_GEMM", gemm)
    rng = np.random.default_rng(2)
    a = rng.standard_normal((3, 257, 33)).astype("float32")
    b = rng.standard_normal((3, 33, 129)).astype("float32")
    got = nc.jit(lambda p, q: nc.ops.relu(p @ q) * 2.0)(nc.Tensor(a), nc.Tensor(b)).numpy()
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    want = (np.maximum(a64 @ b64, 0) * 2).astype(np.float32)
    assert_within(Op.MATMUL, got, want, n=33, scale=2 * (np.abs(a64) @ np.abs(b64)))


def _train(dims, batch, steps, threads):
    before = _threads(threads)
    try:
        model, step, x, y = _mlp_step(dims, batch)
        losses = [step(x, y).numpy() for _ in range(steps)]
    finally:
        runtime.set_num_threads(before)
    return np.array(losses), [p.numpy() for p in model.parameters()]


@pytest.mark.parametrize("gemm", ["own", "blas"])
@pytest.mark.parametrize("dims,batch", [((784, 256, 10), 256), ((33, 257, 7), 1023)])
def test_sgd_momentum_update_after_dw_matches_the_reference(monkeypatch, gemm, dims, batch):
    """Three training steps (each weight's momentum update fused after its gradient's GEMM)
    against the reference interpreter, and the same bits on one thread and two."""
    monkeypatch.setenv("NEEDLEC_GEMM", gemm)
    runs = [_train(dims, batch, 3, t) for t in (1, 2)]
    monkeypatch.setenv("NEEDLEC_EXECUTE", "reference")
    ref_losses, ref_params = _train(dims, batch, 3, 1)
    for losses, params in runs:
        np.testing.assert_allclose(losses, ref_losses, rtol=1e-4, atol=1e-5)
        for p, q in zip(params, ref_params, strict=True):
            np.testing.assert_allclose(p, q, rtol=1e-3, atol=1e-4)
    if gemm == "blas":  # OpenBLAS may take other edge kernels for a block of columns
        return
    (l1, p1), (l2, p2) = runs
    np.testing.assert_array_equal(l1.view(np.int32), l2.view(np.int32))
    for p, q in zip(p1, p2, strict=True):
        np.testing.assert_array_equal(p.view(np.int32), q.view(np.int32))


@pytest.mark.parametrize("gemm", ["own", "blas"])
def test_epilogues_across_rows_of_c_stay_after_the_gemm(monkeypatch, gemm):
    """A column sum of C and a read of C's transpose: not elementwise over C's blocks, so they
    run after the whole GEMM; the results still match numpy on one thread and two."""
    monkeypatch.setenv("NEEDLEC_GEMM", gemm)
    rng = np.random.default_rng(6)
    a = rng.standard_normal((513, 40)).astype("float32")
    b = rng.standard_normal((40, 513)).astype("float32")
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    c64, s64 = a64 @ b64, np.abs(a64) @ np.abs(b64)
    before = runtime.num_threads()
    try:
        for threads in (1, 2):
            runtime.set_num_threads(threads)
            cols = nc.jit(lambda p, q: nc.ops.summation(nc.ops.relu(p @ q), axes=(0,)))
            got = cols(nc.Tensor(a), nc.Tensor(b)).numpy()
            want = np.maximum(c64, 0).sum(axis=0)
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3 * s64.sum(axis=0).max())
            sym = nc.jit(lambda p, q: (p @ q) + (p @ q).transpose())
            got = sym(nc.Tensor(a), nc.Tensor(b)).numpy()
            assert_within(Op.MATMUL, got, (c64 + c64.T).astype(np.float32), n=40, scale=s64 + s64.T)
    finally:
        runtime.set_num_threads(before)
