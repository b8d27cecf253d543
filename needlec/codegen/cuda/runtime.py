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
  every buffer allocated once (inputs and outputs on the first call that needs them); `run(arrays)` copies the inputs in, launches every phase of every
  kernel in order on one stream, and copies the outputs back. Given device arrays (anything with
  a `__cuda_array_interface__`: a `cuda()` NDArray), `run` binds their pointers into the launch
  list instead, writes each output into a fresh `storage.DeviceBuffer` or over the parameter the
  memory plan donates to it, and copies nothing but host-side scalars. A kernel the renderer
  leaves on the host (a Python callback) runs on the kernel interpreter between launches.
"""

from __future__ import annotations

import functools
import hashlib
import math
import subprocess
import threading
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


def drv():
    """pycuda's driver module, with the context current."""
    import pycuda.driver as driver

    context()
    return driver


def device_pointer(a) -> int | None:
    """The device address of `a`'s first element when `a` lives on the GPU (it has a
    `__cuda_array_interface__`, compact), else None (a host array)."""
    iface = getattr(a, "__cuda_array_interface__", None)
    if iface is None:
        return None
    if iface.get("strides") is not None:
        raise ValueError("a device array passed to a CUDA program must be compact")
    return int(iface["data"][0])


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
        function names starting with `prefix` (several programs compiled as one file). The
        program's inputs and outputs get memory of their own only when a call passes host
        arrays (a call over device arrays binds theirs)."""
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
        io = {*self.kernels.inputs, *self.kernels.outputs}
        for b in dict.fromkeys(every):
            if b not in io or b in self.kernels.constants:
                self._own(b)
        for b, a in self.kernels.constants.items():
            drv.memcpy_htod(self.memory[b], np.ascontiguousarray(a))
        scratch = max([ck.scratch_bytes for ck in self.cuda.kernels] + [64])
        c, self.scratch = alloc.alloc(scratch)
        self._blocks.append((c, self.scratch))
        # the launch list, fixed: (function, grid, block, argument pointers) or a host kernel
        self.launches: list = []
        self._ptr = {b: int(self.memory.get(b, 0)) for b in every}  # what each is bound to
        self._uses: dict = {}  # Buffer -> [(argument list, position)]: where its pointer sits
        for k, ck in zip(self.kernels.kernels, self.cuda.kernels, strict=True):
            if ck.host is not None:
                self.launches.append(("host", k))
                continue
            args = [self._ptr[b] for b in ck.buffers] + [int(self.scratch)]
            for i, b in enumerate(ck.buffers):
                self._uses.setdefault(b, []).append((args, i))
            for launch in ck.launches:
                fn = self.module.get_function(launch.name)
                fn.prepare("P" * len(args))  # packed once: a launch is one driver call
                self.launches.append(("device", (fn, launch.grid, launch.block, args)))
        self.donated = _donations(program, self.cuda.kernels)
        self._lock = threading.Lock()  # a call binds pointers into the shared launch list

    def _own(self, b) -> object:
        """The executable's own memory for buffer `b` (allocated on first use)."""
        blk = self.memory.get(b)
        if blk is None:
            c, blk = allocator().alloc(max(1, b.nbytes))
            self._blocks.append((c, blk))
            self.memory[b] = blk
        return blk

    def _bind(self, pointers: dict) -> None:
        """Point every launch argument of each buffer in `pointers` (Buffer -> address) there."""
        for b, p in pointers.items():
            if self._ptr.get(b) != p:
                self._ptr[b] = p
                for args, i in self._uses.get(b, ()):
                    args[i] = p

    def run(self, arrays: list, checked: bool = True) -> list:
        """Outputs of one call: numpy arrays in and out, or, when an input lives on the GPU
        (see `run_on_device`), device arrays out."""
        if any(device_pointer(a) is not None for a in arrays):
            return self.run_on_device(arrays)
        with self._lock:
            return self._run_host(arrays)

    def _run_host(self, arrays: list) -> list[np.ndarray]:
        drv, s = self.drv, self.stream
        io = [*self.kernels.inputs, *self.kernels.outputs]
        self._bind({b: int(self._own(b)) for b in io})  # its own (a device run binds others)
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

    def run_on_device(self, arrays: list) -> list:
        """One call over device-resident inputs: each input with a `__cuda_array_interface__`
        is bound by its pointer (no copy), a host array (a hyperparameter, a seed) is copied into
        the executable's own buffer. Each output is the input object it was written over (a
        donated parameter, updated in place) or a fresh `DeviceBuffer` the kernels wrote into."""
        with self._lock:
            return self._run_device(arrays)

    def _run_device(self, arrays: list) -> list:
        from .storage import DeviceBuffer

        drv, s = self.drv, self.stream
        kg = self.kernels
        binding, device_inputs = {}, {}
        for j, (b, a) in enumerate(zip(kg.inputs, arrays, strict=True)):
            p = device_pointer(a)
            if p is None:
                if b.nbytes:
                    drv.memcpy_htod_async(self._own(b), np.ascontiguousarray(a, b.dtype), s)
                p = int(self.memory[b])
            else:
                device_inputs[b] = j
            binding[b] = p
        out, copies, made = [], [], {}
        for b in kg.outputs:
            j = device_inputs.get(kg.inputs[self.donated[b]]) if b in self.donated else None
            if j is not None:  # written over the parameter it replaces
                binding[b] = binding[kg.inputs[j]]
                out.append(arrays[j])
                continue
            buf = DeviceBuffer(math.prod(b.shape), b.dtype)
            if b in binding or b in made or b in kg.constants:  # an input or constant returned
                copies.append((buf, b))  # as it is, or one output twice: a copy of its own
            else:
                binding[b] = made[b] = buf.ptr()
            out.append(buf)
        self._bind(binding)
        self.launch()
        for buf, b in copies:
            if buf.nbytes:
                drv.memcpy_dtod_async(buf.ptr(), self._ptr[b], buf.nbytes, s)
        s.synchronize()  # the outputs are ready, and the inputs' memory free to reuse
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
                drv.memcpy_dtoh(env[b], self._ptr[b])
        run_kernel(k, env)
        for b in k.outputs:
            if b.nbytes:
                drv.memcpy_htod(self._ptr[b], np.ascontiguousarray(env[b], b.dtype))

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


def _donations(program, kernels: list) -> dict:
    """Donated output -> index of the input whose memory it is written over: the memory plan's
    aliases where the writing kernel reads the input once, in the loop body that stores the
    output (a parameter's update: each thread reads its element before writing it), so no
    thread reads an overwritten value."""
    from ..llvm.program import _reads_before_writing
    from ..schedule import schedule_kernel

    plan = getattr(program, "memory", None)
    if plan is None:
        return {}
    kg = program.kernels
    index = {b: i for i, b in enumerate(kg.inputs)}
    writer = {b: (k, ck) for k, ck in zip(kg.kernels, kernels, strict=True) for b in k.outputs}
    out = {}
    for o, i in plan.aliases.items():
        k, ck = writer[o]
        if ck.host is None and i in index:
            if _reads_before_writing(schedule_kernel(k), i, o):
                out[o] = index[i]
    return out


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
