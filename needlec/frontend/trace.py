"""The trace context: while a function is traced, tensor ops append interned nodes here.

A trace owns its inputs (the function's arguments) and the tensors it captured from the
function's closure or from objects (model parameters): those become inputs too, read at every
call, never baked in as constants.

Mutation is functionalized: inside a trace, `p.data = v` and `p.grad = g` on a tensor from
outside, and the optimizer's Python numbers (`opt.t`), are not applied; the trace keeps a journal of
them (later reads inside the trace see the new value), and each becomes an extra output that is
written back into the same object after every call.

Tracing state is per thread: each thread has its own stack of traces, so a trace in one thread
never sees (or records) the ops of another. A tensor made in another thread is never "made inside"
a trace: it is captured like any tensor from outside.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np

from ..ir import Node, Op
from ..ir.ops import uniform, user_frame

_ids = itertools.count()
# new_serial() is larger than every number it gave before, in any thread (count's next is atomic)
new_serial = itertools.count(1).__next__


class TracerError(RuntimeError):
    """A traced value was used in a way that needs its concrete value, or escaped its trace."""


class Trace:
    """One trace in progress (or finished: `alive` is then False and its tracers are dead)."""

    def __init__(self, name: str = "jit") -> None:
        self.id = next(_ids)
        self.name = name
        self.alive = True
        self.inputs: list[Node] = []
        self.captured: dict[int, tuple[object, Node]] = {}  # id(tensor) -> (tensor, node)
        # tensors this thread makes after this serial are made inside the trace
        self.creation_mark = new_serial()
        self.thread = threading.get_ident()
        self.seed: Node | None = None  # the scalar seed input, once a random op asks for it
        self.streams = 0
        # the journal of writes to objects from outside (see the module docstring)
        self.data_writes: dict[int, tuple[object, Node]] = {}  # id(tensor) -> its new value
        self.grad_writes: dict[int, tuple[object, object]] = {}  # id(tensor) -> Tensor | None
        self.grad_reads: dict[int, tuple[object, bool]] = {}  # .grad read unwritten: was None?
        self.grad_of: dict[int, object] = {}  # capture index of a `.grad` read -> its owner
        self.python_reads: set[tuple[int, str]] = set()  # (id(obj), name) read as Python numbers
        self.arg_grad_reads: set[int] = set()  # arguments whose (None) .grad the trace read
        self.scalars: dict[tuple[int, str], tuple[object, str, Node]] = {}  # read every call
        self.scalar_writes: dict[tuple[int, str], tuple[object, str, Node]] = {}
        # whether a numpy array comes from outside the function (an input read at every call)
        # rather than made by it (a constant); jit sets it, a bare trace bakes arrays in
        self.reads_array: Callable[[np.ndarray], bool] = lambda array: False

    def made_inside(self, x) -> bool:
        """Whether tensor `x` was made while this trace ran (by its thread)."""
        return x._serial > self.creation_mark and x._thread == self.thread

    def outside(self, x) -> bool:
        """Whether `x` is a concrete tensor made before this trace began, or by another thread
        (a parameter, a state)."""
        return x._node is None and not self.made_inside(x)

    def scalar(self, obj, name: str) -> Node:
        """A Python number `obj.name` as a 0-d float64 input read at every call, so changing it
        (`opt.lr = ...`, an int or a float) needs no retrace; a write earlier in the trace wins.
        float64 holds every int a step counter reaches exactly."""
        key = (id(obj), name)
        if key in self.scalar_writes:
            return self.scalar_writes[key][2]
        hit = self.scalars.get(key)
        if hit is None:
            value = vars(obj)[name] if name in vars(obj) else getattr(obj, name)
            if not isinstance(value, int | float | np.number) or isinstance(value, bool):
                raise TypeError(
                    f"{type(obj).__name__}.{name} = {value!r}: a hyperparameter or step count "
                    "must be a Python int or float"
                )
            node = Node.leaf(Op.INPUT, "float64", (), ("scalar", len(self.scalars)))
            hit = self.scalars[key] = (obj, name, node)
        return hit[2]

    def write_scalar(self, obj, name: str, node: Node) -> None:
        """Journal `obj.name = value`: written back as a Python number after every call."""
        self.scalar_writes[(id(obj), name)] = (obj, name, node)

    def random(self, dist: str, shape, dtype: str) -> Node:
        """A random node: counter-based draws keyed by the call's seed and a stream of its own."""
        if self.seed is None:
            self.seed = Node.leaf(Op.INPUT, "int64", (), ("seed", 0))
        self.streams += 1
        return Node.leaf(Op.RAND, dtype, shape, (dist, self.streams - 1), src=(self.seed,))

    def add_input(self, shape, dtype: str) -> Node:
        node = Node.leaf(Op.INPUT, dtype, shape, ("arg", len(self.inputs)))
        self.inputs.append(node)
        return node

    def node_of(self, x) -> Node:
        """The node that stands for tensor `x` in this trace.

        A tracer of this trace is its node. A concrete tensor made before the trace began (a
        parameter read from the closure, or a view of one through `.data` or `.detach()`) is
        captured: an input read at every call. One made inside the trace is a constant.
        """
        if x._node is not None:
            if x._trace is not self:
                if x._trace is None or not x._trace.alive or x._trace.thread != self.thread:
                    x._tracer_node("an op")  # raises: an escaped tracer, or another thread's
                raise TracerError(
                    f"a tracer of an outer trace was used inside an inner one at {user_frame()}"
                )
            return x._node
        if x._origin is not None and self.made_inside(x):
            # a view made in the trace (.data, .detach(), an alias) reads its source
            node = self.node_of(x._origin)
            return Node.make(Op.STOP_GRADIENT, node) if x._detached else node
        if self.made_inside(x) and x._array is not None and self.reads_array(x._array):
            return self.capture_array(x)
        if self.made_inside(x):
            arr = np.asarray(x.cached_data)
            flat = arr.reshape(-1)
            if arr.size and uniform(flat):
                return Node.const(flat[0].item(), arr.shape, str(arr.dtype))
            return Node.const(arr.copy())
        written = self.data_writes.get(id(x))
        if written is not None:
            return written[1]
        return self.capture(x, x.cached_data)

    def capture(self, tensor, array, key=None) -> Node:
        """The input node standing for a tensor created outside the trace (read at every call)."""
        key = id(tensor) if key is None else key
        hit = self.captured.get(key)
        if hit is None:
            node = Node.leaf(
                Op.INPUT, str(array.dtype), array.shape, ("capture", len(self.captured))
            )
            hit = self.captured[key] = (tensor, node)
        return hit[1]

    def capture_array(self, x) -> Node:
        """The input standing for the numpy array tensor `x` was made from inside the trace: read
        (and converted to x's dtype) at every call, so changing the array in place is seen."""
        data = x.cached_data
        key = ("array", id(x._array), str(data.dtype), repr(data.device))
        if key not in self.captured:
            self.capture(ArrayRead(x._array, str(data.dtype), data.device), data, key)
        return self.captured[key][1]

    def capture_grad(self, owner) -> Node:
        """The input standing for `owner.grad` (a tensor from outside): looked up through its
        owner at every call, since each backward() binds a new gradient tensor."""
        key = ("grad", id(owner))
        if key not in self.captured:
            self.grad_of[len(self.captured)] = owner
        return self.capture(owner._grad, owner._grad.cached_data, key)


