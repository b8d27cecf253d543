"""Simplification: constant folding, exact algebraic identities, movement chains collapsed.

Every rule keeps the numbers bit for bit: `x*1`, `x+(-0.0)`, `--x`; `x+0` is not among them
(-0.0 + 0.0 is +0.0), nor `exp(log x)` (not exact), `(x*a)*b` is not folded to `x*(a*b)` (rounding differs). Dead code goes with
the rewrite (a graph holds only what its outputs need) and common subexpressions are shared by
interning. Random ops are leaves keyed by their stream, so no rule merges one; a uniform draw
compared with a bound it always meets (`rand < 1.0`: draws lie in [0, 1), as needle's dropout
with p=0 draws its mask) is that constant, and the draw goes with its last use (the other
draws are functions of their own streams, so none changes).
"""

from __future__ import annotations

import math

import numpy as np

from ..ir import Graph, Node, Op
from ..ir.ops import ELEMENTWISE, ConstArray, uniform
from ..ir.semantics import evaluate
from .rewrite import P, Rule, rewrite

_FOLD_LIMIT = 4096  # elements: larger non-uniform constants stay computed, not stored in the graph


def _value(n: Node) -> np.ndarray:
    """The array a CONST node stands for."""
    if isinstance(n.arg, ConstArray):
        return n.arg.array
    return np.full(n.shape, n.arg, dtype=n.dtype)


def _const_of(array: np.ndarray, like: Node) -> Node | None:
    flat = array.reshape(-1)
    if flat.size and uniform(flat):
        return Node.const(flat[0].item(), like.shape, like.dtype)
    if flat.size == 0 or flat.size > _FOLD_LIMIT:
        return None
    return Node.const(np.ascontiguousarray(array.astype(like.dtype)))


def fold(n: Node) -> Node | None:
    """An elementwise or movement op of constants, computed now."""
    if n.op is Op.STOP_GRADIENT:
        return n.src[0]  # a constant has no gradient to stop
    out = evaluate(n.op, [_value(s) for s in n.src], n.arg, n.shape, n.dtype)
    return _const_of(np.asarray(out), n)


def _scalar(c: float):
    """A predicate on a CONST node: a fill with value c (any shape)."""
    return lambda n: not isinstance(n.arg, ConstArray) and n.arg == c


def _minus_zero(c) -> bool:
    return isinstance(c, float) and c == 0.0 and math.copysign(1.0, c) < 0


def _fill_minus_zero(n: Node) -> bool:
    return not isinstance(n.arg, ConstArray) and _minus_zero(n.arg)


def _is_fill(n: Node) -> bool:
    return n.op is Op.CONST and not isinstance(n.arg, ConstArray)


_x = P.var("x")
_c = P(Op.CONST, name="c")
_ALL_CONST = P(
    ELEMENTWISE | {Op.RESHAPE, Op.BROADCAST, Op.PERMUTE, Op.FLIP, Op.SLICE, Op.PAD},
    name="n",
    where=lambda n: bool(n.src) and all(s.op is Op.CONST for s in n.src),
)
_MOVE_FILL = P(
    {Op.RESHAPE, Op.BROADCAST, Op.PERMUTE, Op.FLIP, Op.SLICE},
    P(Op.CONST, name="c", where=_is_fill),
    name="n",
)


def _keep(x: Node, n: Node) -> Node | None:
    """x in place of n, when it has n's type (`x*1.0` on an int x is a float, so it stays)."""
    return x if (x.shape, x.dtype) == (n.shape, n.dtype) else None


def _compose(p: tuple, q: tuple) -> tuple:
    """permute(permute(x, p), q) == permute(x, composed)."""
    return tuple(p[i] for i in q)


def _identity(axes: tuple) -> bool:
    return tuple(axes) == tuple(range(len(axes)))


def _full_slice(n: Node) -> bool:
    return all(
        (start, stop, step) == (0, size, 1)
        for (start, stop, step), size in zip(n.arg, n.src[0].shape, strict=True)
    )


def _uniform(n: Node) -> bool:
    return n.op is Op.RAND and n.arg[0] == "uniform"


def _bound(n: Node, test) -> bool:
    """A fill whose value `test` accepts."""
    return _is_fill(n) and isinstance(n.arg, int | float) and test(n.arg)


_UNIFORM = P(Op.RAND, where=_uniform)


def _fill(value, n: Node) -> Node:
    return Node.const(value, n.shape, n.dtype)


