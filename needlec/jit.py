"""`jit` and `make_graph`: trace a Python function of tensors into a graph, cache it, run it."""

from __future__ import annotations

import functools
import inspect
import itertools
import os
import sys
import threading
import warnings
import weakref
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import backend_ndarray as nd
from .autograd import Tensor, TensorOp
from .codegen import reference
from .codegen.kernels import run_kernels
from .frontend import guards
from .frontend.cache import signature
from .frontend.pytree import flatten, unflatten
from .frontend.trace import ArrayRead, Trace, current, tracing
from .ir import Graph, Node, Op
from .ir.graph import FusedGraph
from .ir.kernel import CostAnalysis, KernelGraph
from .ir.ops import FLOATS, fmt_type, user_frame
from .passes import Program, compile_program, differentiate, optimize
from .passes.memory import MemoryAnalysis

# NEEDLEC_EXECUTE: compiled code (LLVM) by default; the two interpreters stay as oracles
_EXECUTORS = ("compiled", "reference", "kernels")
_RETRACE_WARNING = 8  # traces of one function before a warning that something keeps changing
_CACHE_SIZE = 64  # traces one jitted function keeps (least recently used first out)
_ticks = itertools.count()  # cache use order (next() is atomic: hits take no lock)


class StaleTraceError(RuntimeError):
    """Check mode (`NEEDLEC_CHECK=1`, `jit(f, check=True)`): a fresh trace differs from the
    cached one, so something the function reads changed without a guard seeing it."""


def _debug(topic: str) -> bool:
    return topic in os.environ.get("NEEDLEC_DEBUG", "").split(",")


def _is_tensor(x) -> bool:
    return isinstance(x, Tensor)


_SCALAR_DTYPES = {float: "float32", int: "int64"}  # a Python number argument: weakly typed


_SHARED_DTYPES = frozenset(map(np.dtype, ("float32", "float64", "int32", "int64", "bool")))


def _as_tensor(x) -> Tensor | None:
    """A jit argument leaf as a tensor: tensors, arrays, numpy scalars, and Python ints and
    floats (a 0-d float32 or int64 input: its value is not part of the cache key, and against
    a float32 or float64 array it takes that array's dtype); None for anything else."""
    if isinstance(x, Tensor):
        return x
    if type(x) is np.ndarray and x.dtype in _SHARED_DTYPES and x.flags.c_contiguous:
        # read where it lies, not copied: the step only reads its arguments (writes to them are
        # functionalized into outputs), so the caller's array is never written
        return Tensor.make_const(nd.NDArray.from_numpy(x))
    if isinstance(x, np.ndarray | nd.NDArray):
        return Tensor(x, requires_grad=False)
    dtype = _SCALAR_DTYPES.get(type(x))
    if dtype is not None:
        return Tensor(np.array(x, dtype=dtype), dtype=dtype, requires_grad=False)
    if isinstance(x, np.number):
        return Tensor(np.asarray(x), requires_grad=False)
    return None


def _signature(name, args, kwargs, static_argnums, static_argnames):
    return signature(name, args, kwargs, static_argnums, static_argnames, _as_tensor)


