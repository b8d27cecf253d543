"""A scheduled kernel as an LLVM function, built with llvmlite's IRBuilder.

The function takes one pointer per buffer the kernel reads or writes (`noalias` where the memory
plan gives it memory of its own) and one to its scratch block, and walks the schedule: a loop is
a counted loop over an i64 index, a `let` an SSA value, a register accumulator an `alloca` that
LLVM promotes to a register. Every value is computed the way numpy computes it: sources are
converted to the dtype numpy would compute in (an int tensor's exp is computed in float64, an int
over an int divides in float64), the op runs in that dtype, and the result is converted to the
value's dtype. `LOWER` holds one row per elementwise op (`tests/unit/test_coverage.py` checks).

Float sums are marked `reassoc`, so LLVM may vectorize them: their order differs from numpy's
pairwise summation within the tolerance the op records give reductions.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from llvmlite import ir

from ...ir import Op
from ...ir.kernel import Expr, KOp, Load
from ...ir.ops import COMPARE, FLOATS
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
    partial_sums,
    to_compute,
)
from . import collective, conv, epilogue, gemm, intcore
from .loops import counted_loop, predicated_tail
from .mathlib import math_function
from .random import emit_draw

I1, I8, I32, I64 = ir.IntType(1), ir.IntType(8), ir.IntType(32), ir.IntType(64)
F32, F64 = ir.FloatType(), ir.DoubleType()
PTR = ir.PointerType(I8)

REG = {"bool": I1, "int32": I32, "int64": I64, "float32": F32, "float64": F64}
MEM = {**REG, "bool": I8}  # numpy's bool is a byte


class LoweringError(RuntimeError):
    """A kernel value the LLVM renderer cannot lower; the message names it."""


def compute_dtype(e: Expr) -> str:
    """The dtype numpy computes `e.op` in for `e`'s source dtypes (its result, before the cast
    to `e.dtype`; for comparisons, the common dtype of the operands). After `legalize` it is
    the dtype of every source (the condition of a `where` aside)."""
    if e.op is Op.CAST:
        return e.dtype
    return semantic_compute_dtype(e.op, tuple(s.dtype for s in e.src), e.arg)


# ------------------------------------------------------------------ conversions
def convert(b: ir.IRBuilder, x: ir.Value, src: str, dst: str) -> ir.Value:
    """numpy's `astype(dst)` of a value of dtype `src` (NaN and out-of-range floats to int give
    the least int, as x86 does, never LLVM's poison)."""
    if src == dst:
        return x
    t = REG[dst]
    if dst == "bool":
        if src in FLOATS:
            return b.fcmp_unordered("!=", x, ir.Constant(REG[src], 0.0))
        return b.icmp_unsigned("!=", x, ir.Constant(REG[src], 0))
    if src == "bool":
        return b.uitofp(x, t) if dst in FLOATS else b.zext(x, t)
    if src in FLOATS and dst in FLOATS:
        return b.fpext(x, t) if dst == "float64" else b.fptrunc(x, t)
    if src in FLOATS:  # float -> int
        bits = t.width
        lo, hi = -(2.0 ** (bits - 1)), 2.0 ** (bits - 1)
        ok = b.and_(
            b.fcmp_ordered(">=", x, ir.Constant(REG[src], lo)),
            b.fcmp_ordered("<", x, ir.Constant(REG[src], hi)),
        )
        safe = b.select(ok, x, ir.Constant(REG[src], 0.0))
        return b.select(ok, b.fptosi(safe, t), ir.Constant(t, -(2 ** (bits - 1))))
    if dst in FLOATS:
        return b.sitofp(x, t)
    return b.sext(x, t) if t.width > x.type.width else b.trunc(x, t)


def const(dtype: str, value) -> ir.Constant:
    t = REG[dtype]
    if dtype in FLOATS:
        return ir.Constant(t, float(np.array(value, dtype)))
    if dtype == "bool":
        return ir.Constant(t, int(bool(value)))
    return ir.Constant(t, int(np.array(value).astype(dtype)))


# ------------------------------------------------------------------ math
INLINE_MATH_LIMIT = 256  # a kernel with more math calls than this calls libm (compile time)
SHORT_LOOP = 128  # innermost loops shorter than this vectorize with a masked tail (`_short`)
MAX_LOOP_COPIES = 64  # a loop nest split at mask edges emits its body at most this many times


def _math(b: ir.IRBuilder, name: str, args: list, dtype: str, inline: bool = True) -> ir.Value:
    """`name` from our vector math library (inlined, vectorizable), or libm's scalar one for
    kernels too long to inline every call into."""
    mod = b.module
    t = REG[dtype]
    if inline:
        return b.call(math_function(mod, name, t), args)
    libm = {"exp": "exp", "log": "log", "tanh": "tanh", "pow": "pow"}[name]
    libm += "f" if dtype == "float32" else ""
    fn = mod.globals.get(libm)
    if fn is None:
        fn = ir.Function(mod, ir.FunctionType(t, [t] * len(args)), libm)
    return b.call(fn, args)


