"""A schedule: the steps a compiled function runs, in order, and the buffers each reads and writes.

It is what memory planning sees, whatever produced it: one step per node of a `Graph`
(`schedule_of_graph`) or one per kernel of a fused kernel graph. A buffer is a value that lives
in memory; views (reshapes, broadcasts, transposes folded into index maps) are not buffers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .graph import Graph
from .ops import MOVEMENT, Op


@dataclass(frozen=True, eq=False)
class Buffer:
    """One value in memory. `kind`: "input" (an argument or captured tensor, owned by the
    caller), "output" (returned or written back), or "temp" (an intermediate)."""

    name: str
    nbytes: int
    kind: str = "temp"
    shape: tuple[int, ...] = ()
    dtype: str = "float32"

    def __repr__(self) -> str:
        return f"Buffer({self.name}, {self.nbytes}B, {self.kind})"


@dataclass(frozen=True, eq=False)
class Step:
    """One unit of work (a node, a kernel): the buffers it reads and the buffers it writes."""

    name: str
    reads: tuple[Buffer, ...]
    writes: tuple[Buffer, ...]
    meta: dict = field(default_factory=dict)


def nbytes(shape: tuple[int, ...], dtype: str) -> int:
    """Bytes of a dense array of this shape and dtype."""
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def schedule_of_graph(graph: Graph) -> tuple[list[Step], dict]:
    """One step per computing node in topological order; movement ops alias their source (no
    buffer of their own). Returns (steps, {node: buffer})."""
    outputs = set(map(id, graph.outputs))
    buffers: dict = {}
    for k, n in enumerate(graph.inputs):
        buffers[n] = Buffer(f"in{k}", nbytes(n.shape, n.dtype), "input", n.shape, n.dtype)
    steps = []
    for i, n in enumerate(graph.nodes):
        if n in buffers:
            continue
        if n.op in MOVEMENT and n.op is not Op.STACK and id(n) not in outputs:
            buffers[n] = buffers[n.src[0]]  # a view of its source
            continue
        kind = "output" if id(n) in outputs else "temp"
        buf = Buffer(f"%{i}", nbytes(n.shape, n.dtype), kind, n.shape, n.dtype)
        buffers[n] = buf
        steps.append(Step(f"%{i} = {n.op.name.lower()}", tuple(buffers[s] for s in n.src), (buf,)))
    return steps, buffers
