"""Fusion's second phase: kernels that share data merge into multi-output kernels.

- producer into consumer: a kernel whose output another kernel reads (elementwise, same index
  map) computes both; the value is still written when someone else reads it (e.g. a GEMM with
  bias whose result feeds both a relu and the backward's mask);
- horizontal: two kernels that read one buffer over the same iteration space, with no path
  between them, become one loop nest (e.g. the sum and the sum of squares of a batch norm).

A merge is refused when it would make a cycle among kernels, put two cores in one kernel, give a
conv a reduction, or grow a GEMM's loop nest; refusals with a reason are recorded. A GEMM takes
reductions over its output space: they run as loops after its core (a Linear layer's bias
gradient in the kernel of the GEMM that computes the output gradient, one kernel fewer).
"""

from __future__ import annotations

import heapq
import math

from ..ir import Op
from ..ir.ops import OPAQUE, OPAQUE_WHAT
from .fusion_plan import Group, Plan, flat

MAX_SIBLINGS = 16  # readers of one buffer tried pairwise for horizontal fusion


class Dag:
    """The kernels' dependence graph: an edge a -> b when b reads a buffer a writes."""

    def __init__(self, plan: Plan) -> None:
        self.succs: dict[int, set[int]] = {gid: set() for gid in plan.groups}
        self.preds: dict[int, set[int]] = {gid: set() for gid in plan.groups}
        for g in plan.groups.values():
            for s, n, _, how in plan.reads(g):
                b = plan.base_group(s, how, n)
                if b is not None and b != g.id:
                    self.succs[b].add(g.id)
                    self.preds[g.id].add(b)

    def through(self, a: int, b: int) -> int | None:
        """A kernel x != b on a path a -> x -> ... -> b, or None."""
        seen: set[int] = set()
        for first in sorted(self.succs[a] - {b}):
            stack = [first]
            while stack:
                x = stack.pop()
                if x in seen:
                    continue
                seen.add(x)
                if b in self.succs[x]:
                    return first
                stack.extend(self.succs[x] - seen)
        return None

    def merge(self, a: int, b: int) -> None:
        """b's edges become a's."""
        for x in self.succs.pop(b):
            self.preds[x].discard(b)
            if x != a:
                self.preds[x].add(a)
                self.succs[a].add(x)
        for x in self.preds.pop(b):
            self.succs[x].discard(b)
            if x != a:
                self.succs[x].add(a)
                self.preds[a].add(x)
        self.succs[a].discard(b)
        self.preds[a].discard(b)

    def order(self, key) -> list[int]:
        """A topological order, ties broken by `key(gid)` (the graph order of its first node)."""
        indeg = {g: len(p) for g, p in self.preds.items()}
        heap = [(key(g), g) for g, d in indeg.items() if d == 0]
        heapq.heapify(heap)
        out = []
        while heap:
            _, g = heapq.heappop(heap)
            out.append(g)
            for x in self.succs[g]:
                indeg[x] -= 1
                if indeg[x] == 0:
                    heapq.heappush(heap, (key(x), x))
        if len(out) != len(indeg):
            raise ValueError("fusion: the kernels depend on each other in a cycle")
        return out


def merge_groups(plan: Plan) -> Dag:
    """Phase 3: producer-consumer then horizontal merges, until nothing changes."""
    dag = Dag(plan)
    for _ in range(len(plan.groups) + 1):  # each round merges at least once, or it stops
        changed = _producer_consumer(plan, dag)
        changed = _horizontal(plan, dag) or changed
        if not changed:
            break
    return dag


def first_index(plan: Plan, g: Group) -> int:
    return min(plan.index[n] for n in g.members)


def _producer_consumer(plan: Plan, dag: Dag) -> bool:
    changed = False
    for pid in dag.order(lambda gid: first_index(plan, plan.groups[gid])):
        if pid not in plan.groups:
            continue
        for cid in sorted(dag.succs[pid], key=lambda c: first_index(plan, plan.groups[c])):
            if _try_producer_consumer(plan, dag, pid, cid):
                changed = True
                break
    return changed


def _try_producer_consumer(plan: Plan, dag: Dag, pid: int, cid: int) -> bool:
    P, C = plan.groups[pid], plan.groups[cid]
    edges, shown = [], None
    for s, n, k, how in list(plan.reads(C)):
        if plan.base_group(s, how, n) != pid:
            continue
        if how != "load":
            return False  # a core operand or a copy reads memory by design
        base = plan.base_of(s)[0]
        shown = base
        if base is not s:
            why = f"read through a view ({plan.what(s)})"
            plan.refusals.append((f"{{g{pid}}} (writes {plan.name(base)})", cid, why, pid))
            return False
        edges.append((s, n, k))
    if shown is None:
        return False
    what = f"{{g{pid}}} (writes {plan.name(shown)})"
    saved = P.snapshot(), C.snapshot()
    pairs = _aligned_pairs(plan, C, P, [((n, k), s) for s, n, k in edges])
    if pairs is None:
        plan.refusals.append((what, cid, "the kernels lay its dims out differently", pid))
    else:  # the producer's loop nest is kept (its stores stay in order)
        pairs = [(p, c) for c, p in pairs]
        if _merge(plan, dag, P, C, pairs, what, cid, lambda: dag.through(pid, cid)):
            return True
    P.restore(saved[0])
    C.restore(saved[1])
    return False


