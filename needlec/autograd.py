"""needle's Value and Tensor, eager and traced, and reverse-mode autodiff over recorded tensors.

A Tensor is either concrete (it holds an NDArray; each op runs at once with the reference
backend and records the op that produced it) or a tracer (inside `jit`/`make_graph`: it holds an
IR node and ops append nodes). Both build their ops through `OpMixin`, and `backward()` runs the
same VJP rows as the graph autodiff pass.
"""

from __future__ import annotations

from threading import RLock, get_ident

import numpy as np

from . import backend_ndarray as nd
from .frontend.pytree import register_container
from .frontend.trace import TracerError, current, new_serial
from .ir import Node, Op, OpMixin, infer, toposort
from .ir.ops import fmt_type, user_frame
from .ir.semantics import evaluate
from .passes.autodiff import VJP, backprop

LAZY_MODE = False
TENSOR_COUNTER = 0  # tensors alive now (needle's count), updated under _counter_lock
_counter_lock = RLock()  # reentrant: a __del__ may run while this thread holds it

NDArray = nd.NDArray


class TensorOp:
    """An op applied to tensors: needle's interface over one IR op (`ir_op`) and its `arg`.

    A user's subclass with its own `compute` and `gradient` and no `ir_op` (as needle's
    homeworks write ops) runs them eagerly; inside a trace it becomes a Python callback node
    (`needlec.custom_ops`), so it works under `jit` and `grad` too."""

    ir_op: Op | None = None
    arg = None

    def __call__(self, *args: Tensor) -> Tensor:
        return Tensor.make_from_op(self, args)

    def compute(self, *arrays: NDArray) -> NDArray:
        """The forward on arrays (the reference backend's row for this op)."""
        return _compute(self.ir_op, arrays, self.arg)

    def gradient(self, out_grad: Tensor, node: Tensor):
        """The gradient of each input, as tensors (the VJP row of this op)."""
        grads = VJP[self.ir_op](out_grad, node, *node.inputs, self.arg)
        return grads[0] if len(grads) == 1 else grads

    def gradient_as_tuple(self, out_grad: Tensor, node: Tensor) -> tuple:
        g = self.gradient(out_grad, node)
        return tuple(g) if isinstance(g, tuple | list) else (g,)

    def __repr__(self) -> str:
        arg = "" if self.arg is None else repr(self.arg)
        return f"{type(self).__name__}({arg})"


class Primitive(TensorOp):
    """The op of a tensor built by an operator or method: one IR op with its arg."""

    def __init__(self, ir_op: Op, arg=None) -> None:
        self.ir_op, self.arg = ir_op, arg

    def __repr__(self) -> str:
        arg = "" if self.arg is None else repr(self.arg)
        return f"{self.ir_op.name.lower()}({arg})"


def _compute(op: Op, arrays, arg) -> NDArray:
    shape, dtype = infer(op, [x.shape for x in arrays], [x.dtype for x in arrays], arg)
    if arrays and arrays[0]._device.on_gpu:  # a generated CUDA kernel over device memory
        return nd._gpu_run(op, arrays, arg, shape)
    a = [np.asarray(x) for x in arrays]
    try:
        out = evaluate(op, a, arg, shape, dtype)
    except (ValueError, TypeError, ArithmeticError, IndexError) as e:
        # numpy's own error (int ** negative int, ...), said with the op and the user's line
        raise _reraise(e, f"{op.name.lower()}: {e} (at {user_frame()})") from e
    return NDArray.from_numpy(out, arrays[0].device)


def _reraise(e: Exception, message: str) -> Exception:
    """An error of `e`'s builtin type (or its nearest builtin base) with a new message."""
    for cls in type(e).__mro__:
        if cls.__module__ == "builtins":
            return cls(message)
    return RuntimeError(message)


def _ensure_dtype(dtype) -> str | None:
    """A requested dtype as one needlec has, widened by NDArray's rule (uint8 -> int64)."""
    if dtype is None:
        return None
    return nd._infer_dtype(np.dtype(dtype))


