"""A whole compiled `Program` as one LLVM module with one entry point per run of native kernels.

Every kernel of the program becomes an internal function (`render.py`); `step(i8** table)` calls
them in the planned order, each with pointers into the memory the plan gave its buffers. The
table holds a few base addresses: the arena (temporaries, reused across calls), the output block
(fresh each call, handed to the caller), the scratch workspace, then one per input and per
constant; a buffer is its base plus the offset the memory plan chose. A program whose kernels all
render runs as one native call; a kernel that has no native lowering yet (convolution, random
draws, integer GEMM) runs on the kernel interpreter between native segments, and
`Executable.fallbacks` says which and why.

Outputs the plan would write over an input (a parameter's update) get memory of their own in the
output block: the caller's arrays are never written.
"""

from __future__ import annotations

import ctypes
import math
import os
import sys
import threading
from dataclasses import dataclass

import numpy as np
from llvmlite import ir

from ...ir.schedule import Buffer
from ..kernels import run_kernel
from ..schedule import KernelSchedule, schedule_kernel
from . import target
from .render import render_kernel, unsupported

ALIGN = 64


def _debug(topic: str) -> bool:
    return topic in os.environ.get("NEEDLEC_DEBUG", "").split(",")


def _aligned(nbytes: int) -> np.ndarray:
    raw = np.empty(nbytes + ALIGN, np.uint8)
    start = (-raw.ctypes.data) % ALIGN
    return raw[start : start + nbytes]


@dataclass(frozen=True)
class Place:
    """Where a buffer lives: table slot `slot` plus `offset` bytes."""

    slot: int
    offset: int


ARENA, OUTPUTS, WORKSPACE, FIRST_INPUT = 0, 1, 2, 3


