"""`jit` and `make_graph`: trace a Python function of tensors into a graph, cache it, run it."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import autograd
from . import backend_ndarray as nd
from .autograd import Tensor, _node_in, _to_ndarray
from .codegen import reference
from .frontend.pytree import flatten, unflatten
from .frontend.trace import Trace, current, tracing
from .ir import Graph
from .passes import optimize

_SCALARS = (bool, int, float, complex, str, bytes)


def _debug(topic: str) -> bool:
    return topic in os.environ.get("NEEDLEC_DEBUG", "").split(",")


def _signature(fn_name: str, args: Sequence, static_argnums: tuple[int, ...]):
    """(key, dynamic leaves as tensors) for a call; raises for non-static Python values."""
    key, leaves = [], []
    for i, a in enumerate(args):
        if i in static_argnums:
            try:
                hash(a)
            except TypeError:
                raise TypeError(
                    f"jit({fn_name}): static argument {i} ({type(a).__name__}) must be hashable"
                ) from None
            key.append(("static", type(a), a))
            continue
        flat, tree = flatten(a)
        sig = []
        for leaf in flat:
            if isinstance(leaf, np.ndarray | nd.NDArray):
                leaf = Tensor(_to_ndarray(leaf, None, None), requires_grad=False)
            if not isinstance(leaf, Tensor):
                what = f"a {type(leaf).__name__}" + (
                    f" ({leaf!r})" if isinstance(leaf, _SCALARS) else ""
                )
                raise TypeError(
                    f"jit({fn_name}): argument {i} contains {what}, which is not a tensor or array. "
                    f"Pass tensors and arrays (in tuples, lists or dicts), or declare it static: "
                    f"jit({fn_name}, static_argnums=({i},))"
                )
            leaves.append(leaf)
            sig.append((leaf.shape, leaf.dtype, repr(leaf.device), leaf.requires_grad))
        key.append((tree, tuple(sig)))
    return tuple(key), leaves


class Traced:
    """The result of tracing: the graph and how to call it (captured tensors, output structure)."""

    def __init__(
        self, graph: Graph, captured: list, out_tree, out_static: dict, random: bool = False
    ) -> None:
        self.graph = graph
        self.random = random  # the last graph input is a seed, fresh every call
        self.captured = captured  # tensors read at every call, in graph input order
        self.captured_sig = [(t.shape, t.dtype) for t in captured]
        self.out_tree = out_tree
        self.out_static = out_static  # output leaf index -> a Python value returned as is

    def stale_capture(self) -> str | None:
        """Why this trace no longer fits its captured tensors (None if it still does)."""
        for k, (t, sig) in enumerate(zip(self.captured, self.captured_sig, strict=True)):
            if (t.shape, t.dtype) != sig:
                return f"captured tensor {k} changed from {sig} to {(t.shape, t.dtype)}"
        return None


def trace_function(fn: Callable, args: Sequence, static_argnums=(), leaves=None) -> Traced:
    """Trace `fn(*args)` with tracer tensors standing for the dynamic leaves of the arguments."""
    if leaves is None:
        _, leaves = _signature(getattr(fn, "__name__", "f"), args, tuple(static_argnums))
    trace = Trace(getattr(fn, "__name__", "f"))
    trace.creation_mark = autograd._created
    with tracing(trace):
        tracers = iter(
            Tensor._make_tracer(
                trace.add_input(x.shape, x.dtype), trace, requires_grad=x.requires_grad
            )
            for x in leaves
        )
        call_args = []
        for i, a in enumerate(args):
            if i in static_argnums:
                call_args.append(a)
            else:
                flat, tree = flatten(a)
                call_args.append(unflatten(tree, [next(tracers) for _ in flat]))
        out = fn(*call_args)
        flat_out, out_tree = flatten(out)
        nodes, static = [], {}
        for k, leaf in enumerate(flat_out):
            if isinstance(leaf, Tensor):
                nodes.append(_node_in(trace, leaf))
            else:
                static[k] = leaf
    captured = [t for t, _ in trace.captured.values()]
    inputs = trace.inputs + [n for _, n in trace.captured.values()]
    inputs += [trace.seed] if trace.seed is not None else []
    return Traced(Graph(inputs, nodes), captured, out_tree, static, trace.seed is not None)


class Lowered:
    """A traced and optimized function: its graph, printed IR and generated code."""

    def __init__(self, traced: Traced) -> None:
        self.traced = traced
        self.graph = optimize(traced.graph)
        self.calls = 0
        self.seed_base = int(np.random.randint(0, 2**31 - 1)) if traced.random else 0

    def as_text(self) -> str:
        """The optimized graph, printed."""
        return self.graph.as_text()

    def source(self, target: str = "python") -> str:
        """Generated code for `target`; today "python" (the reference backend over numpy)."""
        if target == "python":
            return reference.source(self.graph)
        raise ValueError(f"source: no backend renders target {target!r} yet; available: 'python'")

    def __call__(self, leaves: Sequence[Tensor]) -> Any:
        arrays = [np.asarray(t.realize_cached_data()) for t in leaves]
        arrays += [np.asarray(t.realize_cached_data()) for t in self.traced.captured]
        if self.traced.random:  # a new seed each call: fresh random numbers, reproducible
            arrays.append(np.array((self.seed_base << 24) + self.calls, dtype="int64"))
        self.calls += 1
        device = leaves[0].device if leaves else nd.default_device()
        for a, n in zip(arrays, self.graph.inputs, strict=True):
            if (
                a.shape != n.shape or str(a.dtype) != n.dtype
            ):  # never run a trace on the wrong inputs
                raise RuntimeError(
                    f"jit: input {n.arg} is {a.dtype}{a.shape}, trace expects {n.dtype}{n.shape}"
                )
        outs = iter(reference.run_graph(self.graph, arrays))
        n_out = len(self.graph.outputs) + len(self.traced.out_static)
        flat = [
            self.traced.out_static[k]
            if k in self.traced.out_static
            else Tensor(
                nd.NDArray.from_numpy(np.asarray(next(outs), order="C"), device),
                requires_grad=False,
            )
            for k in range(n_out)
        ]
        return unflatten(self.traced.out_tree, flat)


class Jitted:
    """A function compiled on first call for each abstract signature of its arguments."""

    def __init__(self, fn: Callable, static_argnums: tuple[int, ...] = ()) -> None:
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.static_argnums = tuple(static_argnums)
        self._cache: dict = {}
        self.trace_count = 0

    def _entry(self, args, kwargs) -> tuple[Lowered, list]:
        fn = self.fn
        if kwargs:  # keyword arguments travel as one more (dict) argument
            args = (*args, kwargs)
            fn = functools.wraps(self.fn)(lambda *a: self.fn(*a[:-1], **a[-1]))
        key, leaves = _signature(self.fn.__name__, args, self.static_argnums)
        entry = self._cache.get(key)
        why = "first call" if not self._cache else "new argument signature"
        if entry is not None:
            why = entry.traced.stale_capture()
            if why is None:
                return entry, leaves
        if _debug("recompiles"):
            print(f"needlec: tracing {self.fn.__name__}: {why}", file=sys.stderr)
        entry = Lowered(trace_function(fn, args, self.static_argnums, leaves))
        self.trace_count += 1
        self._cache[key] = entry
        return entry, leaves

    def __call__(self, *args, **kwargs):
        if current() is not None:  # jit inside a trace: inline
            return self.fn(*args, **kwargs)
        entry, leaves = self._entry(args, kwargs)
        return entry(leaves)

    def lower(self, *args, **kwargs) -> Lowered:
        """Trace (or reuse the trace) for these arguments and return the optimized function."""
        return self._entry(args, kwargs)[0]


def jit(fn: Callable | None = None, *, static_argnums: int | Sequence[int] = ()) -> Jitted:
    """Compile `fn`: trace it once per argument signature into a graph, optimize it, run it.

    Arguments may be tensors, numpy arrays, and tuples, lists and dicts of them; other Python
    values must be declared static. Tensors `fn` reads from its closure or from objects (model
    parameters) are inputs read at every call.

    >>> import needlec as nc, numpy as np
    >>> f = nc.jit(lambda x: nc.ops.tanh(x) * 2.0)
    >>> f(np.zeros(3, dtype="float32")).numpy()
    array([0., 0., 0.], dtype=float32)
    """
    if isinstance(static_argnums, int):
        static_argnums = (static_argnums,)
    if fn is None:
        return functools.partial(jit, static_argnums=static_argnums)
    return Jitted(fn, tuple(static_argnums))


def make_graph(fn: Callable, static_argnums: int | Sequence[int] = ()) -> Callable[..., Graph]:
    """`make_graph(f)(*args)`: the graph traced from `f` on these arguments (before optimization)."""
    if isinstance(static_argnums, int):
        static_argnums = (static_argnums,)

    def traced(*args) -> Graph:
        return trace_function(fn, args, tuple(static_argnums)).graph

    return traced