def _checked_array(data) -> np.ndarray:
    """`data` as a numpy array of numbers or bools, or a clear error: None, complex numbers,
    strings and other objects are never converted silently."""
    if data is None:
        raise TypeError(f"Tensor: got None; pass an array, a list or a number (at {user_frame()})")
    arr = np.asarray(data)
    if arr.dtype == object:
        if any(v is None for v in arr.flat):
            raise TypeError(
                f"Tensor: the data holds None, which is not a number (at {user_frame()})"
            )
        try:
            arr = np.asarray(arr.tolist())
        except (TypeError, ValueError):
            pass
    if arr.dtype.kind == "c":
        raise TypeError(
            f"Tensor: complex data ({arr.dtype}) is not supported; pass .real or abs() "
            f"explicitly (at {user_frame()})"
        )
    if arr.dtype.kind not in "biuf":
        raise TypeError(
            f"Tensor: data of numpy dtype {arr.dtype} is not numeric (at {user_frame()})"
        )
    return arr


def _check_int_range(arr: np.ndarray, dtype: str) -> None:
    """Integers converted to an integer dtype must fit it (uint64 above 2**63 would wrap)."""
    if arr.dtype.kind not in "iu" or dtype not in ("int32", "int64") or not arr.size:
        return
    info = np.iinfo(dtype)
    lo, hi = arr.min(), arr.max()
    if int(hi) > info.max or int(lo) < info.min:
        bad = int(hi) if int(hi) > info.max else int(lo)
        raise ValueError(
            f"Tensor: integer {bad} ({arr.dtype}) does not fit {dtype} (at {user_frame()})"
        )


def _to_ndarray(data, device, dtype) -> NDArray:
    device = nd.as_device(device)
    if (
        type(data) is NDArray
        and device.on_gpu
        and data.device == device
        and dtype in (None, data.dtype)
    ):
        return nd._gpu_clone(data)  # copied on the device, never through the host
    arr = _checked_array(data)
    if dtype is None:
        if arr.dtype == np.float64 and isinstance(data, np.ndarray | NDArray):
            dtype = "float64"
        elif arr.dtype.kind in "iub" and isinstance(data, np.ndarray | NDArray):
            dtype = {"b": "bool", "u": "int64"}.get(arr.dtype.kind, arr.dtype.name)
            dtype = dtype if dtype in ("bool", "int32", "int64") else "int64"
        else:
            dtype = "float32"
    _check_int_range(arr, dtype)
    return NDArray(np.asarray(arr, dtype=dtype, order="C"), device=device, dtype=dtype)


class Value:
    """needle's Value: a node of the computation with its op and inputs."""

    op: TensorOp | None
    inputs: list
    cached_data: object
    requires_grad: bool

    def realize_cached_data(self):
        return self.cached_data

    def is_leaf(self) -> bool:
        return self.op is None