def _sqrt(b, x, dtype):
    t = REG[dtype]
    fn = b.module.declare_intrinsic("llvm.sqrt", [t])
    return b.call(fn, [x])


def maximum(b: ir.IRBuilder, x: ir.Value, y: ir.Value, dtype: str) -> ir.Value:
    """numpy's maximum: NaN wins from either side; a tie gives y (maximum(-0., 0.) is 0.)."""
    if dtype in FLOATS:
        keep = b.or_(b.fcmp_ordered(">", x, y), b.fcmp_unordered("uno", x, x))
        return b.select(keep, x, y)
    if dtype == "bool":
        return b.or_(x, y)
    return b.select(b.icmp_signed(">=", x, y), x, y)


def _ipow(b: ir.IRBuilder, x: ir.Value, y: ir.Value, dtype: str) -> ir.Value:
    """Integer power by squaring over every bit of the exponent (branch-free), for constant
    non-negative exponents (a kernel with an integer tensor power runs on the interpreter,
    which raises for a negative exponent as numpy does); a negative one would give 0."""
    t = REG[dtype]
    result, base = ir.Constant(t, 1), x
    for k in range(t.width - 1):
        bit = b.icmp_unsigned("!=", b.and_(b.lshr(y, ir.Constant(t, k)), ir.Constant(t, 1)), t(0))
        result = b.select(bit, b.mul(result, base), result)
        base = b.mul(base, base)
    return b.select(b.icmp_signed("<", y, t(0)), t(0), result)


def _fdiv_or_int(b, x, y, dt):
    return b.fdiv(x, y) if dt in FLOATS else b.sdiv(x, y)


def _binary(fop: str, iop: str) -> Callable:
    def row(b, xs, e, dt):
        x, y = xs
        if dt in FLOATS:
            return getattr(b, fop)(x, y)
        if dt == "bool":
            return b.or_(x, y) if iop == "add" else b.and_(x, y)
        return getattr(b, iop)(x, y)

    return row


def _scalar(fop: str, iop: str) -> Callable:
    def row(b, xs, e, dt):
        c = const(dt, e.arg)
        return _binary(fop, iop)(b, [xs[0], c], e, dt)

    return row


def _neg(b, xs, e, dt):
    return b.fneg(xs[0]) if dt in FLOATS else b.neg(xs[0])


def _pow_scalar(b, xs, e, dt):
    x, c = xs[0], e.arg
    if dt not in FLOATS:
        return _ipow(b, x, const(dt, c), dt)
    # numpy's power takes these exponents by exact shortcuts (sqrt(-inf) is nan, not inf)
    if c == 2:
        return b.fmul(x, x)
    if c == 0.5:
        return _sqrt(b, x, dt)
    if c == -1:
        return b.fdiv(const(dt, 1), x)
    # small integer powers by multiplication, as XLA does: two roundings, within the op's 4-ulp
    # budget, and a fraction of pow's cost (GELU's x**3)
    if c == 3:
        return b.fmul(b.fmul(x, x), x)
    if c == 4:
        x2 = b.fmul(x, x)
        return b.fmul(x2, x2)
    return _math(b, "pow", [x, const(dt, c)], dt, b.inline_math)


def _pow(b, xs, e, dt):
    if dt not in FLOATS:
        return _ipow(b, xs[0], xs[1], dt)
    return _math(b, "pow", xs, dt, b.inline_math)


def _cmp(fpred: str, ipred: str) -> Callable:
    def row(b, xs, e, dt):
        x, y = xs
        if dt in FLOATS:
            return b.fcmp_ordered(fpred, x, y)
        if dt == "bool":
            return b.icmp_unsigned(ipred, x, y)
        return b.icmp_signed(ipred, x, y)

    return row


