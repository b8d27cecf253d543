"""Convolution cores, and the cores of its two gradients, as im2col gathers plus GEMM.

A core `out[n, oh, ow, co] = sum over (kh, kw, ci) of x[n, oh*s + kh - p, ow*s + kw - p, ci] *
w[kh, kw, ci, co]` is the GEMM `out[M, Co] = col[M, K] @ wmat[K, Co]` with M = (n, oh, ow) and
K = (kh, kw, ci). Both operands are views the passes produce (NHWC read through a transpose,
flipped weights, a gradient behind a mask), so both are gathered through their views:

- the weight once, into compact scratch `wmat[K, Co]`, its K rows only those the weight's mask
  keeps (a weight read through a mask has zero rows the GEMM need not see);
- the input a tile at a time: the rows of a few images and a range of K, about `TILE` elements,
  so the tile stays in cache for the GEMM that reads it. Out-of-range rows and columns (padding,
  masks) gather zeros.

K is ordered so the input's smallest-stride dim is innermost (the gather reads runs of memory),
and the weight is packed in the same order. Each tile's GEMM accumulates into the output rows of
its images (C = A @ B for the first K tile, C += A @ B after).

The GEMMs are our own (`mgemm`, through `gemm.OwnGemm`) where matmuls use it (AVX-512, or
`NEEDLEC_GEMM=own`), else BLAS's (`gemm.Gemm`; `NEEDLEC_GEMM=blas` forces it). Ours reads B in
place for small products (the weight, or the upstream gradient's rows) and else packs it; its
packing scratch lies just after each task's column buffer, so tasks never share it. ResNet9's
4x4 block (32 -> 32 channels, batch 128, forward and both gradients; benchmarks/bench_kernels.py,
2 threads, load 0.4): 0.34 ms on ours, 0.96x torch's time, where BLAS took 1.72x; its stem
(3 -> 16, k7 s4 on 32x32) 0.23x (BLAS 0.39x). One thread (min of 60 calls, load ~4): 0.56 ms
against 1.16 ms on BLAS (torch 0.56 ms), of which the gathers and packing take about 80 us, the
GEMMs the rest (near the micro-kernel's peak; about 30% of their flops multiply taps in the
padding of a 4x4 image).

The gradients use the same pieces the other way round:

- the weight's gradient `dw[K, Co] = col^T @ g[M, Co]`: the input gathered exactly as for the
  forward conv, each tile's GEMM adding its images' share. Image tiles are split into a fixed
  number of groups (from the shapes, never the thread count), each summing into a partial of
  its own; the partials are added in group order, so the result has the same bits on any
  number of threads (each GEMM sums over K in one order too);
- the input's gradient (col2im): per image tile `dcol[M, K] = g[M, Co] @ wmat^T` (the weight
  packed transposed for our GEMM, which reads B's rows in place), then each row
  of dcol added back over its window of the input's gradient, in runs of KW*Cin contiguous
  elements (K in the weight's own order). Every image lies in one tile, so tiles run in
  parallel.
"""

from __future__ import annotations

import math

from llvmlite import ir

from ...ir import Op
from ...ir.kernel import Core, Load
from ...ir.schedule import Buffer
from ...ir.view import View, strides_of
from . import mgemm
from .gemm import Gemm, OwnGemm, pack, pool_may_call_blas
from .loops import chunk_size, counted_loop, in_range

I1, I32, I64 = ir.IntType(1), ir.IntType(32), ir.IntType(64)
TILE = 1 << 18  # elements of one gathered input tile (1 MiB of float32)
CONV_GRAIN_FLOPS = 1 << 22  # a parallel task does at least this much of a convolution
MIN_TILES = 8  # image tiles of a convolution, at least (where it has the images)
MAX_SLOTS = 16  # chunks of a parallel convolution, each with a column buffer, at most
MAX_GROUPS = 8  # partial sums of a weight gradient, at most
GROUP_BYTES = 1 << 23  # and at most this much memory for them


def emit_conv(r, core: Core, into: Buffer) -> None:
    """Emit the convolution core `core` (a conv or one of its gradients) into buffer `into`
    (compact, row-major) for renderer `r`."""
    if math.prod(core.shape) == 0:
        return
    {Op.CONV: _forward, Op.CONV_INPUT_GRAD: _input_grad, Op.CONV_WEIGHT_GRAD: _weight_grad}[
        core.op
    ](r, core, into)


