"""needlec's own GEMM (needlec/codegen/llvm/mgemm.py) against numpy, within the matmul's
summation-order budget (`TOLERANCE[Op.MATMUL]`): every combination of awkward sizes in M, N and
K through both its paths, transposed operands, batches, float32 and float64; the same bits on
one thread and two; `NEEDLEC_GEMM` forcing BLAS or ours."""

from __future__ import annotations

import ctypes
import functools
import itertools
import os

import numpy as np
import pytest
from llvmlite import ir

import needlec as nc
from needlec.codegen.llvm import mgemm, runtime, target
from needlec.codegen.llvm.program import compile_program as compile_llvm
from needlec.ir import Graph, Op
from needlec.passes import compile_program

from .test_llvm_ops import arg, assert_within

SIZES = (1, 7, 15, 16, 17, 33, 100, 257, 1023)
compiled_only = pytest.mark.skipif(
    os.environ.get("NEEDLEC_EXECUTE", "compiled") != "compiled",
    reason="thread splits are the compiled backend's",
)


@functools.cache
def _driver(dtype: str, packed: bool, wide: bool = True, thin: bool = False):
    """mgemm's driver compiled alone, as a ctypes function (kept alive with its library);
    `wide`: AVX-512 tiles where the CPU has them, else the AVX2 tiles (which run on either);
    `thin`: the narrow tile of the in-place path."""
    saved = mgemm._avx512
    if not wide:
        mgemm._avx512 = lambda: False
    try:
        mod = ir.Module()
        mod.triple, mod.data_layout = target.triple(), target.data_layout()
        inner = mgemm.driver(mod, dtype, packed, thin)
        outer = ir.Function(mod, inner.function_type, "gemm_entry")
        b = ir.IRBuilder(outer.append_basic_block())
        b.call(inner, list(outer.args))
        b.ret_void()
        scratch = mgemm.pack_bytes(dtype, 1 << 20, 1 << 20)  # enough for any size
    finally:
        mgemm._avx512 = saved
    lib = target.compile_module(str(mod))
    p, i = ctypes.c_void_p, ctypes.c_int64
    proto = ctypes.CFUNCTYPE(None, i, i, i, p, i, i, p, i, i, p, i, p, ctypes.c_bool)
    return lib, proto(lib.function_address("gemm_entry")), scratch


def own_gemm(
    a: np.ndarray,
    b: np.ndarray,
    packed: bool,
    wide: bool = True,
    c: np.ndarray | None = None,
    thin: bool = False,
) -> np.ndarray:
    """a @ b by mgemm's driver, reading a and b through their strides; c + a @ b (in c) when
    `c` is given; `thin`: the narrow tile (in place)."""
    (m, k), n = a.shape, b.shape[1]
    acc = c is not None
    c = c if acc else np.full((m, n), np.nan, a.dtype)
    step = a.itemsize
    _, fn, nbytes = _driver(str(a.dtype), packed, wide and mgemm._avx512(), thin)
    scratch = np.zeros(nbytes // step, a.dtype)
    sa, sb = (s // step for s in a.strides), (s // step for s in b.strides)
    fn(
        m,
        n,
        k,
        a.ctypes.data,
        *sa,
        b.ctypes.data,
        *sb,
        c.ctypes.data,
        n,
        scratch.ctypes.data,
        acc,
    )
    return c


def operands(rng, m: int, n: int, k: int, dtype: str, ta: bool = False, tb: bool = False):
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
    return (a.T if ta else a), (b.T if tb else b)


def check(got: np.ndarray, a: np.ndarray, b: np.ndarray, what: str) -> None:
    want = (a.astype(np.float64) @ b.astype(np.float64)).astype(a.dtype)
    scale = np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64))
    assert_within(Op.MATMUL, got, want, n=a.shape[-1], scale=scale, what=what)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_combination_of_sizes(dtype):
    rng = np.random.default_rng(0)
    for m, n, k in itertools.product(SIZES, repeat=3):
        if m * n * k > 1 << 25:  # the largest: 1023 in two dims (test_large_square has one)
            continue
        a, b = operands(rng, m, n, k, dtype)
        for packed in (True, False):
            check(own_gemm(a, b, packed), a, b, f"{m}x{n}x{k} packed={packed}")
        if mgemm.thin(dtype, n):
            check(own_gemm(a, b, False, thin=True), a, b, f"{m}x{n}x{k} narrow tile")