class Tensor(Value, OpMixin):
    """needle's Tensor.

    `Tensor(array, *, device=None, dtype=None, requires_grad=True)`: `array` is a numpy array,
    a list (nested, of numbers or numpy scalars), a number, an NDArray or a Tensor. Without a
    dtype, float32, float64, int32, int64 and bool arrays keep theirs; other numpy integer dtypes
    (uint8, int8, int16, uint16, uint32, uint64) widen to int64, float16 to float32, so no value
    changes (a uint64 above 2**63 is refused); lists and numbers become float32. A requested
    dtype widens by the same rule (`dtype="uint8"` gives int64).

    >>> import needlec as nc
    >>> x = nc.Tensor([[1.0, 2.0]])
    >>> y = (x * x).sum()
    >>> y.backward(); x.grad.numpy()
    array([[2., 4.]], dtype=float32)
    """

    _node: Node | None = None
    _trace = None
    _leaf = None  # for the tracer of a jit argument: the caller's tensor
    _leaf_index = -1  # and its position among the arguments' leaves
    _serial = 0  # set by _init (0: never initialized, so never counted)
    _array = None  # the numpy array a tensor made inside a trace was converted from
    __array_ufunc__ = None  # numpy defers to our reflected operators: `array + tensor` is a Tensor

    def __init__(self, array, *, device=None, dtype=None, requires_grad: bool = True, **kwargs):
        dtype = _ensure_dtype(dtype)
        if isinstance(array, Tensor):
            trace = current()
            if array._node is not None or trace is not None:  # a new leaf in the trace
                node = Node.make(Op.STOP_GRADIENT, trace.node_of(array))
                if dtype not in (None, node.dtype):
                    node = Node.make(Op.CAST, node, arg=dtype)
                self._init(None, [], node=node, trace=trace, requires_grad=requires_grad)
                return
            data = array.cached_data
            device = None if device is None else nd.as_device(device)
            same = (device is None or device == data.device) and dtype in (None, data.dtype)
            if same:  # shares the array
                self._init(None, [], cached_data=data, requires_grad=requires_grad, origin=array)
                return
            data = _to_ndarray(data, device, dtype or data.dtype)
        else:
            data = _to_ndarray(array, device, dtype)
            if isinstance(array, np.ndarray) and current() is not None:
                self._init(None, [], cached_data=data, requires_grad=requires_grad)
                self._array = array  # a trace reads the array again at every call
                return
        self._init(None, [], cached_data=data, requires_grad=requires_grad)

    def _init(
        self,
        op,
        inputs,
        *,
        cached_data=None,
        node=None,
        trace=None,
        requires_grad=None,
        origin=None,
        detached=True,
    ):
        global TENSOR_COUNTER
        _counter_lock.acquire()  # (not `with`: this runs for every tensor, and is half the cost)
        TENSOR_COUNTER += 1
        _counter_lock.release()
        self._serial = new_serial()  # with the thread: tells tensors made inside a trace
        self._thread = get_ident()
        self._origin = origin  # the tensor whose array this one shares, if any
        self._detached = detached  # a view that stops gradients (.data), not an alias
        if requires_grad is None:
            requires_grad = any(x.requires_grad for x in inputs)
        self.op, self.inputs = op, list(inputs)
        self.cached_data, self._node, self._trace = cached_data, node, trace
        self.requires_grad = requires_grad
        self._grad = None

    def __del__(self) -> None:
        global TENSOR_COUNTER
        # (_counter_lock is None while the interpreter shuts down; a tensor whose __init__
        # raised before _init was never counted: its _serial is still the class's 0)
        if _counter_lock is not None and self._serial:
            _counter_lock.acquire()
            TENSOR_COUNTER -= 1
            _counter_lock.release()

    # ------------------------------------------------------------ construction
    @staticmethod
    def make_const(data, requires_grad: bool = False) -> Tensor:
        t = Tensor.__new__(Tensor)
        origin = None
        if isinstance(data, Tensor):
            if data._node is not None:
                return data.detach()
            origin, data = data, data.cached_data
        t._init(None, [], cached_data=data, requires_grad=requires_grad, origin=origin)
        return t

    @staticmethod
    def _constant(data: NDArray) -> Tensor:
        """`make_const(data)` for an NDArray, as `_init` makes it, for hot paths (the outputs
        of a cached jitted call)."""
        global TENSOR_COUNTER
        t = Tensor.__new__(Tensor)
        _counter_lock.acquire()
        TENSOR_COUNTER += 1
        _counter_lock.release()
        t._serial = new_serial()
        t._thread = get_ident()
        t._origin, t._detached = None, True
        t.op, t.inputs = None, []
        t.cached_data, t._node, t._trace = data, None, None
        t.requires_grad, t._grad = False, None
        return t

    @staticmethod
    def _make_tracer(node: Node, trace, op=None, inputs=(), requires_grad=False) -> Tensor:
        t = Tensor.__new__(Tensor)
        t._init(op, inputs, node=node, trace=trace, requires_grad=requires_grad)
        return t

    @staticmethod
    def make_from_op(op: TensorOp, inputs) -> Tensor:
        """Apply `op` to `inputs`: run it now (eager) or record a node (inside a trace; a
        user's op without an IR op is recorded as a CALLBACK node, see `needlec.custom_ops`)."""
        inputs = [_as_tensor(x, inputs) for x in inputs]
        requires_grad = any(x.requires_grad for x in inputs)
        trace = current()
        if trace is None:
            for x in inputs:
                if x._node is not None:
                    what = type(op).__name__ if op.ir_op is None else op.ir_op.name.lower()
                    x._tracer_node(what)  # raises: an escaped tracer
        if trace is not None:
            if op.ir_op is None:  # a user's needle op: a Python callback in the graph
                from .custom_ops import traced_op

                op = traced_op(op, inputs)
            nodes = [trace.node_of(x) for x in inputs]
            node = Node.make(op.ir_op, *nodes, arg=op.arg)
            if not requires_grad:
                return Tensor._make_tracer(node, trace)
            return Tensor._make_tracer(node, trace, op, inputs, True)
        if op.ir_op is None:  # a user-defined needle op: its own compute
            data = op.compute(*[x.realize_cached_data() for x in inputs])
        else:
            _check_devices(op, inputs)
            data = _compute(op.ir_op, [x.cached_data for x in inputs], op.arg)
        t = Tensor.__new__(Tensor)
        if not requires_grad:
            t._init(None, [], cached_data=data, requires_grad=False)
        else:
            t._init(op, inputs, cached_data=data, requires_grad=True)
        return t

    # OpMixin hooks: every operator and method lands here
    def _apply(self, op: Op, srcs: tuple, arg=None) -> Tensor:
        return Tensor.make_from_op(Primitive(op, arg), srcs)

    def _const(self, value, shape, dtype) -> Tensor:
        trace = current()
        if trace is not None:
            return Tensor._make_tracer(Node.const(value, shape, dtype), trace)
        device = self.device if self._node is None else None
        if device is not None and device.on_gpu:  # filled on the device
            return Tensor.make_const(device.full(shape, value, dtype))
        return Tensor.make_const(NDArray(np.full(shape, value, dtype=dtype), device=device))

    def _lift(self, other):
        if isinstance(other, np.ndarray | NDArray | list):
            return Tensor(
                other,
                device=self.device if self._node is None else None,
                dtype=self.dtype,
                requires_grad=False,
            )
        return super()._lift(other)

    # ------------------------------------------------------------ properties
    @property
    def shape(self) -> tuple[int, ...]:
        return self._node.shape if self._node is not None else tuple(self.cached_data.shape)

    @property
    def dtype(self) -> str:
        return self._node.dtype if self._node is not None else self.cached_data.dtype

    @property
    def device(self):
        if self._node is not None:
            return nd.default_device()
        return self.cached_data.device

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def data(self) -> Tensor:
        return self.detach()

    @data.setter
    def data(self, value: Tensor) -> None:
        if not isinstance(value, Tensor):
            raise TypeError(f"Tensor.data must be set to a Tensor, got {type(value).__name__}")
        if value.dtype != self.dtype:
            raise TypeError(f"Tensor.data: dtype {value.dtype} does not match {self.dtype}")
        trace = current()
        if trace is None:
            if value._node is not None:
                value._tracer_node("assigning .data")  # raises: an escaped tracer
            self.cached_data = value.realize_cached_data()
            return
        node = Node.make(Op.STOP_GRADIENT, trace.node_of(value))
        if trace.outside(self):  # a parameter or a state: written back after every call
            trace.data_writes[id(self)] = (self, node)
            return
        if self._node is not None and self._trace is not trace:
            self._tracer_node("assigning .data")  # raises: an escaped tracer
        self._node, self._trace, self.cached_data = node, trace, None

    @property
    def grad(self) -> Tensor | None:
        """The gradient stored by `backward()` (None until then, or after `reset_grad`)."""
        trace = current()
        if trace is not None and trace.outside(self):
            written = trace.grad_writes.get(id(self))
            if written is not None:
                return written[1]
            trace.grad_reads.setdefault(id(self), (self, self._grad is None))
            if self._grad is not None:  # "the grad of self", looked up again at every call
                return Tensor._make_tracer(trace.capture_grad(self), trace)
        elif self._grad is None and self._leaf is not None and trace is not None:
            if self._leaf._grad is not None:
                raise TracerError(
                    f"reading .grad of a jit argument at {user_frame()}: the caller's .grad is "
                    "not passed into the trace. Pass the gradient as an argument of its own, or "
                    "read the tensor from the closure or an object (a model, an optimizer)."
                )
            trace.arg_grad_reads.add(self._leaf_index)  # None now; retrace if that changes
        return self._grad

    @grad.setter
    def grad(self, value: Tensor | None) -> None:
        trace = current()
        if trace is not None and trace.outside(self):  # journaled, written back after every call
            trace.grad_writes[id(self)] = (self, value)
            return
        self._grad = value

    def detach(self) -> Tensor:
        if self._node is not None:
            node = Node.make(Op.STOP_GRADIENT, self._tracer_node("detach"))
            return Tensor._make_tracer(node, self._trace)
        trace = current()
        if trace is not None and trace.outside(self):  # the value as of now, not at its use
            return Tensor._make_tracer(Node.make(Op.STOP_GRADIENT, trace.node_of(self)), trace)
        return Tensor.make_const(self)

    # ------------------------------------------------------------ concrete values
    def _tracer_node(self, what: str) -> Node:
        if self._trace is None or not self._trace.alive:
            raise TracerError(
                f"{what}: this tensor (%:{fmt_type(self._node.dtype, self._node.shape)}) is a "
                f"tracer that escaped the trace that made it, used at {user_frame()}. Return it "
                "from the jitted function instead of storing it in a global or attribute."
            )
        if self._trace.thread != get_ident():
            raise TracerError(
                f"{what}: this tensor (%:{fmt_type(self._node.dtype, self._node.shape)}) is a "
                f"tracer of a trace in progress in another thread, used at {user_frame()}. "
                "Each thread traces on its own: pass concrete tensors between threads."
            )
        return self._node

    def _concrete(self, what: str):
        trace = current()
        if self._node is None and trace is not None and not trace.made_inside(self):
            raise TracerError(
                f"{what} of a tensor from outside the trace ({fmt_type(self.dtype, self.shape)})"
                f" at {user_frame()}: inside jit its value would be read once, at trace time, "
                "and go stale. Use tensor ops on it instead, or read it outside the function."
            )
        if self._node is not None:
            self._tracer_node(what)
            raise TracerError(
                f"{what} of a traced tensor ({fmt_type(self.dtype, self.shape)}) at "
                f"{user_frame()}: its value is not known while tracing. Use tensor ops instead "
                "of Python control flow on tensor values, return the value from the jitted "
                "function, or pass the argument as static (static_argnums)."
            )
        return self.cached_data

    def realize_cached_data(self):
        return self._concrete("realize_cached_data()")

    def numpy(self) -> np.ndarray:
        return self._concrete("numpy()").numpy()

    def __array__(self, dtype=None, copy=None):
        arr = self._concrete("np.asarray()").numpy()
        return arr if dtype is None else arr.astype(dtype)

    def __float__(self) -> float:
        return float(self._concrete("float()").numpy())

    def __int__(self) -> int:
        return int(self._concrete("int()").numpy())

    def __bool__(self) -> bool:
        return bool(self._concrete("bool() (an `if` or `while` on a tensor)").numpy())

    def __index__(self) -> int:
        return int(self._concrete("using a tensor as an index").numpy())

    def item(self):
        return self._concrete("item()").numpy().item()

    # ------------------------------------------------------------ needle methods
    def backward(self, out_grad: Tensor | None = None) -> None:
        """Set `.grad` on every tensor this one depends on (that requires grad)."""
        if out_grad is None:
            out_grad = self._const(1.0, self.shape, self.dtype)
        compute_gradient_of_variables(self, out_grad)

    def __repr__(self) -> str:
        if self._node is not None:
            state = "" if self._trace is not None and self._trace.alive else " (escaped)"
            return f"Tracer({fmt_type(self.dtype, self.shape)}{state})"
        return "needlec.Tensor(" + str(self.cached_data) + ")"

    def __str__(self) -> str:
        if self._node is not None:
            return repr(self)
        return str(self.cached_data)

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __reduce__(self):
        """Pickled as its class, values, device and requires_grad (not its history or grad),
        so modules, optimizers and batches pickle, and unpickle to equal values."""
        if self._node is not None:
            raise TypeError(
                f"cannot pickle a traced tensor ({fmt_type(self.dtype, self.shape)}) at "
                f"{user_frame()}: its value is not known while tracing"
            )
        return (_unpickle_tensor, (type(self), self.cached_data, self.requires_grad))

    __hash__ = object.__hash__


