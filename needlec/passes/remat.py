"""Rematerialization: which forward values a training step's backward saves, which it recomputes.

A traced training step is one flat graph. Its forward is everything the `forward_outputs` (the
loss) depend on; its backward is every other computing node (gradients, optimizer update, running
statistics). A forward value the backward reads must either stay in memory from the forward to the
backward (be *saved*) or be computed again in the backward from saved values and inputs (be
*recomputed*). `rematerialize` chooses the set of saved values with the fewest bytes, as a minimum
cut in the flow network of min-cut partitioners (functorch's `min_cut_rematerialization_partition`):

- each forward node v is split into `v.in -> v.out`, capacity = bytes of v (the cost of saving v);
  graph inputs and constants get capacity 0 (they are always available: saving them is free);
- `u.out -> v.in`, infinite, for each data edge between forward nodes, so a value can only be
  recomputed if each of its sources is saved or recomputed too;
- `source -> v.in`, infinite, for leaves and for values that must not be recomputed (`recomputable`
  says which, `max_depth` bounds recompute chains), so the cut can never put them on the recompute
  side;
- `v.out -> sink`, infinite, for each forward value with a backward user.

A cut edge `v.in -> v.out` saves v. Of the minimum cuts, networkx returns the one nearest the sink
(the smallest sink side), so on a tie the later value is saved and less is recomputed.

The graph is unchanged: the plan is read by fusion (`fuse(graph, recompute=plan.recompute)`), which
may duplicate the recomputed values into backward kernels.

>>> from needlec.ir import Graph, Node, Op
>>> x = Node.leaf(Op.INPUT, "float32", (4, 8), ("arg", 0))
>>> w = Node.leaf(Op.INPUT, "float32", (8, 8), ("arg", 1))
>>> h = x @ w
>>> t = h.relu().tanh()
>>> loss = t.sum()
>>> g_h = (1.0 - t * t) * (h > 0).cast("float32")  # the backward reads t and h
>>> plan = rematerialize(Graph([x, w], [loss, x.transpose() @ g_h]), [loss])
>>> plan.saved == {h}, plan.recompute == {h.relu(), t}, plan.saved_bytes, plan.naive_bytes
(True, True, 128, 256)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..ir import ELEMENTWISE, LEAF, MOVEMENT, REDUCE, Graph, Node, toposort
from ..ir.printer import format_node
from ..ir.schedule import nbytes

# the most non-movement ops a recompute may replay on one chain from non-recomputable values and
# inputs (movement ops are views and count 0); a value deeper than that is saved instead
MAX_RECOMPUTE_DEPTH = 8
# a reduction is recomputed only if its input has at most this many times its output's elements
# (summing a few channels is cheap to replay; a full reduction over a batch is not)
REDUCE_RATIO = 4


def recomputable(node: Node, reduce_ratio: int = REDUCE_RATIO) -> bool:
    """May the backward compute `node` again? Elementwise and movement ops, and reductions over at
    most `reduce_ratio` elements per output, may be; MATMUL, CONV, LOGSOFTMAX (expensive), RAND
    (the policy: random draws are never replayed) and leaves (always available) may not.

    >>> from needlec.ir import Node, Op
    >>> x = Node.leaf(Op.INPUT, "float32", (8, 2), ("arg", 0))
    >>> recomputable(x.exp()), recomputable(x.sum((1,))), recomputable(x.sum((0,))), recomputable(x)
    (True, True, False, False)
    """
    if node.op in ELEMENTWISE or node.op in MOVEMENT:
        return True
    if node.op in REDUCE:
        return math.prod(node.src[0].shape) <= reduce_ratio * max(math.prod(node.shape), 1)
    return False


def _size(n: Node) -> int:
    return nbytes(n.shape, n.dtype)


@dataclass(frozen=True, eq=False)
class RematPlan:
    """What the backward of a training step keeps from the forward and what it computes again.

    `saved`: forward values kept in memory from the forward to the backward (never leaves).
    `recompute`: forward values the backward computes again, from saved values, inputs and each
    other (what fusion may duplicate into backward kernels).
    `needed`: the forward values (not leaves) that backward nodes read.
    `saved_bytes`: bytes of `saved`; `naive_bytes`: bytes of `needed` (saving every one of them).
    """

    saved: frozenset[Node]
    recompute: frozenset[Node]
    needed: frozenset[Node]
    saved_bytes: int
    naive_bytes: int
    graph: Graph = field(repr=False)

    def as_text(self) -> str:
        """A report: each saved value with its bytes, each recomputed value, the totals."""
        names = {n: i for i, n in enumerate(self.graph.nodes)}
        less = 1 - self.saved_bytes / self.naive_bytes if self.naive_bytes else 0.0
        lines = [
            f"remat: save {len(self.saved)} values, {_fmt_bytes(self.saved_bytes)}"
            f" (naive: {len(self.needed)} values, {_fmt_bytes(self.naive_bytes)};"
            f" {less:.0%} less); recompute {len(self.recompute)} values"
        ]
        for n in sorted(self.saved, key=names.__getitem__):
            line = f"  save      %{names[n]}:{format_node(n, names)}"
            lines.append(f"{line:<72} {_size(n):>10} B")
        for n in sorted(self.recompute, key=names.__getitem__):
            lines.append(f"  recompute %{names[n]}:{format_node(n, names)}")
        return "\n".join(lines)

    __str__ = as_text


def _fmt_bytes(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    return f"{n / 1024:.1f} KiB" if n < 1024**2 else f"{n / 1024**2:.1f} MiB"


def split_forward(
    graph: Graph, forward_outputs: Sequence[Node]
) -> tuple[list[Node], frozenset[Node]]:
    """(forward nodes in topological order, the forward values the backward reads).

    Forward nodes are the ancestors of `forward_outputs`, inclusive; the backward is every other
    node of the graph that is not an input. Leaves (inputs, constants) are never `needed`.
    """
    forward = toposort(forward_outputs)
    is_forward = set(forward)
    needed = set()
    for n in graph.nodes:
        if n in is_forward or n.op in LEAF:
            continue
        needed.update(s for s in n.src if s in is_forward and s.op not in LEAF)
    return forward, frozenset(needed)


def banned_nodes(
    forward: Sequence[Node], max_depth: int | None, reduce_ratio: int = REDUCE_RATIO
) -> set[Node]:
    """Forward nodes the backward must not recompute: those that are not `recomputable`, and
    those at recompute depth > `max_depth` (None: no bound). A node's depth is its own cost (0 for
    movement, 1 otherwise) plus its deepest source's, counted from leaves and banned nodes (depth
    0); a node banned for depth is a new start, so every recompute chain the plan can contain
    replays at most `max_depth` non-movement ops. `forward` is in topological order."""
    banned: set[Node] = set()
    depth: dict[Node, int] = {}
    for n in forward:
        if n.op in LEAF:
            depth[n] = 0
            continue
        if not recomputable(n, reduce_ratio):
            banned.add(n)
            depth[n] = 0
            continue
        d = (n.op not in MOVEMENT) + max((depth[s] for s in n.src), default=0)
        if max_depth is not None and d > max_depth:
            banned.add(n)
            d = 0
        depth[n] = d
    return banned


def rematerialize(
    graph: Graph,
    forward_outputs: Sequence[Node],
    *,
    max_depth: int | None = MAX_RECOMPUTE_DEPTH,
    reduce_ratio: int = REDUCE_RATIO,
) -> RematPlan:
    """The remat plan of a training step: the fewest saved bytes by a minimum cut (module doc).

    `forward_outputs` are the values the forward ends in (the loss, usually `graph.outputs[0]`).
    `max_depth` bounds recompute chains (see `banned_nodes`), `reduce_ratio` which reductions may
    be recomputed (see `recomputable`). A pure function of the graph: the graph is unchanged.
    """
    forward, needed = split_forward(graph, forward_outputs)
    if not needed:
        return RematPlan(frozenset(), frozenset(), needed, 0, 0, graph)
    banned = banned_nodes(forward, max_depth, reduce_ratio)
    index = {n: i for i, n in enumerate(forward)}
    import networkx as nx  # here, not at import time: it costs a fifth of a second

    flow = nx.DiGraph()
    for i, n in enumerate(forward):  # vertices: ("in", i), ("out", i), "source", "sink"
        free = n.op in LEAF
        flow.add_edge(("in", i), ("out", i), capacity=0 if free else _size(n))
        if free or n in banned:
            flow.add_edge("source", ("in", i))  # no capacity attribute: infinite
        for s in n.src:
            flow.add_edge(("out", index[s]), ("in", i))
        if n in needed:
            flow.add_edge(("out", i), "sink")
    _, (_, sink_side) = nx.minimum_cut(flow, "source", "sink")

    # walk back from the needed values: a value cut at in->out is saved; one whose input half is
    # on the sink side is recomputed, and so are its sources, until saved values and leaves
    saved: set[Node] = set()
    recompute: set[Node] = set()
    todo = list(needed)
    while todo:
        n = todo.pop()
        if n.op in LEAF or n in saved or n in recompute:
            continue
        if ("in", index[n]) not in sink_side:
            saved.add(n)
            continue
        if n in banned:
            raise AssertionError(f"rematerialize: the cut recomputes {n!r}, which it must not")
        recompute.add(n)
        todo.extend(n.src)
    return RematPlan(
        saved=frozenset(saved),
        recompute=frozenset(recompute),
        needed=needed,
        saved_bytes=sum(map(_size, saved)),
        naive_bytes=sum(map(_size, needed)),
        graph=graph,
    )


__all__ = [
    "MAX_RECOMPUTE_DEPTH",
    "REDUCE_RATIO",
    "RematPlan",
    "banned_nodes",
    "recomputable",
    "rematerialize",
    "split_forward",
]