class Traced:
    """The result of tracing: the graph and how to call it.

    The graph's inputs are the arguments' leaves, then the captured tensors, then the Python
    numbers read at every call (`scalars`), then the seed if it draws random numbers. Its outputs
    are the function's tensor outputs, then the values to write back (`writes`) after each call.
    """

    def __init__(self, graph: Graph, trace: Trace, out_tree, out_static: dict, writes) -> None:
        self.graph = graph
        self.captured = [t for t, _ in trace.captured.values()]  # read at every call
        self.reads_arrays = any(type(t) is ArrayRead for t in self.captured)
        self.captured_sig = [_sig(t) for t in self.captured]
        # a captured `p.grad` is re-read through p at every call (backward rebinds it)
        self.grad_owner = dict(trace.grad_of)
        self.arg_grad_reads = sorted(trace.arg_grad_reads)  # argument .grad read as None
        self.python_reads = set(trace.python_reads)
        self.arg_writes = sorted({k for kind, k in writes if kind in ("arg", "arg_grad")})
        self.written = {id(t) for kind, t in writes if kind in ("data", "grad", "no_grad")}
        self.scalars = [(obj, name) for obj, name, _ in trace.scalars.values()]
        self.grad_reads = list(trace.grad_reads.values())  # (tensor, was .grad None?)
        self.random = trace.seed is not None  # the last graph input is a seed, fresh every call
        self.out_tree = out_tree
        self.out_static = out_static  # output leaf index -> a Python value returned as is
        self.writes = writes  # [(kind, target)] for the trailing outputs; see write_back
        # the leading outputs are the function's results; one trailing output per write but
        # "no_grad" (a .grad set to None needs no value)
        self.n_results = len(graph.outputs) - sum(kind != "no_grad" for kind, _ in writes)
        self.trace = trace

    def stale_capture(self) -> str | None:
        """Why this trace no longer fits its captured tensors (None if it still does)."""
        for t, was_none in self.grad_reads:
            if (t._grad is None) != was_none:
                now = "None" if t._grad is None else "a tensor"
                return f"the .grad of a {fmt_type(t.dtype, t.shape)} tensor it read is now {now}"
        captures = self._capture_objects()
        for k, (t, sig) in enumerate(zip(captures, self.captured_sig, strict=True)):
            if _sig(t) != sig:
                return f"captured tensor {k} changed from {sig} to {_sig(t)}"
        return None

    def stale_arguments(self, leaves: Sequence) -> str | None:
        """Why this trace does not fit these arguments beyond their signature (None if it does)."""
        for k in self.arg_grad_reads:
            if leaves[k]._grad is not None:
                return f"argument {k} now has a .grad (the trace read None)"
        return None

    def _capture_objects(self) -> list:
        """The captured tensors and arrays as of now (a captured `.grad` is looked up again)."""
        if not self.grad_owner:
            return self.captured
        owner = self.grad_owner
        return [owner[k]._grad if k in owner else t for k, t in enumerate(self.captured)]

    def current_captures(self) -> list:
        """The captured tensors as of now; each captured numpy array converted again."""
        out = self._capture_objects()
        if self.reads_arrays:
            out = [
                Tensor(t.array, dtype=t.dtype, device=t.device, requires_grad=False)
                if type(t) is ArrayRead
                else t
                for t in out
            ]
        return out

    def dynamic_attrs(self) -> set[tuple[int, str]]:
        """(id(obj), name) of the Python numbers that are graph inputs or outputs, not guards."""
        out = {(id(obj), name) for obj, name in self.scalars}
        out |= {(id(t[0]), t[1]) for kind, t in self.writes if kind == "scalar"}
        return out - self.python_reads  # also read as a Python number: guarded instead


def _state_outputs(trace: Trace, arg_tracers: list) -> tuple[list, list]:
    """The journal of writes (see frontend.trace) as extra outputs: (nodes, [(kind, target)])."""
    nodes, writes = [], []
    for t, node in trace.data_writes.values():
        nodes.append(node)
        writes.append(("data", t))
    for t, g in trace.grad_writes.values():
        if g is not None:
            nodes.append(trace.node_of(g))
        writes.append(("grad", t) if g is not None else ("no_grad", t))
    for obj, name, node in trace.scalar_writes.values():
        nodes.append(node)
        writes.append(("scalar", (obj, name)))
    for k, (tracer, node) in enumerate(arg_tracers):
        if tracer._node is not node:  # `x.data = ...` on an argument: written into the caller's
            nodes.append(tracer._node)
            writes.append(("arg", k))
        if tracer._grad is not None:  # backward() reached an argument: so is its .grad
            nodes.append(trace.node_of(tracer._grad))
            writes.append(("arg_grad", k))
    return nodes, writes


def _donations(traced: Traced, n_results: int) -> dict[int, int]:
    """Output index -> input index: each new `.data` of a captured tensor may take over the
    buffer of that tensor's capture input (a parameter or optimizer state updated in place)."""
    n_args = len(traced.trace.inputs)
    capture = {id(t): n_args + k for k, t in enumerate(traced.captured)}
    out, k = {}, n_results
    for kind, target in traced.writes:
        if kind == "no_grad":
            continue
        if kind == "data" and id(target) in capture:
            out[k] = capture[id(target)]
        k += 1
    return out


def _check_unaliased(traced: Traced, tensors: list, n_args: int) -> None:
    """An argument the trace writes to (`.data`, `.grad`) must not also be passed as another
    argument or read from the closure: the trace took them as different tensors."""
    for k, t in enumerate(tensors[:n_args]):
        if id(t) in traced.written:
            raise ValueError(
                f"jit({traced.trace.name}): argument leaf {k} is a tensor the function also "
                "writes through the closure or an object (.data or .grad); pass a distinct "
                "tensor, or call it eagerly"
            )
    seen: dict[int, int] = {}
    for k, t in enumerate(tensors):
        j = seen.setdefault(id(t), k)
        if j != k and (j in traced.arg_writes or k in traced.arg_writes):
            other = f"argument leaf {k}" if k < n_args else "a tensor it reads from the closure"
            raise ValueError(
                f"jit({traced.trace.name}): argument leaf {j} is also {other}, and the function "
                "writes to it (.data or .grad); pass distinct tensors, or call it eagerly"
            )


