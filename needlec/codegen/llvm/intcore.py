"""Integer (and bool) GEMM and convolution cores as loop nests in LLVM IR.

BLAS has no integer GEMM, so a core whose compute dtype is int32, int64 or bool is rendered as
loops of its own. Operands are read element by element through their views (`r.load`, which
applies masks and converts to the compute dtype), and the result accumulates in the compute
dtype straight in `into` (compact, row-major): zeroed, then each product added. Integer
arithmetic is LLVM's `add`/`mul` without overflow flags, so it wraps exactly as numpy's does;
and since wrapping sums are exact, the order of the terms (and how the work is split over
threads) never changes the result. A bool core is numpy's: an OR of ANDs.

The innermost loop runs over a dim that is contiguous in the result (and, for compact
operands, in the operand read there), so LLVM can vectorize it:

- matmul `C[b, i, j] += A[b, i, k] * B[b, k, j]`: loops (b, i, k, j), A's element hoisted out of
  the j loop;
- conv `out[n, oh, ow, co] += x[n, oh*s + kh - p, ow*s + kw - p, ci] * w[kh, kw, ci, co]`: loops
  (n, oh, ow, kh, kw, ci, co), taps in the padding skipped;
- its input gradient, `dx[n, oh*s + kh - p, ow*s + kw - p, ci] += sum over co of
  g[n, oh, ow, co] * w[kh, kw, ci, co]`: loops (n, oh, ow, kh, kw, ci), the sum over co in a
  register, shares landing in the padding skipped;
- its weight gradient, `dw[kh, kw, ci, co] += x[n, oh*s + kh - p, ow*s + kw - p, ci] *
  g[n, oh, ow, co]`: loops (kh, kw, n, oh, ow, ci, co), one tap's ci-by-co block at a time.

Large cores run on the thread pool, split by rows of the result (a matmul's rows of all
batches, a convolution's or input gradient's images, a weight gradient's taps):
each task zeroes and sums into rows of its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from llvmlite import ir

from ...ir import Op
from ...ir.kernel import Core
from ...ir.ops import CONVS
from ...ir.schedule import Buffer
from .loops import counted_loop, in_range

I1, I8, I64 = ir.IntType(1), ir.IntType(8), ir.IntType(64)
INT_CORE_DTYPES = ("int32", "int64", "bool")
PARALLEL_MIN_OPS = 1 << 18  # multiply-adds below which a core runs on one thread
GRAIN_OPS = 1 << 16  # multiply-adds one task does at least


def supported(core: Core) -> bool:
    """Whether `core` is one this module renders: a matmul or convolution computed in an
    integer dtype or bool."""
    return (core.op is Op.MATMUL or core.op in CONVS) and core.dtype in INT_CORE_DTYPES


def emit_int_core(r, core: Core, into: Buffer) -> None:
    """Emit the integer matmul or convolution `core` into buffer `into` (compact, row-major, of
    `core.dtype`) for renderer `r`."""
    if not supported(core):
        raise _error(r, core, "is not an integer matmul or convolution")
    if into.dtype != core.dtype or tuple(into.shape) != tuple(core.shape):
        raise _error(r, core, f"writes {into.dtype}{list(into.shape)}, not its own result")
    if math.prod(core.shape) == 0:
        return
    emit = {
        Op.MATMUL: _matmul,
        Op.CONV: _conv,
        Op.CONV_INPUT_GRAD: _conv_input_grad,
        Op.CONV_WEIGHT_GRAD: _conv_weight_grad,
    }[core.op]
    emit(r, core, into)


def _error(r, core: Core, why: str):
    from .render import LoweringError  # render imports this module

    return LoweringError(f"{core.op.name.lower()} core on {core.dtype} of kernel {r.k.name} {why}")


# ------------------------------------------------------------------ arithmetic


def _zero(dtype: str) -> ir.Constant:
    return ir.Constant(_reg(dtype), 0)


def _reg(dtype: str) -> ir.IntType:
    return {"bool": I1, "int32": ir.IntType(32), "int64": I64}[dtype]


def _mul(b: ir.IRBuilder, x: ir.Value, y: ir.Value, dtype: str) -> ir.Value:
    return b.and_(x, y) if dtype == "bool" else b.mul(x, y)  # no nsw: wraps as numpy's


def _add(b: ir.IRBuilder, x: ir.Value, y: ir.Value, dtype: str) -> ir.Value:
    return b.or_(x, y) if dtype == "bool" else b.add(x, y)


def _element(r, buf: Buffer, index: ir.Value) -> ir.Value:
    """Pointer to element `index` (an i64) of `buf` (bool elements are bytes)."""
    return r.pointer(buf, index)


def _accumulate(r, buf: Buffer, index: ir.Value, x: ir.Value, dtype: str) -> None:
    """buf[index] += x, in `dtype` (the buffer's own)."""
    b = r.b
    ptr = _element(r, buf, index)
    old = b.load(ptr)
    if dtype == "bool":
        b.store(b.or_(old, b.zext(x, I8)), ptr)
    else:
        b.store(b.add(old, x), ptr)


def _rows(r, n: int, per_row: int, emit: Callable) -> None:
    """`emit(lo, hi)` over rows [0, n) of the result (each row `per_row` multiply-adds): on the
    thread pool where the renderer runs parallel loops and the work is large enough, else here.
    Rows write parts of the result of their own, and integer sums are exact, so the split
    never changes the result."""
    if r.parallel and n > 1 and n * per_row >= PARALLEL_MIN_OPS:
        r.parallel_region(n, max(1, -(-GRAIN_OPS // max(per_row, 1))), emit)
    else:
        emit(I64(0), I64(n))


def _fill_zero(r, into: Buffer, lo: ir.Value, hi: ir.Value, dtype: str) -> None:
    """into[lo:hi] = 0 (element indices, i64)."""
    zero = ir.Constant(I8, 0) if dtype == "bool" else _zero(dtype)
    with counted_loop(r.b, hi, "zero", lo) as i:
        r.b.store(zero, _element(r, into, i))


# ------------------------------------------------------------------ matmul


def _matmul(r, core: Core, into: Buffer) -> None:
    a, bb = core.operands
    dtype = core.dtype
    out = core.shape
    batch, (m, n) = out[:-2], out[-2:]
    k = a.view.shape[-1]
    nb = len(batch)
    rows = math.prod(batch) * m

    def emit(lo: ir.Value, hi: ir.Value) -> None:
        b = r.b
        _fill_zero(r, into, b.mul(lo, I64(n)), b.mul(hi, I64(n)), dtype)
        with counted_loop(b, hi, "mrow", lo) as row:  # a row of all batches' results
            rest, bidx = row, []
            for d in reversed((*batch, m)):
                bidx.append(b.urem(rest, I64(d)))
                rest = b.udiv(rest, I64(d))
            bidx.reverse()
            i = bidx.pop()
            base = b.mul(row, I64(n))
            with counted_loop(b, k, "mk") as kk:
                _operand_index(r, a.view.shape, bidx, nb, (i, kk))
                av = r.load(a, dtype)
                with counted_loop(b, n, "mj") as j:
                    _operand_index(r, bb.view.shape, bidx, nb, (kk, j))
                    _accumulate(
                        r, into, b.add(base, j), _mul(b, av, r.load(bb, dtype), dtype), dtype
                    )

    _rows(r, rows, n * k, emit)


def _operand_index(r, shape, bidx: list, nbatch: int, last: tuple) -> None:
    """Set `r.idx` for an operand of logical `shape` (..., R, C) at the result's batch index
    `bidx` (operands broadcast from the right; a dim of 1 is read at 0 by the view) and matrix
    index `last`."""
    own = len(shape) - 2
    for j in range(own):
        r.idx[j] = bidx[nbatch - own + j]
    r.idx[own], r.idx[own + 1] = last


# ------------------------------------------------------------------ convolutions


def _window(b, o: ir.Value, t: ir.Value, stride: int, pad: int) -> ir.Value:
    """The input position output `o` reads at tap `t`: o*stride + t - pad."""
    return b.add(b.mul(o, I64(stride)), b.sub(t, I64(pad)))


def _conv(r, core: Core, into: Buffer) -> None:
    x, w = core.operands
    stride, pad = core.arg
    dtype = core.dtype
    n_img, ho, wo, co = core.shape
    _, h, wd, _ = x.view.shape
    kh, kw, ci, _ = w.view.shape
    per_img = ho * wo * kh * kw * ci * co

    def emit(lo: ir.Value, hi: ir.Value) -> None:
        b = r.b
        _fill_zero(r, into, b.mul(lo, I64(ho * wo * co)), b.mul(hi, I64(ho * wo * co)), dtype)
        with counted_loop(b, hi, "cn", lo) as n:
            with counted_loop(b, ho, "coh") as oh, counted_loop(b, wo, "cow") as ow:
                base = b.mul(b.add(b.mul(b.add(b.mul(n, I64(ho)), oh), I64(wo)), ow), I64(co))
                with counted_loop(b, kh, "ckh") as th:
                    ih = _window(b, oh, th, stride, pad)
                    with b.if_then(in_range(b, ih, 0, h)), counted_loop(b, kw, "ckw") as tw:
                        iw = _window(b, ow, tw, stride, pad)
                        with b.if_then(in_range(b, iw, 0, wd)), counted_loop(b, ci, "cci") as c:
                            r.idx.update({0: n, 1: ih, 2: iw, 3: c})
                            xv = r.load(x, dtype)
                            with counted_loop(b, co, "cco") as o:
                                r.idx.update({0: th, 1: tw, 2: c, 3: o})
                                v = _mul(b, xv, r.load(w, dtype), dtype)
                                _accumulate(r, into, b.add(base, o), v, dtype)

    _rows(r, n_img, per_img, emit)


def _conv_input_grad(r, core: Core, into: Buffer) -> None:
    g, w = core.operands
    stride, pad, h, wd = core.arg
    dtype = core.dtype
    n_img, ho, wo, co = g.view.shape
    kh, kw, ci, _ = w.view.shape
    per_img = ho * wo * kh * kw * ci * co

    def emit(lo: ir.Value, hi: ir.Value) -> None:
        b = r.b
        _fill_zero(r, into, b.mul(lo, I64(h * wd * ci)), b.mul(hi, I64(h * wd * ci)), dtype)
        acc = r.alloca_builder.alloca(_reg(dtype), name="igacc")
        with counted_loop(b, hi, "gn", lo) as n:
            with counted_loop(b, ho, "goh") as oh, counted_loop(b, wo, "gow") as ow:
                with counted_loop(b, kh, "gkh") as th:
                    ih = _window(b, oh, th, stride, pad)
                    with b.if_then(in_range(b, ih, 0, h)), counted_loop(b, kw, "gkw") as tw:
                        iw = _window(b, ow, tw, stride, pad)
                        with b.if_then(in_range(b, iw, 0, wd)):
                            pix = b.add(b.mul(b.add(b.mul(n, I64(h)), ih), I64(wd)), iw)
                            with counted_loop(b, ci, "gci") as c:
                                b.store(_zero(dtype), acc)
                                with counted_loop(b, co, "gco") as o:
                                    r.idx.update({0: n, 1: oh, 2: ow, 3: o})
                                    gv = r.load(g, dtype)
                                    r.idx.update({0: th, 1: tw, 2: c, 3: o})
                                    v = _mul(b, gv, r.load(w, dtype), dtype)
                                    b.store(_add(b, b.load(acc), v, dtype), acc)
                                at = b.add(b.mul(pix, I64(ci)), c)
                                _accumulate(r, into, at, b.load(acc), dtype)

    _rows(r, n_img, per_img, emit)


def _conv_weight_grad(r, core: Core, into: Buffer) -> None:
    x, g = core.operands
    stride, pad, kh, kw = core.arg
    dtype = core.dtype
    n_img, h, wd, ci = x.view.shape
    _, ho, wo, co = g.view.shape
    per_tap = n_img * ho * wo * ci * co

    def emit(lo: ir.Value, hi: ir.Value) -> None:
        """Taps [lo, hi) of (kh, kw): dw[kh, kw] (ci by co) summed over every output."""
        b = r.b
        _fill_zero(r, into, b.mul(lo, I64(ci * co)), b.mul(hi, I64(ci * co)), dtype)
        with counted_loop(b, hi, "wtap", lo) as tap:
            th, tw = b.udiv(tap, I64(kw)), b.urem(tap, I64(kw))
            with counted_loop(b, n_img, "wn") as n, counted_loop(b, ho, "woh") as oh:
                ih = _window(b, oh, th, stride, pad)
                with b.if_then(in_range(b, ih, 0, h)), counted_loop(b, wo, "wow") as ow:
                    iw = _window(b, ow, tw, stride, pad)
                    with b.if_then(in_range(b, iw, 0, wd)), counted_loop(b, ci, "wci") as c:
                        r.idx.update({0: n, 1: ih, 2: iw, 3: c})
                        xv = r.load(x, dtype)
                        base = b.mul(b.add(b.mul(tap, I64(ci)), c), I64(co))
                        with counted_loop(b, co, "wco") as o:
                            r.idx.update({0: n, 1: oh, 2: ow, 3: o})
                            v = _mul(b, xv, r.load(g, dtype), dtype)
                            _accumulate(r, into, b.add(base, o), v, dtype)

    _rows(r, kh * kw, per_tap, emit)


__all__ = ["INT_CORE_DTYPES", "emit_int_core", "supported"]
