"""The reference evaluation of kernels: a `KernelGraph` run with numpy from its description alone.

Each kernel is evaluated over its iteration space with numpy's keepdims arrays: a value is an
array with the full size on the kernel dims it depends on and 1 on the others. Loads read the
compact input buffer through `np.lib.stride_tricks.as_strided` (the valid box of the mask, then
zeros around it); elementwise ops, GEMM and conv go through the op semantics
(`needlec.ir.semantics.evaluate`), so the two interpreters share every formula. This is how
passes are checked numerically until the compiled backends exist.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..ir.callback import CallbackError
from ..ir.kernel import Expr, Kernel, KernelGraph, KOp
from ..ir.schedule import Buffer
from ..ir.semantics import draw_random, evaluate
from ..ir.view import Dims, View
from . import reference


def read_view(buf: np.ndarray, view: View) -> np.ndarray:
    """The elements `view` reads from the compact array `buf` (0 where masked)."""
    flat = np.asarray(buf, order="C").reshape(-1)
    box = view.bounds()
    if any(hi <= lo for lo, hi in box):
        return np.zeros(view.shape, flat.dtype)
    size = [hi - lo for lo, hi in box]
    off = view.offset + sum(lo * s for (lo, _), s in zip(box, view.strides, strict=True))
    first = off + sum(min(0, (n - 1) * s) for n, s in zip(size, view.strides, strict=True))
    last = off + sum(max(0, (n - 1) * s) for n, s in zip(size, view.strides, strict=True))
    if first < 0 or last >= flat.size:
        raise IndexError(
            f"view {view.as_text()} reads elements {first}..{last} of a buffer of {flat.size}"
        )
    item = flat.dtype.itemsize
    sub = np.lib.stride_tricks.as_strided(
        flat[off:], shape=size, strides=[s * item for s in view.strides], writeable=False
    )
    if view.mask is None:
        return sub
    out = np.zeros(view.shape, flat.dtype)
    out[tuple(slice(lo, hi) for lo, hi in box)] = sub
    return out


def to_kernel_space(a: np.ndarray, dims: Dims, space: tuple[int, ...]) -> np.ndarray:
    """A value of logical shape laid over the kernel dims `dims` (1 on the others)."""
    fl = [k for kd in dims for k in kd]
    a = a.reshape([space[k] for k in fl])
    order = sorted(range(len(fl)), key=fl.__getitem__)
    a = a.transpose(order)
    return a.reshape([space[k] if k in fl else 1 for k in range(len(space))])


def from_kernel_space(v: np.ndarray, dims: Dims, shape, space: tuple[int, ...]) -> np.ndarray:
    """The logical array of a value stored over `dims` (the inverse of `to_kernel_space`)."""
    fl = [k for kd in dims for k in kd]
    v = np.broadcast_to(v, [space[k] if k in fl else 1 for k in range(len(space))])
    srt = sorted(fl)
    v = v.reshape([space[k] for k in srt])
    v = v.transpose([srt.index(k) for k in fl])
    return np.asarray(v.reshape(shape), order="C").copy()


def _zero_dims(shape, dims: tuple[int, ...], space) -> list[int]:
    return [space[d] if d in dims else n for d, n in enumerate(shape)]


def run_kernel(k: Kernel, env: dict[Buffer, np.ndarray]) -> None:
    """Evaluate one kernel, reading its input buffers from `env` and writing its outputs there."""
    vals: dict[Expr, np.ndarray] = {}
    for e in k.exprs:
        if e.op is KOp.LOAD:
            v = read_view(env[e.arg.buffer], e.arg.view)
        elif e.op is KOp.CONST:
            v = np.full(e.shape, e.arg, dtype=e.dtype)
        elif e.op is KOp.CORE:
            c = k.core
            xs = [read_view(env[ld.buffer], ld.view) for ld in c.operands]
            v = to_kernel_space(evaluate(c.op, xs, c.arg, c.shape, c.dtype), c.dims, k.space)
        elif e.op is KOp.REDUCE:
            x = vals[e.src[0]]
            x = np.broadcast_to(x, _zero_dims(x.shape, e.arg.dims, k.space))
            if x.size == 0:  # an empty reduction is its identity (sum: 0, max: -inf)
                v = np.full(e.shape, e.arg.identity(e.dtype), dtype=e.dtype)
            else:
                v = evaluate(e.arg.op, [x], e.arg.dims, (), e.dtype).reshape(e.shape)
        elif e.op is KOp.RAND:
            d = e.arg
            seed = vals[e.src[0]].reshape(())
            draw = draw_random(seed, (d.dist, d.stream), d.shape, e.dtype)
            v = to_kernel_space(draw, d.dims, k.space)
        else:
            v = evaluate(e.op, [vals[s] for s in e.src], e.arg, e.shape, e.dtype)
        if v.dtype != e.dtype:
            v = v.astype(e.dtype)
        vals[e] = v
    for s in k.stores:
        env[s.buffer] = from_kernel_space(vals[s.value], s.dims, s.buffer.shape, k.space)


def run_kernels(kg: KernelGraph, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Run a kernel graph on numpy arrays (one per graph input); its outputs, as `run_graph`.

    >>> from needlec.ir import Graph, Node, Op
    >>> from needlec.passes.fusion import fuse
    >>> x = Node.leaf(Op.INPUT, "float64", (2, 3), ("arg", 0))
    >>> run_kernels(fuse(Graph([x], [x.transpose().exp().sum((0,))])), [np.zeros((2, 3))])
    [array([3., 3.])]
    """
    if len(arrays) != len(kg.inputs):
        raise ValueError(f"run_kernels: {len(kg.inputs)} inputs expected, got {len(arrays)}")
    env: dict[Buffer, np.ndarray] = {}
    for b, a in zip(kg.inputs, arrays, strict=True):
        env[b] = np.asarray(a, order="C")
    env.update(kg.constants)
    for k in kg.kernels:
        try:
            run_kernel(k, env)
        except CallbackError:  # a custom op's own error, which names the op and its line
            raise
        except Exception as e:
            raise reference.ExecutionError(
                f"while running kernel {k.name}:\n{k.as_text()}\n{type(e).__name__}: {e}"
            ) from e
    return [env[b] for b in kg.outputs]


__all__ = ["from_kernel_space", "read_view", "run_kernel", "run_kernels", "to_kernel_space"]
