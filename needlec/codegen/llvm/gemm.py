"""GEMM cores as calls into the BLAS that scipy ships (`scipy.linalg.cython_blas`).

`sgemm`/`dgemm` are called through their function pointers, which scipy exports, with column-major
arguments: a row-major `C[M,N] = A[M,K] @ B[K,N]` is the column-major `C^T = B^T A^T`. A transposed
operand is passed as a flag and a leading dimension, never copied; an operand BLAS cannot take
(masked, negative or zero strides on a dim it needs, neither dim unit-stride) is packed into
scratch first. Batched matmul loops over the batch, one call per matrix. Where our own GEMM
(`mgemm`) is faster, matmul cores call it instead, and convolutions reach it through `OwnGemm`,
which has `Gemm`'s interface (run-time sizes, leading dims, C += A @ B).
"""

from __future__ import annotations

import itertools
import math

from llvmlite import ir

from ...ir import Op
from ...ir.kernel import Core, Load
from ...ir.ops import CONVS
from ...ir.schedule import Buffer
from ...ir.view import View, strides_of
from . import intcore, mgemm, runtime
from .blas import blas_thread_functions
from .loops import counted_loop

# A GEMM smaller than two of these runs as one call; a larger one is cut into blocks of rows (or
# of columns, when it has fewer rows than columns), one per pool thread when the step compiles
# (more blocks would pack B again for each: 4 blocks on 2 threads cost 4-8%), each one BLAS
# call. The cut is fixed in the compiled code, so changing the thread count later changes
# nothing; and BLAS sums each element over K in the same order whatever block holds it.
GEMM_GRAIN_FLOPS = 1 << 22

I8, I32, I64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)


def pool_may_call_blas(r) -> bool:
    """Whether renderer `r` may make BLAS calls from the pool's threads: only where the step
    holds BLAS to one thread (a BLAS with threads of its own, called from ours, would
    oversubscribe the CPU)."""
    return r.parallel and blas_thread_functions() is not None


def supported(core: Core) -> bool:
    """Whether this core renders natively: a float32/float64 matmul or convolution through
    BLAS (`emit_core`, `conv.emit_conv`), or one computed in int32, int64 or bool as a loop
    kernel of its own (`intcore.emit_int_core`)."""
    if core.op is not Op.MATMUL and core.op not in CONVS:
        return False
    return core.dtype in ("float32", "float64") or intcore.supported(core)


def _matrix(view: View) -> tuple[str, int] | None:
    """(trans flag, leading dim) for BLAS's column-major reading of the last two dims of a
    row-major operand of logical shape (..., R, C), or None when it must be packed."""
    if view.mask is not None or view.offset < 0:
        return None
    (r, c), (sr, sc) = view.shape[-2:], view.strides[-2:]
    if sc == 1 or c == 1:  # rows of unit stride: BLAS's "N" of the transposed matrix
        ld = sr if r > 1 else max(c, 1)
        if ld >= max(c, 1):
            return "N", ld
    if sr == 1 or r == 1:
        ld = sc if c > 1 else max(r, 1)
        if ld >= max(r, 1):
            return "T", ld
    return None


def _batch_ok(view: View) -> bool:
    return all(s >= 0 for s in view.strides[:-2])