def _unpickle_tensor(cls: type, data: NDArray, requires_grad: bool) -> Tensor:
    t = cls.__new__(cls)
    t._init(None, [], cached_data=data, requires_grad=requires_grad)
    return t


def _as_tensor(x, peers) -> Tensor:
    if isinstance(x, Tensor):
        return x
    ref = next((p for p in peers if isinstance(p, Tensor)), None)
    dtype = ref.dtype if ref is not None else None
    return Tensor(x, dtype=dtype, requires_grad=False)


def _check_devices(op, inputs) -> None:
    devices = {x.cached_data.device for x in inputs}
    if len(devices) > 1:
        raise ValueError(
            f"{op!r}: inputs are on different devices {sorted(map(repr, devices))} "
            f"(at {user_frame()})"
        )


def find_topo_sort(node_list) -> list:
    """Post-order depth-first over `inputs`, in order (needle's topological sort)."""
    return toposort(list(node_list), lambda t: t.inputs)


def compute_gradient_of_variables(output_tensor: Tensor, out_grad: Tensor) -> None:
    """Reverse-mode sweep from `output_tensor`, storing `.grad` on every tensor on the way."""
    grads = backprop(
        [output_tensor],
        [out_grad],
        lambda t: t.inputs,
        lambda t, g: t.op.gradient_as_tuple(g, t),
        lambda t: t.requires_grad and t.op is None,
    )
    for t, g in grads.items():
        t.grad = g  # inside a trace, on a tensor from outside: journaled (see frontend.trace)