def _sig(t) -> tuple:
    """What a trace assumed about a captured tensor: shape, dtype, whether it needs a grad."""
    return (t.shape, t.dtype, t.requires_grad)


def write_back(writes, values: list, leaves: Sequence) -> None:
    """Apply one call's trailing outputs to the objects the trace wrote to."""
    values = iter(values)
    for kind, target in writes:
        if kind == "no_grad":
            target._grad = None
            continue
        value = next(values)
        if kind == "data":
            target.cached_data = value.cached_data
        elif kind == "grad":
            target._grad = Tensor.make_const(value.cached_data)
        elif kind == "scalar":
            obj, name = target
            number = value.cached_data.numpy().item()
            setattr(obj, name, type(getattr(obj, name))(number))
        elif kind == "arg_grad":
            leaves[target]._grad = Tensor.make_const(value.cached_data)
        else:
            leaves[target].cached_data = value.cached_data


def trace_function(
    fn: Callable,
    args: Sequence,
    kwargs: dict | None = None,
    static_argnums=(),
    static_argnames=(),
    leaves=None,
    reads_array: Callable[[np.ndarray], bool] | None = None,
) -> Traced:
    """Trace `fn(*args, **kwargs)` with tracers standing for the dynamic leaves of the arguments.
    `reads_array(a)` says whether a numpy array comes from outside (an input read at every
    call); without it arrays are constants."""
    kwargs = kwargs or {}
    name = getattr(fn, "__name__", "f")
    if leaves is None:
        _, leaves = _signature(name, args, kwargs, static_argnums, static_argnames)
    trace = Trace(name)
    if reads_array is not None:
        trace.reads_array = reads_array
    with tracing(trace):
        arg_tracers = [
            Tensor._make_tracer(
                trace.add_input(x.shape, x.dtype), trace, requires_grad=x.requires_grad
            )
            for x in leaves
        ]
        for k, (tracer, leaf) in enumerate(zip(arg_tracers, leaves, strict=True)):
            tracer._leaf, tracer._leaf_index = leaf, k
        tracers = iter(arg_tracers)

        def rebuild(value):
            flat, tree = flatten(value)
            return unflatten(tree, [next(tracers) for _ in flat])

        call_args = [a if i in static_argnums else rebuild(a) for i, a in enumerate(args)]
        call_kwargs = {k: kwargs[k] if k in static_argnames else None for k in kwargs}
        for k in sorted(kwargs):  # the order the signature flattened them in
            if k not in static_argnames:
                call_kwargs[k] = rebuild(kwargs[k])
        arg_nodes = [(t, t._node) for t in arg_tracers]
        out = fn(*call_args, **call_kwargs)
        flat_out, out_tree = flatten(out)
        nodes, static = [], {}
        for k, leaf in enumerate(flat_out):
            if isinstance(leaf, Tensor):
                nodes.append(trace.node_of(leaf))
            else:
                static[k] = leaf
        state_nodes, writes = _state_outputs(trace, arg_nodes)
    inputs = trace.inputs + [n for _, n in trace.captured.values()]
    inputs += [n for _, _, n in trace.scalars.values()]
    inputs += [trace.seed] if trace.seed is not None else []
    return Traced(Graph(inputs, nodes + state_nodes), trace, out_tree, static, writes)


class GraphCall(TensorOp):
    """Output `index` of a compiled graph applied to tensors; its VJP runs the gradient graph."""

    def __init__(self, graph: Graph, index: int, grads: dict) -> None:
        self.graph, self.index, self._grads = graph, index, grads

    def gradient(self, out_grad: Tensor, node: Tensor):
        dg = self._grads.get(self.index)
        if dg is None:
            one = Graph(self.graph.inputs, [self.graph.outputs[self.index]])
            dg = self._grads[self.index] = optimize(differentiate(one, seeds=True))
        return tuple(call_graph(dg, [*node.inputs, out_grad]))

    def __repr__(self) -> str:
        return f"GraphCall(output {self.index} of {len(self.graph.nodes)} nodes)"


