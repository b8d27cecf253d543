"""The counted loop every LLVM lowering builds: kernel loops, fills, operand packing."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from llvmlite import ir

I64 = ir.IntType(64)


class _LoopID(ir.values.MDValue):
    """A loop's `llvm.loop` metadata: a distinct node whose first operand is itself."""

    def descr(self, buf) -> None:
        refs = ", ".join([self.get_reference(), *(op.get_reference() for op in self.operands)])
        buf += (f"distinct !{{{refs}}}", "\n")


def predicated_tail(module: ir.Module) -> ir.values.MDValue:
    """`llvm.loop` hints that vectorize a loop with its last, partial vector masked instead of
    a scalar remainder loop: for short loops (a row of 20 is 16 vector and 4 scalar elements
    otherwise, and the 4 cost as much as the 16)."""
    hint = module.add_metadata(
        [
            ir.MetaDataString(module, "llvm.loop.vectorize.predicate.enable"),
            ir.Constant(ir.IntType(1), 1),
        ]
    )
    return _LoopID(module, [hint], name=str(len(module.metadata)))


@contextlib.contextmanager
def counted_loop(
    b: ir.IRBuilder,
    n: int | ir.Value,
    name: str,
    start: int | ir.Value = 0,
    hints: ir.values.MDValue | None = None,
) -> Iterator[ir.Value]:
    """`for i in range(start, n)` over an i64 index: yields i with the builder in the body; on
    exit the builder is after the loop. `hints`: its `llvm.loop` metadata."""
    n = I64(n) if isinstance(n, int) else n
    start = I64(start) if isinstance(start, int) else start
    pre = b.block
    head, body, done = (b.append_basic_block(f"{name}.{t}") for t in ("head", "body", "done"))
    b.branch(head)
    b.position_at_end(head)
    i = b.phi(I64, name=name)
    i.add_incoming(start, pre)
    b.cbranch(b.icmp_signed("<", i, n), body, done)
    b.position_at_end(body)
    yield i
    i.add_incoming(b.add(i, I64(1), flags=["nuw", "nsw"]), b.block)
    back = b.branch(head)
    if hints is not None:
        back.set_metadata("llvm.loop", hints)
    b.position_at_end(done)


def in_range(b: ir.IRBuilder, i: ir.Value, lo: int, hi: int) -> ir.Value:
    """`lo <= i < hi` for an i64 index, as an i1."""
    return b.and_(b.icmp_signed(">=", i, I64(lo)), b.icmp_signed("<", i, I64(hi)))


MAX_CHUNKS = 64  # the runtime's cap on the chunks of one parallel loop (runtime/pool.c)


def chunk_size(n: int, grain: int) -> int:
    """The iterations of one chunk of a parallel loop over [0, n) with `grain`, as the runtime's
    `needlec_parallel_for` cuts it: every chunk starts at a multiple of this, so `lo // chunk`
    numbers a task's chunk (and picks its slot of a per-task scratch buffer)."""
    return max(-(-n // MAX_CHUNKS), max(grain, 1))
