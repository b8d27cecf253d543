"""Where compiled code finds BLAS: the addresses of scipy's sgemm and dgemm, and of the
thread-count functions of the OpenBLAS behind them. Kept apart from the GEMM renderer so that
loading compiled code from the disk cache binds these symbols without importing the code
generator."""

from __future__ import annotations

import ctypes
import functools
import glob
import importlib
import importlib.util
import os


def _cython_blas():
    """scipy's `scipy.linalg.cython_blas`, loaded on its own when scipy.linalg is not imported
    yet (importing that package takes about 170 ms; this extension alone about 2 ms): a private
    module object, so a later `import scipy.linalg` makes its own as usual."""
    import sys

    name = "scipy.linalg.cython_blas"
    if name in sys.modules or "scipy.linalg" in sys.modules:
        return importlib.import_module(name)
    spec = importlib.util.find_spec("scipy")
    found = []
    for root in spec.submodule_search_locations or () if spec is not None else ():
        found += glob.glob(os.path.join(root, "linalg", "cython_blas*.so"))
        found += glob.glob(os.path.join(root, "linalg", "cython_blas*.pyd"))
    if not found:
        return importlib.import_module(name)
    spec = importlib.util.spec_from_file_location(name, found[0])
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception:  # anything unexpected: the ordinary import
        return importlib.import_module(name)
    finally:
        if sys.modules.get(name) is module:  # not left where `import scipy.linalg` looks
            del sys.modules[name]
    return module


@functools.cache
def _cython_blas_path() -> str | None:
    """The file of scipy's `cython_blas` extension, found without importing scipy."""
    spec = importlib.util.find_spec("scipy")
    for root in spec.submodule_search_locations or () if spec is not None else ():
        for pattern in ("cython_blas*.so", "cython_blas*.pyd"):
            found = glob.glob(os.path.join(root, "linalg", pattern))
            if found:
                return found[0]
    return None


def _linked_routine(name: str) -> int | None:
    """The Fortran BLAS routine `name` that scipy's `cython_blas` calls, looked up in the
    libraries that extension links (`scipy_<name>_` in the OpenBLAS scipy ships, else
    `<name>_`): the extension is only mapped, never initialized, so scipy is not imported
    (that import costs a new process about 10 ms). None where it is not found."""
    path = _cython_blas_path()
    if path is None or not path.endswith(".so"):
        return None
    try:
        lib = ctypes.CDLL(path)
    except OSError:
        return None
    for symbol in (f"scipy_{name}_", f"{name}_"):
        try:
            return ctypes.cast(getattr(lib, symbol), ctypes.c_void_p).value
        except AttributeError:
            continue
    return None


@functools.cache
def blas_address(name: str) -> int:
    """The address of scipy's BLAS routine `name` (for example "sgemm"): the routine itself
    where scipy's library exports it, else the extension's wrapper around it (which takes the
    same arguments)."""
    found = _linked_routine(name)
    if found:
        return found
    capsule = _cython_blas().__pyx_capi__[name]
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype = ctypes.c_void_p
    get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    return get_pointer(capsule, get_name(capsule))


class _DlInfo(ctypes.Structure):
    _fields_ = [
        ("dli_fname", ctypes.c_char_p),
        ("dli_fbase", ctypes.c_void_p),
        ("dli_sname", ctypes.c_char_p),
        ("dli_saddr", ctypes.c_void_p),
    ]


_THREAD_FUNCTIONS = [  # (get, set) of the OpenBLAS builds scipy ships or links
    ("scipy_openblas_get_num_threads", "scipy_openblas_set_num_threads"),
    ("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
    ("openblas_get_num_threads", "openblas_set_num_threads"),
    ("openblas_get_num_threads64_", "openblas_set_num_threads64_"),
]


@functools.cache
def blas_thread_functions() -> tuple[int, int] | None:
    """Addresses of (get, set) the thread count of the BLAS that holds scipy's sgemm, or None
    where it is not an OpenBLAS we know. Compiled steps run BLAS on one thread and split large
    GEMMs over the runtime's pool themselves, so BLAS's threads never fight the pool's."""
    info = _DlInfo()
    try:
        libc = ctypes.CDLL(None)
        if not libc.dladdr(ctypes.c_void_p(blas_address("sgemm")), ctypes.byref(info)):
            return None
        lib = ctypes.CDLL(info.dli_fname.decode())
    except (OSError, AttributeError):
        return None
    for get, put in _THREAD_FUNCTIONS:
        try:
            fget, fset = getattr(lib, get), getattr(lib, put)
        except AttributeError:
            continue
        as_int = lambda f: ctypes.cast(f, ctypes.c_void_p).value  # noqa: E731
        return as_int(fget), as_int(fset)
    return None


def external_symbols() -> dict[str, int]:
    """The BLAS functions compiled code calls, by the names it calls them (resolved when the
    code is loaded, so code cached on disk never holds another process's addresses)."""
    out = {"needlec_sgemm": blas_address("sgemm"), "needlec_dgemm": blas_address("dgemm")}
    threads = blas_thread_functions()
    if threads is not None:
        out["needlec_blas_get_threads"], out["needlec_blas_set_threads"] = threads
    return out


__all__ = ["blas_address", "blas_thread_functions", "external_symbols"]
