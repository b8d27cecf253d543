"""A scheduled kernel as CUDA C: one `__global__` function per phase of its loop nest.

The schedule (`needlec.codegen.schedule`) is shared with the LLVM renderer; this file maps it to
the GPU. The top level of a schedule is cut into phases, launched in order on one stream:

- a top-level loop nest: its loops whose iterations are independent (`parallel_safe`) are
  flattened into one index; a body without reductions runs one thread per index (a grid-stride
  loop; an elementwise body four consecutive elements a thread, with 16-byte vector loads and
  stores where the innermost dim is contiguous and the pointers aligned, `vector_loop`), a body
  with reductions one block per index (a block-stride loop over "rows"), its
  register reductions split over the block's threads and combined with warp shuffles and a
  shared-memory tree (`nc_block_reduce`), its inner parallel loops split over the threads; the
  other loops of the nest run in order inside (a column sum keeps its rows sequential per thread);
- a reduction with no loop around it (a whole tensor to a scalar) in two stages: many blocks
  each reduce a grid-stride share into a partial result, then one block combines the partials;
- `init` of a scratch accumulator: a grid-stride fill;
- the GEMM or convolution core (`core.py`, `gemm.py`); a core writes each of its output elements
  through `store_core_output`, the hook that also runs an elementwise epilogue on that element in
  registers (the loop nest after the core, when it only maps the core's output elementwise: no
  reduction over it, the same iteration space) so the epilogue needs no phase of its own;
- anything else at the top level (a scalar store): one thread.

Every value is computed where it is used, from sources in scope (`let` marks where the schedule
would compute it; a value computed in an outer scope is reused inside). Casts follow numpy's
astype rules (`cexpr.convert`); `cexpr.LOWER` holds one row per elementwise op.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ...ir import Op
from ...ir.kernel import Expr, KOp, Load
from ...ir.ops import COMPARE
from ...ir.schedule import Buffer
from ...ir.semantics import compute_dtype as semantic_compute_dtype
from ...ir.view import View
from ..schedule import (
    Accumulate,
    Finish,
    Init,
    Keep,
    KernelSchedule,
    Let,
    Loop,
    Reload,
    RunCore,
    Write,
    parallel_safe,
    to_compute,
)
from . import core as cores
from .cexpr import CTYPE, LOWER, MEMTYPE, block_reduce, combine, const, convert
from .random import draw_call

BLOCK = 256  # threads of an elementwise or row block (a multiple of 32)
MAX_GRID = 132 * 32  # blocks of a grid-stride launch: enough to fill an H200 several times
PARTIALS = 1024  # blocks (partial results) of the first stage of a two-stage reduction


class CudaRenderError(RuntimeError):
    """A kernel value the CUDA renderer cannot render; the message names the kernel and value."""


@dataclass(frozen=True)
class Launch:
    """One phase of a kernel: `__global__` function `name` on `grid` blocks of `block` threads."""

    name: str
    grid: int
    block: int
    fixed_block: bool = False  # the code needs exactly `block` threads (else any multiple of 32)


@dataclass
class CudaKernel:
    """A kernel as CUDA C: its functions (`source`), launched in order (`launches`), each taking
    a pointer per buffer of `buffers` and one to `scratch_bytes` bytes of scratch."""

    name: str
    source: str
    launches: list[Launch]
    buffers: list[Buffer]
    scratch_bytes: int
    host: str | None = None  # why it runs on the host instead (a Python callback)


def compute_dtype(e: Expr) -> str:
    """The dtype `e.op` computes in (after `legalize`, the dtype of its sources)."""
    if e.op is Op.CAST:
        return e.dtype
    return semantic_compute_dtype(e.op, tuple(s.dtype for s in e.src), e.arg)


def _grid(n: int, block: int) -> int:
    return max(1, min(MAX_GRID, -(-n // block)))


def _chain(lp: Loop) -> tuple[list[Loop], list]:
    """The perfectly nested loops from `lp` down (bodies of lets and one loop) and the innermost
    body (lets of the chain's bodies first)."""
    chain, lets = [lp], []
    while True:
        inner = [it for it in chain[-1].body if not isinstance(it, Let)]
        if len(inner) == 1 and isinstance(inner[0], Loop) and inner[0].role == chain[0].role:
            lets += [it for it in chain[-1].body if isinstance(it, Let)]
            chain.append(inner[0])
            continue
        return chain, lets + chain[-1].body


def _has_reduce(body: list) -> bool:
    return any(
        (isinstance(it, Loop) and (it.role == "reduce" or _has_reduce(it.body))) for it in body
    )


@dataclass
class _Fn:
    """The function being written: its lines and scopes of values."""

    name: str
    lines: list[str] = field(default_factory=list)
    depth: int = 1


class KernelRenderer:
    """Renders one `KernelSchedule` as CUDA C functions `<name>_<phase>`."""

    def __init__(self, s: KernelSchedule, name: str) -> None:
        self.s, self.k, self.name = s, s.kernel, name
        self.buffers: list[Buffer] = list(dict.fromkeys([*self.k.inputs, *self.k.outputs]))
        self.names = self.k.value_names()
        self.pos = {e: i for i, e in enumerate(self.k.exprs)}
        self.scratch_bytes = s.scratch_bytes
        self.offsets = dict(s.scratch_offsets())
        self.ptr: dict[Buffer, str] = {b: f"b{i}" for i, b in enumerate(self.buffers)}
        self.launches: list[Launch] = []
        self.functions: list[str] = []
        self.fresh = 0
        self.epilogue: list | None = None  # the items a core runs on each output (fused)
        self.vec: _Vector | None = None  # set while a 4-lane grid-stride body is rendered

    # ------------------------------------------------------------ output
    def emit(self, line: str) -> None:
        self.fn.lines.append("  " * self.fn.depth + line)

    def open(self, head: str) -> None:
        self.emit(f"{head} {{" if head else "{")
        self.fn.depth += 1
        self.scopes.append({})

    def close(self) -> None:
        self.fn.depth -= 1
        self.scopes.pop()
        self.emit("}")

    def var(self, prefix: str) -> str:
        self.fresh += 1
        return f"{prefix}{self.fresh}"

    def begin(self, grid: int, block: int, fixed_block: bool = False) -> None:
        name = f"{self.name}_{len(self.launches)}"
        self.launches.append(Launch(name, grid, block, fixed_block))
        self.fn = _Fn(name)
        self.scopes: list[dict] = [{}]
        self.idx: dict[int, str] = {}
        self.acc: dict[Expr, str] = {}

    def end(self) -> None:
        params = [f"{MEMTYPE[b.dtype]}* {self.ptr[b]}" for b in self.buffers]
        params.append("unsigned char* scratch")
        head = f'extern "C" __global__ void __launch_bounds__({self.launches[-1].block}) '
        head += f"{self.fn.name}({', '.join(params)}) {{"
        self.functions.append("\n".join([head, *self.fn.lines, "}"]))

    # ------------------------------------------------------------ values
    def lookup(self, e: Expr) -> str | None:
        for scope in reversed(self.scopes):
            if e in scope:
                return scope[e]
        return None

    def value(self, e: Expr) -> str:
        """A C name holding e at this point: in scope, or computed here with the sources it
        needs (iteratively, in creation order)."""
        v = self.lookup(e)
        if v is not None:
            return v
        for x in to_compute(e, self.s, lambda x: self.lookup(x) is not None, self.pos):
            try:
                text = self.compute(x)
            except CudaRenderError:
                raise
            except Exception as err:
                raise CudaRenderError(
                    f"while rendering {self.names[x]} of kernel {self.k.name} ({x!r}) as CUDA: "
                    f"{type(err).__name__}: {err}\n{self.k.as_text()}"
                ) from err
            name = self.var(self.names[x] + "_")
            self.emit(f"const {CTYPE[x.dtype]} {name} = {text};")
            self.scopes[-1][x] = name
        return self.scopes[-1][e]

    def compute(self, e: Expr, fresh: bool = False) -> str:
        if e.op in (KOp.REDUCE, KOp.CORE) or (e in self.s.kept and not fresh):
            return self.load(self.s.load_of(e), e.dtype)
        if e.op is KOp.LOAD:
            return self.load(e.arg, e.dtype)
        if e.op is KOp.CONST:
            return const(e.dtype, e.arg)
        if e.op is KOp.RAND:  # element i of the node's row-major order: needlec.ir.random's draw
            d = e.arg
            view = View.contiguous(d.shape).embed(d.dims, self.k.space)[0]
            index, _ = self.address(view)
            seed = convert(self.value(e.src[0]), e.src[0].dtype, "int64")
            return convert(draw_call(seed, d.stream, index, e.dtype, d.dist), e.dtype, e.dtype)
        if e.op not in LOWER:
            raise CudaRenderError(
                f"no CUDA lowering for {e.op} ({self.names[e]} of kernel {self.k.name})"
            )
        dt = compute_dtype(e)
        if e.op is Op.WHERE:
            c = convert(self.value(e.src[0]), e.src[0].dtype, "bool")
            xs = [c] + [convert(self.value(s), s.dtype, dt) for s in e.src[1:]]
        else:
            xs = [convert(self.value(s), s.dtype, dt) for s in e.src]
        out = LOWER[e.op](xs, e, dt)
        return convert(out, "bool" if e.op in COMPARE else dt, e.dtype)

    # ------------------------------------------------------------ memory
    def address(self, view: View) -> tuple[str, str | None]:
        """(element index, validity condition or None) of the current element; index "" when
        a size-1 dim is masked out (every read is 0)."""
        terms = [str(view.offset)] if view.offset else []
        valid = []
        for d, (n, st, (lo, hi)) in enumerate(
            zip(view.shape, view.strides, view.bounds(), strict=True)
        ):
            if n == 1:
                if not lo <= 0 < hi:
                    return "", None
                continue
            i = self.idx.get(d, "0LL")
            if st != 0:
                terms.append(f"{i} * {st}LL" if st != 1 else i)
            if (lo, hi) != (0, n):
                valid.append(f"{i} >= {lo} && {i} < {hi}")
        return " + ".join(terms) or "0LL", " && ".join(valid) or None

    def base(self, buf: Buffer) -> str:
        if buf in self.ptr:
            return self.ptr[buf]
        if self.s.core_store is not None and buf is self.s.core_buffer:
            return self.ptr[self.s.core_store.buffer]
        off = self.offsets[buf]
        return f"(({MEMTYPE[buf.dtype]}*)(scratch + {off}))"

    def load(self, ld: Load, dtype: str) -> str:
        if ld.buffer.nbytes == 0:
            return const(dtype, 0)
        off, valid = self.address(ld.view)
        if off == "":
            return const(dtype, 0)
        v = f"{self.base(ld.buffer)}[{off}]"
        if self.vec is not None and self.vec.fits(ld.view):
            v = self.vector_load(ld.buffer, ld.view)
        if ld.buffer.dtype == "bool":
            v = f"({v} != 0)"
        v = convert(v, ld.buffer.dtype, dtype)
        if valid is not None:
            v = f"(({valid}) ? {v} : {const(dtype, 0)})"
        return v

    def guarded_read(self, buf: Buffer, off: str, valid: list[str], dtype: str) -> str:
        """`buf[off]` as `dtype`, 0 where a condition of `valid` fails (a core's operand)."""
        if buf.nbytes == 0:
            return const(dtype, 0)
        v = f"{self.base(buf)}[{off}]"
        v = convert(f"({v} != 0)" if buf.dtype == "bool" else v, buf.dtype, dtype)
        if valid:
            v = f"(({' && '.join(valid)}) ? {v} : {const(dtype, 0)})"
        return v

    def store(self, buf: Buffer, view: View, v: str, dtype: str) -> None:
        off, _ = self.address(view)
        v = convert(v, dtype, buf.dtype)
        if buf.dtype == "bool":
            v = f"(unsigned char)({v})"
        if self.vec is not None and self.vec.fits(view):
            self.vector_store(buf, view, v)
            return
        self.emit(f"{self.base(buf)}[{off}] = {v};")

    # ------------------------------------------------------------ 16-byte vector access
    def lane0_address(self, view: View) -> str:
        """The element index of lane 0 of the current group of four."""
        vec = self.vec
        self.idx[vec.dim] = vec.i0
        try:
            return self.address(view)[0]
        finally:
            self.idx[vec.dim] = vec.lane_index()

    def vector_load(self, buf: Buffer, view: View) -> str:
        """This lane's element of `buf`, from the group's vector loads (made at first use)."""
        vec = self.vec
        base = self.base(buf)
        off = self.lane0_address(view)
        key = (buf, off)
        if key not in vec.loads:
            vt, per = _VECTOR[buf.dtype]
            names = []
            for c in range(4 // per):
                name = self.var("v")
                at = f"{base} + {off}" + (f" + {c * per}LL" if c else "")
                self.emit(f"const {vt} {name} = *reinterpret_cast<const {vt}*>({at});")
                names.append(name)
            vec.loads[key] = names
            vec.pointers.add(base)
        names = vec.loads[key]
        per = _VECTOR[buf.dtype][1]
        return f"{names[vec.lane // per]}.{'xyzw'[vec.lane % per]}"

    def vector_store(self, buf: Buffer, view: View, v: str) -> None:
        """Keep this lane's value (as a name) for the group's vector store of `buf`."""
        vec = self.vec
        name = self.var("s")
        self.emit(f"const {MEMTYPE[buf.dtype]} {name} = {v};")
        base = self.base(buf)
        vec.stores.setdefault((base, self.lane0_address(view), buf.dtype), []).append(name)
        vec.pointers.add(base)

    def flush_vector_stores(self) -> None:
        for (base, off, dtype), names in self.vec.stores.items():
            vt, per = _VECTOR[dtype]
            for c in range(4 // per):
                at = f"{base} + {off}" + (f" + {c * per}LL" if c else "")
                parts = ", ".join(names[c * per : (c + 1) * per])
                self.emit(f"*reinterpret_cast<{vt}*>({at}) = make_{vt}({parts});")
        self.vec.stores.clear()

    def scratch_buffer(self, nbytes: int) -> int:
        """Extra scratch (`nbytes`, 64-byte aligned) for this kernel; returns its offset."""
        off = self.scratch_bytes
        self.scratch_bytes += -(-nbytes // 64) * 64
        return off

    # ------------------------------------------------------------ loops
    def flat_loop(self, loops: list[Loop], start: str, step: str) -> None:
        """Open a loop over the flattened index of `loops` (outermost first) from `start` by
        `step`, binding each loop's index."""
        n = math.prod(lp.extent for lp in loops)
        f = self.var("f")
        self.open(f"for (long long {f} = {start}; {f} < {n}LL; {f} += {step})")
        rest = f
        for j, lp in enumerate(reversed(loops)):
            i = self.var(f"i{lp.dim}_")
            if j == len(loops) - 1:
                self.emit(f"const long long {i} = {rest};")
            else:
                self.emit(f"const long long {i} = {rest} % {lp.extent}LL;")
                nxt = self.var("q")
                self.emit(f"const long long {nxt} = {rest} / {lp.extent}LL;")
                rest = nxt
            self.idx[lp.dim] = i

    def seq_loop(self, lp: Loop) -> None:
        i = self.var(f"i{lp.dim}_")
        self.open(f"for (long long {i} = 0; {i} < {lp.extent}LL; ++{i})")
        self.idx[lp.dim] = i

    def thread_walk(self, items: list) -> None:
        """`items` run by one thread, in order (as the CPU runs them)."""
        for it in items:
            if isinstance(it, Loop):
                self.seq_loop(it)
                self.thread_walk(it.body)
                self.close()
            else:
                self.item(it, lead=None)

    def item(self, it, lead: str | None) -> None:
        """A non-loop item; `lead` is the condition under which memory is written (one thread
        of a block) or None (this thread writes)."""
        if isinstance(it, Let):
            self.value(it.expr)
        elif isinstance(it, Init):
            e = it.expr
            ident = const(e.dtype, e.arg.identity(e.dtype))
            if it.mode == "scratch":
                self.fill(self.s.scratch[e], ident, e.dtype, self.idx_thread(), "1")
            else:
                a = self.var(f"acc_{self.names[e]}_")
                self.emit(f"{CTYPE[e.dtype]} {a} = {ident};")
                self.acc[e] = a
        elif isinstance(it, Accumulate):
            e = it.expr
            x = convert(self.value(e.src[0]), e.src[0].dtype, e.dtype)
            if it.mode == "scratch":
                ld = self.s.load_of(e)
                off, _ = self.address(ld.view)
                ref = f"{self.base(ld.buffer)}[{off}]"
                old = f"({ref} != 0)" if e.dtype == "bool" else ref
                new = combine(e.arg.op, old, x, e.dtype)
                self.guarded(lead, f"{ref} = {new};")
            else:
                a = self.acc[e]
                self.emit(f"{a} = {combine(e.arg.op, a, x, e.dtype)};")
        elif isinstance(it, Finish):
            e = it.expr
            self.scopes[-1][e] = self.acc[e]
            ld = self.s.load_of(e)
            self.guarded_store(lead, ld.buffer, ld.view, self.acc[e], e.dtype)
        elif isinstance(it, Reload):
            st = it.store
            view = View.contiguous(st.buffer.shape).embed(st.dims, self.k.space)[0]
            name = self.var(self.names[it.expr] + "_")
            text = self.load(Load(st.buffer, view), it.expr.dtype)
            self.emit(f"const {CTYPE[it.expr.dtype]} {name} = {text};")
            self.scopes[-1][it.expr] = name
        elif isinstance(it, Keep):
            e = it.expr
            ld = self.s.load_of(e)
            self.guarded_store(lead, ld.buffer, ld.view, self.compute(e, fresh=True), e.dtype)
        elif isinstance(it, Write):
            st = it.store
            v = self.value(st.value)
            view = View.contiguous(st.buffer.shape).embed(st.dims, self.k.space)[0]
            self.guarded_store(lead, st.buffer, view, v, st.value.dtype)
        else:
            raise CudaRenderError(f"kernel {self.k.name}: {type(it).__name__} inside a loop")

    def guarded(self, lead: str | None, line: str) -> None:
        self.emit(line if lead is None else f"if ({lead}) {line}")

    def guarded_store(self, lead, buf, view, v, dtype) -> None:
        if lead is None:
            self.store(buf, view, v, dtype)
            return
        self.open(f"if ({lead})")
        self.store(buf, view, v, dtype)
        self.close()

    def idx_thread(self) -> str:
        return "0"

    def fill(self, buf: Buffer, value: str, dtype: str, start: str, step: str) -> None:
        n = math.prod(buf.shape)
        v = f"(unsigned char)({value})" if dtype == "bool" else convert(value, dtype, buf.dtype)
        j = self.var("j")
        self.open(f"for (long long {j} = {start}; {j} < {n}LL; {j} += {step})")
        self.emit(f"{self.base(buf)}[{j}] = {v};")
        self.close()

    # ------------------------------------------------------------ block mode (one row a block)
    def block_walk(self, items: list) -> None:
        """`items` run by every thread of a block together: reductions split over the threads
        and combined, parallel loops split over them, memory written by thread 0 outside those."""
        lead = "threadIdx.x == 0"
        j = 0
        while j < len(items):
            it = items[j]
            if isinstance(it, Init) and it.mode == "reg":
                self.item(it, None)  # every thread starts its own share at the identity
            elif isinstance(it, Loop) and it.role == "reduce":
                chain, body = _chain(it)
                self.flat_loop(chain, "threadIdx.x", "blockDim.x")
                self.thread_walk(body)
                self.close()
                for lp in chain:
                    self.idx.pop(lp.dim, None)
            elif isinstance(it, Finish) and it.expr in self.acc:
                e = it.expr
                ident = const(e.dtype, e.arg.identity(e.dtype))
                a = self.acc[e]
                self.emit(f"{a} = {block_reduce(e.arg.op, a, e.dtype, ident)};")
                self.item(it, lead)
                self.emit("__syncthreads();")
            elif isinstance(it, Loop) and parallel_safe(it, self.k.space):
                chain, body = _chain(it)
                par = [lp for lp in chain if parallel_safe(lp, self.k.space)]
                seq = [lp for lp in chain if lp not in par]
                self.flat_loop(par, "threadIdx.x", "blockDim.x")
                for lp in seq:
                    self.seq_loop(lp)
                self.thread_walk(body)
                for _ in seq:
                    self.close()
                self.close()
                for lp in chain:
                    self.idx.pop(lp.dim, None)
                self.emit("__syncthreads();")
            elif isinstance(it, Loop):  # not splittable: thread 0 runs it
                self.open(f"if ({lead})")
                self.thread_walk([it])
                self.close()
                self.emit("__syncthreads();")
            else:
                self.item(it, lead)
                if isinstance(it, (Keep, Accumulate, Write)):
                    self.emit("__syncthreads();")
            j += 1

    # ------------------------------------------------------------ phases
    def render(self) -> CudaKernel:
        body = self.s.body
        j = 0
        serial: list = []
        while j < len(body):
            it = body[j]
            if isinstance(it, Loop) and it.role == "outer":
                self.flush(serial)
                self.loop_phase(it)
            elif isinstance(it, Init) and it.mode == "reg":
                self.flush(serial)
                # Init, the reduce loop and Finish: a whole-tensor reduction in two stages
                j += 1
                while isinstance(body[j], Let):  # values are computed where they are used
                    j += 1
                lp, fin = body[j], body[j + 1]
                if not (isinstance(lp, Loop) and isinstance(fin, Finish)):
                    raise CudaRenderError(f"kernel {self.k.name}: a reduction without its loop")
                self.two_stage(it.expr, lp)
                j += 1
            elif isinstance(it, Init):  # a scratch accumulator: fill it
                self.flush(serial)
                buf = self.s.scratch[it.expr]
                e = it.expr
                n = math.prod(buf.shape)
                self.begin(_grid(n, BLOCK), BLOCK)
                start = "(long long)blockIdx.x * blockDim.x + threadIdx.x"
                step = "(long long)gridDim.x * blockDim.x"
                self.fill(buf, const(e.dtype, e.arg.identity(e.dtype)), e.dtype, start, step)
                self.end()
            elif isinstance(it, RunCore):
                self.flush(serial)
                if self.k.core.op in cores.WRITES_THROUGH_HOOK:
                    self.epilogue = self.fusable_epilogue(body[j + 1 :])
                cores.render_core(self, self.k.core, it.into)
                if self.epilogue is not None:  # it ran inside the core, on each output
                    j = len(body)
                self.epilogue = None
            elif isinstance(it, Let):
                pass  # values are computed where they are used
            else:
                serial.append(it)
            j += 1
        self.flush(serial)
        source = "\n\n".join(self.functions)
        return CudaKernel(self.name, source, self.launches, self.buffers, self.scratch_bytes)

    # ------------------------------------------------------------ the core's epilogue
    def fusable_epilogue(self, rest: list) -> list | None:
        """The items to run on each output element of the core, when everything after it (`rest`)
        is one loop nest over exactly the core's output (parallel, no reduction, only values and
        stores in it, no store into an operand of the core); else None (a phase of its own)."""
        c = self.k.core
        loops = [it for it in rest if not isinstance(it, Let)]
        if c is None or len(loops) != 1 or not isinstance(loops[0], Loop):
            return None
        dims = _core_dims(c)
        if dims is None:
            return None  # a core axis over several kernel dims
        axis = {d: a for a, d in enumerate(dims) if d is not None}
        chain, body = _chain(loops[0])
        if any(
            lp.dim not in axis
            or lp.extent != c.shape[axis[lp.dim]]
            or not parallel_safe(lp, self.k.space)
            for lp in chain
        ):
            return None
        looped = {lp.dim for lp in chain}
        if any(c.shape[a] != 1 and d not in looped for d, a in axis.items()):
            return None
        if not all(isinstance(it, (Let, Write)) for it in body):
            return None
        operands = {ld.buffer for ld in c.operands}
        if any(it.store.buffer in operands for it in body if isinstance(it, Write)):
            return None
        return body

    def store_core_output(self, into: Buffer, idx: list[str], value: str) -> None:
        """Write the core's output element at logical indices `idx` (C expressions, one per axis
        of the core's shape), whose value is the C expression `value` (of the core's dtype).

        Every core (GEMM, convolution) writes its results through this one hook. Without a
        fused epilogue it stores the element to `into` (the core's buffer). With one
        (`fusable_epilogue`) it runs the epilogue's values and stores for this element, the
        core's value bound to a register, and stores the element to `into` only where the
        kernel outputs the core as is (then after the epilogue's reads, which may share its
        memory); otherwise the epilogue was the buffer's only reader.
        The caller guards the element's bounds. A core whose renderer writes through this hook
        lists its op in `core.WRITES_THROUGH_HOOK`; only those get a fused epilogue."""
        c = self.k.core
        if self.epilogue is None:
            self._store_core(into, idx, value)
            return
        core_e = next(e for e in self.k.exprs if e.op is KOp.CORE)
        self.open("")
        name = self.var("core_")
        self.emit(f"const {CTYPE[c.dtype]} {name} = {value};")
        self.scopes[-1][core_e] = name
        bound = []
        for d, i in zip(_core_dims(c), idx, strict=True):
            if d is not None and d not in self.idx:
                self.idx[d] = f"({i})"
                bound.append(d)
        self.thread_walk(self.epilogue)
        for d in bound:
            self.idx.pop(d)
        if self.s.core_store is not None:  # after the epilogue's reads (an input it may reuse)
            self._store_core(into, idx, name)
        self.close()

    def _store_core(self, into: Buffer, idx: list[str], value: str) -> None:
        c = self.k.core
        terms, stride = [], 1
        for i, n in reversed(list(zip(idx, c.shape, strict=True))):
            if n != 1:
                terms.append(f"({i}) * {stride}LL" if stride != 1 else f"({i})")
            stride *= n
        off = " + ".join(reversed(terms)) or "0LL"
        if into.dtype == "bool":
            v = f"(unsigned char)({value})"
        else:
            v = convert(value, c.dtype, into.dtype)
        self.emit(f"{self.base(into)}[{off}] = {v};")

    def flush(self, serial: list) -> None:
        """Top-level items outside loops (scalar stores): one thread."""
        if not serial:
            return
        self.begin(1, 32)
        self.open("if (blockIdx.x == 0 && threadIdx.x == 0)")
        self.thread_walk(serial)
        self.close()
        self.end()
        serial.clear()

    def loop_phase(self, lp: Loop) -> None:
        chain, body = _chain(lp)
        space = self.k.space
        par = [x for x in chain if parallel_safe(x, space)]
        seq = [x for x in chain if x not in par]
        rows = math.prod(x.extent for x in par)
        if _has_reduce(body):  # one block per row
            inner = max([x.extent for x in _loops(body)] or [1])  # the longest loop a block splits
            block = min(BLOCK, max(32, 1 << (max(1, inner) - 1).bit_length()))
            self.begin(max(1, min(rows, 65535)), block)
            if par:
                self.flat_loop(par, "blockIdx.x", "gridDim.x")
            else:
                self.open("if (blockIdx.x == 0)")
            for x in seq:
                self.seq_loop(x)
            self.block_walk(body)
            for _ in seq:
                self.close()
            self.close()
            self.end()
            return
        groups = _vector_groups(par, seq, body)
        self.begin(_grid(groups or rows, BLOCK) if par else 1, BLOCK if par else 32)
        start = "(long long)blockIdx.x * blockDim.x + threadIdx.x"
        step = "(long long)gridDim.x * blockDim.x"
        if groups and self.vector_loop(par, body, start, step):
            self.end()
            return
        if par:
            self.flat_loop(par, start, step)
        else:
            self.open("if (blockIdx.x == 0 && threadIdx.x == 0)")
        for x in seq:
            self.seq_loop(x)
        self.thread_walk(body)
        for _ in seq:
            self.close()
        self.close()
        self.end()

    def vector_loop(self, par: list[Loop], body: list, start: str, step: str) -> bool:
        """An elementwise body four consecutive elements a thread: 16-byte loads and stores of
        every buffer read or written contiguously along the innermost dim at a group-aligned
        index (per-lane scalar accesses for the others), taken where those pointers are 16-byte
        aligned; a 1-D loop whose length is not a multiple of 4 ends in a scalar tail. The plain
        grid-stride loop runs otherwise. False (nothing emitted) where no access is a vector."""
        inner = par[-1]
        quads = inner.extent // 4
        lines, depth, idx = self.fn.lines, self.fn.depth, dict(self.idx)
        self.fn.lines, self.fn.depth = [], depth + 1
        f = self.var("g")
        i0 = self.var(f"i{inner.dim}_")
        self.vec = _Vector(inner.dim, i0)
        n = quads * math.prod(lp.extent for lp in par[:-1])
        self.open(f"for (long long {f} = {start}; {f} < {n}LL; {f} += {step})")
        self.emit(f"const long long {i0} = ({f} % {quads}LL) * 4LL;")
        rest = f"({f} / {quads}LL)"
        for j, lp in enumerate(reversed(par[:-1])):
            i = self.var(f"i{lp.dim}_")
            last = j == len(par) - 2
            self.emit(f"const long long {i} = {rest if last else f'{rest} % {lp.extent}LL'};")
            rest = f"({rest} / {lp.extent}LL)"
            self.idx[lp.dim] = i
        for lane in range(4):
            self.vec.lane = lane
            self.idx[inner.dim] = self.vec.lane_index()
            self.scopes.append({})
            self.thread_walk(body)
            self.scopes.pop()
        self.flush_vector_stores()
        self.close()
        vector, pointers, self.vec = self.fn.lines, sorted(self.vec.pointers), None
        self.fn.lines, self.fn.depth, self.idx = lines, depth, idx
        if not pointers:
            return False
        bits = " | ".join(f"(unsigned long long)({p})" for p in pointers)
        self.open(f"if ((({bits}) & 15ULL) == 0ULL)")
        self.fn.lines += vector
        if inner.extent % 4:  # 1-D: the last extent % 4 elements
            self.flat_loop(par, f"{quads * 4}LL + {start}", step)
            self.thread_walk(body)
            self.close()
        self.close()
        self.open("else")
        self.flat_loop(par, start, step)
        self.thread_walk(body)
        self.close()
        self.close()
        return True

    def two_stage(self, e: Expr, lp: Loop) -> None:
        """A reduction with no loop around it: partial results of many blocks, then one block."""
        chain, body = _chain(lp)
        n = math.prod(x.extent for x in chain)
        ident = const(e.dtype, e.arg.identity(e.dtype))
        t = CTYPE[e.dtype]
        blocks = max(1, min(PARTIALS, -(-n // BLOCK)))
        off = self.scratch_buffer(PARTIALS * 8)
        partials = f"(({t}*)(scratch + {off}))"
        # partial p sums elements p*blockDim + t, stepping by blocks*blockDim: the partials are
        # the same whatever grid runs them (a block-stride loop over them)
        self.begin(blocks, BLOCK)
        p = self.var("p")
        self.open(f"for (int {p} = blockIdx.x; {p} < {blocks}; {p} += gridDim.x)")
        a = self.var("acc")
        self.acc[e] = a
        self.emit(f"{t} {a} = {ident};")
        self.flat_loop(
            chain, f"(long long){p} * blockDim.x + threadIdx.x", f"{blocks}LL * blockDim.x"
        )
        self.thread_walk(body)
        self.close()
        self.emit(f"{a} = {block_reduce(e.arg.op, a, e.dtype, ident)};")
        self.emit(f"if (threadIdx.x == 0) {partials}[{p}] = {a};")
        self.close()
        self.end()
        self.begin(1, BLOCK)
        a = self.var("acc")
        self.emit(f"{t} {a} = {ident};")
        self.emit(f"for (int j = threadIdx.x; j < {blocks}; j += blockDim.x)")
        self.emit(f"  {a} = {combine(e.arg.op, a, f'{partials}[j]', e.dtype)};")
        self.emit(f"{a} = {block_reduce(e.arg.op, a, e.dtype, ident)};")
        ld = self.s.load_of(e)
        self.guarded_store("threadIdx.x == 0", ld.buffer, ld.view, a, e.dtype)
        self.end()


def _core_dims(c) -> list | None:
    """The kernel dim of each axis of core `c` (None: no dim), or None where an axis spans
    several kernel dims."""
    out = []
    for d in c.dims:
        d = d if isinstance(d, tuple) else (() if d is None else (d,))
        if len(d) > 1:
            return None
        out.append(d[0] if d else None)
    return out


# the 16-byte (or, for bytes, 4-byte) vector type of a dtype and the elements it holds
_VECTOR = {
    "bool": ("uchar4", 4),
    "int32": ("int4", 4),
    "float32": ("float4", 4),
    "int64": ("longlong2", 2),
    "float64": ("double2", 2),
}


@dataclass
class _Vector:
    """The group of four elements a thread handles in `vector_loop`: the innermost dim, the
    index of lane 0, the current lane, the vector loads made and the stores kept per lane."""

    dim: int
    i0: str
    lane: int = 0
    loads: dict = field(default_factory=dict)
    stores: dict = field(default_factory=dict)
    pointers: set = field(default_factory=set)

    def lane_index(self) -> str:
        return self.i0 if self.lane == 0 else f"({self.i0} + {self.lane}LL)"

    def fits(self, view: View) -> bool:
        """Whether the four lanes of `view` are one aligned vector: contiguous along the inner
        dim, unmasked, every other stride and the offset multiples of 4 elements."""
        if view.mask is not None or view.offset % 4:
            return False
        for d, (n, st) in enumerate(zip(view.shape, view.strides, strict=True)):
            if d == self.dim:
                if n == 1 or st != 1:
                    return False
            elif n != 1 and st % 4:
                return False
        return True


def _vector_groups(par: list[Loop], seq: list[Loop], body: list) -> int:
    """Groups of four a thread takes in `vector_loop`, or 0 where the loop is not such a body:
    an elementwise body (values and writes only) over parallel loops whose innermost extent is a
    multiple of 4 (or, one loop, at least 4)."""
    if not par or seq or not all(isinstance(it, (Let, Write)) for it in body):
        return 0
    inner = par[-1].extent
    if inner < 4 or (inner % 4 and len(par) > 1):
        return 0
    return inner // 4 * math.prod(lp.extent for lp in par[:-1])


def _loops(body: list):
    for it in body:
        if isinstance(it, Loop):
            yield it
            yield from _loops(it.body)


def unsupported(s: KernelSchedule) -> str | None:
    """Why this kernel has no CUDA code (it runs on the host instead), or None."""
    k = s.kernel
    if k.core is not None and k.core.op is Op.CALLBACK:
        return f"{k.core.arg.describe()} runs as a Python callback on the host"
    for e in k.exprs:  # numpy raises for a negative exponent, which device code cannot
        if e.op is Op.POW and compute_dtype(e) not in ("float32", "float64"):
            return "an integer power of an integer tensor runs on the host (numpy refuses negative exponents)"
    return None


def render_kernel(s: KernelSchedule, name: str) -> CudaKernel:
    """Kernel `s` as CUDA C functions `<name>_0`, `<name>_1`, ... (see the module docstring)."""
    why = unsupported(s)
    r = KernelRenderer(s, name)
    if why is not None:
        return CudaKernel(name, f"// {name}: {why}", [], r.buffers, 0, host=why)
    try:
        return r.render()
    except CudaRenderError:
        raise
    except Exception as err:
        raise CudaRenderError(
            f"while rendering kernel {s.kernel.name} as CUDA: {type(err).__name__}: {err}\n"
            f"{s.kernel.as_text()}"
        ) from err


__all__ = ["CudaKernel", "CudaRenderError", "LOWER", "Launch", "render_kernel", "unsupported"]
