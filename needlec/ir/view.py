"""Index maps: a movement-op chain folded into shape, strides, offset and a validity mask.

A `View` reads a compact (row-major) buffer: element `idx` of the view is at element
`offset + sum(idx[d] * strides[d])` of the buffer when `lo[d] <= idx[d] < hi[d]` for every dim
`d` of the mask, and is 0 elsewhere (padding). Strides are in elements: 0 broadcasts, negative
flips. Reshape, broadcast, permute, slice, flip and pad compose into one view; a reshape that
merges or splits dims that are not laid out one after the other (or that are masked) has no view
(`reshape` returns None), and the value must be copied to a buffer of its own first.

>>> v = View.contiguous((4, 6)).permute((1, 0)).slice(((0, 6, 2), (1, 4, 1)))
>>> v
View(shape=(3, 3), strides=(2, 6), offset=6, mask=None)
>>> View.contiguous((3,)).pad(((1, 1),)).flip((0,)).as_text()
'shape=(5,) strides=(-1,) offset=3 mask=((1,4),)'
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .ops import Op

Shape = tuple[int, ...]
Mask = tuple[tuple[int, int], ...]
# per logical dim of a value, the kernel dims it is laid over (row-major); () for a dim of size 1
Dims = tuple[tuple[int, ...], ...]


def strides_of(shape: Shape) -> tuple[int, ...]:
    """Row-major strides, in elements, of a compact array of `shape`."""
    out, acc = [], 1
    for d in reversed(shape):
        out.append(acc if d != 1 else 0)
        acc *= d
    return tuple(reversed(out))


@dataclass(frozen=True)
class View:
    """A strided, masked window on a compact buffer (see the module docstring)."""

    shape: Shape
    strides: tuple[int, ...]
    offset: int = 0
    mask: Mask | None = None  # None: every index is valid

    @staticmethod
    def contiguous(shape: Shape) -> View:
        """The view of a whole compact buffer of `shape`."""
        return View(tuple(shape), strides_of(tuple(shape)))

    @property
    def is_contiguous(self) -> bool:
        """Reads the whole buffer in row-major order, unmasked."""
        return self.offset == 0 and self.mask is None and self.strides == strides_of(self.shape)

    def bounds(self) -> Mask:
        """The valid box, one `(lo, hi)` per dim."""
        return self.mask if self.mask is not None else tuple((0, d) for d in self.shape)

    def _with(self, shape, strides, offset, mask) -> View:
        mask = tuple(mask)
        full = all(m == (0, d) for m, d in zip(mask, shape, strict=True))
        return View(tuple(shape), tuple(strides), offset, None if full else mask)

    # ------------------------------------------------------------ movement ops
    def permute(self, perm) -> View:
        m = self.bounds()
        return self._with(
            [self.shape[p] for p in perm],
            [self.strides[p] for p in perm],
            self.offset,
            [m[p] for p in perm],
        )

    def broadcast_to(self, shape) -> View:
        pad = len(shape) - len(self.shape)
        old_shape = (1,) * pad + self.shape
        strides = list((0,) * pad + self.strides)
        mask = list(((0, 1),) * pad + self.bounds())
        for i, (a, b) in enumerate(zip(old_shape, shape, strict=True)):
            if a != b:  # a == 1: every index reads element 0 of that dim
                strides[i] = 0
                mask[i] = (0, b) if mask[i][0] <= 0 < mask[i][1] else (0, 0)
        return self._with(shape, strides, self.offset, mask)

    def slice(self, spec) -> View:
        shape, strides, mask, offset = [], [], [], self.offset
        for (start, stop, step), s, (lo, hi) in zip(spec, self.strides, self.bounds(), strict=True):
            n = max(0, -(-(stop - start) // step))
            offset += start * s
            shape.append(n)
            strides.append(s * step)
            # i is valid when lo <= start + i*step < hi
            a = min(max(0, -(-(lo - start) // step)), n)
            b = min(max(0, -(-(hi - start) // step)), n)
            mask.append((a, max(a, b)))
        return self._with(shape, strides, offset, mask)

    def flip(self, axes) -> View:
        strides, mask, offset = list(self.strides), list(self.bounds()), self.offset
        for a in axes:
            n = self.shape[a]
            if n > 0:
                offset += (n - 1) * strides[a]
            strides[a] = -strides[a]
            lo, hi = mask[a]
            mask[a] = (n - hi, n - lo)
        return self._with(self.shape, strides, offset, mask)

    def pad(self, widths) -> View:
        shape, mask, offset = [], [], self.offset
        for d, s, (lo, hi), (a, b) in zip(
            self.shape, self.strides, self.bounds(), widths, strict=True
        ):
            shape.append(d + a + b)
            offset -= a * s
            mask.append((lo + a, hi + a))
        return self._with(shape, self.strides, offset, mask)

    def reshape(self, shape) -> View | None:
        """The same elements in a new shape, or None when no single view reads them so."""
        shape = tuple(shape)
        if math.prod(shape) == 0 or math.prod(self.shape) == 0:
            return View.contiguous(shape)
        bounds = self.bounds()
        if any(d == 1 and not lo <= 0 < hi for d, (lo, hi) in zip(self.shape, bounds, strict=True)):
            return None  # a masked-out dim of size 1: every element is padding
        old = [
            (d, s, m) for d, s, m in zip(self.shape, self.strides, bounds, strict=True) if d != 1
        ]
        new = [d for d in shape if d != 1]
        out: list[tuple[int, int, tuple[int, int]]] = []
        i = j = 0
        while i < len(old) or j < len(new):
            bi, bj = [old[i]], [new[j]]
            i, j = i + 1, j + 1
            pi, pj = bi[0][0], bj[0]
            while pi != pj:
                if pi < pj:
                    bi.append(old[i])
                    pi *= old[i][0]
                    i += 1
                else:
                    bj.append(new[j])
                    pj *= new[j]
                    j += 1
            if len(bi) == 1 and len(bj) == 1:
                out.append(bi[0])
                continue
            if any(m != (0, d) for d, _, m in bi):
                return None  # a mask does not survive merging or splitting dims
            if any(bi[k][1] != bi[k + 1][1] * bi[k + 1][0] for k in range(len(bi) - 1)):
                return None  # the dims are not laid out one after the other
            stride = bi[-1][1]
            block = []
            for d in reversed(bj):
                block.append((d, stride, (0, d)))
                stride *= d
            out.extend(reversed(block))
        it = iter(out)
        strides, mask = [], []
        for d in shape:
            if d == 1:
                strides.append(0)
                mask.append((0, 1))
            else:
                _, s, m = next(it)
                strides.append(s)
                mask.append(m)
        return self._with(shape, strides, self.offset, mask)

    def apply(self, op: Op, arg) -> View | None:
        """This view after one movement op (RESHAPE, BROADCAST, PERMUTE, FLIP, PAD, SLICE)."""
        if op is Op.RESHAPE:
            return self.reshape(arg)
        if op is Op.BROADCAST:
            return self.broadcast_to(tuple(arg))
        if op is Op.PERMUTE:
            return self.permute(arg)
        if op is Op.FLIP:
            return self.flip(arg)
        if op is Op.PAD:
            return self.pad(arg)
        if op is Op.SLICE:
            return self.slice(arg)
        raise ValueError(f"view: {op.name.lower()} is not a view op")

    # ------------------------------------------------------------ kernel space
    def embed(self, dims: Dims, space: Shape) -> tuple[View, bool] | None:
        """This view laid over a kernel's iteration space: logical dim `j` over kernel dims
        `dims[j]` (row-major), every other kernel dim broadcast (size 1, stride 0). Returns
        (view, empty), empty when a size-1 dim is masked out (every read is 0), or None when a
        masked dim would be split over several kernel dims."""
        shape, strides, mask = [1] * len(space), [0] * len(space), [(0, 1)] * len(space)
        empty = False
        for d, s, (lo, hi), kd in zip(self.shape, self.strides, self.bounds(), dims, strict=True):
            if not kd:
                empty = empty or not lo <= 0 < hi
                continue
            if len(kd) > 1 and (lo, hi) != (0, d):
                return None
            acc = s
            for k in reversed(kd):
                shape[k], strides[k], mask[k] = space[k], acc, (0, space[k])
                acc *= space[k]
            if len(kd) == 1:
                mask[kd[0]] = (lo, hi)
        return self._with(shape, strides, self.offset, mask), empty

    def as_text(self, shape: bool = True) -> str:
        """`shape=(3,4) strides=(4,1) offset=0 [mask=((lo,hi),...)]`; `shape=False` leaves the
        shape out (a kernel's load shows it as the value's type)."""

        def tup(t) -> str:
            return "(" + ",".join(map(str, t)) + ("," if len(t) == 1 else "") + ")"

        text = f"shape={tup(self.shape)} " if shape else ""
        text += f"strides={tup(self.strides)} offset={self.offset}"
        if self.mask is not None:
            text += " mask=" + tup([tup(m) for m in self.mask])
        return text