@pytest.mark.parametrize("ta,tb", [(False, True), (True, False), (True, True)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_transposed_operands(dtype, ta, tb):
    rng = np.random.default_rng(1)
    for m, n, k in itertools.product((1, 16, 17, 100, 257), repeat=3):
        a, b = operands(rng, m, n, k, dtype, ta, tb)
        check(own_gemm(a, b, True), a, b, f"{m}x{n}x{k} ta={ta} tb={tb}")
        if not tb:  # the small path reads B in place: rows of unit stride only
            check(own_gemm(a, b, False), a, b, f"{m}x{n}x{k} ta={ta} in place")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_avx2_tiles(dtype):
    """The tiles for CPUs without AVX-512 (ymm vectors), run here as well."""
    rng = np.random.default_rng(6)
    for m, n, k in itertools.product((1, 7, 16, 17, 100, 257), repeat=3):
        for ta, tb in ((False, False), (True, True)):
            a, b = operands(rng, m, n, k, dtype, ta, tb)
            check(own_gemm(a, b, True, wide=False), a, b, f"{m}x{n}x{k} ta={ta} tb={tb}")
            if not tb:
                check(own_gemm(a, b, False, wide=False), a, b, f"{m}x{n}x{k} in place")
                got = own_gemm(a, b, False, wide=False, thin=True)  # correct for any n
                check(got, a, b, f"{m}x{n}x{k} in place, narrow tile")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_accumulates_into_c(dtype):
    """With its accumulate flag the driver adds A @ B to C (a convolution's K tiles): over K
    longer than one KC block, on both paths."""
    rng = np.random.default_rng(7)
    for m, n, k in ((7, 33, 5), (13, 70, 400), (100, 17, 257)):
        a, b = operands(rng, m, n, k, dtype)
        c0 = rng.standard_normal((m, n)).astype(dtype)
        want = (c0.astype(np.float64) + a.astype(np.float64) @ b).astype(dtype)
        scale = np.abs(c0) + np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64))
        for packed, thin in ((True, False), (False, False), (False, True)):
            got = own_gemm(a, b, packed, c=c0.copy(), thin=thin)
            what = f"{m}x{n}x{k} packed={packed} thin={thin} accumulating"
            assert_within(Op.MATMUL, got, want, n=k + 1, scale=scale, what=what)


def test_large_square():
    rng = np.random.default_rng(2)
    a, b = operands(rng, 1023, 1023, 1023, "float32")
    check(own_gemm(a, b, True), a, b, "1023^3")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    "a_shape,b_shape",
    [((3, 33, 100), (3, 100, 17)), ((2, 1, 16, 64), (3, 64, 256)), ((4, 7, 257), (257, 15))],
)
def test_batched_under_jit(dtype, a_shape, b_shape):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(a_shape).astype(dtype)
    y = rng.standard_normal(b_shape).astype(dtype)
    got = nc.jit(lambda p, q: p @ q)(nc.Tensor(x), nc.Tensor(y)).numpy()
    want = np.matmul(x.astype(np.float64), y).astype(dtype)
    scale = np.matmul(np.abs(x.astype(np.float64)), np.abs(y.astype(np.float64)))
    assert_within(Op.MATMUL, got, want, n=a_shape[-1], scale=scale)


def _compiled(dtype: str, a_shape, b_shape, ta: bool = False):
    a, b = arg(dtype, a_shape, 0), arg(dtype, b_shape, 1)
    av = a.permute((1, 0)) if ta else a
    return compile_llvm(compile_program(Graph([a, b], [av @ b])))


