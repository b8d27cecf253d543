"""One set of op methods for every kind of value: IR nodes and Tensors (eager or traced).

A value class supplies `shape`, `dtype`, `_apply(op, srcs, arg)` and `_const(value, shape, dtype)`;
this mixin builds every operator and method on them. The VJP rules are written with these methods,
so the same rule builds graph nodes in the autodiff pass and tensors in eager `backward()`.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from .ops import (
    Op,
    ShapeError,
    as_int,
    broadcast_shapes,
    normalize_axes,
    scalar_dtype,
    user_frame,
)

Scalar = (numbers.Number, np.generic)


def _py(c):
    """A Python number for a scalar operand (numpy scalars included)."""
    return c.item() if isinstance(c, np.generic) else c


def _ints(shape, op: str) -> tuple[int, ...]:
    """A shape argument (an int or a sequence of ints) as a tuple of Python ints."""
    if not isinstance(shape, tuple | list):
        shape = (shape,)
    return tuple(as_int(d, op, "a dimension") for d in shape)


_INT_RANGE = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}


class OpMixin:
    """Operators and methods shared by `Node` and `Tensor` (needle's semantics)."""

    __slots__ = ()

    # ------------------------------------------------------------ plumbing
    def _apply(self, op: Op, srcs: tuple, arg=None):
        raise NotImplementedError(f"{type(self).__name__} must define _apply")

    def _const(self, value, shape, dtype):
        raise NotImplementedError(f"{type(self).__name__} must define _const")

    def _lift(self, other):
        if isinstance(other, Scalar):
            return self._const(_py(other), self.shape, self.dtype)
        return other

    def _scalar(self, op: str, c):
        """A scalar operand as a Python number, checked: complex numbers, and ints outside
        an int tensor's range, are errors rather than silent conversions."""
        c = _py(c)
        if isinstance(c, complex):
            raise TypeError(f"{op}: complex operand {c!r} is not supported (at {user_frame()})")
        bounds = _INT_RANGE.get(self.dtype)
        if bounds and isinstance(c, int) and not bounds[0] <= c <= bounds[1]:
            raise OverflowError(
                f"{op}: Python int {c} is out of range for a {self.dtype} tensor; cast the "
                f"tensor first (at {user_frame()})"
            )
        return c

    def _operand(self, op: str, other):
        """`other` as a value of this kind (a scalar is broadcast), or a TypeError."""
        if isinstance(other, Scalar):
            self._scalar(op, other)
        other = self._lift(other)
        if not isinstance(other, OpMixin):
            raise TypeError(
                f"{op}: unsupported operand of type {type(other).__name__} ({other!r}); "
                f"use a tensor, an array or a number (at {user_frame()})"
            )
        return other

    def _binary(self, op: Op, other, reverse: bool = False):
        other = self._operand(op.name.lower(), other)
        x, y = (other, self) if reverse else (self, other)
        shape = broadcast_shapes(x.shape, y.shape, op.name.lower())
        x = x if x.shape == shape else x.broadcast_to(shape)
        y = y if y.shape == shape else y.broadcast_to(shape)
        return x._apply(op, (x, y))

    # ------------------------------------------------------------ elementwise
    def __add__(self, other):
        if isinstance(other, Scalar):
            return self._apply(Op.ADD_SCALAR, (self,), self._scalar("add", other))
        return self._binary(Op.ADD, other)

    __radd__ = __add__

    def __mul__(self, other):
        if isinstance(other, Scalar):
            return self._apply(Op.MUL_SCALAR, (self,), self._scalar("mul", other))
        return self._binary(Op.MUL, other)

    __rmul__ = __mul__

    def __sub__(self, other):
        if isinstance(other, Scalar):
            return self._apply(Op.ADD_SCALAR, (self,), self._scalar("add", -_py(other)))
        return self._binary(Op.ADD, self._operand("add", other).neg())

    def __rsub__(self, other):
        return self.neg() + other

    def __truediv__(self, other):
        if isinstance(other, Scalar):
            return self._apply(Op.DIV_SCALAR, (self,), self._scalar("div", other))
        return self._binary(Op.DIV, other)

    def __rtruediv__(self, other):
        return self._binary(Op.DIV, other, reverse=True)

    def __pow__(self, other):
        if isinstance(other, Scalar):
            return self._apply(Op.POW_SCALAR, (self,), self._scalar("pow", other))
        return self._binary(Op.POW, other)

    def __rpow__(self, other):
        if isinstance(other, Scalar):  # c ** x as numpy computes it (c <= 0 included)
            c = self._scalar("pow", other)
            x = self.cast(scalar_dtype(self.dtype, c))
            base = x._const(c, x.shape, x.dtype)
            return base._apply(Op.POW, (base, x))
        return self._binary(Op.POW, other, reverse=True)

    def __neg__(self):
        return self.neg()

    def __matmul__(self, other):
        return self.matmul(other)

    def __rmatmul__(self, other):
        return self._operand("matmul", other).matmul(self)

    def __lt__(self, other):
        return self._binary(Op.CMPLT, other)

    def __gt__(self, other):
        return self._binary(Op.CMPLT, other, reverse=True)

    # x <= y as (x < y) or (x == y), not as not (x > y): false where either is NaN, as in numpy
    def __le__(self, other):
        return self.__lt__(other).where(True, self.eq(other))

    def __ge__(self, other):
        return self.__gt__(other).where(True, self.eq(other))

    def logical_not(self):
        return self.where(
            self._const(False, self.shape, "bool"), self._const(True, self.shape, "bool")
        )

    def neg(self):
        return self._apply(Op.NEG, (self,))

    def exp(self):
        return self._apply(Op.EXP, (self,))

    def log(self):
        return self._apply(Op.LOG, (self,))

    def tanh(self):
        return self._apply(Op.TANH, (self,))

    def relu(self):
        return self._apply(Op.RELU, (self,))

    def sqrt(self):
        return self._apply(Op.SQRT, (self,))

    def stop_gradient(self):
        """The same value, through which no gradient flows."""
        return self._apply(Op.STOP_GRADIENT, (self,))

    def cast(self, dtype: str):
        return self if self.dtype == dtype else self._apply(Op.CAST, (self,), dtype)

    def maximum(self, other):
        return self._binary(Op.MAXIMUM, other)

    def eq(self, other):
        return self._binary(Op.CMPEQ, other)

    def where(self, x, y):
        """`self` is a bool condition: x where it holds, y elsewhere."""
        x, y = self._lift_like(x, y)
        return self._apply(Op.WHERE, (self, x, y))

    def _lift_like(self, x, y):
        ref = y if isinstance(x, Scalar) else x
        x = ref._const(_py(x), self.shape, ref.dtype) if isinstance(x, Scalar) else x
        y = x._const(_py(y), self.shape, x.dtype) if isinstance(y, Scalar) else y
        return x, y

    # ------------------------------------------------------------ reductions
    def sum(self, axes=None):
        return self._apply(Op.SUM, (self,), normalize_axes(axes, len(self.shape), "summation"))

    def max(self, axes=None):
        return self._apply(Op.MAX, (self,), normalize_axes(axes, len(self.shape), "max"))

    def logsumexp(self, axes=None):
        return self._apply(
            Op.LOGSUMEXP, (self,), normalize_axes(axes, len(self.shape), "logsumexp")
        )

    def logsoftmax(self):
        return self._apply(Op.LOGSOFTMAX, (self,))

    def all_reduce(self, reduction: str = "sum"):
        """The elementwise sum or max of this value over every process (`needlec.distributed`)."""
        return self._apply(Op.ALLREDUCE, (self,), reduction)

    # ------------------------------------------------------------ movement
    def reshape(self, shape):
        shape = _ints(shape, "reshape")
        if shape.count(-1) == 1:
            known = math.prod(d for d in shape if d != -1)
            size = math.prod(self.shape)
            if known == 0 or size % known:
                raise ShapeError(f"reshape: cannot reshape {self.shape} to {shape}")
            shape = tuple(size // known if d == -1 else d for d in shape)
        return self if shape == self.shape else self._apply(Op.RESHAPE, (self,), shape)

    def broadcast_to(self, shape):
        shape = _ints(shape, "broadcast_to")
        if any(d < 0 for d in shape):
            raise ShapeError(f"broadcast_to: negative dimension in {shape}")
        return self if shape == self.shape else self._apply(Op.BROADCAST, (self,), shape)

    def permute(self, perm):
        perm = tuple(as_int(p, "permute", "an axis") for p in perm)
        if perm == tuple(range(len(self.shape))):
            return self
        return self._apply(Op.PERMUTE, (self,), perm)

    def transpose(self, axes=None):
        """needle's transpose: swap two axes (the last two when axes is None)."""
        n = len(self.shape)
        if n < 2 and axes is None:
            raise ShapeError(f"transpose: needs at least 2 dims, got shape {self.shape}")
        if axes is not None and len(tuple(axes)) != 2:
            raise ShapeError(f"transpose: axes must name two axes, got {axes}")
        i, j = (n - 2, n - 1) if axes is None else normalize_axes(axes, n, "transpose")
        perm = list(range(n))
        perm[i], perm[j] = perm[j], perm[i]
        return self.permute(perm)

    def flip(self, axes):
        axes = normalize_axes(axes, len(self.shape), "flip")
        return self._apply(Op.FLIP, (self,), axes) if axes else self

    def pad(self, widths):
        widths = tuple((int(lo), int(hi)) for lo, hi in widths)
        return (
            self if not any(lo or hi for lo, hi in widths) else self._apply(Op.PAD, (self,), widths)
        )

    def slice(self, spec):
        """spec: one `slice` (or (start, stop, step)) per dim; steps must be positive."""
        spec = list(spec)
        if len(spec) != len(self.shape):
            raise ShapeError(
                f"slice: {len(spec)} slice(s) given for a {len(self.shape)}-d input of shape "
                f"{self.shape}; give one per dim"
            )
        norm = []
        for s, d in zip(spec, self.shape, strict=True):
            start, stop, step = s.indices(d) if isinstance(s, slice) else s
            if step <= 0:
                raise ShapeError(f"slice: step must be positive, got {step}")
            norm.append((start, max(start, stop), step))
        norm = tuple(norm)
        if all(n == (0, d, 1) for n, d in zip(norm, self.shape, strict=True)):
            return self
        return self._apply(Op.SLICE, (self,), norm)

    def _dilation(self, op: str, axes, dilation) -> tuple[tuple[int, ...], int]:
        d = as_int(dilation, op, "dilation")
        if d < 0:
            raise ShapeError(f"{op}: dilation must not be negative, got {d}")
        return normalize_axes(axes, len(self.shape), op), d

    def dilate(self, axes, dilation: int):
        axes, dilation = self._dilation("dilate", axes, dilation)
        if dilation == 0 or not axes:
            return self
        return self._apply(Op.DILATE, (self,), (axes, dilation))

    def undilate(self, axes, dilation: int):
        axes, dilation = self._dilation("undilate", axes, dilation)
        return self.slice(
            [(0, d, dilation + 1 if i in axes else 1) for i, d in enumerate(self.shape)]
        )

    # ------------------------------------------------------------ compute
    def matmul(self, other):
        return self._apply(Op.MATMUL, (self, other))

    def conv(self, weight, stride: int = 1, padding: int = 0):
        return self._apply(Op.CONV, (self, weight), conv_arg(stride, padding))

    def conv_input_grad(self, weight, stride: int, padding: int, hw: tuple[int, int]):
        """The gradient of `conv(x, weight, stride, padding)` with respect to x (spatial size
        `hw`), for this output gradient: the adjoint of the conv in x (a transposed conv)."""
        arg = conv_arg(stride, padding, "conv_input_grad") + _pair(hw, "conv_input_grad", "hw")
        return self._apply(Op.CONV_INPUT_GRAD, (self, weight), arg)

    def conv_weight_grad(self, grad, stride: int, padding: int, khw: tuple[int, int]):
        """The gradient of `conv(self, w, stride, padding)` with respect to w (a `khw` kernel),
        for the output gradient `grad`."""
        arg = conv_arg(stride, padding, "conv_weight_grad") + _pair(khw, "conv_weight_grad", "khw")
        return self._apply(Op.CONV_WEIGHT_GRAD, (self, grad), arg)


def conv_arg(stride, padding, op: str = "conv") -> tuple[int, int]:
    """(stride, padding) of a conv (or of its gradient `op`), checked: ints, stride positive,
    padding not negative."""
    stride, padding = as_int(stride, op, "stride"), as_int(padding, op, "padding")
    if stride <= 0 or padding < 0:
        raise ShapeError(
            f"{op}: stride {stride} must be positive and padding {padding} not negative"
        )
    return stride, padding


def _pair(value, op: str, what: str) -> tuple[int, int]:
    """Two ints (a spatial size), or a TypeError naming the op."""
    if not isinstance(value, tuple | list) or len(value) != 2:
        raise TypeError(f"{op}: {what} must be two ints (height, width), not {value!r}")
    return as_int(value[0], op, what), as_int(value[1], op, what)


def stack(values, axis: int = 0):
    """Stack same-shaped values along a new axis."""
    values = tuple(values)
    if not values:
        raise ShapeError("stack: needs at least one tensor")
    return values[0]._apply(Op.STACK, values, as_int(axis, "stack", "axis"))