def _aligned_pairs(plan: Plan, A: Group, B: Group, reads: list) -> list | None:
    """(a_dim, b_dim) pairs that make the values of `reads` agree: each read is (where A reads
    it, where B has it), either a member of the group or (member, slot) for a load. A logical
    dim over one kernel dim on one side and several on the other is split to match."""

    def dims(g: Group, at):
        return plan.demand(g, *at) if isinstance(at, tuple) else g.dims[at]

    for _ in range(64):
        pairs, split = [], False
        for at_a, at_b in reads:
            da, db = dims(A, at_a), dims(B, at_b)
            for a, b in zip(da, db, strict=True):
                if len(a) == len(b):
                    pairs.extend(zip(a, b, strict=True))
                    continue
                if len(a) != 1 and len(b) != 1:
                    return None
                g, k, sizes = (
                    (A, a[0], [B.space[x] for x in b])
                    if len(a) == 1
                    else (B, b[0], [A.space[x] for x in a])
                )
                for i in range(len(sizes) - 1):
                    g.split(k + i, (sizes[i], g.space[k + i] // sizes[i]))
                split = True
                break
            if split:
                break
        if not split:
            return pairs if plan.embeddable(A) and plan.embeddable(B) else None
    return None


def _horizontal(plan: Plan, dag: Dag) -> bool:
    readers: dict = {}
    for g in plan.groups.values():
        for s, n, k, how in plan.reads(g):
            if how != "load":
                continue
            base, view = plan.base_of(s)
            d = flat(plan.demand(g, n, k))
            if sorted(d) == list(range(len(g.space))) and g.space:
                readers.setdefault(base, []).append((g.id, n, k, view))
    changed = False
    for base, rs in readers.items():
        rs = rs[:MAX_SIBLINGS]
        for i in range(len(rs)):
            for j in range(i + 1, len(rs)):
                a, b = plan.find(rs[i][0]), plan.find(rs[j][0])
                if a == b or rs[i][3] != rs[j][3] or b in dag.succs[a] or a in dag.succs[b]:
                    continue
                A, B = plan.groups[a], plan.groups[b]
                if math.prod(A.space) != math.prod(B.space):
                    continue
                saved = A.snapshot(), B.snapshot()
                pairs = _aligned_pairs(plan, A, B, [(rs[i][1:3], rs[j][1:3])])
                if pairs is None or len(pairs) != len(A.space) or len(A.space) != len(B.space):
                    A.restore(saved[0])
                    B.restore(saved[1])
                    continue
                what = f"{{g{b}}} (horizontal, both read {plan.name(base)})"

                def cycle(a=a, b=b):
                    x = dag.through(a, b)
                    return x if x is not None else dag.through(b, a)

                if _merge(plan, dag, A, B, pairs, what, a, cycle):
                    changed = True
                else:
                    A.restore(saved[0])
                    B.restore(saved[1])
    return changed


def _merge(
    plan: Plan, dag: Dag, A: Group, B: Group, pairs: list, shown: str, into: int, cycle
) -> bool:
    """Merge B into A, keeping A's dim order (or A into B, so that a core keeps its loop
    nest); pairs (a_dim, b_dim)
    are dims that must become one; `cycle()` names a kernel the merge would make a cycle
    through (checked last: it walks the graph). `shown`, `into`: how a refusal is reported."""
    if B.core is not None and A.core is None:  # the core's kernel keeps its loop nest
        A, B = B, A
        pairs = [(b, a) for a, b in pairs]
    why = None
    opaque = next((g.core for g in (A, B) if g.core is not None and g.core.op in OPAQUE), None)
    if opaque is not None:
        why = f"{plan.what(opaque)} is {OPAQUE_WHAT[opaque.op]} (a kernel of its own)"
    elif A.core is not None and B.core is not None:
        why = f"both kernels have a core ({plan.what(A.core)}, {plan.what(B.core)})"
    elif A.core is not None and B.reduces and A.core.op is not Op.MATMUL:  # conv: elementwise only
        why = f"a reduction cannot join the epilogue of {plan.what(A.core)}"
    phi: dict[int, int] = {}
    used: dict[int, int] = {}
    for a, b in pairs:
        if phi.get(b, a) != a or used.get(a, b) != b or A.space[a] != B.space[b]:
            why = why or "the kernels' index maps disagree"
        phi[b], used[a] = a, b
    space = list(A.space)
    for b, size in enumerate(B.space):
        if b in phi:
            continue
        a = next((a for a, d in enumerate(space) if d == size and a not in used), None)
        if a is None:
            if A.core is not None:
                why = why or f"would grow the loop nest of {plan.what(A.core)}"
            a = len(space)
            space.append(size)
        phi[b], used[a] = a, b
    if why is None:
        for m in B.members:
            if m in A.dims and A.dims[m] != tuple(tuple(phi[k] for k in kd) for kd in B.dims[m]):
                why = f"{plan.name(m)} is computed in both, with different index maps"
                break
    if why is None:
        x = cycle()
        why = None if x is None else f"would make a cycle through {{g{x}}}"
    if why is not None:
        plan.refusals.append((shown, into, why, B.id if into == A.id else A.id))
        return False
    A.space = space
    B.relabel(lambda k: (phi[k],))
    for m in B.members:
        if m not in A.dims:
            A.members.append(m)
            A.dims[m] = B.dims[m]
            if m in B.rdims:
                A.rdims[m] = B.rdims[m]
        plan.gof[m] = list(dict.fromkeys(A.id if g == B.id else g for g in plan.gof[m]))
        if plan.owner.get(m) == B.id:
            plan.owner[m] = A.id
    A.core = A.core or B.core
    A.reduces += B.reduces
    A.copies |= B.copies
    A.fills |= B.fills
    A.version += 1
    del plan.groups[B.id]
    plan.alias[B.id] = A.id
    dag.merge(A.id, B.id)
    return True