def call_graph(
    graph: Graph,
    tensors: Sequence[Tensor],
    grads: dict | None = None,
    run=None,
    fresh_outputs: bool = False,
) -> list:
    """Run `graph` on tensors (with `run(arrays)`, a compiled form of it, when given). Outputs
    stay differentiable (eager backward, grad) when an input requires grad; inside a trace the
    graph is inlined instead. `fresh_outputs`: `run` never returns an input's memory (compiled
    code), so no output is checked against the inputs."""
    if current() is not None:
        return inline(graph, tensors)
    arrays = [np.asarray(t.realize_cached_data()) for t in tensors]
    for a, n in zip(arrays, graph.inputs, strict=True):
        if a.shape != n.shape or a.dtype != n.dtype:  # never run a trace on wrong inputs
            raise RuntimeError(
                f"jit: input {n.arg} is {a.dtype}{a.shape}, the trace expects {n.dtype}{n.shape}"
            )
    device = tensors[0].device if tensors else nd.default_device()
    requires_grad = any(t.requires_grad for t in tensors)
    grads = {} if grads is None else grads
    out = []
    outputs = run(arrays) if run is not None else reference.run_graph(graph, arrays)
    for i, a in enumerate(outputs):
        a = np.asarray(a, order="C")
        if not fresh_outputs and any(np.may_share_memory(a, x) for x in arrays):  # an input passed
            a = a.copy()  # through: a copy, so writing one tensor in place never changes another
        data = nd.NDArray.from_numpy(a, device)
        if requires_grad and graph.outputs[i].dtype in FLOATS:
            t = Tensor.__new__(Tensor)
            t._init(GraphCall(graph, i, grads), tensors, cached_data=data, requires_grad=True)
        else:
            t = Tensor.make_const(data)
        out.append(t)
    return out


def inline(graph: Graph, tensors: Sequence[Tensor]) -> list:
    """Replay `graph` with tensor ops on `tensors` (inside a trace this records its nodes)."""
    env: dict[Node, Tensor] = dict(zip(graph.inputs, tensors, strict=True))
    ref = tensors[0] if tensors else Tensor(np.zeros(()), requires_grad=False)
    for n in graph.nodes:
        if n in env:
            continue
        if n.op is Op.CONST:
            arr = n.arg.array if hasattr(n.arg, "array") else None
            env[n] = (
                ref._const(n.arg, n.shape, n.dtype)
                if arr is None
                else Tensor(arr, requires_grad=False)
            )
        elif n.op is Op.RAND:
            trace = current()
            seed = trace.node_of(env[n.src[0]])
            env[n] = Tensor._make_tracer(
                Node.leaf(Op.RAND, n.dtype, n.shape, n.arg, src=(seed,)), trace
            )
        else:
            srcs = tuple(env[s] for s in n.src)
            env[n] = srcs[0]._apply(n.op, srcs, n.arg)
    return [env[n] for n in graph.outputs]


