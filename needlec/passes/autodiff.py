"""Reverse-mode autodiff as a graph-to-graph pass.

`VJP` has one row per op: given the output gradient `g`, the output `out`, the sources and the
op's `arg`, it returns one gradient per source (None where there is none). Rules are written with
the op methods of `OpMixin`, so the same row builds IR nodes here (`differentiate`) and tensors in
eager `Tensor.backward()`; the gradients are themselves differentiable (second order).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

from ..ir import Graph, Node, Op, toposort
from ..ir.ops import FLOATS


def unbroadcast(g, shape):
    """Sum `g` down to `shape` (the inverse of numpy broadcasting)."""
    if g.shape == tuple(shape):
        return g
    lead = len(g.shape) - len(shape)
    axes = tuple(range(lead)) + tuple(
        i + lead for i, d in enumerate(shape) if d == 1 and g.shape[i + lead] != 1
    )
    return g.sum(axes).reshape(shape)


def _keepdims(out, x, axes):
    """`out` (reduced over axes) reshaped with 1s and broadcast back to x's shape."""
    kept = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
    return out.reshape(kept).broadcast_to(x.shape)


def _inverse(perm):
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return tuple(inv)


def _slice_vjp(g, out, x, arg):
    # scatter g back: dilate each strided axis by step-1, then pad (or trim) to x's extent
    for axis, (start, _, step) in enumerate(arg):
        if step > 1 and g.shape[axis]:
            g = g.dilate((axis,), step - 1)
            keep = min(g.shape[axis], x.shape[axis] - start)
            g = g.slice([(0, keep, 1) if i == axis else (0, d, 1) for i, d in enumerate(g.shape)])
    widths = [
        (start, d - start - n) for (start, _, _), d, n in zip(arg, x.shape, g.shape, strict=True)
    ]
    return (g.pad(widths),)


def _matmul_vjp(g, out, x, y, arg):
    gx = g @ y.transpose()
    if len(y.shape) == 2 and len(x.shape) > 2:
        # one matrix for every batch index (a linear layer on (B, T, D)): its gradient is one
        # GEMM over all the rows, not a GEMM per batch index and a sum over the batch
        rows = 1
        for d in x.shape[:-1]:
            rows *= d
        gy = x.reshape((rows, x.shape[-1])).transpose() @ g.reshape((rows, g.shape[-1]))
    else:
        gy = x.transpose() @ g
    return unbroadcast(gx, x.shape), unbroadcast(gy, y.shape)


def _conv_vjp(g, out, x, w, arg):
    stride, pad = arg
    gx = g.conv_input_grad(w, stride, pad, x.shape[1:3])
    return gx, x.conv_weight_grad(g, stride, pad, w.shape[:2])


# the two gradients are the conv's adjoints, so each one's gradients are the other two ops:
# <conv(x, w), g> = <x, conv_input_grad(g, w)> = <w, conv_weight_grad(x, g)>
def _conv_input_grad_vjp(h, out, g, w, arg):
    stride, pad = arg[:2]
    return h.conv(w, stride, pad), h.conv_weight_grad(g, stride, pad, w.shape[:2])


def _conv_weight_grad_vjp(h, out, x, g, arg):
    stride, pad = arg[:2]
    return g.conv_input_grad(h, stride, pad, x.shape[1:3]), x.conv(h, stride, pad)


def _max_vjp(g, out, x, axes):
    hit = x.eq(_keepdims(out, x, axes)).cast(x.dtype)
    share = hit / _keepdims(hit.sum(axes), x, axes)
    return (_keepdims(g, x, axes) * share,)


def _logsumexp_vjp(g, out, x, axes):
    """g * softmax(x), from x shifted by its max as the forward computes it: exp(x - out) would
    lose the digits that `out` rounds away at large magnitudes (|x| ~ 1e4 in float32)."""
    if 0 in x.shape:  # nothing to differentiate (and no max to shift by)
        return (_keepdims(g, x, axes),)
    m = x.max(axes).stop_gradient()  # softmax does not depend on the shift
    m = (m * 0.0).eq(0.0).where(m, 0.0)  # an infinite max shifts by 0, as the forward does
    z = (x - _keepdims(m, x, axes)).exp()
    return (_keepdims(g, x, axes) * z / _keepdims(z.sum(axes), x, axes),)


def _stack_vjp(g, out, *xs_and_axis):
    *xs, axis = xs_and_axis
    parts = []
    for i, x in enumerate(xs):
        spec = [(i, i + 1, 1) if a == axis else (0, d, 1) for a, d in enumerate(g.shape)]
        parts.append(g.slice(spec).reshape(x.shape))
    return tuple(parts)