# op -> lower(builder, source values already in the compute dtype, expr, compute dtype)
LOWER: dict[Op, Callable] = {
    Op.NEG: _neg,
    Op.EXP: lambda b, xs, e, dt: _math(b, "exp", xs, dt, b.inline_math),
    Op.LOG: lambda b, xs, e, dt: _math(b, "log", xs, dt, b.inline_math),
    Op.TANH: lambda b, xs, e, dt: _math(b, "tanh", xs, dt, b.inline_math),
    Op.RELU: lambda b, xs, e, dt: maximum(b, xs[0], const(dt, 0), dt),
    Op.SQRT: lambda b, xs, e, dt: _sqrt(b, xs[0], dt),
    Op.CAST: lambda b, xs, e, dt: xs[0],
    Op.STOP_GRADIENT: lambda b, xs, e, dt: xs[0],
    Op.ADD_SCALAR: _scalar("fadd", "add"),
    Op.MUL_SCALAR: _scalar("fmul", "mul"),
    Op.DIV_SCALAR: lambda b, xs, e, dt: _fdiv_or_int(b, xs[0], const(dt, e.arg), dt),
    Op.POW_SCALAR: _pow_scalar,
    Op.ADD: _binary("fadd", "add"),
    Op.MUL: _binary("fmul", "mul"),
    Op.DIV: lambda b, xs, e, dt: _fdiv_or_int(b, xs[0], xs[1], dt),
    Op.POW: _pow,
    Op.MAXIMUM: lambda b, xs, e, dt: maximum(b, xs[0], xs[1], dt),
    Op.CMPLT: _cmp("<", "<"),
    Op.CMPEQ: _cmp("==", "=="),
    Op.WHERE: lambda b, xs, e, dt: b.select(xs[0], xs[1], xs[2]),
}


def unsupported(s: KernelSchedule) -> str | None:
    """Why this kernel cannot be rendered yet (None if it can)."""
    k = s.kernel
    if k.core is not None and k.core.op is Op.CALLBACK:
        return f"{k.core.arg.describe()} runs as a Python callback"
    if k.core is not None and k.core.op is Op.ALLREDUCE:
        return None  # a call into the MPI library (collective.py)
    if k.core is not None and not gemm.supported(k.core):
        c = k.core
        return f"{c.op.name.lower()} core on {c.dtype} has no native lowering yet"
    for e in k.exprs:  # numpy raises for a negative exponent, which compiled code cannot
        if e.op is Op.POW and compute_dtype(e) not in FLOATS:
            return "an integer power of an integer tensor (numpy refuses negative exponents)"
    return None


# ------------------------------------------------------------------ parallel loops
PARALLEL_MIN_WORK = 1 << 16  # estimated operations below which a loop is not worth splitting
PARTIALS = 4  # chunks of a loop whose iterations sum into one scratch (`partial_loop`)
PARTIAL_MIN_WORK = 1 << 21  # ... and the work below which that is not worth its extra passes
GRAIN_WORK = 1 << 14  # operations a chunk of a parallel loop does at least
_HEAVY = (Op.EXP, Op.LOG, Op.TANH, Op.POW, Op.POW_SCALAR)


def _work(items: list) -> int:
    """Estimated operations to run `items` once (a transcendental counts 20)."""
    total = 0
    for it in items:
        if isinstance(it, Loop):
            total += it.extent * _work(it.body)
        elif isinstance(it, Let):
            total += 20 if it.expr.op in _HEAVY else 1
        elif isinstance(it, (Accumulate, Write, Finish, Reload)):
            total += 1
        elif isinstance(it, Keep):
            total += 20 if it.expr.op in _HEAVY else 1
    return total


def parallel_work(lp: Loop, s: KernelSchedule) -> int | None:
    """The work of one iteration of top-level loop `lp` if its iterations may run in parallel
    (`parallel_safe`) and it is large enough to be worth it, else None."""
    if not parallel_safe(lp, s.kernel.space):
        return None
    per_iteration = max(1, _work(lp.body))
    if per_iteration * lp.extent < PARALLEL_MIN_WORK:
        return None
    return per_iteration


def partial_work(lp: Loop, s: KernelSchedule) -> list[Expr] | None:
    """The scratch reductions across top-level loop `lp` if they are all that keeps it from
    running in parallel (`partial_sums`) and it is large enough to be worth it, else None."""
    sums = partial_sums(lp, s.kernel.space)
    if sums is None or max(1, _work(lp.body)) * lp.extent < PARTIAL_MIN_WORK:
        return None
    return sums


def parallel_for(module: ir.Module) -> ir.Function:
    """The runtime's `needlec_parallel_for(task, ctx, n, grain)`, declared in `module`."""
    fn = module.globals.get("needlec_parallel_for")
    if fn is None:
        fnty = ir.FunctionType(ir.VoidType(), [PTR, PTR, I64, I64])
        fn = ir.Function(module, fnty, "needlec_parallel_for")
    return fn


