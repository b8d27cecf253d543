"""Memory planning: where each buffer of a schedule lives, reusing the memory of dead buffers.

Liveness: steps run in order; a buffer written by step `s` and last read by step `e` is live over
the closed range `[s, e]` (reads and writes of one step are live together, so a step never writes
over its own sources unless a donation says it may). Placement is greedy by size (largest first,
each into the smallest gap among the buffers it is live with, TFLite's "greedy by size"), every
offset a multiple of `alignment`.

Three regions, as XLA's memory analysis counts them:
- the arena: every "temp" buffer, reused across calls, and every "scratch" buffer: the working
  memory a kernel's code needs besides its inputs and outputs (packed GEMM operands, im2col
  columns, a schedule's cross-loop accumulators), written and read by that kernel's step alone,
  so kernels' scratch shares the arena with each other and with dead temps (`plan_scratch`);
- the output block: every "output" buffer not donated, packed in write order with no reuse, so
  that a runtime can hand it to the caller (nothing is ever written over an output);
- donated outputs: written into the memory of the "input" they replace (a parameter's new value
  over the old one), when no later step reads that input. "input" buffers belong to the caller.

`verify_plan` checks a plan with its own liveness analysis, written apart from the planner's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..ir import ELEMENTWISE, Graph, Node, Op
from ..ir.schedule import Buffer, Step, schedule_of_graph
from ..ir.semantics import LEAF_EVAL, draw_random, evaluate


class PlanError(ValueError):
    """A schedule that cannot be planned, or a plan that `verify_plan` rejects."""


@dataclass(frozen=True)
class Donation:
    """A request that `output` be written into the memory of `input`, and what became of it."""

    output: Buffer
    input: Buffer
    accepted: bool
    reason: str


@dataclass(frozen=True)
class MemoryAnalysis:
    """The sizes a compiled function needs, in bytes (`lower(...).memory_analysis()`)."""

    arena_bytes: int  # temps, after reuse
    peak_live_bytes: int  # most temp bytes live at one step: a lower bound for the arena
    sum_temp_bytes: int  # every temp in memory of its own: what no reuse would cost
    input_bytes: int  # arguments and captured tensors the schedule reads (the caller's)
    output_bytes: int  # every output, donated or not
    output_block_bytes: int  # memory for the outputs that are not donated
    donated_bytes: int  # outputs written over their inputs

    def as_text(self) -> str:
        return "\n".join(
            f"{f.name:<20}{getattr(self, f.name):>14,}" for f in dataclasses.fields(self)
        )


@dataclass
class MemoryPlan:
    """Where each buffer of a schedule lives. Build with `plan_memory`; check with `verify_plan`."""

    offsets: dict[Buffer, int]  # temp or scratch -> offset in the arena
    output_offsets: dict[Buffer, int]  # output not donated -> offset in the output block
    aliases: dict[Buffer, Buffer]  # donated output -> the input whose memory it takes
    live: dict[Buffer, tuple[int, int]]  # temp or output -> (first step, last step), closed
    arena_bytes: int
    output_block_bytes: int
    peak_live_bytes: int
    peak_step: int  # a step where the peak is reached (-1 with no temps)
    sum_temp_bytes: int
    input_bytes: int
    output_bytes: int
    alignment: int = 64
    donations: list[Donation] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    buffers: dict[Node, Buffer] | None = None  # node -> buffer, when planned from a graph
    # scratch -> (part, offset in it, copies): what a kernel's scratch block holds
    scratch_parts: dict[Buffer, tuple] = field(default_factory=dict)

    @property
    def donated_bytes(self) -> int:
        return sum(out.nbytes for out in self.aliases)

    @property
    def accepted(self) -> list[Donation]:
        return [d for d in self.donations if d.accepted]

    @property
    def refused(self) -> list[Donation]:
        return [d for d in self.donations if not d.accepted]

    def analysis(self) -> MemoryAnalysis:
        return MemoryAnalysis(
            self.arena_bytes,
            self.peak_live_bytes,
            self.sum_temp_bytes,
            self.input_bytes,
            self.output_bytes,
            self.output_block_bytes,
            self.donated_bytes,
        )

    def as_text(self) -> str:
        """A table: one buffer a line (kind, bytes, live steps, where), then the donations."""
        saved = 1 - self.arena_bytes / self.sum_temp_bytes if self.sum_temp_bytes else 0.0
        peak_at = f" at step {self.peak_step}" if self.peak_step >= 0 else ""
        w = max([10, *(len(b.name) + 2 for b in self.live)])
        lines = [
            f"memory plan: {len(self.steps)} steps, alignment {self.alignment}",
            f"  arena {self.arena_bytes:,} B, peak live {self.peak_live_bytes:,} B{peak_at}, "
            f"temps without reuse {self.sum_temp_bytes:,} B (reuse saves {saved:.1%})",
            f"  inputs {self.input_bytes:,} B, outputs {self.output_bytes:,} B "
            f"(block {self.output_block_bytes:,} B, donated {self.donated_bytes:,} B)",
            f"  {'buffer':<{w}}{'kind':<8}{'bytes':>12}  {'live':<12}where",
        ]
        for buf, (s, e) in self.live.items():
            if buf in self.offsets:
                where = f"arena+{self.offsets[buf]}"
            elif buf in self.output_offsets:
                where = f"outputs+{self.output_offsets[buf]}"
            else:
                where = f"over {self.aliases[buf].name}"
            lines.append(
                f"  {buf.name:<{w}}{buf.kind:<8}{buf.nbytes:>12,}  {f'{s}..{e}':<12}{where}"
            )
            for part, off, copies in self.scratch_parts.get(buf, ()):
                each = f" ({copies} x {-(-part.nbytes // 64) * 64:,})" if copies > 1 else ""
                lines.append(f"    {part.name} at +{off:,}{each}")
        for d in self.donations:
            verdict = "accepted" if d.accepted else "refused"
            lines.append(f"  donate {d.output.name} -> {d.input.name}: {verdict}, {d.reason}")
        return "\n".join(lines)

    __str__ = as_text


def align_up(n: int, alignment: int) -> int:
    return -(-n // alignment) * alignment


def _liveness(steps: Sequence[Step]) -> tuple[dict[Buffer, int], dict[Buffer, int]]:
    """({buffer: the step that writes it}, {buffer: the last step that reads it}), checked."""
    written: dict[Buffer, int] = {}
    last_read: dict[Buffer, int] = {}
    for i, step in enumerate(steps):
        for b in step.reads:
            if b.kind not in ("input", "temp", "output"):
                raise PlanError(f"step {i} ({step.name}) reads {b.name} of unknown kind {b.kind!r}")
            if b.kind != "input" and b not in written:
                raise PlanError(
                    f"step {i} ({step.name}) reads {b.name}, which no earlier step writes"
                )
            last_read[b] = i
        for b in step.writes:
            if b.kind not in ("temp", "scratch", "output"):
                raise PlanError(
                    f"step {i} ({step.name}) writes {b.name}, a buffer of kind {b.kind!r}"
                )
            if b in written:
                raise PlanError(
                    f"step {i} ({step.name}) writes {b.name}, already written by step {written[b]}"
                )
            written[b] = i
    return written, last_read


def _decide(
    steps: Sequence[Step],
    out: Buffer,
    inp: Buffer,
    written: dict[Buffer, int],
    last_read: dict[Buffer, int],
    taken: dict[Buffer, Buffer],
    keep: Collection[Buffer],
) -> str | None:
    """Why `out` may not be written over `inp` (None if it may)."""
    if out.kind != "output":
        return f"{out.name} is a {out.kind} buffer, not an output"
    if inp.kind != "input":
        return f"{inp.name} is a {inp.kind} buffer, not an input"
    if out not in written:
        return f"no step writes {out.name}"
    if out.nbytes > inp.nbytes:
        return f"{out.name} needs {out.nbytes} bytes, {inp.name} has {inp.nbytes}"
    if inp in taken:
        return f"{inp.name} is already donated to {taken[inp].name}"
    if inp in keep:
        return f"{inp.name} is returned as it is, so its value must survive the call"
    s, r = written[out], last_read.get(inp, -1)
    if r > s:
        return f"{inp.name} is read by step {r} ({steps[r].name}), after step {s} writes {out.name}"
    if r == s and not _in_place(steps[s], inp, out):
        return f"step {s} ({steps[s].name}) reads {inp.name} while writing {out.name} and is not marked elementwise"
    return None


def _in_place(step: Step, inp: Buffer, out: Buffer) -> bool:
    """Whether `step` may write `out` over `inp`, which it reads: every same-sized pair may
    ("elementwise"), or this pair is one of its `inplace` pairs (it reads `inp` only at the
    element it writes `out`)."""
    if (inp, out) in step.meta.get("inplace", ()):
        return True
    return bool(step.meta.get("elementwise")) and out.nbytes == inp.nbytes


def _place(items: list[tuple[Buffer, int, int]], alignment: int) -> dict[Buffer, int]:
    """Offsets for (buffer, first, last) items: largest first, each into the smallest gap that
    fits among the placed buffers whose live ranges meet its own, else above them all."""
    order = sorted(range(len(items)), key=lambda k: (-items[k][0].nbytes, items[k][1], k))
    placed: list[tuple[int, int, int, int]] = []  # (first, last, offset, end)
    offsets: dict[Buffer, int] = {}
    for k in order:
        buf, first, last = items[k]
        if buf.nbytes == 0:
            offsets[buf] = 0
            continue
        busy = sorted((o, end) for f, l, o, end in placed if f <= last and first <= l)
        best, cursor = None, 0
        for lo, hi in busy:
            gap = lo - cursor
            if gap >= buf.nbytes and (best is None or gap < best[0]):
                best = (gap, cursor)
            cursor = max(cursor, align_up(hi, alignment))
        offset = best[1] if best is not None else cursor
        offsets[buf] = offset
        placed.append((first, last, offset, offset + buf.nbytes))
    return offsets


def plan_memory(
    steps: Sequence[Step],
    donations: dict[Buffer, Buffer] | None = None,
    alignment: int = 64,
    *,
    keep: Collection[Buffer] = (),
) -> MemoryPlan:
    """Place every temp in one arena and every output in the output block or, donated, over its
    input. `donations` maps an output to the input it replaces; `keep` lists inputs that are
    returned unchanged (never donated). A donation is accepted when no step after the one writing
    the output reads the input (the writing step itself may, if its meta says "elementwise" or
    lists the pair among its "inplace" pairs).

    >>> a, b = Buffer("a", 100), Buffer("b", 100)
    >>> c, out = Buffer("c", 100), Buffer("out", 4, "output")
    >>> steps = [Step("a", (), (a,)), Step("b", (a,), (b,)), Step("c", (b,), (c,)), Step("o", (c,), (out,))]
    >>> plan = plan_memory(steps)
    >>> [plan.offsets[x] for x in (a, b, c)], plan.arena_bytes, plan.sum_temp_bytes
    ([0, 128, 0], 256, 300)
    """
    if alignment < 1:
        raise PlanError(f"alignment must be positive, got {alignment}")
    steps = list(steps)
    written, last_read = _liveness(steps)
    end = len(steps) - 1
    taken: dict[Buffer, Buffer] = {}
    records = []
    for out, inp in (donations or {}).items():
        why = _decide(steps, out, inp, written, last_read, taken, keep)
        if why is not None:
            records.append(Donation(out, inp, False, why))
            continue
        taken[inp] = out
        r = last_read.get(inp, -1)
        why = f"{inp.name} last read at step {r}, {out.name} written at step {written[out]}"
        records.append(Donation(out, inp, True, why))
    aliases = {out: inp for inp, out in taken.items()}

    live = {
        b: (s, end if b.kind == "output" else max(s, last_read.get(b, s)))
        for b, s in written.items()
    }
    temps = [(b, s, e) for b, (s, e) in live.items() if b.kind in ("temp", "scratch")]
    offsets = _place(temps, alignment)
    arena = align_up(max((offsets[b] + b.nbytes for b, _, _ in temps), default=0), alignment)

    output_offsets, cursor = {}, 0
    for b in live:  # write order
        if b.kind == "output" and b not in aliases:
            output_offsets[b] = cursor
            cursor = align_up(cursor + b.nbytes, alignment)

    delta = np.zeros(len(steps) + 1, dtype=np.int64)
    for b, s, e in temps:
        delta[s] += b.nbytes
        delta[e + 1] -= b.nbytes
    per_step = np.cumsum(delta[:-1])
    inputs = {b for step in steps for b in step.reads if b.kind == "input"}
    return MemoryPlan(
        offsets=offsets,
        output_offsets=output_offsets,
        aliases=aliases,
        live=live,
        arena_bytes=arena,
        output_block_bytes=cursor,
        peak_live_bytes=int(per_step.max()) if temps else 0,
        peak_step=int(per_step.argmax()) if temps else -1,
        sum_temp_bytes=sum(b.nbytes for b, _, _ in temps),
        input_bytes=sum(b.nbytes for b in inputs),
        output_bytes=sum(b.nbytes for b in live if b.kind == "output"),
        alignment=alignment,
        donations=records,
        steps=steps,
    )


def plan_scratch(plan: MemoryPlan, scratch: dict[int, tuple[Buffer, list]]) -> MemoryPlan:
    """`plan` again with each step's scratch in the arena: `scratch` maps a step's index to
    (its scratch block, a "scratch" buffer, and the block's parts: (buffer, offset, copies)).
    A block is live at its step alone, so blocks of different steps share memory, and with
    temps that step does not touch. Donations stay as they were decided; verified.

    >>> a, out = Buffer("a", 100), Buffer("out", 4, "output")
    >>> steps = [Step("a", (), (a,)), Step("o", (a,), (out,))]
    >>> block = Buffer("o.scratch", 64, "scratch")
    >>> plan = plan_scratch(plan_memory(steps), {1: (block, [])})
    >>> plan.arena_bytes, plan.live[block]
    (192, (1, 1))
    """
    steps = [
        dataclasses.replace(
            st,
            writes=tuple(b for b in st.writes if b.kind != "scratch")
            + ((scratch[i][0],) if i in scratch else ()),
        )
        for i, st in enumerate(plan.steps)
    ]
    new = plan_memory(steps, dict(plan.aliases), plan.alignment)
    new.donations = list(plan.donations)  # as decided before (a refusal's reason included)
    new.buffers = plan.buffers
    new.scratch_parts = {block: tuple(parts) for block, parts in scratch.values()}
    return verify_plan(steps, new)


def verify_plan(steps: Sequence[Step], plan: MemoryPlan) -> MemoryPlan:
    """Check `plan` against `steps` with a liveness analysis of its own: every buffer placed once,
    aligned, inside its region; no two buffers live at one step share a byte; a donated output's
    input is read by no later step. Raises PlanError naming the buffers; returns the plan."""
    first: dict[Buffer, int] = {}
    reads: dict[Buffer, list[int]] = {}
    for i, step in enumerate(steps):
        for b in step.writes:
            first.setdefault(b, i)
        for b in step.reads:
            reads.setdefault(b, []).append(i)
    final = len(steps) - 1

    def live_range(b: Buffer) -> tuple[int, int]:
        return first[b], final if b.kind == "output" else max([first[b], *reads.get(b, [])])

    regions = [
        ("arena", plan.offsets, plan.arena_bytes),
        ("output block", plan.output_offsets, plan.output_block_bytes),
    ]
    for region, offsets, size in regions:
        for b, o in offsets.items():
            if b not in first:
                raise PlanError(
                    f"verify_plan: {b.name} has an {region} offset but no step writes it"
                )
            if o % plan.alignment:
                raise PlanError(
                    f"verify_plan: {b.name} at {region} offset {o} is not aligned to {plan.alignment}"
                )
            if o < 0 or o + b.nbytes > size:
                raise PlanError(
                    f"verify_plan: {b.name} at [{o}, {o + b.nbytes}) exceeds the {region} of {size} bytes"
                )
    for b in first:
        homes = [b in plan.offsets, b in plan.output_offsets, b in plan.aliases]
        arena = b.kind in ("temp", "scratch")
        want = "the arena" if arena else "the output block or a donated input"
        if sum(homes) != 1 or arena != homes[0]:
            raise PlanError(f"verify_plan: {b.kind} {b.name} must have exactly one home, in {want}")

    owners: dict[Buffer, Buffer] = {}
    for out, inp in plan.aliases.items():
        if inp.kind != "input" or out.kind != "output" or out.nbytes > inp.nbytes:
            raise PlanError(
                f"verify_plan: {out.name} ({out.nbytes} B) cannot be written over {inp.name} ({inp.nbytes} B, {inp.kind})"
            )
        if inp in owners:
            raise PlanError(
                f"verify_plan: {out.name} and {owners[inp].name} are both written over {inp.name}"
            )
        owners[inp] = out
        s = first[out]
        late = [r for r in reads.get(inp, []) if r > s]
        if late:
            raise PlanError(
                f"verify_plan: {out.name} is written over {inp.name} at step {s}, "
                f"but step {late[0]} ({steps[late[0]].name}) reads {inp.name} later"
            )
        if s in reads.get(inp, []) and not _in_place(steps[s], inp, out):
            raise PlanError(
                f"verify_plan: step {s} ({steps[s].name}) writes {out.name} over {inp.name}, "
                "which it reads, and is not marked elementwise"
            )

    for region, offsets, _ in regions:
        bufs = [b for b in offsets if b.nbytes > 0]
        span = np.array([live_range(b) for b in bufs], dtype=np.int64).reshape(-1, 2)
        lo = np.array([offsets[b] for b in bufs], dtype=np.int64)
        hi = lo + np.array([b.nbytes for b in bufs], dtype=np.int64)
        for i, b in enumerate(bufs):
            j = i + 1
            hits = (span[j:, 0] <= span[i, 1]) & (span[i, 0] <= span[j:, 1])
            hits &= (lo[j:] < hi[i]) & (lo[i] < hi[j:])
            if hits.any():
                k = j + int(np.argmax(hits))
                c = bufs[k]
                at = int(max(span[i, 0], span[k, 0]))
                raise PlanError(
                    f"verify_plan: {b.name} [{lo[i]}, {hi[i]}) live at steps {span[i, 0]}..{span[i, 1]} and "
                    f"{c.name} [{lo[k]}, {hi[k]}) live at steps {span[k, 0]}..{span[k, 1]} overlap in the "
                    f"{region}; both are live at step {at} ({steps[at].name})"
                )
    return plan


# ---------------------------------------------------------------- graphs


def _owners(graph: Graph, buffers: dict[Node, Buffer]) -> dict[Buffer, Node]:
    """The node that writes each buffer (a view shares its source's buffer and comes later)."""
    owner: dict[Buffer, Node] = {}
    for n in graph.nodes:
        owner.setdefault(buffers[n], n)
    return owner


def graph_donations(graph: Graph, buffers: dict[Node, Buffer], traced) -> dict[Buffer, Buffer]:
    """Donations from a trace (`lower(...).traced`, or anything with `.writes` and `.captured`):
    each "data" write, a captured tensor's new value, over that tensor's capture input. `graph`
    may be the traced graph or an optimized one with the same inputs and outputs."""
    n_state = sum(kind != "no_grad" for kind, _ in traced.writes)
    state = graph.outputs[len(graph.outputs) - n_state :]
    writes = [w for w in traced.writes if w[0] != "no_grad"]
    capture = {n.arg[1]: n for n in graph.inputs if n.arg[0] == "capture"}
    index = {id(t): k for k, t in enumerate(traced.captured)}
    donations: dict[Buffer, Buffer] = {}
    for (kind, target), node in zip(writes, state, strict=True):
        if kind == "data" and id(target) in index:
            donations[buffers[node]] = buffers[capture[index[id(target)]]]
    return donations


def plan_graph(graph: Graph, traced=None, alignment: int = 64) -> MemoryPlan:
    """`plan_memory` over `schedule_of_graph(graph)`, donating what `traced` writes back (see
    `graph_donations`). A step is marked elementwise when its op is and it reads its sources
    directly, not through views; the plan keeps `buffers` (node -> buffer) for `run_planned`."""
    steps, buffers = schedule_of_graph(graph)
    owner = _owners(graph, buffers)
    marked = []
    for step in steps:
        n = owner[step.writes[0]]
        direct = all(owner[buffers[s]] is s for s in n.src)
        marked.append(
            dataclasses.replace(
                step, meta={**step.meta, "node": n, "elementwise": n.op in ELEMENTWISE and direct}
            )
        )
    keep = {buffers[n] for n in graph.outputs if buffers[n].kind == "input"}
    donations = graph_donations(graph, buffers, traced) if traced is not None else None
    plan = plan_memory(marked, donations, alignment, keep=keep)
    plan.buffers = buffers
    return plan


def _view(raw, offset: int, buf: Buffer) -> np.ndarray:
    count = int(np.prod(buf.shape, dtype=np.int64))
    return np.frombuffer(raw, dtype=buf.dtype, count=count, offset=offset).reshape(buf.shape)


def run_planned(graph: Graph, plan: MemoryPlan, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Run `graph` with every temp a numpy view into one arena (filled with NaN bytes first),
    every output in the output block or over its donated input: what a runtime following `plan`
    computes. Equal to `run_graph` exactly when no live buffer was clobbered. Copies `arrays`."""
    if plan.buffers is None:
        raise PlanError("run_planned: the plan has no node -> buffer map; build it with plan_graph")
    buffers = plan.buffers
    arena, block = bytearray(b"\xff" * plan.arena_bytes), bytearray(plan.output_block_bytes)
    memory: dict[Buffer, np.ndarray] = {}
    for n, a in zip(graph.inputs, arrays, strict=True):
        memory[buffers[n]] = np.array(a, dtype=n.dtype, copy=True, order="C").reshape(n.shape)
    for out, inp in plan.aliases.items():
        count = int(np.prod(out.shape, dtype=np.int64))
        raw = memory[inp].reshape(-1).view(np.uint8)[: out.nbytes]
        memory[out] = raw.view(out.dtype)[:count].reshape(out.shape)
    for b, o in plan.offsets.items():
        memory[b] = _view(arena, o, b)
    for b, o in plan.output_offsets.items():
        memory[b] = _view(block, o, b)

    owner = _owners(graph, buffers)
    env: dict[Node, np.ndarray] = {}
    for n in graph.nodes:
        b = buffers[n]
        if b.kind == "input" and owner[b] is n:
            env[n] = memory[b]
        elif owner[b] is not n:  # a view: evaluated over its source's memory
            env[n] = evaluate(n.op, [env[s] for s in n.src], n.arg, n.shape, n.dtype)
        else:
            if n.op is Op.RAND:
                value = draw_random(env[n.src[0]], n.arg, n.shape, n.dtype)
            elif n.op in LEAF_EVAL:
                value = LEAF_EVAL[n.op](n)
            else:
                value = evaluate(n.op, [env[s] for s in n.src], n.arg, n.shape, n.dtype)
            memory[b][...] = value
            env[n] = memory[b]
    return [np.array(env[n]) for n in graph.outputs]


__all__ = [
    "Donation",
    "MemoryAnalysis",
    "MemoryPlan",
    "PlanError",
    "graph_donations",
    "plan_graph",
    "plan_memory",
    "plan_scratch",
    "run_planned",
    "verify_plan",
]


def order_for_donations(kernels: Sequence, donations: dict[Buffer, Buffer]) -> list:
    """Reorder kernels (anything with `.inputs`/`.outputs` buffers) so that the one writing a
    donated output runs after every other reader of the input it replaces, when the data flow
    allows: a parameter's update after the last kernel reading its old value. Otherwise the
    original order; stable, so kernels move only as far as they must."""
    writer = {b: k for k, kern in enumerate(kernels) for b in kern.outputs}
    after: dict[int, set[int]] = {k: set() for k in range(len(kernels))}  # k runs after these
    for k, kern in enumerate(kernels):
        after[k].update(writer[b] for b in kern.inputs if b in writer and writer[b] != k)
    extra: dict[int, set[int]] = {k: set() for k in range(len(kernels))}
    for out, inp in donations.items():
        w = writer.get(out)
        if w is None:
            continue
        for k, kern in enumerate(kernels):
            if k != w and inp in kern.inputs:
                extra[w].add(k)
    order = _stable_toposort(len(kernels), after, extra)
    return [kernels[k] for k in order]


def _stable_toposort(n: int, after: dict[int, set[int]], extra: dict[int, set[int]]) -> list[int]:
    """Kahn's algorithm taking the lowest index ready; the `extra` edges are kept only where they
    close no cycle with the rest (checked one by one)."""
    import heapq

    deps = {k: set(v) for k, v in after.items()}
    users: dict[int, set[int]] = {k: set() for k in range(n)}
    for k, v in deps.items():
        for d in v:
            users[d].add(k)

    def reaches(a: int, b: int) -> bool:  # is there a path a -> ... -> b along users
        todo, seen = [a], {a}
        while todo:
            x = todo.pop()
            if x == b:
                return True
            for y in users[x]:
                if y not in seen:
                    seen.add(y)
                    todo.append(y)
        return False

    for k, before in extra.items():
        for d in sorted(before):
            if d not in deps[k] and not reaches(k, d):
                deps[k].add(d)
                users[d].add(k)
    indeg = {k: len(v) for k, v in deps.items()}
    ready = [k for k in range(n) if indeg[k] == 0]
    heapq.heapify(ready)
    out = []
    while ready:
        k = heapq.heappop(ready)
        out.append(k)
        for u in users[k]:
            indeg[u] -= 1
            if indeg[u] == 0:
                heapq.heappush(ready, u)
    return out
