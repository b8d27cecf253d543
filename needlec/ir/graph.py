"""A graph: input nodes, output nodes, and everything between, in topological order."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from .node import Node
from .ops import LEAF, Op, ShapeError, infer


def toposort(outputs: Iterable, parents: Callable = lambda n: n.src) -> list:
    """Post-order depth-first over `parents` (a node's `src` by default), iterative, so deep
    graphs do not hit the recursion limit. Works for any values: nodes, tensors."""
    order: list = []
    seen: set[int] = set()
    for root in outputs:
        if id(root) in seen:
            continue
        stack = [(root, iter(parents(root)))]
        seen.add(id(root))
        while stack:
            node, it = stack[-1]
            for s in it:
                if id(s) not in seen:
                    seen.add(id(s))
                    stack.append((s, iter(parents(s))))
                    break
            else:
                stack.pop()
                order.append(node)
    return order


class Graph:
    """A function as a graph: `inputs` (INPUT nodes, in call order) and `outputs`.

    >>> x = Node.leaf(Op.INPUT, "float32", (3,), ("arg", 0))
    >>> print(Graph([x], [x.exp() * 2.0]))
    graph(%0:f32[3] = arg[0]):
      %1:f32[3] = exp %0
      %2:f32[3] = mul_scalar %1 c=2.0
      return (%2)
    """

    def __init__(self, inputs: Iterable[Node], outputs: Iterable[Node]) -> None:
        self.inputs: tuple[Node, ...] = tuple(inputs)
        self.outputs: tuple[Node, ...] = tuple(outputs)
        self._nodes: list[Node] | None = None

    @property
    def nodes(self) -> list[Node]:
        """Every node the outputs need, inputs first, in topological order."""
        if self._nodes is None:
            body = toposort(self.outputs)
            ins = set(map(id, self.inputs))
            self._nodes = list(self.inputs) + [n for n in body if id(n) not in ins]
        return self._nodes

    def __reduce__(self):
        # flat records, not nested nodes: pickling a deep graph must not recurse per node
        index = {n: i for i, n in enumerate(self.nodes)}
        records = [
            (n.op, n.dtype, n.shape, tuple(index[x] for x in n.src), n.arg) for n in self.nodes
        ]
        return (
            _from_records,
            (records, [index[n] for n in self.inputs], [index[n] for n in self.outputs]),
        )

    def users(self) -> dict[Node, list[Node]]:
        """For each node, the nodes that read it."""
        out: dict[Node, list[Node]] = {n: [] for n in self.nodes}
        for n in self.nodes:
            for s in n.src:
                out[s].append(n)
        return out

    def __len__(self) -> int:
        return len(self.nodes)

    def as_text(self) -> str:
        from .printer import format_graph

        return format_graph(self)

    __str__ = as_text

    def __repr__(self) -> str:
        return f"<Graph {len(self.inputs)} inputs, {len(self.nodes)} nodes, {len(self.outputs)} outputs>"

    def verify(self) -> Graph:
        """Check the graph's invariants; raise ValueError naming the first bad node."""
        from .printer import format_node

        names = {n: i for i, n in enumerate(self.nodes)}
        input_ids = set(map(id, self.inputs))
        if len(input_ids) != len(self.inputs):
            raise ValueError("verify: an input appears twice")
        for n in self.nodes:
            where = f"verify: %{names[n]}:{format_node(n, names)}"
            if n.op is Op.INPUT and id(n) not in input_ids:
                raise ValueError(f"{where}: an INPUT node that is not among the graph's inputs")
            if id(n) in input_ids and n.op is not Op.INPUT:
                raise ValueError(f"{where}: a graph input must be an INPUT node")
            if n.op in LEAF:
                if n.src:
                    raise ValueError(f"{where}: a leaf has sources")
                continue
            if n.op is Op.RAND:
                if len(n.src) != 1 or n.src[0].shape != ():
                    raise ValueError(f"{where}: a random node takes one scalar seed")
                continue
            try:
                shape, dtype = infer(
                    n.op, [s.shape for s in n.src], [s.dtype for s in n.src], n.arg
                )
            except ShapeError as e:
                raise ValueError(f"{where}: {e}") from None
            if (shape, dtype) != (n.shape, n.dtype):
                raise ValueError(
                    f"{where}: recorded type {n.dtype}{n.shape}, rules give {dtype}{shape}"
                )
        return self

    def to_networkx(self):
        """A networkx.DiGraph: one vertex per node (attributes op, dtype, shape, arg), edges src -> use."""
        import networkx as nx

        from .printer import format_arg

        g = nx.DiGraph()
        names = {n: i for i, n in enumerate(self.nodes)}
        for n, i in names.items():
            g.add_node(
                i,
                op=n.op.name.lower(),
                dtype=n.dtype,
                shape=n.shape,
                arg=format_arg(n),
                output=n in self.outputs,
                node=n,
            )
            for k, s in enumerate(n.src):
                if g.has_edge(names[s], i):
                    g.edges[names[s], i]["slots"].append(k)
                else:
                    g.add_edge(names[s], i, slots=[k])
        return g

    def to_dot(self, name: str = "needlec") -> str:
        """Graphviz DOT text: one box per node, inputs and outputs highlighted."""
        from .printer import format_arg, format_type

        names = {n: i for i, n in enumerate(self.nodes)}
        outs = set(map(id, self.outputs))
        lines = [f"digraph {name} {{", "  rankdir=TB;", "  node [shape=box, fontname=monospace];"]
        for n, i in names.items():
            arg = format_arg(n)
            label = f"%{i} {n.op.name.lower()}{' ' + arg if arg else ''}\\n{format_type(n)}"
            style = ""
            if n.op is Op.INPUT:
                style = ", style=filled, fillcolor=lightblue"
            elif id(n) in outs:
                style = ", style=filled, fillcolor=lightgoldenrod"
            label = label.replace('"', '\\"')
            lines.append(f'  n{i} [label="{label}"{style}];')
            lines.extend(f"  n{names[s]} -> n{i};" for s in n.src)
        lines.append("}")
        return "\n".join(lines) + "\n"

    def render(self, path: str) -> str:
        """Draw `to_dot()` into `path` (the format from its suffix: .svg, .png, .pdf) with
        Graphviz's `dot`, which must be installed. Returns `path`."""
        import shutil
        import subprocess

        exe = shutil.which("dot")
        if exe is None:
            raise RuntimeError(
                "render: Graphviz's `dot` is not installed; write `to_dot()` to a file instead"
            )
        fmt = os.path.splitext(path)[1].lstrip(".") or "svg"
        subprocess.run([exe, f"-T{fmt}", "-o", path], input=self.to_dot(), text=True, check=True)
        return path


class FusedGraph(Graph):
    """An optimized graph that knows the kernels it is fused into (`kernels()` gives them,
    fusing on first use): `to_dot()` draws each kernel as a cluster of the nodes it computes."""

    def __init__(self, graph: Graph, kernels: Callable) -> None:
        super().__init__(graph.inputs, graph.outputs)
        self.kernels = kernels

    def to_dot(self, name: str = "needlec") -> str:
        return self.kernels().to_dot(name)


def _from_records(records, inputs, outputs) -> Graph:
    nodes: list[Node] = []
    for op, dtype, shape, src, arg in records:
        nodes.append(Node(op, dtype, shape, tuple(nodes[i] for i in src), arg))
    return Graph([nodes[i] for i in inputs], [nodes[i] for i in outputs])
