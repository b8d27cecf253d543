"""A whole compiled `Program` as one LLVM module with one entry point per run of native kernels.

Every kernel of the program becomes an internal function (`render.py`); `step(i8** table)` calls
them in the planned order, each with pointers into the memory the plan gave its buffers. The
table holds a few base addresses: the arena (temporaries, reused across calls), the output block
(fresh each call, handed to the caller), then one per input and per constant; a buffer is its
base plus the offset the memory plan chose. A kernel's scratch (what its code needs besides its
buffers: packed GEMM operands, im2col columns, accumulators kept across loops, one copy per
chunk of a parallel region where each needs its own) is one block the renderer lays out; the
memory plan places each kernel's block in the arena, live during that kernel alone
(`plan_scratch`), so a step allocates nothing. A program whose kernels all
render runs as one native call; a kernel that has no native lowering (an integer tensor raised
to an integer tensor power) runs on the kernel interpreter between native segments, and
`Executable.fallbacks` says which and why.

Outputs the plan would write over an input (a parameter's update) get memory of their own in the
output block: the caller's arrays are never written.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import re
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ...ir.kernel import KOp, kernel_cost
from ...ir.schedule import Buffer
from . import runtime, target

if TYPE_CHECKING:
    from ..schedule import KernelSchedule

# the scheduler and the code generator (llvmlite.ir, the renderers) are imported where a module
# is rendered: an executable restored from the disk cache (`Executable.restore`) needs neither

ALIGN = 64
MAX_OUTPUT_BLOCKS = 4  # output blocks a program keeps for reuse, per thread


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


ARENA, OUTPUTS, FIRST_INPUT = 0, 1, 2


class Executable:
    """A program compiled for the CPU: `run(arrays) -> outputs`, as `run_kernels` does. With
    `per_kernel`, each kernel is an entry point of its own (a native call each, so `profile`
    can time them; the results are the same)."""

    def __init__(self, program, per_kernel: bool = False) -> None:
        kg, plan = program.kernels, program.memory
        self.per_kernel = per_kernel
        self.kg, self.plan = kg, plan
        self._schedules: list[KernelSchedule] | None = None
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
        # donated: written over the input it replaces (a parameter's new value over the old),
        # so the caller's array holds the new value after the call, as PyTorch's in-place
        # optimizer updates do
        index = {b: i for i, b in enumerate(kg.inputs)}
        self.donated: dict[Buffer, int] = {}  # donated output -> the input index it takes
        # a donation the plan or the schedule refuses is copied over its input after the step
        self.copied: dict[Buffer, int] = {
            d.output: index[d.input] for d in plan.donations if not d.accepted
        }
        writer = {b: s for s in self.schedules for b in s.kernel.outputs}
        for out, inp in plan.aliases.items():
            if not _reads_before_writing(writer[out], inp, out):
                out_end = -(-out_end // ALIGN) * ALIGN  # memory of its own after all
                self.places[out] = Place(OUTPUTS, out_end)
                out_end += out.nbytes
                self.copied[out] = index[inp]
                continue
            self.places[out] = self.places[inp]
            self.donated[out] = index[inp]
        self._donated_inputs = frozenset(self.donated.values())
        self._updated_inputs = self._donated_inputs | frozenset(self.copied.values())
        self._lock = threading.Lock()  # steps updating their inputs run one call at a time
        self.output_bytes = out_end
        self.arena_bytes = plan.arena_bytes
        self.fallbacks: dict[str, str] = {}
        self._local = threading.local()
        self._in_specs = [(b.shape, np.dtype(b.dtype)) for b in kg.inputs]
        # (offset in the output block, input updated in place, input copied over, dtype)
        self._out_specs = []
        for b in kg.outputs:
            p = self.places[b]
            at = p.offset if p.slot == OUTPUTS else None
            spec = (at, self.donated.get(b), self.copied.get(b), np.dtype(b.dtype))
            self._out_specs.append(spec)
        self._build()
        self._bound = self._bound_specs()
        self._bound_bytes = max(self.output_bytes, 1)

    @property
    def schedules(self) -> list[KernelSchedule]:
        """Each kernel's loop nest, in the planned order."""
        if self._schedules is None:
            from ..schedule import schedule_kernel

            self._schedules = [schedule_kernel(k) for k in self.kg.kernels]
        return self._schedules

    # ------------------------------------------------------------ the disk cache
    _PROCESS_ONLY = (
        "library",
        "module_ir",
        "segments",
        "_calls",
        "_addresses",
        "_lock",
        "_local",
        "_twin",
        "_bound",  # holds the native entry's address
    )

    def snapshot(self) -> dict | None:
        """What `restore` needs to rebuild this executable in another process (plain data that
        pickles with the program it was compiled from), or None when it cannot be rebuilt
        from its machine code alone: a kernel runs on the interpreter, or each kernel is an
        entry of its own."""
        if self.per_kernel or self.fallbacks or not self.library.key:
            return None
        state = {k: v for k, v in vars(self).items() if k not in self._PROCESS_ONLY}
        state["_schedules"] = None  # made again on demand
        state["n_segments"] = len(self.segments)
        state["library_key"] = self.library.key
        return state

    @classmethod
    def restore(cls, state: dict) -> Executable | None:
        """The executable `snapshot` described, its machine code loaded from the disk cache's
        object entry; None where that entry is missing or damaged."""
        runtime.register_symbols()  # before loading: the code binds them by name
        library = target.load_object(state["library_key"])
        if library is None:
            return None
        ex = cls.__new__(cls)
        n = state["n_segments"]
        ex.__dict__.update(
            {k: v for k, v in state.items() if k not in ("n_segments", "library_key")}
        )
        ex.library, ex.module_ir = library, None
        ex.segments = [("native", []) for _ in range(n)]
        ex._lock, ex._local = threading.Lock(), threading.local()
        ex._bind([(j, f"step{j}" if n > 1 else "step") for j in range(n)])
        ex._bound = ex._bound_specs()  # with this process's address of the entry
        return ex

    def _bind(self, names: list[tuple[int, str]]) -> None:
        """The native entry point of each segment `j`, by its name in the library."""
        self._calls, self._addresses = {}, {}
        for j, name in names:
            addr = self._addresses[j] = self.library.function_address(name)
            self._calls[j] = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(addr)

    def _rendered(self) -> Executable:
        """This executable with its LLVM module (rendered again when it came from the disk
        cache, its machine code loaded from there again)."""
        if self.module_ir is not None:
            return self
        twin = getattr(self, "_twin", None)
        if twin is None:
            twin = self._twin = Executable(_Planned(self.kg, self.plan))
        return twin

    # ------------------------------------------------------------ compile
    def _merged(self, s: KernelSchedule) -> dict[Buffer, Buffer]:
        """The kernel's buffers that lie exactly over an earlier one of its buffers (a donated
        output over its input) -> that buffer."""
        first: dict[tuple, Buffer] = {}
        out = {}
        for b in dict.fromkeys([*s.kernel.inputs, *s.kernel.outputs]):
            p = self.places[b]
            at = (p.slot, p.offset, b.nbytes)
            if at in first:
                out[b] = first[at]
            else:
                first[at] = b
        return out

    def _noalias(self, s: KernelSchedule, merged: dict) -> set[Buffer]:
        """The kernel's buffers (merged ones counted once) whose bytes no other buffer of the
        kernel shares."""
        bufs = [b for b in dict.fromkeys([*s.kernel.inputs, *s.kernel.outputs]) if b not in merged]
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
        from llvmlite import ir

        from .render import render_kernel, unsupported

        module = ir.Module(name="needlec")
        module.triple = target.triple()
        module.data_layout = target.data_layout()
        self.segments: list = []  # ("native", name) or ("fallback", KernelSchedule)
        rendered: dict[tuple, object] = {}
        scratch: dict[int, tuple] = {}  # step -> (its scratch block, the block's parts)
        for i, s in enumerate(self.schedules):
            why = unsupported(s)
            if why is not None:
                self.fallbacks[s.kernel.name] = why
                self.segments.append(("fallback", s))
                continue
            merged = self._merged(s)
            noalias = self._noalias(s, merged)
            code, shift = _rebased(s, merged)
            key = _shape_of(code, noalias, merged)
            if key in rendered:  # the same code over other buffers (an RNN's steps): one function
                same = rendered[key]
                bufs = dict.fromkeys([*s.kernel.inputs, *s.kernel.outputs])
                r = _Call(same.fn, [b for b in bufs if b not in merged], s.kernel, same, shift)
            else:
                name = f"kernel_{s.kernel.name}"
                parallel = runtime.available()
                r = render_kernel(module, code, name, noalias, parallel, merged)
                r.shift = shift
                rendered[key] = r
            layout = r.layout if isinstance(r, _Call) else r
            if layout.scratch_bytes:
                block = Buffer(f"{s.kernel.name}.scratch", layout.scratch_bytes, "scratch")
                scratch[i] = (block, layout.scratch_layout())
            if self.per_kernel or not self.segments or self.segments[-1][0] != "native":
                self.segments.append(("native", []))
            self.segments[-1][1].append(r)
        self._place_scratch(scratch)
        names = []
        for j, seg in enumerate(self.segments):
            if seg[0] == "native":
                name = f"step{j}" if len(self.segments) > 1 else "step"
                self._entry(module, name, seg[1])
                names.append((j, name))
        self.module_ir = module
        runtime.register_symbols()
        self.library = target.compile_module(str(module))
        self._bind(names)
        if _debug("fallback") and self.fallbacks:
            for k, why in self.fallbacks.items():
                print(f"needlec: kernel {k} runs on the interpreter: {why}", file=sys.stderr)

    def _place_scratch(self, scratch: dict[int, tuple]) -> None:
        """The memory plan again with each kernel's scratch block in the arena."""
        from ...passes.memory import plan_scratch

        self.plan = plan_scratch(self.plan, scratch)
        for b, off in self.plan.offsets.items():
            self.places[b] = Place(ARENA, off)
        self.arena_bytes = self.plan.arena_bytes
        self.scratch_at = {
            self.schedules[i].kernel.name: self.plan.offsets[block]
            for i, (block, _) in scratch.items()
        }
        if _debug("memory"):
            print(self.plan.as_text(), file=sys.stderr)

    def _entry(self, module, name: str, renderers: list) -> None:
        from llvmlite import ir

        from . import gemm
        from .render import I32, I64, PTR

        fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [ir.PointerType(PTR)]), name)
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        table = fn.args[0]
        bases = {}

        def base(slot):
            if slot not in bases:
                bases[slot] = b.load(b.gep(table, [I64(slot)]))
            return bases[slot]

        threads = gemm.blas_thread_functions() if any(r.k.core for r in renderers) else None
        if threads is not None:  # BLAS on this thread only while the step runs
            get = module.globals.get("needlec_blas_get_threads") or ir.Function(
                module, ir.FunctionType(I32, []), "needlec_blas_get_threads"
            )
            put = module.globals.get("needlec_blas_set_threads") or ir.Function(
                module, ir.FunctionType(ir.VoidType(), [I32]), "needlec_blas_set_threads"
            )
            saved = b.call(get, [])
            b.call(put, [I32(1)])
        for r in renderers:
            args = []
            for buf in r.buffers:
                p = self.places[buf]
                at = p.offset + r.shift.get(buf, 0) * np.dtype(buf.dtype).itemsize
                args.append(b.gep(base(p.slot), [I64(at)]))
            at = self.scratch_at.get(r.k.name)  # the kernel's scratch block, where it has one
            args.append(base(ARENA) if at is None else b.gep(base(ARENA), [I64(at)]))
            b.call(r.fn, args)
        if threads is not None:
            b.call(put, [saved])
        b.ret_void()

    # ------------------------------------------------------------ run
    def _thread_state(self):
        """This thread's arena (scratch included) and pointer table (made on its first call):
        concurrent calls never share them. The table's arena and constant slots are set once;
        a call patches only the output block and the inputs."""
        loc = self._local
        state = getattr(loc, "state", None)
        if state is None:
            arena = _aligned(max(self.arena_bytes, 1))
            table = np.zeros(self.n_slots, np.uintp)
            table[ARENA] = arena.ctypes.data
            first_constant = FIRST_INPUT + len(self.kg.inputs)
            for i, c in enumerate(self.constants):
                table[first_constant + i] = c.ctypes.data
            scratch = _aligned(8 * max(len(self.kg.inputs), 1))  # scalars passed by value
            state = (arena, table, table.ctypes.data, scratch, scratch.ctypes.data)
            loc.state = state
        return state

    def _output_block(self) -> tuple[np.ndarray, int]:
        """Memory for this call's outputs: a block of an earlier call that nothing refers to any
        more (the arrays handed out are views of their block, so while any of them lives the
        block is not free), else a new one. A training step's outputs replace the parameters
        it read, so two blocks take turns and a step allocates nothing in the steady state."""
        loc = self._local
        pool = getattr(loc, "blocks", None)
        if pool is None:
            pool = loc.blocks = []
        nbytes = max(self.output_bytes, 1)
        for entry in pool:
            raw, start, address = entry
            # referenced by the pool's entry, the local `raw` and getrefcount's argument only:
            # every array handed out is a view whose base is `raw`, so none is alive
            if sys.getrefcount(raw) <= 3:
                return raw[start : start + nbytes], address
        raw = np.empty(nbytes + ALIGN, np.uint8)
        start = (-raw.ctypes.data) % ALIGN
        address = raw.ctypes.data + start
        if len(pool) < MAX_OUTPUT_BLOCKS:
            pool.append((raw, start, address))
        return raw[start : start + nbytes], address

    def run(self, arrays, timings: list | None = None, checked: bool = False) -> list[np.ndarray]:
        """Run the program on numpy arrays (one per kernel-graph input); its outputs. With a
        list `timings`, appends (segment index, seconds) for each segment run; `checked`: the
        caller has checked the arrays' shapes and dtypes."""
        kg = self.kg
        arrays = [np.asarray(a, order="C") for a in arrays]
        if not checked:
            for a, (shape, dtype), b in zip(arrays, self._in_specs, kg.inputs, strict=True):
                if a.shape != shape or a.dtype != dtype:
                    raise ValueError(
                        f"input {b.name} is {a.dtype}{a.shape}, expected {b.dtype}{b.shape}"
                    )
        runtime.ensure_started()
        arena, table, table_address, *_ = self._thread_state()
        outputs, table[OUTPUTS] = self._output_block()
        fast = runtime.run_step  # the runtime's C entry, where it is built
        if fast is not None:
            fast(0, table_address, FIRST_INPUT, arrays)
        else:
            for i, a in enumerate(arrays):
                table[FIRST_INPUT + i] = a.ctypes.data
        with self._lock if self._updated_inputs else contextlib.nullcontext():
            shared = self._own_donated(arrays, table) if self._updated_inputs else ()
            regions = {ARENA: arena, OUTPUTS: outputs}
            for j, seg in enumerate(self.segments):
                t0 = time.perf_counter() if timings is not None else 0.0
                if seg[0] != "native":
                    self._fallback(seg[1], arrays, regions)
                elif fast is not None:
                    fast(self._addresses[j], table_address, 0, ())
                else:
                    self._calls[j](table_address)
                if timings is not None:
                    timings.append((j, time.perf_counter() - t0))
            return self._outputs(arrays, regions, outputs, shared)

    def _bound_specs(self) -> tuple | None:
        """What `run_bound` needs: (step address, updated inputs, one (offset, donated input,
        input copied over, dtype, shape) per output); None where it cannot run this program
        (no runtime, a kernel on the interpreter, an input or constant passed through)."""
        if runtime.bind_run is None or len(self.segments) != 1 or self.segments[0][0] != "native":
            return None
        specs = []
        for b, (offset, donated, copied, dtype) in zip(
            self.kg.outputs, self._out_specs, strict=True
        ):
            if offset is None and donated is None:
                return None
            specs.append((offset, donated, copied, dtype, b.shape))
        return self._addresses[0], tuple(sorted(self._updated_inputs)), specs

    def run_bound(self, objs: list) -> list | None:
        """`run` for a cached jit call, in one native call: `objs` holds one entry per input,
        C-contiguous numpy arrays of the right shapes and dtypes (unchecked) or Python floats
        (a float64 input) and ints (an int64 one). Returns the outputs as `run` does (an input
        updated in place is the caller's own array), or None, having run nothing, where `run`
        must decide: no native entry, an array not C-contiguous, an input updated in place
        that is read-only or shares memory with another input."""
        bound = self._bound
        if bound is None or len(objs) != len(self._in_specs):  # (the table has these slots)
            return None
        step, updated, specs = bound
        if not runtime._started:
            runtime.ensure_started()
        loc = self._local
        state = getattr(loc, "state", None) or self._thread_state()
        for raw, start, at in getattr(loc, "blocks", ()):  # as _output_block finds one
            if sys.getrefcount(raw) <= 3:
                block, address = raw[start : start + self._bound_bytes], at
                break
        else:
            block, address = self._output_block()
        if updated:  # steps updating their inputs run one call at a time
            self._lock.acquire()
        try:
            if not runtime.bind_run(step, state[2], address, FIRST_INPUT, objs, state[4], updated):
                return None
            out = []
            for offset, donated, copied, dtype, shape in specs:
                if donated is not None:  # the caller's array, updated in place
                    out.append(objs[donated])
                    continue
                new = np.ndarray(shape, dtype, block, offset)
                if copied is not None:  # the caller's array takes the new value
                    np.copyto(objs[copied], new)
                    new = objs[copied]
                out.append(new)
            return out
        finally:
            if updated:
                self._lock.release()

    def _outputs(self, arrays: list, regions: dict, outputs: np.ndarray, shared) -> list:
        """The call's outputs: views of the output block, inputs updated in place (or copied
        over), copies of inputs and constants passed through."""
        out = []
        for b, (offset, donated, copied, dtype) in zip(
            self.kg.outputs, self._out_specs, strict=True
        ):
            if donated is not None:  # the caller's array, updated in place
                out.append(arrays[donated])
            elif offset is None:  # an input or a constant passed through: a copy of its own
                out.append(self._array(b, arrays, regions).copy())
            else:
                new = np.ndarray(b.shape, dtype, buffer=outputs, offset=offset)
                if copied is not None and copied not in shared:
                    np.copyto(arrays[copied], new)  # the caller's array takes the new value
                    new = arrays[copied]
                out.append(new)
        return out

    def _own_donated(self, arrays: list, table: np.ndarray) -> set[int]:
        """An input a step updates must be memory no other input shares, or writing the new
        value over it would change what the step reads (or returns) through the other. A
        donated one is copied first (its new value then lands in the copy); one copied over
        after the step is not. Returns the updated inputs that share (or are read-only)."""
        spans = sorted(
            (int(table[FIRST_INPUT + i]), a.nbytes, i) for i, a in enumerate(arrays) if a.nbytes
        )
        shared = {i for i in self._updated_inputs if not arrays[i].flags.writeable}
        end, last = -1, None
        for start, nbytes, i in spans:
            if start < end:
                shared |= {i, last}
            if start + nbytes > end:
                end, last = start + nbytes, i
        for i in sorted(shared & self._donated_inputs):
            if _debug("donation"):
                why = (
                    "is read-only"
                    if not arrays[i].flags.writeable
                    else "shares memory with another input"
                )
                print(
                    f"needlec: input {self.kg.inputs[i].name} {why}; its new value goes to a "
                    "copy instead of over it",
                    file=sys.stderr,
                )
            arrays[i] = arrays[i].copy()
            table[FIRST_INPUT + i] = arrays[i].ctypes.data
        return shared

    def _array(self, b: Buffer, arrays, regions) -> np.ndarray:
        p = self.places[b]
        if p.slot >= FIRST_INPUT:
            return (arrays + self.constants)[p.slot - FIRST_INPUT]
        n = math.prod(b.shape)
        raw = regions[p.slot][p.offset : p.offset + b.nbytes]
        return raw.view(b.dtype)[:n].reshape(b.shape)

    def _fallback(self, s: KernelSchedule, arrays, regions) -> None:
        from ..kernels import run_kernel

        k = s.kernel
        env = {b: self._array(b, arrays, regions) for b in k.inputs}
        run_kernel(k, env)
        for b in k.outputs:
            self._array(b, arrays, regions)[...] = env[b]

    def profile(self, arrays, repeats: int = 10) -> list[KernelTime]:
        """Time each kernel on `arrays` (compiled with `per_kernel`): the median over `repeats`
        runs after one warm-up, slowest first. A kernel whose code is shared with identical
        kernels (an RNN's steps) is reported once per use."""
        if not self.per_kernel:
            raise ValueError("profile: compile with per_kernel=True (one entry per kernel)")
        self.run(arrays)
        runs: dict[int, list[float]] = {}
        for _ in range(max(1, repeats)):
            timings: list = []
            self.run(arrays, timings)
            for j, t in timings:
                runs.setdefault(j, []).append(t)
        out = []
        for j, ts in runs.items():
            kind, seg = self.segments[j]
            k = seg[0].k if kind == "native" else seg.kernel
            cost = kernel_cost(k)
            out.append(KernelTime(k.name, k.kind, float(np.median(ts)), cost.flops, kind))
        return sorted(out, key=lambda t: -t.seconds)

    # ------------------------------------------------------------ reading the code
    def source(self, target_name: str = "llvm") -> str:
        """ "llvm": the module as optimized; "llvm-unoptimized"; "asm": the machine code."""
        me = self._rendered()
        if target_name == "llvm":
            return str(me.library.optimized)
        if target_name == "llvm-unoptimized":
            return str(me.module_ir)
        if target_name == "asm":
            return target.assembly(me.library.optimized)
        raise ValueError(f"source: unknown target {target_name!r}")

    def schedule_text(self) -> str:
        return "\n".join(s.as_text() for s in self.schedules)