class ArrayRead:
    """A numpy array a trace read, captured like a tensor: converted again at every call."""

    __slots__ = ("array", "dtype", "device")
    requires_grad = False

    def __init__(self, array: np.ndarray, dtype: str, device) -> None:
        self.array, self.dtype, self.device = array, dtype, device

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)


class _Traces(threading.local):
    """This thread's traces in progress, innermost last."""

    def __init__(self) -> None:
        self.stack: list[Trace] = []


_local = _Traces()


def current() -> Trace | None:
    """This thread's innermost trace in progress, or None when it runs eagerly."""
    stack = _local.stack
    return stack[-1] if stack else None


@contextmanager
def tracing(trace: Trace) -> Iterator[Trace]:
    """Make `trace` current in this thread; on exit it is finished and its tracers become dead."""
    if trace.thread != threading.get_ident():
        raise RuntimeError(f"trace {trace.name!r} was made in another thread")
    stack = _local.stack
    stack.append(trace)
    try:
        yield trace
    finally:
        stack.pop()
        trace.alive = False


@contextmanager
def eager() -> Iterator[None]:
    """Run the block with no trace current in this thread, then restore the traces in progress:
    a custom op's Python code called from inside a graph (a CALLBACK node) runs eagerly even
    when the graph runs while a trace is in progress."""
    saved, _local.stack = _local.stack, []
    try:
        yield
    finally:
        _local.stack = saved
