"""A GEMM of our own in LLVM IR: `C[m,n] = A[m,k] @ B[k,n]` for float32 and float64.

The functions are emitted once per module and shared by every GEMM core in it:

- `needlec_mk_<t>`: the micro-kernel. An MR x NR block of C is held in MR * NV vector
  accumulators (NV vectors of W lanes a row: 6 x 64 float32 in zmm registers where the CPU reports
  avx512f, 6 x 16 in ymm otherwise). Each step over k loads NV vectors of B and broadcasts MR
  scalars of A into fused multiply-adds. Columns past the edge are masked loads and stores, rows
  past it read the last valid row again and are not stored, so one kernel serves every tile.
- `needlec_packb_<t>`: copies a KC x NC block of B (any strides: a transposed B is a stride)
  into micro-panels of NR columns, zero-padded, so the kernel reads B contiguously from cache.
- `needlec_gemm_<t>` / `needlec_gemms_<t>`: the loops around the kernel. The large form packs
  B in blocks of KC x NC (the block stays in the 1 MB L2 while every MR rows of A pass over it);
  the small form (`s`) reads B where it lies (unit column stride), with no packing and no call
  overhead beyond the loops: the LSTM's [16,64]@[64,256], attention's per-head products.

A reads A in place with any strides (a transposed A is a stride too). Every element of C is
summed over k in the same order whichever path, tile or thread computes it: in blocks of KC,
each block's sum in k order then added to C, so one thread and two give the same bits.
"""

from __future__ import annotations

import functools
import os

import llvmlite.binding as llvm
from llvmlite import ir

from ...ir.schedule import Buffer
from ...ir.view import strides_of
from .loops import counted_loop

I1, I32, I64 = ir.IntType(1), ir.IntType(32), ir.IntType(64)
KC = 256  # k-block: a 6 x KC sliver of A stays in L1 while B's packed block streams over it
NC = 512  # n-block: KC x NC float32 is 512 KB packed, in half the 1 MB L2
MR = 6  # rows of the micro-kernel
SMALL_B_BYTES = 1 << 18  # B up to this size is read where it lies (it stays in L2)


@functools.cache
def _avx512() -> bool:
    llvm.initialize_native_target()
    return bool(llvm.get_host_cpu_features().get("avx512f"))


def shape_of(dtype: str) -> tuple[int, int, int]:
    """(MR, W, NV) of the micro-kernel for `dtype`: rows, lanes a vector, vectors a row."""
    width = 64 if _avx512() else 32  # bytes a vector
    lanes = width // (4 if dtype == "float32" else 8)
    return MR, lanes, 4 if _avx512() else 2


def nr_of(dtype: str) -> int:
    """Columns of the micro-kernel's tile for `dtype`."""
    _, w, nv = shape_of(dtype)
    return w * nv


