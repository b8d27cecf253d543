"""needle's strided NDArray on a device.

An NDArray's `_handle` is a flat buffer (`.size`, `.ptr()`) shared by every view of it, and each
device exposes needle's backend kernels (`Array`, `compact`, `ewise_add`, `matmul_tiled`, ...) as
attributes, as needle's devices do. On `cpu()` and `cpu_numpy()` the buffer is an
`ndarray_backend.Array` in host memory and numpy does the arithmetic. On `cuda()` (where a GPU is)
it is a `codegen.cuda.storage.DeviceBuffer` in device memory: data moves only through
`from_numpy` / `numpy()` / `to`, views share the device buffer, and every op runs as a generated
CUDA kernel (`codegen.cuda.eager`), compiled once per signature."""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import ndarray_backend
from .ir.ops import user_frame
from .ndarray_backend import DTYPES, Array
from .ndarray_backend import _wrap as _wrap_buffer

# needle's names for its backend modules; here one module serves every device
ndarray_backend_cpu = ndarray_backend_numpy = ndarray_backend
_NAMES = {np.dtype(d): d for d in DTYPES}  # dtype.name is slow; this is on every op's path
Shape = tuple[int, ...]


prod = math.prod  # needle's name for the product of a shape


def _dtype(dtype: Any) -> str:
    """Normalise a dtype (string, numpy dtype or type; None is float32): `np.int32` -> "int32";
    other integer and float dtypes widen as `_infer_dtype` says (`"uint8"` -> "int64")."""
    return _infer_dtype(np.dtype("float32" if dtype is None else dtype))


def _infer_dtype(dtype: np.dtype) -> str:
    """The supported dtype that holds every value of a numpy one: any other integer dtype
    (int8, uint8, int16, uint16, uint32, uint64) -> int64, float16 -> float32, wider floats
    -> float64; uint64 values above 2**63 are refused where the data is converted."""
    if dtype in _NAMES:
        return _NAMES[dtype]
    if dtype.kind == "f":
        return "float32" if dtype.itemsize <= 4 else "float64"
    if dtype.kind in "iu":
        return "int64"
    raise TypeError(f"unsupported dtype {dtype.name!r}; NDArray supports {', '.join(DTYPES)}")


def _check_fits(data: np.ndarray, dtype: str) -> None:
    """Integers widened to int32 or int64 must fit (a uint64 above 2**63 would wrap)."""
    if data.dtype.kind not in "iu" or dtype not in ("int32", "int64") or not data.size:
        return
    info = np.iinfo(dtype)
    lo, hi = int(data.min()), int(data.max())
    if lo < info.min or hi > info.max:
        raise ValueError(
            f"integer {hi if hi > info.max else lo} ({data.dtype}) does not fit {dtype}"
        )


def _shape_arg(shape: tuple) -> Shape:
    """Accept `f(3, 4)` as well as `f((3, 4))`."""
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    return tuple(int(s) for s in shape)


def _cuda_available() -> bool:
    """True when pycuda imports and a CUDA device initialises (the CUDA runtime's `available`,
    asked once there)."""
    from .codegen.cuda.runtime import available

    return available()


