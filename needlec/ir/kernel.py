"""The kernel IR: what fusion makes of a graph, and what the LLVM and CUDA renderers read.

A `KernelGraph` is buffers in, kernels in execution order, buffers out. A `Kernel` is one loop
nest over its iteration `space` (the dims of size > 1, numbered i0, i1, ...); every value in it is
a scalar expression (`Expr`) whose kernel-space shape has the full size on the dims it depends on
and 1 on the others (numpy's keepdims view of a loop nest). Values (`Expr.op`, a `KOp` or an
elementwise `Op`) are:

- `load`: one element of a buffer through a `View` laid over the kernel space (strides 0 on
  the dims the value does not depend on; masked reads give 0);
- `const`: a scalar; an elementwise `Op` (same enum members and args as the graph);
- `reduce`: a `Reduce` (SUM or MAX) over some kernel dims, with its identity and combiner; the
  result has size 1 on those dims;
- `rand`: a counter-based draw (the counter is the element's row-major index in `RandDraw.shape`);
- `core`: the result of the kernel's GEMM or convolution (`Core`), whose operands are views of
  whole buffers; the values after it are its epilogue.

Each `Store` writes one value to an output buffer: logical dim j of the buffer runs over the
kernel dims `dims[j]` (row-major; () for a dim of size 1).

A reduction binds its dims: the values under it run over them, its result does not depend on
them, and the same kernel dim may then index the outputs again. A softmax over rows:

    k0 = reduce space=(4,10) reads(%0) writes(%10)
      v0:f32[4,10] = load %0 strides=(10,1) offset=0
      v1:f32[4,1] = reduce_max v0 over=(i1) identity=-inf combiner=maximum
      v2:f32[4,1] = neg v1
      v3:f32[4,10] = add v0 v2
      v4:f32[4,10] = exp v3
      v5:f32[4,1] = reduce_sum v4 over=(i1) identity=0 combiner=add
      v6:f32[4,10] = div v4 v5
      store %10:f32[4,10][i0,i1] = v6

A renderer loops i0 outside; under it a pass over i1 for v1, one for v5, and one that stores v6
(values a reduction reads are recomputed in its loop or kept, the renderer's choice).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from .ops import ARG_NAME, CONVS, ELEMENTWISE, OPAQUE, Op, fmt_type
from .schedule import Buffer, Step
from .view import Dims, Shape, View


class KOp(str, Enum):
    """The kinds of kernel value that are not an elementwise `Op` (see the module docstring).
    A str enum: a member prints as, and compares equal to, its lower-case name."""

    LOAD = "load"
    CONST = "const"
    REDUCE = "reduce"
    RAND = "rand"
    CORE = "core"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, eq=False)
class Load:
    """A read of `buffer` through `view` (kernel-space for a value, logical for a core operand)."""

    buffer: Buffer
    view: View

    def __hash__(self) -> int:
        return hash((id(self.buffer), self.view))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Load) and self.buffer is other.buffer and self.view == other.view

    def as_text(self) -> str:
        return f"{self.buffer.name} {self.view.as_text()}"


@dataclass(frozen=True)
class Reduce:
    """A reduction over kernel dims `dims`: SUM (identity 0, combiner add) or MAX (identity
    -inf, or the dtype's least value, combiner maximum)."""

    op: Op
    dims: tuple[int, ...]

    @property
    def combiner(self) -> Op:
        return Op.ADD if self.op is Op.SUM else Op.MAXIMUM

    def identity(self, dtype: str):
        if self.op is Op.SUM:
            return False if dtype == "bool" else 0
        if dtype == "bool":
            return False
        if dtype.startswith("int"):
            return int(np.iinfo(dtype).min)
        return -math.inf


@dataclass(frozen=True)
class RandDraw:
    """A random node's draws: distribution, stream, the node's shape and its dims in the kernel."""

    dist: str
    stream: int
    shape: Shape
    dims: Dims


class Expr:
    """One scalar value of a kernel: `op` is an elementwise `Op` or a `KOp`; `shape` is its
    kernel-space shape. Built through an `ExprTable`, which interns them."""

    __slots__ = ("op", "dtype", "shape", "src", "arg")

    def __init__(self, op: Op | KOp, dtype: str, shape: Shape, src: tuple, arg) -> None:
        self.op, self.dtype, self.shape, self.src, self.arg = op, dtype, shape, src, arg

    def __repr__(self) -> str:
        return f"<Expr {_opname(self.op)}:{fmt_type(self.dtype, self.shape)}>"


class ExprTable:
    """Interns expressions (the same op over the same sources is one value) and keeps them in
    creation order, which is topological."""

    def __init__(self) -> None:
        self.exprs: list[Expr] = []
        self._memo: dict = {}

    def make(self, op: Op | KOp, dtype: str, shape: Shape, src: tuple = (), arg=None) -> Expr:
        key = (op, dtype, shape, src, type(arg), arg)
        e = self._memo.get(key)
        if e is None:
            e = self._memo[key] = Expr(op, dtype, tuple(shape), tuple(src), arg)
            self.exprs.append(e)
        return e


@dataclass(frozen=True, eq=False)
class Core:
    """A kernel's GEMM (MATMUL, batched) or convolution (CONV, arg (stride, padding), NHWC
    input, (KH, KW, Cin, Cout) weight; or one of its two gradients, CONV_INPUT_GRAD and
    CONV_WEIGHT_GRAD): operands are views of whole buffers (a transpose is in the strides); the
    result, of logical `shape`, lies over the kernel dims `dims`."""

    op: Op
    operands: tuple[Load, ...]
    arg: object
    dtype: str
    shape: Shape
    dims: Dims

    def flops(self) -> int:
        if self.op in OPAQUE:  # a Python function, or communication: no arithmetic counted
            return 0
        if self.op is Op.MATMUL:
            return 2 * math.prod(self.shape) * self.operands[0].view.shape[-1]
        if self.op is Op.CONV_INPUT_GRAD:  # as many multiply-adds as the conv it undoes
            g, w = (ld.view.shape for ld in self.operands)
            return 2 * math.prod(g) * math.prod(w[:3])
        if self.op is Op.CONV_WEIGHT_GRAD:
            return 2 * math.prod(self.operands[1].view.shape) * math.prod(self.shape[:3])
        kh, kw, cin, _ = self.operands[1].view.shape
        return 2 * math.prod(self.shape) * kh * kw * cin


@dataclass(frozen=True, eq=False)
class Store:
    """Write `value` to `buffer`: the buffer's logical dim j runs over kernel dims `dims[j]`.
    The value may have size 1 on some of those dims (a broadcast): it is written at every index
    along them."""

    buffer: Buffer
    value: Expr
    dims: Dims


def index_text(dims: Dims) -> str:
    """`[i0,(i1,i2),0]`: the kernel indices of each logical dim of a stored value."""

    def one(kd) -> str:
        if not kd:
            return "0"
        names = ",".join(f"i{k}" for k in kd)
        return names if len(kd) == 1 else f"({names})"

    return "[" + ",".join(one(kd) for kd in dims) + "]"


def _arg_text(e: Expr) -> str:
    if e.op is KOp.REDUCE:
        r = e.arg
        dims = ",".join(f"i{d}" for d in r.dims)
        return f"over=({dims}) identity={r.identity(e.dtype)} combiner={r.combiner.name.lower()}"
    if e.op is KOp.RAND:
        d = e.arg
        return f"dist={d.dist} stream={d.stream} shape={d.shape} at {index_text(d.dims)}"
    if e.op is Op.CAST:
        return f"dtype={e.arg}"
    if e.arg is None:
        return ""
    return f"c={scalar_text(e.arg)}"


def scalar_text(v) -> str:
    """A constant as the kernel text shows it: a numpy scalar (typed by `legalize`) as the
    shortest decimal that gives it back in its own dtype, `0.1` for float32(0.1)."""
    if isinstance(v, np.floating):
        return str(v)
    return repr(v.item() if isinstance(v, np.generic) else v)


@dataclass(eq=False)
class Kernel:
    """One loop nest: see the module docstring. `kind` is "gemm", "conv", "callback" (a
    Python function over whole buffers, `core.arg` a `needlec.ir.callback.Callback`),
    "allreduce" (a whole buffer reduced over every process, `core.arg` "sum" or "max"), "reduce",
    "elementwise", "copy" (only loads) or "fill" (only constants). `nodes` are the graph nodes it
    computes (for printing and reports; evaluation reads only the rest)."""

    name: str
    kind: str
    space: Shape
    inputs: tuple[Buffer, ...]
    exprs: tuple[Expr, ...]
    stores: tuple[Store, ...]
    core: Core | None = None
    nodes: tuple = ()

    @property
    def outputs(self) -> tuple[Buffer, ...]:
        return tuple(s.buffer for s in self.stores)

    def value_names(self) -> dict[Expr, str]:
        names, k = {}, 0
        for e in self.exprs:
            if e.op is KOp.CORE:
                names[e] = "core"
            else:
                names[e], k = f"v{k}", k + 1
        return names

    def as_text(self) -> str:
        """One readable block: header, the core, one line per value, one line per store."""
        names = self.value_names()
        reads = ", ".join(b.name for b in self.inputs)
        writes = ", ".join(b.name for b in self.outputs)
        space = ",".join(map(str, self.space))
        lines = [f"{self.name} = {self.kind} space=({space}) reads({reads}) writes({writes})"]
        for e in self.exprs:
            lhs = f"  {names[e]}:{fmt_type(e.dtype, e.shape)} = "
            if e.op is KOp.CORE:
                c = self.core
                ops = ", ".join(o.as_text() for o in c.operands)
                arg = f" {ARG_NAME[c.op]}={c.arg}" if c.op in CONVS | OPAQUE else ""
                at = index_text(c.dims)
                rhs = f"{c.op.name.lower()}({ops}){arg} at {at}"
            elif e.op is KOp.LOAD:
                rhs = f"load {e.arg.buffer.name} {e.arg.view.as_text(shape=False)}"
            elif e.op is KOp.CONST:
                rhs = f"const {scalar_text(e.arg)}"
            else:
                op = f"reduce_{e.arg.op.name.lower()}" if e.op is KOp.REDUCE else _opname(e.op)
                parts = [op, " ".join(names[s] for s in e.src), _arg_text(e)]
                rhs = " ".join(p for p in parts if p)
            lines.append(lhs + rhs)
        for s in self.stores:
            b = s.buffer
            lines.append(
                f"  store {b.name}:{fmt_type(b.dtype, b.shape)}{index_text(s.dims)} = {names[s.value]}"
            )
        return "\n".join(lines)

    __str__ = as_text


def _opname(op: Op | KOp) -> str:
    return op.name.lower()


@dataclass(frozen=True)
class KernelCost:
    """One kernel's arithmetic (flops) and memory traffic (bytes read from buffers, written)."""

    name: str
    kind: str
    flops: int
    bytes_read: int
    bytes_written: int

    @property
    def bytes(self) -> int:
        return self.bytes_read + self.bytes_written


@dataclass(frozen=True)
class CostAnalysis:
    """Per kernel and total flops and bytes moved (`KernelGraph.cost_analysis()`)."""

    kernels: tuple[KernelCost, ...]

    @property
    def flops(self) -> int:
        return sum(k.flops for k in self.kernels)

    @property
    def bytes(self) -> int:
        return sum(k.bytes for k in self.kernels)

    def as_text(self) -> str:
        head = f"{'kernel':<8}{'kind':<12}{'flops':>14}{'read B':>14}{'written B':>14}"
        rows = [head]
        for k in self.kernels:
            rows.append(
                f"{k.name:<8}{k.kind:<12}{k.flops:>14,}{k.bytes_read:>14,}{k.bytes_written:>14,}"
            )
        read = sum(k.bytes_read for k in self.kernels)
        written = sum(k.bytes_written for k in self.kernels)
        rows.append(
            f"{'total':<8}{len(self.kernels):<12}{self.flops:>14,}{read:>14,}{written:>14,}"
        )
        return "\n".join(rows)

    __str__ = as_text


def _elements_read(view: View) -> int:
    """Distinct elements a view reads (broadcast dims count once)."""
    n = 1
    for (lo, hi), s in zip(view.bounds(), view.strides, strict=True):
        n *= max(0, hi - lo) if s != 0 else (1 if hi > lo else 0)
    return n


def kernel_cost(k: Kernel) -> KernelCost:
    """Flops: 2*M*N*K for a GEMM (2*out*KH*KW*Cin for a conv), one per element per elementwise
    op, one per input element per reduction; bytes: each buffer read once (its elements the views
    touch, at most its size) plus every buffer written."""
    flops = k.core.flops() if k.core is not None else 0
    for e in k.exprs:
        if e.op is KOp.REDUCE:
            src = e.src[0].shape
            flops += math.prod(k.space[d] if d in e.arg.dims else n for d, n in enumerate(src))
        elif e.op is KOp.RAND or e.op in ELEMENTWISE:
            flops += math.prod(e.shape)
    loads = [e.arg for e in k.exprs if e.op is KOp.LOAD]
    loads += list(k.core.operands) if k.core is not None else []
    touched: dict[Buffer, int] = {}
    for ld in loads:
        n = min(_elements_read(ld.view), math.prod(ld.buffer.shape))
        touched[ld.buffer] = max(touched.get(ld.buffer, 0), n)
    read = sum(n * np.dtype(b.dtype).itemsize for b, n in touched.items())
    written = sum(b.nbytes for b in k.outputs)
    return KernelCost(k.name, k.kind, flops, read, written)


def inplace_pairs(k: Kernel) -> tuple[tuple[Buffer, Buffer], ...]:
    """(input, output) pairs of k where the output may overwrite the input: no reduction in
    the kernel, the input no operand of its core, and every load of it reads the element at
    the very index the output's store writes (same shape, dtype and view)."""
    if any(e.op is KOp.REDUCE for e in k.exprs):
        return ()
    core = {ld.buffer for ld in k.core.operands} if k.core is not None else set()
    loads: dict[Buffer, set[View]] = {}
    for e in k.exprs:
        if e.op is KOp.LOAD:
            loads.setdefault(e.arg.buffer, set()).add(e.arg.view)
    out = []
    loop = {d for d, n in enumerate(k.space) if n != 1}
    for st in k.stores:
        o = st.buffer
        covered = set()
        for d in st.dims:
            covered.update(d if isinstance(d, tuple) else (() if d is None else (d,)))
        if not loop <= covered:  # an inner loop would read the overwritten element again
            continue
        where = View.contiguous(o.shape).embed(st.dims, k.space)[0]
        for i, views in loads.items():
            if i not in core and (i.shape, i.dtype) == (o.shape, o.dtype) and views == {where}:
                out.append((i, o))
    return tuple(out)


@dataclass(eq=False)
class KernelGraph:
    """A fused program: `inputs` (one buffer per graph input, kind "input"), `constants`
    (buffers of constant arrays, kind "input", owned by the compiled program), `kernels` in
    execution order, `outputs` (one buffer per graph output: a kernel's output or an input).
    `graph` is the graph that was fused (after `fuse` expanded composite ops), `names` its node
    names, `report` the `FusionReport`."""

    inputs: tuple[Buffer, ...]
    kernels: tuple[Kernel, ...]
    outputs: tuple[Buffer, ...]
    constants: dict = field(default_factory=dict)
    graph: object = None
    names: dict = field(default_factory=dict)
    report: object = None

    def as_text(self) -> str:
        ins = ", ".join(f"{b.name}:{fmt_type(b.dtype, b.shape)}" for b in self.inputs)
        lines = [f"kernels({ins}):"]
        for b, a in self.constants.items():
            lines.append(f"  const {b.name}:{fmt_type(b.dtype, b.shape)} = {_const_text(a)}")
        for k in self.kernels:
            lines.extend("  " + line for line in k.as_text().split("\n"))
        lines.append("  return (" + ", ".join(b.name for b in self.outputs) + ")")
        return "\n".join(lines)

    __str__ = as_text

    def __repr__(self) -> str:
        return f"<KernelGraph {len(self.inputs)} inputs, {len(self.kernels)} kernels, {len(self.outputs)} outputs>"

    def schedule(self) -> list[Step]:
        """One `Step` per kernel, reading and writing `Buffer`s: what memory planning reads.
        `meta`: kind, space, `inplace` (the (input, output) pairs whose output may be written
        over the input: the kernel reads that input only at the index it writes the output)
        and `elementwise` (every same-sized pair is such a pair, as `plan_memory` asks)."""
        steps = []
        for k in self.kernels:
            pairs = inplace_pairs(k)
            same = [(i, o) for i in k.inputs for o in k.outputs if i.nbytes == o.nbytes]
            meta = {"kind": k.kind, "space": k.space, "inplace": pairs}
            meta["elementwise"] = all(p in pairs for p in same)
            steps.append(Step(k.name, k.inputs, k.outputs, meta))
        return steps

    def cost_analysis(self) -> CostAnalysis:
        """Flops and bytes moved per kernel and in total (see `kernel_cost`)."""
        return CostAnalysis(tuple(kernel_cost(k) for k in self.kernels))

    def to_dot(self, name: str = "kernels") -> str:
        """Graphviz DOT: each kernel a `subgraph cluster_<kernel>` holding the graph nodes it
        computes; inputs, views and inlined constants outside any cluster."""
        from .printer import format_arg, format_type

        names, nodes = self.names, (self.graph.nodes if self.graph is not None else [])
        outs = {b.name for b in self.outputs}

        def nid(n) -> str:
            return "n" + names[n].lstrip("%").replace(".", "_")

        def label(n) -> str:
            arg = format_arg(n)
            text = f"{names[n]} {n.op.name.lower()}{' ' + arg if arg else ''}\\n{format_type(n)}"
            return text.replace('"', '\\"')

        home: dict = {}  # a node written to memory -> the dot id its readers point at
        for k in self.kernels:
            written = {b.name for b in k.outputs}
            home.update({n: f"{k.name}_{nid(n)}" for n in k.nodes if names[n] in written})
        lines = [f"digraph {name} {{", "  rankdir=TB;", "  node [shape=box, fontname=monospace];"]
        edges, inside = [], set()
        for k in self.kernels:
            lines.append(f"  subgraph cluster_{k.name} {{")
            lines.append(f'    label="{k.name} {k.kind}"; style=rounded; color=gray40;')
            local = {n: f"{k.name}_{nid(n)}" for n in k.nodes}
            for n in k.nodes:
                style = ", style=filled, fillcolor=lightgoldenrod" if names[n] in outs else ""
                lines.append(f'    {local[n]} [label="{label(n)}"{style}];')
                edges.extend(
                    (local[s] if s in local else home.get(s, nid(s)), local[n]) for s in n.src
                )
            lines.append("  }")
            inside.update(k.nodes)
        for n in nodes:
            if n in inside:
                continue
            style = (
                ", style=filled, fillcolor=lightblue" if n.op.name == "INPUT" else ", style=dashed"
            )
            lines.append(f'  {nid(n)} [label="{label(n)}"{style}];')
            edges.extend((home.get(s, nid(s)), nid(n)) for s in n.src)
        lines.extend(f"  {a} -> {b};" for a, b in dict.fromkeys(edges))
        lines.append("}")
        return "\n".join(lines) + "\n"


def _const_text(a) -> str:
    a = np.asarray(a)
    return repr(a.tolist()) if a.size <= 8 else f"<array {a.dtype}{list(a.shape)}>"