def tensor_grads(outputs, seeds, wrt) -> list:
    """Gradients of `outputs` (seeded) with respect to the tensors `wrt`, without touching `.grad`."""
    ids = set(map(id, wrt))
    grads = backprop(
        list(outputs),
        list(seeds),
        lambda t: t.inputs,
        lambda t, g: t.op.gradient_as_tuple(g, t),
        lambda t: id(t) in ids,
    )
    return [grads.get(t) for t in wrt]


class TensorTuple(Value):
    """needle's TensorTuple: a tuple of tensors (each keeps its own history)."""

    def __init__(self, tensors, op: TensorOp | None = None, inputs=None) -> None:
        self.tensors = tuple(tensors)
        self.op = op
        self.inputs = list(self.tensors) if inputs is None else list(inputs)
        self.requires_grad = any(t.requires_grad for t in self.tensors)
        self.cached_data = None

    def __len__(self) -> int:
        return len(self.tensors)

    def __getitem__(self, index: int) -> Tensor:
        return self.tensors[index]

    def __iter__(self):
        return iter(self.tensors)

    def tuple(self) -> tuple:
        return self.tensors

    def realize_cached_data(self) -> tuple:
        return tuple(t.realize_cached_data() for t in self.tensors)

    def numpy(self) -> tuple:
        return tuple(t.numpy() for t in self.tensors)

    def __add__(self, other: TensorTuple) -> TensorTuple:
        return TensorTuple(a + b for a, b in zip(self, other, strict=True))

    def detach(self) -> TensorTuple:
        return TensorTuple(t.detach() for t in self.tensors)

    def __repr__(self) -> str:
        return f"needlec.TensorTuple({', '.join(map(repr, self.tensors))})"


register_container(TensorTuple, lambda t: list(t.tensors), TensorTuple)