def _allreduce_vjp(g, out, *xs_and_reduction):
    """Every rank's output depends on every rank's input: a rank's gradient is the sum of the
    cotangents of all ranks (an all-reduce of the cotangent); for a max, only where this rank's
    value is the maximum (each rank holding a tied maximum gets it whole). Several sources take
    their own stretch of the flat cotangent."""
    *xs, reduction = xs_and_reduction
    total = g.all_reduce("sum")
    parts, at = [], 0
    for x in xs:
        n = math.prod(x.shape)
        part = total if len(xs) == 1 else total.slice([(at, at + n, 1)]).reshape(x.shape)
        if reduction == "max":
            mine = out if len(xs) == 1 else out.slice([(at, at + n, 1)]).reshape(x.shape)
            part = x.eq(mine).where(part, 0)
        parts.append(part)
        at += n
    return tuple(parts)


def _callback_vjp(g, out, *xs_and_arg):
    """A custom op's gradient: one more CALLBACK node, over (g, out, *xs), that calls the user's
    `gradient`; with several float inputs it returns their gradients raveled end to end, sliced
    apart here. Non-float inputs get none. (A gradient callback's own row raises: see
    `Callback.gradient`.)"""
    *xs, cb = xs_and_arg
    floats = [x for x in xs if x.dtype in FLOATS]
    if not floats:
        return tuple(None for _ in xs)
    grad_cb = cb.gradient([tuple(x.shape) for x in xs], [x.dtype for x in xs])
    packed = g._apply(Op.CALLBACK, (g, out, *xs), grad_cb)
    if len(floats) == 1:
        return tuple(packed if x is floats[0] else None for x in xs)
    grads, start = [], 0
    for x in xs:
        if x.dtype not in FLOATS:
            grads.append(None)
            continue
        n = math.prod(x.shape)
        part = packed.slice([(start, start + n, 1)]).reshape(x.shape)
        grads.append(part if part.dtype == x.dtype else part.cast(x.dtype))
        start += n
    return tuple(grads)


def _float(x):
    return x.dtype in FLOATS


VJP: dict[Op, Callable] = {
    Op.NEG: lambda g, out, x, arg: (-g,),
    Op.EXP: lambda g, out, x, arg: (g * out,),
    Op.LOG: lambda g, out, x, arg: (g / x,),
    Op.TANH: lambda g, out, x, arg: (g * (1 - out * out),),
    Op.RELU: lambda g, out, x, arg: (g * (x > 0).cast(g.dtype),),
    Op.SQRT: lambda g, out, x, arg: (g / (out * 2.0),),
    Op.CAST: lambda g, out, x, arg: (g.cast(x.dtype) if _float(x) else None,),
    Op.STOP_GRADIENT: lambda g, out, x, arg: (None,),
    Op.ADD_SCALAR: lambda g, out, x, c: (g,),
    Op.MUL_SCALAR: lambda g, out, x, c: (g * c,),
    Op.DIV_SCALAR: lambda g, out, x, c: (g / c,),
    Op.POW_SCALAR: lambda g, out, x, c: (g * c * x ** (c - 1) if c != 0 else g * 0.0,),
    Op.ADD: lambda g, out, x, y, arg: (g, g),
    Op.MUL: lambda g, out, x, y, arg: (g * y, g * x),
    Op.DIV: lambda g, out, x, y, arg: (g / y, -g * x / (y * y)),
    Op.POW: lambda g, out, x, y, arg: (g * y * x ** (y - 1), g * x.log() * out),
    Op.MAXIMUM: lambda g, out, x, y, arg: ((x < y).where(0, g), (x < y).where(g, 0)),
    Op.CMPLT: lambda g, out, x, y, arg: (None, None),
    Op.CMPEQ: lambda g, out, x, y, arg: (None, None),
    Op.WHERE: lambda g, out, c, x, y, arg: (None, c.where(g, 0), c.where(0, g)),
    Op.SUM: lambda g, out, x, axes: (_keepdims(g, x, axes),),
    Op.MAX: _max_vjp,
    Op.LOGSUMEXP: _logsumexp_vjp,
    Op.RESHAPE: lambda g, out, x, shape: (g.reshape(x.shape),),
    Op.BROADCAST: lambda g, out, x, shape: (unbroadcast(g, x.shape),),
    Op.PERMUTE: lambda g, out, x, perm: (g.permute(_inverse(perm)),),
    Op.FLIP: lambda g, out, x, axes: (g.flip(axes),),
    Op.PAD: lambda g, out, x, widths: (
        g.slice([(lo, lo + d, 1) for (lo, _), d in zip(widths, x.shape, strict=True)]),
    ),
    Op.SLICE: _slice_vjp,
    Op.DILATE: lambda g, out, x, arg: (g.undilate(arg[0], arg[1]),),
    Op.STACK: _stack_vjp,
    Op.MATMUL: _matmul_vjp,
    Op.CONV: _conv_vjp,
    Op.CONV_INPUT_GRAD: _conv_input_grad_vjp,
    Op.CONV_WEIGHT_GRAD: _conv_weight_grad_vjp,
    Op.LOGSOFTMAX: lambda g, out, x, arg: (
        g - out.exp() * g.sum((1,)).reshape((x.shape[0], 1)).broadcast_to(x.shape),
    ),
    Op.RAND: lambda g, out, seed, arg: (None,),
    Op.CALLBACK: _callback_vjp,
    Op.ALLREDUCE: _allreduce_vjp,
}