class Lowered:
    """A traced and optimized function: its graph, printed IR and generated code."""

    _jit_opaque = True  # guard walks do not descend into compiled programs

    def __init__(self, traced: Traced) -> None:
        self.traced = traced
        n_results = traced.n_results
        graph = optimize(traced.graph)  # the graph-to-graph steps; the rest on first use
        self._start = Program(graph, n_results, _donations(traced, n_results))
        self._program: Program | None = None
        self.graph = FusedGraph(graph, lambda: self.kernels)
        self._grads: dict = {}  # gradient graphs, made when a caller differentiates an output
        self.execute = os.environ.get("NEEDLEC_EXECUTE", "compiled")
        self.execute = {"graph": "reference"}.get(self.execute, self.execute)
        if self.execute not in _EXECUTORS:
            raise ValueError(
                f"NEEDLEC_EXECUTE={self.execute!r}: use one of {', '.join(_EXECUTORS)}"
            )
        self._executable = None
        if self.execute != "reference" or any(_debug(t) for t in ("passes", "fusion")):
            self.program  # noqa: B018  (compile now: its debug output belongs to this trace)

    @property
    def program(self) -> Program:
        """The whole pipeline's result: remat plan, kernels, memory plan (made on first use)."""
        if self._program is None:
            self._program = compile_program(self._start.graph, start=self._start)
        return self._program

    @property
    def kernels(self) -> KernelGraph:
        """The fused loop-nest kernels (`.as_text()` prints them)."""
        return self.program.kernels

    def cost_analysis(self) -> CostAnalysis:
        """Flops and bytes moved per kernel and in total (`.as_text()` prints the table)."""
        return self.kernels.cost_analysis()

    def memory_analysis(self) -> MemoryAnalysis:
        """Arena size, peak live bytes, the sum of all intermediates, bytes of inputs and
        outputs, and bytes of parameters and state updated in place (`.as_text()`)."""
        return self.program.memory.analysis()

    def _run_kernels(self, arrays: list) -> list:
        return run_kernels(self.kernels, arrays)

    @property
    def executable(self):
        """The program compiled for this CPU through LLVM (made on first use)."""
        if self._executable is None:
            from .codegen.llvm.program import compile_program as compile_llvm

            self._executable = compile_llvm(self.program)
        return self._executable

    def _run_compiled(self, arrays: list) -> list:
        return self.executable.run(arrays)

    @property
    def schedule(self) -> str:
        """The loop nest of every kernel, printed (what the LLVM renderer reads)."""
        return self.executable.schedule_text()

    def as_text(self) -> str:
        """The optimized graph, printed (`.kernels.as_text()`: the fused kernels)."""
        return self.graph.as_text()

    def source(self, target: str = "llvm") -> str:
        """Generated code for `target`: "llvm" (the optimized LLVM module that runs),
        "llvm-unoptimized" (as rendered), "asm" (its machine code) or "python" (the reference
        backend's straight-line numpy)."""
        if target == "python":
            return reference.source(self.graph)
        if target in ("llvm", "llvm-unoptimized", "asm"):
            return self.executable.source(target)
        raise ValueError(
            f"source: no backend renders target {target!r}; "
            "available: 'llvm', 'llvm-unoptimized', 'asm', 'python'"
        )

    def __call__(self, leaves: Sequence[Tensor]) -> Any:
        traced = self.traced
        tensors = list(leaves) + traced.current_captures()
        device = _common_device(traced.trace.name, tensors)
        for obj, name in traced.scalars:  # hyperparameters: read now, so a schedule applies
            value = getattr(obj, name)
            if not isinstance(value, int | float | np.number) or isinstance(value, bool):
                raise TypeError(
                    f"{type(obj).__name__}.{name} = {value!r}: jit({traced.trace.name}) reads it as a "
                    "number at every call; set it to an int or a float"
                )
            tensors.append(Tensor(np.array(value, dtype="float64"), requires_grad=False))
        if traced.random:  # a new seed each call: fresh random numbers, reproducible
            seed = np.array(np.random.randint(0, 2**62), dtype="int64")  # np.random.seed applies
            tensors.append(Tensor(seed, requires_grad=False))
        if traced.arg_writes or traced.written:
            _check_unaliased(traced, tensors, len(leaves))
        run = None  # the reference interpreter
        if self.execute == "kernels":
            run = self._run_kernels
        elif self.execute == "compiled" and device != nd.cpu_numpy():
            run = self._run_compiled
        fresh = run is not None and self.execute == "compiled"  # outputs in memory of their own
        results = call_graph(self.graph, tensors, self._grads, run, fresh)
        n_user = traced.n_results
        write_back(traced.writes, results[n_user:], leaves)
        outs = iter(results[:n_user])
        n_out = n_user + len(traced.out_static)
        static = traced.out_static
        flat = [static[k] if k in static else next(outs) for k in range(n_out)]
        return unflatten(self.traced.out_tree, flat)


def _common_device(name: str, tensors: Sequence[Tensor]):
    """The one device of a call's tensors (arguments and captured), as an eager op demands."""
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        raise ValueError(
            f"jit({name}): inputs are on different devices {sorted(map(repr, devices))} "
            f"(at {user_frame()})"
        )
    return devices.pop() if devices else nd.default_device()


