"""The communicator an ALLREDUCE node reduces over, and its reference semantics.

`needlec.distributed.init()` sets the communicator (a duplicate of MPI's world, so needlec's
collectives never meet the user's own messages). Without it, or without mpi4py, the world is this
one process and an all-reduce is a copy. Every executor reads the communicator at run time: the
reference and kernel interpreters through mpi4py here, compiled code through the MPI library that
mpi4py loaded (`needlec.codegen.llvm.collective`).

An all-reduce's `arg` is the reduction, "sum" or "max"; several sources are reduced as one
buffer, their elements end to end. A mean is a sum divided by the world size
(two nodes; the division fuses into whatever reads it). Bools reduce as a logical or (as numpy
sums and maxes them).
"""

from __future__ import annotations

import numpy as np

REDUCTIONS = ("sum", "max")

_state: dict = {"comm": None, "compiled_alone": False}


def set_comm(comm) -> None:
    """Make `comm` (an mpi4py communicator, or None for this process alone) the one every
    all-reduce uses."""
    _state["comm"] = comm


def note_compiled_alone() -> None:
    """Compiled code was made with no communicator: its all-reduces copy (see `init`)."""
    _state["compiled_alone"] = True


def compiled_alone() -> bool:
    """Whether compiled code with an all-reduce was made before a communicator was set."""
    return _state["compiled_alone"]


def comm():
    """The communicator all-reduces use, or None (this process alone)."""
    return _state["comm"]


def world_size() -> int:
    c = _state["comm"]
    return 1 if c is None else c.Get_size()


def rank() -> int:
    c = _state["comm"]
    return 0 if c is None else c.Get_rank()


def mpi_datatype(dtype: str):
    """The MPI datatype a buffer of needlec `dtype` travels as (bools as bytes of 0 or 1)."""
    from mpi4py import MPI

    return {
        "float32": MPI.FLOAT,
        "float64": MPI.DOUBLE,
        "int32": MPI.INT32_T,
        "int64": MPI.INT64_T,
        "bool": MPI.UINT8_T,
    }[dtype]


def mpi_op(reduction: str, dtype: str):
    """The MPI reduction for `reduction` on `dtype` (a bool's sum is its maximum: an or)."""
    from mpi4py import MPI

    return MPI.MAX if reduction == "max" or dtype == "bool" else MPI.SUM


def allreduce(*xs_and_reduction) -> np.ndarray:
    """`x` reduced elementwise over every rank of the communicator (a copy with one rank);
    several arrays are reduced as one, raveled end to end."""
    *xs, reduction = xs_and_reduction
    x = xs[0] if len(xs) == 1 else np.concatenate([np.ravel(a) for a in xs])
    if reduction not in REDUCTIONS:
        raise ValueError(f"all_reduce: reduction {reduction!r} is not one of {REDUCTIONS}")
    c = _state["comm"]
    out = np.array(x, order="C", copy=True)
    if c is None or c.Get_size() == 1 or out.size == 0:
        return out
    dtype = str(out.dtype)
    send = np.ascontiguousarray(x, dtype=out.dtype)
    if dtype == "bool":
        send, out = send.view(np.uint8), out.view(np.uint8)
    c.Allreduce(send, out, op=mpi_op(reduction, dtype))
    return out.view(np.bool_) if dtype == "bool" else out


__all__ = ["REDUCTIONS", "allreduce", "comm", "mpi_datatype", "mpi_op", "rank", "set_comm"]
