"""ALLREDUCE cores as calls into the MPI library that mpi4py loaded: `MPI_Allreduce`, from
inside the compiled step, with no return to Python.

The code names what it calls and reads by symbol: `needlec_mpi_allreduce` (the library's
`MPI_Allreduce`) and `needlec_mpi_handles`, a table of this process's handles (the communicator
`needlec.distributed.init` made, the datatypes, the reductions, `MPI_IN_PLACE`), bound when the
code is loaded, so code cached on disk never holds another process's handles. Handles are as wide
as the MPI library's (`int` in MPICH, a pointer in Open MPI). A program compiled while no
communicator is set (a single process that never called `init`) copies instead.
"""

from __future__ import annotations

import ctypes
import functools
import math

import numpy as np
from llvmlite import binding as llvm
from llvmlite import ir

from ...ir import collective
from ...ir.kernel import Core, Load
from ...ir.schedule import Buffer
from ...ir.view import View

I8, I32, I64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
PTR = ir.PointerType(I8)
DTYPES = ("float32", "float64", "int32", "int64", "bool")
# slots of the handle table
COMM, IN_PLACE, FIRST_DTYPE = 0, 1, 2
SUM, MAX = FIRST_DTYPE + len(DTYPES), FIRST_DTYPE + len(DTYPES) + 1
_TABLE = np.zeros(MAX + 1, np.uint64)  # lives as long as the process: compiled code reads it


def _mpi_library_function(name: str) -> int:
    """The address of `name` in the MPI library mpi4py loaded (found among the libraries this
    process has mapped, or in the global namespace)."""
    paths = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1] if len(line.split()) >= 6 else ""
                base = path.rsplit("/", 1)[-1]
                if base.startswith("libmpi") and ".so" in base and path not in paths:
                    paths.append(path)
    except OSError:
        pass
    for path in [*paths, None]:
        try:
            return ctypes.cast(getattr(ctypes.CDLL(path), name), ctypes.c_void_p).value
        except (OSError, AttributeError):
            continue
    raise RuntimeError(f"all_reduce: {name} not found in the MPI library mpi4py loaded")


@functools.cache
def handle_bits() -> int:
    """How wide the MPI library's handles are, in bits."""
    from mpi4py import MPI

    return 8 * MPI._sizeof(MPI.Comm)


def bind() -> bool:
    """Fill the handle table from the current communicator and tell LLVM where the MPI symbols
    are; False where no communicator is set (compiled all-reduces then copy)."""
    comm = collective.comm()
    if comm is None:
        collective.note_compiled_alone()
        return False
    from mpi4py import MPI

    mask = 2**64 - 1  # handles as the library's bits, whatever sign Python gives them
    _TABLE[COMM] = MPI._handleof(comm) & mask
    _TABLE[IN_PLACE] = int(MPI.IN_PLACE) & mask
    for i, dt in enumerate(DTYPES):
        _TABLE[FIRST_DTYPE + i] = MPI._handleof(collective.mpi_datatype(dt)) & mask
    _TABLE[SUM], _TABLE[MAX] = MPI._handleof(MPI.SUM) & mask, MPI._handleof(MPI.MAX) & mask
    llvm.add_symbol("needlec_mpi_allreduce", _mpi_library_function("MPI_Allreduce"))
    llvm.add_symbol("needlec_mpi_handles", _TABLE.ctypes.data)
    return True


def _contiguous(r, ld: Load, dtype: str) -> ir.Value:
    """A pointer to `ld`'s elements, compact and row-major (packed into scratch if they are not)."""
    from .gemm import pack

    v = ld.view
    if v.mask is not None or v.strides != View.contiguous(v.shape).strides:
        ld = pack(r, ld, dtype)
        v = ld.view
    item = np.dtype(dtype).itemsize
    return r.b.gep(r.base[ld.buffer], [I64(v.offset * item)])


def emit_allreduce(r, core: Core, into: Buffer) -> None:
    """Emit the all-reduce `core` into buffer `into` (compact, row-major) for renderer `r`.
    Several operands are copied end to end into `into` first, then reduced there in place."""
    n = math.prod(core.shape)
    if n == 0:
        return
    if n >= 2**31:
        raise ValueError(f"all_reduce: {n} elements is more than one MPI call takes (2**31 - 1)")
    b = r.b
    item = np.dtype(core.dtype).itemsize
    recv = b.bitcast(r.base[into], PTR)
    sources = [b.bitcast(_contiguous(r, ld, core.dtype), PTR) for ld in core.operands]
    copy = r.module.declare_intrinsic("llvm.memmove", [PTR, PTR, I64])
    no = ir.Constant(ir.IntType(1), 0)
    active = bind()
    if len(sources) > 1 or not active:  # gathered end to end (or, alone, copied)
        at = 0
        for src, ld in zip(sources, core.operands, strict=True):
            size = math.prod(ld.view.shape) * item
            if size:
                b.call(copy, [b.gep(recv, [I64(at)]), src, I64(size), no])
            at += size
        send = recv
    else:
        send = sources[0]
    if not active:  # this process alone: the copy is the result
        return
    bits = handle_bits()
    hty = ir.IntType(bits) if bits != 64 else PTR
    fnty = ir.FunctionType(I32, [PTR, PTR, I32, hty, hty, hty])
    fn = r.module.globals.get("needlec_mpi_allreduce") or ir.Function(
        r.module, fnty, "needlec_mpi_allreduce"
    )
    table = r.module.globals.get("needlec_mpi_handles")
    if table is None:
        table = ir.GlobalVariable(r.module, ir.ArrayType(I64, len(_TABLE)), "needlec_mpi_handles")

    def handle(slot: int) -> ir.Value:
        v = b.load(b.gep(table, [I32(0), I32(slot)]))
        return b.trunc(v, hty) if bits < 64 else b.inttoptr(v, PTR)

    in_place = b.inttoptr(b.load(b.gep(table, [I32(0), I32(IN_PLACE)])), PTR)
    send = b.select(b.icmp_unsigned("==", send, recv), in_place, send)  # MPI wants IN_PLACE
    dtype = handle(FIRST_DTYPE + DTYPES.index(core.dtype))
    op = handle(MAX if core.arg == "max" or core.dtype == "bool" else SUM)
    b.call(fn, [send, recv, I32(n), dtype, op, handle(COMM)])


__all__ = ["bind", "emit_allreduce"]