def _static_args(fn: Callable, nums: Sequence[int], names: Sequence[str]):
    """(argnums, argnames) completed from `fn`'s signature as JAX does: a name passed by position
    and a number passed by keyword are static too; a negative number counts from the end of the
    positional parameters (of the call's arguments when `fn` takes *args: still negative)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # a builtin: only what was given
        return tuple(nums), tuple(names)
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    positional = [p.name for p in params if p.kind in kinds]
    varargs = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params)
    n = len(positional)
    resolved = {i + n if i < 0 and not varargs else i for i in nums}
    names = set(names) | {positional[i] for i in resolved if 0 <= i < n}
    resolved |= {positional.index(k) for k in names if k in positional}
    return tuple(sorted(resolved)), tuple(sorted(names))


def _show_entry(entry) -> str:
    if entry[0] == "static":
        return repr(entry[2])
    tree, sig = entry
    return ", ".join(f"{dtype}{list(shape)}" for shape, dtype, *_ in sig) or str(tree)


def _key_change(old, new, labels: list[str]) -> str:
    """What differs between two cache keys (one entry per argument), in the user's words."""
    if old is None:
        return "new argument signature"
    if len(old) != len(new):
        return f"{len(old)} -> {len(new)} arguments"
    for label, a, b in zip(labels, old, new, strict=False):
        if a != b:
            try:
                if label.startswith("keyword"):
                    a, b = a[1], b[1]
                if a[0] != "static" and b[0] != "static" and a[0] != b[0]:
                    return f"{label}: its structure changed"
                return f"{label}: {_show_entry(a)} -> {_show_entry(b)}"
            except (TypeError, ValueError, IndexError):  # passed by position, then by name
                return f"{label} changed"
    return "new argument signature"


class _ArraysOutside:
    """Whether a numpy array a trace converts is reachable from the function's roots (its
    globals, closure, defaults and objects, and the globals of the code run so far): such an
    array is an input read at every call; one the function made is a constant."""

    def __init__(self, roots: list, recorder: guards.CodeRecorder) -> None:
        self.roots, self.recorder = roots, recorder
        self.ids: set[int] | None = None
        self.codes = -1  # how many code objects had run at the last walk

    def __call__(self, array: np.ndarray) -> bool:
        if len(self.recorder.codes) != self.codes:  # new code ran: it may read new globals
            self.codes = len(self.recorder.codes)
            roots = guards.merge(self.roots, self.recorder.roots())
            walked = guards.walk(roots, _is_tensor)
            self.ids = {id(x) for _, _, x in walked if isinstance(x, np.ndarray)}
        while isinstance(array, np.ndarray):  # a view (`W[:, :k]`) reads its base's memory
            if id(array) in self.ids:
                return True
            array = array.base
        return False


