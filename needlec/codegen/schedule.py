"""Schedules: a fused `Kernel` as a loop nest, the backend-neutral form every renderer reads.

A kernel's work is a list of tasks in dependency order: each reduction and each store. A task
loops over its *outer* dims (the dims its result is indexed by) and, for a reduction, its *inner*
(reduced) dims. Consecutive tasks that share outer dims share their loops; inside, the rest is
scheduled the same way, so a softmax becomes one loop over rows holding a max pass, a sum pass and
a store pass over the row (the row stays in cache):

    loop i0 (32)
      init v1 reg
      loop i1 (10) reduce
        let v0 = load %19
        accumulate v1
      finish v1
      ...

Loop order follows the strides of what the tasks read and write: the dim with the smallest stride
innermost. A reduction whose reduced dim is the innermost one accumulates in a register
(`reg`); one whose innermost dim is kept (a column sum over a row-major matrix) accumulates
into scratch memory indexed by the kept dims (`scratch`), initialised before the kernel's first
loop, so the reads stay contiguous. Every reduction result is written to scratch too, so tasks in
other loops read it from there; values (`let`) are computed at the outermost loop level where
every dim they depend on is bound (invariants are hoisted) and recomputed in sibling loops.

A GEMM or convolution core runs first (`core`) into a buffer of its own (or straight into the
buffer a store copies it to); the epilogue reads it like any load.

`NEEDLEC_DEBUG=schedule` prints each schedule; `run_schedule` interprets one element by element,
the check that a schedule computes what the kernel describes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..ir.kernel import Expr, Kernel, KOp, Load, Store, inplace_pairs
from ..ir.ops import Op
from ..ir.schedule import Buffer
from ..ir.semantics import evaluate
from ..ir.view import Shape, View


@dataclass(eq=False)
class Loop:
    """`for i<dim> in range(extent)`; role is "outer" (indexes results) or "reduce"."""

    dim: int
    extent: int
    role: str
    body: list = field(default_factory=list)


@dataclass(frozen=True, eq=False)
class Let:
    """Compute a value at this point (its sources are in scope)."""

    expr: Expr


@dataclass(frozen=True, eq=False)
class Init:
    """Set a reduction's accumulator to its identity: a register, or (mode "scratch") the
    whole scratch array of the reduction, before the kernel's loops."""

    expr: Expr
    mode: str


@dataclass(frozen=True, eq=False)
class Accumulate:
    """Combine the reduction's source (in scope) into its accumulator."""

    expr: Expr
    mode: str


@dataclass(frozen=True, eq=False)
class Finish:
    """A register accumulation is done: its value is in scope and written to its scratch."""

    expr: Expr


@dataclass(frozen=True, eq=False)
class Keep:
    """Compute a value here and write it to its scratch, at the current indices: a costly
    value over a few dims (a per-channel reciprocal square root) computed once per element of
    those dims and read from scratch wherever else it is needed, instead of recomputed at each
    index of the loops it would sit inside."""

    expr: Expr


@dataclass(frozen=True, eq=False)
class Reload:
    """A value an earlier loop of the same iteration stored (`store`), read back from that
    store's buffer at the current indices instead of computed again (softmax's exp, needed
    after the loop that stored it)."""

    expr: Expr
    store: Store


@dataclass(frozen=True, eq=False)
class Write:
    """A store of the kernel, at the current indices."""

    store: Store


@dataclass(frozen=True, eq=False)
class RunCore:
    """The kernel's GEMM or convolution, into the buffer `into`."""

    into: Buffer