RULES: list[Rule] = [
    # ---- constant folding
    (_MOVE_FILL, lambda n, c: Node.const(c.arg, n.shape, n.dtype)),  # movement of a fill: a fill
    (_ALL_CONST, lambda n: fold(n)),  # an op of constants: computed now
    # ---- exact identities of scalar ops
    (P(Op.MUL_SCALAR, _x, arg=1.0, name="n"), _keep),  # x*1 -> x
    (P(Op.DIV_SCALAR, _x, arg=1.0, name="n"), _keep),  # x/1 -> x
    (P(Op.POW_SCALAR, _x, arg=1.0, name="n"), _keep),  # x**1 -> x
    (P(Op.ADD_SCALAR, _x, arg=_minus_zero, name="n"), _keep),  # x+(-0) -> x (x+0 is not: -0+0=0)
    (P(Op.NEG, P(Op.NEG, _x)), lambda x: x),  # --x -> x
    (P(Op.MUL_SCALAR, _x, arg=-1.0, name="n"), lambda x, n: _keep(x.neg(), n)),  # x*-1 -> -x
    # ---- exact identities with constant tensors (broadcast fills)
    (P(Op.MUL, _x, P(Op.CONST, where=_scalar(1.0)), name="n"), _keep),  # x*1 -> x
    (P(Op.MUL, P(Op.CONST, where=_scalar(1.0)), _x, name="n"), _keep),  # 1*x -> x
    (P(Op.ADD, _x, P(Op.CONST, where=_fill_minus_zero), name="n"), _keep),  # x+(-0) -> x
    (P(Op.ADD, P(Op.CONST, where=_fill_minus_zero), _x, name="n"), _keep),  # (-0)+x -> x
    (P(Op.DIV, _x, P(Op.CONST, where=_scalar(1.0)), name="n"), _keep),  # x/1 -> x
    (P(Op.WHERE, P.var("c"), _x, _x, name="n"), lambda c, x, n: _keep(x, n)),  # where(c, x, x) -> x
    (
        P(Op.WHERE, P(Op.CONST, where=_scalar(True)), _x, P.var("y"), name="n"),
        lambda x, y, n: _keep(x, n),
    ),  # where(True, x, y) -> x
    (
        P(Op.WHERE, P(Op.CONST, where=_scalar(False)), P.var("y"), _x, name="n"),
        lambda y, x, n: _keep(x, n),
    ),  # where(False, y, x) -> x
    # ---- uniform draws lie in [0, 1)
    (
        P(Op.CMPLT, _UNIFORM, P(Op.CONST, where=lambda c: _bound(c, lambda v: v >= 1)), name="n"),
        lambda n: _fill(True, n),
    ),  # u < 1 (or more) -> True
    (
        P(Op.CMPLT, _UNIFORM, P(Op.CONST, where=lambda c: _bound(c, lambda v: v <= 0)), name="n"),
        lambda n: _fill(False, n),
    ),  # u < 0 (or less) -> False
    (
        P(
            Op.CMPEQ,
            _UNIFORM,
            P(Op.CONST, where=lambda c: _bound(c, lambda v: v >= 1 or v < 0)),
            name="n",
        ),
        lambda n: _fill(False, n),
    ),  # u == 1 (never drawn) -> False
    (P(Op.CAST, _x, name="n"), _keep),  # cast to own dtype
    (P(Op.STOP_GRADIENT, P(Op.STOP_GRADIENT, name="x")), lambda x: x),  # sg(sg(x)) -> sg(x)
    # ---- movement chains
    (P(Op.RESHAPE, _x, name="n"), _keep),  # no-op
    (P(Op.BROADCAST, _x, name="n"), _keep),  # no-op
    (P(Op.PERMUTE, _x, arg=_identity), lambda x: x),  # identity permutation
    (P(Op.FLIP, _x, arg=lambda axes: len(axes) == 0), lambda x: x),  # flip of no axes
    (P(Op.SLICE, _x, name="n", where=_full_slice), lambda x, n: x),  # the whole array
    (P(Op.PAD, _x, arg=lambda pads: all(p == (0, 0) for p in pads)), lambda x: x),  # no padding
    (
        P(Op.RESHAPE, P(Op.RESHAPE, _x), name="n"),
        lambda x, n: x.reshape(n.shape),
    ),  # reshape(reshape(x)) -> reshape(x)
    (
        P(Op.BROADCAST, P(Op.BROADCAST, _x), name="n"),
        lambda x, n: x.broadcast_to(n.shape),
    ),  # broadcast(broadcast(x)) -> broadcast(x)
    (
        P(Op.PERMUTE, P(Op.PERMUTE, _x, name="inner"), name="n"),
        lambda x, inner, n: x.permute(_compose(inner.arg, n.arg)),
    ),  # permute(permute(x)) -> permute(x, composed); the identity then goes
    (
        P(Op.FLIP, P(Op.FLIP, _x, name="inner"), name="n"),
        lambda x, inner, n: x if sorted(inner.arg) == sorted(n.arg) else None,
    ),  # flip(flip(x, a), a) -> x
    (
        P(Op.SUM, _x, name="n", arg=lambda axes: len(axes) == 0),
        _keep,
    ),  # a sum over no axes (of the same dtype: a bool sum counts)
]


def simplify(graph: Graph) -> Graph:
    """Constant folding, exact identities and collapsed movement chains, to a fixed point."""
    return rewrite(graph, RULES)
