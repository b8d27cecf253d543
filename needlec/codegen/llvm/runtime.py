"""The native runtime compiled code calls: a thread pool (`runtime/pool.c`, built into the
extension `needlec._runtime` by the package install).

Kernels hand their parallel loops to `needlec_parallel_for`. The pool runs
`NEEDLEC_NUM_THREADS` threads, the caller's included, or as many as the CPUs this process may
run on. Without the extension (a source tree never installed) compiled code runs every loop on
the calling thread, and `available()` says so.
"""

from __future__ import annotations

import functools
import os
import threading

import llvmlite.binding as llvm

try:
    from ... import _runtime
except ImportError:  # not built: loops run serially
    _runtime = None

_LOCK = threading.Lock()
_started = False

# `run_step(step, table, first, arrays)`: point a step's table at its input arrays and run it, in
# C (an older build without it: None, and the caller uses ctypes)
run_step = getattr(_runtime, "run_step", None)
# `bind_run(step, table, outputs, first, objs, scratch, updated)`: the jit hit path's call (see
# runtime/module.c); None without the runtime, and a hit takes the general path
bind_run = getattr(_runtime, "bind_run", None)


def available() -> bool:
    """Whether the native runtime is built (compiled loops run in parallel)."""
    return _runtime is not None


def default_threads() -> int:
    """`NEEDLEC_NUM_THREADS`, or the number of CPUs this process may run on."""
    env = os.environ.get("NEEDLEC_NUM_THREADS", "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ValueError(
                f"NEEDLEC_NUM_THREADS must be a positive integer, not {env!r}"
            ) from None
        if n < 1:
            raise ValueError(f"NEEDLEC_NUM_THREADS must be a positive integer, not {env!r}")
        return n
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def set_num_threads(n: int) -> int:
    """Run compiled parallel loops on `n` threads (the caller's included); returns the count."""
    global _started
    if _runtime is None:
        return 1
    with _LOCK:
        _started = True
        return _runtime.set_num_threads(int(n))


def num_threads() -> int:
    """The threads compiled parallel loops run on now."""
    ensure_started()
    return _runtime.num_threads() if _runtime is not None else 1


def ensure_started() -> None:
    """Start the pool (once per process; again in a forked child, which has no workers)."""
    if not _started and _runtime is not None:
        with _LOCK:
            if not _started:
                _set_default()


def _set_default() -> None:
    global _started
    _runtime.set_num_threads(default_threads())
    _started = True


def _forked() -> None:
    global _started
    _started = False


if _runtime is not None:
    os.register_at_fork(after_in_child=_forked)


@functools.cache
def register_symbols() -> None:
    """Tell LLVM's engines where the functions compiled code calls by name are: the runtime's
    and the BLAS's (this process's addresses, bound when code is loaded)."""
    from .blas import external_symbols

    symbols = dict(_runtime.symbols()) if _runtime is not None else {}
    symbols.update(external_symbols())
    for name, addr in symbols.items():
        llvm.add_symbol(name, addr)


__all__ = ["available", "default_threads", "ensure_started", "num_threads", "set_num_threads"]
