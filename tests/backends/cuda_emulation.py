"""Run the generated CUDA C of a program on the host (`cuda_host.h`), to check it without a GPU.

The kernels' text is compiled, as it is, with the system C++ compiler against a header that makes
each thread of a block a host thread; a launch runs its blocks one after another (at most
`MAX_GRID` of them: every phase is a grid-stride or block-stride loop, so a smaller grid computes
the same result, and the strides get exercised), each of `BLOCK` threads unless the launch needs
its own number (a matmul tile). Each buffer gets an array of its own (the memory
plan is not applied); a kernel the renderer leaves on the host runs on the kernel interpreter.
"""

from __future__ import annotations

import ctypes
import math
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

import numpy as np

from needlec.codegen.cuda.cexpr import MEMTYPE
from needlec.codegen.cuda.program import CudaProgram, header, render_program
from needlec.codegen.kernels import run_kernel
from needlec.ir import Graph
from needlec.passes import compile_program

CXX = shutil.which("g++") or shutil.which("clang++")
HEADER = os.path.join(os.path.dirname(__file__), "cuda_host.h")
MAX_GRID = 2
BLOCK = 64  # threads of a launch that takes any block size (fewer fibers to switch between)


@dataclass
class Case:
    """One graph rendered as CUDA C, ready to run once the library is built."""

    graph: Graph
    program: object
    cuda: CudaProgram


def prepare(graph: Graph, prefix: str) -> Case:
    program = compile_program(graph)
    return Case(graph, program, render_program(program.kernels, prefix=prefix, with_header=False))


def _wrappers(cuda: CudaProgram) -> str:
    lines = []
    for ck in cuda.kernels:
        casts = [f"({MEMTYPE[b.dtype]}*)a[{i}]" for i, b in enumerate(ck.buffers)]
        casts.append(f"(unsigned char*)a[{len(ck.buffers)}]")
        for launch in ck.launches:
            lines.append(
                f'extern "C" void run_{launch.name}(void** a) {{ {launch.name}({", ".join(casts)}); }}'
            )
    return "\n".join(lines)


def build(cases: list[Case], tmp: str) -> ctypes.CDLL:
    """Compile every case's kernels (and the device helpers once) into one shared library."""
    source = header() + "\n".join(c.cuda.source + "\n" + _wrappers(c.cuda) for c in cases)
    path = os.path.join(tmp, "kernels.cpp")
    with open(path, "w") as f:
        f.write(source)
    lib = os.path.join(tmp, "kernels.so")
    cmd = [CXX, "-std=c++20", "-O1", "-ffp-contract=off", "-fno-fast-math", "-shared", "-fPIC"]
    cmd += ["-pthread", "-w", "-include", HEADER, path, "-o", lib]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, f"host compile of the CUDA source failed:\n{run.stderr[-4000:]}"
    return ctypes.CDLL(lib)


def _misaligned(a: np.ndarray) -> np.ndarray:
    """A copy of `a` one element past a 16-byte boundary (no 16-byte vector access fits)."""
    item = max(1, a.itemsize)
    raw = np.zeros(a.size + 32 // item + 1, a.dtype)
    start = ((-raw.ctypes.data) % 16) // item + 1
    out = raw[start : start + a.size].reshape(a.shape)
    out[...] = a
    return out


def run(
    case: Case, lib: ctypes.CDLL, arrays: list[np.ndarray], misalign: bool = False
) -> list[np.ndarray]:
    """The case's outputs on `arrays`, computed by its CUDA kernels run on the host; with
    `misalign`, every buffer starts one element past a 16-byte boundary."""
    kg = case.program.kernels
    env: dict = {}
    for b, a in zip(kg.inputs, arrays, strict=True):
        env[b] = np.ascontiguousarray(np.asarray(a, dtype=b.dtype)).copy()
    env.update({b: np.ascontiguousarray(a) for b, a in kg.constants.items()})
    place = _misaligned if misalign else (lambda a: a)
    env = {b: place(a) for b, a in env.items()}
    emulate = lib.nc_emulate
    emulate.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    for k, ck in zip(kg.kernels, case.cuda.kernels, strict=True):
        for b in ck.buffers:
            if b not in env:
                env[b] = place(np.zeros(b.shape, b.dtype))
        if ck.host is not None:
            run_kernel(k, env)
            for b in k.outputs:
                env[b] = np.ascontiguousarray(env[b])
            continue
        scratch = np.zeros(ck.scratch_bytes + 64, np.uint8)
        ptrs = [env[b].ctypes.data for b in ck.buffers] + [scratch.ctypes.data]
        args = (ctypes.c_void_p * len(ptrs))(*ptrs)
        for launch in ck.launches:
            fn = ctypes.cast(getattr(lib, f"run_{launch.name}"), ctypes.c_void_p)
            block = launch.block if launch.fixed_block else min(launch.block, BLOCK)
            emulate(fn, ctypes.cast(args, ctypes.c_void_p), min(launch.grid, MAX_GRID), block)
    return [env[b].reshape(b.shape) for b in kg.outputs]


def run_cases(cases: list[Case], inputs: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
    """Build all cases into one library and run each on its inputs."""
    with tempfile.TemporaryDirectory() as tmp:
        lib = build(cases, tmp)
        return [run(c, lib, arrays) for c, arrays in zip(cases, inputs, strict=True)]


def size(shape) -> int:
    return math.prod(shape)