class Jitted:
    """A function compiled on first call for each abstract signature of its arguments."""

    def __init__(
        self,
        fn: Callable,
        static_argnums=(),
        static_argnames=(),
        cache_size: int = _CACHE_SIZE,
        check: bool | None = None,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"jit: expected a callable, got {type(fn).__name__} ({fn!r})")
        if cache_size < 1:
            raise ValueError(f"jit: cache_size must be at least 1, got {cache_size}")
        functools.update_wrapper(self, fn)
        self.fn = fn
        self._given = (tuple(static_argnums), tuple(static_argnames))  # as the user wrote them
        self.static_argnums, self.static_argnames = _static_args(fn, *self._given)
        self._negative = any(i < 0 for i in self.static_argnums)  # fn takes *args
        self.max_cache_size = cache_size
        self.check = (
            os.environ.get("NEEDLEC_CHECK", "") not in ("", "0") if check is None else check
        )
        self._cache: dict = {}  # signature key -> ((Lowered, Guard), ...), most recent first
        self._used: dict = {}  # signature key -> when last used (for least-recently-used eviction)
        self._last_key = None  # the key of the last trace, to say what changed in the next
        self._reasons: deque = deque(maxlen=_RETRACE_WARNING)  # why the recent traces ran
        self._lock = threading.RLock()  # held while tracing (reentrant: lower() in a trace)
        self.__name__ = getattr(fn, "__name__", type(fn).__name__)
        self._roots = guards.roots(fn)
        self._bound: dict = {}  # id(instance) -> (a reader of the instance, its bound Jitted)
        self.trace_count = 0
        self._warned_large = False  # a guard that checks many objects warns once

    _jit_guard_attrs = ("fn",)  # a guard walk reads the function, not the cache

    def cache_size(self) -> int:
        """How many traces the cache holds now (at most `max_cache_size`)."""
        return sum(len(v) for v in list(self._cache.values()))

    def _statics(self, args) -> tuple:
        if not self._negative:
            return self.static_argnums
        return tuple(i % len(args) if i < 0 and args else i for i in self.static_argnums)

    def _lookup(self, key, leaves) -> tuple[Lowered | None, str | None]:
        """(a cached trace that fits this call, None) or (None, why none does)."""
        why = None
        for lowered, guard in self._cache.get(key, ()):
            traced = lowered.traced
            why = traced.stale_capture() or traced.stale_arguments(leaves) or guard.check()
            if why is None:
                self._used[key] = next(_ticks)
                return lowered, None
        return None, why

    def _entry(self, args, kwargs) -> tuple[Lowered, list, bool]:
        """(the trace for this call, the arguments' leaves, whether it was cached)."""
        nums, names = self._statics(args), self.static_argnames
        key, leaves = _signature(self.__name__, args, kwargs, nums, names)
        lowered, why = self._lookup(key, leaves)  # a hit takes no lock
        if lowered is not None:
            return lowered, leaves, True
        with self._lock:  # one trace at a time: a thread that missed too finds it here
            lowered, why = self._lookup(key, leaves)
            if lowered is not None:
                return lowered, leaves, True
            if why is None:
                labels = [f"argument {i}" for i in range(len(args))]
                labels += [f"keyword argument {k!r}" for k in sorted(kwargs)]
                why = "first call" if not self.trace_count else None
                why = why or _key_change(self._last_key, key, labels)
            if _debug("recompiles"):
                print(f"needlec: tracing {self.__name__}: {why}", file=sys.stderr)
            statics = [a for i, a in enumerate(args) if i in nums]
            statics += [v for k, v in kwargs.items() if k in names]
            roots = self._roots + [guards.Root("a static argument", lambda v=v: v) for v in statics]
            before = guards.plain_state(roots, _is_tensor)
            prints = guards.fingerprints(roots, _is_tensor)
            with guards.CodeRecorder() as recorder:
                outside = _ArraysOutside(roots, recorder)
                traced = trace_function(self.fn, args, kwargs, nums, names, leaves, outside)
            ran = recorder.roots()
            guards.check_side_effects(
                self.__name__, roots, before, traced.trace, _is_tensor, more=ran
            )
            lowered = Lowered(traced)
            self.trace_count += 1
            guard = guards.Guard(
                guards.merge(roots, ran), _is_tensor, traced.dynamic_attrs(), prints
            )
            if not self._warned_large:
                self._warned_large = guards.warn_if_large(self.__name__, guard)
            if _debug("guards"):
                note = "; a profiler was running: globals read by methods were not recorded"
                note = note if recorder.skipped else ""
                print(
                    f"needlec: guards of {self.__name__}: {guard.summary()}{note}", file=sys.stderr
                )
            self._insert(key, lowered, guard)
            self._last_key = key
            self._reasons.append(why)
            n = self.trace_count
            if n >= _RETRACE_WARNING and n & (n - 1) == 0:  # at 8, 16, 32, ... traces
                counts = Counter(r.split(":")[0] for r in self._reasons)
                what = ", ".join(f"{w} ({c}x)" for w, c in counts.most_common())
                warnings.warn(
                    f"jit({self.__name__}) has traced {n} times; the last "
                    f"{len(self._reasons)} traces were for: {what} (last: {why}). "
                    "NEEDLEC_DEBUG=recompiles prints each reason",
                    stacklevel=4,
                )
        return lowered, leaves, False

    def _insert(self, key, lowered: Lowered, guard) -> None:
        """Add a trace (most recent first) and drop the least recently used past the bound."""
        # a new tuple: a lookup in another thread reads the old or the new
        self._cache[key] = ((lowered, guard), *self._cache.get(key, ()))
        self._used[key] = next(_ticks)
        while self.cache_size() > self.max_cache_size:
            oldest = min(self._cache, key=lambda k: self._used.get(k, -1))
            entries = self._cache[oldest]
            if oldest == key or len(entries) > 1:
                self._cache[oldest] = entries[:-1]
            else:
                del self._cache[oldest]
                self._used.pop(oldest, None)

    def _check(self, lowered: Lowered, args, kwargs, leaves) -> None:
        """Check mode: trace again and compare with the cached trace."""
        with self._lock:
            fresh = trace_function(
                self.fn, args, kwargs, self._statics(args), self.static_argnames, leaves
            )
        what = _trace_difference(lowered.traced, fresh)
        if what is not None:
            raise StaleTraceError(
                f"jit({self.__name__}): the cached trace is stale: {what}. Something the "
                "function reads changed where no guard sees it (NEEDLEC_DEBUG=guards lists "
                "those places); pass that value as an argument, or keep it in a tensor"
            )

    def __get__(self, obj, objtype=None):
        """`@jit` on a method: the instance is read like a closure (its tensors captured)."""
        if obj is None:
            return self
        hit = self._bound.get(id(obj))
        if hit is not None and hit[0]() is obj:
            return hit[1]
        with self._lock:  # one bound Jitted (one cache) per instance, whichever thread is first
            hit = self._bound.get(id(obj))
            if hit is not None and hit[0]() is obj:
                return hit[1]
            fn = self.fn.__get__(obj, objtype)
            bound = Jitted(fn, *self._given, cache_size=self.max_cache_size, check=self.check)
            k, table = id(obj), self._bound
            try:  # dropped with the instance (instances need not be hashable)
                ref = weakref.ref(obj, lambda r: table.get(k, (None,))[0] is r and table.pop(k))
            except TypeError:  # not weak-referenceable: kept alive with its cache
                ref = lambda o=obj: o  # noqa: E731
            self._bound[k] = (ref, bound)
        return bound

    def __call__(self, *args, **kwargs):
        if current() is not None:  # jit inside a trace: inline
            return self.fn(*args, **kwargs)
        lowered, leaves, cached = self._entry(args, kwargs)
        if cached and self.check:
            self._check(lowered, args, kwargs, leaves)
        return lowered(leaves)

    def lower(self, *args, **kwargs) -> Lowered:
        """Trace (or reuse the trace) for these arguments and return the optimized function."""
        return self._entry(args, kwargs)[0]


