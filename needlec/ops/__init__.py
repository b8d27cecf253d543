"""needle's ops: the op classes (each one IR op) and the functions that apply them.

Every function works eagerly and inside a trace; the gradients come from the VJP table of
`needlec.passes.autodiff`, shared with the graph autodiff pass.
"""

from __future__ import annotations

import copy

import numpy as np

from ..autograd import Primitive, Tensor, TensorOp, TensorTuple
from ..ir import Op, ShapeError
from ..ir import stack as _stack
from ..ir.mixin import conv_arg
from ..ir.ops import normalize_axes


class _Fixed(Primitive):
    """A needle op class bound to one IR op."""

    ir_op: Op

    def __init__(self, arg=None) -> None:
        self.arg = arg

    def __repr__(self) -> str:
        return f"{type(self).__name__}({'' if self.arg is None else self.arg!r})"


class EWiseAdd(_Fixed):
    ir_op = Op.ADD


def as_scalar(c):
    """A scalar operand as a Python number: numpy scalars, 0-d arrays and size-1 arrays are
    accepted as needle's tests pass them (`divide_scalar(t, np.random.randn(1))`).

    >>> as_scalar(np.array([2.5]))
    2.5
    """
    if isinstance(c, np.ndarray | np.generic):
        if c.size != 1:
            raise TypeError(f"a scalar operand must have one element, got shape {c.shape}")
        return c.reshape(()).item()
    return c


class AddScalar(_Fixed):
    ir_op = Op.ADD_SCALAR

    def __init__(self, scalar) -> None:
        self.scalar = self.arg = as_scalar(scalar)

    def __call__(self, a: Tensor) -> Tensor:
        if isinstance(self.scalar, Tensor):  # a size-1 tensor (a jit argument): broadcast it
            return _TENSOR_SCALAR[self.ir_op](a, _scalar_tensor(a, self.scalar))
        return super().__call__(a)


class EWiseMul(_Fixed):
    ir_op = Op.MUL


class MulScalar(AddScalar):
    ir_op = Op.MUL_SCALAR


class EWisePow(_Fixed):
    ir_op = Op.POW


class PowerScalar(AddScalar):
    ir_op = Op.POW_SCALAR


class EWiseDiv(_Fixed):
    ir_op = Op.DIV


class DivScalar(AddScalar):
    ir_op = Op.DIV_SCALAR


def _scalar_tensor(a: Tensor, c: Tensor) -> Tensor:
    """A size-1 tensor used as a scalar: 0-d, in `a`'s dtype when `a` is a float tensor (as
    a Python number would be)."""
    if any(d != 1 for d in c.shape):
        raise TypeError(f"a scalar operand must have one element, got shape {c.shape}")
    c = c.reshape(())
    if a.dtype.startswith("float") and c.dtype != a.dtype:
        c = c.cast(a.dtype)
    return c


_TENSOR_SCALAR = {
    Op.ADD_SCALAR: lambda a, c: a + c,
    Op.MUL_SCALAR: lambda a, c: a * c,
    Op.DIV_SCALAR: lambda a, c: a / c,
    Op.POW_SCALAR: lambda a, c: a**c,
}


class Negate(_Fixed):
    ir_op = Op.NEG


class Log(_Fixed):
    ir_op = Op.LOG


class Exp(_Fixed):
    ir_op = Op.EXP


class ReLU(_Fixed):
    ir_op = Op.RELU


class Tanh(_Fixed):
    ir_op = Op.TANH


class Sqrt(_Fixed):
    ir_op = Op.SQRT


class MatMul(_Fixed):
    ir_op = Op.MATMUL


class LogSoftmax(_Fixed):
    ir_op = Op.LOGSOFTMAX


class _Shaped(_Fixed):
    """An op whose arg depends on the input's shape: built when called."""

    def __call__(self, a: Tensor) -> Tensor:
        a = a if isinstance(a, Tensor) else Tensor(a)
        out = self.build(a)
        return self._identity(a) if out is a else out

    def _identity(self, a: Tensor) -> Tensor:
        """A new tensor made by this op when it leaves `a` unchanged (`dilate(a, axes, 0)`):
        needle's checks expect `out.op` to be the op. It runs as a reshape to `a`'s shape,
        which the graph simplifier removes."""
        op = copy.copy(self)
        op.ir_op, op.arg = Op.RESHAPE, tuple(a.shape)
        return Tensor.make_from_op(op, [a])

    def build(self, a: Tensor) -> Tensor:
        raise NotImplementedError


class Reshape(_Shaped):
    ir_op = Op.RESHAPE

    def __init__(self, shape) -> None:
        self.shape = self.arg = tuple(shape)

    def build(self, a):
        return a.reshape(self.shape)


class BroadcastTo(Reshape):
    ir_op = Op.BROADCAST

    def build(self, a):
        return a.broadcast_to(self.shape)


class Transpose(_Shaped):
    """Swap two axes (the last two by default): a permute in the IR."""

    ir_op = Op.PERMUTE

    def __init__(self, axes: tuple | None = None) -> None:
        self.axes = axes

    def build(self, a):
        return a.transpose(self.axes)


class Summation(_Shaped):
    ir_op = Op.SUM

    def __init__(self, axes=None) -> None:
        self.axes = axes

    def build(self, a):
        return a.sum(self.axes)


class LogSumExp(Summation):
    ir_op = Op.LOGSUMEXP

    def build(self, a):
        return a.logsumexp(self.axes)


class Flip(Summation):
    ir_op = Op.FLIP

    def build(self, a):
        return a.flip(self.axes)


class Dilate(_Shaped):
    ir_op = Op.DILATE

    def __init__(self, axes: tuple, dilation: int) -> None:
        self.axes, self.dilation = axes, dilation

    def build(self, a):
        return a.dilate(self.axes, self.dilation)