def pack_bytes(dtype: str, k: int, n: int) -> int:
    """Scratch bytes one call of the large form needs for its packed block of B."""
    nr = nr_of(dtype)
    cols = -(-min(n, NC) // nr) * nr
    return min(k, KC) * cols * (4 if dtype == "float32" else 8)


def _elem(dtype: str) -> ir.Type:
    return ir.FloatType() if dtype == "float32" else ir.DoubleType()


def _intrinsic(module: ir.Module, name: str, fnty: ir.FunctionType) -> ir.Function:
    return module.globals.get(name) or ir.Function(module, fnty, name)


class _Vec:
    """The vector intrinsics of one element type and width in `module`."""

    def __init__(self, module: ir.Module, ty: ir.Type, lanes: int) -> None:
        self.ty, self.lanes = ty, lanes
        vt = self.vt = ir.VectorType(ty, lanes)
        mt = self.mt = ir.VectorType(I1, lanes)
        pty = ir.PointerType(ty)
        suffix = f"v{lanes}{'f32' if ty == ir.FloatType() else 'f64'}"
        self.fma = _intrinsic(module, f"llvm.fma.{suffix}", ir.FunctionType(vt, [vt, vt, vt]))
        self.mload = _intrinsic(
            module, f"llvm.masked.load.{suffix}.p0", ir.FunctionType(vt, [pty, I32, mt, vt])
        )
        self.mstore = _intrinsic(
            module,
            f"llvm.masked.store.{suffix}.p0",
            ir.FunctionType(ir.VoidType(), [vt, pty, I32, mt]),
        )
        self.align = I32(4 if ty == ir.FloatType() else 8)

    def mask(self, b: ir.IRBuilder, valid: ir.Value, first: int) -> ir.Value:
        """Lanes first, first+1, ... that are below `valid` (an i64)."""
        iota = ir.Constant(ir.VectorType(I64, self.lanes), list(range(first, first + self.lanes)))
        splat = b.shuffle_vector(
            b.insert_element(ir.Constant(ir.VectorType(I64, self.lanes), None), valid, I32(0)),
            ir.Constant(ir.VectorType(I64, self.lanes), None),
            ir.Constant(ir.VectorType(I32, self.lanes), [0] * self.lanes),
        )
        return b.icmp_signed("<", iota, splat)

    def load(self, b, ptr, mask):
        ptr = b.bitcast(ptr, ir.PointerType(self.ty))
        return b.call(self.mload, [ptr, self.align, mask, ir.Constant(self.vt, None)])

    def store(self, b, value, ptr, mask):
        b.call(self.mstore, [value, b.bitcast(ptr, ir.PointerType(self.ty)), self.align, mask])

    def splat(self, b, x):
        v = b.insert_element(ir.Constant(self.vt, None), x, I32(0))
        return b.shuffle_vector(
            v,
            ir.Constant(self.vt, None),
            ir.Constant(ir.VectorType(I32, self.lanes), [0] * self.lanes),
        )


def _function(module, name, args, names):
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), args), name)
    fn.linkage = "internal"
    fn.attributes.add("nounwind")
    for a, nm in zip(fn.args, names, strict=True):
        a.name = nm
    return fn, ir.IRBuilder(fn.append_basic_block("entry"))


def _gep(b, ptr, idx):
    return b.gep(ptr, [idx])


def micro_kernel(module: ir.Module, dtype: str) -> ir.Function:
    """`mk(kc, A, a_rs, a_ks, B, b_ks, C, ldc, mr, nr, acc)`: C[:mr, :nr] (+)= A @ B over kc."""
    name = f"needlec_mk_{dtype}"
    if name in module.globals:
        return module.globals[name]
    ty = _elem(dtype)
    pty = ir.PointerType(ty)
    mr_n, lanes, nv = shape_of(dtype)
    vec = _Vec(module, ty, lanes)
    args = [I64, pty, I64, I64, pty, I64, pty, I64, I64, I64, I1]
    names = ["kc", "a", "a_rs", "a_ks", "bp", "b_ks", "c", "ldc", "mr", "nr", "acc"]
    fn, b = _function(module, name, args, names)
    kc, a, a_rs, a_ks, bp, b_ks, c, ldc, mr, nr, acc = fn.args
    for p in (a, bp, c):
        p.add_attribute("noalias")
    masks = [vec.mask(b, nr, v * lanes) for v in range(nv)]
    rows = []
    for i in range(mr_n):  # rows past the edge read the last valid row (never stored)
        last = b.sub(mr, I64(1))
        ri = b.select(b.icmp_signed("<", I64(i), mr), I64(i), last)
        rows.append(_gep(b, a, b.mul(ri, a_rs)))
    pre = b.block
    head, body, done = (fn.append_basic_block(t) for t in ("k.head", "k.body", "k.done"))
    b.branch(head)
    b.position_at_end(head)
    p = b.phi(I64, name="p")
    p.add_incoming(I64(0), pre)
    accs = []
    for i in range(mr_n):
        for v in range(nv):
            phi = b.phi(vec.vt, name=f"c{i}_{v}")
            phi.add_incoming(ir.Constant(vec.vt, None), pre)
            accs.append(phi)
    b.cbranch(b.icmp_signed("<", p, kc), body, done)
    b.position_at_end(body)
    brow = _gep(b, bp, b.mul(p, b_ks))
    bv = [vec.load(b, _gep(b, brow, I64(v * lanes)), masks[v]) for v in range(nv)]
    aoff = b.mul(p, a_ks)
    new = []
    for i in range(mr_n):
        ai = vec.splat(b, b.load(_gep(b, rows[i], aoff)))
        for v in range(nv):
            new.append(b.call(vec.fma, [ai, bv[v], accs[i * nv + v]]))
    end = b.block
    p.add_incoming(b.add(p, I64(1)), end)
    for phi, x in zip(accs, new, strict=True):
        phi.add_incoming(x, end)
    b.branch(head)
    b.position_at_end(done)
    for i in range(mr_n):
        store, skip = fn.append_basic_block(f"row{i}"), fn.append_basic_block(f"row{i}.next")
        b.cbranch(b.icmp_signed("<", I64(i), mr), store, skip)
        b.position_at_end(store)
        crow = _gep(b, c, b.mul(I64(i), ldc))
        for v in range(nv):
            cp = _gep(b, crow, I64(v * lanes))
            x = accs[i * nv + v]
            old = vec.load(b, cp, masks[v])
            vec.store(b, b.select(acc, b.fadd(x, old), x), cp, masks[v])
        b.branch(skip)
        b.position_at_end(skip)
    b.ret_void()
    return fn