class BackendDevice:
    """A device whose memory holds NDArray buffers (host memory for every device, for now).

    As in needle, the device's backend module `mod` answers for attributes the device lacks:
    `device.Array(n)`, `device.compact(...)`, `device.ewise_add(a, b, out)`,
    `device.matmul_tiled(...)`, `device.__tile_size__` (see `needlec.ndarray_backend`).
    """

    _MOD_DUNDERS = frozenset({"__tile_size__"})  # the module's dunders a device passes on

    def __init__(self, name: str, enabled: Callable[[], bool], mod: Any = ndarray_backend):
        self.name = name
        self.on_gpu = name == "cuda"  # its arrays live in device memory
        self._enabled = enabled
        self.mod = mod

    def __getattr__(self, name: str) -> Any:
        """The backend module's kernels and constants (called only for missing attributes)."""
        if name.startswith("__") and name not in BackendDevice._MOD_DUNDERS:
            raise AttributeError(name)  # copy, pickle and numpy probe dunders: never the module's
        mod = self.__dict__.get("mod")
        if self.__dict__.get("on_gpu") and name not in self._MOD_DUNDERS and self.enabled():
            from .codegen.cuda.eager import BACKEND

            if name in BACKEND:  # Array, to_numpy, from_numpy, fill, compact: on the device
                return BACKEND[name]
            raise AttributeError(
                f"{self!r}.{name}: needle's elementwise and reduction kernels work on host "
                "buffers; a cuda() array's ops run as generated CUDA kernels: use NDArray or "
                "Tensor ops"
            )
        public = getattr(mod, "__all__", None)
        if public is not None and name not in public and name not in BackendDevice._MOD_DUNDERS:
            raise AttributeError(f"{self!r} has no attribute {name!r}")
        try:
            return getattr(mod, name)
        except AttributeError:
            raise AttributeError(f"{self!r} has no attribute {name!r}") from None

    def __dir__(self) -> list[str]:
        names = set(super().__dir__())
        mod = self.__dict__.get("mod")
        names.update(getattr(mod, "__all__", ()))
        names.update(n for n in BackendDevice._MOD_DUNDERS if hasattr(mod, n))
        return sorted(names)

    def enabled(self) -> bool:
        """Whether arrays can be created on this device."""
        return self._enabled()

    def __repr__(self) -> str:
        return self.__dict__.get("name", "?") + "()"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BackendDevice) and self.name == other.name

    def __hash__(self) -> int:
        return hash(self.name)

    def __reduce__(self):
        """Pickled by name: unpickling gives this process's device of that name."""
        return (as_device, (self.name,))

    def _wrap(self, data: Any, dtype: Any) -> NDArray:
        return NDArray.from_numpy(np.asarray(data).astype(_dtype(dtype)), self)

    def rand(self, *shape: int, dtype: Any = "float32") -> NDArray:
        """Uniform [0, 1) draws from numpy's global generator, as `np.random.rand(*shape)`."""
        return self._wrap(np.random.rand(*_shape_arg(shape)), dtype)

    def randn(self, *shape: int, dtype: Any = "float32") -> NDArray:
        """Standard normal draws from numpy's global generator, as `np.random.randn(*shape)`."""
        return self._wrap(np.random.randn(*_shape_arg(shape)), dtype)

    def one_hot(self, n: int, i: Any, dtype: Any = "float32") -> NDArray:
        """Rows of the n x n identity picked by the int array `i`: `np.eye(n)[i]`."""
        idx = np.asarray(i)
        if idx.dtype.kind not in "iu":
            idx = idx.astype(np.int64)
        return self._wrap(np.eye(n)[idx], dtype)

    def zeros(self, *shape: int, dtype: Any = "float32") -> NDArray:
        """An array of zeros."""
        return self.full(_shape_arg(shape), 0, dtype)

    def ones(self, *shape: int, dtype: Any = "float32") -> NDArray:
        """An array of ones."""
        return self.full(_shape_arg(shape), 1, dtype)

    def empty(self, shape: int | Sequence[int], dtype: Any = "float32") -> NDArray:
        """An uninitialised array."""
        shape = (shape,) if isinstance(shape, numbers.Integral) else tuple(shape)
        return NDArray.make(shape, device=self, dtype=dtype)

    def full(self, shape: int | Sequence[int], fill_value: Any, dtype: Any = "float32") -> NDArray:
        """An array filled with `fill_value`."""
        arr = self.empty(shape, dtype)
        arr.fill(fill_value)
        return arr


_DEVICES = {
    "cpu": BackendDevice("cpu", lambda: True),
    "cuda": BackendDevice("cuda", _cuda_available),
    "cpu_numpy": BackendDevice("cpu_numpy", lambda: True),
}


def cpu() -> BackendDevice:
    """The CPU device (later compiled through LLVM)."""
    return _DEVICES["cpu"]


def cuda() -> BackendDevice:
    """The CUDA device; `cuda().enabled()` is False without pycuda and a GPU."""
    return _DEVICES["cuda"]


def cpu_numpy() -> BackendDevice:
    """The plain numpy CPU device."""
    return _DEVICES["cpu_numpy"]


def default_device() -> BackendDevice:
    """The device used when none is given: `cpu()`."""
    return cpu()


def all_devices() -> list[BackendDevice]:
    """Every device, enabled or not: cpu, cuda, cpu_numpy."""
    return [cpu(), cuda(), cpu_numpy()]


def as_device(device: Any) -> BackendDevice:
    """A device given as a Device, by its name ("cpu", "cuda", "cpu_numpy"), or None (the
    default); anything else is a clear error.

    >>> as_device("cpu_numpy")
    cpu_numpy()
    """
    if device is None:
        return default_device()
    if isinstance(device, BackendDevice):
        return device
    if isinstance(device, str):
        found = _DEVICES.get(device.removesuffix("()"))
        if found is None:
            raise ValueError(
                f"device: unknown device name {device!r}; use one of "
                f"{', '.join(map(repr, _DEVICES))} or nc.cpu(), nc.cuda(), nc.cpu_numpy() "
                f"(at {user_frame()})"
            )
        return found
    raise TypeError(
        f"device: expected a Device (nc.cpu(), nc.cuda(), nc.cpu_numpy()) or its name, got "
        f"{type(device).__name__} {device!r} (at {user_frame()})"
    )


def _check_device(device: BackendDevice) -> BackendDevice:
    device = as_device(device)
    if not device.enabled():
        why = "no CUDA device or pycuda" if device.name == "cuda" else "device disabled"
        raise RuntimeError(f"{device!r} is not available: {why}")
    return device


@functools.lru_cache(maxsize=4096)
def _compact_strides(shape: Shape) -> Shape:
    stride, res = 1, []
    for s in reversed(shape):
        res.append(stride)
        stride *= s
    return tuple(reversed(res))


def _scalar(x: Any) -> Any:
    """numpy scalars become Python ones, so `float32 + np.float64(1)` stays float32."""
    return x.item() if isinstance(x, np.generic) else x


