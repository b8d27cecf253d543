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
  its buffers placed by the program's memory plan in one device allocation (temporaries share
  the plan's arena; every offset a multiple of 256 bytes); `run(arrays)` copies the inputs in,
  launches every phase of every kernel in order on one stream, and copies the outputs back. The
  launch list is captured once into CUDA graphs (stream capture) and replayed with one launch
  per graph, so the host cost of a step does not grow with its kernels; pycuda without stream
  capture gets the launch list. A kernel the renderer leaves on the host (a Python callback)
  runs on the kernel interpreter between graphs.
"""

from __future__ import annotations

import functools
import hashlib
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ...passes.memory import MemoryPlan

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


DEVICE_ALIGN = 256  # every buffer's offset in the arena: 16-byte vector loads and coalescing


def graphs_enabled() -> bool:
    """Whether executables replay their launches as CUDA graphs (`NEEDLEC_CUDA_GRAPHS=0`: no)."""
    return os.environ.get("NEEDLEC_CUDA_GRAPHS", "1") != "0"


def device_plan(program) -> MemoryPlan:
    """The program's memory plan with every offset a multiple of `DEVICE_ALIGN`: the plan itself
    when it is, else the same steps and donation requests planned again at that alignment (the
    liveness, and so the donations and the reuse, do not depend on it)."""
    from ...passes.memory import plan_memory, verify_plan

    plan = program.memory
    if plan.alignment % DEVICE_ALIGN == 0:
        return plan
    kg = program.kernels
    keep = {b for b in kg.outputs if b.kind == "input"}
    requests = {d.output: d.input for d in plan.donations}
    again = plan_memory(plan.steps, requests, DEVICE_ALIGN, keep=keep)
    return verify_plan(plan.steps, again)


@dataclass(frozen=True)
class Layout:
    """Where each buffer of an executable lives in its one device allocation (byte offsets, all
    multiples of `DEVICE_ALIGN`): the plan's arena (temporaries sharing memory), its output
    block, a slot per input and constant, outputs that may not be written over their input, then
    the kernels' scratch."""

    offsets: dict  # Buffer -> offset in the allocation
    arena_bytes: int  # the plan's arena, at offset 0
    scratch_offset: int
    total_bytes: int


