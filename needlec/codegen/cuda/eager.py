"""Eager CUDA: one op at a time on device-resident arrays, each a generated kernel.

`run_op(op, arg, inputs)` builds the one-op graph `op(inputs)`, sends it through the same pass
pipeline and CUDA renderer a jitted step goes through (`passes.compile_program`, then
`runtime.CudaExecutable`), and runs it on the inputs' device memory: no host copies.
An executable is made once per signature (op, scalar attribute, input shapes and dtypes) and kept
in memory (the most recent `MAX_PROGRAMS`); its module comes from `runtime.compile_source`'s disk
cache when another process compiled it already. A scalar written into the kernel is a constant
there; once an op of one shape has met `BAKED_SCALARS` different scalars (a learning rate that
decays every step), it takes the scalar as a one-element input instead (copied from the host at
each call): one more executable, not one per value.

`copy_strided` is the one kernel rendered here directly: any strided view into any other
(`compact`, `setitem`, `fill`), its shape and strides written into the source (offsets travel in
the pointers), compiled once per signature too.

`stats["programs"]` counts the executables made (a second call of the same op makes none).
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from ...ir import Graph, Node, Op
from . import runtime
from .cexpr import MEMTYPE
from .storage import DeviceBuffer

MAX_PROGRAMS = 1024  # one-op executables kept (least recently used dropped first)
BAKED_SCALARS = 4  # scalars of one op and shape compiled in as constants; past that, an input
# an op with a scalar -> the binary op computing it from an input holding the scalar (for float
# tensors, where a Python scalar is cast to the tensor's dtype first: the same numbers)
_AS_INPUT = {Op.ADD_SCALAR: Op.ADD, Op.MUL_SCALAR: Op.MUL, Op.DIV_SCALAR: Op.DIV}
BLOCK = 128  # threads of a copy kernel's block
MAX_BLOCKS = 4096  # a copy kernel's grid at most (it strides over the rest)

stats = {"programs": 0, "copy_kernels": 0}
_programs: OrderedDict = OrderedDict()
_copies: dict = {}
_scalars: dict = {}  # (op, inputs' shapes and dtypes) -> the scalars compiled in as constants


def clear() -> None:
    """Forget every executable and copy kernel (the device they were made for is gone)."""
    _programs.clear()
    _copies.clear()
    _scalars.clear()
    _stream.cache_clear()


def signature(op: Op, arg, inputs: Sequence) -> tuple:
    """What one executable serves: the op, its attribute (by `repr`, so 2 and 2.0 differ, as
    they may in the result's dtype), and each input's shape and dtype."""
    return (op, repr(arg), tuple((tuple(a.shape), str(a.dtype)) for a in inputs))


def _scalar_as_input(op: Op, arg, inputs: Sequence) -> bool:
    """Whether `op(inputs)` takes its scalar as an input (see the module docstring): a float
    tensor's op whose shape has met `BAKED_SCALARS` other scalars."""
    if op not in _AS_INPUT or len(inputs) != 1 or np.dtype(inputs[0].dtype).kind != "f":
        return False
    if isinstance(arg, bool) or not isinstance(arg, (int, float)):
        return False
    seen = _scalars.setdefault(signature(op, None, inputs), set())
    if repr(arg) in seen or len(seen) < BAKED_SCALARS:
        seen.add(repr(arg))
        return False
    return True


def program_for(op: Op, arg, inputs: Sequence):
    """The executable of `op(inputs)` (made and compiled on the first call of a signature);
    with `arg` None for an op of `_AS_INPUT`, the one taking its scalar as a last input of
    shape () (the caller passes it)."""
    from ...passes import compile_program

    key = signature(op, arg, inputs)
    ex = _programs.get(key)
    if ex is not None:
        _programs.move_to_end(key)
        return ex
    xs = [Node.leaf(Op.INPUT, str(a.dtype), a.shape, ("arg", k)) for k, a in enumerate(inputs)]
    if arg is None and op in _AS_INPUT:
        (x,) = xs
        c = Node.leaf(Op.INPUT, x.dtype, (), ("arg", 1))
        xs.append(c)
        node = Node.make(_AS_INPUT[op], x, c.broadcast_to(x.shape))
    else:
        node = Node.make(op, *xs, arg=arg)
    ex = runtime.CudaExecutable(compile_program(Graph(xs, [node])))
    stats["programs"] += 1
    _programs[key] = ex
    if len(_programs) > MAX_PROGRAMS:
        _programs.popitem(last=False)
    return ex


def run_op(op: Op, arg, inputs: Sequence) -> DeviceBuffer:
    """`op(inputs)` on the GPU: `inputs` are compact device arrays (each has `shape`, `dtype`
    and a `__cuda_array_interface__`); the result is a fresh buffer, compact, of the op's
    shape."""
    # (run: device inputs take run_on_device, one call at a time: threads share the executable)
    if _scalar_as_input(op, arg, inputs):
        scalar = np.array(arg, dtype=inputs[0].dtype)  # a Python scalar is weak: the tensor's
        (out,) = program_for(op, None, inputs).run([*inputs, scalar])
        return out
    (out,) = program_for(op, arg, inputs).run(list(inputs))
    return out


@functools.cache
def _stream():
    return runtime.drv().Stream()


def _copy_source(name: str, shape, dst_strides, src_strides, dst: str, src: str) -> str:
    """A grid-stride loop over the elements of `shape`, each read at its offset in the source
    view and written at its offset in the destination view."""
    n = math.prod(shape)
    head = f"{MEMTYPE[dst]}* __restrict__ dst, const {MEMTYPE[src]}* __restrict__ src"
    lines = [
        f'extern "C" __global__ void __launch_bounds__({BLOCK}) {name}({head}) {{',
        "  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;",
        f"       i < {n}LL; i += (long long)blockDim.x * gridDim.x) {{",
        "    long long r = i, d = 0, s = 0, c;",
    ]
    for size, ds, ss in reversed(list(zip(shape, dst_strides, src_strides, strict=True))):
        if size > 1:
            lines.append(f"    c = r % {size}LL; r /= {size}LL; d += c * {ds}LL; s += c * {ss}LL;")
    value = "src[s] != 0" if dst == "bool" else f"({MEMTYPE[dst]})src[s]"
    lines += [f"    dst[d] = {value};", "  }", "}"]
    return "\n".join(lines) + "\n"


def _copy_kernel(shape, dst_strides, src_strides, dst: str, src: str):
    key = (shape, dst_strides, src_strides, dst, src)
    fn = _copies.get(key)
    if fn is None:
        name = "nc_copy_" + hashlib.sha256(repr(key).encode()).hexdigest()[:16]
        source = _copy_source(name, shape, dst_strides, src_strides, dst, src)
        module = runtime.drv().module_from_buffer(runtime.compile_source(source))
        fn = module.get_function(name)
        fn.prepare("PP")
        stats["copy_kernels"] += 1
        _copies[key] = fn
    return fn


def copy_strided(
    shape: Sequence[int],
    dst: tuple[int, Sequence[int], str],
    src: tuple[int, Sequence[int], str],
) -> None:
    """Copy the view `src` into the view `dst`, element by element (converting the dtype):
    each is (address of its first element, strides in elements, dtype); `shape` is both
    views' shape (a source broadcast to it has stride 0 where it repeats)."""
    shape = tuple(int(s) for s in shape)
    n = math.prod(shape)
    if not n:
        return
    (dp, ds, dt), (sp, ss, st) = dst, src
    fn = _copy_kernel(shape, tuple(map(int, ds)), tuple(map(int, ss)), dt, st)
    grid = min(MAX_BLOCKS, -(-n // BLOCK))
    fn.prepared_async_call((grid, 1), (BLOCK, 1, 1), _stream(), int(dp), int(sp))
    _stream().synchronize()


def from_scalar(value, dtype: str) -> DeviceBuffer:
    """A one-element buffer holding `value` as `dtype` (the source of a fill)."""
    return DeviceBuffer.from_host(np.array(value, dtype=dtype).reshape(1))


# ---- needle's backend functions on device buffers (what `cuda().to_numpy(...)` and the like
# are on a GPU): the ones that move or place data
def to_numpy(a: DeviceBuffer, shape, strides, offset: int) -> np.ndarray:
    """A C-contiguous host copy of the strided view (`shape`, `strides`, `offset`) of `a`."""
    out = DeviceBuffer(math.prod(shape), a.dtype)
    compact(a, out, shape, strides, offset)
    return out.to_host().reshape(tuple(shape))


def from_numpy(a, out: DeviceBuffer) -> None:
    """Copy the elements of the host array `a`, in row-major order, into `out` (same size)."""
    src = np.ascontiguousarray(a, dtype=out.dtype)
    if src.size != out.size:
        raise ValueError(
            f"from_numpy: array of shape {src.shape} ({src.size} elements) into a device "
            f"buffer of {out.size}"
        )
    out.copy_from(DeviceBuffer.from_host(src))


def fill(out: DeviceBuffer, val) -> None:
    """Set every element of `out` to `val`."""
    src = from_scalar(val, str(out.dtype))
    copy_strided((out.size,), (out.ptr(), (1,), str(out.dtype)), (src.ptr(), (0,), str(out.dtype)))


def compact(a: DeviceBuffer, out: DeviceBuffer, shape, strides, offset: int) -> None:
    """Write the strided view (`shape`, `strides`, `offset`) of `a` into the compact `out`."""
    shape = tuple(int(n) for n in shape)
    if math.prod(shape) != out.size:
        raise ValueError(f"compact: shape {shape} into a device buffer of {out.size}")
    src = (a.ptr() + int(offset) * a.dtype.itemsize, strides, str(a.dtype))
    strides_out = tuple(math.prod(shape[i + 1 :]) for i in range(len(shape)))
    copy_strided(shape, (out.ptr(), strides_out, str(out.dtype)), src)


BACKEND = {"Array": DeviceBuffer, "to_numpy": to_numpy, "from_numpy": from_numpy}
BACKEND.update(fill=fill, compact=compact)


__all__ = [
    "BACKEND",
    "clear",
    "compact",
    "copy_strided",
    "fill",
    "from_numpy",
    "from_scalar",
    "program_for",
    "run_op",
    "signature",
    "stats",
    "to_numpy",
]
