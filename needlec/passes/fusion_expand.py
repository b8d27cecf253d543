"""Composite ops rewritten into the ops kernels are made of, before fusion.

LOGSUMEXP and LOGSOFTMAX become max, subtract, exp, sum, log (so a softmax-style pattern fuses
like any other reduce-elementwise-reduce chain); DILATE becomes reshape, pad, reshape (the last
reshape has no view, so fusion copies the padded value: one copy kernel); STACK becomes one pad
per operand, selected by a padded mask (`where`), so each operand is a masked read.

Every node keeps the name it had in the original graph (`%12`); the nodes an expansion adds are
named after the node they replace (`%12.1`, `%12.2`, ...).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from ..ir import Graph, Node, Op, toposort
from ..ir.ops import float_of


def _logsumexp(n: Node, x: Node) -> Node:
    axes = n.arg
    x = x.cast(float_of(x.dtype))
    keep = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
    if any(x.shape[a] == 0 for a in axes):  # log(sum of no terms), as the reference gives
        return x._const(-math.inf, n.shape, x.dtype)
    m = x.max(axes)
    m = (m * 0.0).eq(0.0).where(m, 0.0)  # an infinite max shifts by 0, as the reference does
    shifted = x - m.reshape(keep).broadcast_to(x.shape)
    return shifted.exp().sum(axes).log() + m


def _logsoftmax(n: Node, x: Node) -> Node:
    x = x.cast(float_of(x.dtype))
    keep = (x.shape[0], 1)
    z = x - x.max((1,)).reshape(keep).broadcast_to(x.shape)
    return z - z.exp().sum((1,)).log().reshape(keep).broadcast_to(x.shape)


def _dilate(n: Node, x: Node) -> Node:
    axes, d = n.arg
    split, widths = [], []
    for i, size in enumerate(x.shape):
        split.append(size)
        widths.append((0, 0))
        if i in axes:
            split.append(1)
            widths.append((0, d))
    return x.reshape(split).pad(widths).reshape(n.shape)


def _stack(n: Node, *xs: Node) -> Node:
    axis, k = n.arg, len(xs)
    parts = []
    for i, x in enumerate(xs):
        y = x.reshape(x.shape[:axis] + (1,) + x.shape[axis:])
        widths = [(0, 0)] * y.ndim
        widths[axis] = (i, k - 1 - i)
        parts.append(y.pad(widths))
    # selected, not added: x + 0.0 would turn an operand's -0.0 into 0.0
    out = parts[-1]
    for i in reversed(range(k - 1)):
        y = parts[i]
        widths = [(0, 0)] * y.ndim
        widths[axis] = (i, k - 1 - i)
        mine = y._const(True, xs[i].shape[:axis] + (1,) + xs[i].shape[axis:], "bool")
        out = mine.pad(widths).where(y, out)
    return out


# op -> f(node, *new sources) -> the node that replaces it
EXPAND: dict[Op, Callable[..., Node]] = {
    Op.LOGSUMEXP: _logsumexp,
    Op.LOGSOFTMAX: _logsoftmax,
    Op.DILATE: _dilate,
    Op.STACK: _stack,
}


def expand_composites(graph: Graph) -> tuple[Graph, dict[Node, str], dict[Node, Node]]:
    """The graph with every op of `EXPAND` rewritten; returns (graph, names, new_of) where
    `names` names every node of the new graph and `new_of` maps each old node to its value.

    >>> x = Node.leaf(Op.INPUT, "float32", (2, 3), ("arg", 0))
    >>> g, names, _ = expand_composites(Graph([x], [x.logsumexp((1,))]))
    >>> [(names[n], n.op.name.lower()) for n in g.nodes][:3], names[g.outputs[0]]
    ([('%0', 'input'), ('%1.1', 'max'), ('%1.2', 'mul_scalar')], '%1')
    """
    names: dict[Node, str] = {}
    new_of: dict[Node, Node] = {}
    for i, n in enumerate(graph.nodes):
        src = tuple(new_of[s] for s in n.src)
        if n.op in EXPAND:
            m = EXPAND[n.op](n, *src)
            if (m.shape, m.dtype) != (n.shape, n.dtype):  # keep the node's type exactly
                m = m.cast(n.dtype)
        elif src == n.src:
            m = n
        else:
            m = Node(n.op, n.dtype, n.shape, src, n.arg)
        new_of[n] = m
        names.setdefault(m, f"%{i}")
        if n.op in EXPAND:
            added = toposort([m], lambda x: [s for s in x.src if s not in names])
            k = 0
            for a in added:
                if a not in names:
                    k += 1
                    names[a] = f"%{i}.{k}"
    out = Graph([new_of[x] for x in graph.inputs], [new_of[x] for x in graph.outputs])
    for n in out.nodes:  # constants an expansion made that the old graph had under no name
        names.setdefault(n, f"%c{len(names)}")
    return out, names, new_of
