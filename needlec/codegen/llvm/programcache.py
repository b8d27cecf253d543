"""Whole compiled steps on disk: a new process that traces the same step skips the passes, the
code generator and LLVM, and loads what an earlier process made of it.

A program entry (`diskcache`, kind "program") maps a traced graph to the pickled `Program` the
pipeline made of it (optimized graph, kernels, memory plan) and the `Executable.snapshot` of its
compiled form; the machine code itself stays in its object entry, which the snapshot names. The
key hashes the traced graph's content (`graph_digest`: constants by value), the number of
results and the donated inputs, this CPU's name and features, the LLVM pipeline, whether the
native runtime is built and which BLAS symbols exist, the versions of needlec, llvmlite and
LLVM, and the sizes and modification times of needlec's IR, pass and code generator sources,
so an edited compiler never loads an entry an older one wrote (a pass replaced while the
process runs, as a test may do, turns the cache off: `pipeline_is_ours`). An entry that is damaged,
foreign, fails to unpickle, or names an object entry that is gone is recomputed and rewritten,
never used.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
from pathlib import Path

import llvmlite
import llvmlite.binding as llvm

from . import diskcache, runtime, target

_SOURCES = ("ir", "passes", "codegen")  # the parts of needlec that decide what a graph becomes


@functools.cache
def _compiler_fingerprint() -> str:
    """Size and modification time of every source file that shapes compiled code."""
    from ... import __version__

    root = Path(__file__).resolve().parents[2]
    h = hashlib.sha256(__version__.encode())
    stack = [str(root / d) for d in _SOURCES]
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in sorted(it, key=lambda e: e.name):
                if e.is_dir() and not e.name.startswith((".", "__")):
                    stack.append(e.path)
                elif e.name.endswith(".py"):
                    st = e.stat()
                    h.update(f"{e.path} {st.st_size} {st.st_mtime_ns}\n".encode())
    return h.hexdigest()


@functools.cache
def _environment() -> str:
    """Everything about this process, besides the graph, that changes the compiled step."""
    from .blas import external_symbols

    cpu, features = target.host_cpu()
    parts = (
        cpu,
        features,
        target.PIPELINE,
        f"runtime={runtime.available()}",
        "blas=" + ",".join(sorted(external_symbols())),
        llvmlite.__version__,
        ".".join(map(str, llvm.llvm_version_info)),
        _compiler_fingerprint(),
    )
    return "\0".join(parts)


def pipeline_is_ours() -> bool:
    """Whether the pass pipeline is needlec's own: a pass replaced in this process (a test
    monkeypatching one) is invisible to the key, so then the cache is not used at all."""
    from ... import passes

    for _, step in passes.PIPELINE:
        if getattr(step, "__module__", "") != passes.__name__:
            return False
    for name in passes.__all__:
        obj = getattr(passes, name, None)
        if callable(obj) and not getattr(obj, "__module__", "needlec").startswith("needlec."):
            return False
    return True


def key(graph_digest: str, n_results: int | None, donate: dict[int, int]) -> str:
    """The program entry's key of a traced graph (its `graph_digest`) compiled with
    `n_results` results and outputs `donate`d over inputs, on this machine."""
    from . import runtime
    from .mgemm import mode

    h = hashlib.sha256()
    gemm = f"gemm={mode()}"  # NEEDLEC_GEMM, read at each compile
    # the pool's size: a large GEMM is cut into one block per thread when the step compiles
    # (the bits are the same either way; a step compiled for 1 thread would not use 2)
    threads = f"threads={runtime.num_threads()}"
    parts = (graph_digest, repr(n_results), repr(sorted(donate.items())), _environment())
    for part in (*parts, gemm, threads):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def load(k: str):
    """`(program, executable)` stored under `k`, or None (no entry, a damaged one, or its
    machine code gone)."""
    body = diskcache.load(k, "program")
    if body is None:
        return None
    try:
        program, state = pickle.loads(body)
    except Exception:  # written by another needlec: as good as damaged
        diskcache.program_stats.damaged += 1
        return None
    from .program import Executable

    executable = Executable.restore(state)
    if executable is None:
        return None
    return program, executable


def store(k: str, program, executable) -> bool:
    """Write `program` and `executable` under `k`; False (nothing written) when the executable
    cannot be restored from machine code alone or the program does not pickle (a deep graph,
    an op holding a Python object)."""
    if not diskcache.enabled():
        return False
    state = executable.snapshot()
    if state is None:
        return False
    try:
        body = pickle.dumps((program, state), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # RecursionError, or an object that does not pickle
        return False
    diskcache.store(k, body, "program")
    return True


__all__ = ["key", "load", "pipeline_is_ours", "store"]
