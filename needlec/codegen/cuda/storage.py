"""Device memory that an NDArray on `cuda()` holds: a flat buffer from the caching allocator.

A `DeviceBuffer` is the `_handle` of a cuda NDArray (as `ndarray_backend.Array` is of a host one):
`size` elements of `dtype`, `ptr()` the device address of the first, shared by every view of it.
Its block goes back to the allocator's cache when the last reference to it dies, so a loop that
makes arrays of the same sizes every step allocates nothing from the driver after the first.
Transfers: `from_host` and `to_host` (the only host copies), `copy_from` (device to device).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import runtime


class DeviceBuffer:
    """`size` elements of `dtype` in device memory (see the module docstring).

    >>> b = DeviceBuffer.from_host(np.arange(4, dtype="float32"))  # doctest: +SKIP
    >>> b.to_host()  # doctest: +SKIP
    array([0., 1., 2., 3.], dtype=float32)
    """

    __slots__ = ("size", "dtype", "block", "size_class", "_pool", "_ptr")

    def __init__(self, size: int, dtype: Any = "float32") -> None:
        self.size, self.dtype = int(size), np.dtype(dtype)
        self._pool = runtime.allocator()
        self.size_class, self.block = self._pool.alloc(max(1, self.nbytes))
        self._ptr = int(self.block)

    @staticmethod
    def from_host(array: np.ndarray) -> DeviceBuffer:
        """A new buffer holding a copy of `array` (C order)."""
        host = np.ascontiguousarray(array)
        buf = DeviceBuffer(host.size, host.dtype)
        if buf.nbytes:
            runtime.drv().memcpy_htod(buf._ptr, host)
        return buf

    @property
    def _data(self) -> DeviceBuffer:
        """What NDArray reads `dtype` and `size` from (a host `Array`'s numpy buffer)."""
        return self

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def ptr(self) -> int:
        """The device address of the first element."""
        return self._ptr

    def to_host(self) -> np.ndarray:
        """A fresh flat numpy copy of the buffer."""
        host = np.empty(self.size, self.dtype)
        if self.nbytes:
            runtime.drv().memcpy_dtoh(host, self._ptr)
        return host

    @property
    def array(self) -> np.ndarray:
        """A flat host copy (writes to it do not reach the device)."""
        return self.to_host()

    def copy_from(self, src: DeviceBuffer) -> None:
        """Overwrite this buffer with `src`'s bytes (the same size), device to device."""
        if src.nbytes != self.nbytes:
            raise ValueError(f"DeviceBuffer.copy_from: {src.nbytes} bytes into {self.nbytes}")
        if self.nbytes:
            runtime.drv().memcpy_dtod(self._ptr, src._ptr, self.nbytes)

    def __del__(self) -> None:
        try:
            self._pool.free(self.size_class, self.block)
        except Exception:  # interpreter shutdown: the driver takes the memory back itself
            pass

    def __repr__(self) -> str:
        return f"DeviceBuffer({self.size} x {self.dtype}, at {self._ptr:#x})"


__all__ = ["DeviceBuffer"]
