"""The cached call of a jitted function, made cheap: the common case in a few microseconds.

A call whose arguments are all positional tensors and C-contiguous numpy arrays is keyed by a
tuple of each argument's shape, dtype, device and requires_grad, read straight off the objects
(no pytree flattening, no tensors made for the arrays). That key maps to the cache key a general
call computed for the same kinds of argument; the trace found there is checked as a general
call checks it (captured tensors, `.grad` reads, guards), and then run by its `HitPlan`: the
input buffers and hyperparameters go to the compiled step in one native call
(`Executable.run_bound`) and the outputs are wrapped without re-validation.

Anything unusual (keyword or static arguments, a pytree or a Python number as an argument, a
non-contiguous or read-only array, an input updated in place that shares memory with another,
a device change, check mode, the interpreters as executors) is a miss here, and the general
path decides, with the same results and errors as before.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from .. import backend_ndarray as nd
from ..autograd import Tensor
from ..ir.ops import FLOATS
from .pytree import unflatten
from .trace import _local as _traces
from .traced import GraphCall, _as_tensor

MISS = object()  # the general path must take this call


class _Drawn(threading.local):
    """A step's seed the hit path drew before the native call refused: the general path that
    takes the call uses it (`take_seed`) instead of drawing a second one, so every call draws
    once from numpy's generator whichever path runs it."""

    seed: int | None = None


drawn = _Drawn()


def take_seed() -> int:
    """The seed of a call with random draws: the one the hit path drew for this call, or a
    new draw from numpy's global generator."""
    seed = drawn.seed
    if seed is None:
        return int(np.random.randint(0, 2**62))
    drawn.seed = None
    return seed


_NDArray = NDArray = nd.NDArray
_new_ndarray = nd.NDArray._new
_wrap = nd._wrap_buffer
_constant = Tensor._constant
_SHARED = frozenset(map(np.dtype, ("float32", "float64", "int32", "int64", "bool")))


def hit_key(args: Sequence) -> tuple | None:
    """The hit path's key of positional arguments (None: some argument is not a concrete
    tensor or a numpy array). A tensor adds (shape, dtype, device name, requires_grad); an
    array (shape, dtype)."""
    key = []
    for x in args:
        kind = type(x)
        if kind is Tensor:
            data = x.cached_data
            if x._node is not None or type(data) is not _NDArray:
                return None
            key.append((data.shape, data._handle._data.dtype, data._device.name, x.requires_grad))
        elif kind is np.ndarray:
            key.append((x.shape, x.dtype))
        else:
            return None
    return tuple(key)


def plan_for(lowered, leaves: Sequence[Tensor], args: Sequence) -> HitPlan | None:
    """The hit plan of a trace (made once, after a general call with `leaves` succeeded), or
    None where a hit must take the general path: an executor other than compiled code, the
    numpy device, the CUDA device, arguments the step writes to, numpy arrays read from the closure, a program
    `run_bound` cannot run, or an array argument whose dtype a general call would convert."""
    plan = lowered.hit_plan
    if plan is None:
        plan = lowered.hit_plan = _make_plan(lowered, leaves) or False
    if not plan:
        return None
    for x in args:
        if type(x) is np.ndarray and x.dtype not in _SHARED:
            return None
    return plan


def _make_plan(lowered, leaves: Sequence[Tensor]) -> HitPlan | None:
    traced = lowered.traced
    if lowered.execute != "compiled" or traced.arg_writes or traced.reads_arrays:
        return None
    tensors = list(leaves) + traced.current_captures()
    devices = {t.device for t in tensors}
    device = devices.pop() if devices else nd.default_device()
    if devices or device in (nd.cpu_numpy(), nd.cuda()):  # numpy, or generated CUDA C
        return None
    executable = lowered.backend("compiled").executable
    if executable._bound is None:
        return None
    return HitPlan(lowered, leaves, device, executable)


