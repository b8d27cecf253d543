"""Tile sizes of the float32 matmul kernels (`gemm.py`), chosen per problem.

A problem is the matmul's batch, M, N and K, which operand dims are contiguous, the kernel
option (`NEEDLEC_CUDA_MATMUL`: simt, tf32 or bf16) and the GPU's architecture. `choose` returns:

1. the choice stored on disk for that problem (an entry of the checksummed disk cache,
   `needlec.codegen.llvm.diskcache`, kind "tune"; a damaged or foreign entry is ignored);
2. else, where a GPU is present and `NEEDLEC_CUDA_AUTOTUNE` is not 0, the fastest of a handful of
   candidates (`CANDIDATES`): the kernel rendered once per candidate, all compiled as one module
   (one nvcc run, through the compile cache), each timed with CUDA events (the least of a few
   runs), the winner stored;
3. else a heuristic (`heuristic`): the largest tile that still gives every SM a block.

The source a program shows (`source("cuda")`) is what runs: rendering asks `choose` once per
matmul, and a tuned choice is cached, so the same problem renders the same kernel again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass

MODES = ("simt", "tf32", "bf16")
SMS = 132  # streaming multiprocessors of the GPU the heuristic sizes for (an H200)


@dataclass(frozen=True)
class Tiles:
    """A matmul kernel's tiling: `kind` simt, tf32 or bf16; a block computes a `bm` x `bn` tile
    of C over K tiles of `bk`; each thread (simt) or warp (tensor cores) a `tm` x `tn` tile."""

    kind: str
    bm: int
    bn: int
    bk: int
    tm: int
    tn: int

    @property
    def threads(self) -> int:
        per = 1 if self.kind == "simt" else 32
        return per * (self.bm // self.tm) * (self.bn // self.tn)


CANDIDATES: dict[str, tuple[Tiles, ...]] = {
    "simt": (
        Tiles("simt", 128, 128, 8, 8, 8),
        Tiles("simt", 128, 128, 16, 8, 8),
        Tiles("simt", 128, 64, 8, 8, 8),
        Tiles("simt", 64, 64, 8, 4, 4),
        Tiles("simt", 64, 64, 16, 8, 4),
    ),
    "tf32": (
        Tiles("tf32", 128, 128, 16, 64, 32),
        Tiles("tf32", 128, 64, 16, 64, 32),
        Tiles("tf32", 64, 64, 16, 32, 32),
    ),
    "bf16": (
        Tiles("bf16", 128, 128, 32, 64, 32),
        Tiles("bf16", 128, 64, 32, 64, 32),
        Tiles("bf16", 64, 64, 32, 32, 32),
    ),
}


def matmul_mode() -> str:
    """The float32 matmul kernel option, from `NEEDLEC_CUDA_MATMUL`: "simt" (the default, fp32
    accuracy), "tf32" or "bf16" (tensor cores: inputs rounded, fp32 accumulation)."""
    mode = os.environ.get("NEEDLEC_CUDA_MATMUL", "").strip().lower() or "simt"
    if mode not in MODES:
        raise ValueError(f"NEEDLEC_CUDA_MATMUL must be one of {', '.join(MODES)}, not {mode!r}")
    return mode


def autotune_enabled() -> bool:
    return os.environ.get("NEEDLEC_CUDA_AUTOTUNE", "1").strip() not in ("0", "off", "false")


@dataclass(frozen=True)
class Problem:
    """What a tiling choice depends on (the disk cache key)."""

    batch: int
    m: int
    n: int
    k: int
    layout: str  # which dim of A and of B is contiguous, e.g. "k,n"
    dtype: str
    mode: str
    arch: str

    def key(self) -> str:
        from ... import __version__

        text = json.dumps([asdict(self), __version__, "cuda-matmul-tiles-v1"])
        return hashlib.sha256(text.encode()).hexdigest()


def problem_of(c, mode: str, arch: str) -> Problem:
    """The `Problem` of matmul core `c`."""
    a, b = c.operands
    *batch, m, n = c.shape
    sa, sb = a.view.strides, b.view.strides
    layout = ("k" if abs(sa[-1]) <= abs(sa[-2]) else "m") + ","
    layout += "n" if abs(sb[-1]) <= abs(sb[-2]) else "k"
    return Problem(math.prod(batch), m, n, a.view.shape[-1], layout, c.dtype, mode, arch)


def heuristic(p: Problem) -> Tiles:
    """The largest candidate tile whose grid still gives every SM a block (else the smallest)."""
    options = sorted(CANDIDATES[p.mode], key=lambda t: (-t.bm * t.bn, t.bk))
    for t in options:
        if p.batch * -(-p.m // t.bm) * -(-p.n // t.bn) >= SMS:
            return t
    return options[-1]


def load(p: Problem) -> Tiles | None:
    """The choice stored on disk for `p`, or None (none, damaged, or not a candidate)."""
    from ..llvm import diskcache

    body = diskcache.load(p.key(), "tune")
    if body is None:
        return None
    try:
        t = Tiles(**json.loads(body.decode()))
    except (ValueError, TypeError, UnicodeDecodeError):
        return None
    return t if t in CANDIDATES[p.mode] else None


def store(p: Problem, t: Tiles) -> None:
    from ..llvm import diskcache

    diskcache.store(p.key(), json.dumps(asdict(t)).encode(), "tune")


Timer = Callable[[Tiles, Callable[[], None]], float]


def tune(p: Problem, measure: Callable[[tuple[Tiles, ...]], dict[Tiles, float]]) -> Tiles:
    """The candidate of `p.mode` that `measure` (seconds of each) finds fastest; stored on
    disk."""
    times = measure(CANDIDATES[p.mode])
    best = min(times, key=lambda t: (times[t], CANDIDATES[p.mode].index(t)))
    store(p, best)
    return best


def choose(r, c, mode: str) -> Tiles:
    """The tiling for matmul core `c` of the kernel renderer `r` (see the module docstring)."""
    from . import runtime

    gpu = runtime.available()
    arch = runtime.architecture() if gpu else "none"
    p = problem_of(c, mode, arch)
    if gpu:
        found = load(p)
        if found is not None:
            return found
        if autotune_enabled():
            return tune(p, lambda cands: time_candidates(r, cands))
    return heuristic(p)


def _event_timer(t: Tiles, launch: Callable[[], None], repeats: int = 5) -> float:
    import pycuda.driver as drv

    launch()  # warm up (and load the module's code)
    best = math.inf
    for _ in range(repeats):
        start, end = drv.Event(), drv.Event()
        start.record()
        launch()
        end.record()
        end.synchronize()
        best = min(best, start.time_till(end) / 1e3)
    return best


timer: Timer = _event_timer  # replaced in tests by a fake clock


def time_candidates(r, candidates: tuple[Tiles, ...]) -> dict[Tiles, float]:
    """Seconds the kernel of renderer `r` takes on the GPU with each tiling of `candidates` (its
    phases, on buffers of random values); the candidates are compiled as one module."""
    import numpy as np
    import pycuda.driver as drv

    from .program import header
    from .render import KernelRenderer
    from .runtime import allocator, compile_source

    kernels = []
    for j, t in enumerate(candidates):
        tr = KernelRenderer(r.s, f"{r.name}_tune{j}")
        tr.forced_tiles = t
        kernels.append(tr.render())
    module = drv.module_from_buffer(
        compile_source("\n\n".join([header(), *(ck.source for ck in kernels)]))
    )
    alloc = allocator()
    blocks, ptrs = [], []
    rng = np.random.default_rng(0)
    for b in kernels[0].buffers:
        c_, blk = alloc.alloc(max(1, b.nbytes))
        blocks.append((c_, blk))
        if b.nbytes and b.dtype == "float32":
            drv.memcpy_htod(blk, rng.standard_normal(b.shape).astype("float32"))
        ptrs.append(int(blk))
    c_, scratch = alloc.alloc(max([64] + [ck.scratch_bytes for ck in kernels]))
    blocks.append((c_, scratch))
    ptrs.append(int(scratch))
    times = {}
    try:
        for t, ck in zip(candidates, kernels, strict=True):
            fns = []
            for launch in ck.launches:
                fn = module.get_function(launch.name)
                fn.prepare("P" * len(ptrs))
                fns.append((fn, launch))

            def run(fns=fns) -> None:
                for fn, launch in fns:
                    fn.prepared_async_call((launch.grid, 1), (launch.block, 1, 1), None, *ptrs)

            times[t] = timer(t, run)
    finally:
        for c_, blk in blocks:
            alloc.free(c_, blk)
    return times


__all__ = [
    "CANDIDATES",
    "MODES",
    "Problem",
    "Tiles",
    "autotune_enabled",
    "choose",
    "heuristic",
    "load",
    "matmul_mode",
    "problem_of",
    "store",
    "time_candidates",
    "tune",
]
