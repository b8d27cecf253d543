"""Fold a kernel's dims that index the same elements twice.

Fusion gives each member of a kernel the dims its shape needs. Where a value reaches the kernel
through two paths that lay it out differently (BatchNorm's statistics read `x` as (N*H*W, C)
rows, its normalization reads the same `x` as (N, H, W, C)), the rows get a dim of their own
(i1, size N*H*W) next to the dims of the other layout (i2, i3, i4): the kernel's space is then
N*H*W times larger than any value in it, though no value varies over both.

`fold_dims` rewrites such a kernel: a dim `a` that no value (and no store) shares with dims
`B` whose sizes multiply to its size is replaced by `B`, row-major, everywhere (views, the dims
a reduction runs over, the dims a store writes). Every element is still read and written at
the same memory address, the iteration runs over the same elements in another order, and a
reduction over `a` becomes one over `B` (its terms summed in another order, within the
reduction's tolerance). Dims a core or a random draw lies over, and dims a masked view reads,
are never folded.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

from ..ir.kernel import Core, Expr, ExprTable, Kernel, KOp, Load, RandDraw, Reduce, Store
from ..ir.view import View, strides_of

MAX_SUBSET = 4  # the most dims a folded dim is laid over


def _deps(e: Expr) -> frozenset[int]:
    return frozenset(d for d, n in enumerate(e.shape) if n != 1)


def _store_dims(s: Store) -> frozenset[int]:
    return frozenset(d for kd in s.dims for d in kd)


def _candidate(k: Kernel) -> tuple[int, tuple[int, ...]] | None:
    """(a, B): a dim and the dims to fold it into, or None."""
    space = k.space
    # the dims each value, reduction and store runs over together (a reduction also runs over
    # the dims it reduces, even those its source is broadcast along)
    groups = [_deps(e) for e in k.exprs] + [_store_dims(s) for s in k.stores]
    groups += [_deps(e.src[0]) | set(e.arg.dims) for e in k.exprs if e.op is KOp.REDUCE]
    fixed: set[int] = set()
    if k.core is not None:
        fixed |= {d for kd in k.core.dims for d in kd}
    for e in k.exprs:
        if e.op is KOp.RAND:
            fixed |= {d for kd in e.arg.dims for d in kd}
        if e.op is KOp.LOAD:
            v = e.arg.view
            fixed |= {d for d, (lo, hi) in enumerate(v.bounds()) if (lo, hi) != (0, v.shape[d])}
    for a in range(len(space)):
        if a in fixed or space[a] == 1:
            continue
        near = set().union(*(g for g in groups if a in g)) - {a}  # dims sharing a value
        free = [d for d in range(len(space)) if d != a and d not in near and space[d] != 1]
        for r in range(1, MAX_SUBSET + 1):
            for sub in itertools.combinations(free, r):
                if math.prod(space[d] for d in sub) != space[a] or set(sub) & fixed:
                    continue
                return a, sub
    return None


def _fold_once(k: Kernel, a: int, sub: tuple[int, ...]) -> Kernel:
    space = k.space
    keep = [d for d in range(len(space)) if d != a]
    new_index = {d: i for i, d in enumerate(keep)}
    new_space = tuple(space[d] for d in keep)
    inner = strides_of(tuple(space[d] for d in sub))  # a = sum of sub[j] * inner[j]

    def dims_of(kd: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(new_index[x] for d in kd for x in (sub if d == a else (d,)))

    def shape_of(shape: tuple[int, ...]) -> tuple[int, ...]:
        out = [shape[d] for d in keep]
        if shape[a] != 1:
            for b in sub:
                out[new_index[b]] = space[b]
        return tuple(out)

    def view_of(v: View) -> View:
        shape = list(shape_of(v.shape))
        strides = [v.strides[d] for d in keep]
        bounds = [v.bounds()[d] for d in keep]
        if v.shape[a] != 1:
            for b, step in zip(sub, inner, strict=True):
                strides[new_index[b]] = v.strides[a] * step
                bounds[new_index[b]] = (0, space[b])
        return v._with(shape, strides, v.offset, bounds)

    table = ExprTable()
    new: dict[Expr, Expr] = {}
    for e in k.exprs:
        src = tuple(new[s] for s in e.src)
        arg = e.arg
        if e.op is KOp.LOAD:
            arg = Load(arg.buffer, view_of(arg.view))
        elif e.op is KOp.REDUCE:
            arg = Reduce(arg.op, tuple(sorted(dims_of(arg.dims))))
        elif e.op is KOp.RAND:
            arg = RandDraw(arg.dist, arg.stream, arg.shape, tuple(dims_of(kd) for kd in arg.dims))
        new[e] = table.make(e.op, e.dtype, shape_of(e.shape), src, arg)
    stores = tuple(
        Store(s.buffer, new[s.value], tuple(dims_of(kd) for kd in s.dims)) for s in k.stores
    )
    core = k.core
    if core is not None:
        core = Core(
            core.op,
            core.operands,
            core.arg,
            core.dtype,
            core.shape,
            tuple(dims_of(kd) for kd in core.dims),
        )
    return dataclasses.replace(
        k, space=new_space, exprs=tuple(table.exprs), stores=stores, core=core
    )


def fold_dims(k: Kernel) -> Kernel:
    """`k` with every dim that indexes elements other dims also index folded into those
    (see the module docstring); `k` itself where there is none."""
    while (found := _candidate(k)) is not None:
        k = _fold_once(k, *found)
    return k


__all__ = ["fold_dims"]