def _nhwc(r, x: Load, dtype: str) -> Load:
    """`x` as it is where its (w, ci) dims are one contiguous run (NHWC), else copied into
    compact NHWC scratch first: an NCHW input's gather then copies runs of KW*Cin elements, not
    of KW. The copy walks x in its own memory order (reads contiguous, writes strided)."""
    v = x.view
    n, h, wd, ci = v.shape
    dense = (ci == 1 or v.strides[3] == 1) and (wd == 1 or v.strides[2] == ci)
    if dense or ci == 1 or v.mask is not None or v.offset < 0 or x.buffer.dtype != dtype:
        return x
    itemsize = 4 if dtype == "float32" else 8
    buf = Buffer(f"{r.k.name}.nhwc", n * h * wd * ci * itemsize, "temp", (n, h, wd, ci), dtype)
    r.scratch_buffer(buf)
    order = sorted(range(4), key=lambda d: -abs(v.strides[d]))  # outermost: largest stride
    dst = strides_of(v.shape)
    b = r.b

    def nest(depth: int, src: ir.Value, at: ir.Value) -> None:
        if depth == 4:
            b.store(b.load(r.pointer(x.buffer, src)), r.pointer(buf, at))
            return
        d = order[depth]
        with counted_loop(b, v.shape[d], f"nhwc{d}") as i:
            nest(
                depth + 1, b.add(src, b.mul(i, I64(v.strides[d]))), b.add(at, b.mul(i, I64(dst[d])))
            )

    nest(0, I64(v.offset), I64(0))
    return Load(buf, View.contiguous(v.shape))


