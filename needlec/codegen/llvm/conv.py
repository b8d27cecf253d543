"""Convolution cores as im2col gathers plus BLAS GEMM, tile by tile.

A core `out[n, oh, ow, co] = sum over (kh, kw, ci) of x[n, oh*s + kh - p, ow*s + kw - p, ci] *
w[kh, kw, ci, co]` is the GEMM `out[M, Co] = col[M, K] @ wmat[K, Co]` with M = (n, oh, ow) and
K = (kh, kw, ci). Both operands are views the passes produce (NHWC read through a transpose,
flipped weights, a dilated gradient behind a mask), so both are gathered through their views:

- the weight once, into compact scratch `wmat[K, Co]`, its K rows only those the weight's mask
  keeps (a gradient read through a mask has zero rows the GEMM need not see);
- the input a tile at a time: the rows of a few images and a range of K, about `TILE` elements,
  so the tile stays in cache for the GEMM that reads it. Out-of-range rows and columns (padding,
  masks) gather zeros.

K is ordered so the input's smallest-stride dim is innermost (the gather reads runs of memory),
and the weight is packed in the same order. Each tile's GEMM accumulates into the output rows of
its images (BLAS's beta: 0 for the first K tile, 1 after).
"""

from __future__ import annotations

import math

from llvmlite import ir

from ...ir.kernel import Core
from ...ir.schedule import Buffer
from .gemm import Gemm, pool_may_call_blas
from .loops import counted_loop

I1, I32, I64 = ir.IntType(1), ir.IntType(32), ir.IntType(64)
TILE = 1 << 18  # elements of one gathered input tile (1 MiB of float32)
CONV_GRAIN_FLOPS = 1 << 22  # a parallel task does at least this much of a convolution


def _in_range(b: ir.IRBuilder, i: ir.Value, lo: int, hi: int) -> ir.Value:
    return b.and_(b.icmp_signed(">=", i, I64(lo)), b.icmp_signed("<", i, I64(hi)))


