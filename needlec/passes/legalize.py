"""Legalize: every dtype conversion in a kernel made explicit, every constant typed.

Fusion writes kernel values the way numpy computes them: an int32 over an int32 divides in
float64, a bool times a float32 is a float32 product, an int tensor's `exp` is a float64 `exp`,
a load may read a buffer of another dtype than the value's, a store may write a value of another
dtype than its buffer's. numpy converts on the way in and out; a renderer would have to redo
numpy's promotion rules to do the same. After `legalize` it need not:

- each elementwise value's sources have its compute dtype (`needlec.ir.semantics.compute_dtype`;
  a `where`'s condition is bool), and the value has that dtype; where numpy's result dtype
  differs from the value's, a `cast` follows;
- a reduction's source has the reduction's dtype; a random draw's seed is int64;
- a load has its buffer's dtype, a store's value its buffer's dtype (a `cast` between);
- the scalar of `add_scalar`, `mul_scalar`, `div_scalar` and `pow_scalar` is a numpy scalar of
  the compute dtype (0.1 times a float32 tensor multiplies by float32(0.1), as numpy does), and
  a `const` a numpy scalar of its dtype.

So the only conversions left are `cast` values, which every renderer lowers with numpy's
`astype` rules (NaN and out-of-range floats to int give the least int). The values computed do
not change: the kernel interpreter gives the same bits before and after (tested).
`is_legal(kernel)` says whether a kernel is in this form.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..ir.kernel import Expr, ExprTable, Kernel, KernelGraph, KOp, Load, Store
from ..ir.ops import COMPARE, ELEMENTWISE, SCALAR, Op
from ..ir.semantics import compute_dtype


def _typed(value, dtype: str):
    """`value` as a numpy scalar of `dtype`."""
    return np.dtype(dtype).type(value)


class _Legalizer:
    def __init__(self, k: Kernel) -> None:
        self.k = k
        self.table = ExprTable()
        self.new: dict[Expr, Expr] = {}

    def cast(self, x: Expr, dtype: str) -> Expr:
        if x.dtype == dtype:
            return x
        return self.table.make(Op.CAST, dtype, x.shape, (x,), dtype)

    def value(self, e: Expr) -> Expr:
        make = self.table.make
        src = [self.new[s] for s in e.src]
        if e.op is KOp.LOAD:
            ld: Load = e.arg
            return self.cast(make(KOp.LOAD, ld.buffer.dtype, e.shape, (), ld), e.dtype)
        if e.op is KOp.CONST:
            return make(KOp.CONST, e.dtype, e.shape, (), _typed(e.arg, e.dtype))
        if e.op is KOp.CORE:
            return make(KOp.CORE, e.dtype, e.shape, tuple(src), e.arg)
        if e.op is KOp.REDUCE:
            return make(KOp.REDUCE, e.dtype, e.shape, (self.cast(src[0], e.dtype),), e.arg)
        if e.op is KOp.RAND:
            seed = [self.cast(src[0], "int64"), *src[1:]]
            return make(KOp.RAND, e.dtype, e.shape, tuple(seed), e.arg)
        if e.op is Op.CAST:
            return self.cast(src[0], e.dtype)
        if e.op not in ELEMENTWISE:
            raise ValueError(f"legalize: no rule for {e.op} in kernel {self.k.name}")
        dt = compute_dtype(e.op, tuple(s.dtype for s in e.src), e.arg)
        if e.op is Op.WHERE:
            src = [self.cast(src[0], "bool"), *(self.cast(s, dt) for s in src[1:])]
        else:
            src = [self.cast(s, dt) for s in src]
        arg = _typed(e.arg, dt) if e.op in SCALAR else e.arg
        out_dt = "bool" if e.op in COMPARE else dt
        return self.cast(make(e.op, out_dt, e.shape, tuple(src), arg), e.dtype)

    def kernel(self) -> Kernel:
        k = self.k
        for e in k.exprs:
            self.new[e] = self.value(e)
        stores = tuple(
            Store(s.buffer, self.cast(self.new[s.value], s.buffer.dtype), s.dims) for s in k.stores
        )
        return dataclasses.replace(k, exprs=tuple(self.table.exprs), stores=stores)


def legalize_kernel(k: Kernel) -> Kernel:
    """`k` with every conversion an explicit `cast` and every constant typed (see the module
    docstring); `k` itself if it is already legal."""
    if k.core is not None and k.core.op is Op.CALLBACK:
        return k  # a Python function over whole buffers: nothing inside to convert
    if is_legal(k):
        return k
    return _Legalizer(k).kernel()


def legalize(kg: KernelGraph) -> KernelGraph:
    """Every kernel of `kg` legalized (`legalize_kernel`)."""
    kernels = tuple(legalize_kernel(k) for k in kg.kernels)
    if all(a is b for a, b in zip(kernels, kg.kernels, strict=True)):
        return kg
    return dataclasses.replace(kg, kernels=kernels)


def why_illegal(k: Kernel) -> str | None:
    """The first implicit conversion or untyped constant in `k` (None if there is none)."""
    names = k.value_names()
    for e in k.exprs:
        where = f"{names[e]} = {e.op.name.lower()} in kernel {k.name}"
        srcs = tuple(s.dtype for s in e.src)
        if e.op is KOp.LOAD and e.dtype != e.arg.buffer.dtype:
            return f"{where} reads a {e.arg.buffer.dtype} buffer as {e.dtype}"
        if e.op is KOp.CONST and not (
            isinstance(e.arg, np.generic) and e.arg.dtype == np.dtype(e.dtype)
        ):
            return f"{where}: {e.arg!r} is not a {e.dtype} scalar"
        if e.op is KOp.REDUCE and srcs[0] != e.dtype:
            return f"{where} reduces {srcs[0]} values into {e.dtype}"
        if e.op is KOp.RAND and srcs[0] != "int64":
            return f"{where} takes a {srcs[0]} seed"
        if e.op in ELEMENTWISE and e.op is not Op.CAST:
            dt = compute_dtype(e.op, srcs, e.arg)
            want = ("bool", dt, dt) if e.op is Op.WHERE else (dt,) * len(srcs)
            if srcs != want:
                return f"{where} computes in {dt} from {', '.join(srcs)}"
            if e.dtype != ("bool" if e.op in COMPARE else dt):
                return f"{where} computes in {dt} but is {e.dtype}"
            if e.op in SCALAR and not (
                isinstance(e.arg, np.generic) and e.arg.dtype == np.dtype(dt)
            ):
                return f"{where}: scalar {e.arg!r} is not a {dt} scalar"
    for s in k.stores:
        if s.value.dtype != s.buffer.dtype:
            return f"kernel {k.name} stores {names[s.value]} ({s.value.dtype}) to {s.buffer.name} ({s.buffer.dtype})"
    return None


def is_legal(k: Kernel) -> bool:
    """Whether `k` has no implicit conversion and no untyped constant (`why_illegal`)."""
    return why_illegal(k) is None


__all__ = ["is_legal", "legalize", "legalize_kernel", "why_illegal"]
