"""The device API of needle's NDArray backends (hw3's `ndarray_backend_cpu` and
`ndarray_backend_numpy`): a flat `Array` buffer and the kernels that read and write it.

Every needlec device (`cpu()`, `cuda()`, `cpu_numpy()`) exposes these functions as attributes, as
needle's devices do (`nd.cpu().ewise_add(a._handle, b._handle, out._handle)`), and every
NDArray's `_handle` is an `Array`. The buffers live in host memory and numpy does the arithmetic.

The conventions are needle's:

- an `Array` is a flat buffer of `size` elements (float32 unless a dtype is given); `ptr()` is
  the address of its first element, so views of one buffer report the same `ptr()`;
- strided access takes `shape`, `strides` (in elements) and `offset` (in elements): element
  `(i0, i1, ...)` lives at `offset + i0 * strides[0] + i1 * strides[1] + ...`;
- every other argument is compact: `ewise_*`, `scalar_*`, `matmul` and the reductions read and
  write whole buffers, and write into `out` (which may be one of the inputs);
- comparisons (`eq`, `ge`) write 1 or 0 in `out`'s dtype; `reduce_max` and `reduce_sum` reduce
  consecutive runs of `reduce_size` elements (the last, contiguous dimension of a compact array);
- `matmul_tiled(a, b, out, m, n, p)` multiplies an (m, n) matrix by an (n, p) one, all three
  stored as compact grids of `__tile_size__` x `__tile_size__` tiles: `a` as (m/T, n/T, T, T),
  `b` as (n/T, p/T, T, T) and `out` as (m/T, p/T, T, T); m, n and p are multiples of T.

Bad arguments (a size that does not match, a strided view that leaves its buffer) raise
ValueError or TypeError naming the function and the sizes or shapes involved.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

DTYPES = ("float32", "float64", "int32", "int64", "bool")
_SUPPORTED = frozenset(np.dtype(d) for d in DTYPES)

__tile_size__ = 8  # needle's CPU backend works on 8 x 8 tiles

__all__ = [
    "Array",
    "to_numpy",
    "from_numpy",
    "fill",
    "compact",
    "ewise_setitem",
    "scalar_setitem",
    "ewise_add",
    "scalar_add",
    "ewise_mul",
    "scalar_mul",
    "ewise_div",
    "scalar_div",
    "scalar_power",
    "ewise_maximum",
    "scalar_maximum",
    "ewise_eq",
    "scalar_eq",
    "ewise_ge",
    "scalar_ge",
    "ewise_log",
    "ewise_exp",
    "ewise_tanh",
    "matmul",
    "matmul_tiled",
    "reduce_max",
    "reduce_sum",
]


class Array:
    """A flat buffer of `size` elements on a device (host memory, held by a numpy array;
    `array` is the flat 1-D numpy view of it).

    >>> a = Array(4)
    >>> a.size, a.dtype
    (4, dtype('float32'))
    >>> a.ptr() == a.array.ctypes.data
    True
    """

    # `_data` is C-contiguous; an NDArray's result wraps its numpy array as it is (n-d), and
    # the flat view replaces it on first use (reshaping every op's result would cost time)
    __slots__ = ("_data",)

    def __init__(self, size: int, dtype: Any = "float32"):
        if not isinstance(size, numbers.Integral) or size < 0:
            raise ValueError(f"Array: size must be a non-negative integer, got {size!r}")
        self._data = np.empty(int(size), dtype=_check_dtype("Array", dtype))

    @staticmethod
    def wrap(buffer: np.ndarray) -> Array:
        """An Array over `buffer` (a 1-D, C-contiguous, writeable numpy array), sharing its
        memory."""
        if buffer.ndim != 1 or not buffer.flags.c_contiguous or not buffer.flags.writeable:
            raise ValueError(
                f"Array.wrap: needs a 1-D C-contiguous writeable buffer, got shape "
                f"{buffer.shape} with strides {buffer.strides}"
                + ("" if buffer.flags.writeable else ", read-only")
            )
        _check_dtype("Array.wrap", buffer.dtype)
        return _wrap(buffer)

    @property
    def array(self) -> np.ndarray:
        """The buffer as a flat 1-D numpy array (shared memory, not a copy)."""
        data = self._data
        if data.ndim != 1:
            data = self._data = data.reshape(-1)
        return data

    @property
    def size(self) -> int:
        """The number of elements."""
        return self._data.size

    @property
    def dtype(self) -> np.dtype:
        """The element type."""
        return self._data.dtype

    def ptr(self) -> int:
        """The address of the first element: equal for every view of one buffer."""
        return self._data.ctypes.data

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        """The flat buffer itself (no copy unless asked for or a dtype change needs one)."""
        if dtype is not None and np.dtype(dtype) != self.array.dtype:
            if copy is False:
                raise ValueError("Array.__array__: a dtype change needs a copy")
            return self.array.astype(dtype)
        return self.array.copy() if copy else self.array

    def __repr__(self) -> str:
        return f"Array(size={self.size}, dtype={self.array.dtype.name}, ptr={self.ptr():#x})"


def _wrap(buffer: np.ndarray) -> Array:
    """`Array.wrap` without checks, for NDArray's hot paths: `buffer` is C-contiguous, of any
    shape, and of a supported dtype."""
    arr = _new_object(Array)
    arr._data = buffer
    return arr


_new_object = object.__new__


def _check_dtype(fn: str, dtype: Any) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in _SUPPORTED:
        raise TypeError(f"{fn}: unsupported dtype {dt.name!r}; use one of {', '.join(DTYPES)}")
    return dt


def _buf(fn: str, name: str, x: Any) -> np.ndarray:
    """The numpy buffer of an Array argument, or a TypeError naming the function."""
    if not isinstance(x, Array):
        raise TypeError(
            f"{fn}: {name} must be an Array (an NDArray's _handle), got {type(x).__name__}"
        )
    return x.array


def _same_size(fn: str, **arrays: Array) -> list[np.ndarray]:
    """The buffers of Arrays that must all hold the same number of elements."""
    bufs = [_buf(fn, k, v) for k, v in arrays.items()]
    if len({b.size for b in bufs}) > 1:
        sizes = ", ".join(f"{k} has {b.size}" for k, b in zip(arrays, bufs, strict=True))
        raise ValueError(f"{fn}: sizes differ ({sizes} elements)")
    return bufs


def _size_is(fn: str, name: str, buf: np.ndarray, size: int, what: str) -> None:
    if buf.size != size:
        raise ValueError(f"{fn}: {name} has {buf.size} elements, {what} needs {size}")


def strided_view(
    fn: str, buf: np.ndarray, shape: Sequence[int], strides: Sequence[int], offset: int
) -> np.ndarray:
    """A numpy view of the flat `buf` with needle's shape, strides and offset (in elements),
    after checking that every element it reaches lies inside the buffer; errors name `fn`.

    >>> strided_view("demo", np.arange(6.0), (2, 2), (1, 3), 1)
    array([[1., 4.],
           [2., 5.]])
    """
    shape, strides, offset = tuple(map(int, shape)), tuple(map(int, strides)), int(offset)
    if len(shape) != len(strides):
        raise ValueError(f"{fn}: shape {shape} and strides {strides} differ in length")
    if any(s < 0 for s in shape):
        raise ValueError(f"{fn}: negative dimension in shape {shape}")
    item = buf.itemsize
    if 0 in shape:  # no element is read: the offset does not matter
        return np.ndarray(shape, buf.dtype, buf, 0, tuple(s * item for s in strides))
    lo = offset + sum((n - 1) * s for n, s in zip(shape, strides, strict=True) if s < 0)
    hi = offset + sum((n - 1) * s for n, s in zip(shape, strides, strict=True) if s > 0)
    if lo < 0 or hi >= buf.size:
        raise ValueError(
            f"{fn}: shape {shape}, strides {strides} and offset {offset} reach elements "
            f"{lo}..{hi}, outside a buffer of {buf.size}"
        )
    return np.ndarray(shape, buf.dtype, buf, offset * item, tuple(s * item for s in strides))


def _scalar(fn: str, val: Any) -> Any:
    if isinstance(val, np.generic):
        return val.item()
    if isinstance(val, numbers.Number):
        return val
    raise TypeError(f"{fn}: val must be a number, got {type(val).__name__}")


# ---- buffers and layout --------------------------------------------------------------------
def to_numpy(a: Array, shape: Sequence[int], strides: Sequence[int], offset: int) -> np.ndarray:
    """A C-contiguous numpy copy of the strided view (`shape`, `strides`, `offset`) of `a`."""
    return np.array(strided_view("to_numpy", _buf("to_numpy", "a", a), shape, strides, offset))


def from_numpy(a: Any, out: Array) -> None:
    """Copy the elements of numpy array `a`, in row-major order, into `out` (same size)."""
    buf = _buf("from_numpy", "out", out)
    src = np.asarray(a)
    if src.size != buf.size:
        raise ValueError(
            f"from_numpy: array of shape {src.shape} ({src.size} elements) into an Array of "
            f"{buf.size}"
        )
    buf[...] = src.reshape(-1)


def fill(out: Array, val: Any) -> None:
    """Set every element of `out` to `val`."""
    _buf("fill", "out", out).fill(_scalar("fill", val))


def compact(
    a: Array, out: Array, shape: Sequence[int], strides: Sequence[int], offset: int
) -> None:
    """Write the strided view (`shape`, `strides`, `offset`) of `a` into the compact `out`, in
    row-major order; `out` holds prod(shape) elements."""
    buf = _buf("compact", "out", out)
    view = strided_view("compact", _buf("compact", "a", a), shape, strides, offset)
    _size_is("compact", "out", buf, view.size, f"shape {view.shape}")
    buf.reshape(view.shape)[...] = view


def ewise_setitem(
    a: Array, out: Array, shape: Sequence[int], strides: Sequence[int], offset: int
) -> None:
    """Write the compact `a` (prod(shape) elements, row-major) into the strided view (`shape`,
    `strides`, `offset`) of `out`, in place."""
    src = _buf("ewise_setitem", "a", a)
    view = strided_view("ewise_setitem", _buf("ewise_setitem", "out", out), shape, strides, offset)
    _size_is("ewise_setitem", "a", src, view.size, f"shape {view.shape}")
    view[...] = src.reshape(view.shape)


def scalar_setitem(
    size: int, val: Any, out: Array, shape: Sequence[int], strides: Sequence[int], offset: int
) -> None:
    """Set every element of the strided view (`shape`, `strides`, `offset`) of `out` to `val`,
    in place; `size` is the number of elements of the view, prod(shape)."""
    view = strided_view(
        "scalar_setitem", _buf("scalar_setitem", "out", out), shape, strides, offset
    )
    if int(size) != view.size:
        raise ValueError(f"scalar_setitem: size {size}, but shape {view.shape} has {view.size}")
    view[...] = _scalar("scalar_setitem", val)


# ---- elementwise ---------------------------------------------------------------------------
def _make_ewise(name: str, ufunc: np.ufunc, what: str):
    def kernel(a: Array, b: Array, out: Array) -> None:
        x, y, o = _same_size(name, a=a, b=b, out=out)
        ufunc(x, y, out=o, casting="unsafe")

    kernel.__name__ = kernel.__qualname__ = name
    kernel.__doc__ = f"out = {what} elementwise; a, b and out hold the same number of elements."
    return kernel


def _make_scalar(name: str, ufunc: np.ufunc, what: str):
    def kernel(a: Array, val: Any, out: Array) -> None:
        x, o = _same_size(name, a=a, out=out)
        ufunc(x, _scalar(name, val), out=o, casting="unsafe")

    kernel.__name__ = kernel.__qualname__ = name
    kernel.__doc__ = f"out = {what} elementwise, with a scalar val; a and out are the same size."
    return kernel


def _make_unary(name: str, ufunc: np.ufunc, what: str):
    def kernel(a: Array, out: Array) -> None:
        x, o = _same_size(name, a=a, out=out)
        ufunc(x, out=o, casting="unsafe")

    kernel.__name__ = kernel.__qualname__ = name
    kernel.__doc__ = f"out = {what} elementwise; a and out hold the same number of elements."
    return kernel


ewise_add = _make_ewise("ewise_add", np.add, "a + b")
scalar_add = _make_scalar("scalar_add", np.add, "a + val")
ewise_mul = _make_ewise("ewise_mul", np.multiply, "a * b")
scalar_mul = _make_scalar("scalar_mul", np.multiply, "a * val")
ewise_div = _make_ewise("ewise_div", np.true_divide, "a / b")
scalar_div = _make_scalar("scalar_div", np.true_divide, "a / val")
scalar_power = _make_scalar("scalar_power", np.power, "a ** val")
ewise_maximum = _make_ewise("ewise_maximum", np.maximum, "max(a, b)")
scalar_maximum = _make_scalar("scalar_maximum", np.maximum, "max(a, val)")
ewise_eq = _make_ewise("ewise_eq", np.equal, "1 where a == b else 0")
scalar_eq = _make_scalar("scalar_eq", np.equal, "1 where a == val else 0")
ewise_ge = _make_ewise("ewise_ge", np.greater_equal, "1 where a >= b else 0")
scalar_ge = _make_scalar("scalar_ge", np.greater_equal, "1 where a >= val else 0")
ewise_log = _make_unary("ewise_log", np.log, "log(a)")
ewise_exp = _make_unary("ewise_exp", np.exp, "exp(a)")
ewise_tanh = _make_unary("ewise_tanh", np.tanh, "tanh(a)")


# ---- matrix products and reductions --------------------------------------------------------
def _dims(fn: str, **dims: int) -> list[int]:
    out = []
    for k, v in dims.items():
        if not isinstance(v, numbers.Integral) or v < 0:
            raise ValueError(f"{fn}: {k} must be a non-negative integer, got {v!r}")
        out.append(int(v))
    return out


def matmul(a: Array, b: Array, out: Array, m: int, n: int, p: int) -> None:
    """out (m, p) = a (m, n) @ b (n, p); all three compact and row-major."""
    m, n, p = _dims("matmul", m=m, n=n, p=p)
    x, y, o = _buf("matmul", "a", a), _buf("matmul", "b", b), _buf("matmul", "out", out)
    _size_is("matmul", "a", x, m * n, f"({m}, {n})")
    _size_is("matmul", "b", y, n * p, f"({n}, {p})")
    _size_is("matmul", "out", o, m * p, f"({m}, {p})")
    o.reshape(m, p)[...] = x.reshape(m, n) @ y.reshape(n, p)


def matmul_tiled(a: Array, b: Array, out: Array, m: int, n: int, p: int) -> None:
    """out = a @ b for an (m, n) and an (n, p) matrix stored as compact tile grids: a as
    (m/T, n/T, T, T), b as (n/T, p/T, T, T), out as (m/T, p/T, T, T) with T = `__tile_size__`;
    out tile (i, j) = sum over k of a tile (i, k) @ b tile (k, j). Overwrites out."""
    t = __tile_size__
    m, n, p = _dims("matmul_tiled", m=m, n=n, p=p)
    if m % t or n % t or p % t:
        raise ValueError(
            f"matmul_tiled: m, n, p = {m}, {n}, {p} must be multiples of the tile size {t}"
        )
    x = _buf("matmul_tiled", "a", a)
    y = _buf("matmul_tiled", "b", b)
    o = _buf("matmul_tiled", "out", out)
    _size_is("matmul_tiled", "a", x, m * n, f"({m // t}, {n // t}, {t}, {t}) tiles")
    _size_is("matmul_tiled", "b", y, n * p, f"({n // t}, {p // t}, {t}, {t}) tiles")
    _size_is("matmul_tiled", "out", o, m * p, f"({m // t}, {p // t}, {t}, {t}) tiles")
    # tiles to row-major matrices, one BLAS product, and back to tiles
    dense_a = x.reshape(m // t, n // t, t, t).transpose(0, 2, 1, 3).reshape(m, n)
    dense_b = y.reshape(n // t, p // t, t, t).transpose(0, 2, 1, 3).reshape(n, p)
    prod_ = dense_a @ dense_b
    o.reshape(m // t, p // t, t, t)[...] = prod_.reshape(m // t, t, p // t, t).transpose(0, 2, 1, 3)


def _reduce_args(fn: str, a: Array, out: Array, reduce_size: int) -> tuple[np.ndarray, np.ndarray]:
    (r,) = _dims(fn, reduce_size=reduce_size)
    x, o = _buf(fn, "a", a), _buf(fn, "out", out)
    if x.size != o.size * r:
        raise ValueError(
            f"{fn}: a has {x.size} elements, but out has {o.size} and reduce_size is {r} "
            f"(a needs {o.size * r})"
        )
    return x.reshape(o.size, r), o


def reduce_max(a: Array, out: Array, reduce_size: int) -> None:
    """out[i] = max of a[i * reduce_size : (i + 1) * reduce_size]."""
    x, o = _reduce_args("reduce_max", a, out, reduce_size)
    if x.shape[1] == 0 and o.size:
        raise ValueError("reduce_max: reduce_size is 0 (the max of no elements)")
    o[...] = x.max(axis=1)


def reduce_sum(a: Array, out: Array, reduce_size: int) -> None:
    """out[i] = sum of a[i * reduce_size : (i + 1) * reduce_size] (0 when reduce_size is 0)."""
    x, o = _reduce_args("reduce_sum", a, out, reduce_size)
    o[...] = x.sum(axis=1, dtype=None if o.dtype == np.bool_ else o.dtype)