def _align(n: int) -> int:
    return -(-n // DEVICE_ALIGN) * DEVICE_ALIGN


def place_buffers(kernels, plan: MemoryPlan, scratch_bytes: int, in_place: Callable) -> Layout:
    """The `Layout` of `kernels` by `plan`; `in_place(out, inp)` says whether the kernel writing a
    donated output may write it over its input (else it gets memory of its own, and the input's
    slot is never written)."""
    offsets: dict = {b: off for b, off in plan.offsets.items()}
    cursor = _align(plan.arena_bytes)
    for b, off in plan.output_offsets.items():
        offsets[b] = cursor + off
    cursor = _align(cursor + plan.output_block_bytes)
    for b in dict.fromkeys([*kernels.inputs, *kernels.constants]):
        offsets[b] = cursor
        cursor = _align(cursor + max(1, b.nbytes))
    for out, inp in plan.aliases.items():
        if in_place(out, inp):
            offsets[out] = offsets[inp]
        else:
            offsets[out] = cursor
            cursor = _align(cursor + max(1, out.nbytes))
    missing = [b for k in kernels.kernels for b in (*k.inputs, *k.outputs) if b not in offsets]
    if missing:
        raise ValueError(f"the memory plan places no memory for {', '.join(map(str, missing))}")
    return Layout(offsets, plan.arena_bytes, cursor, cursor + _align(max(64, scratch_bytes)))


class CudaExecutable:
    """A program's kernels on the GPU (see the module docstring); `run` has the backends'
    calling convention: numpy arrays in, one per graph input, numpy arrays out.

    Memory is one device allocation laid out by the program's memory plan (`place_buffers`);
    the launch list is fixed, and replayed as CUDA graphs where the driver offers them: each run
    of device launches between host kernels is captured once and launched with one call."""

    fresh_outputs = True

    def __init__(self, program, prefix: str = "", module=None, graphs: bool | None = None) -> None:
        """`module`: an already loaded module holding this program's kernels, rendered with
        function names starting with `prefix` (several programs compiled as one file);
        `graphs`: replay as CUDA graphs (default: `graphs_enabled()`)."""
        import pycuda.driver as drv

        from .program import render_program

        self.drv = drv
        self.kernels = program.kernels
        self.cuda = render_program(self.kernels, prefix=prefix, with_header=module is None)
        self.source = self.cuda.source
        context()
        self.module = module or drv.module_from_buffer(compile_source(self.source))
        self.stream = drv.Stream()
        self.plan = device_plan(program)
        scratch = max([ck.scratch_bytes for ck in self.cuda.kernels] + [64])
        single = {
            b: len(ck.launches) == 1
            for k, ck in zip(self.kernels.kernels, self.cuda.kernels, strict=True)
            for b in k.outputs
        }
        writer = {b: k for k in self.kernels.kernels for b in k.outputs}

        def in_place(out, inp) -> bool:
            return single.get(out, False) and _writes_in_place(writer[out], inp, out)

        self.layout = place_buffers(self.kernels, self.plan, scratch, in_place)
        self._block = allocator().alloc(self.layout.total_bytes)
        base = int(self._block[1])
        self.memory: dict = {b: base + off for b, off in self.layout.offsets.items()}
        for b, a in self.kernels.constants.items():
            if b.nbytes:
                drv.memcpy_htod(self.memory[b], np.ascontiguousarray(a))
        self.scratch = base + self.layout.scratch_offset
        # the launch list, fixed: (function, grid, block, argument pointers) or a host kernel
        self.launches: list = []
        for k, ck in zip(self.kernels.kernels, self.cuda.kernels, strict=True):
            if ck.host is not None:
                self.launches.append(("host", k))
                continue
            args = [self.memory[b] for b in ck.buffers] + [self.scratch]
            for launch in ck.launches:
                fn = self.module.get_function(launch.name)
                fn.prepare("P" * len(args))  # packed once: a launch is one driver call
                self.launches.append(("device", (fn, launch.grid, launch.block, args)))
        self.graphs = graphs_enabled() if graphs is None else graphs
        self._replay: list | None = None  # the launch list as graphs and host kernels

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
        inputs are what the last `run` copied in): one graph launch per run of device launches
        between host kernels, or each launch on its own where graphs are off or unavailable."""
        if self._replay is None:
            self._replay = self._capture() if self.graphs else []
        if not self._replay:
            for kind, item in self.launches:
                if kind == "host":
                    self._run_on_host(item)
                else:
                    self._launch_one(item)
            return
        for kind, item in self._replay:
            if kind == "host":
                self._run_on_host(item)
            else:
                item.launch(self.stream)

    def _launch_one(self, item) -> None:
        fn, grid, block, args = item
        fn.prepared_async_call((grid, 1), (block, 1, 1), self.stream, *args)

    def _capture(self) -> list:
        """The launch list as [("graph", executable graph) | ("host", kernel)]: each run of
        device launches captured from the stream once. Empty (launch one by one) where this
        pycuda has no stream capture or the driver refuses it."""
        if not hasattr(self.stream, "begin_capture"):
            return []
        replay: list = []
        run: list = []
        try:
            for kind, item in [*self.launches, ("host", None)]:
                if kind == "device":
                    run.append(item)
                    continue
                if run:
                    self.stream.begin_capture()
                    try:
                        for x in run:
                            self._launch_one(x)
                    finally:
                        graph = self.stream.end_capture()
                    replay.append(("graph", graph.instantiate()))
                    run = []
                if item is not None:
                    replay.append(("host", item))
        except Exception:  # no graphs here: the launch list, one call a launch
            return []
        return replay

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
        """Give the allocation back to the allocator's cache."""
        if self._block is not None:
            allocator().free(*self._block)
            self._block = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def _writes_in_place(k, inp, out) -> bool:
    """Whether grid-stride kernel `k` may write `out` over `inp`: no reductions (every element
    a thread's own), and each read of `inp` before the store of `out` in the same loop body."""
    from ..llvm.program import _reads_before_writing
    from ..schedule import Loop, schedule_kernel

    s = schedule_kernel(k)

    def reduces(body) -> bool:
        return any(
            isinstance(it, Loop) and (it.role == "reduce" or reduces(it.body)) for it in body
        )

    return k.core is None and not reduces(s.body) and _reads_before_writing(s, inp, out)


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
    "DEVICE_ALIGN",
    "CachingAllocator",
    "CudaExecutable",
    "Layout",
    "available",
    "compile_source",
    "copy_bandwidth",
    "device_plan",
    "graphs_enabled",
    "place_buffers",
]
