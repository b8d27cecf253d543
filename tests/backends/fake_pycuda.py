"""A stand-in for pycuda whose "GPU" is the host: device memory is numpy byte arrays, "nvcc"
compiles the CUDA C with the host compiler against `cuda_host.h`, and a launch runs the kernel
on the host's fibers. It has only what `needlec.codegen.cuda.runtime` calls, so the runtime's
allocation, compilation cache, launch list and transfers run without a GPU.

CUDA graphs as pycuda (2021.1 and later) offers them: `Stream.begin_capture()`, launches on
the capturing stream recorded instead of run, `Stream.end_capture() -> Graph`,
`Graph.instantiate() -> GraphExec`, `GraphExec.launch(stream=None)`. As on a GPU, a synchronous
copy or a synchronize while a capture is open fails. `install(..., graphs=False)` models a
pycuda without them. `stats` counts compiles, allocations, kernel launches made from the host,
graph launches and kernels run from graphs.
"""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
import sys
import tempfile
import types

import numpy as np

from . import cuda_emulation as emu

_SIGNATURE = re.compile(r'extern "C" __global__ void __launch_bounds__\(\d+\) (\w+)\(([^)]*)\)')


class DeviceAllocation:
    """`nbytes` of host memory aligned to 256 bytes, as cuMemAlloc's are."""

    def __init__(self, nbytes: int) -> None:
        raw = np.zeros(nbytes + 256, np.uint8)
        start = (-raw.ctypes.data) % 256
        self.array = raw[start : start + nbytes]

    def __int__(self) -> int:
        return self.array.ctypes.data


_capturing: set = set()  # streams with a capture open


class StreamCaptureError(RuntimeError):
    """What the driver says to an operation that a stream capture forbids."""


def _no_capture(what: str) -> None:
    if _capturing:
        raise StreamCaptureError(f"{what}: operation not permitted when stream is capturing")


def _address(ptr) -> int:
    return ptr.array.ctypes.data if isinstance(ptr, DeviceAllocation) else int(ptr)


class Stream:
    """A stream of a pycuda without CUDA graphs."""

    def __init__(self, flags: int = 0) -> None:
        self.recording: list | None = None

    def synchronize(self) -> None:
        _no_capture("cuStreamSynchronize")


class CapturingStream(Stream):
    """A stream with pycuda's stream capture."""

    def begin_capture(self, capture_mode: int = 0) -> None:
        if self.recording is not None:
            raise StreamCaptureError("cuStreamBeginCapture: the stream is already capturing")
        self.recording = []
        _capturing.add(self)

    def end_capture(self) -> Graph:
        if self.recording is None:
            raise StreamCaptureError("cuStreamEndCapture: the stream is not capturing")
        graph, self.recording = Graph(self.recording), None
        _capturing.discard(self)
        return graph


class Graph:
    """A captured graph: its kernel nodes, in stream order."""

    def __init__(self, nodes: list) -> None:
        self.nodes = list(nodes)

    def instantiate(self) -> GraphExec:
        return GraphExec(self.nodes)


class GraphExec:
    def __init__(self, nodes: list) -> None:
        self.nodes = nodes

    def launch(self, stream=None) -> None:
        _no_capture("cuGraphLaunch")
        stats["graph_launches"] += 1
        for fn, grid, block, args in self.nodes:
            stats["graph_kernels"] += 1
            fn.run(grid, block, args)


class Event:
    def record(self, stream=None) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def time_till(self, other) -> float:
        return 1.0


class Function:
    def __init__(self, lib, name: str) -> None:
        self.fn = ctypes.cast(getattr(lib, f"run_{name}"), ctypes.c_void_p)
        self.emulate = lib.nc_emulate
        self.emulate.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
        self.format = None

    def prepare(self, fmt: str) -> None:
        self.format = fmt

    def prepared_async_call(self, grid, block, stream, *args) -> None:
        assert self.format == "P" * len(args), (self.format, len(args))
        if stream is not None and stream.recording is not None:
            stream.recording.append((self, grid, block, [_address(a) for a in args]))
            return
        stats["launches"] += 1
        self.run(grid, block, [_address(a) for a in args])

    def run(self, grid, block, args: list[int]) -> None:
        ptrs = (ctypes.c_void_p * len(args))(*args)
        grid = min(grid[0], emu.MAX_GRID)  # grid-stride kernels: fewer blocks, same result
        self.emulate(self.fn, ctypes.cast(ptrs, ctypes.c_void_p), grid, block[0])