def pack_b(module: ir.Module, dtype: str) -> ir.Function:
    """`packb(kc, nc, B, b_ks, b_ns, dst)`: B's kc x nc block into micro-panels of NR columns,
    each kc x NR contiguous, the columns past nc zero."""
    name = f"needlec_packb_{dtype}"
    if name in module.globals:
        return module.globals[name]
    ty = _elem(dtype)
    pty = ir.PointerType(ty)
    _, lanes, nv = shape_of(dtype)
    nr_n = lanes * nv
    vec = _Vec(module, ty, lanes)
    fn, b = _function(
        module, name, [I64, I64, pty, I64, I64, pty], ["kc", "nc", "bp", "b_ks", "b_ns", "dst"]
    )
    kc, nc, bp, b_ks, b_ns, dst = fn.args
    bp.add_attribute("noalias")
    dst.add_attribute("noalias")
    panels = b.sdiv(b.add(nc, I64(nr_n - 1)), I64(nr_n))
    unit = b.icmp_signed("==", b_ns, I64(1))
    with b.if_else(unit) as (contiguous, strided):
        with contiguous:  # rows of B are contiguous: masked vector copies
            with counted_loop(b, panels, "jr") as jr:
                j0 = b.mul(jr, I64(nr_n))
                left = b.sub(nc, j0)
                masks = [vec.mask(b, left, v * lanes) for v in range(nv)]
                panel = _gep(b, dst, b.mul(j0, kc))
                with counted_loop(b, kc, "p") as p:
                    src = _gep(b, bp, b.add(b.mul(p, b_ks), j0))
                    out = _gep(b, panel, b.mul(p, I64(nr_n)))
                    for v in range(nv):
                        x = vec.load(b, _gep(b, src, I64(v * lanes)), masks[v])
                        dst_v = b.bitcast(_gep(b, out, I64(v * lanes)), ir.PointerType(vec.vt))
                        b.store(x, dst_v).align = vec.align.constant
        with strided:  # a transposed B: each column contiguous over k
            with counted_loop(b, panels, "jr") as jr:
                j0 = b.mul(jr, I64(nr_n))
                panel = _gep(b, dst, b.mul(j0, kc))
                with counted_loop(b, nr_n, "j") as j:
                    col = b.add(j0, j)
                    inside = b.icmp_signed("<", col, nc)
                    safe = b.select(inside, col, I64(0))
                    src = _gep(b, bp, b.mul(safe, b_ns))
                    with counted_loop(b, kc, "p") as p:
                        x = b.load(_gep(b, src, b.mul(p, b_ks)))
                        x = b.select(inside, x, ir.Constant(ty, 0.0))
                        b.store(x, _gep(b, panel, b.add(b.mul(p, I64(nr_n)), j)))
    b.ret_void()
    return fn


