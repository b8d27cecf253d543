"""Running CUDA kernels through pycuda: the device, a caching allocator, compiled-module cache,
and an executable that replays a program's launch list.

pycuda is optional (`pip install -e ".[cuda]"`); nothing here imports it until a GPU is used, so
`import needlec` never needs it, and `available()` is False (not an error) without it or a GPU.

- `CachingAllocator`: device memory in size classes (powers of two from 512 bytes); a freed
  block goes back to its class and the next request of that class reuses it, so a step that runs
  again allocates nothing.
- `compile_source`: CUDA C to a cubin with nvcc (through `pycuda.compiler.compile`), cached on
  disk by the source's hash, the GPU's architecture and the nvcc and needlec versions, in the
  checksummed cache the CPU backend uses (a damaged entry is compiled afresh).
- `CudaExecutable`: a `Program`'s kernels rendered (`program.render_program`), compiled once,
  every buffer allocated once; `run(arrays)` copies the inputs in, launches every phase of every
  kernel in order on one stream, and copies the outputs back. A kernel the renderer leaves on
  the host (a Python callback) runs on the kernel interpreter between launches.
"""

from __future__ import annotations

import functools
import hashlib
import subprocess
from collections.abc import Callable

import numpy as np

COMPILE_OPTIONS = ("-O3",)  # no --use_fast_math: the math keeps the accuracy the tests hold


@functools.cache
def available() -> bool:
    """Whether pycuda imports and a CUDA device initialises (asked once; never raises)."""
    try:
        import pycuda.driver as drv

        drv.init()
        return drv.Device.count() > 0
    except Exception:
        return False


@functools.cache
def context():
    """The primary context of device 0, made current for this process (pycuda.autoinit's)."""
    import pycuda.autoinit  # noqa: F401  (creates and activates the context)
    import pycuda.driver as drv

    return drv.Context.get_current()


def architecture() -> str:
    """`sm_XY` of device 0."""
    import pycuda.driver as drv

    context()
    major, minor = drv.Context.get_device().compute_capability()
    return f"sm_{major}{minor}"


@functools.cache
def nvcc_version() -> str:
    try:
        out = subprocess.run(["nvcc", "--version"], capture_output=True, text=True, timeout=60)
        return out.stdout.strip().splitlines()[-1] if out.stdout else "unknown"
    except OSError:
        return "unknown"


class CachingAllocator:
    """Device memory in power-of-two size classes, reused after `free` (see the module
    docstring). `allocate` is the raw allocation (pycuda's `mem_alloc` on a GPU)."""

    MIN_BYTES = 512

    def __init__(self, allocate: Callable[[int], object]) -> None:
        self._allocate = allocate
        self._free: dict[int, list] = {}
        self.allocated_bytes = 0  # held from the driver, in use or cached
        self.allocations = 0  # raw allocations made

    def size_class(self, nbytes: int) -> int:
        return max(self.MIN_BYTES, 1 << max(0, nbytes - 1).bit_length())

    def alloc(self, nbytes: int) -> tuple[int, object]:
        """(size class, block) of at least `nbytes` bytes: a cached block when there is one."""
        c = self.size_class(nbytes)
        pool = self._free.get(c)
        if pool:
            return c, pool.pop()
        self.allocations += 1
        self.allocated_bytes += c
        return c, self._allocate(c)

    def free(self, size_class: int, block: object) -> None:
        self._free.setdefault(size_class, []).append(block)

    def cached_bytes(self) -> int:
        return sum(c * len(v) for c, v in self._free.items())


@functools.cache
def allocator() -> CachingAllocator:
    """The process's device allocator."""
    import pycuda.driver as drv

    context()
    return CachingAllocator(drv.mem_alloc)


def cache_key(source: str, arch: str) -> str:
    from ... import __version__

    h = hashlib.sha256()
    for part in (source, arch, nvcc_version(), __version__, " ".join(COMPILE_OPTIONS), "cuda"):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def compile_source(source: str, arch: str | None = None) -> bytes:
    """The cubin of `source` for `arch` (device 0's by default), from the disk cache or nvcc."""
    from pycuda.compiler import compile as nvcc_compile

    from ..llvm import diskcache

    arch = arch or architecture()
    k = cache_key(source, arch)
    cubin = diskcache.load(k)
    if cubin is None:
        cubin = nvcc_compile(
            source, arch=arch, options=list(COMPILE_OPTIONS), no_extern_c=True, cache_dir=False
        )
        diskcache.store(k, cubin)
    return cubin