class Module:
    def __init__(self, blob: bytes) -> None:
        fd, path = tempfile.mkstemp(suffix=".so")
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        self.lib = ctypes.CDLL(path)

    def get_function(self, name: str) -> Function:
        return Function(self.lib, name)


stats = {"compiles": 0, "allocations": 0, "launches": 0, "graph_launches": 0, "graph_kernels": 0}


def compile(source: str, arch: str, options, no_extern_c: bool, cache_dir) -> bytes:  # noqa: A001
    """The "cubin": a host shared library of the kernels and a wrapper per function."""
    assert no_extern_c and arch == "sm_90" and "--use_fast_math" not in options
    stats["compiles"] += 1
    wrappers = []
    for name, params in _SIGNATURE.findall(source):
        types_ = [p.rsplit(" ", 1)[0] for p in params.split(", ")]
        casts = ", ".join(f"({t})a[{i}]" for i, t in enumerate(types_))
        wrappers.append(f'extern "C" void run_{name}(void** a) {{ {name}({casts}); }}')
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cpp")
        with open(path, "w") as f:
            f.write(source + "\n" + "\n".join(wrappers))
        out = os.path.join(tmp, "k.so")
        cmd = [emu.CXX, "-std=c++20", "-O1", "-ffp-contract=off", "-shared", "-fPIC", "-w"]
        subprocess.run([*cmd, "-include", emu.HEADER, path, "-o", out], check=True)
        with open(out, "rb") as f:
            return f.read()


def install(monkeypatch, graphs: bool = True) -> None:
    """Put the stand-in in sys.modules as pycuda, pycuda.driver, pycuda.compiler, pycuda.autoinit
    (with stream capture and graphs, or as a pycuda without them; matmul tiles from the
    heuristic: a test of the autotuner turns it back on)."""
    monkeypatch.setenv("NEEDLEC_CUDA_AUTOTUNE", "0")
    drv = types.ModuleType("pycuda.driver")

    def mem_alloc(n: int) -> DeviceAllocation:
        _no_capture("cuMemAlloc")
        stats["allocations"] += 1
        return DeviceAllocation(n)

    def htod(dst, src, stream=None):
        _no_capture("cuMemcpyHtoD")  # copies are never captured: their host memory changes
        src = np.ascontiguousarray(src).view(np.uint8).reshape(-1)
        ctypes.memmove(_address(dst), src.ctypes.data, src.size)

    def dtoh(dst, src, stream=None):
        _no_capture("cuMemcpyDtoH")
        flat = dst.reshape(-1).view(np.uint8)
        ctypes.memmove(flat.ctypes.data, _address(src), flat.size)

    device = types.SimpleNamespace(compute_capability=lambda: (9, 0), name=lambda: "host")
    ctx = types.SimpleNamespace(get_device=lambda: device)
    drv.init = lambda: None
    drv.Device = types.SimpleNamespace(count=lambda: 1)
    drv.Context = types.SimpleNamespace(get_current=lambda: ctx, get_device=lambda: device)
    drv.mem_alloc = mem_alloc
    drv.memcpy_htod = drv.memcpy_htod_async = htod
    drv.memcpy_dtoh = drv.memcpy_dtoh_async = dtoh
    drv.module_from_buffer = Module
    drv.Stream, drv.Event = (CapturingStream if graphs else Stream), Event
    if graphs:
        drv.Graph = Graph
    compiler = types.ModuleType("pycuda.compiler")
    compiler.compile = compile
    pkg = types.ModuleType("pycuda")
    pkg.driver, pkg.compiler = drv, compiler
    for name, mod in (
        ("pycuda", pkg),
        ("pycuda.driver", drv),
        ("pycuda.compiler", compiler),
        ("pycuda.autoinit", types.ModuleType("pycuda.autoinit")),
    ):
        monkeypatch.setitem(sys.modules, name, mod)
