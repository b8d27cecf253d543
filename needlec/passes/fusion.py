"""Fusion: a graph into loop-nest kernels (`fuse(graph) -> KernelGraph`).

What ends up in one kernel:
- chains of elementwise ops, the broadcasts between them, and the reductions that consume them;
- a reduce-elementwise-reduce-elementwise chain over the same rows (softmax, logsumexp,
  layernorm): one loop nest whose reductions reuse the row's loop index;
- a GEMM or convolution and the elementwise epilogue after it (bias, activation, scaling, casts);
- kernels that read each other's outputs (multi-output) or the same input over the same loop
  nest (horizontal), when no cycle, second core or reduction after a convolution results; a
  reduction kernel over a GEMM's output (a bias gradient's column sum over the batch) joins the
  GEMM's kernel, as loops after the core that read its output while it is still in cache.

Movement ops are folded into index maps (`View`s) of the loads that read them; a reshape with no
view (of a non-contiguous or padded value) and a view that is a graph output are copied by a
copy kernel. LOGSUMEXP, LOGSOFTMAX, DILATE and STACK are expanded first (`fusion_expand`).

A value is written to memory when it is a graph output, an operand of a GEMM/conv, the source of
a view, or read by several kernels: it is never computed twice, unless it is in `recompute` (the
rematerialization plan) and elementwise, movement or a reduction, when each consumer kernel
computes its own copy. MATMUL, CONV and RAND are never duplicated. Each refusal is recorded in
`kg.report` with a one-line reason (`NEEDLEC_DEBUG=fusion` prints it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from ..ir import REDUCE, Graph, Node, Op
from ..ir.kernel import (
    Core,
    ExprTable,
    Kernel,
    KernelGraph,
    KOp,
    Load,
    RandDraw,
    Reduce,
    Store,
)
from ..ir.schedule import Buffer, nbytes
from ..ir.view import View
from .fold_dims import fold_dims
from .fusion_expand import expand_composites
from .fusion_merge import first_index, merge_groups
from .fusion_plan import CORES, Group, Plan, flat


@dataclass
class FusionReport:
    """What fusion made: each kernel (name, kind, loop nest, nodes, outputs), each refused
    fusion and each note (copies), one line each."""

    kernels: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    nodes: int = 0

    def as_text(self) -> str:
        head = (
            f"fusion: {len(self.kernels)} kernels from {self.nodes} nodes, "
            f"{len(self.refused)} refused fusions"
        )
        return "\n".join([head] + [f"  {k}" for k in self.kernels + self.refused + self.notes])

    __str__ = as_text


def fuse(graph: Graph, recompute: frozenset[Node] = frozenset()) -> KernelGraph:
    """The graph as kernels in execution order; the `FusionReport` is `kg.report`.

    >>> from needlec.ir import Node, Op, Graph
    >>> x = Node.leaf(Op.INPUT, "float32", (4, 8), ("arg", 0))
    >>> kg = fuse(Graph([x], [(x.exp() * 2.0).sum((1,))]))
    >>> print(kg.as_text())
    kernels(%0:f32[4,8]):
      k0 = reduce space=(4,8) reads(%0) writes(%3)
        v0:f32[4,8] = load %0 strides=(8,1) offset=0
        v1:f32[4,8] = exp v0
        v2:f32[4,8] = mul_scalar v1 c=2.0
        v3:f32[4,1] = reduce_sum v2 over=(i1) identity=0 combiner=add
        store %3:f32[4][i0] = v3
      return (%3)
    """
    expanded, names, new_of = expand_composites(graph)
    plan = Plan(expanded, names, frozenset(new_of.get(n, n) for n in recompute))
    plan.place()
    plan.resolve_views()
    dag = merge_groups(plan)
    order = dag.order(lambda gid: first_index(plan, plan.groups[gid]))
    return _build(plan, order)


def _build(plan: Plan, order: list[int]) -> KernelGraph:
    g = plan.graph
    kname = {gid: f"k{i}" for i, gid in enumerate(order)}
    buffers: dict[Node, Buffer] = {}
    constants: dict = {}
    outputs = set(g.outputs)
    for n in g.inputs:
        buffers[n] = Buffer(plan.name(n), nbytes(n.shape, n.dtype), "input", n.shape, n.dtype)
    needed = [o for o in g.outputs]
    for grp in plan.groups.values():
        for s, n, _, how in plan.reads(grp):
            needed.append(plan.views[n][0] if how == "copy" else plan.base_of(s)[0])
    for n in dict.fromkeys(needed):
        if n in buffers:
            continue
        if plan.kind[n] == "const":
            buf = Buffer(plan.name(n), nbytes(n.shape, n.dtype), "input", n.shape, n.dtype)
            constants[buf] = n.arg.array
        else:
            kind = "output" if n in outputs else "temp"
            buf = Buffer(plan.name(n), nbytes(n.shape, n.dtype), kind, n.shape, n.dtype)
        buffers[n] = buf
    kernels = [_kernel(plan, plan.groups[gid], kname[gid], buffers) for gid in order]
    report = FusionReport(nodes=len(g.nodes))
    for k in kernels:
        outs = ", ".join(b.name for b in k.outputs)
        space = ",".join(map(str, k.space))
        report.kernels.append(f"{k.name} {k.kind} ({space}) {len(k.nodes)} nodes -> {outs}")

    def text(s: str) -> str:
        return re.sub(r"\{g(\d+)\}", lambda m: kname[plan.find(int(m.group(1)))], s)

    heads: set[str] = set()
    for what, gid, why, subject in plan.refusals:
        into = plan.find(gid)
        done = plan.find(subject) if isinstance(subject, int) else plan.owner.get(subject)
        if done is not None and plan.find(done) == into:
            continue  # fused after all, by a later merge
        head = f"refused: {text(what)} into {kname[into]}"
        if head not in heads:  # the first reason given for a pair
            heads.add(head)
            report.refused.append(f"{head}: {text(why)}")
    for what, gid, why in plan.notes:
        report.notes.append(f"note: {what} in {kname[plan.find(gid)]}: {text(why)}")
    return KernelGraph(
        inputs=tuple(buffers[n] for n in g.inputs),
        kernels=tuple(kernels),
        outputs=tuple(buffers[n] for n in g.outputs),
        constants=constants,
        graph=g,
        names=dict(plan.names),
        report=report,
    )


def _scalar(value, dtype: str):
    if dtype == "bool":
        return bool(value)
    return int(value) if dtype.startswith("int") else float(value)


def _kernel(plan: Plan, grp: Group, name: str, buffers: dict[Node, Buffer]) -> Kernel:
    space = tuple(grp.space)
    unit = (1,) * len(space)
    table = ExprTable()
    inputs: dict[Buffer, None] = {}
    val: dict = {}

    def const(value, dtype: str):
        return table.make(KOp.CONST, dtype, unit, (), _scalar(value, dtype))

    def load(base: Node, view: View, dims, dtype: str):
        v, empty = view.embed(dims, space)
        if empty:
            return const(0, dtype)
        inputs[buffers[base]] = None
        return table.make(KOp.LOAD, dtype, v.shape, (), Load(buffers[base], v))

    core = None
    if grp.core is not None:
        c = grp.core
        operands = []
        for s in c.src:
            base, view = plan.base_of(s)
            inputs[buffers[base]] = None
            operands.append(Load(buffers[base], view))
        core = Core(c.op, tuple(operands), c.arg, c.dtype, c.shape, grp.dims[c])
        val[c] = table.make(KOp.CORE, c.dtype, grp.ks(c))
    members = sorted(grp.members, key=plan.index.__getitem__)
    for n in members:
        if n is grp.core:
            continue
        if n in grp.copies:
            base, view = plan.views[n]
            val[n] = load(base, view, grp.dims[n], n.dtype)
            continue
        if n in grp.fills:
            val[n] = const(plan.uniform[n], n.dtype)
            continue
        srcs = []
        for k, s in enumerate(n.src):
            if s in grp.dims:
                srcs.append(val[s])
            elif plan.kind[s] == "inline":
                srcs.append(const(plan.uniform[s], s.dtype))
            else:
                base, view = plan.base_of(s)
                srcs.append(load(base, view, plan.demand(grp, n, k), s.dtype))
        val[n] = _value(table, grp, n, srcs)
    stores = tuple(
        Store(buffers[n], val[n], grp.dims[n])
        for n in members
        if n in buffers and plan.owner.get(n) == grp.id
    )
    exprs = tuple(table.exprs)
    if core is not None:
        kind = {Op.MATMUL: "gemm", Op.CALLBACK: "callback", Op.ALLREDUCE: "allreduce"}.get(
            core.op, "conv"
        )
    elif any(e.op is KOp.REDUCE for e in exprs):
        kind = "reduce"
    elif all(e.op is KOp.LOAD for e in exprs):
        kind = "copy"
    elif all(e.op is KOp.CONST for e in exprs):
        kind = "fill"
    else:
        kind = "elementwise"
    kernel = Kernel(name, kind, space, tuple(inputs), exprs, stores, core, tuple(members))
    return fold_dims(kernel)  # no dim that only re-indexes elements other dims index


def _value(table: ExprTable, grp: Group, n: Node, srcs: list):
    """The expression of member n over the values of its sources."""
    ks = grp.ks(n)
    if n.op is Op.STOP_GRADIENT or n.op in (Op.BROADCAST, Op.PERMUTE, Op.RESHAPE):
        return srcs[0]  # the same value (movement is in the index maps)
    if n.op in REDUCE:
        x = srcs[0]
        if x.dtype != n.dtype:  # a sum of bools counts in int64
            x = table.make(Op.CAST, n.dtype, x.shape, (x,), n.dtype)
        dims = flat(grp.rdims[n])
        if not dims:
            return x
        shape = tuple(1 if k in dims else d for k, d in enumerate(x.shape))
        return table.make(KOp.REDUCE, n.dtype, shape, (x,), Reduce(n.op, dims))
    if n.op is Op.RAND:
        dist, stream = n.arg
        draw = RandDraw(dist, stream, n.shape, grp.dims[n])
        return table.make(KOp.RAND, n.dtype, ks, tuple(srcs), draw)
    if n.op in CORES:
        raise ValueError(f"fusion: {n.op.name.lower()} outside a kernel's core")
    shape = tuple(np.broadcast_shapes(*(s.shape for s in srcs))) if srcs else ks
    return table.make(n.op, n.dtype, shape, tuple(srcs), n.arg)


__all__ = ["FusionReport", "KernelGraph", "fuse"]