class UnDilate(Dilate):
    """`a[::d+1]` along axes: a strided slice in the IR."""

    ir_op = Op.SLICE

    def build(self, a):
        return a.undilate(self.axes, self.dilation)


class Conv(_Fixed):
    """needle's Conv op: NHWC input, (K, K, Cin, Cout) weight; padding defaults to 0."""

    ir_op = Op.CONV

    def __init__(self, stride: int = 1, padding: int = 0) -> None:
        self.stride, self.padding = stride, padding
        self.arg = conv_arg(stride, padding)


class Stack(TensorOp):
    ir_op = Op.STACK

    def __init__(self, axis: int) -> None:
        self.axis = self.arg = axis

    def __call__(self, args) -> Tensor:
        return _stack(list(args), self.axis)


class Split(TensorOp):
    """Split along an axis into a TensorTuple (the axis removed): one slice per element."""

    def __init__(self, axis: int) -> None:
        self.axis = axis

    def __call__(self, a: Tensor) -> TensorTuple:
        axis = normalize_axes(self.axis, a.ndim, "split")[0]
        shape = a.shape[:axis] + a.shape[axis + 1 :]
        parts = []
        for i in range(a.shape[axis]):
            spec = [(i, i + 1, 1) if k == axis else (0, d, 1) for k, d in enumerate(a.shape)]
            parts.append(a.slice(spec).reshape(shape))
        return TensorTuple(parts, op=self, inputs=[a])

    def gradient(self, out_grad: TensorTuple, node: TensorTuple) -> Tensor:
        return _stack(list(out_grad), self.axis)


class MakeTensorTuple(TensorOp):
    def __call__(self, *args: Tensor) -> TensorTuple:
        return TensorTuple(args, op=self)

    def gradient(self, out_grad: TensorTuple, node: TensorTuple) -> tuple:
        return tuple(out_grad)


class TupleGetItem(TensorOp):
    def __init__(self, index: int) -> None:
        self.index = index

    def __call__(self, a: TensorTuple) -> Tensor:
        return a[self.index]


def add(a: Tensor, b: Tensor) -> Tensor:
    return a + b


def add_scalar(a: Tensor, scalar: float) -> Tensor:
    return AddScalar(scalar)(a)


def multiply(a: Tensor, b: Tensor) -> Tensor:
    return a * b


def mul_scalar(a: Tensor, scalar: float) -> Tensor:
    return MulScalar(scalar)(a)


def power(a: Tensor, b: Tensor) -> Tensor:
    return a**b


def power_scalar(a: Tensor, scalar: float) -> Tensor:
    return PowerScalar(scalar)(a)


def divide(a: Tensor, b: Tensor) -> Tensor:
    return a / b


def divide_scalar(a: Tensor, scalar: float) -> Tensor:
    return DivScalar(scalar)(a)


def negate(a: Tensor) -> Tensor:
    return Negate()(a)


def log(a: Tensor) -> Tensor:
    return Log()(a)


def exp(a: Tensor) -> Tensor:
    return Exp()(a)


def relu(a: Tensor) -> Tensor:
    return ReLU()(a)


def tanh(a: Tensor) -> Tensor:
    return Tanh()(a)


def sqrt(a: Tensor) -> Tensor:
    return Sqrt()(a)


def sigmoid(a: Tensor) -> Tensor:
    """1 / (1 + exp(-a)), built from e = exp(-|a|) <= 1 (1 / (1 + e) where a >= 0, e / (1 + e)
    elsewhere), so that neither the value nor the gradient overflows at any magnitude."""
    pos = a >= 0
    e = exp(pos.where(-a, a))
    return pos.where(1.0, e) / (e + 1)


def maximum(a: Tensor, b: Tensor) -> Tensor:
    return a.maximum(b)


def transpose(a: Tensor, axes: tuple | None = None) -> Tensor:
    return Transpose(axes)(a)


def permute(a: Tensor, axes: tuple) -> Tensor:
    return a.permute(axes)


def reshape(a: Tensor, shape: tuple) -> Tensor:
    return Reshape(shape)(a)


def broadcast_to(a: Tensor, shape: tuple) -> Tensor:
    return BroadcastTo(shape)(a)


def summation(a: Tensor, axes=None) -> Tensor:
    return Summation(axes)(a)


def matmul(a: Tensor, b: Tensor) -> Tensor:
    return a @ b


def logsoftmax(a: Tensor) -> Tensor:
    return LogSoftmax()(a)


def logsumexp(a: Tensor, axes=None) -> Tensor:
    return LogSumExp(axes)(a)


def stack(args, axis: int) -> Tensor:
    return Stack(axis)(args)


def split(a: Tensor, axis: int) -> TensorTuple:
    return Split(axis)(a)


def flip(a: Tensor, axes: tuple) -> Tensor:
    return Flip(axes)(a)


def dilate(a: Tensor, axes: tuple, dilation: int) -> Tensor:
    return Dilate(axes, dilation)(a)


def undilate(a: Tensor, axes: tuple, dilation: int) -> Tensor:
    return UnDilate(axes, dilation)(a)


def conv(a: Tensor, b: Tensor, stride: int = 1, padding: int = 1) -> Tensor:
    return Conv(stride, padding)(a, b)


def make_tuple(*args: Tensor) -> TensorTuple:
    return MakeTensorTuple()(*args)


def tuple_get_item(value: TensorTuple, index: int) -> Tensor:
    return TupleGetItem(index)(value)


__all__ = [name for name in dir() if not name.startswith("_") and name not in ("annotations",)]
__all__ += ["ShapeError"]