def backprop(
    outputs: Sequence,
    seeds: Sequence,
    parents: Callable[[object], Sequence],
    vjp: Callable[[object, object], Sequence],
    needs_grad: Callable[[object], bool] = lambda v: True,
) -> dict:
    """The reverse sweep, over any kind of value (nodes or tensors).

    Walks the values reachable from `outputs` (via `parents`) in reverse topological order, sums
    the gradient contributions of each, and asks `vjp(value, grad)` for its parents' gradients.
    Returns {value: gradient} for every value that received one.
    """
    order = toposort(outputs, parents)
    live = _needs(order, parents, needs_grad)
    contribs: dict[int, list] = {}
    for out, seed in zip(outputs, seeds, strict=True):
        contribs.setdefault(id(out), []).append(seed)
    grads: dict = {}
    for v in reversed(order):
        parts = contribs.pop(id(v), None)
        if not parts:
            continue
        g = parts[0]
        for p in parts[1:]:
            g = g + p
        grads[v] = g
        srcs = parents(v)
        if not any(id(s) in live for s in srcs):
            continue
        for s, gs in zip(srcs, vjp(v, g), strict=True):
            if gs is not None and id(s) in live:
                if gs.dtype != s.dtype and s.dtype in FLOATS:  # a gradient has its value's dtype
                    gs = gs.cast(s.dtype)
                contribs.setdefault(id(s), []).append(gs)
    return grads


def _needs(order, parents, needs_grad) -> set[int]:
    """ids of the values that need a gradient: those that are, or depend on, a `needs_grad` value."""
    live: set[int] = set()
    for v in order:
        if needs_grad(v) or any(id(s) in live for s in parents(v)):
            live.add(id(v))
    return live


def node_vjp(node: Node, g: Node) -> Sequence:
    """The VJP row of `node`'s op applied to graph nodes."""
    return VJP[node.op](g, node, *node.src, node.arg)


def differentiate(graph: Graph, wrt: Iterable[int] | None = None, seeds: bool = False) -> Graph:
    """The gradient graph of `graph` (a pass: Graph -> Graph).

    The new graph takes the same inputs (and, if `seeds`, one cotangent input per output; otherwise
    every output must be a scalar and is seeded with 1) and returns the gradient of the sum of the
    outputs with respect to each input in `wrt` (all inputs when None). An input that the outputs
    do not depend on gets a zero gradient.
    """
    wrt = list(range(len(graph.inputs))) if wrt is None else list(wrt)
    targets = [graph.inputs[i] for i in wrt]
    if seeds:
        cot = [
            Node.leaf(Op.INPUT, o.dtype, o.shape, ("cotangent", i))
            for i, o in enumerate(graph.outputs)
        ]
    else:
        for o in graph.outputs:
            if o.shape != ():
                raise ValueError(
                    f"differentiate: output of shape {o.shape} needs a seed (seeds=True)"
                )
        cot = [Node.const(1.0, (), o.dtype) for o in graph.outputs]
    target_ids = set(map(id, targets))
    grads = backprop(graph.outputs, cot, lambda n: n.src, node_vjp, lambda n: id(n) in target_ids)
    outs = [grads.get(t, Node.const(0.0, t.shape, t.dtype)) for t in targets]
    return Graph(graph.inputs + (tuple(cot) if seeds else ()), outs)


__all__ = ["VJP", "backprop", "differentiate", "node_vjp", "unbroadcast"]