class CudaExecutable:
    """A program's kernels on the GPU (see the module docstring); `run` has the backends'
    calling convention: numpy arrays in, one per graph input, numpy arrays out."""

    fresh_outputs = True

    def __init__(self, program, prefix: str = "", module=None) -> None:
        """`module`: an already loaded module holding this program's kernels, rendered with
        function names starting with `prefix` (several programs compiled as one file)."""
        import pycuda.driver as drv

        from .program import render_program

        self.drv = drv
        self.kernels = program.kernels
        self.cuda = render_program(self.kernels, prefix=prefix, with_header=module is None)
        self.source = self.cuda.source
        context()
        self.module = module or drv.module_from_buffer(compile_source(self.source))
        self.stream = drv.Stream()
        alloc = allocator()
        self._blocks: list = []
        self.memory: dict = {}  # Buffer -> device allocation
        every = [*self.kernels.inputs, *self.kernels.constants]
        for k in self.kernels.kernels:
            every += [*k.inputs, *k.outputs]
        for b in dict.fromkeys(every):
            c, blk = alloc.alloc(max(1, b.nbytes))
            self._blocks.append((c, blk))
            self.memory[b] = blk
        for b, a in self.kernels.constants.items():
            drv.memcpy_htod(self.memory[b], np.ascontiguousarray(a))
        scratch = max([ck.scratch_bytes for ck in self.cuda.kernels] + [64])
        c, self.scratch = alloc.alloc(scratch)
        self._blocks.append((c, self.scratch))
        # the launch list, fixed: (function, grid, block, argument pointers) or a host kernel
        self.launches: list = []
        for k, ck in zip(self.kernels.kernels, self.cuda.kernels, strict=True):
            if ck.host is not None:
                self.launches.append(("host", k))
                continue
            args = [int(self.memory[b]) for b in ck.buffers] + [int(self.scratch)]
            for launch in ck.launches:
                fn = self.module.get_function(launch.name)
                fn.prepare("P" * len(args))  # packed once: a launch is one driver call
                self.launches.append(("device", (fn, launch.grid, launch.block, args)))

    def run(self, arrays: list[np.ndarray], checked: bool = True) -> list[np.ndarray]:
        drv, s = self.drv, self.stream
        for b, a in zip(self.kernels.inputs, arrays, strict=True):
            if b.nbytes:
                drv.memcpy_htod_async(self.memory[b], np.ascontiguousarray(a, b.dtype), s)
        self.launch()
        out = []
        for b in self.kernels.outputs:
            host = np.empty(b.shape, b.dtype)
            if b.nbytes:
                drv.memcpy_dtoh_async(host, self.memory[b], s)
            out.append(host)
        s.synchronize()
        return out

    def launch(self) -> None:
        """Every kernel's phases, in order, on the executable's stream (no transfers: the
        inputs are what the last `run` copied in)."""
        s = self.stream
        for kind, item in self.launches:
            if kind == "host":
                self._run_on_host(item)
                continue
            fn, grid, block, args = item
            fn.prepared_async_call((grid, 1), (block, 1, 1), s, *args)

    def time(self, repeats: int = 20) -> float:
        """Seconds one `launch` takes on the GPU (CUDA events; the median of `repeats`)."""
        drv = self.drv
        self.launch()
        times = []
        for _ in range(max(1, repeats)):
            start, end = drv.Event(), drv.Event()
            start.record(self.stream)
            self.launch()
            end.record(self.stream)
            end.synchronize()
            times.append(start.time_till(end) / 1e3)
        return float(np.median(times))

    def _run_on_host(self, k) -> None:
        """A kernel with no device code: its inputs copied back, run, its outputs copied in."""
        from ..kernels import run_kernel

        drv = self.drv
        self.stream.synchronize()
        env = {}
        for b in k.inputs:
            env[b] = np.empty(b.shape, b.dtype)
            if b.nbytes:
                drv.memcpy_dtoh(env[b], self.memory[b])
        run_kernel(k, env)
        for b in k.outputs:
            if b.nbytes:
                drv.memcpy_htod(self.memory[b], np.ascontiguousarray(env[b], b.dtype))

    def close(self) -> None:
        """Give the buffers back to the allocator's cache."""
        alloc = allocator()
        for c, blk in self._blocks:
            alloc.free(c, blk)
        self._blocks = []

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def copy_bandwidth(nbytes: int = 1 << 30, repeats: int = 20) -> float:
    """Device-to-device copy bandwidth in bytes per second (read plus write), the ceiling an
    elementwise kernel is measured against."""
    drv = __import__("pycuda.driver", fromlist=["driver"])
    context()
    a, b = drv.mem_alloc(nbytes), drv.mem_alloc(nbytes)
    drv.memcpy_dtod(b, a, nbytes)
    start, end = drv.Event(), drv.Event()
    start.record()
    for _ in range(repeats):
        drv.memcpy_dtod(b, a, nbytes)
    end.record()
    end.synchronize()
    seconds = start.time_till(end) / 1e3 / repeats
    return 2 * nbytes / seconds


__all__ = [
    "CachingAllocator",
    "CudaExecutable",
    "available",
    "compile_source",
    "copy_bandwidth",
]