def _reads_before_writing(s: KernelSchedule, inp: Buffer, out: Buffer) -> bool:
    """Whether kernel `s` reads `inp` only before it writes `out` over it, element by element:
    every read of `inp` is one value (`let`) in the loop body that stores `out`, or in a body
    around it, and comes before the store (a value needed only by a later store of the body
    is loaded after the earlier ones), so nothing reads an element the store has overwritten."""
    from ..schedule import Keep, Let, Loop, Write, items

    lets, store = [], None

    def walk(body: list, path: tuple) -> None:
        nonlocal store
        for it in body:
            if isinstance(it, Loop):
                walk(it.body, (*path, id(it.body)))
            elif isinstance(it, Let) and it.expr.op is KOp.LOAD and it.expr.arg.buffer is inp:
                lets.append(path if store is None else None)  # None: read after the store
            elif isinstance(it, Write) and it.store.buffer is out:
                store = path

    walk(s.body, (id(s.body),))
    if store is None or any(
        isinstance(it, Keep) for it in items(s.body)
    ):  # a kept value reads in a loop of its own
        return False
    return len(lets) == 1 and lets[0] is not None and store[: len(lets[0])] == lets[0]


@dataclass(frozen=True)
class KernelTime:
    """One kernel's time in `Executable.profile`: `how` is "native" or "fallback"."""

    name: str
    kind: str
    seconds: float
    flops: int
    how: str

    def as_text(self) -> str:
        rate = f"{self.flops / self.seconds / 1e9:7.1f} GFLOP/s" if self.seconds > 0 else ""
        us = self.seconds * 1e6
        return f"{self.name:>12} {self.kind:<11} {us:10.1f} us {rate} {self.how}"