def _trace_difference(old: Traced, new: Traced) -> str | None:
    """What differs between a cached trace and a fresh one of the same call (None if nothing)."""
    a, b = old.graph, new.graph
    same = len(a.outputs) == len(b.outputs) and all(
        x is y for x, y in zip(a.outputs, b.outputs, strict=False)
    )
    if not same:
        for x, y in zip(a.as_text().splitlines(), b.as_text().splitlines(), strict=False):
            if x != y:
                same_op = x.split(" c=")[0] == y.split(" c=")[0]  # only a scalar differs
                what = "a constant" if " const " in x + y or same_op else "the graph"
                return f"{what} changed: `{x.strip()}` is now `{y.strip()}`"
        return "the graph changed"

    def ident(t) -> int:
        return id(t.array) if type(t) is ArrayRead else id(t)

    if [ident(t) for t in old.captured] != [ident(t) for t in new.captured]:
        return "it reads other tensors or arrays"
    if [(id(o), n) for o, n in old.scalars] != [(id(o), n) for o, n in new.scalars]:
        return "it reads other Python numbers at every call"
    if old.out_tree != new.out_tree or repr(old.out_static) != repr(new.out_static):
        return "its Python outputs changed"
    return None


def _as_tuple(x) -> tuple:
    return (x,) if isinstance(x, int | str) else tuple(x)


def jit(
    fn: Callable | None = None,
    *,
    static_argnums: int | Sequence[int] = (),
    static_argnames: str | Sequence[str] = (),
    cache_size: int = _CACHE_SIZE,
    check: bool | None = None,
) -> Jitted:
    """Compile `fn`: trace it once per argument signature into a graph, optimize it, run it.

    Arguments may be tensors, numpy arrays, and tuples, lists and dicts of them; other Python
    values must be declared static (by position, negative counting from the end, or by name).
    Tensors and numpy arrays `fn` reads from its closure, globals or objects (model parameters)
    are inputs read at every call; rebinding one (`model.w = Tensor(...)`), or changing a Python
    value or function it read, retraces. At most `cache_size` traces are kept (the least
    recently used goes first). `check=True` (or `NEEDLEC_CHECK=1`) traces again at every call
    and raises `StaleTraceError` if the new trace differs from the cached one.

    >>> import needlec as nc, numpy as np
    >>> f = nc.jit(lambda x: nc.ops.tanh(x) * 2.0)
    >>> f(np.zeros(3, dtype="float32")).numpy()
    array([0., 0., 0.], dtype=float32)
    """
    if fn is None:
        return functools.partial(
            jit,
            static_argnums=static_argnums,
            static_argnames=static_argnames,
            cache_size=cache_size,
            check=check,
        )
    return Jitted(fn, _as_tuple(static_argnums), _as_tuple(static_argnames), cache_size, check)


def make_graph(fn: Callable, static_argnums: int | Sequence[int] = ()) -> Callable[..., Graph]:
    """`make_graph(f)(*args)`: the graph traced from `f` on these arguments (before optimization)."""

    nums, names = _static_args(fn, _as_tuple(static_argnums), ())

    def traced(*args, **kwargs) -> Graph:
        statics = tuple(i % len(args) if i < 0 and args else i for i in nums)  # f(*args)
        return trace_function(fn, args, kwargs, statics, names).graph

    return traced