def emit_core(r, core: Core, into: Buffer) -> None:
    """Emit the matmul `core` into buffer `into` (compact, row-major) for renderer `r`; a
    block-wise epilogue (`r.epilogue`, `epilogue.py`) runs after each block of a split GEMM."""
    (a_ld, b_ld) = core.operands
    dtype = core.dtype
    ty = ir.FloatType() if dtype == "float32" else ir.DoubleType()
    if math.prod(core.shape) == 0:
        return
    if a_ld.view.shape[-1] == 0:  # an empty sum: zeros
        r.fill(into, ir.Constant(ty, 0.0), dtype)
        return
    ops = []
    for ld in (a_ld, b_ld):
        ok = _matrix(ld.view) if _batch_ok(ld.view) else None
        if ok is None or ld.buffer.dtype != dtype:
            ld = pack(r, ld, dtype)
            ok = _matrix(ld.view)
        ops.append((ld, ok))
    (a, (ta, lda)), (bb, (tb, ldb)) = ops
    out_shape = core.shape
    batch = out_shape[:-2]
    merged = _merged_rows(a.view, bb.view, batch, ta)
    shared_b = batch and all(d == 1 for d in bb.view.shape[:-2])
    small = 2 * math.prod(core.shape[-2:]) * a.view.shape[-1] < GEMM_GRAIN_FLOPS
    if merged is None and shared_b and small and tuple(a.view.shape[:-2]) == tuple(batch):
        # small matrices of one B, A laid out another way: A packed row-major, then one GEMM
        a = pack(r, a, dtype)
        ta, lda = _matrix(a.view)
        merged = _merged_rows(a.view, bb.view, batch, ta)
    as_matrix = _matrix(merged) if merged is not None else None
    if as_matrix is not None:  # one GEMM over every batch's rows (a linear layer on (B, T, D))
        a, (ta, lda) = Load(a.buffer, merged), as_matrix
        v = bb.view
        bb = Load(bb.buffer, View(v.shape[-2:], v.strides[-2:], v.offset, None))
        out_shape, batch = merged.shape[:1] + out_shape[-1:], ()
    m, k = a.view.shape[-2:]
    n = bb.view.shape[-1]
    itemsize = 4 if dtype == "float32" else 8
    blocks = runtime.num_threads()  # one block per pool thread (fixed when compiled)
    # cut the longer side: a block of rows packs all of B again, a block of columns only its
    # share of it (a batch-32 linear layer has 32 rows and hundreds of columns)
    by_rows = m >= n
    size, other = (m, n) if by_rows else (n, m)
    grain = max(-(-size // blocks), -(-GEMM_GRAIN_FLOPS // max(2 * other * k, 1)))
    split = pool_may_call_blas(r) and size > grain and 2 * m * n * k >= 2 * GEMM_GRAIN_FLOPS

    if (
        mgemm.choose(dtype, m, n, k, bb.view.strides[-1] == 1 or n == 1) != "blas"
    ):  # ours where it is faster (mgemm's table)
        mgemm.emit_core(r, a, bb, into, dtype, (m, n, k), batch)
        return

    calls = {}

    def block(bidx, lo=None, hi=None):
        """The matrix at batch index `bidx`, or its rows (columns) [lo, hi): one BLAS call."""
        a_off = _batch_offset(a.view, bidx, len(batch))
        b_off = _batch_offset(bb.view, bidx, len(batch))
        c_off = sum(i * s for i, s in zip(bidx, strides_of(out_shape)[: len(batch)], strict=True))
        pa = r.b.gep(r.base[a.buffer], [I64(a_off * itemsize)])
        pb = r.b.gep(r.base[bb.buffer], [I64(b_off * itemsize)])
        pc = r.b.gep(r.base[into], [I64(c_off * itemsize)])
        rows, cols = I32(m), I32(n)
        if lo is not None and by_rows:  # row i of A is i rows of its view further; of C, i*n
            pa = r.b.gep(pa, [r.b.mul(lo, I64(a.view.strides[-2] * itemsize))])
            pc = r.b.gep(pc, [r.b.mul(lo, I64(n * itemsize))])
            rows = r.b.trunc(r.b.sub(hi, lo), I32)
        elif lo is not None:  # column j of B is j columns of its view further; of C, j
            pb = r.b.gep(pb, [r.b.mul(lo, I64(bb.view.strides[-1] * itemsize))])
            pc = r.b.gep(pc, [r.b.mul(lo, I64(itemsize))])
            cols = r.b.trunc(r.b.sub(hi, lo), I32)
        if r.fn not in calls:  # one set of BLAS argument slots per function
            calls[r.fn] = Gemm(r, dtype, ta, tb, lda, ldb, max(n, 1))
        calls[r.fn](rows, cols, I32(k), pa, pb, pc)

    # the kernel's epilogue over each block while it is in cache (`epilogue.py`)
    epi = getattr(r, "epilogue", None)
    epi = epi if epi is not None and epi.rows == by_rows and not batch else None

    def block_then_epilogue(bidx, lo, hi):
        block(bidx, lo, hi)
        if epi is not None:
            epi.emit(lo, hi)

    for bidx in _indices(batch):
        if split:
            r.parallel_region(
                size, grain, lambda lo, hi, bidx=bidx: block_then_epilogue(bidx, lo, hi)
            )
        else:
            block(bidx)


def _merged_rows(a: View, b: View, batch: tuple, ta: str) -> View | None:
    """A's view as one (batches * M, K) matrix, where B is one matrix for every batch index
    and A's rows of consecutive batches follow each other at A's row stride (so the batched
    GEMM is one GEMM, and C, compact, is the same memory either way); else None."""
    if not batch or ta != "N" or a.mask is not None or b.mask is not None:
        return None
    if any(d != 1 for d in b.shape[:-2]) or tuple(a.shape[:-2]) != tuple(batch):
        return None
    m, k = a.shape[-2:]
    outer = [a.strides[d] for d in range(len(batch)) if a.shape[d] != 1]
    row = a.strides[-2] if m > 1 else (outer[-1] if outer else k)  # from one row to the next
    expect = row * m
    for d in reversed(range(len(batch))):
        if a.shape[d] != 1 and a.strides[d] != expect:
            return None
        expect *= a.shape[d]
    return View((math.prod(batch) * m, k), (row, a.strides[-1]), a.offset, None)


class Gemm:
    """Emits row-major `C[m,n] = op(A)[m,k] @ op(B)[k,n] (+ C when accumulating)` as calls to
    BLAS's sgemm/dgemm for renderer `r`: the flags and leading dims fixed, the sizes and pointers
    per call (LLVM values: sizes and the tiles of a convolution may be computed at run time)."""

    def __init__(self, r, dtype: str, ta: str, tb: str, lda: int, ldb: int, ldc: int) -> None:
        self.r, self.dtype = r, dtype
        ty = self.ty = ir.FloatType() if dtype == "float32" else ir.DoubleType()
        pty = ir.PointerType(ty)
        pi32, pi8 = ir.PointerType(I32), ir.PointerType(I8)
        fnty = ir.FunctionType(
            ir.VoidType(), [pi8, pi8, pi32, pi32, pi32, pty, pty, pi32, pty, pi32, pty, pty, pi32]
        )
        name = "needlec_" + ("sgemm" if dtype == "float32" else "dgemm")
        self.fn = r.module.globals.get(name) or ir.Function(r.module, fnty, name)
        # column-major: C^T (n x m) = op(B^T) (n x k) @ op(A^T) (k x m): B comes first
        self.ta, self.tb = self._slot(I8, I8(ord(tb))), self._slot(I8, I8(ord(ta)))
        self.ld_b, self.ld_a = self._slot(I32, I32(ldb)), self._slot(I32, I32(lda))
        self.ldc = self._slot(I32, I32(ldc))
        self.alpha = self._slot(ty, ir.Constant(ty, 1.0))
        self.m, self.n, self.k = (self._slot(I32, I32(0)) for _ in range(3))
        self.beta = self._slot(ty, ir.Constant(ty, 0.0))

    def _slot(self, t, value):
        p = self.r.alloca_builder.alloca(t)
        self.r.alloca_builder.store(value, p)
        return p

    def __call__(
        self, m, n, k, pa, pb, pc, accumulate: ir.Value | None = None, lda: ir.Value | None = None
    ) -> None:
        """One call; `accumulate` (an i1) makes it C += A @ B instead of C = A @ B; `lda` (an
        i32) replaces A's leading dim from here on."""
        b, ty = self.r.b, self.ty
        if lda is not None:
            b.store(lda, self.ld_a)
        b.store(n, self.m)
        b.store(m, self.n)
        b.store(k, self.k)
        zero, one = ir.Constant(ty, 0.0), ir.Constant(ty, 1.0)
        b.store(zero if accumulate is None else b.select(accumulate, one, zero), self.beta)
        pty = ir.PointerType(ty)
        pa, pb, pc = (b.bitcast(p, pty) for p in (pa, pb, pc))
        args = [self.ta, self.tb, self.m, self.n, self.k, self.alpha, pb, self.ld_b, pa, self.ld_a]
        b.call(self.fn, [*args, self.beta, pc, self.ldc])


class OwnGemm:
    """`Gemm`'s interface over our own GEMM (`mgemm.driver`): `C[m,n] = op(A) @ op(B) (+ C)` with
    the flags and leading dims fixed and the sizes and pointers per call. `packed` picks the
    packed form, which packs into `scratch` (an i8 pointer to `mgemm.pack_bytes` of memory of
    the calling task's own); else B is read in place and must have rows of unit stride. `n`:
    the most columns of C a call has (few take a narrower tile)."""

    def __init__(self, r, dtype: str, layout: tuple, packed: bool, scratch, n: int) -> None:
        ta, tb, lda, ldb, ldc = layout
        if not packed and tb != "N":
            raise ValueError("our in-place GEMM reads B's rows in place: B may not be transposed")
        self.r, self.dtype, self.ta, self.tb = r, dtype, ta, tb
        self.fn = mgemm.driver(r.module, dtype, packed, mgemm.thin(dtype, n))
        self.pty = ir.PointerType(mgemm._elem(dtype))
        self.ldb, self.ldc, self.scratch = I64(ldb), I64(ldc), scratch
        self.ld_a = r.alloca_builder.alloca(I64)
        r.alloca_builder.store(I64(lda), self.ld_a)

    def __call__(
        self, m, n, k, pa, pb, pc, accumulate: ir.Value | None = None, lda: ir.Value | None = None
    ) -> None:
        """One call (sizes i32, as `Gemm` takes them); `accumulate` (an i1) makes it C += A @ B;
        `lda` (an i32) replaces A's leading dim from here on."""
        b = self.r.b
        if lda is not None:
            b.store(b.sext(lda, I64), self.ld_a)
        ld_a = b.load(self.ld_a)
        a_rs, a_ks = (ld_a, I64(1)) if self.ta == "N" else (I64(1), ld_a)
        b_ks, b_ns = (self.ldb, I64(1)) if self.tb == "N" else (I64(1), self.ldb)
        pa, pb, pc = (b.bitcast(p, self.pty) for p in (pa, pb, pc))
        pk = (
            ir.Constant(self.pty, None)
            if self.scratch is None
            else b.bitcast(self.scratch, self.pty)
        )
        acc = ir.IntType(1)(0) if accumulate is None else accumulate
        m, n, k = (b.sext(x, I64) for x in (m, n, k))
        b.call(self.fn, [m, n, k, pa, a_rs, a_ks, pb, b_ks, b_ns, pc, self.ldc, pk, acc])


def _indices(batch):
    return itertools.product(*(range(n) for n in batch))  # () for no batch: one index


def _batch_offset(view: View, bidx: tuple, nbatch: int) -> int:
    """Element offset of the matrix at batch index `bidx` (operands broadcast from the right)."""
    own = len(view.shape) - 2
    off = view.offset
    for j in range(own):
        i = bidx[nbatch - own + j]
        if view.shape[j] != 1:
            off += i * view.strides[j]
    return off


def pack(r, ld: Load, dtype: str) -> Load:
    """Copy an operand BLAS cannot read into compact scratch of `dtype`."""
    shape = ld.view.shape
    nbytes = math.prod(shape) * (4 if dtype == "float32" else 8)
    buf = Buffer(f"{r.k.name}.pack{len(r.base)}", nbytes, "temp", shape, dtype)
    r.scratch_buffer(buf)
    _copy_nest(r, ld, buf, dtype, 0)  # a loop nest over the operand's logical dims
    return Load(buf, View.contiguous(shape))


def _copy_nest(r, ld: Load, dst: Buffer, dtype: str, d: int) -> None:
    shape = ld.view.shape
    if d == len(shape):
        r.store(dst, View.contiguous(shape), r.load(ld, dtype), dtype)
        return
    with counted_loop(r.b, shape[d], f"pack{d}") as i:
        r.idx[d] = i
        _copy_nest(r, ld, dst, dtype, d + 1)