def driver(module: ir.Module, dtype: str, packed: bool) -> ir.Function:
    """`gemm(m, n, k, A, a_rs, a_ks, B, b_ks, b_ns, C, ldc, scratch)`: C[m,n] = A @ B, C with row
    stride ldc and unit column stride. Packed: B in KC x NC blocks into `scratch`
    (`pack_bytes`); else B read in place (b_ns must be 1) and scratch unused."""
    name = f"needlec_gemm{'' if packed else 's'}_{dtype}"
    if name in module.globals:
        return module.globals[name]
    ty = _elem(dtype)
    pty = ir.PointerType(ty)
    mr_n, lanes, nv = shape_of(dtype)
    nr_n = lanes * nv
    mk = micro_kernel(module, dtype)
    pb = pack_b(module, dtype) if packed else None
    args = [I64, I64, I64, pty, I64, I64, pty, I64, I64, pty, I64, pty]
    names = ["m", "n", "k", "a", "a_rs", "a_ks", "bp", "b_ks", "b_ns", "c", "ldc", "scratch"]
    fn, b = _function(module, name, args, names)
    m, n, k, a, a_rs, a_ks, bp, b_ks, b_ns, c, ldc, scratch = fn.args
    nc_step = NC if packed else n

    def smin(x, y):
        return b.select(b.icmp_signed("<", x, y), x, y)

    jcs = b.sdiv(b.add(n, I64(nc_step - 1)) if packed else n, I64(nc_step)) if packed else I64(1)
    pcs = b.sdiv(b.add(k, I64(KC - 1)), I64(KC))
    with counted_loop(b, jcs, "jc") as jci:
        jc = b.mul(jci, I64(NC)) if packed else I64(0)
        ncur = smin(b.sub(n, jc), I64(NC)) if packed else n
        with counted_loop(b, pcs, "pc") as pci:
            pc = b.mul(pci, I64(KC))
            kc = smin(b.sub(k, pc), I64(KC))
            acc = b.icmp_signed(">", pci, I64(0))
            if packed:
                src = _gep(b, bp, b.add(b.mul(pc, b_ks), b.mul(jc, b_ns)))
                b.call(pb, [kc, ncur, src, b_ks, b_ns, scratch])
            arow = _gep(b, a, b.mul(pc, a_ks))
            irs = b.sdiv(b.add(m, I64(mr_n - 1)), I64(mr_n))
            jrs = b.sdiv(b.add(ncur, I64(nr_n - 1)), I64(nr_n))
            with counted_loop(b, irs, "ir") as iri:
                i0 = b.mul(iri, I64(mr_n))
                mr = smin(b.sub(m, i0), I64(mr_n))
                ablk = _gep(b, arow, b.mul(i0, a_rs))
                crow = _gep(b, c, b.add(b.mul(i0, ldc), jc))
                with counted_loop(b, jrs, "jr") as jri:
                    j0 = b.mul(jri, I64(nr_n))
                    nr = smin(b.sub(ncur, j0), I64(nr_n))
                    if packed:
                        bblk, bks = _gep(b, scratch, b.mul(j0, kc)), I64(nr_n)
                    else:
                        bblk, bks = _gep(b, bp, b.add(b.mul(pc, b_ks), j0)), b_ks
                    cblk = _gep(b, crow, j0)
                    b.call(mk, [kc, ablk, a_rs, a_ks, bblk, bks, cblk, ldc, mr, nr, acc])
    b.ret_void()
    return fn


def mode() -> str:
    """`NEEDLEC_GEMM`: "blas" or "own" forces every float GEMM core to one; else "auto"."""
    env = os.environ.get("NEEDLEC_GEMM", "").strip().lower()
    if env in ("", "auto"):
        return "auto"
    if env not in ("blas", "own"):
        raise ValueError(f"NEEDLEC_GEMM must be blas, own or auto, not {env!r}")
    return env


def choose(dtype: str, m: int, n: int, k: int) -> str:
    """ "blas", "small" (ours, B read in place) or "packed" (ours, B packed) for one product of
    these sizes (per matrix of a batch): the table in this module's docstring."""
    want = mode()
    if want == "blas":
        return "blas"
    if k * n * (4 if dtype == "float32" else 8) <= SMALL_B_BYTES:
        return "small"
    return "packed"