class Executable:
    """A program compiled for the CPU: `run(arrays) -> outputs`, as `run_kernels` does."""

    def __init__(self, program) -> None:
        kg, plan = program.kernels, program.memory
        self.kg, self.plan = kg, plan
        self.schedules: list[KernelSchedule] = [schedule_kernel(k) for k in kg.kernels]
        if _debug("schedule"):
            for s in self.schedules:
                print(s.as_text(), file=sys.stderr)
        self.places: dict[Buffer, Place] = {}
        for i, b in enumerate(kg.inputs):
            self.places[b] = Place(FIRST_INPUT + i, 0)
        self.constants = [np.ascontiguousarray(a) for a in kg.constants.values()]
        for j, b in enumerate(kg.constants):
            self.places[b] = Place(FIRST_INPUT + len(kg.inputs) + j, 0)
        self.n_slots = FIRST_INPUT + len(kg.inputs) + len(self.constants)
        for b, off in plan.offsets.items():
            self.places[b] = Place(ARENA, off)
        out_end = plan.output_block_bytes
        for b, off in plan.output_offsets.items():
            self.places[b] = Place(OUTPUTS, off)
        for out in plan.aliases:  # donated: memory of its own, the caller's input stays intact
            out_end = -(-out_end // ALIGN) * ALIGN
            self.places[out] = Place(OUTPUTS, out_end)
            out_end += out.nbytes
        self.output_bytes = out_end
        self.arena_bytes = plan.arena_bytes
        self.fallbacks: dict[str, str] = {}
        self._local = threading.local()
        self._build()

    # ------------------------------------------------------------ compile
    def _noalias(self, s: KernelSchedule) -> set[Buffer]:
        """The kernel's buffers whose bytes no other buffer of the kernel shares."""
        bufs = list(dict.fromkeys([*s.kernel.inputs, *s.kernel.outputs]))
        spans = []
        for b in bufs:
            p = self.places[b]
            spans.append((p.slot, p.offset, p.offset + b.nbytes))
        out = set()
        for b, (slot, lo, hi) in zip(bufs, spans, strict=True):
            clash = any(
                o is not b and s2 == slot and lo < h2 and l2 < hi
                for o, (s2, l2, h2) in zip(bufs, spans, strict=True)
            )
            if not clash:
                out.add(b)
        return out

    def _build(self) -> None:
        module = ir.Module(name="needlec")
        module.triple = target.triple()
        module.data_layout = target.data_layout()
        self.segments: list = []  # ("native", name) or ("fallback", KernelSchedule)
        rendered = []
        workspace = 0
        for s in self.schedules:
            why = unsupported(s)
            if why is not None:
                self.fallbacks[s.kernel.name] = why
                self.segments.append(("fallback", s))
                continue
            r = render_kernel(module, s, f"kernel_{s.kernel.name}", self._noalias(s))
            workspace = max(workspace, r.scratch_bytes)
            rendered.append(r)
            if not self.segments or self.segments[-1][0] != "native":
                self.segments.append(("native", []))
            self.segments[-1][1].append(r)
        self.workspace_bytes = workspace
        names = []
        for j, seg in enumerate(self.segments):
            if seg[0] == "native":
                name = f"step{j}" if len(self.segments) > 1 else "step"
                self._entry(module, name, seg[1])
                names.append((j, name))
        self.module_ir = module
        self.library = target.compile_module(str(module))
        self._calls = {}
        for j, name in names:
            addr = self.library.function_address(name)
            self._calls[j] = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(addr)
        if _debug("fallback") and self.fallbacks:
            for k, why in self.fallbacks.items():
                print(f"needlec: kernel {k} runs on the interpreter: {why}", file=sys.stderr)

    def _entry(self, module: ir.Module, name: str, renderers: list) -> None:
        from .render import I64, PTR

        fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [ir.PointerType(PTR)]), name)
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        table = fn.args[0]
        bases = {}

        def base(slot):
            if slot not in bases:
                bases[slot] = b.load(b.gep(table, [I64(slot)]))
            return bases[slot]

        for r in renderers:
            args = []
            for buf in r.buffers:
                p = self.places[buf]
                args.append(b.gep(base(p.slot), [I64(p.offset)]))
            args.append(base(WORKSPACE))
            b.call(r.fn, args)
        b.ret_void()

    # ------------------------------------------------------------ run
    def _thread_memory(self):
        loc = self._local
        if getattr(loc, "arena", None) is None:  # per thread: concurrent calls never share
            loc.arena = _aligned(max(self.arena_bytes, 1))
            loc.workspace = _aligned(max(self.workspace_bytes, 1))
        return loc.arena, loc.workspace

    def run(self, arrays) -> list[np.ndarray]:
        """Run the program on numpy arrays (one per kernel-graph input); its outputs."""
        kg = self.kg
        arrays = [np.asarray(a, order="C") for a in arrays]
        for a, b in zip(arrays, kg.inputs, strict=True):
            if a.shape != b.shape or str(a.dtype) != b.dtype:
                raise ValueError(
                    f"input {b.name} is {a.dtype}{a.shape}, expected {b.dtype}{b.shape}"
                )
        arena, workspace = self._thread_memory()
        outputs = _aligned(max(self.output_bytes, 1))
        table = np.empty(self.n_slots, np.uintp)
        table[ARENA] = arena.ctypes.data
        table[OUTPUTS] = outputs.ctypes.data
        table[WORKSPACE] = workspace.ctypes.data
        keep = arrays + self.constants
        for i, a in enumerate(keep):
            table[FIRST_INPUT + i] = a.ctypes.data
        regions = {ARENA: arena, OUTPUTS: outputs}
        for j, seg in enumerate(self.segments):
            if seg[0] == "native":
                self._calls[j](table.ctypes.data)
            else:
                self._fallback(seg[1], arrays, regions)
        out = []
        for b in kg.outputs:
            out.append(self._array(b, arrays, regions, copy_shared=True))
        return out

    def _array(self, b: Buffer, arrays, regions, copy_shared: bool = False) -> np.ndarray:
        p = self.places[b]
        if p.slot >= FIRST_INPUT:
            a = (arrays + self.constants)[p.slot - FIRST_INPUT]
            return a.copy() if copy_shared else a
        n = math.prod(b.shape)
        raw = regions[p.slot][p.offset : p.offset + b.nbytes]
        return raw.view(b.dtype)[:n].reshape(b.shape)

    def _fallback(self, s: KernelSchedule, arrays, regions) -> None:
        k = s.kernel
        env = {b: self._array(b, arrays, regions) for b in k.inputs}
        run_kernel(k, env)
        for b in k.outputs:
            self._array(b, arrays, regions)[...] = env[b]

    # ------------------------------------------------------------ reading the code
    def source(self, target_name: str = "llvm") -> str:
        """ "llvm": the module as optimized; "llvm-unoptimized"; "asm": the machine code."""
        if target_name == "llvm":
            return str(self.library.optimized)
        if target_name == "llvm-unoptimized":
            return str(self.module_ir)
        if target_name == "asm":
            return target.assembly(self.library.optimized)
        raise ValueError(f"source: unknown target {target_name!r}")

    def schedule_text(self) -> str:
        return "\n".join(s.as_text() for s in self.schedules)


def compile_program(program) -> Executable:
    """Compile a `Program` (after `plan_memory`) for this CPU."""
    return Executable(program)


__all__ = ["Executable", "compile_program"]