class HitPlan:
    """How a cached trace runs on a hit: what to read from the arguments, captured tensors and
    hyperparameters, and how to wrap the outputs and write values back. Made once per trace
    (`plan_for`)."""

    def __init__(self, lowered, leaves: Sequence[Tensor], device, executable) -> None:
        traced = lowered.traced
        self.traced, self.lowered, self.device = traced, lowered, device
        self.executable = executable
        self.n_args = len(leaves)
        captures = traced.current_captures()
        # constant for a trace: arguments' requires_grad is in the key, captures' are checked
        self.requires_grad = any(t.requires_grad for t in [*leaves, *captures])
        self.n_user = n_user = traced.n_results
        graph = lowered.graph
        self.differentiable = [
            self.requires_grad and graph.outputs[i].dtype in FLOATS for i in range(n_user)
        ]
        _, _, specs = executable._bound
        # an output updated in place or copied over its input is that input's own tensor
        self.outputs = [
            (donated if donated is not None else copied, shape, nd.NDArray.compact_strides(shape))
            for _, donated, copied, _, shape in specs
        ]
        self.written = traced.written
        self.scalars = traced.scalars
        self.scalar_tensors: list = [None] * len(traced.scalars)  # (value, its tensor) of last
        self.random = traced.random
        self.has_captures = bool(traced.captured or traced.grad_reads)
        # what a trace assumed of each captured tensor (Traced.stale_capture checks the same)
        self.capture_sigs = [
            (shape, np.dtype(dtype), rg) for shape, dtype, rg in traced.captured_sig
        ]
        self.user_outputs = self.outputs[:n_user]
        self.plain = not any(self.differentiable) and all(
            d is None for d, _, _ in self.user_outputs
        )
        static, tree = traced.out_static, traced.out_tree
        self.single = not static and tree == "*"  # one tensor returned as is
        self.arg_grad_reads = traced.arg_grad_reads
        self.single_plain = self.single and self.plain and len(self.outputs) == 1
        self.writes = self._writes(traced)

    def _writes(self, traced) -> list[tuple]:
        """(kind, target, output index) of each value to write back, but a new `.data` the step
        wrote over the tensor's own buffer: it holds it already."""
        out, i = [], self.n_user
        for kind, target in traced.writes:
            if kind == "no_grad":
                out.append((kind, target, None))
                continue
            k = self.outputs[i][0] - self.n_args if self.outputs[i][0] is not None else None
            own = (
                kind == "data"
                and k is not None
                and k not in traced.grad_owner
                and traced.captured[k] is target
            )
            if not own:
                out.append((kind, target, i))
            i += 1
        return out

    def run(self, args: Sequence):
        """The call's result, or MISS (nothing changed) where the general path must decide
        (which then says what changed, or raises what it raises)."""
        traced, device, written = self.traced, self.device, self.written
        objs = []
        for x in args:
            if type(x) is np.ndarray:
                objs.append(x)
                continue
            if written and id(x) in written:  # refused by the general path
                return MISS
            data = x.cached_data
            view = data._np
            objs.append(view if view is not None else data._view())
        for k in self.arg_grad_reads:  # a .grad the trace read as None
            if getattr(args[k], "_grad", None) is not None:
                return MISS
        captures = values = ()
        if self.has_captures:
            for t, was_none in traced.grad_reads:
                if (t._grad is None) != was_none:
                    return MISS
            captures = traced._capture_objects()
            for t, (shape, dtype, requires_grad) in zip(captures, self.capture_sigs, strict=True):
                data = t.cached_data
                if (
                    type(data) is not _NDArray
                    or data._device is not device
                    or data.shape != shape
                    or data._handle._data.dtype is not dtype
                    or t.requires_grad is not requires_grad
                ):
                    return MISS
                view = data._np
                objs.append(view if view is not None else data._view())
        if self.scalars:
            values = []
            for obj, name in self.scalars:  # hyperparameters, read now
                value = getattr(obj, name)
                kind = type(value)
                if kind is int:
                    value = float(value)
                elif kind is not float:
                    return MISS  # numpy numbers, and what the general path refuses
                values.append(value)
            objs += values
        if self.random:  # a new seed each call, as the general path draws it
            objs.append(int(np.random.randint(0, 2**62)))
        arrays = self.executable.run_bound(objs)
        if arrays is None:
            if self.random:  # the general path takes this seed: one draw per call
                drawn.seed = objs[-1]
            return MISS
        n_user = self.n_user
        if self.single_plain:  # one new value returned (a jitted expression)
            a = arrays[0]
            _, shape, strides = self.outputs[0]
            return _constant(_new_ndarray(shape, strides, device, _wrap(a), 0, a))
        if self.plain:  # only new values, none differentiable
            results = [
                _constant(_new_ndarray(shape, strides, device, _wrap(a), 0, a))
                for a, (_, shape, strides) in zip(arrays, self.user_outputs, strict=False)
            ]
        else:
            results = self._results(args, arrays, captures, values, objs)
        if self.writes:
            self._write_back(arrays, captures)
        if self.single:
            return results[0]
        outs = iter(results)
        static = traced.out_static
        flat = [static[k] if k in static else next(outs) for k in range(n_user + len(static))]
        return unflatten(traced.out_tree, flat)

    def _data(self, i: int, a: np.ndarray, captures) -> NDArray:
        """Output i's values as an NDArray (an input updated in place: that input's own)."""
        donated, shape, strides = self.outputs[i]
        if donated is not None:
            return captures[donated - self.n_args].cached_data
        return _new_ndarray(shape, strides, self.device, _wrap(a), 0, a)

    def _results(self, args, arrays, captures, values, objs) -> list[Tensor]:
        """The function's output tensors, where some are inputs updated in place or
        differentiable."""
        n_args, differentiable, device = self.n_args, self.differentiable, self.device
        results = []
        inputs = None
        for i, d in enumerate(differentiable):
            a = arrays[i]
            donated, shape, strides = self.outputs[i]
            if donated is not None:  # updated in place: its tensor holds the new value
                results.append(args[donated] if donated < n_args else captures[donated - n_args])
                continue
            data = _new_ndarray(shape, strides, device, _wrap(a), 0, a)
            if d:
                if inputs is None:
                    inputs = self._inputs(args, captures, values, objs)
                t = Tensor.__new__(Tensor)
                grads = self.lowered._grads
                t._init(GraphCall(self.lowered.graph, i, grads), inputs, cached_data=data,
                        requires_grad=True)  # fmt: skip
            else:
                t = _constant(data)
            results.append(t)
        return results

    def _write_back(self, arrays, captures) -> None:
        """`traced.write_back` of the trailing outputs, from their arrays."""
        for kind, target, i in self.writes:
            if kind == "no_grad":
                target._grad = None
                continue
            data = self._data(i, arrays[i], captures)
            if kind == "data":
                target.cached_data = data
            elif kind == "grad":
                target._grad = _constant(data)
            else:  # "scalar" (a plan has no argument writes)
                obj, name = target
                setattr(obj, name, type(getattr(obj, name))(data.numpy().item()))

    def _inputs(self, args, captures, values, objs) -> list[Tensor]:
        """The tensors a differentiable output's GraphCall holds, as the general path makes
        them (a hyperparameter's tensor is made again only when its value changed)."""
        out = [x if type(x) is Tensor else _as_tensor(x) for x in args]
        out += captures
        made = self.scalar_tensors
        for j, v in enumerate(values):
            if made[j] is None or made[j][0] != v:
                made[j] = (v, _as_tensor(np.array(v, dtype="float64")))
            out.append(made[j][1])
        if self.random:
            out.append(_as_tensor(np.array(objs[-1], dtype="int64")))
        return out


def in_trace() -> bool:
    """Whether this thread is tracing (a jitted call inside a trace is inlined)."""
    return bool(_traces.stack)


traces = _traces  # `traces.stack`: in_trace() without a call, for the hit path