def emit_core(r, a, bb, into, dtype: str, sizes: tuple, out_shape: tuple, batch: tuple) -> None:
    """Emit C = A @ B (compact row-major `into`, logical shape `out_shape`) for renderer `r`
    with our kernels: A and B are `Load`s of (batched) matrices of any non-negative strides."""
    from . import gemm, runtime

    m, n, k = sizes
    ty = _elem(dtype)
    pty = ir.PointerType(ty)
    itemsize = 4 if dtype == "float32" else 8
    a_rs, a_ks = a.view.strides[-2:]
    b_ks, b_ns = bb.view.strides[-2:]
    a_rs, a_ks = (a_rs if m > 1 else 0), (a_ks if k > 1 else 0)
    b_ks, b_ns = (b_ks if k > 1 else 0), (b_ns if n > 1 else 1)
    packed = choose(dtype, m, n, k) == "packed" or b_ns != 1
    blocks = runtime.num_threads()
    by_rows = m >= n
    size, tile = (m, MR) if by_rows else (n, nr_of(dtype))
    tiles = -(-size // tile)
    per = -(-tiles // blocks) * tile  # a block's rows (columns): whole tiles
    split = r.parallel and blocks > 1 and 2 * m * n * k >= 2 * gemm.GEMM_GRAIN_FLOPS and size > per
    nblocks = -(-size // per) if split else 1
    scratch = None
    if packed:
        step = -(-pack_bytes(dtype, k, n) // 64) * 64
        nbytes = step * nblocks
        scratch = Buffer(
            f"{r.k.name}.bpack{len(r.base)}", nbytes, "temp", (nbytes // itemsize,), dtype
        )
        r.scratch_buffer(scratch)
    fn = driver(r.module, dtype, packed)
    c_strides = strides_of(out_shape)

    def call(bidx, blk=None):
        b = r.b
        a_off = gemm._batch_offset(a.view, bidx, len(batch))
        b_off = gemm._batch_offset(bb.view, bidx, len(batch))
        c_off = sum(i * s for i, s in zip(bidx, c_strides[: len(batch)], strict=True))

        def at(buf, off):
            return b.bitcast(b.gep(r.base[buf], [I64(off * itemsize)]), pty)

        pa, pb, pc = at(a.buffer, a_off), at(bb.buffer, b_off), at(into, c_off)
        rows, cols = I64(m), I64(n)
        pk = b.bitcast(r.base[scratch], pty) if scratch is not None else ir.Constant(pty, None)
        if blk is not None:
            lo = b.mul(blk, I64(per))
            count = b.sub(
                b.select(
                    b.icmp_signed("<", I64(size), b.add(lo, I64(per))),
                    I64(size),
                    b.add(lo, I64(per)),
                ),
                lo,
            )
            if by_rows:
                pa, pc, rows = (
                    b.gep(pa, [b.mul(lo, I64(a_rs))]),
                    b.gep(pc, [b.mul(lo, I64(n))]),
                    count,
                )
            else:
                pb, pc, cols = b.gep(pb, [b.mul(lo, I64(b_ns))]), b.gep(pc, [lo]), count
            if scratch is not None:
                pk = b.gep(pk, [b.mul(blk, I64(step // itemsize))])
        args = [rows, cols, I64(k), pa, I64(a_rs), I64(a_ks), pb, I64(b_ks), I64(b_ns)]
        b.call(fn, [*args, pc, I64(n), pk])

    for bidx in gemm._indices(batch):
        if nblocks > 1:

            def region(lo, hi, bidx=bidx):
                with counted_loop(r.b, hi, "blk", start=lo) as blk:
                    call(bidx, blk)

            r.parallel_region(nblocks, 1, region)
        else:
            call(bidx)


__all__ = [
    "KC",
    "MR",
    "NC",
    "choose",
    "driver",
    "emit_core",
    "micro_kernel",
    "mode",
    "nr_of",
    "pack_b",
    "pack_bytes",
    "shape_of",
]
