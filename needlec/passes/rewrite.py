"""The rewrite engine: patterns over IR nodes, and one worklist driver that applies rule tables.

A rule is `(pattern, build)`: the pattern matches a node and binds names; `build(**bindings)`
returns the replacement node, or None to decline. Every pass that rewrites nodes locally is a rule
table run by `rewrite`, which works bottom-up to a fixed point, memoized (nodes are interned, so
the same structure is rewritten once) and iterative (deep graphs do not recurse).

>>> from needlec.ir import Node, Op, Graph
>>> x = Node.leaf(Op.INPUT, "float32", (3,), ("arg", 0))
>>> rules = [(P(Op.MUL_SCALAR, P.var("x"), arg=1.0), lambda x: x)]  # x*1 -> x
>>> rewrite(Graph([x], [(x * 1.0).exp()]), rules).outputs[0] is x.exp()
True
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..ir import Graph, Node, Op
from ..ir.ops import fmt_type

_ANY = object()


@dataclass(frozen=True)
class P:
    """A pattern: `P(op, *srcs, arg=..., name=..., where=...)` matches a node of op `op` (or of
    any op in a set) whose sources match `srcs`; `P.var(name)` matches any node. `arg` is compared
    for equality unless it is a callable predicate. `where(node)` may refuse a match."""

    op: Any = None  # an Op, a frozenset of Ops, or None (any node)
    srcs: tuple | None = None  # None: do not look at the sources
    arg: Any = _ANY
    name: str | None = None
    where: Callable[[Node], bool] | None = None

    def __init__(self, op=None, *srcs, arg=_ANY, name=None, where=None) -> None:
        object.__setattr__(self, "op", op)
        object.__setattr__(self, "srcs", tuple(srcs) if srcs else None)
        object.__setattr__(self, "arg", arg)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "where", where)

    @staticmethod
    def var(name: str, where: Callable[[Node], bool] | None = None) -> P:
        """Any node, bound to `name`."""
        return P(None, name=name, where=where)

    def match(self, node: Node) -> dict | None:
        """Bindings if `node` matches, else None (iterative over the pattern's depth)."""
        out: dict = {}
        todo = [(self, node)]
        while todo:
            pat, n = todo.pop()
            if pat.op is not None and not (
                n.op is pat.op if isinstance(pat.op, Op) else n.op in pat.op
            ):
                return None
            if pat.arg is not _ANY and not (
                pat.arg(n.arg) if callable(pat.arg) else _same_arg(n.arg, pat.arg)
            ):
                return None
            if pat.where is not None and not pat.where(n):
                return None
            if pat.name is not None:
                if pat.name in out and out[pat.name] is not n:
                    return None  # one name, one node
                out[pat.name] = n
            if pat.srcs is not None:
                if len(pat.srcs) != len(n.src):
                    return None
                todo.extend(zip(pat.srcs, n.src, strict=True))
        return out


def _same_arg(a, b) -> bool:
    return a == b and isinstance(a, bool) == isinstance(b, bool)


Rule = tuple[P, Callable[..., Node | None]]


class RewriteError(RuntimeError):
    """A rule built a node of another type than the node it replaces (a bug in the rule)."""


def apply_rules(node: Node, rules: Sequence[Rule]) -> Node | None:
    """The first rule's replacement for `node`, or None when no rule applies."""
    for k, (pattern, build) in enumerate(rules):
        binding = pattern.match(node)
        if binding is None:
            continue
        out = build(**binding)
        if out is None or out is node:
            continue
        if out.shape != node.shape or out.dtype != node.dtype:
            raise RewriteError(
                f"rule {k} ({pattern}) rewrote {fmt_type(node.dtype, node.shape)} "
                f"{node.op.name.lower()} into {fmt_type(out.dtype, out.shape)}"
            )
        return out
    return None


def rewrite(graph: Graph, rules: Sequence[Rule], max_steps: int = 1_000_000) -> Graph:
    """Apply `rules` everywhere in `graph` until none applies (sources before their users).

    Each node's sources are rewritten first; then the first matching rule replaces the node and
    its replacement is rewritten in turn, so the result is a fixed point. Inputs are kept (the
    call signature does not change); unused nodes disappear (a graph holds what its outputs need).
    """
    memo: dict[Node, Node] = {n: n for n in graph.inputs}
    steps = 0
    for root in graph.outputs:
        stack = [root]
        while stack:
            n = stack[-1]
            if n in memo:
                stack.pop()
                continue
            pending = [s for s in n.src if s not in memo]
            if pending:
                stack.extend(pending)
                continue
            steps += 1
            if steps > max_steps:
                raise RewriteError(
                    f"rewrite: no fixed point after {max_steps} steps (a rule cycle)"
                )
            src = tuple(memo[s] for s in n.src)
            m = n if src == n.src else Node(n.op, n.dtype, n.shape, src, n.arg)
            if m is not n and m in memo:
                memo[n] = memo[m]
                stack.pop()
                continue
            out = apply_rules(m, rules)
            if out is None:
                memo[n] = memo[m] = m
                stack.pop()
            elif out in memo:
                memo[n] = memo[m] = memo[out]
                stack.pop()
            else:
                stack.append(out)  # rewrite the replacement, then come back to n
    return Graph(graph.inputs, [memo[o] for o in graph.outputs])


def compose(*passes: Callable[[Graph], Graph]) -> Callable[[Graph], Graph]:
    """Run passes one after the other (a helper for building pipelines in tests)."""

    def run(graph: Graph) -> Graph:
        for p in passes:
            graph = p(graph)
        return graph

    return run


def count_ops(graph: Graph, ops: Iterable[Op] | None = None) -> int:
    """How many non-input nodes of `graph` have an op in `ops` (all ops if None)."""
    wanted = None if ops is None else set(ops)
    inputs = set(graph.inputs)
    return sum(1 for n in graph.nodes if n not in inputs and (wanted is None or n.op in wanted))
