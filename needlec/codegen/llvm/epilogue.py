"""A GEMM kernel's epilogue run over each block of C right after the block is computed.

A matmul kernel's schedule is the core (`RunCore`, C into a buffer) and then the epilogue: the
elementwise work fusion put after it (a bias add and activation, an optimizer's update after a
weight gradient), a loop nest reading C. Run as a second pass, that loop reads all of C back
from memory. Where the GEMM is computed in blocks of C's rows (or columns) anyway (split over
the pool's threads, `gemm.emit_core` and `mgemm.emit_core`), the epilogue's outer loop is
emitted over each block's range, called after the block, inside the same pool task: the block
is still in cache.

Which runs when: the block-wise epilogue (`plan` returns an `Epilogue`) where

- the core is a float matmul of one matrix (no batch dims),
- after the core the schedule holds only `let`s and scratch `init`s, then one loop, over the
  kernel dim of C's rows or columns, whose iterations are independent (`parallel_safe`: each
  writes only its own elements, no reduction across it), so it reads C only at its own rows,
- no buffer the epilogue writes shares bytes with another buffer of the kernel (the memory
  plan's `noalias`) or lies over an operand of the GEMM: an update written over an input the
  GEMM still reads for later blocks must wait for the whole GEMM;

and the GEMM is cut along that loop's dim. Everywhere else (a reduction over C's rows, such as
a bias gradient's column sum; reads of C at other positions; a batched matmul; a GEMM run as one
call) the epilogue runs as a separate pass after the whole GEMM. Either way each element of
the epilogue is computed by the same operations from the same C: BLAS's blocks are the ones it
is cut into anyway (one per pool thread), and ours sums each element over K in one order
whatever block holds it (`mgemm.py`), so its in-place form may cut C into smaller blocks for
the epilogue's sake (`mgemm.EPILOGUE_BLOCK_BYTES`, on one thread too) without changing a bit.
"""

from __future__ import annotations

from ...ir import Op
from ..schedule import Init, Let, Loop, RunCore, Write, items, parallel_safe
from . import intcore


def _kdims(d) -> tuple:
    if isinstance(d, tuple):
        return d
    return () if d is None else (d,)


class Epilogue:
    """The epilogue of renderer `r`'s kernel as a loop over a range of C's rows (`rows`) or
    columns: `lets` (invariants, computed again in each block), then `loop` over [lo, hi).
    `done` is set once a GEMM has emitted it after its blocks."""

    def __init__(self, r, lets: list, inits: list, loop: Loop, rows: bool) -> None:
        self.r, self.lets, self.inits, self.loop, self.rows = r, lets, inits, loop, rows
        self.done = False

    def emit(self, lo, hi) -> None:
        """Emit the epilogue over C's rows (columns) [lo, hi) (i64 values) at the builder."""
        r = self.r
        r.scopes.append({})
        r.walk(self.lets)
        r.loop(self.loop, lo, hi)
        r.scopes.pop()
        self.done = True


def plan(r) -> Epilogue | None:
    """The block-wise epilogue of renderer `r`'s kernel, or None where it must run as a
    separate pass after the whole GEMM (see the module docstring)."""
    s, k = r.s, r.k
    core = k.core
    if core is None or core.op is not Op.MATMUL or len(core.shape) != 2:
        return None
    if core.dtype not in ("float32", "float64") or intcore.supported(core):
        return None
    body = s.body
    if len(body) < 2 or not isinstance(body[0], RunCore) or not isinstance(body[-1], Loop):
        return None
    lets, inits = [], []
    for it in body[1:-1]:
        if isinstance(it, Let):
            lets.append(it)
        elif isinstance(it, Init) and it.mode == "scratch":
            inits.append(it)
        else:
            return None
    lp = body[-1]
    if not parallel_safe(lp, k.space):
        return None
    dims = s.core_dims()
    row, col = _kdims(dims[0]), _kdims(dims[1])
    if (lp.dim,) not in (row, col) or lp.extent != core.shape[0 if (lp.dim,) == row else 1]:
        return None
    # what the epilogue writes must not share bytes with the GEMM's operands or its C
    root = {b: r.merged.get(b, b) for b in [*k.inputs, *k.outputs]}
    operands = {root.get(ld.buffer, ld.buffer) for ld in core.operands}
    written = {
        root.get(it.store.buffer, it.store.buffer) for it in items([lp]) if isinstance(it, Write)
    }
    if any(b not in r.noalias or b in operands for b in written):
        return None
    if s.core_store is not None and root.get(s.core_store.buffer) not in r.noalias:
        return None
    return Epilogue(r, lets, inits, lp, (lp.dim,) == row)


__all__ = ["Epilogue", "plan"]
