"""Layout: move transposes to where they cancel, so data stays in the layout its kernels want.

A convolution computes in NHWC (`Op.CONV`); needle's `nn.Conv` keeps NCHW at its interface, so a
traced network holds `permute` pairs around every activation between two convolutions. Pushing an
outer permute through an elementwise op whose operands are themselves permutes (or fills) lets
`permute(permute(x))` cancel, and the activation runs in NHWC with no copy. The remaining
permutes are index maps of the kernels that read them (fusion folds them into strides), and a
matmul of a transposed operand becomes a GEMM transpose flag the same way.
"""

from __future__ import annotations

from ..ir import Graph, Node, Op
from ..ir.ops import ELEMENTWISE, ConstArray
from .rewrite import P, Rule, rewrite
from .simplify import RULES as SIMPLIFY_RULES

_DEPTH = 4  # how many elementwise ops a permute may be pushed through at once


def _movable(src: Node, depth: int = _DEPTH) -> bool:
    """A permute, a fill, or an elementwise op of such (a few levels deep): permuting it costs
    nothing once the pairs cancel."""
    if src.op is Op.PERMUTE or (src.op is Op.CONST and not isinstance(src.arg, ConstArray)):
        return True
    return depth > 0 and src.op in ELEMENTWISE and all(_movable(s, depth - 1) for s in src.src)


def _cancels(src: Node, depth: int = _DEPTH) -> bool:
    """Whether pushing a permute into `src` meets at least one permute (else it only moves)."""
    if src.op is Op.PERMUTE:
        return True
    return depth > 0 and src.op in ELEMENTWISE and any(_cancels(s, depth - 1) for s in src.src)


def _permuted(src: Node, perm: tuple) -> Node:
    shape = tuple(src.shape[i] for i in perm)
    if src.op is Op.CONST:
        return Node.const(src.arg, shape, src.dtype)
    if src.op in ELEMENTWISE:
        srcs = tuple(_permuted(s, perm) for s in src.src)
        return Node(src.op, src.dtype, shape, srcs, src.arg)
    return src.permute(perm)


def _push(e: Node, n: Node) -> Node:
    """permute(E(a, b, ...), q) -> E(permute(a, q), permute(b, q), ...)."""
    srcs = tuple(_permuted(s, n.arg) for s in e.src)
    return Node(e.op, n.dtype, n.shape, srcs, e.arg)


RULES: list[Rule] = [
    (
        P(
            Op.PERMUTE,
            P(
                ELEMENTWISE,
                name="e",
                where=lambda e: _movable(e) and _cancels(e),
            ),
            name="n",
        ),
        _push,
    ),  # permute(E(permute(x), ...)) -> E(permute(permute(x)), ...): the pairs then cancel
    *SIMPLIFY_RULES,
]


def assign_layouts(graph: Graph) -> Graph:
    """Cancel layout conversions between kernels (see the module docstring)."""
    return rewrite(graph, RULES)
