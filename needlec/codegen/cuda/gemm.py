"""The float32 matmul core as CUDA C: a register-blocked SIMT kernel, or a tensor-core kernel.

Both kernels walk the tiles of C (column tiles fastest, then row tiles, then the batch) with a
block-stride loop, read A and B through their views (`core.operand`: strides, broadcast batch dims
and masks), guard every element against the edges (any M, N, K, including 0), and double-buffer
shared memory: while the block computes on one K tile, each thread holds its share of the next
one in registers and writes it to the other buffer, so one barrier a K tile suffices. Each output
element goes through `store_core_output` (the renderer's hook that also runs a fused epilogue).

- SIMT (`NEEDLEC_CUDA_MATMUL=simt`, the default; fp32 throughout): a block of
  (BM/TM) x (BN/TN) threads computes a BM x BN tile, each thread a TM x TN micro-tile of
  accumulators in registers, as 4x4 groups spread over the tile so its shared-memory reads are
  16-byte vectors that do not conflict. Products are fused multiply-adds (`__fmaf_rn`, one
  rounding).
- Tensor cores (`tf32` or `bf16`): WMMA (nvcuda::wmma) fragments, A and B rounded to TF32
  (`m16n16k8`) or bf16 (`m16n16k16`) as they are written to shared memory, accumulated in fp32; each warp owns a warp tile of 16x16
  accumulator fragments, stored through a per-warp 16x16 staging tile for the epilogue. The
  inputs' rounding makes it less accurate than fp32 (see `TENSOR_CORE_ROUNDING` in
  `needlec/ir/ops.py`).

Tile sizes come from `autotune.choose` (measured per shape on the GPU, cached on disk, or a
heuristic).
"""

from __future__ import annotations

import math

from ...ir.kernel import Core
from ...ir.schedule import Buffer
from . import autotune
from .core import operand

INCLUDES = "#ifdef __CUDACC__\n#include <mma.h>\n#include <cuda_bf16.h>\n#endif"


def render_matmul(r, c: Core, into: Buffer) -> None:
    """The phases of a float32 matmul core `c` (see the module docstring)."""
    mode = autotune.matmul_mode()
    cfg = getattr(r, "forced_tiles", None) or autotune.choose(r, c, mode)
    if cfg.kind == "simt":
        _simt(r, c, into, cfg)
    else:
        _wmma(r, c, into, cfg)


def _unrolled(r, ni: int, nj: int, stmt: str) -> None:
    """`stmt` for every (i, j) of ni x nj, both loops unrolled (register arrays stay registers)."""
    r.emit("#pragma unroll")
    r.emit(f"for (int i = 0; i < {ni}; ++i)")
    r.emit("  #pragma unroll")
    r.emit(f"  for (int j = 0; j < {nj}; ++j)")
    r.emit(f"    {stmt}")


def _problem(c: Core):
    a, b = c.operands
    *batch, m, n = c.shape
    return batch, m, n, a.view.shape[-1]