def _forward(r, core: Core, into: Buffer) -> None:
    x, w = core.operands
    stride, pad = core.arg
    dtype = core.dtype
    itemsize = 4 if dtype == "float32" else 8
    n_img, ho, wo, co = core.shape
    # the K dims: (weight dim, input dim, the range of it the weight's mask keeps)
    wb = w.view.bounds()
    ranges = [(max(wb[d][0], 0), min(wb[d][1], w.view.shape[d])) for d in range(3)]
    xb = x.view.bounds()
    for d, n_out in ((0, ho), (1, wo)):  # and only the taps that meet the input
        seen = (max(xb[d + 1][0], 0), min(xb[d + 1][1], x.view.shape[d + 1]))
        taps = _taps(*seen, pad, stride, n_out, w.view.shape[d])
        ranges[d] = _intersect(ranges[d], taps)
    if any(hi <= lo for lo, hi in ranges) or any(lo >= hi for lo, hi in wb[3:]):
        r.fill(into, r.const(dtype, 0), dtype)  # an empty sum (or a masked-out weight): zeros
        return
    x = _nhwc(r, x, dtype)
    kdims = _kdims(x, ranges)
    ext = [hi - lo for _, _, (lo, hi) in kdims]
    k_inner = ext[1] * ext[2]
    rows_per_img = ho * wo
    wbuf = _pack_weight(r, w, kdims, co, dtype)
    imgs, k0_step = _tiling(rows_per_img, ext, n_img, _split(r, core))
    col_bytes = imgs * rows_per_img * k0_step * k_inner * itemsize
    n_tiles = -(-n_img // imgs)
    plan = _Plan(x, dtype, kdims, ext, stride, pad, (ho, wo, co), imgs, k0_step)
    path = _path(dtype, imgs * rows_per_img, co, k0_step * k_inner)

    def tiles(lo, hi, col):
        """Image tiles [lo, hi): each gathered K tile by K tile, each tile's GEMM."""
        layout = ("N", "N", 1, co, co)  # col's leading dim is per K tile
        gemm = _gemm(r, dtype, layout, co, path, col, col_bytes)
        with counted_loop(r.b, hi, "ntile", lo) as nt:  # r.b: the region's builder
            plan.tile(r, gemm, nt, col, wbuf, into)

    _over_tiles(r, core, n_tiles, _with_pack(col_bytes, path, dtype, co, k0_step * k_inner), tiles)


def _over_tiles(r, core: Core, n_tiles: int, col_bytes: int, tiles) -> None:
    """`tiles(lo, hi, col)` over image tiles [0, n_tiles): on the pool where the work is large
    enough, each chunk of tiles with a column buffer of its own (`col_bytes`, one slot of the
    scratch per chunk: at most MAX_SLOTS chunks, tiles being independent); otherwise one."""
    itemsize = 4 if core.dtype == "float32" else 8
    cbuf = Buffer(f"{r.k.name}.col", col_bytes, "temp", (col_bytes // itemsize,), core.dtype)
    if n_tiles > 1 and _split(r, core):
        grain = max(1, -(-CONV_GRAIN_FLOPS // (core.flops() // n_tiles)), -(-n_tiles // MAX_SLOTS))
        chunk = chunk_size(n_tiles, grain)
        r.scratch_buffer(cbuf, -(-n_tiles // chunk))

        def task(lo, hi):
            tiles(lo, hi, r.slot_pointer(cbuf, r.b.sdiv(lo, I64(chunk))))

        r.parallel_region(n_tiles, grain, task)
    else:
        r.scratch_buffer(cbuf)
        tiles(I64(0), I64(n_tiles), r.base[cbuf])


def _tiling(rows_per_img: int, ext: list[int], n_img: int, split: bool) -> tuple[int, int]:
    """(images, steps of the outermost K dim) of one tile: whole images by whole steps of the
    outermost K dim, about TILE elements of gathered columns."""
    k_total, k_inner = math.prod(ext), ext[1] * ext[2]
    if rows_per_img * k_total <= TILE:
        return _images(n_img, TILE // (rows_per_img * k_total), split), ext[0]
    return 1, max(1, min(ext[0], TILE // (rows_per_img * k_inner)))


def _images(n_img: int, fit: int, split: bool) -> int:
    """Images of one tile: as many as `fit`; with `split` (a convolution the pool shares), at
    least MIN_TILES tiles where there are images enough, so its threads get even shares."""
    return max(1, min(n_img, fit, -(-n_img // MIN_TILES) if split else n_img))


def _split(r, core: Core) -> bool:
    """Whether the pool shares this convolution's image tiles."""
    pool = r.parallel if _own(core.dtype) else pool_may_call_blas(r)
    return pool and core.flops() >= 2 * CONV_GRAIN_FLOPS


def _own(dtype: str) -> bool:
    """Whether convolutions run on our own GEMM (`mgemm`): where a large product would, so
    `NEEDLEC_GEMM=blas` keeps them on BLAS."""
    return mgemm.choose(dtype, 1 << 10, 1 << 10, 1 << 10) != "blas"


def _path(dtype: str, m: int, n: int, k: int) -> str:
    """The GEMM for products of at most m x n x k (B's rows of unit stride): "blas", or ours
    "small" (B in place) or "packed"."""
    return mgemm.choose(dtype, m, n, k) if _own(dtype) else "blas"


def _with_pack(col_bytes: int, path: str, dtype: str, n: int, k: int) -> int:
    """Bytes of a task's column buffer with room after it for the packed GEMM's panels."""
    if path != "packed":
        return col_bytes
    return -(-col_bytes // 64) * 64 + mgemm.pack_bytes(dtype, k, n)


def _gemm(r, dtype: str, layout: tuple, n: int, path: str, col: ir.Value, col_bytes: int):
    """The GEMM (of n columns) of a task whose column buffer is `col`: BLAS, or ours (its
    packing scratch just after the columns: `_with_pack`). `layout`: (ta, tb, lda, ldb, ldc) as
    `Gemm` takes them."""
    if path == "blas":
        return Gemm(r, dtype, *layout)
    scratch = r.b.gep(col, [I64(-(-col_bytes // 64) * 64)]) if path == "packed" else None
    return OwnGemm(r, dtype, layout, path == "packed", scratch, n)


def _pack_weight(r, w: Load, kdims, co: int, dtype: str, transpose: bool = False) -> Buffer:
    """The weight `w` (KH, KW, Cin, Cout) as compact scratch wmat[K, Co], K in `kdims`' order
    and ranges; with `transpose`, as wmat^T [Co, K]."""
    b = r.b
    ext = [hi - lo for _, _, (lo, hi) in kdims]
    k_total = math.prod(ext)
    itemsize = 4 if dtype == "float32" else 8
    shape = (co, k_total) if transpose else (k_total, co)
    wbuf = Buffer(f"{r.k.name}.wmat", k_total * co * itemsize, "temp", shape, dtype)
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
                    if transpose:
                        at = b.add(b.mul(c, I64(k_total)), row)
                    else:
                        at = b.add(b.mul(row, I64(co)), c)
                    b.store(v, r.pointer(wbuf, at))
    return wbuf


def _taps(lo: int, hi: int, pad: int, stride: int, n_out: int, k: int) -> tuple[int, int]:
    """The kernel taps [t0, t1) along one spatial dim that meet the input (its rows [lo, hi))
    at some output: taps outside only ever multiply padding, so no GEMM need see them."""
    return max(0, lo + pad - (n_out - 1) * stride), min(k, hi + pad)


def _intersect(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    return max(a[0], b[0]), min(a[1], b[1])


def _kdims(x: Load, ranges) -> list:
    """The K dims (weight dim, input dim, range) in gather order: the input's smallest-stride
    dim innermost."""
    kdims = [(d, d + 1, ranges[d]) for d in range(3)]
    kdims.sort(key=lambda kd: -abs(x.view.strides[kd[1]]))
    return kdims


def _rows(r, g: Load, dtype: str) -> tuple[Buffer, int]:
    """An (N, Ho, Wo, Co) operand as a row-major [N*Ho*Wo, Co] matrix: (buffer, element offset),
    the operand's own memory where it is laid out so, else a packed copy."""
    v = g.view
    compact = all(
        s == c for s, c, d in zip(v.strides, strides_of(v.shape), v.shape, strict=True) if d > 1
    )
    if v.mask is None and v.offset >= 0 and g.buffer.dtype == dtype and compact:
        return g.buffer, v.offset
    return pack(r, g, dtype).buffer, 0


def _at(r, buf: Buffer, elements, itemsize: int) -> ir.Value:
    """Pointer to element `elements` (an int or i64) of `buf`, in the current function."""
    off = (
        I64(elements * itemsize) if isinstance(elements, int) else r.b.mul(elements, I64(itemsize))
    )
    return r.b.gep(r.base[buf], [off])


def _weight_grad(r, core: Core, into: Buffer) -> None:
    x, g = core.operands
    stride, pad, kh, kw = core.arg
    dtype = core.dtype
    itemsize = 4 if dtype == "float32" else 8
    n_img, _, _, ci = x.view.shape
    _, ho, wo, co = g.view.shape
    if n_img * ho * wo == 0:  # an empty sum
        r.fill(into, r.const(dtype, 0), dtype)
        return
    xb = x.view.bounds()
    seen = [(max(xb[d][0], 0), min(xb[d][1], x.view.shape[d])) for d in (1, 2)]
    ranges = [_taps(*seen[0], pad, stride, ho, kh), _taps(*seen[1], pad, stride, wo, kw), (0, ci)]
    if any(hi <= lo for lo, hi in ranges):  # no tap meets the input: only padding, zeros
        r.fill(into, r.const(dtype, 0), dtype)
        return
    x = _nhwc(r, x, dtype)
    kdims = _kdims(x, ranges)
    ext = [hi - lo for _, _, (lo, hi) in kdims]
    k_total, k_inner = math.prod(ext), ext[1] * ext[2]
    rows_per_img = ho * wo
    imgs, k0_step = _tiling(rows_per_img, ext, n_img, _split(r, core))
    n_tiles = -(-n_img // imgs)
    col_bytes = imgs * rows_per_img * k0_step * k_inner * itemsize
    gbuf, goff = _rows(r, g, dtype)
    plan = _Plan(x, dtype, kdims, ext, stride, pad, (ho, wo, co), imgs, k0_step)
    part_elems = k_total * co
    path = _path(dtype, k0_step * k_inner, co, imgs * rows_per_img)
    groups = 1
    if n_tiles > 1 and _split(r, core):
        room = max(1, GROUP_BYTES // (part_elems * itemsize))
        groups = max(1, min(n_tiles, MAX_GROUPS, core.flops() // CONV_GRAIN_FLOPS, room))
    natural = [d for d, _, _ in kdims] == [0, 1, 2]
    whole = ext == [kh, kw, ci] if natural else False  # every tap: dW's rows in its order
    part = into
    if groups > 1 or not whole:
        part = Buffer(
            f"{r.k.name}.dwpart",
            groups * part_elems * itemsize,
            "temp",
            (groups * part_elems,),
            dtype,
        )
        r.scratch_buffer(part)

    def group(j, col):
        """Group j's image tiles, summed into its partial (BLAS's beta 0 on its first tile)."""
        b = r.b
        lo = b.sdiv(b.mul(j, I64(n_tiles)), I64(groups))
        hi = b.sdiv(b.mul(b.add(j, I64(1)), I64(n_tiles)), I64(groups))
        gemm = _gemm(r, dtype, ("T", "N", 1, co, co), co, path, col, col_bytes)  # dW += col^T @ g
        with counted_loop(b, hi, "ntile", lo) as nt:
            n0 = b.mul(nt, I64(imgs))
            nb = _min(b, I64(imgs), b.sub(I64(n_img), n0))
            with counted_loop(b, -(-ext[0] // k0_step), "ktile") as kt:
                k0 = b.mul(kt, I64(k0_step))
                kb = _min(b, I64(k0_step), b.sub(I64(ext[0]), k0))
                kcols = b.mul(kb, I64(k_inner))
                plan.gather(r, col, (n0, nb, k0, kb, kcols))
                m = b.trunc(b.mul(nb, I64(rows_per_img)), I32)
                pb = _at(r, gbuf, b.add(I64(goff), b.mul(n0, I64(rows_per_img * co))), itemsize)
                pc = _at(
                    r,
                    part,
                    b.add(b.mul(j, I64(part_elems)), b.mul(k0, I64(k_inner * co))),
                    itemsize,
                )
                k = b.trunc(kcols, I32)
                gemm(k, I32(co), m, col, pb, pc, accumulate=b.icmp_signed("!=", nt, lo), lda=k)

    nbytes = _with_pack(col_bytes, path, dtype, co, imgs * rows_per_img)
    cbuf = Buffer(f"{r.k.name}.col", nbytes, "temp", (nbytes // itemsize,), dtype)
    if groups > 1:
        chunk = chunk_size(groups, 1)  # a column buffer per chunk of groups
        r.scratch_buffer(cbuf, -(-groups // chunk))

        def task(lo, hi):
            col = r.slot_pointer(cbuf, r.b.sdiv(lo, I64(chunk)))
            with counted_loop(r.b, hi, "group", lo) as j:
                group(j, col)

        r.parallel_region(groups, 1, task)
    else:
        r.scratch_buffer(cbuf)
        group(I64(0), r.base[cbuf])
    if part is not into:
        if not whole:  # the taps no GEMM saw
            r.fill(into, r.const(dtype, 0), dtype)
        _sum_partials(r, part, groups, kdims, (kh, kw, ci), co, into)


def _sum_partials(r, part: Buffer, groups: int, kdims, kernel, co: int, into: Buffer) -> None:
    """into[kh, kw, ci, co] = the partials' sum, in group order, each partial's K rows in gather
    order (over the K ranges of `kdims`, in a kernel of `kernel` (KH, KW, Cin))."""
    b = r.b
    ext = [hi - lo for _, _, (lo, hi) in kdims]
    k_total = math.prod(ext)
    strides = strides_of(kernel)  # of (kh, kw, ci) in `into`
    with counted_loop(b, ext[0], "sk0") as a0:
        with counted_loop(b, ext[1], "sk1") as a1:
            with counted_loop(b, ext[2], "sk2") as a2:
                row = b.add(b.mul(b.add(b.mul(a0, I64(ext[1])), a1), I64(ext[2])), a2)
                dst = I64(0)
                for (d, _, (lo, _)), a in zip(kdims, (a0, a1, a2), strict=True):
                    dst = b.add(dst, b.mul(b.add(a, I64(lo)), I64(strides[d])))
                with counted_loop(b, co, "sco") as c:
                    i = b.add(b.mul(row, I64(co)), c)
                    acc = b.load(r.pointer(part, i))
                    for j in range(1, groups):
                        acc = b.fadd(acc, b.load(r.pointer(part, b.add(i, I64(j * k_total * co)))))
                    b.store(acc, r.pointer(into, b.add(b.mul(dst, I64(co)), c)))


def _input_grad(r, core: Core, into: Buffer) -> None:
    g, w = core.operands
    stride, pad, h, wd = core.arg
    dtype = core.dtype
    itemsize = 4 if dtype == "float32" else 8
    n_img, ho, wo, co = g.view.shape
    kh, kw, ci, _ = w.view.shape
    if co == 0 or ho * wo == 0:  # an empty sum
        r.fill(into, r.const(dtype, 0), dtype)
        return
    # the taps whose share lands inside the input, in (kh, kw, ci) order
    th, tw = _taps(0, h, pad, stride, ho, kh), _taps(0, wd, pad, stride, wo, kw)
    if th[1] <= th[0] or tw[1] <= tw[0]:  # every share lands in the padding
        r.fill(into, r.const(dtype, 0), dtype)
        return
    k_total = (th[1] - th[0]) * (tw[1] - tw[0]) * ci
    rows_per_img = ho * wo
    imgs = _images(n_img, TILE // (rows_per_img * k_total), _split(r, core))
    n_tiles = -(-n_img // imgs)
    col_bytes = imgs * rows_per_img * k_total * itemsize
    img_elems = h * wd * ci
    path = _path(dtype, imgs * rows_per_img, k_total, co)
    # ours reads B's rows in place: the weight packed as wmat^T [Co, K]; BLAS takes the flag
    kdims = [(0, 1, th), (1, 2, tw), (2, 3, (0, ci))]
    wbuf = _pack_weight(r, w, kdims, co, dtype, transpose=path != "blas")
    gbuf, goff = _rows(r, g, dtype)
    layout = ("N", "N", co, k_total, k_total) if path != "blas" else ("N", "T", co, co, k_total)

    def tiles(lo, hi, col):
        b = r.b
        gemm = _gemm(r, dtype, layout, k_total, path, col, col_bytes)  # dcol = g rows @ wmat^T
        with counted_loop(b, hi, "ntile", lo) as nt:
            n0 = b.mul(nt, I64(imgs))
            nb = _min(b, I64(imgs), b.sub(I64(n_img), n0))
            m = b.trunc(b.mul(nb, I64(rows_per_img)), I32)
            pa = _at(r, gbuf, b.add(I64(goff), b.mul(n0, I64(rows_per_img * co))), itemsize)
            gemm(m, I32(k_total), I32(co), pa, r.base[wbuf], col)
            with counted_loop(b, b.mul(nb, I64(img_elems)), "zero") as i:  # the tile's images
                b.store(r.const(dtype, 0), r.pointer(into, b.add(b.mul(n0, I64(img_elems)), i)))
            _col2im(r, col, into, (n0, nb), (stride, pad, h, wd), (ho, wo), (th, tw, ci), dtype)

    _over_tiles(r, core, n_tiles, _with_pack(col_bytes, path, dtype, k_total, co), tiles)


def _col2im(r, col, into: Buffer, tile, geometry, out_hw, taps, dtype: str) -> None:
    """into[n, oh*s + a - p, ow*s + c - p, :] += dcol[row, (a, c, :)] for the tile's rows and
    the taps (a, c) of `taps` ((a0, a1), (c0, c1), Cin): for each row and kernel row a, one run
    over the columns c that land inside the input."""
    b = r.b
    n0, nb = tile
    stride, pad, h, wd = geometry
    ho, wo = out_hw
    (a0, a1), (c0, c1), ci = taps
    kh, kw = a1 - a0, c1 - c0
    pad_h, pad = pad - a0, pad - c0  # tap a0 + a of a window at oh*s - p is at oh*s - pad_h + a
    elem = ir.FloatType() if dtype == "float32" else ir.DoubleType()
    src_p = b.bitcast(col, ir.PointerType(elem))
    with counted_loop(b, b.add(n0, nb), "cn", n0) as n:
        with counted_loop(b, ho, "coh") as oh:
            with counted_loop(b, wo, "cow") as ow:
                row = b.add(b.mul(b.add(b.mul(b.sub(n, n0), I64(ho)), oh), I64(wo)), ow)
                iw0 = b.sub(b.mul(ow, I64(stride)), I64(pad))
                c_lo = _max(b, I64(0), b.neg(iw0))
                c_hi = _min(b, I64(kw), b.sub(I64(wd), iw0))
                run = b.mul(_max(b, b.sub(c_hi, c_lo), I64(0)), I64(ci))
                ih0 = b.sub(b.mul(oh, I64(stride)), I64(pad_h))
                with counted_loop(b, kh, "ca") as a:
                    ih = b.add(ih0, a)
                    inside = in_range(b, ih, 0, h)
                    length = b.select(inside, run, I64(0))
                    dst = b.mul(
                        b.add(b.mul(b.add(b.mul(n, I64(h)), ih), I64(wd)), b.add(iw0, c_lo)),
                        I64(ci),
                    )
                    src = b.add(
                        b.mul(row, I64(kh * kw * ci)),
                        b.mul(b.add(b.mul(a, I64(kw)), c_lo), I64(ci)),
                    )
                    with counted_loop(b, length, "crun") as j:
                        pd = r.pointer(into, b.add(dst, j))
                        b.store(b.fadd(b.load(pd), b.load(b.gep(src_p, [b.add(src, j)]))), pd)


class _Plan:
    """One convolution's tiling: what a tile gathers, and its GEMMs."""

    def __init__(self, x, dtype, kdims, ext, stride, pad, out, imgs, k0_step):
        self.x, self.dtype, self.kdims, self.ext = x, dtype, kdims, ext
        self.stride, self.pad = stride, pad
        self.hw_bounds = []  # the rows and columns of x there are: outside, padding
        for d in (1, 2):
            lo, hi = x.view.bounds()[d]
            self.hw_bounds += [max(lo, 0), min(hi, x.view.shape[d])]
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

    def runs(self) -> str | None:
        """How the gather copies runs of x's memory, if it can (x unmasked, of the compute
        dtype): "wc" where K ends in (kw, all of ci) and x's (w, ci) dims are one contiguous
        run (NHWC); "w" where K ends in kw and x's w dim has unit stride (NCHW); else None."""
        v = self.x.view
        if v.mask is not None or v.offset < 0 or self.x.buffer.dtype != self.dtype:
            return None
        order = [d for d, _, _ in self.kdims]
        wd, ci = v.shape[2], v.shape[3]
        unit_w = wd == 1 or v.strides[2] == 1
        if order[1:] == [1, 2] and self.kdims[2][2] == (0, ci):
            if (ci == 1 or v.strides[3] == 1) and (wd == 1 or v.strides[2] == ci):
                return "wc"
        if order[2] == 1 and unit_w:
            return "w"
        return None

    def gather(self, r, col, tile) -> None:
        """col[(n - n0, oh, ow), (a0 - k0, a1, a2)] = x[n, oh*s + kh - p, ow*s + kw - p, ci]
        for the images and K steps of one tile (row-major, leading dim `kcols`)."""
        mode = self.runs()
        if mode is not None:
            self.gather_runs(r, col, tile, mode)
            return
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
                                    in_range(b, h, h_lo, h_hi), in_range(b, w_, w_lo, w_hi)
                                )
                                r.idx.update({0: n, 1: h, 2: w_, 3: kidx[2]})  # x's own dims
                                v = r.load(self.x, self.dtype, inside)
                                b.store(v, b.gep(ptr, [b.add(col0, a2)]))

    def gather_runs(self, r, col, tile, mode: str) -> None:
        """`gather` where K ends in a run of x's memory (see `runs`): for each window and each
        index of the other K dims, the run's part inside the input copied, the parts in the
        padding zeroed."""
        b, ho, wo, ext = r.b, self.ho, self.wo, self.ext
        n0, nb, k0, kb, kcols = tile
        v = self.x.view
        h, wd = v.shape[1:3]
        sn, sh, _, sc = v.strides
        nhwc = mode == "wc"
        unit = ext[2] if nhwc else 1  # elements per kernel column in the run
        outer = self.kdims[:1] if nhwc else self.kdims[:2]
        lo = {d: rng[0] for d, _, rng in self.kdims}
        kw_run = ext[1] if nhwc else ext[2]
        run = kw_run * unit
        elem = ir.FloatType() if self.dtype == "float32" else ir.DoubleType()
        dst_p = b.bitcast(col, ir.PointerType(elem))
        src_p = b.bitcast(r.base[self.x.buffer], ir.PointerType(elem))
        zero = ir.Constant(elem, 0.0)
        with counted_loop(b, b.add(n0, nb), "gn", n0) as n:
            with counted_loop(b, ho, "goh") as oh:
                with counted_loop(b, wo, "gow") as ow:
                    row = b.add(b.mul(b.add(b.mul(b.sub(n, n0), I64(ho)), oh), I64(wo)), ow)
                    iw0 = b.sub(b.mul(ow, I64(self.stride)), I64(self.pad - lo[1]))
                    c_lo = b.mul(_min(b, _max(b, I64(0), b.neg(iw0)), I64(kw_run)), I64(unit))
                    c_hi = _max(b, _min(b, I64(kw_run), b.sub(I64(wd), iw0)), I64(0))
                    c_hi = _max(b, b.mul(c_hi, I64(unit)), c_lo)
                    ih0 = b.sub(b.mul(oh, I64(self.stride)), I64(self.pad - lo[0]))
                    src_w = b.add(I64(v.offset), b.mul(n, I64(sn)))
                    src_w = b.add(src_w, b.mul(iw0, I64(unit)))  # unit: x's stride along w
                    base = b.mul(row, kcols)
                    rows = (ih0, h, sh, sc, lo)
                    ptrs = (src_p, dst_p, zero)
                    self._runs(r, outer, (k0, kb), rows, (src_w, base), (run, c_lo, c_hi), ptrs)

    def _runs(self, r, outer, ktile, rows, at, span, ptrs) -> None:
        """The loops over the outer K dims (`outer`: kh alone, or kh and ci in K order), one run
        each: zeros, then x's elements [c_lo, c_hi) of the run, then zeros."""
        b, ext = r.b, self.ext
        k0, kb = ktile
        ih0, h, sh, sc, lo = rows
        src_w, base = at
        run, c_lo, c_hi = span
        src_p, dst_p, zero = ptrs
        idx = {}

        def body(depth, dst):
            if depth == len(outer):
                ih = b.add(ih0, idx[0])
                inside = in_range(b, ih, 0, h)
                src = b.add(src_w, b.mul(ih, I64(sh)))
                if 2 in idx:
                    src = b.add(src, b.mul(b.add(idx[2], I64(lo[2])), I64(sc)))
                first = b.select(inside, c_lo, I64(run))  # a row in the padding: all zeros
                last = b.select(inside, c_hi, I64(run))
                with counted_loop(b, first, "gz0") as j:
                    b.store(zero, b.gep(dst_p, [b.add(dst, j)]))
                with counted_loop(b, last, "gcp", first) as j:
                    val = b.load(b.gep(src_p, [b.add(src, j)]))
                    b.store(val, b.gep(dst_p, [b.add(dst, j)]))
                with counted_loop(b, run, "gz1", last) as j:
                    b.store(zero, b.gep(dst_p, [b.add(dst, j)]))
                return
            d = outer[depth][0]
            if depth == 0:  # the tile's range of the outermost K dim
                with counted_loop(b, b.add(k0, kb), "ga0", k0) as a:
                    idx[d] = a
                    inner = math.prod(ext[1:])
                    body(depth + 1, b.add(dst, b.mul(b.sub(a, k0), I64(inner))))
            else:
                with counted_loop(b, ext[1], "ga1") as a:
                    idx[d] = a
                    body(depth + 1, b.add(dst, b.mul(a, I64(ext[2]))))

        body(0, base)


def _min(b: ir.IRBuilder, x: ir.Value, y: ir.Value) -> ir.Value:
    return b.select(b.icmp_signed("<", x, y), x, y)


def _max(b: ir.IRBuilder, x: ir.Value, y: ir.Value) -> ir.Value:
    return b.select(b.icmp_signed(">", x, y), x, y)


__all__ = ["emit_conv"]