@compiled_only
@pytest.mark.parametrize(
    "shape", [(200, 300, 150, False), (32, 1000, 300, True), (300, 100, 3000, False)]
)
def test_one_thread_and_two_give_the_same_bits(shape):
    """The rows (columns) split over the pool is fixed when the step compiles; each element's
    sum over k runs in one order whatever block holds it."""
    m, n, k, ta = shape
    rng = np.random.default_rng(4)
    x = rng.standard_normal((k, m) if ta else (m, k)).astype("float32")
    y = rng.standard_normal((k, n)).astype("float32")
    before = runtime.num_threads()
    try:
        outs = []
        for threads in (1, 2):
            runtime.set_num_threads(threads)
            ex = _compiled("float32", x.shape, y.shape, ta)
            assert "needlec_gemm" in ex.source("llvm-unoptimized")  # ours, not BLAS
            outs.append(ex.run([x, y])[0])
    finally:
        runtime.set_num_threads(before)
    np.testing.assert_array_equal(outs[0].view(np.int32), outs[1].view(np.int32))


@compiled_only
@pytest.mark.parametrize(
    "a_shape,b_shape", [((16, 8, 20, 32), (16, 8, 32, 20)), ((2, 1, 16, 64), (3, 64, 256))]
)
def test_a_batch_of_small_products_runs_on_the_pool_with_the_same_bits(a_shape, b_shape):
    """Attention's batch of small products is a loop over the batch, split over the pool's
    threads; each product is computed whole by one thread, so 1 and 2 threads agree bit for
    bit (and with numpy, within the matmul's budget)."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal(a_shape).astype("float32")
    y = rng.standard_normal(b_shape).astype("float32")
    before = runtime.num_threads()
    try:
        outs = []
        for threads in (1, 2):
            runtime.set_num_threads(threads)
            ex = _compiled("float32", x.shape, y.shape)
            source = ex.source("llvm-unoptimized")
            assert "bat.head" in source and (threads == 1) != ("needlec_parallel_for" in source)
            outs.append(ex.run([x, y])[0])
    finally:
        runtime.set_num_threads(before)
    np.testing.assert_array_equal(outs[0].view(np.int32), outs[1].view(np.int32))
    want = np.matmul(x.astype(np.float64), y).astype("float32")
    scale = np.matmul(np.abs(x.astype(np.float64)), np.abs(y.astype(np.float64)))
    assert_within(Op.MATMUL, outs[1], want, n=a_shape[-1], scale=scale)


@pytest.mark.parametrize("mode,name", [("blas", "needlec_sgemm"), ("own", "needlec_gemm")])
def test_needlec_gemm_forces_one(monkeypatch, mode, name):
    monkeypatch.setenv("NEEDLEC_GEMM", mode)
    rng = np.random.default_rng(5)
    x, y = operands(rng, 40, 50, 60, "float32")
    ex = _compiled("float32", x.shape, y.shape)
    assert f'call void @"{name}' in ex.source("llvm-unoptimized")
    check(ex.run([x, y])[0], x, y, f"NEEDLEC_GEMM={mode}")


def test_needlec_gemm_rejects_other_values(monkeypatch):
    monkeypatch.setenv("NEEDLEC_GEMM", "fast")
    with pytest.raises(ValueError, match="NEEDLEC_GEMM"):
        mgemm.mode()


@pytest.mark.skipif(not mgemm._avx512(), reason="the AVX-512 tile's register budget")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("packed", [False, True])
def test_edge_tiles_keep_the_accumulators_in_registers(dtype, packed):
    """The micro-kernel's masks for a partial tile are mask registers, not compares of index
    vectors: those took vector registers, and the 24 accumulators spilled to the stack on
    every step over k (a 320x64x136 product ran 4x slower than 320x64x128)."""
    mod = ir.Module()
    mod.triple, mod.data_layout = target.triple(), target.data_layout()
    mk = mgemm.micro_kernel(mod, dtype)
    mk.linkage = "external"  # kept as a function of its own in the machine code
    lib = target.compile_module(str(mod))  # owns the optimized module
    asm = target.assembly(lib.optimized)
    vector_stack = [
        line for line in asm.splitlines() if "mm" in line and "(%rsp)" in line and "v" in line
    ]
    assert not vector_stack, "vector registers spilled:\n" + "\n".join(vector_stack[:5])
    # and the result at such an edge is right (both paths, every edge column)
    rng = np.random.default_rng(11)
    for n in (1, 15, 17, 63, 65, 136, 200):
        a, b = operands(rng, 13, n, 70, dtype, False, False)
        check(own_gemm(a, b, packed), a, b, f"13x{n}x70 packed={packed}")
