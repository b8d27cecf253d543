"""The printed form of the IR, one line a node: `%3:f32[4,8] = mul %1 %2`."""

from __future__ import annotations

from .node import Node
from .ops import ARG_NAME, Op, fmt_type


def format_type(n: Node) -> str:
    return fmt_type(n.dtype, n.shape)


def format_arg(n: Node) -> str:
    if n.arg is None:
        return ""
    if n.op is Op.INPUT:
        return f"{n.arg[0]}[{n.arg[1]}]"
    if n.op is Op.CONST:
        return repr(n.arg)
    return f"{ARG_NAME.get(n.op, 'arg')}={_short(n.arg)}"


def _short(arg) -> str:
    if isinstance(arg, tuple):
        inner = ",".join(_short(a) for a in arg)
        return f"({inner},)" if len(arg) == 1 else f"({inner})"
    return str(arg)


def format_node(n: Node, names: dict) -> str:
    """The right-hand side of a node's line, with sources named by `names` (node -> number)."""
    srcs = " ".join(f"%{names[s]}" if s in names else "%?" for s in n.src)
    parts = [n.op.name.lower(), srcs, format_arg(n)]
    return f"{format_type(n)} = " + " ".join(p for p in parts if p)


def format_graph(graph) -> str:
    names = {n: i for i, n in enumerate(graph.nodes)}
    ins = ", ".join(f"%{names[n]}:{format_type(n)} = {format_arg(n)}" for n in graph.inputs)
    lines = [f"graph({ins}):"]
    for n in graph.nodes[len(graph.inputs) :]:
        lines.append(f"  %{names[n]}:{format_node(n, names)}")
    lines.append("  return (" + ", ".join(f"%{names[n]}" for n in graph.outputs) + ")")
    return "\n".join(lines)