# ------------------------------------------------------------------ the renderer
class KernelRenderer:
    """Renders one `KernelSchedule` as `void name(buffers..., scratch)` in `module`."""

    def __init__(
        self,
        module: ir.Module,
        s: KernelSchedule,
        name: str,
        noalias: set,
        parallel: bool = False,
        merged: dict | None = None,
    ) -> None:
        self.s, self.k = s, s.kernel
        self.module, self.name, self.noalias, self.parallel = module, name, noalias, parallel
        # a buffer lying exactly over another (an output written over the input it replaces)
        # is reached through that one's argument: one pointer, so it may still be noalias
        self.merged: dict[Buffer, Buffer] = dict(merged or {})
        every = dict.fromkeys([*self.k.inputs, *self.k.outputs])
        self.buffers: list[Buffer] = [b for b in every if b not in self.merged]
        heavy = sum(
            e.op in (Op.EXP, Op.LOG, Op.TANH, Op.POW, Op.POW_SCALAR) for e in s.kernel.exprs
        )
        self.inline_math = heavy <= INLINE_MATH_LIMIT
        # the kernel's scratch block: the schedule's buffers, then those the lowering asks for
        # (`scratch_buffer`); the memory plan gives the block a place in the arena
        self.scratch_bytes = s.scratch_bytes
        self.names = self.k.value_names()
        self.pos = {e: i for i, e in enumerate(self.k.exprs)}
        self.parallel_loops = 0
        self.extra_scratch: dict[Buffer, int] = {}  # packed operands, im2col weights
        self.slots: dict[Buffer, int] = {}  # scratch with one copy per parallel task's chunk
        # dim -> [a, b): the loop over that dim being emitted covers only those indices, so a
        # masked read's test on that dim is known (`_cuts`, `address`)
        self.static: dict[int, tuple[int, int]] = {}
        self.copies = 1  # how many times the code being emitted is emitted (loops split)
        self.masks = self._mask_bounds()
        self.epilogue: epilogue.Epilogue | None = None  # run by the GEMM after each block
        self.fn = self._function(name, [])

    def _function(self, name: str, extra: list) -> ir.Function:
        """A function taking the kernel's buffers, its scratch and `extra` arguments, with the
        renderer's state (builder, pointers, scopes) set up to emit its body."""
        fnty = ir.FunctionType(ir.VoidType(), [PTR] * (len(self.buffers) + 1) + extra)
        fn = ir.Function(self.module, fnty, name)
        fn.linkage = "internal"
        fn.attributes.add("nounwind")
        for arg, buf in zip(fn.args, self.buffers, strict=False):
            if buf in self.noalias:
                arg.add_attribute("noalias")
        scratch = fn.args[len(self.buffers)]
        scratch.add_attribute("noalias")
        # allocas in a block of their own before the code, so LLVM promotes them to registers
        self.entry = fn.append_basic_block("allocas")
        self.alloca_builder = ir.IRBuilder(self.entry)
        self.start = fn.append_basic_block("entry")
        self.b = ir.IRBuilder(self.start)
        self.b.inline_math = self.inline_math
        self.base: dict[Buffer, ir.Value] = dict(zip(self.buffers, fn.args, strict=False))
        for b, same in self.merged.items():
            self.base[b] = self.base[same]
        for buf, off in [*self.s.scratch_offsets().items(), *self.extra_scratch.items()]:
            self.base[buf] = self.b.gep(scratch, [I64(off)])
        if self.s.core_store is not None:
            self.base[self.s.core_buffer] = self.base[self.s.core_store.buffer]
        self.scratch_ptr = scratch
        self.idx: dict[int, ir.Value] = {}
        self.scopes: list[dict] = [{}]
        self.acc: dict[Expr, ir.Value] = {}
        return fn

    _STATE = ("fn", "entry", "alloca_builder", "start", "b", "base", "scratch_ptr", "idx")
    _STATE += ("scopes", "acc")

    def render(self) -> ir.Function:
        body = self.s.body
        # where it can, the GEMM runs the epilogue after each block of C (`epilogue.py`)
        self.epilogue = epilogue.plan(self)
        if self.epilogue is not None:
            self.walk(self.epilogue.inits)  # before any block's epilogue accumulates
            self.walk(body[:1])
            done, self.epilogue = self.epilogue.done, None
            body = [] if done else [it for it in body[1:] if not isinstance(it, Init)]
        for it in body:
            work = parallel_work(it, self.s) if self.parallel and isinstance(it, Loop) else None
            # (chunked by its size alone, on one thread too: the same bits either way)
            sums = partial_work(it, self.s) if isinstance(it, Loop) and work is None else None
            if work is not None:
                self.parallel_loop(it, work)
            elif sums is not None:
                self.partial_loop(it, sums)
            else:
                self.walk([it])
        self.b.ret_void()
        self.alloca_builder.branch(self.start)
        return self.fn

    def partial_loop(self, lp: Loop, sums: list[Expr]) -> None:
        """Loop `lp`, whose iterations run in parallel but for the scratch reductions `sums`
        across them (`partial_sums`): cut into PARTIALS chunks of consecutive iterations on the
        pool (or in order, without one), chunk c accumulating into copy c of a block holding every one of the sums (set to
        their identities first); then the copies are combined into the reductions' scratch in
        chunk order. The chunks are fixed here, not by the threads that run them. Each copy
        lies at a constant offset from the chunk's block, so LLVM still sees the sums apart
        (and vectorizes the loops that accumulate them)."""
        b = self.b
        parts = min(PARTIALS, lp.extent)
        chunk = -(-lp.extent // parts)
        parts = -(-lp.extent // chunk)
        at, size = {}, 0
        for e in sums:
            at[e] = size
            size += -(-self.s.scratch[e].nbytes // 64) * 64
        block = Buffer(f"{self.k.name}.partials", size, "temp", (size,), "int8")
        self.scratch_buffer(block, slots=parts)

        def copy_of(e: Expr, c: ir.Value) -> ir.Value:
            return self.b.gep(self.slot_pointer(block, c), [I64(at[e])])

        # every copy starts at the identity: all bytes zero for sums (one memset), else a loop
        zero = [e for e in sums if e.arg.op is Op.SUM]
        if zero:
            memset = self.module.declare_intrinsic("llvm.memset", [PTR, I64])
            total = -(-block.nbytes // 64) * 64 * parts
            b.call(memset, [self.base[block], ir.Constant(I8, 0), I64(total), ir.Constant(I1, 0)])
        for e in sums:
            if e in zero:
                continue
            main = self.s.scratch[e]
            ident = convert(b, const(e.dtype, e.arg.identity(e.dtype)), e.dtype, main.dtype)
            for c in range(parts):
                first = b.bitcast(copy_of(e, I64(c)), ir.PointerType(MEM[main.dtype]))
                with counted_loop(b, math.prod(main.shape), "part.init") as i:
                    b.store(ident, b.gep(first, [i]))

        def emit(lo, hi):
            with counted_loop(self.b, hi, "part", start=lo) as c:
                bb = self.b
                for e in sums:
                    self.base[self.s.scratch[e]] = copy_of(e, c)
                start = bb.mul(c, I64(chunk))
                end = bb.add(start, I64(chunk))
                end = bb.select(bb.icmp_signed("<", end, I64(lp.extent)), end, I64(lp.extent))
                self.loop(lp, start, end)

        if self.parallel:
            self.parallel_region(parts, 1, emit)
        else:  # the same chunks, one after the other
            emit(I64(0), I64(parts))
        for e in sums:  # the copies into the scratch, in chunk order
            main = self.s.scratch[e]
            with counted_loop(b, math.prod(main.shape), "part.sum") as i:
                dst = self.pointer(main, i)
                acc = b.load(dst)
                for c in range(parts):
                    src = b.bitcast(copy_of(e, I64(c)), dst.type)
                    acc = self.combine(e, acc, b.load(b.gep(src, [i])))
                b.store(acc, dst)

    def parallel_loop(self, lp: Loop, per_iteration: int) -> None:
        """Loop `lp` (`per_iteration` operations an iteration), its iterations handed to the
        runtime's parallel-for in chunks of at least `grain` iterations."""
        grain = max(1, -(-GRAIN_WORK // per_iteration))
        self.parallel_region(lp.extent, grain, lambda lo, hi: self.loop(lp, lo, hi))

    def parallel_region(self, n: int | ir.Value, grain: int, emit: Callable) -> None:
        """Run `emit(lo, hi)` (which emits code over iterations [lo, hi) of something with `n`
        iterations) on the thread pool: the code goes into a function of its own, reached from
        a task `task(ctx, lo, hi)` that unpacks the kernel's pointers from ctx. Buffers in
        scratch (`scratch_buffer`) are there too; other values of the caller are not."""
        j = self.parallel_loops
        self.parallel_loops += 1
        saved = {a: getattr(self, a) for a in self._STATE}
        body = self._function(f"{self.name}.loop{j}", [I64, I64])
        emit(*body.args[-2:])
        self.b.ret_void()
        self.alloca_builder.branch(self.start)
        for a, v in saved.items():
            setattr(self, a, v)
        n_ptrs = len(self.buffers) + 1
        task = ir.Function(
            self.module, ir.FunctionType(ir.VoidType(), [PTR, I64, I64]), f"{self.name}.task{j}"
        )
        task.linkage = "internal"
        tb = ir.IRBuilder(task.append_basic_block("entry"))
        table = tb.bitcast(task.args[0], PTR.as_pointer())
        ptrs = [tb.load(tb.gep(table, [I64(i)])) for i in range(n_ptrs)]
        tb.call(body, [*ptrs, task.args[1], task.args[2]])
        tb.ret_void()
        b = self.b
        ctx = self.alloca_builder.alloca(PTR, size=n_ptrs, name=f"ctx{j}")
        for i, arg in enumerate(self.fn.args[:n_ptrs]):
            b.store(arg, b.gep(ctx, [I64(i)]))
        n = I64(n) if isinstance(n, int) else n
        fn = parallel_for(self.module)
        b.call(fn, [b.bitcast(task, PTR), b.bitcast(ctx, PTR), n, I64(grain)])

    def scratch_buffer(self, buf: Buffer, slots: int = 1) -> None:
        """Give `buf` memory in this kernel's scratch block (64-byte aligned), here and in the
        functions of its parallel regions; with `slots` > 1, that many consecutive copies (one
        per chunk of a parallel region: `slot_pointer`)."""
        off = self.scratch_bytes
        self.scratch_bytes += -(-buf.nbytes // 64) * 64 * slots
        self.extra_scratch[buf] = off
        if slots > 1:
            self.slots[buf] = slots
        self.base[buf] = self.b.gep(self.scratch_ptr, [I64(off)])

    def slot_pointer(self, buf: Buffer, slot: ir.Value) -> ir.Value:
        """Copy number `slot` (an i64) of per-chunk scratch `buf`."""
        stride = -(-buf.nbytes // 64) * 64
        return self.b.gep(self.base[buf], [self.b.mul(slot, I64(stride))])

    def scratch_layout(self) -> list[tuple[Buffer, int, int]]:
        """(buffer, offset in the scratch block, copies) of every scratch buffer of the kernel."""
        out = [(b, off, 1) for b, off in self.s.scratch_offsets().items()]
        out += [(b, off, self.slots.get(b, 1)) for b, off in self.extra_scratch.items()]
        return out

    # values ---------------------------------------------------------------
    def lookup(self, e: Expr):
        for scope in reversed(self.scopes):
            if e in scope:
                return scope[e]
        return None

    def value(self, e: Expr) -> ir.Value:
        """e's value at this point: looked up in scope, or computed here with the sources
        it needs (iteratively, in creation order: long chains do not recurse)."""
        v = self.lookup(e)
        if v is not None:
            return v
        for x in to_compute(e, self.s, lambda x: self.lookup(x) is not None, self.pos):
            try:
                self.scopes[-1][x] = self._compute(x)
            except LoweringError:
                raise
            except Exception as err:
                raise LoweringError(
                    f"while lowering {self.names[x]} of kernel {self.k.name} ({x!r}): "
                    f"{type(err).__name__}: {err}\n{self.k.as_text()}"
                ) from err
        return self.scopes[-1][e]

    def _compute(self, e: Expr, fresh: bool = False) -> ir.Value:
        """`e` from its sources (in scope or computed now); a materialized value (a reduction,
        the core, a kept value unless `fresh`) is read from its buffer."""
        if e.op in (KOp.REDUCE, KOp.CORE) or (e in self.s.kept and not fresh):
            return self.load(self.s.load_of(e), e.dtype)
        if e.op is KOp.LOAD:
            return self.load(e.arg, e.dtype)
        if e.op is KOp.CONST:
            return const(e.dtype, e.arg)
        if e.op is KOp.RAND:  # element i of the node's row-major order: needlec.ir.random's draw
            d = e.arg
            view = View.contiguous(d.shape).embed(d.dims, self.k.space)[0]
            index, _, _ = self.address(view)
            seed = convert(self.b, self.value(e.src[0]), e.src[0].dtype, "int64")
            return emit_draw(self.b, seed, d.stream, index, e.dtype, d.dist)
        if e.op not in LOWER:
            raise LoweringError(f"no lowering for {e.op} in kernel {self.k.name}")
        dt = compute_dtype(e)
        if e.op is Op.WHERE:
            c = convert(self.b, self.value(e.src[0]), e.src[0].dtype, "bool")
            xs = [c] + [convert(self.b, self.value(s), s.dtype, dt) for s in e.src[1:]]
        else:
            xs = [convert(self.b, self.value(s), s.dtype, dt) for s in e.src]
        out = LOWER[e.op](self.b, xs, e, dt)
        out_dt = "bool" if e.op in COMPARE else dt
        return convert(self.b, out, out_dt, e.dtype)

    # memory ---------------------------------------------------------------
    def address(self, view: View) -> tuple[ir.Value, ir.Value | None, bool]:
        """(element index, validity or None, statically empty) of the current element."""
        b = self.b
        off = I64(view.offset)
        valid = None
        for d, (n, st, (lo, hi)) in enumerate(
            zip(view.shape, view.strides, view.bounds(), strict=True)
        ):
            if n == 1:
                if not lo <= 0 < hi:
                    return off, None, True
                continue
            i = self.idx.get(d, I64(0))
            if st != 0:
                off = b.add(off, b.mul(i, I64(st)))
            if (lo, hi) != (0, n):
                a, c = self.static.get(d, (0, n))
                if c <= lo or a >= hi:  # the loop piece being emitted lies outside the mask
                    return off, None, True
                if lo <= a and c <= hi:  # ... or inside it
                    continue
                ok = b.and_(b.icmp_signed(">=", i, I64(lo)), b.icmp_signed("<", i, I64(hi)))
                valid = ok if valid is None else b.and_(valid, ok)
        return off, valid, False

    def convert(self, x: ir.Value, src: str, dst: str) -> ir.Value:
        return convert(self.b, x, src, dst)

    const = staticmethod(const)

    def pointer(self, buf: Buffer, index: ir.Value) -> ir.Value:
        p = self.b.bitcast(self.base[buf], ir.PointerType(MEM[buf.dtype]))
        return self.b.gep(p, [index])

    def load(self, ld: Load, dtype: str, where: ir.Value | None = None) -> ir.Value:
        """`ld`'s element at the current indices: zero where its view's mask, or the extra
        condition `where` (an i1: a convolution's padding), says it is not there."""
        b = self.b
        if ld.buffer.nbytes == 0:
            return const(dtype, 0)
        off, valid, empty = self.address(ld.view)
        if empty:
            return const(dtype, 0)
        if where is not None:
            valid = where if valid is None else b.and_(valid, where)
        if valid is not None:
            off = b.select(valid, off, I64(0))
        v = b.load(self.pointer(ld.buffer, off))
        if ld.buffer.dtype == "bool":
            v = b.icmp_unsigned("!=", v, I8(0))
        v = convert(b, v, ld.buffer.dtype, dtype)
        if valid is not None:
            v = b.select(valid, v, const(dtype, 0))
        return v

    def store(self, buf: Buffer, view: View, v: ir.Value, dtype: str) -> None:
        off, _, _ = self.address(view)
        v = convert(self.b, v, dtype, buf.dtype)
        if buf.dtype == "bool":
            v = self.b.zext(v, I8)
        self.b.store(v, self.pointer(buf, off))

    # the schedule ---------------------------------------------------------
    def _mask_bounds(self) -> dict[int, set[int]]:
        """dim -> the indices where some masked read of the kernel starts or stops being
        there (a stacked piece's rows, a padded border)."""
        out: dict[int, set[int]] = {}
        for e in self.k.exprs:
            if e.op is not KOp.LOAD:
                continue
            v = e.arg.view
            for d, (n, (lo, hi)) in enumerate(zip(v.shape, v.bounds(), strict=True)):
                if n > 1 and (lo, hi) != (0, n):
                    out.setdefault(d, set()).update(c for c in (lo, hi) if 0 < c < n)
        return out

    def _cuts(self, lp: Loop) -> list[tuple[int, int]]:
        """`lp`'s iterations split where masked reads start or stop: within each piece every
        masked read is known to be there or not on `lp.dim`, so a stack of k pieces reads one
        piece per element, not k. One piece where there are no masks, or too many copies."""
        cuts = sorted(self.masks.get(lp.dim, ()))
        if not cuts or self.copies * (len(cuts) + 1) > MAX_LOOP_COPIES:
            return [(0, lp.extent)]
        edges = [0, *cuts, lp.extent]
        return list(zip(edges[:-1], edges[1:], strict=True))

    @staticmethod
    def _short(lp: Loop, n: int) -> bool:
        """Whether an innermost loop of `n` iterations is short enough, and not a whole number
        of vectors, that its tail had better be a masked vector than a scalar loop."""
        innermost = not any(isinstance(it, Loop) for it in lp.body)
        return innermost and n < SHORT_LOOP and (n % 8 != 0 or (n > 32 and n % 32 != 0))

    def loop(self, lp: Loop, lo: ir.Value | None = None, hi: ir.Value | None = None) -> None:
        """`lp`, over all its iterations or over [lo, hi) (a task's share), split where masked
        reads start or stop (`_cuts`): the same iterations in the same order."""
        b = self.b
        saved = self.idx.get(lp.dim)
        pieces = self._cuts(lp)
        self.copies *= len(pieces)
        split = len(pieces) > 1
        for a, c in pieces:
            start, end = a if lo is None else lo, c if hi is None else hi
            if split:  # a task's share, clipped to the piece
                self.static[lp.dim] = (a, c)
                if lo is not None:
                    start = b.select(b.icmp_signed(">", lo, I64(a)), lo, I64(a))
                    end = b.select(b.icmp_signed("<", hi, I64(c)), hi, I64(c))
            hints = predicated_tail(self.module) if self._short(lp, c - a) else None
            with counted_loop(b, end, f"i{lp.dim}", start, hints) as i:
                self.idx[lp.dim] = i
                self.scopes.append({})
                self.walk(lp.body)
                self.scopes.pop()
        self.static.pop(lp.dim, None)
        self.copies //= len(pieces)
        if saved is None:
            self.idx.pop(lp.dim, None)
        else:
            self.idx[lp.dim] = saved

    def walk(self, items: list) -> None:
        b = self.b
        for it in items:
            if isinstance(it, Loop):
                self.loop(it)
            elif isinstance(it, Let):
                self.value(it.expr)
            elif isinstance(it, Init):
                e = it.expr
                ident = const(e.dtype, e.arg.identity(e.dtype))
                if it.mode == "scratch":
                    self.fill(self.s.scratch[e], ident, e.dtype)
                else:
                    slot = self.alloca_builder.alloca(REG[e.dtype], name=f"acc.{self.names[e]}")
                    self.acc[e] = slot
                    b.store(ident, slot)
            elif isinstance(it, Accumulate):
                e = it.expr
                x = convert(b, self.value(e.src[0]), e.src[0].dtype, e.dtype)
                if it.mode == "scratch":
                    ld = self.s.load_of(e)
                    off, _, _ = self.address(ld.view)
                    ptr = self.pointer(ld.buffer, off)
                    old = b.load(ptr)
                    if e.dtype == "bool":
                        old = b.icmp_unsigned("!=", old, I8(0))
                    new = self.combine(e, old, x)
                    b.store(b.zext(new, I8) if e.dtype == "bool" else new, ptr)
                else:
                    slot = self.acc[e]
                    b.store(self.combine(e, b.load(slot), x), slot)
            elif isinstance(it, Finish):
                e = it.expr
                v = b.load(self.acc[e])
                self.scopes[-1][e] = v
                ld = self.s.load_of(e)
                self.store(ld.buffer, ld.view, v, e.dtype)
            elif isinstance(it, Reload):
                st = it.store
                view = View.contiguous(st.buffer.shape).embed(st.dims, self.k.space)[0]
                self.scopes[-1][it.expr] = self.load(Load(st.buffer, view), it.expr.dtype)
            elif isinstance(it, Keep):
                e = it.expr
                ld = self.s.load_of(e)
                self.store(ld.buffer, ld.view, self._compute(e, fresh=True), e.dtype)
            elif isinstance(it, Write):
                st = it.store
                v = self.value(st.value)
                view = View.contiguous(st.buffer.shape).embed(st.dims, self.k.space)[0]
                self.store(st.buffer, view, v, st.value.dtype)
            elif isinstance(it, RunCore):
                core = self.k.core
                if core.op is Op.ALLREDUCE:
                    emit = collective.emit_allreduce
                elif intcore.supported(core):  # integer and bool cores: loop kernels
                    emit = intcore.emit_int_core
                else:
                    emit = gemm.emit_core if core.op is Op.MATMUL else conv.emit_conv
                saved = dict(self.idx)  # a core's loops index its operands' own dims
                emit(self, core, it.into)
                self.idx = saved

    def combine(self, e: Expr, acc: ir.Value, x: ir.Value) -> ir.Value:
        b = self.b
        if e.arg.op is Op.SUM:
            if e.dtype in FLOATS:
                out = b.fadd(acc, x)
                out.flags.append("reassoc")  # a vectorizable sum; order within the budget
                return out
            return b.or_(acc, x) if e.dtype == "bool" else b.add(acc, x)
        if e.dtype in FLOATS:  # IEEE maximum: NaN propagates, and LLVM vectorizes it
            t = REG[e.dtype]
            name = f"llvm.maximum.{'f32' if e.dtype == 'float32' else 'f64'}"
            fn = b.module.globals.get(name) or ir.Function(
                b.module, ir.FunctionType(t, [t, t]), name
            )
            return b.call(fn, [acc, x])
        return maximum(b, acc, x, e.dtype)

    def fill(self, buf: Buffer, value: ir.Value, dtype: str) -> None:
        n = math.prod(buf.shape)
        if n == 0:
            return
        b = self.b
        with counted_loop(b, n, "fill") as i:
            v = b.zext(value, I8) if dtype == "bool" else convert(b, value, dtype, buf.dtype)
            b.store(v, self.pointer(buf, i))


def render_kernel(
    module: ir.Module,
    s: KernelSchedule,
    name: str,
    noalias: set,
    parallel: bool = False,
    merged: dict | None = None,
) -> KernelRenderer:
    """Add kernel `s` to `module` as function `name`; returns the renderer (its `.fn` and the
    order of its buffer arguments, `.buffers`). With `parallel`, its large outer loops run on
    the runtime's thread pool; `merged` maps a buffer to another whose bytes it is (it gets no
    argument of its own)."""
    r = KernelRenderer(module, s, name, noalias, parallel, merged)
    r.render()
    return r


__all__ = ["LOWER", "LoweringError", "compute_dtype", "render_kernel", "unsupported"]