@dataclass(eq=False)
class KernelSchedule:
    """A kernel's loop nest (`body`), where each reduction accumulates (`modes`), and the
    scratch it needs: one compact buffer per reduction result (keepdims shape, `scratch`) and,
    for a core not stored as is, one for the core (`core_buffer`)."""

    kernel: Kernel
    body: list
    modes: dict[Expr, str]
    scratch: dict[Expr, Buffer]
    core_buffer: Buffer | None = None
    core_store: Store | None = None  # the store the core writes directly, if any
    kept: frozenset = frozenset()  # values computed once into scratch (`Keep`)

    def load_of(self, e: Expr) -> Load:
        """How a materialized value (a reduction result, the core, a kept value) is read: a
        kernel-space view of its buffer."""
        space = self.kernel.space
        if e.op is KOp.CORE:
            buf = self.core_buffer
            return Load(buf, View.contiguous(buf.shape).embed(self.core_dims(), space)[0])
        buf = self.scratch[e]
        return Load(buf, View.contiguous(e.shape))

    def core_dims(self):
        if self.core_store is not None:
            return self.core_store.dims
        return self.kernel.core.dims

    @property
    def scratch_bytes(self) -> int:
        """Bytes of scratch (reduction results and the core's buffer), each 64-byte aligned."""
        bufs = list(self.scratch.values()) + ([self.core_buffer] if self._core_scratch else [])
        return sum(-(-b.nbytes // 64) * 64 for b in bufs)

    @property
    def _core_scratch(self) -> bool:
        return self.core_buffer is not None and self.core_store is None

    def scratch_offsets(self) -> dict[Buffer, int]:
        """Offset of each scratch buffer in the kernel's scratch block."""
        out, off = {}, 0
        bufs = list(self.scratch.values()) + ([self.core_buffer] if self._core_scratch else [])
        for b in bufs:
            out[b] = off
            off += -(-b.nbytes // 64) * 64
        return out

    def as_text(self) -> str:
        k = self.kernel
        names = k.value_names()
        lines = [f"{k.name} schedule space=({','.join(map(str, k.space))})"]

        def walk(items, depth):
            pad = "  " * depth
            for it in items:
                if isinstance(it, Loop):
                    role = " reduce" if it.role == "reduce" else ""
                    lines.append(f"{pad}loop i{it.dim} ({it.extent}){role}")
                    walk(it.body, depth + 1)
                elif isinstance(it, Let):
                    lines.append(f"{pad}let {names[it.expr]}")
                elif isinstance(it, Init):
                    lines.append(f"{pad}init {names[it.expr]} {it.mode}")
                elif isinstance(it, Accumulate):
                    lines.append(f"{pad}accumulate {names[it.expr]} {it.mode}")
                elif isinstance(it, Finish):
                    lines.append(f"{pad}finish {names[it.expr]}")
                elif isinstance(it, Write):
                    lines.append(f"{pad}store {it.store.buffer.name} = {names[it.store.value]}")
                elif isinstance(it, Keep):
                    lines.append(f"{pad}keep {names[it.expr]}")
                elif isinstance(it, Reload):
                    lines.append(f"{pad}reload {names[it.expr]} from {it.store.buffer.name}")
                elif isinstance(it, RunCore):
                    lines.append(f"{pad}core {k.core.op.name.lower()} -> {it.into.name}")

        walk(self.body, 1)
        return "\n".join(lines)

    __str__ = as_text


# ------------------------------------------------------------------ building a schedule


def items(body: list):
    """Every item of a loop nest, depth first (loops, then what they hold)."""
    for it in body:
        yield it
        if isinstance(it, Loop):
            yield from items(it.body)


def deps(e: Expr, space: Shape) -> frozenset[int]:
    """The kernel dims a value varies along."""
    return frozenset(d for d, n in enumerate(e.shape) if n != 1 and space[d] != 1)


def _reduced_dims(e: Expr) -> set[int]:
    return {d for d, (n, m) in enumerate(zip(e.src[0].shape, e.shape, strict=True)) if n != m}


def partial_sums(lp: Loop, space: Shape) -> list[Expr] | None:
    """The reductions into scratch across loop `lp`'s dim (column sums over the rows it runs
    over: a bias gradient, BatchNorm's statistics) if they are all that keeps its iterations
    from running in parallel, and they are float sums or maxima, else None. A renderer may then
    cut the loop into a fixed number of chunks, each accumulating into a copy of its own, and
    combine the copies in order after them (the same bits whatever the number of threads)."""
    if lp.role != "outer" or lp.extent < 2:
        return None
    sums = {}
    for it in items(lp.body):
        if isinstance(it, Accumulate) and it.mode == "scratch" and lp.dim in _reduced_dims(it.expr):
            if it.expr.dtype not in ("float32", "float64") or it.expr.arg.op not in (
                Op.SUM,
                Op.MAX,
            ):
                return None
            sums[it.expr] = None
    if not sums or not parallel_safe(lp, space, frozenset(sums)):
        return None
    return list(sums)


def parallel_safe(lp: Loop, space: Shape, partial: frozenset = frozenset()) -> bool:
    """Whether the iterations of loop `lp` may run in parallel (on threads of a pool or of a
    GPU): each writes memory of its own. Every store inside is indexed by the loop's dim, every
    reduction inside keeps that dim (its accumulator differs per iteration; or is in `partial`,
    summed in copies of its own: `partial_sums`), no scratch is reset inside, no GEMM."""
    if lp.role != "outer" or lp.extent < 2:
        return False
    stack = list(lp.body)
    while stack:
        it = stack.pop()
        if isinstance(it, Loop):
            stack.extend(it.body)
        elif isinstance(it, RunCore) or (isinstance(it, Init) and it.mode == "scratch"):
            return False
        elif isinstance(it, Accumulate) and lp.dim in _reduced_dims(it.expr):
            if it.expr not in partial:
                return False
        elif isinstance(it, Write) and lp.dim not in {d for kd in it.store.dims for d in kd}:
            return False
        elif isinstance(it, Finish) and space[lp.dim] != it.expr.shape[lp.dim]:
            return False
        elif isinstance(it, Keep) and lp.dim not in deps(it.expr, space):
            return False
    return True


def _store_dims(s: Store, space: Shape) -> frozenset[int]:
    return frozenset(d for kd in s.dims for d in kd if space[d] != 1)


@dataclass(eq=False)
class _Task:
    item: object  # a reduction Expr, a Store, or a value to keep (`_Kept`)
    outer: frozenset[int]
    inner: tuple[int, ...]
    mode: str  # "reg", "scratch" or "store"
    needs: frozenset  # reductions it reads (directly, not through other reductions)
    pref: dict[int, int]  # dim -> smallest |stride| of what the task reads or writes


# A value is kept (`Keep`) when it is costly and varies over dims covering at most 1/KEEP_RATIO
# of the kernel's largest value, so inside the loops it is recomputed at least KEEP_RATIO times
# as often as it changes
COSTLY = frozenset({Op.EXP, Op.LOG, Op.TANH, Op.SQRT, Op.POW, Op.POW_SCALAR, Op.DIV, Op.DIV_SCALAR})
KEEP_RATIO = 16


@dataclass(frozen=True, eq=False)
class _Kept:
    expr: Expr


class _Builder:
    def __init__(self, k: Kernel) -> None:
        self.k = k
        self.space = k.space
        self.materialized: set[Expr] = set()  # values with a buffer: reductions, the core
        self.scratch: dict[Expr, Buffer] = {}
        self.modes: dict[Expr, str] = {}
        self.kept: set[Expr] = set()
        self._fresh: Expr | None = None  # the kept value a Keep is computing
        # costly values stored as they are: (the store, the loop bodies around it)
        self._stored: dict[Expr, tuple[Store, tuple[int, ...]]] = {}

    # what a value's tree reads, up to materialized values
    def _tree(self, e: Expr) -> list[Expr]:
        seen, out, stack = set(), [], [e]
        while stack:
            x = stack.pop()
            if x in seen:
                continue
            seen.add(x)
            out.append(x)
            if (x.op in (KOp.REDUCE, KOp.CORE) or x in self.kept) and x is not e:
                continue
            stack.extend(x.src)
        return out

    def _prefs(self, exprs: list[Expr], extra_views=()) -> dict[int, int]:
        """dim -> the stride the loop over it walks memory with: the smallest |stride| on that
        dim among the largest reads and writes that move along it (a row's label, read once
        per row, does not make the row dim look contiguous next to the rows themselves)."""
        best: dict[int, tuple[int, int]] = {}  # dim -> (-elements of the view, |stride|)
        views = [x.arg.view for x in exprs if x.op is KOp.LOAD] + list(extra_views)
        core = self.k.core
        if core is not None and any(x.op is KOp.CORE for x in exprs):  # read from a row-major
            views.append(View.contiguous(core.shape).embed(core.dims, self.space)[0])  # buffer
        for v in views:
            moving = [d for d, s in enumerate(v.strides) if s != 0 and self.space[d] != 1]
            size = math.prod(self.space[d] for d in moving)
            for d in moving:
                key = (-size, abs(v.strides[d]))
                if d not in best or key < best[d]:
                    best[d] = key
        return {d: s for d, (_, s) in best.items()}

    def _materialized(self, x: Expr) -> bool:
        return x.op in (KOp.REDUCE, KOp.CORE) or x in self.kept

    def task_of(self, item) -> _Task:
        space = self.space
        if isinstance(item, _Kept):
            tree = [y for x in item.expr.src for y in self._tree(x) if not self._materialized(y)]
            needs = {y for x in item.expr.src for y in self._tree(x) if self._materialized(y)}
            needs |= {x for x in item.expr.src if self._materialized(x)}
            return _Task(
                item, deps(item.expr, space), (), "keep", frozenset(needs), self._prefs(tree)
            )
        if isinstance(item, Store):
            tree = self._tree(item.value) if not self._materialized(item.value) else []
            needs = {x for x in tree if self._materialized(x)}
            if self._materialized(item.value):
                needs.add(item.value)
            out_view = View.contiguous(item.buffer.shape).embed(item.dims, space)[0]
            pref = self._prefs(tree, [out_view])
            return _Task(item, _store_dims(item, space), (), "store", frozenset(needs), pref)
        src = item.src[0]
        tree = self._tree(src) if not self._materialized(src) else []
        needs = {x for x in tree if self._materialized(x)}
        if self._materialized(src):
            needs.add(src)
        inner = tuple(d for d in item.arg.dims if space[d] != 1)
        outer = deps(item, space)
        pref = self._prefs(tree)
        mode = "reg"
        if inner and outer and pref:
            innermost = min(outer | set(inner), key=lambda d: (pref.get(d, math.inf), -d))
            if innermost in outer and pref.get(innermost, math.inf) < min(
                pref.get(d, math.inf) for d in inner
            ):
                mode = "scratch"
        return _Task(item, outer, inner, mode, frozenset(needs), pref)

    def order(self, dims, tasks) -> list[int]:
        """Outermost first: larger smallest-stride outside, then kernel order."""
        pref: dict[int, float] = {}
        for t in tasks:
            for d, s in t.pref.items():
                pref[d] = min(pref.get(d, s), s)
        return sorted(dims, key=lambda d: (-pref.get(d, math.inf), d))

    def build(self) -> KernelSchedule:
        k = self.k
        items: list = []
        core_buffer = core_store = None
        body: list = []
        if k.core is not None:
            c = k.core
            core_e = next(e for e in k.exprs if e.op is KOp.CORE)
            for s in k.stores:  # BLAS writes straight into a buffer that stores the core as is
                if (
                    s.value is core_e
                    and s.buffer.dtype == c.dtype
                    and s.buffer.shape == c.shape
                    and s.dims == c.dims
                ):
                    core_buffer, core_store = s.buffer, s
                    break
            if core_buffer is None:
                nbytes = math.prod(c.shape) * np.dtype(c.dtype).itemsize
                core_buffer = Buffer(f"{k.name}.core", nbytes, "temp", c.shape, c.dtype)
            body.append(RunCore(core_buffer))
            self.materialized.add(core_e)
        pos = self.pos = {e: i for i, e in enumerate(k.exprs)}
        for e in k.exprs:
            if e.op is KOp.REDUCE:
                items.append((pos[e], 0, e))
        for j, s in enumerate(k.stores):
            if s is core_store:
                continue
            # a store runs as soon as its value can: after the reductions it reads
            items.append((pos[s.value], 1 + j, s))
        items.sort(key=lambda t: (t[0], t[1]))
        tasks = [self.task_of(it) for _, _, it in items]
        self._choose_kept(tasks)
        if self.kept:  # kept values become tasks of their own; the others read them
            items += [(pos[e], -1, _Kept(e)) for e in self.kept]
            items.sort(key=lambda t: (t[0], t[1]))
            tasks = [self.task_of(it) for _, _, it in items]
        for t in tasks:  # a scratch buffer for each reduction result and kept value
            e = t.item.expr if isinstance(t.item, _Kept) else t.item
            if not isinstance(e, Expr):
                continue
            self.scratch[e] = Buffer(
                f"{k.name}.{k.value_names()[e]}",
                math.prod(e.shape) * np.dtype(e.dtype).itemsize,
                "temp",
                tuple(e.shape),
                e.dtype,
            )
            if isinstance(t.item, Expr):
                self.modes[e] = t.mode
                if t.mode == "scratch":
                    body.append(Init(e, "scratch"))
        self._placed: dict[int, dict[Expr, int]] = {}
        self._emit(tasks, frozenset(), [body])
        return KernelSchedule(
            k, body, self.modes, self.scratch, core_buffer, core_store, frozenset(self.kept)
        )

    def _choose_kept(self, tasks: list[_Task]) -> None:
        """The costly values over few dims (see KEEP_RATIO), except those that read a
        reduction accumulated in a register (that one is only known inside its loop, and
        keeping the value would split the loop the two now share). None in a kernel whose
        outputs may be written over its inputs (`inplace_pairs`): a kept value's loop would
        split its stores into loops of their own, and a later one recomputing a value from an
        input would read it after an earlier one had written the new value over it."""
        space = self.space
        # the largest value's elements: a kernel's space may be larger than any of its values
        volume = max(math.prod(space[d] for d in deps(x, space)) for x in self.k.exprs)
        reg = {t.item for t in tasks if t.mode == "reg"}
        if inplace_pairs(self.k):  # its stores must share one loop nest (see below)
            return
        for e in self.k.exprs:
            if e.op not in COSTLY:
                continue
            dims = deps(e, space)
            if not dims or math.prod(space[d] for d in dims) * KEEP_RATIO > volume:
                continue
            if any(x in reg for x in self._tree(e)):
                continue
            self.kept.add(e)

    # ------------------------------------------------------------ the loop tree
    def _runs(self, tasks: list[_Task], bound: frozenset[int]) -> list[tuple[list, frozenset]]:
        """Consecutive tasks grouped under shared loops: a task joins the group before it
        where they share dims, and only where the shared dims are the outermost of its own
        loop order and of every task's in the group (a per-channel store never drags the
        channel loop, the contiguous one, outside a channel-last store's loops)."""
        runs: list[tuple[list, frozenset]] = []
        cur: list[_Task] = []
        common: frozenset[int] = frozenset()

        def rest_of(t: _Task) -> frozenset[int]:
            return (t.outer | frozenset(t.inner) if t.mode == "scratch" else t.outer) - bound

        def leads(t: _Task, dims: frozenset[int]) -> bool:
            own = self.order(rest_of(t), [t])
            return frozenset(own[: len(dims)]) == dims

        for t in tasks:
            rest = rest_of(t)
            if cur:
                new = common & rest
                blocked = any(u.mode == "scratch" and u.item in t.needs for u in cur)
                alone = t.mode == "keep" or cur[0].mode == "keep"  # a small loop of its own
                outermost = new and all(leads(u, new) for u in [*cur, t])
                if new and not blocked and not alone and outermost:
                    cur.append(t)
                    common = new
                    continue
                runs.append((cur, common))
            cur, common = [t], rest
        if cur:
            runs.append((cur, common))
        return runs

    def _emit(self, tasks: list[_Task], bound: frozenset[int], path: list[list]) -> None:
        for run, common in self._runs(tasks, bound):
            if not common:  # a single task with every dim it needs bound
                (t,) = run
                self._leaf(t, bound, path)
                continue
            dims = self.order(common, run)
            loops = []
            parent = path[-1]
            for d in dims:
                lp = Loop(d, self.space[d], "outer")
                parent.append(lp)
                loops.append(lp)
                parent = lp.body
            self._emit(run, bound | frozenset(dims), path + [lp.body for lp in loops])

    def _leaf(self, t: _Task, bound: frozenset[int], path: list[list]) -> None:
        if isinstance(t.item, _Kept):
            e = t.item.expr
            self._fresh = e
            for x in e.src:
                self._need(x, path, bound)
            self._fresh = None
            path[-1].append(Keep(e))
            return
        if isinstance(t.item, Store):
            v = t.item.value
            self._need(v, path, bound)
            path[-1].append(Write(t.item))
            st = t.item
            if self._reloadable(st):
                self._stored.setdefault(v, (st, tuple(id(b) for b in path[:-1])))
            return
        e = t.item
        src = e.src[0]
        if t.mode == "scratch":  # every dim is bound here (outer and reduced)
            self._need(src, path, bound)
            path[-1].append(Accumulate(e, "scratch"))
            return
        path[-1].append(Init(e, "reg"))
        dims = self.order(frozenset(t.inner) - bound, [t])
        body = path[-1]
        inner_path = list(path)
        for d in dims:
            lp = Loop(d, self.space[d], "reduce")
            body.append(lp)
            body = lp.body
            inner_path.append(body)
        self._need(src, inner_path, bound | frozenset(dims))
        body.append(Accumulate(e, "reg"))
        path[-1].append(Finish(e))
        self._scope(path[-1])[e] = len(path) - 1

    def _scope(self, body: list) -> dict[Expr, int]:
        return self._placed.setdefault(id(body), {})

    def _find(self, e: Expr, path: list[list]) -> int | None:
        for depth in range(len(path) - 1, -1, -1):
            if e in self._scope(path[depth]):
                return depth
        if e.op is KOp.CORE:
            return 0  # read from its buffer wherever it is needed
        return None  # a reduction's result or a kept value: read where its dims are bound

    def _read(self, x: Expr) -> bool:
        """Whether `x` is read from its scratch (a reduction's result, a kept value) rather
        than computed from its sources here."""
        return x.op is KOp.REDUCE or (x in self.kept and x is not self._fresh)

    def _need(self, e: Expr, path: list[list], bound: frozenset[int]) -> int:
        """Place a `Let` for `e` (and its sources) in the outermost body of `path` where its
        dims are bound and its sources are in scope; returns that body's depth. Iterative:
        kernels of deep graphs hold long chains."""
        found = self._find(e, path)
        if found is not None:
            return found
        todo, seen, stack = [], set(), [e]
        reloads: dict[Expr, Store] = {}
        while stack:
            x = stack.pop()
            if x in seen:
                continue
            seen.add(x)
            if self._find(x, path) is None:
                todo.append(x)
                st = self._reload(x, path)
                if st is not None:
                    reloads[x] = st  # read back, so its sources are not needed here
                elif not self._read(x):
                    stack.extend(x.src)
        todo.sort(key=self.pos.__getitem__)  # creation order is topological
        depth_of_dim = self._depth_of_dims(path)
        for x in todo:
            dims = [depth_of_dim.get(d, 0) for d in deps(x, self.space)]
            if x in reloads or self._read(x):  # from memory: only its own dims matter
                srcs = []
            else:
                srcs = [self._find(src, path) for src in x.src]
            level = max(srcs + dims, default=0)
            body = path[level]
            item = Reload(x, reloads[x]) if x in reloads else Let(x)
            if level == len(path) - 1:
                body.append(item)
            else:
                body.insert(len(body) - 1, item)  # before the open loop it encloses
            self._scope(body)[x] = level
        return self._find(e, path)

    def _reloadable(self, st: Store) -> bool:
        """Whether a later loop had better read `st`'s value back than compute it again: the
        value is costly (a transcendental or a division in the kernel's loops), stored in its
        own dtype over exactly its own dims."""
        v = st.value
        if v.op not in COSTLY or st.buffer.dtype != v.dtype:
            return False
        dims = [d for kd in st.dims for d in kd]
        return sorted(dims) == sorted(deps(v, self.space)) and len(set(dims)) == len(dims)

    def _reload(self, x: Expr, path: list[list]) -> Store | None:
        """The store of `x` made earlier in this iteration of the loops around `path`'s
        innermost body, in a loop of its own that has finished, if there is one."""
        hit = self._stored.get(x)
        if hit is None:
            return None
        st, around = hit
        ids = tuple(id(b) for b in path)
        if len(around) >= len(ids) or ids[: len(around)] != around:
            return None  # not under the same iteration, or in this very body
        return st

    def _depth_of_dims(self, path: list[list]) -> dict[int, int]:
        out = {}
        for depth in range(1, len(path)):
            parent = path[depth - 1]
            for it in parent:
                if isinstance(it, Loop) and it.body is path[depth]:
                    out[it.dim] = depth
        return out


def to_compute(e: Expr, s: KernelSchedule, known, pos: dict[Expr, int]) -> list[Expr]:
    """What a renderer computes to have `e` at the point it is emitting: `e` and, back from
    it, every source `known(x)` says is not in scope there, stopping at values read from memory
    (reductions, the core, kept values); in creation order, so sources come first. Iterative:
    kernels of deep graphs hold long chains."""
    todo, seen, stack = [], set(), [e]
    while stack:
        x = stack.pop()
        if x in seen or known(x):
            continue
        seen.add(x)
        todo.append(x)
        if x.op not in (KOp.REDUCE, KOp.CORE) and x not in s.kept:
            stack.extend(x.src)
    return sorted(todo, key=pos.__getitem__)


def schedule_kernel(k: Kernel) -> KernelSchedule:
    """The loop nest of one kernel (see the module docstring)."""
    return _Builder(k).build()


# ------------------------------------------------------------------ the loop interpreter


def run_schedule(s: KernelSchedule, env: dict[Buffer, np.ndarray]) -> None:
    """Interpret a schedule element by element (slow; small kernels only): the check that a
    schedule computes what its kernel describes. Reads and writes compact arrays in `env`;
    the GEMM/conv core is evaluated with the reference."""
    from .kernels import read_view

    k = s.kernel
    flat = {b: np.asarray(a).reshape(-1) for b, a in env.items()}
    for e, b in s.scratch.items():
        flat[b] = np.zeros(math.prod(e.shape), e.dtype)
    idx = [0] * len(k.space)
    acc: dict[Expr, object] = {}  # register accumulators (outlive the loop bodies' scopes)

    def load(ld: Load):
        v = ld.view
        at = [i if n != 1 else 0 for i, n in zip(idx, v.shape, strict=True)]  # size 1: broadcast
        for i, (lo, hi) in zip(at, v.bounds(), strict=True):
            if not lo <= i < hi:
                return np.zeros((), flat[ld.buffer].dtype)[()]
        return flat[ld.buffer][v.offset + sum(i * st for i, st in zip(at, v.strides, strict=True))]

    def ev(e: Expr, scope: dict, fresh: bool = False):
        if e in scope:
            return scope[e]
        if e.op in (KOp.REDUCE, KOp.CORE) or (e in s.kept and not fresh):
            return load(s.load_of(e))
        if e.op is KOp.LOAD:
            return load(e.arg)
        if e.op is KOp.CONST:
            return np.array(e.arg, dtype=e.dtype)[()]
        if e.op is KOp.RAND:
            raise NotImplementedError("run_schedule: random draws are checked by the backends")
        xs = [np.array(ev(x, scope)).reshape(1) for x in e.src]
        out = evaluate(e.op, xs, e.arg, (1,), e.dtype)
        return out[0]

    def scratch_index(e: Expr) -> int:
        v = View.contiguous(e.shape)
        return sum(i * st for i, st in zip(idx, v.strides, strict=True))

    def combine(e: Expr, a, b):
        r = evaluate(
            e.arg.combiner, [np.array(a).reshape(1), np.array(b).reshape(1)], None, (1,), e.dtype
        )
        return r[0]

    def walk(items, scope):
        scope = dict(scope)
        for it in items:
            if isinstance(it, Loop):
                for i in range(it.extent):
                    idx[it.dim] = i
                    walk(it.body, scope)
                idx[it.dim] = 0
            elif isinstance(it, Let):
                scope[it.expr] = ev(it.expr, scope)
            elif isinstance(it, Init):
                ident = np.array(it.expr.arg.identity(it.expr.dtype), it.expr.dtype)[()]
                if it.mode == "scratch":
                    flat[s.scratch[it.expr]][:] = ident
                else:
                    acc[it.expr] = ident
            elif isinstance(it, Accumulate):
                e = it.expr
                x = np.array(ev(e.src[0], scope)).astype(e.dtype)[()]
                if it.mode == "scratch":
                    j = scratch_index(e)
                    buf = flat[s.scratch[e]]
                    buf[j] = combine(e, buf[j], x)
                else:
                    acc[e] = combine(e, acc[e], x)
            elif isinstance(it, Finish):
                scope[it.expr] = acc[it.expr]
                flat[s.scratch[it.expr]][scratch_index(it.expr)] = scope[it.expr]
            elif isinstance(it, Write):
                st = it.store
                view = View.contiguous(st.buffer.shape).embed(st.dims, k.space)[0]
                j = view.offset + sum(i * x for i, x in zip(idx, view.strides, strict=True))
                flat[st.buffer][j] = ev(st.value, scope)
            elif isinstance(it, Keep):
                flat[s.scratch[it.expr]][scratch_index(it.expr)] = ev(it.expr, scope, fresh=True)
            elif isinstance(it, Reload):
                st = it.store
                view = View.contiguous(st.buffer.shape).embed(st.dims, k.space)[0]
                j = view.offset + sum(i * x for i, x in zip(idx, view.strides, strict=True))
                scope[it.expr] = flat[st.buffer][j]
            elif isinstance(it, RunCore):
                c = k.core
                xs = [read_view(env[ld.buffer], ld.view) for ld in c.operands]
                v = evaluate(c.op, xs, c.arg, c.shape, c.dtype)
                flat[it.into] = np.ascontiguousarray(v).reshape(-1)

    for st in k.stores:
        if st.buffer not in flat:
            flat[st.buffer] = np.zeros(math.prod(st.buffer.shape), st.buffer.dtype)
    walk(s.body, {})
    for st in k.stores:
        env[st.buffer] = flat[st.buffer].reshape(st.buffer.shape)
    if s.core_store is not None:
        env[s.core_store.buffer] = flat[s.core_buffer].reshape(s.core_buffer.shape)


__all__ = [
    "Keep",
    "KernelSchedule",
    "Reload",
    "items",
    "parallel_safe",
    "run_schedule",
    "schedule_kernel",
]