def _ewise(ufunc: np.ufunc, reflected: bool = False, cmp: bool = False) -> Callable:
    """An NDArray method applying `ufunc` with an NDArray of the same shape or a scalar."""

    def method(self: NDArray, other: Any) -> NDArray:
        return self._binary(other, ufunc, reflected, cmp)

    method.__name__ = ufunc.__name__
    method.__doc__ = f"Elementwise {ufunc.__name__} with an NDArray of the same shape or a scalar."
    return method


class NDArray:
    """A strided n-d array on a device; views (reshape, permute, slicing) share one buffer.

    >>> a = NDArray([[1.0, 2.0], [3.0, 4.0]])
    >>> a.permute((1, 0))[0, :]
    NDArray([[1. 3.]], device=cpu())
    """

    def __init__(self, other: Any, device: BackendDevice | None = None, dtype: Any = None):
        if isinstance(other, NDArray):
            data = other._view()
            device = device or other.device
        elif isinstance(other, np.ndarray):
            data = other
        else:
            data = np.asarray(other, dtype=_dtype(dtype))
        dtype = _dtype(dtype) if dtype is not None else _infer_dtype(data.dtype)
        _check_fits(data, dtype)
        arr = NDArray.from_numpy(np.array(data, dtype=dtype, order="C", copy=True), device)
        self.__dict__.update(arr.__dict__)

    @staticmethod
    def compact_strides(shape: Sequence[int]) -> Shape:
        """Row-major strides in elements: (2, 3, 4) -> (12, 4, 1)."""
        return _compact_strides(tuple(shape))

    @staticmethod
    def make(
        shape: Sequence[int],
        strides: Sequence[int] | None = None,
        device: BackendDevice | None = None,
        handle: Array | np.ndarray | None = None,
        offset: int = 0,
        dtype: Any = None,
    ) -> NDArray:
        """needle's low-level constructor: a new uninitialised compact array (a fresh `Array` of
        prod(shape) elements, float32 unless `dtype` says), or a view with `strides` and `offset`
        (in elements) of `handle`, an `Array` (another NDArray's `_handle`) or a 1-D
        C-contiguous numpy buffer, shared, whose dtype it takes.

        >>> a = NDArray.make((2, 3))
        >>> b = NDArray.make((3, 2), strides=(1, 3), handle=a._handle)
        >>> b._handle.ptr() == a._handle.ptr(), b.is_compact()
        (True, False)
        """
        shape = tuple(int(s) for s in shape)
        strides = NDArray.compact_strides(shape) if strides is None else tuple(map(int, strides))
        offset = int(offset)
        if len(strides) != len(shape):
            raise ValueError(f"NDArray.make: shape {shape} and strides {strides} differ in length")
        device = _check_device(device or default_device())
        if device.on_gpu:
            return _gpu_make(shape, strides, device, handle, offset, dtype)
        if handle is None:
            handle = Array(prod(shape), _dtype(dtype))
        else:
            if isinstance(handle, np.ndarray):
                handle = Array.wrap(handle)
            elif not isinstance(handle, Array):
                raise TypeError(
                    f"NDArray.make: handle must be an Array (an NDArray's _handle) or a numpy "
                    f"buffer, got {type(handle).__name__}"
                )
            if dtype is not None and _dtype(dtype) != _NAMES.get(handle.dtype):
                raise TypeError(
                    f"NDArray.make: dtype {_dtype(dtype)} does not match the handle's "
                    f"{handle.dtype}"
                )
            # the view must stay inside the buffer (raises naming shape, strides and offset)
            ndarray_backend.strided_view("NDArray.make", handle.array, shape, strides, offset)
        return NDArray._new(shape, strides, device, handle, offset)

    @staticmethod
    def _new(shape: Shape, strides: Shape, device: BackendDevice, handle: Array,
             offset: int, view: np.ndarray | None = None) -> NDArray:  # fmt: skip
        """`make` without checks, for the hot paths (every op result, every view)."""
        arr = object.__new__(NDArray)
        arr.shape, arr.strides, arr._device = shape, strides, device
        arr._handle, arr._offset, arr._np = handle, offset, view
        return arr

    @classmethod
    def from_numpy(cls, arr: Any, device: BackendDevice | None = None) -> NDArray:
        """Wrap a numpy array, without copying when it is C-contiguous and writeable."""
        if type(arr) is not np.ndarray:
            arr = np.asarray(arr)
        if arr.dtype not in _NAMES:
            arr = arr.astype(_infer_dtype(arr.dtype))
        flags = arr.flags
        if not (flags.c_contiguous and flags.writeable):
            arr = np.array(arr, order="C", copy=True)
        device = default_device() if device is None else _check_device(device)
        shape = arr.shape
        if device.on_gpu:  # copied into device memory
            return NDArray._new(shape, _compact_strides(shape), device, _gpu_buffer(arr), 0)
        return NDArray._new(shape, _compact_strides(shape), device, _wrap_buffer(arr), 0, arr)

    # ---- properties -------------------------------------------------------------------------
    @property
    def device(self) -> BackendDevice:
        return self._device

    @property
    def dtype(self) -> str:
        return _NAMES[self._handle._data.dtype]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return prod(self.shape)

    @property
    def offset(self) -> int:
        return self._offset

    @property
    def handle(self) -> np.ndarray:
        """The flat numpy buffer behind `_handle` (shared by every view of it; on `cuda()`
        a host copy of the device buffer)."""
        return self._handle.array

    @property
    def __cuda_array_interface__(self) -> dict:
        """The CUDA array interface (version 3) of an array on `cuda()`: its device address
        (offset included), shape, dtype, and strides in bytes (None when compact). An
        AttributeError on other devices, as the protocol asks of host arrays."""
        if not self._device.on_gpu:
            raise AttributeError("__cuda_array_interface__: not a cuda() array")
        item = self._handle.dtype.itemsize
        compact = self.strides == _compact_strides(self.shape)
        return {
            "shape": self.shape,
            "typestr": self._handle.dtype.str,
            "data": (self._handle.ptr() + self._offset * item, False),
            "strides": None if compact else tuple(s * item for s in self.strides),
            "version": 3,
        }

    @property
    def _shape(self) -> Shape:
        """needle's field name for `shape`."""
        return self.shape

    @property
    def _strides(self) -> Shape:
        """needle's field name for `strides`."""
        return self.strides

    @property
    def flat(self) -> Any:
        """A flat iterator over the shared buffer: `a.flat[j] += eps` changes `a` in place
        (on `cuda()`, element by element through the device)."""
        if self._device.on_gpu:
            return _DeviceFlat(self)
        return self._view().flat

    # ---- numpy interop ------------------------------------------------------------------------
    def _view(self) -> np.ndarray:
        """A writeable numpy view over the shared buffer with this array's shape and strides."""
        if self._np is None:
            h = self._handle.array
            item = h.itemsize
            strides = tuple(s * item for s in self.strides)
            view = np.ndarray(self.shape, h.dtype, h, self._offset * item, strides)
            if self._device.on_gpu:  # a host copy of the device buffer: never kept
                return view
            self._np = view
        return self._np

    def numpy(self) -> np.ndarray:
        """A fresh C-contiguous numpy copy."""
        return np.array(self._view(), order="C", copy=True)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        view = self._view()
        if dtype is not None and np.dtype(dtype) != view.dtype:
            if copy is False:
                raise ValueError("NDArray.__array__: a dtype change needs a copy")
            return view.astype(dtype)
        return np.array(view, copy=True) if copy else view.view()

    def __repr__(self) -> str:
        return "NDArray(" + self.numpy().__str__() + f", device={self.device})"

    def __reduce__(self):
        """Pickled as a compact copy of its values and its device (a view pickles its own
        elements, not the buffer it shares)."""
        return (NDArray.from_numpy, (self.numpy(), self.device))

    def __str__(self) -> str:
        return self.numpy().__str__()

    # ---- layout -------------------------------------------------------------------------------
    def is_compact(self) -> bool:
        """Row-major strides, offset 0, and the buffer holds exactly this array."""
        return (
            self.strides == _compact_strides(self.shape)
            and self._offset == 0
            and self._handle._data.size == self.size
        )

    def compact(self) -> NDArray:
        """Self when compact, else a compact copy."""
        if self.is_compact():
            return self
        if self._device.on_gpu:
            return _gpu_clone(self)
        return NDArray.from_numpy(self.numpy(), self.device)

    def as_strided(self, shape: Sequence[int], strides: Sequence[int]) -> NDArray:
        """A view of the same buffer with new shape and strides (in elements)."""
        if len(shape) != len(strides):
            raise ValueError(f"as_strided: shape {tuple(shape)} and strides {tuple(strides)}")
        return NDArray.make(shape, strides, self.device, self._handle, self._offset)

    def reshape(self, new_shape: Sequence[int]) -> NDArray:
        """A view with a new shape (one dim may be -1); compacts first when needed."""
        new_shape = tuple(int(s) for s in new_shape)
        if new_shape.count(-1) > 1:
            raise ValueError(f"cannot reshape {self.shape} to {new_shape}: more than one -1")
        if -1 in new_shape:
            rest = prod(s for s in new_shape if s != -1)
            if rest == 0 or self.size % rest:
                raise ValueError(f"cannot reshape array of shape {self.shape} to {new_shape}")
            new_shape = tuple(self.size // rest if s == -1 else s for s in new_shape)
        if prod(new_shape) != self.size or any(s < 0 for s in new_shape):
            raise ValueError(f"cannot reshape array of shape {self.shape} to {new_shape}")
        base = self.compact()
        return NDArray._new(new_shape, _compact_strides(new_shape), base.device, base._handle, 0)

    def permute(self, new_axes: Sequence[int]) -> NDArray:
        """A view with axes reordered: `permute((1, 0))` is the transpose of a matrix."""
        axes = tuple(int(a) + self.ndim if int(a) < 0 else int(a) for a in new_axes)
        if sorted(axes) != list(range(self.ndim)):
            raise ValueError(f"permute: {tuple(new_axes)} is not a permutation for {self.shape}")
        shape, strides = tuple(self.shape[a] for a in axes), tuple(self.strides[a] for a in axes)
        return NDArray._new(shape, strides, self.device, self._handle, self._offset)

    def broadcast_to(self, new_shape: Sequence[int]) -> NDArray:
        """A view broadcast by numpy's rules; broadcast dims get stride 0."""
        new_shape = tuple(int(s) for s in new_shape)
        pad = len(new_shape) - self.ndim
        if pad < 0:
            raise ValueError(f"cannot broadcast shape {self.shape} to {new_shape}")
        shape, strides = (1,) * pad + self.shape, (0,) * pad + self.strides
        out_strides = []
        for old, new, stride in zip(shape, new_shape, strides, strict=True):
            if old == new:
                out_strides.append(stride)
            elif old == 1:
                out_strides.append(0)
            else:
                raise ValueError(f"cannot broadcast shape {self.shape} to {new_shape}")
        return NDArray._new(new_shape, tuple(out_strides), self.device, self._handle, self._offset)

    def process_slice(self, sl: slice, dim: int) -> slice:
        """`sl` with explicit start, stop and step for dim `dim` (needle's helper): None takes
        the default, a negative start or stop counts from the end, both are clipped to the dim,
        and stop is never below start. The step must be positive.

        >>> NDArray(np.zeros((5, 4))).process_slice(slice(None, -1), 0)
        slice(0, 4, 1)
        """
        if sl.step is not None and sl.step <= 0:
            raise ValueError(f"process_slice: step must be positive, got {sl.step}")
        start, stop, step = sl.indices(self.shape[dim])
        return slice(start, max(start, stop), step)

    def __getitem__(self, idxs: Any) -> NDArray:
        """A view; needle keeps the rank, so an int index i acts as slice(i, i + 1)."""
        if not isinstance(idxs, tuple):
            idxs = (idxs,)
        if len(idxs) > self.ndim:
            raise IndexError(f"too many indices ({len(idxs)}) for shape {self.shape}")
        idxs = idxs + (slice(None),) * (self.ndim - len(idxs))
        offset, shape, strides = self._offset, [], []
        for dim, (idx, n, stride) in enumerate(zip(idxs, self.shape, self.strides, strict=True)):
            if isinstance(idx, (numbers.Integral, np.integer)) and not isinstance(idx, bool):
                i = int(idx) + n if idx < 0 else int(idx)
                if not 0 <= i < n:
                    raise IndexError(f"index {idx} out of range for dim {dim} of {self.shape}")
                idx = slice(i, i + 1)
            if not isinstance(idx, slice):
                raise TypeError(f"NDArray indices are ints and slices, got {type(idx).__name__}")
            start, stop, step = idx.indices(n)
            length = len(range(start, stop, step))
            offset += start * stride if length else 0
            shape.append(length)
            strides.append(stride * step)
        return NDArray._new(tuple(shape), tuple(strides), self.device, self._handle, offset)

    def __setitem__(self, idxs: Any, other: Any) -> None:
        """Write `other` (an NDArray or scalar, broadcast) into the selected view, in place."""
        if self._device.on_gpu:
            return _gpu_setitem(self[idxs], other)
        view = self[idxs]._view()
        src = other._view() if isinstance(other, NDArray) else other
        try:
            view[...] = src
        except ValueError:
            src_shape = np.shape(src)
            if prod(src_shape) != view.size:
                msg = f"cannot assign shape {src_shape} to view of shape {view.shape}"
                raise ValueError(msg) from None
            view[...] = np.reshape(src, view.shape)  # needle: equal sizes suffice

    def fill(self, value: Any) -> None:
        """Set every element to `value`, in place."""
        if self._device.on_gpu:
            return _gpu_setitem(self, value)
        self._view()[...] = value

    def to(self, device: BackendDevice) -> NDArray:
        """Self on `device` (a copy when the device differs)."""
        return self if device == self.device else NDArray(self, device=device)

    def astype(self, dtype: Any) -> NDArray:
        """A copy converted to `dtype`."""
        if self._device.on_gpu:
            dtype = _dtype(dtype)
            return _gpu_clone(self) if dtype == self.dtype else _gpu_op("CAST", [self], dtype)
        return NDArray(self, dtype=dtype)

    # ---- elementwise --------------------------------------------------------------------------
    def _binary(self, other: Any, ufunc: np.ufunc, reflected: bool, cmp: bool) -> NDArray:
        """Apply `ufunc` to self and an NDArray of the same shape or a scalar."""
        if self._device.on_gpu:
            out = _gpu_binary(self, other, ufunc, reflected, cmp)
            if out is not None:
                return out
        if isinstance(other, NDArray):
            if other.shape != self.shape:
                raise ValueError(f"{ufunc.__name__}: shapes differ, {self.shape} vs {other.shape}")
            if other.device != self.device:
                raise ValueError(
                    f"{ufunc.__name__}: devices differ, {self.device} vs {other.device}"
                )
            b = other._view()
        elif isinstance(other, (numbers.Number, np.bool_)):
            b = _scalar(other)
        else:
            return NotImplemented
        a = self._view()
        a, b = (b, a) if reflected else (a, b)
        if cmp:  # needle's convention: 0/1 in self's dtype, written in one pass
            out = np.empty(self.shape, self.dtype)
            return NDArray.from_numpy(ufunc(a, b, out=out, casting="unsafe"), self.device)
        return NDArray.from_numpy(ufunc(a, b, order="C"), self.device)

    def _unary(self, ufunc: np.ufunc) -> NDArray:
        if self._device.on_gpu and ufunc in _GPU_UNARY and self.dtype in _GPU_FLOATS:
            return _gpu_op(_GPU_UNARY[ufunc], [self])
        return NDArray.from_numpy(ufunc(self._view(), order="C"), self.device)

    # one row per operator: (ufunc, reflected, comparison)
    __add__ = __radd__ = _ewise(np.add)
    __sub__, __rsub__ = _ewise(np.subtract), _ewise(np.subtract, reflected=True)
    __mul__ = __rmul__ = _ewise(np.multiply)
    __truediv__ = _ewise(np.true_divide)
    __rtruediv__ = _ewise(np.true_divide, reflected=True)
    __pow__ = _ewise(np.power)
    maximum = _ewise(np.maximum)
    __eq__ = _ewise(np.equal, cmp=True)  # type: ignore[assignment]
    __ne__ = _ewise(np.not_equal, cmp=True)  # type: ignore[assignment]
    __lt__ = _ewise(np.less, cmp=True)
    __le__ = _ewise(np.less_equal, cmp=True)
    __gt__ = _ewise(np.greater, cmp=True)
    __ge__ = _ewise(np.greater_equal, cmp=True)
    __hash__ = None  # type: ignore[assignment]

    def __neg__(self) -> NDArray:
        return self._unary(np.negative)

    def log(self) -> NDArray:
        """Elementwise natural log."""
        return self._unary(np.log)

    def exp(self) -> NDArray:
        """Elementwise exp."""
        return self._unary(np.exp)

    def tanh(self) -> NDArray:
        """Elementwise tanh."""
        return self._unary(np.tanh)

    # ---- reductions, matmul, data movement ----------------------------------------------------
    def sum(self, axis: int | Sequence[int] | None = None, keepdims: bool = False) -> NDArray:
        """Sum over `axis` (int, tuple or None for all); int dtypes keep their width."""
        axis = tuple(axis) if isinstance(axis, list) else axis
        if self._device.on_gpu and self.dtype != "bool":
            return _gpu_reduce("SUM", self, axis, keepdims)
        dtype = None if self.dtype == "bool" else self.dtype
        out = np.sum(self._view(), axis=axis, keepdims=keepdims, dtype=dtype)
        return NDArray.from_numpy(out, self.device)

    def max(self, axis: int | Sequence[int] | None = None, keepdims: bool = False) -> NDArray:
        """Max over `axis` (int, tuple or None for all)."""
        axis = tuple(axis) if isinstance(axis, list) else axis
        if self._device.on_gpu and self.size:
            return _gpu_reduce("MAX", self, axis, keepdims)
        return NDArray.from_numpy(np.max(self._view(), axis=axis, keepdims=keepdims), self.device)

    def __matmul__(self, other: NDArray) -> NDArray:
        """Matrix product; leading (batch) dims broadcast as in numpy.matmul."""
        if not isinstance(other, NDArray):
            return NotImplemented
        if (
            self._device.on_gpu
            and other.device == self.device
            and self.ndim == other.ndim == 2
            and self.dtype == other.dtype
            and self.shape[1] == other.shape[0]
        ):
            return _gpu_op("MATMUL", [self, other])
        try:
            out = np.matmul(self._view(), other._view())
        except ValueError as e:
            raise ValueError(f"matmul: shapes {self.shape} and {other.shape}: {e}") from None
        return NDArray.from_numpy(out, self.device)

    def flip(self, axes: int | Sequence[int] | None = None) -> NDArray:
        """A compact copy reversed along `axes` (all axes when None)."""
        axes = tuple(axes) if isinstance(axes, list) else axes
        if self._device.on_gpu:
            every = tuple(range(self.ndim)) if axes is None else axes
            every = (every,) if np.ndim(every) == 0 else tuple(every)
            return _gpu_op("FLIP", [self], every) if every else _gpu_clone(self)
        return NDArray.from_numpy(np.flip(self._view(), axes).copy(), self.device)

    def pad(self, axes: Sequence[tuple[int, int]]) -> NDArray:
        """A copy zero-padded by (lo, hi) along each dim."""
        if len(axes) != self.ndim:
            raise ValueError(f"pad: {len(axes)} (lo, hi) pairs for shape {self.shape}")
        if self._device.on_gpu and all(lo >= 0 and hi >= 0 for lo, hi in axes):
            widths = tuple((int(lo), int(hi)) for lo, hi in axes)
            return _gpu_op("PAD", [self], widths) if any(map(any, widths)) else _gpu_clone(self)
        return NDArray.from_numpy(np.pad(self._view(), tuple(axes)), self.device)


# ---- arrays in device memory (cuda()) --------------------------------------------------------
def _gpu_buffer(host: np.ndarray):
    """A device buffer holding a copy of the compact host array `host`."""
    from .codegen.cuda.storage import DeviceBuffer

    return DeviceBuffer.from_host(host)


def _gpu_make(shape: Shape, strides: Shape, device: BackendDevice, handle: Any, offset: int,
              dtype: Any) -> NDArray:  # fmt: skip
    """`NDArray.make` on `cuda()`: a fresh device buffer, or a view of `handle`'s."""
    from .codegen.cuda.storage import DeviceBuffer

    if handle is None:
        handle = DeviceBuffer(prod(shape), _dtype(dtype))
    elif not isinstance(handle, DeviceBuffer):
        raise TypeError(
            f"NDArray.make: a cuda() array's handle is a DeviceBuffer (an NDArray's _handle), "
            f"got {type(handle).__name__}"
        )
    last = offset
    for n, s in zip(shape, strides, strict=True):
        last += (n - 1) * s
    if prod(shape) and (offset < 0 or min(strides, default=0) < 0 or last >= handle.size):
        raise ValueError(
            f"NDArray.make: shape {shape}, strides {strides} and offset {offset} leave the "
            f"buffer of {handle.size} elements"
        )
    return NDArray._new(shape, strides, device, handle, offset)


def _gpu_target(a: NDArray) -> tuple:
    """(address of the first element, strides, dtype) of a view, as `copy_strided` takes it."""
    return (a._handle.ptr() + a._offset * a._handle.dtype.itemsize, a.strides, a.dtype)


def _gpu_copy(dst: NDArray, src: NDArray) -> None:
    """Copy `src` into `dst` (the same shape) on the device."""
    from .codegen.cuda import eager

    eager.copy_strided(dst.shape, _gpu_target(dst), _gpu_target(src))


class _DeviceFlat:
    """`a.flat` of a cuda() array: reads and writes single elements (row-major index)."""

    def __init__(self, a: NDArray) -> None:
        self.a = a

    def _at(self, j: Any) -> NDArray:
        if not isinstance(j, (numbers.Integral, np.integer)):
            raise TypeError(f"flat of a cuda() array takes an int index, got {type(j).__name__}")
        j = int(j) + self.a.size if j < 0 else int(j)
        if not 0 <= j < self.a.size:
            raise IndexError(f"flat index {j} out of range for size {self.a.size}")
        return self.a[np.unravel_index(j, self.a.shape)]

    def __getitem__(self, j: Any) -> Any:
        return self._at(j).numpy().reshape(-1)[0]

    def __setitem__(self, j: Any, value: Any) -> None:
        _gpu_setitem(self._at(j), value)

    def __len__(self) -> int:
        return self.a.size


def _gpu_clone(a: NDArray) -> NDArray:
    """A compact copy of `a`, made on the device."""
    out = NDArray.make(a.shape, device=a.device, dtype=a.dtype)
    _gpu_copy(out, a)
    return out


def _gpu_setitem(view: NDArray, other: Any) -> None:
    """`view[...] = other` on the device: an NDArray (broadcast, or of the same size, as in
    needle), a numpy array (copied in first) or a scalar."""
    from .codegen.cuda import eager

    if not isinstance(other, NDArray) and np.ndim(other) == 0:  # a scalar: broadcast from one
        src = eager.from_scalar(np.asarray(other).item(), view.dtype)  # element
        zeros = (0,) * view.ndim
        return eager.copy_strided(view.shape, _gpu_target(view), (src.ptr(), zeros, view.dtype))
    if not isinstance(other, NDArray):
        other = NDArray.from_numpy(np.asarray(other), view.device)
    elif other.device != view.device:
        other = other.to(view.device)
    if other._handle is view._handle:  # the views may overlap: read from a copy
        other = _gpu_clone(other)
    if other.shape != view.shape:
        try:
            other = other.broadcast_to(view.shape)
        except ValueError:
            if other.size != view.size:
                msg = f"cannot assign shape {other.shape} to view of shape {view.shape}"
                raise ValueError(msg) from None
            other = other.compact().reshape(view.shape)  # needle: equal sizes suffice
    _gpu_copy(view, other)


_GPU_FLOATS = ("float32", "float64")
_GPU_UNARY = {np.negative: "NEG", np.exp: "EXP", np.log: "LOG", np.tanh: "TANH"}
# ufunc -> (op with an NDArray, op with a scalar); subtraction adds the negation
_GPU_BINARY = {
    np.add: ("ADD", "ADD_SCALAR"),
    np.subtract: ("ADD", "ADD_SCALAR"),
    np.multiply: ("MUL", "MUL_SCALAR"),
    np.true_divide: ("DIV", "DIV_SCALAR"),
    np.power: ("POW", "POW_SCALAR"),
    np.maximum: ("MAXIMUM", None),
    np.equal: ("CMPEQ", None),
    np.less: ("CMPLT", None),
    np.greater: ("CMPLT", None),  # b < a
}


def _gpu_op(name: str, arrays: Sequence[NDArray], arg: Any = None) -> NDArray:
    """The IR op `name` on cuda() arrays, as a generated kernel."""
    from .ir import Op, infer

    op = Op[name]
    shape, _ = infer(op, [a.shape for a in arrays], [a.dtype for a in arrays], arg)
    return _gpu_run(op, arrays, arg, shape)


def _gpu_binary(a: NDArray, b: Any, ufunc: np.ufunc, reflected: bool, cmp: bool):
    """An elementwise NDArray operator on the device, or None where its dtype rules are not
    the IR's (integer or mixed dtypes, a reflected scalar division...): numpy does it then."""
    ops = _GPU_BINARY.get(ufunc)
    if ops is None or a.dtype not in _GPU_FLOATS:
        return None
    if isinstance(b, NDArray):
        if b.device != a.device or b.dtype != a.dtype or b.shape != a.shape:
            return None
        x, y = (b, a) if reflected != (ufunc is np.greater) else (a, b)
        if ufunc is np.subtract:
            y = _gpu_op("NEG", [y])
        out = _gpu_op(ops[0], [x, y])
        return _gpu_op("CAST", [out], a.dtype) if cmp else out
    if ops[1] is None or not isinstance(b, (numbers.Real, np.floating, np.integer)):
        return None
    c = float(b)
    if ufunc is np.subtract:
        return (
            _gpu_op("ADD_SCALAR", [_gpu_op("NEG", [a])], c)
            if reflected
            else _gpu_op("ADD_SCALAR", [a], -c)
        )
    if reflected and ufunc in (np.true_divide, np.power):
        return None
    return _gpu_op(ops[1], [a], c)


def _gpu_reduce(name: str, a: NDArray, axis: Any, keepdims: bool) -> NDArray:
    """`a.sum` / `a.max` on the device: the IR reduction over `axis`, reshaped for keepdims."""
    axes = tuple(range(a.ndim)) if axis is None else (axis,) if np.ndim(axis) == 0 else axis
    axes = tuple(sorted(int(x) + a.ndim if int(x) < 0 else int(x) for x in axes))
    out = _gpu_op(name, [a], axes) if axes else _gpu_clone(a)
    if keepdims:
        out = out.reshape(tuple(1 if i in axes else n for i, n in enumerate(a.shape)))
    return out


def _gpu_run(op: Any, arrays: Sequence[NDArray], arg: Any, shape: Shape) -> NDArray:
    """`op(arrays)` as a generated CUDA kernel; the result a fresh compact cuda() array."""
    from .codegen.cuda import eager

    args = [a if a.strides == _compact_strides(a.shape) else a.compact() for a in arrays]
    if op.name in ("RESHAPE", "STOP_GRADIENT"):  # a view of the same memory, as numpy's is
        a, shape = args[0], tuple(shape)
        return NDArray._new(shape, _compact_strides(shape), a.device, a._handle, a._offset)
    out = eager.run_op(op, arg, args)
    shape = tuple(shape)
    return NDArray._new(shape, _compact_strides(shape), arrays[0].device, out, 0)


# ---- module-level helpers (as in needle) ----------------------------------------------------
def array(a: Any, dtype: Any = "float32", device: BackendDevice | None = None) -> NDArray:
    """An NDArray copy of `a` (dtype None keeps the input's dtype)."""
    return NDArray(a, device=device, dtype=dtype)


def empty(
    shape: Sequence[int], dtype: Any = "float32", device: BackendDevice | None = None
) -> NDArray:
    """An uninitialised array."""
    return as_device(device).empty(shape, dtype)


def full(
    shape: Sequence[int],
    fill_value: Any,
    dtype: Any = "float32",
    device: BackendDevice | None = None,
) -> NDArray:
    """An array filled with `fill_value`."""
    return as_device(device).full(shape, fill_value, dtype)


def broadcast_to(a: NDArray, shape: Sequence[int]) -> NDArray:
    """`a.broadcast_to(shape)`."""
    return a.broadcast_to(shape)


def reshape(a: NDArray, shape: Sequence[int]) -> NDArray:
    """`a.reshape(shape)`."""
    return a.reshape(shape)


def maximum(a: NDArray, b: Any) -> NDArray:
    """`a.maximum(b)`."""
    return a.maximum(b)


def log(a: NDArray) -> NDArray:
    """`a.log()`."""
    return a.log()


def exp(a: NDArray) -> NDArray:
    """`a.exp()`."""
    return a.exp()


def tanh(a: NDArray) -> NDArray:
    """`a.tanh()`."""
    return a.tanh()


def summation(a: NDArray, axis: Any = None, keepdims: bool = False) -> NDArray:
    """`a.sum(axis, keepdims)`."""
    return a.sum(axis=axis, keepdims=keepdims)


sum = summation  # needle's name; shadows the builtin in this module only


def flip(a: NDArray, axes: Any) -> NDArray:
    """`a.flip(axes)`."""
    return a.flip(axes)


def negative(a: NDArray) -> NDArray:
    """`-a`."""
    return -a
