"""Backends: each turns a compiled `Program` into an executable with one calling convention.

`run(arrays) -> outputs`: numpy arrays in, one per graph input, their shapes and dtypes checked
by the caller; numpy arrays out, one per graph output. `fresh_outputs` says that no output shares
memory with an input, except an input the executable updated in place (a donated parameter), so
the caller need not copy. `make_backend` picks one by name; the jit front end picks the name from
`NEEDLEC_EXECUTE` and the device, and never knows how a backend runs:

- "reference": every op of the optimized graph evaluated with numpy (`reference.run_graph`), the
  oracle the others are tested against;
- "kernels": the fused kernels interpreted one at a time (`kernels.run_kernels`), the contract
  the compiled backends render;
- "compiled": the LLVM-compiled program for this CPU (`llvm.program.Executable`), one native
  call per step;
- "cuda": the program's kernels as CUDA C on the GPU through pycuda
  (`cuda.runtime.CudaExecutable`, a fixed launch list over buffers allocated once); the jit picks
  it for tensors on `cuda()`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from . import reference
from .kernels import run_kernels

BACKENDS = ("compiled", "reference", "kernels", "cuda")


class Backend(Protocol):
    fresh_outputs: bool

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]: ...


class _Interpreted:
    """A backend that interprets: `run` calls `fn(arrays)`; outputs may be inputs passed
    through."""

    fresh_outputs = False

    def __init__(self, fn: Callable[[list], list]) -> None:
        self._fn = fn

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        return self._fn(arrays)


class _Compiled:
    """The LLVM executable behind the common calling convention."""

    fresh_outputs = True

    def __init__(self, executable) -> None:
        self.executable = executable

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        return self.executable.run(arrays, checked=True)


def compiled_backend(executable) -> Backend:
    """The "compiled" backend around an executable made already (loaded from the disk cache)."""
    return _Compiled(executable)


def make_backend(name: str, program) -> Backend:
    """The backend `name` (one of BACKENDS) for `program`, a `Program` after the pipeline (for
    "reference", anything with the optimized `.graph`)."""
    if name == "reference":
        return _Interpreted(lambda arrays: reference.run_graph(program.graph, arrays))
    if name == "kernels":
        return _Interpreted(lambda arrays: run_kernels(program.kernels, arrays))
    if name == "compiled":
        from .llvm.program import compile_program as compile_llvm

        return _Compiled(compile_llvm(program))
    if name == "cuda":
        from .cuda.runtime import CudaExecutable, available

        if not available():
            raise RuntimeError("the cuda backend needs pycuda and a CUDA device (cuda().enabled())")
        return _Compiled(CudaExecutable(program))
    raise ValueError(f"no backend {name!r}: use one of {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "Backend", "compiled_backend", "make_backend"]
