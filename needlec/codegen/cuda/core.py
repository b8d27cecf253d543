"""GEMM and convolution cores as CUDA C.

A matmul (batched, operands read through their views: transposes, broadcast batch dims and masks
are in the strides and bounds) of float32 is `gemm.py`'s register-blocked kernel (or its
tensor-core variant, `NEEDLEC_CUDA_MATMUL`); of another dtype, a shared-memory tiled kernel: a
block of TILE x TILE threads computes a TILE x TILE tile of C, stepping over K a tile at a time,
each step loading a tile of A and one of B into shared memory. A convolution and its two
gradients are implicit GEMMs (`conv.py`). Products accumulate in the core's dtype, integers
wrapping as numpy's do. Both write their outputs through the renderer's `store_core_output`,
which also runs an elementwise epilogue the passes fused after the core on each output in
registers; any other epilogue runs in the kernel's later phases, reading the core's output buffer.
"""

from __future__ import annotations

import math

from ...ir import Op
from ...ir.kernel import Core, Load
from ...ir.schedule import Buffer
from .cexpr import CTYPE, const

TILE = 16
# the cores whose renderers write every output through `store_core_output` (so an elementwise
# epilogue can run inside them)
WRITES_THROUGH_HOOK = frozenset({Op.MATMUL, Op.CONV, Op.CONV_INPUT_GRAD, Op.CONV_WEIGHT_GRAD})


def _operand(r, ld: Load, idx: list[str], dtype: str) -> str:
    """`ld`'s element at logical indices `idx` (the trailing ones if it has fewer dims: a
    broadcast batch), converted to `dtype`; 0 outside its mask."""
    v = ld.view
    idx = idx[len(idx) - len(v.shape) :]
    terms = [str(v.offset)] if v.offset else []
    valid = []
    for i, n, st, (lo, hi) in zip(idx, v.shape, v.strides, v.bounds(), strict=True):
        if n == 1:
            if not lo <= 0 < hi:
                return const(dtype, 0)
            continue
        if st:
            terms.append(f"({i}) * {st}LL")
        if (lo, hi) != (0, n):
            valid.append(f"({i}) >= {lo} && ({i}) < {hi}")
    return r.guarded_read(ld.buffer, " + ".join(terms) or "0LL", valid, dtype)


operand = _operand  # a core's operand element, for the GEMM kernels of `gemm.py`


def _mac(acc: str, a: str, b: str, dt: str) -> str:
    if dt == "bool":
        return f"{acc} = {acc} || ({a} && {b});"
    if dt in ("float32", "float64"):
        p = "f" if dt == "float32" else "d"
        return f"{acc} = __{p}add_rn({acc}, __{p}mul_rn({a}, {b}));"
    return f"{acc} = nc_wadd({acc}, nc_wmul({a}, {b}));"


def render_core(r, c: Core, into: Buffer) -> None:
    """The phases of core `c`, writing its result (compact, shape `c.shape`) to `into`."""
    if c.op is Op.MATMUL:
        _matmul(r, c, into)
    elif c.op in (Op.CONV, Op.CONV_INPUT_GRAD, Op.CONV_WEIGHT_GRAD):
        from .conv import render_conv  # conv.py's direct kernels read operands as matmul's do

        render_conv(r, c, into)
    else:
        raise ValueError(f"kernel {r.k.name}: no CUDA lowering for a {c.op.name.lower()} core")


def _matmul(r, c: Core, into: Buffer) -> None:
    if c.dtype == "float32":
        from . import gemm

        gemm.render_matmul(r, c, into)
        return
    a, b = c.operands
    *batch, m, n = c.shape
    k = a.view.shape[-1]
    nb = math.prod(batch)
    dt = c.dtype
    t = CTYPE[dt]
    grid_x, grid_y = -(-n // TILE), -(-m // TILE)
    tiles = grid_x * grid_y * nb
    # a block-stride loop over the tiles of C (column tiles fastest, then row tiles, then batch)
    r.begin(max(1, min(65535, tiles)), TILE * TILE, fixed_block=True)
    r.emit(f"__shared__ {t} ta[{TILE}][{TILE}];")
    r.emit(f"__shared__ {t} tb[{TILE}][{TILE}];")
    r.emit(f"const int tx = threadIdx.x % {TILE}, ty = threadIdx.x / {TILE};")
    r.open(f"for (long long tile = blockIdx.x; tile < {tiles}LL; tile += gridDim.x)")
    r.emit(f"const long long bx = tile % {grid_x}, by = tile / {grid_x};")
    r.emit(f"const long long bt = by / {grid_y}, row = (by % {grid_y}) * {TILE} + ty;")
    r.emit(f"const long long col = bx * {TILE} + tx;")
    bidx = []
    rest = "bt"
    for j, d in enumerate(reversed(batch)):
        r.emit(f"const long long z{j} = ({rest}) % {d}LL;")
        bidx.insert(0, f"z{j}")
        rest = f"({rest}) / {d}LL"
    r.emit(f"{t} acc = {const(dt, 0)};")
    r.open(f"for (long long k0 = 0; k0 < {k}LL; k0 += {TILE})")
    r.emit("const long long ka = k0 + tx, kb = k0 + ty;")
    av = _operand(r, a, [*bidx, "row", "ka"], dt)
    bv = _operand(r, b, [*bidx, "kb", "col"], dt)
    r.emit(f"ta[ty][tx] = (row < {m}LL && ka < {k}LL) ? {av} : {const(dt, 0)};")
    r.emit(f"tb[ty][tx] = (kb < {k}LL && col < {n}LL) ? {bv} : {const(dt, 0)};")
    r.emit("__syncthreads();")
    r.open(f"for (int kk = 0; kk < {TILE}; ++kk)")
    r.emit(_mac("acc", "ta[ty][kk]", "tb[kk][tx]", dt))
    r.close()
    r.emit("__syncthreads();")
    r.close()
    r.open(f"if (row < {m}LL && col < {n}LL)")
    r.store_core_output(into, [*bidx, "row", "col"], "acc")
    r.close()
    r.close()
    r.end()


__all__ = ["TILE", "WRITES_THROUGH_HOOK", "operand", "render_core"]