def emit_conv(r, core: Core, into: Buffer) -> None:
    """Emit the convolution `core` into buffer `into` (compact NHWC) for renderer `r`."""
    b = r.b
    x, w = core.operands
    stride, pad = core.arg
    dtype = core.dtype
    itemsize = 4 if dtype == "float32" else 8
    n_img, ho, wo, co = core.shape
    if math.prod(core.shape) == 0:
        return
    # the K dims: (weight dim, input dim, the range of it the weight's mask keeps)
    wb = w.view.bounds()
    kdims = [(d, d + 1, (max(wb[d][0], 0), min(wb[d][1], w.view.shape[d]))) for d in range(3)]
    if any(hi <= lo for _, _, (lo, hi) in kdims) or any(lo >= hi for lo, hi in wb[3:]):
        r.fill(into, r.const(dtype, 0), dtype)  # an empty sum (or a masked-out weight): zeros
        return
    # innermost: the dim the input steps through most finely
    kdims.sort(key=lambda kd: -abs(x.view.strides[kd[1]]))
    ext = [hi - lo for _, _, (lo, hi) in kdims]
    k_total = math.prod(ext)
    k_inner = ext[1] * ext[2]
    rows_per_img = ho * wo

    # the weight as wmat[K, Co], rows in K order
    wbuf = Buffer(f"{r.k.name}.wmat", k_total * co * itemsize, "temp", (k_total, co), dtype)
    r.scratch_buffer(wbuf)
    with counted_loop(b, ext[0], "wk0") as a0:
        with counted_loop(b, ext[1], "wk1") as a1:
            with counted_loop(b, ext[2], "wk2") as a2:
                row = b.add(b.mul(b.add(b.mul(a0, I64(ext[1])), a1), I64(ext[2])), a2)
                for (d, _, (lo, _)), a in zip(kdims, (a0, a1, a2), strict=True):
                    r.idx[d] = b.add(a, I64(lo))  # the weight's dims, read through its view
                with counted_loop(b, co, "wco") as c:
                    r.idx[3] = c
                    v = r.load(w, dtype)
                    b.store(v, r.pointer(wbuf, b.add(b.mul(row, I64(co)), c)))

    # tiles: whole images by whole steps of the outermost K dim
    if rows_per_img * k_total <= TILE:
        imgs, k0_step = max(1, min(n_img, TILE // (rows_per_img * k_total))), ext[0]
    else:
        imgs, k0_step = 1, max(1, min(ext[0], TILE // (rows_per_img * k_inner)))
    col_bytes = imgs * rows_per_img * k0_step * k_inner * itemsize
    n_tiles = -(-n_img // imgs)
    hw_bounds = []
    for d in (1, 2):
        lo, hi = x.view.bounds()[d]
        hw_bounds += [max(lo, 0), min(hi, x.view.shape[d])]
    plan = _Plan(x, dtype, kdims, ext, stride, pad, (ho, wo, co), hw_bounds, imgs, k0_step)

    def tiles(lo, hi, col):
        """Image tiles [lo, hi): each gathered K tile by K tile, each tile's GEMM."""
        gemm = Gemm(r, dtype, "N", "N", 1, co, co)  # col's leading dim is per K tile
        with counted_loop(r.b, hi, "ntile", lo) as nt:  # r.b: the region's builder
            plan.tile(r, gemm, nt, col, wbuf, into)

    if pool_may_call_blas(r) and n_tiles > 1 and core.flops() >= 2 * CONV_GRAIN_FLOPS:
        # each task gathers into memory of its own
        def task(lo, hi):
            col = r.b.call(_libc(r.module, "malloc"), [I64(col_bytes)])
            tiles(lo, hi, col)
            r.b.call(_libc(r.module, "free"), [col])

        grain = max(1, -(-CONV_GRAIN_FLOPS // (core.flops() // n_tiles)))
        r.parallel_region(n_tiles, grain, task)
    else:
        cbuf = Buffer(f"{r.k.name}.col", col_bytes, "temp", (col_bytes // itemsize,), dtype)
        r.scratch_buffer(cbuf)
        tiles(I64(0), I64(n_tiles), r.base[cbuf])


class _Plan:
    """One convolution's tiling: what a tile gathers, and its GEMMs."""

    def __init__(self, x, dtype, kdims, ext, stride, pad, out, hw_bounds, imgs, k0_step):
        self.x, self.dtype, self.kdims, self.ext = x, dtype, kdims, ext
        self.stride, self.pad, self.hw_bounds = stride, pad, hw_bounds
        self.ho, self.wo, self.co = out
        self.imgs, self.k0_step = imgs, k0_step
        self.n_img = x.view.shape[0]
        self.itemsize = 4 if dtype == "float32" else 8

    def tile(self, r, gemm, nt, col, wbuf, into) -> None:
        """Image tile `nt`: for each K tile, gather it into `col` and add its GEMM to the
        output rows of the tile's images."""
        b, ext, itemsize = r.b, self.ext, self.itemsize
        k_inner = ext[1] * ext[2]
        rows_per_img = self.ho * self.wo
        n0 = b.mul(nt, I64(self.imgs))
        nb = _min(b, I64(self.imgs), b.sub(I64(self.n_img), n0))
        k_tiles = -(-ext[0] // self.k0_step)
        with counted_loop(b, k_tiles, "ktile") as kt:
            k0 = b.mul(kt, I64(self.k0_step))
            kb = _min(b, I64(self.k0_step), b.sub(I64(ext[0]), k0))
            kcols = b.mul(kb, I64(k_inner))  # the tile's K, and col's leading dim
            self.gather(r, col, (n0, nb, k0, kb, kcols))
            m = b.trunc(b.mul(nb, I64(rows_per_img)), I32)
            pb = b.gep(r.base[wbuf], [b.mul(k0, I64(k_inner * self.co * itemsize))])
            pc = b.gep(r.base[into], [b.mul(n0, I64(rows_per_img * self.co * itemsize))])
            first = b.icmp_signed("==", kt, I64(0))
            k = b.trunc(kcols, I32)
            gemm(m, I32(self.co), k, col, pb, pc, accumulate=b.not_(first), lda=k)

    def gather(self, r, col, tile) -> None:
        """col[(n - n0, oh, ow), (a0 - k0, a1, a2)] = x[n, oh*s + kh - p, ow*s + kw - p, ci]
        for the images and K steps of one tile (row-major, leading dim `kcols`)."""
        b, ext, ho, wo = r.b, self.ext, self.ho, self.wo
        n0, nb, k0, kb, kcols = tile
        h_lo, h_hi, w_lo, w_hi = self.hw_bounds
        elem = ir.FloatType() if self.dtype == "float32" else ir.DoubleType()
        ptr = b.bitcast(col, ir.PointerType(elem))
        with counted_loop(b, b.add(n0, nb), "gn", n0) as n:
            with counted_loop(b, ho, "goh") as oh:
                with counted_loop(b, wo, "gow") as ow:
                    row = b.add(b.mul(b.add(b.mul(b.sub(n, n0), I64(ho)), oh), I64(wo)), ow)
                    base = b.mul(row, kcols)
                    hs = b.sub(b.mul(oh, I64(self.stride)), I64(self.pad))
                    ws = b.sub(b.mul(ow, I64(self.stride)), I64(self.pad))
                    with counted_loop(b, b.add(k0, kb), "ga0", k0) as a0:
                        with counted_loop(b, ext[1], "ga1") as a1:
                            col0 = b.add(base, b.mul(b.sub(a0, k0), I64(ext[1] * ext[2])))
                            col0 = b.add(col0, b.mul(a1, I64(ext[2])))
                            with counted_loop(b, ext[2], "ga2") as a2:
                                kidx = [None] * 3
                                for (d, _, (lo, _)), a in zip(
                                    self.kdims, (a0, a1, a2), strict=True
                                ):
                                    kidx[d] = b.add(a, I64(lo))
                                h, w_ = b.add(hs, kidx[0]), b.add(ws, kidx[1])
                                inside = b.and_(  # not in the padding
                                    _in_range(b, h, h_lo, h_hi), _in_range(b, w_, w_lo, w_hi)
                                )
                                r.idx.update({0: n, 1: h, 2: w_, 3: kidx[2]})  # x's own dims
                                v = r.load(self.x, self.dtype, inside)
                                b.store(v, b.gep(ptr, [b.add(col0, a2)]))


def _libc(module: ir.Module, name: str) -> ir.Function:
    fn = module.globals.get(name)
    if fn is None:
        i8p = ir.PointerType(ir.IntType(8))
        ty = {
            "malloc": ir.FunctionType(i8p, [I64]),
            "free": ir.FunctionType(ir.VoidType(), [i8p]),
        }[name]
        fn = ir.Function(module, ty, name)
    return fn


def _min(b: ir.IRBuilder, x: ir.Value, y: ir.Value) -> ir.Value:
    return b.select(b.icmp_signed("<", x, y), x, y)


__all__ = ["emit_conv"]
