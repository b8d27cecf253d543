"""A traced function and how to call it: the tracing and write-back machinery behind `jit`.

`trace_function` runs a Python function once with tracer tensors and returns a `Traced`: the
graph, the tensors and Python numbers it reads at every call, and the writes (`.data`, `.grad`,
optimizer state) it makes, which become extra graph outputs. `call_graph` runs a graph on
tensors (through a compiled form of it when given, the reference interpreter otherwise; inlined
inside a trace), keeping its outputs differentiable; `write_back` applies a call's trailing
outputs to the objects the trace wrote to.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .. import backend_ndarray as nd
from ..autograd import Tensor, TensorOp
from ..codegen import reference
from ..codegen.cuda.storage import DeviceBuffer
from ..ir import Graph, Node, Op
from ..ir.ops import FLOATS, fmt_type
from ..passes import differentiate, optimize
from .cache import signature
from .pytree import flatten, unflatten
from .trace import ArrayRead, Trace, current, tracing

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


def call_signature(
    name: str,
    args: Sequence,
    kwargs: dict,
    static_argnums: Sequence[int],
    static_argnames: Sequence[str],
) -> tuple[tuple, list[Tensor]]:
    """(the cache key of a call, its dynamic leaves as tensors): see `frontend.cache.signature`."""
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


def donations(traced: Traced, n_results: int) -> dict[int, int]:
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


def check_unaliased(traced: Traced, tensors: list, n_args: int) -> None:
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
        _, leaves = call_signature(name, args, kwargs, static_argnums, static_argnames)
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
    tensors: Sequence,
    grads: dict | None = None,
    run=None,
    fresh_outputs: bool = False,
    n_results: int | None = None,
) -> list:
    """Run `graph` on tensors (numpy arrays too: hyperparameters, seeds), with `run(arrays)`, a
    compiled form of it, when given. Outputs stay differentiable (eager backward, grad) when an
    input requires grad; inside a trace the graph is inlined instead. `fresh_outputs`: `run`
    returns no input's memory (compiled code) except an input it updated in place (a donated
    parameter), whose output is that input's own tensor. Only the first `n_results` outputs (all
    by default) are differentiable; the rest are values to write back."""
    if current() is not None:
        return inline(graph, [_as_tensor(t) for t in tensors])
    arrays = [_array_of(t) for t in tensors]
    for a, n in zip(arrays, graph.inputs, strict=True):
        if a.shape != n.shape or a.dtype != n.dtype:  # never run a trace on wrong inputs
            raise RuntimeError(
                f"jit: input {n.arg} is {a.dtype}{a.shape}, the trace expects {n.dtype}{n.shape}"
            )
    first = next((t for t in tensors if type(t) is not np.ndarray), None)
    device = first.device if first is not None else nd.default_device()
    requires_grad = any(type(t) is not np.ndarray and t.requires_grad for t in tensors)
    grads = {} if grads is None else grads
    out = []
    outputs = run(arrays) if run is not None else reference.run_graph(graph, arrays)
    same = {id(a): k for k, a in enumerate(arrays)} if fresh_outputs else {}
    inputs = None  # the tensors a differentiable output's GraphCall holds (made once)
    for i, a in enumerate(outputs):
        k = same.get(id(a))
        if k is not None and type(tensors[k]) is not np.ndarray:
            out.append(tensors[k])  # updated in place: its tensor holds the new value
            continue
        if type(a) is DeviceBuffer:  # a result left in device memory (cuda)
            shape = graph.outputs[i].shape
            data = nd.NDArray._new(shape, nd.NDArray.compact_strides(shape), device, a, 0)
        else:
            a = np.asarray(a, order="C")
            if not fresh_outputs and any(np.may_share_memory(a, x) for x in arrays):  # an input
                a = a.copy()  # passed through: a copy, so writing one tensor never changes another
            data = nd.NDArray.from_numpy(a, device)
        differentiable = n_results is None or i < n_results
        if requires_grad and differentiable and graph.outputs[i].dtype in FLOATS:
            t = Tensor.__new__(Tensor)
            inputs = inputs or [_as_tensor(x) for x in tensors]
            t._init(GraphCall(graph, i, grads), inputs, cached_data=data, requires_grad=True)
        else:
            t = Tensor.make_const(data)
        out.append(t)
    return out


def _array_of(t) -> np.ndarray:
    """A tensor's values as numpy, without a copy (its NDArray's own view); arrays as they are.
    An array on the GPU stays there (compacted), for the CUDA backend to read on the device."""
    if type(t) is np.ndarray:
        return t
    data = t.realize_cached_data()
    if type(data) is nd.NDArray:
        return data.compact() if data._device.on_gpu else data._view()
    return np.asarray(data)


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


def trace_difference(old: Traced, new: Traced) -> str | None:
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


__all__ = [
    "GraphCall",
    "Traced",
    "call_graph",
    "call_signature",
    "check_unaliased",
    "donations",
    "inline",
    "trace_difference",
    "trace_function",
    "write_back",
]