def _tile_loop(r, c: Core, cfg) -> list[str]:
    """Open the block-stride loop over C's tiles; binds row0, col0 and the batch indices."""
    batch, m, n, _ = _problem(c)
    gx, gy = -(-n // cfg.bn), -(-m // cfg.bm)
    tiles = gx * gy * math.prod(batch)
    r.open(f"for (long long tile = blockIdx.x; tile < {tiles}LL; tile += gridDim.x)")
    r.emit(f"const long long bx = tile % {gx}, by = tile / {gx};")
    r.emit(f"const long long bt = by / {gy};")
    r.emit(f"const long long row0 = (by % {gy}) * {cfg.bm}, col0 = bx * {cfg.bn};")
    bidx, rest = [], "bt"
    for j, d in enumerate(reversed(batch)):
        r.emit(f"const long long z{j} = ({rest}) % {d}LL;")
        bidx.insert(0, f"z{j}")
        rest = f"({rest}) / {d}LL"
    return bidx


def _grid(c: Core, cfg) -> int:
    batch, m, n, _ = _problem(c)
    tiles = -(-n // cfg.bn) * -(-m // cfg.bm) * math.prod(batch)
    return max(1, min(65535, tiles))


def _k_fast(ld, k_axis: int, other_axis: int) -> bool:
    """Whether consecutive threads should read along K (its stride the smaller) in `ld`."""
    st = ld.view.strides
    return abs(st[k_axis]) <= abs(st[other_axis]) if st[k_axis] else False


def _loads(r, c: Core, cfg, bidx: list[str], threads: int, conv: str) -> tuple:
    """C statements that read one K tile (at `k0`) of A and B into registers ra/rb, and those
    that write the registers to shared buffer `buf` (A as As[buf][.][.], B as Bs[buf][k][n]);
    `conv` wraps a value written to shared memory. A is stored [k][m] for SIMT, [m][k] for WMMA."""
    a, b = c.operands
    _, m, n, k = _problem(c)
    la, lb = cfg.bm * cfg.bk // threads, cfg.bk * cfg.bn // threads
    load, save = [], []
    a_kfast = _k_fast(a, -1, -2)
    for j in range(la):
        e = f"(threadIdx.x + {j * threads})"
        mm, kk = (
            (f"{e} / {cfg.bk}", f"{e} % {cfg.bk}")
            if a_kfast
            else (f"{e} % {cfg.bm}", f"{e} / {cfg.bm}")
        )
        load.append(f"{{ const int mm = {mm}, kk = {kk};")
        load.append("  const long long gr = row0 + mm, gk = k0 + kk;")
        v = operand(r, a, [*bidx, "gr", "gk"], "float32")
        load.append(f"  ra[{j}] = (gr < {m}LL && gk < {k}LL) ? {v} : 0.0f; }}")
        dst = "As[buf][kk][mm]" if cfg.kind == "simt" else "As[buf][mm][kk]"
        save.append(f"{{ const int mm = {mm}, kk = {kk}; {dst} = {conv.format(f'ra[{j}]')}; }}")
    b_kfast = _k_fast(b, -2, -1)
    for j in range(lb):
        e = f"(threadIdx.x + {j * threads})"
        kk, nn = (
            (f"{e} % {cfg.bk}", f"{e} / {cfg.bk}")
            if b_kfast
            else (f"{e} / {cfg.bn}", f"{e} % {cfg.bn}")
        )
        load.append(f"{{ const int kk = {kk}, nn = {nn};")
        load.append("  const long long gk = k0 + kk, gc = col0 + nn;")
        v = operand(r, b, [*bidx, "gk", "gc"], "float32")
        load.append(f"  rb[{j}] = (gk < {k}LL && gc < {n}LL) ? {v} : 0.0f; }}")
        save.append(
            f"{{ const int kk = {kk}, nn = {nn}; Bs[buf][kk][nn] = {conv.format(f'rb[{j}]')}; }}"
        )
    return la, lb, load, save


def _main_loop(r, c: Core, cfg, bidx, threads: int, conv: str, compute) -> None:
    """Tile 0 into buffer 0, then per K tile: the next tile's loads, `compute()`, its stores."""
    _, _, _, k = _problem(c)
    la, lb, load, save = _loads(r, c, cfg, bidx, threads, conv)
    r.emit(f"float ra[{la}], rb[{lb}];")
    r.open("")
    r.emit("const long long k0 = 0; const int buf = 0;")
    for line in load + save:
        r.emit(line)
    r.close()
    r.emit("__syncthreads();")
    kt = -(-k // cfg.bk)
    r.open(f"for (long long kt = 0; kt < {kt}LL; ++kt)")
    r.emit("const int cur = (int)(kt & 1);")
    r.open(f"if (kt + 1 < {kt}LL)")
    r.emit(f"const long long k0 = (kt + 1) * {cfg.bk};")
    for line in load:
        r.emit(line)
    r.close()
    compute()
    r.open(f"if (kt + 1 < {kt}LL)")
    r.emit("const int buf = cur ^ 1;")
    for line in save:
        r.emit(line)
    r.close()
    r.emit("__syncthreads();")
    r.close()


def _simt(r, c: Core, into: Buffer, cfg) -> None:
    _, m, n, _ = _problem(c)
    tr, tc = cfg.bm // cfg.tm, cfg.bn // cfg.tn  # threads along M and along N
    threads = tr * tc
    r.begin(_grid(c, cfg), threads, fixed_block=True)
    # rows padded by 4 floats: the column-wise writes of a tile do not hit one bank
    r.emit(f"__shared__ __align__(16) float As[2][{cfg.bk}][{cfg.bm + 4}];")
    r.emit(f"__shared__ __align__(16) float Bs[2][{cfg.bk}][{cfg.bn + 4}];")
    r.emit(f"const int tx = threadIdx.x % {tc}, ty = threadIdx.x / {tc};")
    bidx = _tile_loop(r, c, cfg)
    r.emit(f"float acc[{cfg.tm}][{cfg.tn}];")
    _unrolled(r, cfg.tm, cfg.tn, "acc[i][j] = 0.0f;")

    def compute() -> None:
        r.emit("#pragma unroll")
        r.open(f"for (int kk = 0; kk < {cfg.bk}; ++kk)")
        r.emit(f"float fa[{cfg.tm}], fb[{cfg.tn}];")
        for name, arr, n, t, i in (("fa", "As", cfg.tm, tr, "ty"), ("fb", "Bs", cfg.tn, tc, "tx")):
            for g in range(n // 4):  # a 16-byte shared-memory read a group of 4
                r.emit(
                    f"{{ const float4 v = *(const float4*)&{arr}[cur][kk][{g * t * 4} + {i} * 4];"
                )
                r.emit(
                    "  "
                    + " ".join(f"{name}[{4 * g + q}] = v.{x};" for q, x in enumerate("xyzw"))
                    + " }"
                )
        _unrolled(r, cfg.tm, cfg.tn, "acc[i][j] = __fmaf_rn(fa[i], fb[j], acc[i][j]);")
        r.close()

    _main_loop(r, c, cfg, bidx, threads, "{}", compute)
    r.emit("#pragma unroll")
    r.open(f"for (int i = 0; i < {cfg.tm}; ++i)")
    r.emit(f"const long long gr = row0 + (i / 4) * {tr * 4} + ty * 4 + (i % 4);")
    r.emit("#pragma unroll")
    r.open(f"for (int j = 0; j < {cfg.tn}; ++j)")
    r.emit(f"const long long gc = col0 + (j / 4) * {tc * 4} + tx * 4 + (j % 4);")
    r.open(f"if (gr < {m}LL && gc < {n}LL)")
    r.store_core_output(into, [*bidx, "gr", "gc"], "acc[i][j]")
    r.close()
    r.close()
    r.close()
    r.close()  # the tile loop
    r.end()


def _wmma(r, c: Core, into: Buffer, cfg) -> None:
    _, m, n, _ = _problem(c)
    wr, wc = cfg.bm // cfg.tm, cfg.bn // cfg.tn  # warps along M and along N
    fm, fn = cfg.tm // 16, cfg.tn // 16  # accumulator fragments of a warp
    threads = 32 * wr * wc
    tf32 = cfg.kind == "tf32"
    ks, t, pad = (8, "float", 4) if tf32 else (16, "__nv_bfloat16", 8)
    prec = "nvcuda::wmma::precision::tf32" if tf32 else "__nv_bfloat16"
    w = "nvcuda::wmma::"
    r.functions.append(INCLUDES)
    r.begin(_grid(c, cfg), threads, fixed_block=True)
    # rows padded (16 bytes for tf32, 8 bf16): a fragment's rows fall on other banks, and every
    # fragment pointer stays 32-byte aligned as load_matrix_sync needs
    r.emit(f"__shared__ __align__(128) {t} As[2][{cfg.bm}][{cfg.bk + pad}];")
    r.emit(f"__shared__ __align__(128) {t} Bs[2][{cfg.bk}][{cfg.bn + pad}];")
    r.emit(f"__shared__ __align__(128) float Cs[{wr * wc}][256];")
    r.emit("const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;")
    r.emit(f"const int wm = warp / {wc}, wn = warp % {wc};")
    bidx = _tile_loop(r, c, cfg)
    r.emit(f"{w}fragment<{w}accumulator, 16, 16, {ks}, float> acc[{fm}][{fn}];")
    _unrolled(r, fm, fn, f"{w}fill_fragment(acc[i][j], 0.0f);")

    def compute() -> None:
        r.emit("#pragma unroll")
        r.open(f"for (int ks = 0; ks < {cfg.bk}; ks += {ks})")
        r.emit(f"{w}fragment<{w}matrix_a, 16, 16, {ks}, {prec}, {w}row_major> fa[{fm}];")
        r.emit(f"{w}fragment<{w}matrix_b, 16, 16, {ks}, {prec}, {w}row_major> fb[{fn}];")
        r.emit("#pragma unroll")
        r.open(f"for (int i = 0; i < {fm}; ++i)")
        r.emit(f"{w}load_matrix_sync(fa[i], &As[cur][wm * {cfg.tm} + i * 16][ks], {cfg.bk + pad});")
        r.close()
        r.emit("#pragma unroll")
        r.open(f"for (int j = 0; j < {fn}; ++j)")
        r.emit(f"{w}load_matrix_sync(fb[j], &Bs[cur][ks][wn * {cfg.tn} + j * 16], {cfg.bn + pad});")
        r.close()
        _unrolled(r, fm, fn, f"{w}mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);")
        r.close()

    # inputs rounded once, as they go to shared memory (a fragment's load then holds TF32 values)
    rounding = f"{w}__float_to_tf32({{}})" if tf32 else "__float2bfloat16({})"
    _main_loop(r, c, cfg, bidx, threads, rounding, compute)
    # each accumulator fragment through the warp's staging tile, then element by element
    r.open(f"for (int i = 0; i < {fm}; ++i)")
    r.open(f"for (int j = 0; j < {fn}; ++j)")
    r.emit(f"{w}store_matrix_sync(&Cs[warp][0], acc[i][j], 16, {w}mem_row_major);")
    r.emit("__syncwarp();")
    r.open("for (int e = lane; e < 256; e += 32)")
    r.emit(f"const long long gr = row0 + wm * {cfg.tm} + i * 16 + e / 16;")
    r.emit(f"const long long gc = col0 + wn * {cfg.tn} + j * 16 + e % 16;")
    r.open(f"if (gr < {m}LL && gc < {n}LL)")
    r.store_core_output(into, [*bidx, "gr", "gc"], "Cs[warp][e]")
    r.close()
    r.close()
    r.emit("__syncwarp();")
    r.close()
    r.close()
    r.close()  # the tile loop
    r.end()


__all__ = ["INCLUDES", "render_matmul"]
