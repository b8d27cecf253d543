"""Reverse-mode autodiff as a graph-to-graph pass.

`VJP` has one row per op: given the output gradient `g`, the output `out`, the sources and the
op's `arg`, it returns one gradient per source (None where there is none). Rules are written with
the op methods of `OpMixin`, so the same row builds IR nodes here (`differentiate`) and tensors in
eager `Tensor.backward()`; the gradients are themselves differentiable (second order).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from ..ir import Graph, Node, Op, stack, toposort
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
    gy = x.transpose() @ g
    return unbroadcast(gx, x.shape), unbroadcast(gy, y.shape)


def _pad_or_crop(g, axes_widths):
    """Pad (positive width) or crop (negative width) both sides of each given axis."""
    g = g.pad([(max(axes_widths.get(i, 0), 0),) * 2 for i in range(len(g.shape))])
    return g.slice(
        [
            (max(-axes_widths.get(i, 0), 0), d - max(-axes_widths.get(i, 0), 0), 1)
            for i, d in enumerate(g.shape)
        ]
    )


def _conv_vjp(g, out, x, w, arg):
    stride, pad = arg
    if stride > 1:
        return _strided_conv_input_grad(g, x, w, stride, pad), _strided_conv_weight_grad(
            g, x, w, stride, pad
        )
    kh, kw = w.shape[0], w.shape[1]
    # full correlation with the flipped kernel; padding k-1-pad, a crop where that is negative
    gx = _pad_or_crop(g, {1: kh - 1 - pad, 2: kw - 1 - pad})
    gx = gx.conv(w.flip((0, 1)).transpose((2, 3)), 1, 0)
    gw = x.permute((3, 1, 2, 0)).conv(g.permute((1, 2, 0, 3)), 1, pad).permute((1, 2, 0, 3))
    return gx, gw


# A stride-s convolution's gradients split into s*s phases, one per (row, column) remainder
# mod s, each a stride-1 convolution over the taps of that phase: no multiply ever meets the
# zeros that dilating the output gradient to stride 1 would make (15 of 16 at stride 4).
# In one spatial dim, with xp = x padded by p, y[o] = sum_k xp[o*s + k] w[k]:
#   input gradient  xp'[t*s + r] = sum_a g[t - a] w[r + a*s]     (a full correlation)
#   weight gradient w'[r + a*s]  = sum_o xp[(o + a)*s + r] g[o]  (xp's phase r, correlated)
# and the phases interleave back by a stack, a permute and a reshape (views, no arithmetic).


def _fit(v, axis: int, n: int):
    """`v` cropped or zero-padded at the end of `axis` to length `n`."""
    have = v.shape[axis]
    if have < n:
        return v.pad([(0, n - have) if a == axis else (0, 0) for a in range(len(v.shape))])
    spec = [(0, n if a == axis else d, 1) for a, d in enumerate(v.shape)]
    return v.slice(spec) if have > n else v


def _interleave(phases, s: int, lead: int):
    """phases[rh][rw] of shape (*lead dims, T, U, C...) -> (*lead, T*s, U*s, C...): element
    (t, u) of phase (rh, rw) lands at (t*s + rh, u*s + rw). Stacked straight into that
    layout, so the reshapes are views and nothing is copied twice."""
    t, u = lead, lead + 1
    rows = []
    for row in phases:  # (*lead, T, U, s, rest) -> (*lead, T, U*s, rest)
        z = stack(row, u + 1)
        rows.append(z.reshape((*z.shape[:u], z.shape[u] * s, *z.shape[u + 2 :])))
    z = stack(rows, t + 1)  # (*lead, T, s, U*s, rest)
    return z.reshape((*z.shape[:t], z.shape[t] * s, *z.shape[t + 2 :]))


def _strided_conv_input_grad(g, x, w, s: int, pad: int):
    n, h, wd, ci = x.shape
    kh, kw = w.shape[0], w.shape[1]
    th, tw = -(-(h + 2 * pad) // s), -(-(wd + 2 * pad) // s)  # phase lengths covering xp
    phases = []
    for rh in range(s):
        row = []
        for rw in range(s):
            ah, aw = len(range(rh, kh, s)), len(range(rw, kw, s))
            if ah == 0 or aw == 0:
                row.append(g._const(0.0, (n, th, tw, ci), g.dtype))
                continue
            taps = w.slice([(rh, kh, s), (rw, kw, s), (0, ci, 1), (0, w.shape[3], 1)])
            # G[j] = g[j - (a - 1)]: padded by a-1 in front, fitted to t + a - 1 in all
            gp = g.pad([(0, 0), (ah - 1, 0), (aw - 1, 0), (0, 0)])
            gp = _fit(_fit(gp, 1, th + ah - 1), 2, tw + aw - 1)
            row.append(gp.conv(taps.flip((0, 1)).transpose((2, 3)), 1, 0))
        phases.append(row)
    xp = _interleave(phases, s, 1)  # (n, th*s, tw*s, ci): the gradient of x padded
    return xp.slice([(0, n, 1), (pad, pad + h, 1), (pad, pad + wd, 1), (0, ci, 1)])


def _strided_conv_weight_grad(g, x, w, s: int, pad: int):
    kh, kw, ci, co = w.shape
    ho, wo = g.shape[1], g.shape[2]
    am, bm = -(-kh // s), -(-kw // s)  # taps of the largest phase
    xp = x.pad([(0, 0), (pad, pad), (pad, pad), (0, 0)]) if pad else x
    gt = g.permute((1, 2, 0, 3))  # (ho, wo, n, co): a kernel over x's phases
    phases = []
    for rh in range(s):
        row = []
        for rw in range(s):
            if rh >= kh or rw >= kw:
                row.append(g._const(0.0, (ci, am, bm, co), g.dtype))
                continue
            part = xp.slice(
                [(0, xp.shape[0], 1), (rh, xp.shape[1], s), (rw, xp.shape[2], s), (0, ci, 1)]
            )
            part = _fit(_fit(part, 1, ho + am - 1), 2, wo + bm - 1)  # am x bm taps out
            row.append(part.permute((3, 1, 2, 0)).conv(gt, 1, 0))  # (ci, am, bm, co)
        phases.append(row)
    full = _interleave(phases, s, 1)  # (ci, am*s, bm*s, co)
    full = full.slice([(0, ci, 1), (0, kh, 1), (0, kw, 1), (0, co, 1)])
    return full.permute((1, 2, 0, 3))


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
    Op.LOGSOFTMAX: lambda g, out, x, arg: (
        g - out.exp() * g.sum((1,)).reshape((x.shape[0], 1)).broadcast_to(x.shape),
    ),
    Op.RAND: lambda g, out, seed, arg: (None,),
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
