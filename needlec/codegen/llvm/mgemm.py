"""A GEMM of our own in LLVM IR: `C[m,n] = A[m,k] @ B[k,n]` for float32 and float64.

The functions are emitted once per module and shared by every GEMM core in it:

- `needlec_mk_<t>`: the micro-kernel. An MR x NR block of C is held in MR * NV vector
  accumulators (6 x 64 float32 or 6 x 32 float64 in 24 zmm registers where the CPU reports
  avx512f; 6 x 16 / 6 x 8 in 12 ymm otherwise). Each step over k loads NV vectors of B and
  broadcasts MR scalars of A into fused multiply-adds. Columns past the edge are masked loads
  and stores, rows past it read the last valid row again and are not stored: one kernel serves
  every tile, and reads A and B through strides, so it runs on packed panels or in place.
- `needlec_packb_<t>` / `needlec_packa_<t>`: copy a KC x NC block of B into panels of NR
  columns (zero-padded) and an MC x KC block of A into panels of MR rows, from any strides (a
  transposed operand is a stride): the kernel then reads both contiguously, B's panel from L1.
- `needlec_gemm_<t>` (packed: the loops of Goto's algorithm, jc / pc / ic / jr / ir) and
  `needlec_gemms_<t>` (in place, for small products: no packing, no cost beyond the loops);
  `needlec_gemmsn_<t>` in place with a `narrow` tile (12 x 32 float32) for B of at most half NR
  columns (alone, 256x32x288: 211 GFLOP/s against 117 for the 6 x 64 tile; inlined with n
  known, LLVM drops the masked lanes of the wide tile itself). Each takes an accumulate flag
  (C += A @ B: a convolution's K tiles, `conv.py`).

Every element of C is summed over k in the same order whatever the path, tile or thread: in
blocks of KC, each block summed in k order and then added to C; so 1 and 2 threads give the
same bits. `emit_core` splits a large product over the pool's threads as the BLAS path does
(blocks of rows, or of columns when there are fewer rows, fixed when the step compiles), each
block with its own packing scratch.

Which GEMM (`choose`), measured on AMD Zen 5 (znver5, AVX-512, 48 KB L1d, 1 MB L2), one
thread, GFLOP/s, min of repeats on a loaded machine (load average ~7 on 2 cores), float32;
BLAS is scipy's OpenBLAS, which runs its Haswell (AVX2) kernels here:

| m x n x k (t: transposed)  | BLAS (jit) | ours (jit) | ours packed / in place (alone) |
| -------------------------- | ---------- | ---------- | ------------------------------ |
| 16x256x64 (LSTM step)      |   20.5     |   61.0     |  45.5 / 50.2                   |
| 64x64x64                   |   18.5     |   65.9     |  45.6 / 51.2                   |
| 128x128x128                |   93.1     |  183.7     | 140.8 / 167.8                  |
| 256x512x784 (MLP)          |  112.0     |  231.8     | 206.8 / 214.9 (256x512x512)    |
| 784x512x256 (A t, dW)      |  111.8     |  226.0     |                                |
| 256x784x512 (B t, dX)      |  112.2     |  130.9     |                                |
| 512x512x512                |  115.0     |  219.8     | 203.8                          |
| 16x1024x512                |            |            | 131.9 / 140.8                  |
| 2048x64x64                 |            |            | 148.8 / 223.3                  |

(float64 runs at about half: 256^3 108 packed / 121 in place, where float32 gives 205 / 237;
through jit, 256x512x784 float64 95 against BLAS's 17, 16x256x64 16 against 7.) A quieter run
(load 1.3), one thread, min of repeats: 512^3 228, 1024^3 218 float32 (numpy 123, 121); 108, 78
float64 (numpy 58, 58). Two threads, min of 30 interleaved calls: 512^3 376 (BLAS through jit
201, jax.jit 225), 1024^3 213 (BLAS 118, jax.jit 172). A transposed B alone (load 2): 172
against 183 untransposed at 256x784x512.

So with AVX-512, ours everywhere; B is read in place while half of L2 holds it (k * n *
itemsize <= 512 KB; at 1 MB a quieter run, load 2, gave packed 217-229 against in place
200-230, at 1.5 MB 221 against 179, at 4 MB 211 against 168) or A has at most 24 rows
(16x1024x512: in place 141 against 132), else packed. Without AVX-512 (not measured here;
OpenBLAS's kernels are native there) ours only below 2^21 flops, where BLAS's call (~4 us)
dominates. `NEEDLEC_GEMM=blas|own` forces one.
"""