@dataclass(frozen=True)
class _Planned:
    """The two parts of a compiled `Program` an executable reads."""

    kernels: object
    memory: object


@dataclass(frozen=True)
class _Call:
    """A kernel that calls the function rendered for an identical one, with its own buffers."""

    fn: object  # llvmlite.ir.Function
    buffers: list
    k: object
    layout: object  # the renderer of the function: its scratch block's layout
    shift: dict  # buffer -> elements its pointer is moved by (`_rebased`)


_BUFFER_NAME = re.compile(r"%[\w.]+")
_REBASED_KINDS = frozenset({"elementwise", "reduce", "copy", "gemm"})


def _rebased(s: KernelSchedule, merged: dict) -> tuple[KernelSchedule, dict[Buffer, int]]:
    """The schedule to render for kernel `s`, and for each buffer it reads from a first element
    past 0, that element's index: the kernel reads such a buffer through a pointer moved there,
    its views starting from 0. So the steps of an RNN, which read one time step's slice each of
    the same buffers, are one function rather than one per offset (the LSTM language model's
    step module: 223 functions, now 141). Buffers the kernel writes keep their pointers."""
    from dataclasses import replace

    from ...ir.kernel import Expr, Kernel, Load
    from ..schedule import schedule_kernel

    k = s.kernel
    if k.kind not in _REBASED_KINDS:
        return s, {}
    written = {*k.outputs, *merged, *merged.values()}
    loads = [e.arg for e in k.exprs if e.op is KOp.LOAD]
    loads += list(k.core.operands) if k.core is not None else []
    first: dict[Buffer, int] = {}
    for ld in loads:
        first[ld.buffer] = min(first.get(ld.buffer, ld.view.offset), ld.view.offset)
    shift = {b: off for b, off in first.items() if off > 0 and b not in written}
    if not shift:
        return s, {}

    def moved(ld: Load) -> Load:
        if ld.buffer not in shift:
            return ld
        return Load(ld.buffer, replace(ld.view, offset=ld.view.offset - shift[ld.buffer]))

    new: dict = {}
    for e in k.exprs:
        arg = moved(e.arg) if e.op is KOp.LOAD else e.arg
        new[e] = Expr(e.op, e.dtype, e.shape, tuple(new[x] for x in e.src), arg)
    core = k.core
    if core is not None:
        core = replace(core, operands=tuple(moved(o) for o in core.operands))
    stores = tuple(replace(st, value=new[st.value]) for st in k.stores)
    code = Kernel(k.name, k.kind, k.space, k.inputs, tuple(new.values()), stores, core, k.nodes)
    return schedule_kernel(code), shift


def _shape_of(s: KernelSchedule, noalias: set, merged: dict) -> tuple:
    """What a kernel's code depends on: its text with buffers named by position, their dtypes and
    shapes, and which are `noalias`. Kernels with equal shapes share one function."""
    k = s.kernel
    bufs = list(dict.fromkeys([*k.inputs, *k.outputs]))
    names = {b.name: f"%arg{i}" for i, b in enumerate(bufs)}
    body = k.as_text().split(" = ", 1)[1]  # without the kernel's name
    body = _BUFFER_NAME.sub(lambda m: names.get(m.group(0), m.group(0)), body)
    where = {b: i for i, b in enumerate(bufs)}
    same = tuple(where.get(merged.get(b), -1) for b in bufs)  # which buffers are one
    return body, tuple((b.dtype, b.shape, b in noalias) for b in bufs), same


def compile_program(program, per_kernel: bool = False) -> Executable:
    """Compile a `Program` (after `plan_memory`) for this CPU; `per_kernel`: one entry point
    per kernel, for `Executable.profile`."""
    return Executable(program, per_kernel)


__all__ = ["Executable", "KernelTime", "compile_program"]
