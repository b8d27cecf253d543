"""GEMM cores as calls into the BLAS that scipy ships (`scipy.linalg.cython_blas`).

`sgemm`/`dgemm` are called through their function pointers, which scipy exports, with column-major
arguments: a row-major `C[M,N] = A[M,K] @ B[K,N]` is the column-major `C^T = B^T A^T`. A transposed
operand is passed as a flag and a leading dimension, never copied; an operand BLAS cannot take
(masked, negative or zero strides on a dim it needs, neither dim unit-stride) is packed into
scratch first. Batched matmul loops over the batch, one call per matrix.
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import math

from llvmlite import ir

from ...ir import Op
from ...ir.kernel import Core, Load
from ...ir.schedule import Buffer
from ...ir.view import View
from .loops import counted_loop

I8, I32, I64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)


@functools.cache
def blas_address(name: str) -> int:
    """The address of scipy's BLAS routine `name` (for example "sgemm")."""
    import scipy.linalg.cython_blas as blas

    capsule = blas.__pyx_capi__[name]
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype = ctypes.c_void_p
    get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    return get_pointer(capsule, get_name(capsule))


def supported(core: Core) -> bool:
    """Whether this core renders natively: float32/float64 matmul (convolution and integer
    GEMM run on the reference until their lowerings land)."""
    return core.op is Op.MATMUL and core.dtype in ("float32", "float64")


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
    """Emit the matmul `core` into buffer `into` (compact, row-major) for renderer `r`."""
    b = r.b
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
            ld = _pack(r, ld, dtype)
            ok = _matrix(ld.view)
        ops.append((ld, ok))
    (a, (ta, lda)), (bb, (tb, ldb)) = ops
    m, k = a.view.shape[-2:]
    n = bb.view.shape[-1]
    out_shape = core.shape
    batch = out_shape[:-2]
    fnty = ir.FunctionType(
        ir.VoidType(),
        [ir.PointerType(I8)] * 2
        + [ir.PointerType(I32)] * 3
        + [ir.PointerType(ty)] * 2
        + [ir.PointerType(I32), ir.PointerType(ty), ir.PointerType(I32)]
        + [ir.PointerType(ty)] * 2
        + [ir.PointerType(I32)],
    )
    addr = blas_address("sgemm" if dtype == "float32" else "dgemm")
    fn = b.inttoptr(I64(addr), ir.PointerType(fnty))
    ab = r.alloca_builder

    def slot(t, value):
        p = ab.alloca(t)
        b.store(value, p)
        return p

    # column-major: C^T (N x M) = op(B^T) (N x K) @ op(A^T) (K x M)
    args_const = dict(
        ta=slot(I8, I8(ord(tb))),
        tb=slot(I8, I8(ord(ta))),
        m=slot(I32, I32(n)),
        n=slot(I32, I32(m)),
        k=slot(I32, I32(k)),
        alpha=slot(ty, ir.Constant(ty, 1.0)),
        lda=slot(I32, I32(ldb)),
        ldb=slot(I32, I32(lda)),
        beta=slot(ty, ir.Constant(ty, 0.0)),
        ldc=slot(I32, I32(max(n, 1))),
    )
    itemsize = 4 if dtype == "float32" else 8
    for bidx in _indices(batch):
        a_off = _batch_offset(a.view, bidx, len(batch))
        b_off = _batch_offset(bb.view, bidx, len(batch))
        c_off = sum(i * s for i, s in zip(bidx, _strides(out_shape)[: len(batch)], strict=True))
        pa = b.bitcast(b.gep(r.base[a.buffer], [I64(a_off * itemsize)]), ir.PointerType(ty))
        pb = b.bitcast(b.gep(r.base[bb.buffer], [I64(b_off * itemsize)]), ir.PointerType(ty))
        pc = b.bitcast(b.gep(r.base[into], [I64(c_off * itemsize)]), ir.PointerType(ty))
        c = args_const
        b.call(
            fn,
            [
                c["ta"],
                c["tb"],
                c["m"],
                c["n"],
                c["k"],
                c["alpha"],
                pb,
                c["lda"],
                pa,
                c["ldb"],
                c["beta"],
                pc,
                c["ldc"],
            ],
        )


def _strides(shape) -> list[int]:
    out, acc = [], 1
    for d in reversed(shape):
        out.append(acc)
        acc *= d
    return out[::-1]


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


def _pack(r, ld: Load, dtype: str) -> Load:
    """Copy an operand BLAS cannot read into compact scratch of `dtype`."""
    shape = ld.view.shape
    nbytes = math.prod(shape) * (4 if dtype == "float32" else 8)
    buf = Buffer(f"{r.k.name}.pack{len(r.base)}", nbytes, "temp", shape, dtype)
    r.base[buf] = r.b.gep(r.scratch_ptr, [I64(r.alloc_scratch(nbytes))])
    # a loop nest over the operand's logical dims, reading through the view
    saved = dict(r.idx)
    _copy_nest(r, ld, buf, dtype, 0)
    r.idx = saved
    return Load(buf, View.contiguous(shape))


def _copy_nest(r, ld: Load, dst: Buffer, dtype: str, d: int) -> None:
    shape = ld.view.shape
    if d == len(shape):
        r.store(dst, View.contiguous(shape), r.load(ld, dtype), dtype)
        return
    with counted_loop(r.b, shape[d], f"pack{d}") as i:
        r.idx[d] = i
        _copy_nest(r, ld, dst, dtype, d + 1)