from __future__ import annotations

import functools
import math
import os
from typing import NamedTuple

import llvmlite.binding as llvm
from llvmlite import ir

from ...ir.schedule import Buffer
from .loops import counted_loop

I1, I32, I64 = ir.IntType(1), ir.IntType(32), ir.IntType(64)


class Blocking(NamedTuple):
    """The micro-kernel's tile (mr rows, nv vectors of lanes each a row) and the cache blocks:
    kc of k (a kc x nr panel of packed B stays in L1), mc rows of packed A (in L2), nc
    columns of packed B (in L2 and L3)."""

    mr: int
    nv: int
    lanes: int
    kc: int
    mc: int
    nc: int

    @property
    def nr(self) -> int:
        return self.nv * self.lanes


# (mr, nv, kc, mc, nc) by (avx512f, dtype): measured, see the module docstring
TUNING = {
    (True, "float32"): (6, 4, 160, 120, 1024),
    (True, "float64"): (6, 4, 192, 120, 512),
    (False, "float32"): (6, 2, 256, 144, 1024),
    (False, "float64"): (6, 2, 256, 144, 512),
}
SMALL_B_BYTES = 1 << 19  # B up to this size is read where it lies (it stays in L2)
SMALL_ROWS = 24  # so is B for so few rows of A (packing it would cost more than it saves)
EPILOGUE_BLOCK_BYTES = 1 << 17  # C's block, in place, when an epilogue follows each block
# a product of at least this many flops is cut over the pool's threads (one block each): at 2^20
# (about 5 us on one core) two threads already finish first, 320x200x64 in 21 us against 36
SPLIT_FLOPS = 1 << 20
SMALL_FLOPS = 1 << 21  # without AVX-512: ours below this many flops (BLAS's call cost), BLAS above


@functools.cache
def _avx512() -> bool:
    llvm.initialize_native_target()
    return bool(llvm.get_host_cpu_features().get("avx512f"))


def blocking(dtype: str) -> Blocking:
    """The tile and cache blocks for `dtype` on this CPU."""
    wide = _avx512()
    lanes = (64 if wide else 32) // (4 if dtype == "float32" else 8)
    mr, nv, kc, mc, nc = TUNING[wide, dtype]
    return Blocking(mr, nv, lanes, kc, mc, nc)


def pack_bytes(dtype: str, k: int, n: int) -> int:
    """Scratch bytes one call of the packed form needs for products of k x n B: a whole block
    of A (the driver puts it first), then as much of a block of B as B fills."""
    t = blocking(dtype)
    b_block = min(k, t.kc) * _round(min(n, t.nc), t.nr)
    return (t.kc * _round(t.mc, t.mr) + b_block) * (4 if dtype == "float32" else 8)


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
        """Lanes first, first+1, ... that are below `valid` (an i64). Built as an integer of
        `lanes` bits cast to a vector of i1, so it lives in a mask register: the compare of an
        index vector it replaces took vector registers, and the micro-kernel's accumulators
        spilled to the stack on every edge tile (a product of 320x64x136 ran 4x slower than
        320x64x128)."""
        left = b.sub(valid, I64(first))
        left = b.select(b.icmp_signed("<", left, I64(0)), I64(0), left)
        left = b.select(b.icmp_signed(">", left, I64(self.lanes)), I64(self.lanes), left)
        bits = b.sub(b.shl(I64(1), left), I64(1))
        return b.bitcast(b.trunc(bits, ir.IntType(self.lanes)), self.mt)

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


def narrow(t: Blocking) -> Blocking:
    """The tile for B of at most half NR columns (a 32-channel convolution): twice the rows,
    half the vectors, the same accumulators, no lane computing past the edge."""
    return t._replace(mr=2 * t.mr, nv=t.nv // 2)


def thin(dtype: str, n: int) -> bool:
    """Whether products of at most `n` columns take the `narrow` tile (in place)."""
    return n <= blocking(dtype).nr // 2 and blocking(dtype).nv % 2 == 0


def micro_kernel(module: ir.Module, dtype: str, t: Blocking | None = None) -> ir.Function:
    """`mk(kc, A, a_rs, a_ks, B, b_ks, C, ldc, mr, nr, acc)`: C[:mr, :nr] (+)= A @ B over kc,
    with tile `t` (`blocking(dtype)` unless given)."""
    t = t or blocking(dtype)
    name = f"needlec_mk_{dtype}" if t == blocking(dtype) else f"needlec_mk{t.mr}x{t.nr}_{dtype}"
    if name in module.globals:
        return module.globals[name]
    ty = _elem(dtype)
    pty = ir.PointerType(ty)
    mr_n, lanes, nv = t.mr, t.lanes, t.nv
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
    t = blocking(dtype)
    lanes, nv, nr_n = t.lanes, t.nv, t.nr
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


def pack_a(module: ir.Module, dtype: str) -> ir.Function:
    """`packa(mc, kc, A, a_rs, a_ks, dst)`: A's mc x kc block into micro-panels of MR rows,
    each kc x MR contiguous (k major), the rows past mc repeating the last one."""
    name = f"needlec_packa_{dtype}"
    if name in module.globals:
        return module.globals[name]
    ty = _elem(dtype)
    pty = ir.PointerType(ty)
    mr_n = blocking(dtype).mr
    fn, b = _function(
        module, name, [I64, I64, pty, I64, I64, pty], ["mc", "kc", "ap", "a_rs", "a_ks", "dst"]
    )
    mc, kc, ap, a_rs, a_ks, dst = fn.args
    ap.add_attribute("noalias")
    dst.add_attribute("noalias")
    panels = b.sdiv(b.add(mc, I64(mr_n - 1)), I64(mr_n))
    last = b.sub(mc, I64(1))
    with counted_loop(b, panels, "ir") as ir_:
        i0 = b.mul(ir_, I64(mr_n))
        panel = _gep(b, dst, b.mul(i0, kc))
        for i in range(mr_n):  # one row at a time: reads along k, writes every MR-th element
            row = b.add(i0, I64(i))
            row = b.select(b.icmp_signed("<", row, mc), row, last)
            src = _gep(b, ap, b.mul(row, a_rs))
            with counted_loop(b, kc, f"p{i}") as p:
                x = b.load(_gep(b, src, b.mul(p, a_ks)))
                b.store(x, _gep(b, panel, b.add(b.mul(p, I64(mr_n)), I64(i))))
    b.ret_void()
    return fn


def driver(module: ir.Module, dtype: str, packed: bool, thin: bool = False) -> ir.Function:
    """`gemm(m, n, k, A, a_rs, a_ks, B, b_ks, b_ns, C, ldc, scratch, acc)`: C[m,n] = A @ B, or
    C += A @ B where `acc` (an i1) is set; C with row stride ldc and unit column stride. Packed: B
    in KC x NC blocks and A in MC x KC blocks into `scratch` (`pack_bytes`); else both read in
    place (b_ns must be 1), scratch unused. Either way C's old value (when accumulating) comes
    first in each element's sum, then the KC blocks in k order. `thin` (in place only): the
    `narrow` tile, for n of at most half NR."""
    thin = thin and not packed
    name = f"needlec_gemm{'' if packed else 's'}{'n' if thin else ''}_{dtype}"
    if name in module.globals:
        return module.globals[name]
    ty = _elem(dtype)
    pty = ir.PointerType(ty)
    t = narrow(blocking(dtype)) if thin else blocking(dtype)
    mr_n, nr_n = t.mr, t.nr
    mk = micro_kernel(module, dtype, t)
    args = [I64, I64, I64, pty, I64, I64, pty, I64, I64, pty, I64, pty, I1]
    names = ["m", "n", "k", "a", "a_rs", "a_ks", "bp", "b_ks", "b_ns", "c", "ldc", "scratch", "acc"]
    fn, b = _function(module, name, args, names)
    m, n, k, a, a_rs, a_ks, bp, b_ks, b_ns, c, ldc, scratch, acc0 = fn.args

    def smin(x, y):
        return b.select(b.icmp_signed("<", x, y), x, y)

    def blocks(extent, step):
        return b.sdiv(b.add(extent, I64(step - 1)), I64(step))

    if not packed:  # C's tiles in row order, each summed over k in KC blocks
        with counted_loop(b, blocks(m, mr_n), "ir") as iri:
            i0 = b.mul(iri, I64(mr_n))
            mr = smin(b.sub(m, i0), I64(mr_n))
            with counted_loop(b, blocks(n, nr_n), "jr") as jri:
                j0 = b.mul(jri, I64(nr_n))
                nr = smin(b.sub(n, j0), I64(nr_n))
                cblk = _gep(b, c, b.add(b.mul(i0, ldc), j0))
                with counted_loop(b, blocks(k, t.kc), "pc") as pci:
                    pc = b.mul(pci, I64(t.kc))
                    kc = smin(b.sub(k, pc), I64(t.kc))
                    ablk = _gep(b, a, b.add(b.mul(i0, a_rs), b.mul(pc, a_ks)))
                    bblk = _gep(b, bp, b.add(b.mul(pc, b_ks), j0))
                    acc = b.or_(acc0, b.icmp_signed(">", pci, I64(0)))
                    b.call(mk, [kc, ablk, a_rs, a_ks, bblk, b_ks, cblk, ldc, mr, nr, acc])
        b.ret_void()
        return fn
    pb, pa = pack_b(module, dtype), pack_a(module, dtype)
    apack, bpack = scratch, _gep(b, scratch, I64(t.kc * _round(t.mc, mr_n)))  # A's block first
    with counted_loop(b, blocks(n, t.nc), "jc") as jci:
        jc = b.mul(jci, I64(t.nc))
        ncur = smin(b.sub(n, jc), I64(t.nc))
        with counted_loop(b, blocks(k, t.kc), "pc") as pci:
            pc = b.mul(pci, I64(t.kc))
            kc = smin(b.sub(k, pc), I64(t.kc))
            acc = b.or_(acc0, b.icmp_signed(">", pci, I64(0)))
            src = _gep(b, bp, b.add(b.mul(pc, b_ks), b.mul(jc, b_ns)))
            b.call(pb, [kc, ncur, src, b_ks, b_ns, bpack])
            with counted_loop(b, blocks(m, t.mc), "ic") as ici:
                ic = b.mul(ici, I64(t.mc))
                mc = smin(b.sub(m, ic), I64(t.mc))
                asrc = _gep(b, a, b.add(b.mul(ic, a_rs), b.mul(pc, a_ks)))
                b.call(pa, [mc, kc, asrc, a_rs, a_ks, apack])
                with counted_loop(b, blocks(ncur, nr_n), "jr") as jri:
                    j0 = b.mul(jri, I64(nr_n))
                    nr = smin(b.sub(ncur, j0), I64(nr_n))
                    bblk = _gep(b, bpack, b.mul(j0, kc))
                    with counted_loop(b, blocks(mc, mr_n), "ir") as iri:
                        i0 = b.mul(iri, I64(mr_n))
                        mr = smin(b.sub(mc, i0), I64(mr_n))
                        ablk = _gep(b, apack, b.mul(i0, kc))
                        row = b.add(ic, i0)
                        cblk = _gep(b, c, b.add(b.mul(row, ldc), b.add(jc, j0)))
                        args = [kc, ablk, I64(1), I64(mr_n), bblk, I64(nr_n), cblk, ldc, mr, nr]
                        b.call(mk, [*args, acc])
    b.ret_void()
    return fn


def _round(x: int, step: int) -> int:
    return -(-x // step) * step


def mode() -> str:
    """`NEEDLEC_GEMM`: "blas" or "own" forces every float GEMM core to one; else "auto"."""
    env = os.environ.get("NEEDLEC_GEMM", "").strip().lower()
    if env in ("", "auto"):
        return "auto"
    if env not in ("blas", "own"):
        raise ValueError(f"NEEDLEC_GEMM must be blas, own or auto, not {env!r}")
    return env


def choose(dtype: str, m: int, n: int, k: int, b_unit: bool = True) -> str:
    """ "blas", "small" (ours, B read in place) or "packed" (ours, A and B packed) for one
    product of these sizes (per matrix of a batch); `b_unit`: B's rows have unit stride. The
    rules are the table in this module's docstring."""
    want = mode()
    if want == "blas" or (want == "auto" and not _avx512() and 2 * m * n * k > SMALL_FLOPS):
        return "blas"
    b_bytes = k * n * (4 if dtype == "float32" else 8)
    if b_unit and (b_bytes <= SMALL_B_BYTES or m <= SMALL_ROWS):
        return "small"
    return "packed"


def emit_core(r, a, bb, into, dtype: str, sizes: tuple, batch: tuple) -> None:
    """Emit C = A @ B (compact row-major `into`: the `batch` of m x n matrices, `sizes` (m, n,
    k)) for renderer `r` with our kernels: A and B are `Load`s of (batched) matrices of any
    non-negative strides.
    Where the kernel's epilogue can follow each block of C (`r.epilogue`, see `epilogue.py`)
    it is emitted after each block's call: the blocks split over the pool's threads and, in
    place (no packing to repeat), C cut further into blocks of `EPILOGUE_BLOCK_BYTES`."""
    from . import runtime

    m, n, k = sizes
    ty = _elem(dtype)
    pty = ir.PointerType(ty)
    itemsize = 4 if dtype == "float32" else 8
    a_rs, a_ks = a.view.strides[-2:]
    b_ks, b_ns = bb.view.strides[-2:]
    a_rs, a_ks = (a_rs if m > 1 else 0), (a_ks if k > 1 else 0)
    b_ks, b_ns = (b_ks if k > 1 else 0), (b_ns if n > 1 else 1)
    packed = choose(dtype, m, n, k, b_ns == 1) == "packed"
    blocks = runtime.num_threads()
    by_rows = m >= n
    size, tile = (m, blocking(dtype).mr) if by_rows else (n, blocking(dtype).nr)
    tiles = -(-size // tile)
    per = -(-tiles // blocks) * tile  # a block's rows (columns): whole tiles
    split = r.parallel and blocks > 1 and 2 * m * n * k >= SPLIT_FLOPS and size > per
    # the kernel's epilogue, run after each block while it is in cache (`epilogue.py`)
    epi = getattr(r, "epilogue", None)
    epi = epi if epi is not None and epi.rows == by_rows and not batch else None
    if epi is not None and not packed:  # in place, blocks cost nothing: as large as L2 keeps
        line = (n if by_rows else m) * itemsize
        per = min(per if split else size, max(tile, EPILOGUE_BLOCK_BYTES // line // tile * tile))
    nblocks = -(-size // per) if split or (epi is not None and not packed) else 1
    scratch = None
    if packed:
        step = -(-pack_bytes(dtype, k, n) // 64) * 64
        nbytes = step * nblocks
        scratch = Buffer(
            f"{r.k.name}.bpack{len(r.base)}", nbytes, "temp", (nbytes // itemsize,), dtype
        )
        r.scratch_buffer(scratch)
    fn = driver(r.module, dtype, packed, thin(dtype, n))

    def offset(view, flat):
        """Element offset of operand `view`'s matrix number `flat` (an i64) of the batch, in
        row-major order (operands broadcast from the right)."""
        own, b = len(view.shape) - 2, r.b
        off = I64(view.offset)
        for j in range(own):
            d = len(batch) - own + j
            if view.shape[j] != 1 and view.strides[j] != 0:
                i = b.urem(b.udiv(flat, I64(math.prod(batch[d + 1 :]))), I64(batch[d]))
                off = b.add(off, b.mul(i, I64(view.strides[j])))
        return off

    def call(flat, blk=None):
        b = r.b

        def at(buf, off):
            return b.bitcast(b.gep(r.base[buf], [b.mul(off, I64(itemsize))]), pty)

        c_off = b.mul(flat, I64(m * n))  # C is compact
        pa, pb, pc = (
            at(a.buffer, offset(a.view, flat)),
            at(bb.buffer, offset(bb.view, flat)),
            at(into, c_off),
        )
        rows, cols = I64(m), I64(n)
        pk = b.bitcast(r.base[scratch], pty) if scratch is not None else ir.Constant(pty, None)
        lo = count = None
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
        b.call(fn, [*args, pc, I64(n), pk, I1(0)])
        if epi is not None and lo is not None:
            epi.emit(lo, b.add(lo, count))

    def blocks_of(lo, hi, flat):
        with counted_loop(r.b, hi, "blk", start=lo) as blk:
            call(flat, blk)

    def batch_loop(lo, hi):
        with counted_loop(r.b, hi, "bat", start=lo) as flat:
            call(flat)

    products = math.prod(batch)
    if products > 1 and nblocks == 1 and scratch is None:
        # a batch of small products in place (attention's): a loop over the batch, on the
        # pool's threads when there is enough work; each product is computed whole by one
        # thread, so the bits do not depend on the thread count
        work = 2 * m * n * k
        if r.parallel and blocks > 1 and work * products >= SPLIT_FLOPS:
            r.parallel_region(products, max(1, -(-SPLIT_FLOPS // 4 // work)), batch_loop)
        else:
            batch_loop(I64(0), I64(products))
        return
    for flat in map(I64, range(products)):  # packed, or cut into blocks: each product alone
        if split and nblocks > 1:
            r.parallel_region(nblocks, 1, lambda lo, hi, flat=flat: blocks_of(lo, hi, flat))
        elif nblocks > 1:  # one thread: the blocks in order, each with its epilogue
            blocks_of(I64(0), I64(nblocks), flat)
        else:
            call(flat)


__all__ = [
    "TUNING",
    "Blocking",
    "blocking",
    "choose",
    "driver",
    "emit_core",
    "micro_kernel",
    "mode",
    "narrow",
    "pack_b",
    "pack_bytes",
    "thin",
]
