"""Fusion's plan: which nodes each kernel computes, and how each node lies over the loop nest.

Every computing node is, in a kernel, an array over the kernel's dims (`Group.dims[node]`: for
each logical dim, the kernel dims it runs over, row-major). Nodes are placed consumers first
(reverse topological order): a node joins the kernel of its consumers when they all are in one
kernel and agree on its dims (so a node is never computed twice, and joining cannot make a
cycle); otherwise it is materialized: a new kernel computes it and writes it to memory. Movement
ops join as relabelings of dims (broadcast, permute, reshape) or are folded into the views of the
loads that read them (`Plan.views`). Then kernels that share data merge (`fusion_merge`:
multi-output and horizontal fusion, with explicit cycle checks).

Phases: `place` (consumers first), `resolve_views` (movement chains to views, copies where a
chain has no view), then `fusion_merge.merge_groups`; `fusion._build` writes the kernels.
"""

from __future__ import annotations

import math

import numpy as np

from ..ir import ELEMENTWISE, MOVEMENT, REDUCE, Graph, Node, Op
from ..ir.ops import CONVS, OPAQUE, OPAQUE_WHAT, uniform
from ..ir.view import Dims, View

# ops whose kernel reads whole buffers: GEMM and convolutions (which may take an elementwise
# epilogue), and opaque ops (a Python callback: a kernel of its own, never merged)
CORES = frozenset({Op.MATMUL}) | CONVS | OPAQUE
IN_KERNEL_MOVES = frozenset({Op.BROADCAST, Op.PERMUTE, Op.RESHAPE})  # relabel dims, no data moved
# values the rematerialization plan may have a kernel compute again instead of reading
DUPLICABLE = ELEMENTWISE | IN_KERNEL_MOVES | REDUCE


def flat(dims: Dims) -> tuple[int, ...]:
    """Every kernel dim a value runs over, in row-major order of its logical dims."""
    return tuple(k for kd in dims for k in kd)


class Group:
    """A kernel being planned: its loop nest (`space`, sizes of dims i0, i1, ...), its member
    nodes, where each lies (`dims`), the kernel dims each reduction runs over (`rdims`)."""

    def __init__(self, gid: int) -> None:
        self.id = gid
        self.space: list[int] = []
        self.members: list[Node] = []
        self.dims: dict[Node, Dims] = {}
        self.rdims: dict[Node, Dims] = {}
        self.core: Node | None = None
        self.reduces = 0
        self.copies: set[Node] = set()  # members computed as a load of their own view
        self.fills: set[Node] = set()  # members that are a constant (written out)
        self.version = 0  # bumped when dims are split

    def fresh(self, shape) -> Dims:
        """New kernel dims, one per dim of `shape` larger than 1."""
        out = []
        for d in shape:
            if d == 1:
                out.append(())
            else:
                out.append((len(self.space),))
                self.space.append(d)
        return tuple(out)

    def ks(self, n: Node) -> tuple[int, ...]:
        """The kernel-space shape of member `n`."""
        on = set(flat(self.dims[n]))
        return tuple(d if k in on else 1 for k, d in enumerate(self.space))

    def relabel(self, f) -> None:
        """Rename every kernel dim k as the tuple f(k)."""

        def re(dims: Dims) -> Dims:
            return tuple(tuple(x for k in kd for x in f(k)) for kd in dims)

        self.dims = {n: re(d) for n, d in self.dims.items()}
        self.rdims = {n: re(d) for n, d in self.rdims.items()}
        self.version += 1

    def snapshot(self):
        """The placement, to put back with `restore` (a trial split or join)."""
        return (list(self.space), dict(self.dims), dict(self.rdims), self.version)

    def restore(self, saved) -> None:
        self.space, self.dims, self.rdims, self.version = saved

    def split(self, k: int, sizes: tuple[int, int]) -> None:
        """Split kernel dim k into two (outer, inner), keeping the dims' order."""
        self.space[k : k + 1] = list(sizes)
        self.relabel(lambda x: (x, x + 1) if x == k else ((x + 1,) if x > k else (x,)))


def _broadcast_from(s: Node) -> int | None:
    """The elements of the value `s` broadcasts (through elementwise ops of one operand and
    moves), or None where `s` is not a broadcast."""
    while s.op in ELEMENTWISE and len(s.src) == 1 or s.op in (Op.RESHAPE, Op.PERMUTE):
        s = s.src[0]
    return math.prod(s.src[0].shape) if s.op is Op.BROADCAST else None


def _recentred(p: Node) -> bool:
    """Whether `p` is an elementwise op of one full-size operand and per-row values broadcast
    to it (x - mean, x / std): each consumer computing it again from that operand reads as many
    bytes as reading `p` would, and `p` is never written. So BatchNorm's centred activation is
    not a buffer its variance and its normalization both read."""
    if p.op not in ELEMENTWISE or len(p.src) < 2:
        return False
    size = math.prod(p.shape)
    rows = [_broadcast_from(s) for s in p.src]
    full = [s for s, r in zip(p.src, rows, strict=True) if r is None]
    if len(full) != 1 or math.prod(full[0].shape) != size:
        return False
    if np.dtype(full[0].dtype).itemsize > np.dtype(p.dtype).itemsize:
        return False
    return all(r is None or r * 8 <= size for r in rows)


class Plan:
    """The grouping of a graph's nodes into kernels (see the module docstring)."""

    def __init__(self, graph: Graph, names: dict[Node, str], recompute: frozenset) -> None:
        self.graph, self.names, self.recompute = graph, names, recompute
        self.order = graph.nodes
        self.index = {n: i for i, n in enumerate(self.order)}
        self.users: dict[Node, list[Node]] = {n: [] for n in self.order}
        for n in self.order:
            for s in dict.fromkeys(n.src):
                self.users[s].append(n)
        self.outputs = set(graph.outputs)
        self.uniform = _uniform_values(self.order)
        self.kind: dict[Node, str] = {}  # input | const | inline | virtual | member
        self.groups: dict[int, Group] = {}
        self.gof: dict[Node, list[int]] = {}  # groups a node is computed in
        self.owner: dict[Node, int] = {}  # the group that writes a materialized node
        self.views: dict[Node, tuple[Node, View]] = {}  # virtual node -> (base node, view)
        # (what, group, why, subject): `what` and `why` may name groups as {g3} (printed as
        # kernel names); subject: the node refused, or the group id of a refused merge (a
        # refusal whose subject ends up in the same kernel after all is not reported)
        self.refusals: list[tuple] = []
        self.notes: list[tuple[str, int, str]] = []
        self.alias: dict[int, int] = {}  # a merged group -> the group it went into
        self._next = 0

    def name(self, n: Node) -> str:
        return self.names[n]

    def what(self, n: Node) -> str:
        return f"{n.op.name.lower()} {self.name(n)}"

    # ------------------------------------------------------------ where a source lies
    def demand(self, g: Group, n: Node, k: int) -> Dims:
        """The dims of `n.src[k]` when member n of g lies over `g.dims[n]` (a reshape may split
        one of g's kernel dims first)."""
        d, s, op = g.dims[n], n.src[k], n.op
        if op in ELEMENTWISE:
            return d
        if op is Op.RAND:
            return ()
        if op is Op.BROADCAST:
            pad = n.ndim - s.ndim
            return tuple(
                d[j + pad] if s.shape[j] == n.shape[j + pad] else () for j in range(s.ndim)
            )
        if op is Op.PERMUTE:
            out: list = [()] * s.ndim
            for i, p in enumerate(n.arg):
                out[p] = d[i]
            return tuple(out)
        if op in REDUCE:
            kept, red = iter(d), iter(g.rdims[n])
            return tuple(next(red) if j in n.arg else next(kept) for j in range(s.ndim))
        if op is Op.RESHAPE:
            return self._reshape_demand(g, n)
        raise ValueError(f"fusion: {self.what(n)} does not lie over a kernel's dims")

    def _reshape_demand(self, g: Group, n: Node) -> Dims:
        while True:
            K = flat(g.dims[n])
            out, pos, split = [], 0, False
            for m in n.src[0].shape:
                if m == 1:
                    out.append(())
                    continue
                run, prod = [], 1
                while prod < m and not split:
                    k = K[pos]
                    size = g.space[k]
                    if prod * size <= m:
                        if m % (prod * size):
                            raise _Refused(f"reshape {self.name(n)} does not follow the loop nest")
                        run.append(k)
                        prod, pos = prod * size, pos + 1
                    elif size % (m // prod) == 0:
                        g.split(k, (m // prod, size // (m // prod)))
                        split = True
                    else:
                        raise _Refused(f"reshape {self.name(n)} does not follow the loop nest")
                if split:
                    break
                out.append(tuple(run))
            if not split:
                return tuple(out)

    # ------------------------------------------------------------ phase 1: placement
    def new_group(self) -> Group:
        g = Group(self._next)
        self._next += 1
        self.groups[g.id] = g
        return g

    def root(self, p: Node, copy: bool = False, fill: bool = False) -> Group:
        """A new kernel that computes p and writes it to memory."""
        g = self.new_group()
        g.members.append(p)
        g.dims[p] = g.fresh(p.shape)
        if copy:
            g.copies.add(p)
        elif fill:
            g.fills.add(p)
        elif p.op in REDUCE:
            self._assign_rdims(g, p)
        elif p.op in CORES:
            g.core = p
        self.owner[p] = g.id
        self.gof.setdefault(p, []).append(g.id)
        return g

    def _assign_rdims(self, g: Group, p: Node) -> None:
        used = set(flat(g.dims[p]))
        rd = []
        for a in p.arg:
            size = p.src[0].shape[a]
            if size == 1:
                rd.append(())
                continue
            k = next((k for k, d in enumerate(g.space) if d == size and k not in used), None)
            if k is None:
                k = len(g.space)
                g.space.append(size)
            used.add(k)
            rd.append((k,))
        g.rdims[p] = tuple(rd)
        g.reduces += 1

    def try_join(self, g: Group, p: Node, consumers: list[Node]) -> str | None:
        """Place p in g, read by `consumers` (members of g); the reason if it cannot be."""
        try:
            while True:
                version = g.version
                seen = {
                    self.demand(g, c, k) for c in consumers for k, s in enumerate(c.src) if s is p
                }
                if g.version == version:
                    break
        except _Refused as e:
            return str(e)
        if len(seen) > 1:
            maps = " and ".join(sorted(_index_text(d) for d in seen))
            return f"read with different index maps {maps}"
        d = seen.pop()
        if len(set(flat(d))) != len(flat(d)):
            return "reads one loop index twice (a diagonal)"
        if p.op in CORES:
            if g.core is not None:
                return f"the kernel already has core {self.what(g.core)}"
            if g.reduces:
                return f"a {p.op.name.lower()} core cannot feed a reduction in its own kernel"
            if flat(d) != tuple(range(len(g.space))):
                return f"{self.what(p)} is read permuted or broadcast, not as its output tile"
        if p.op in REDUCE and g.core is not None:
            return f"a reduction cannot join the epilogue of {self.what(g.core)}"
        g.dims[p] = d
        if p.op is Op.RESHAPE:  # its source must follow the loop nest too
            try:
                self.demand(g, p, 0)
            except _Refused as e:
                del g.dims[p]
                return str(e)
        g.members.append(p)
        if p.op in REDUCE:
            self._assign_rdims(g, p)
        if p.op in CORES:
            g.core = p
        self.gof.setdefault(p, []).append(g.id)
        return None

    def place(self) -> None:
        """Phase 1: every node placed, consumers first."""
        for p in reversed(self.order):
            if p.op is Op.INPUT:
                self.kind[p] = "input"
                continue
            if p.op is Op.CONST and p not in self.uniform:
                self.kind[p] = "const"
                continue
            blockers, targets = [], {}
            for c in self.users[p]:
                if c.op in OPAQUE:
                    blockers.append(f"operand of {self.what(c)} ({OPAQUE_WHAT[c.op]} reads memory)")
                elif c.op in CORES:
                    blockers.append(f"operand of {self.what(c)} (GEMM and conv read memory)")
                elif self.kind[c] == "virtual":
                    blockers.append(f"read through {self.what(c)} (a view needs a buffer)")
                elif self.kind[c] == "member":
                    for gid in self.gof[c]:
                        targets.setdefault(gid, []).append(c)
            if p in self.uniform:
                if blockers or p in self.outputs:
                    self.kind[p] = "member"
                    self.root(p, fill=True)
                else:
                    self.kind[p] = "inline"
                continue
            if p.op in MOVEMENT:
                self._place_movement(p, blockers, targets)
            else:
                self._place_compute(p, blockers, targets)

    def _place_movement(self, p: Node, blockers: list, targets: dict) -> None:
        movable = p.op in IN_KERNEL_MOVES and math.prod(p.shape) > 0
        if movable and not blockers and (targets or p in self.outputs):
            if p in self.outputs and len(targets) != 1:
                targets = {}
            if len(targets) == 1:
                ((gid, cs),) = targets.items()
                ok = self.try_join(self.groups[gid], p, cs) is None
            else:
                ok = all(self._can_join(self.groups[gid], p, cs) for gid, cs in targets.items())
                for gid, cs in targets.items() if ok else ():
                    self.try_join(self.groups[gid], p, cs)
            if not targets:
                trial = Group(-1)
                trial.dims[p] = trial.fresh(p.shape)
                try:
                    self.demand(trial, p, 0)
                except _Refused:
                    ok = False
            if ok:
                if not targets:
                    self.root(p)
                elif p in self.outputs:
                    self.owner[p] = next(iter(targets))
                self.kind[p] = "member"
                return
        self.kind[p] = "virtual"  # a view of its source; copied to memory if it is an output

    def _can_join(self, g: Group, p: Node, cs: list[Node]) -> bool:
        """Would p join g? (A trial on a copy of g's placement.)"""
        saved = (list(g.space), dict(g.dims), dict(g.rdims), g.version, list(g.members))
        saved += (g.core, g.reduces, list(self.gof.get(p, [])))
        ok = self.try_join(g, p, cs) is None
        g.space, g.dims, g.rdims, g.version, g.members, g.core, g.reduces = saved[:7]
        self.gof[p] = saved[7]
        return ok

    def _place_compute(self, p: Node, blockers: list, targets: dict) -> None:
        self.kind[p] = "member"
        if p.op in OPAQUE:  # a callback or a collective: a kernel of its own, its value written out
            self.root(p)
            for gid in targets:
                why = f"{OPAQUE_WHAT[p.op]} is a kernel of its own (never fused)"
                self.refusals.append((self.name(p), gid, why, p))
            return
        if blockers or not targets:
            self.root(p)
            for reason in blockers[:1]:
                for gid in targets:
                    self.refusals.append((self.name(p), gid, reason, p))
            return
        if len(targets) == 1:
            ((gid, cs),) = targets.items()
            reason = self.try_join(self.groups[gid], p, cs)
            if reason is None:
                if p in self.outputs:
                    self.owner[p] = gid
                return
            self.root(p)
            self.refusals.append((self.name(p), gid, reason, p))
            return
        # a one-element elementwise value (a cast learning rate) is cheaper to compute again than
        # to write and read back, and duplicating it cannot raise peak memory
        small = math.prod(p.shape) == 1 and p.op in ELEMENTWISE
        # so is a per-row value spread over the rows (-mean, broadcast), and a value computed
        # from one full-size operand and such values (x - mean: `_recentred`)
        spread = p.op in ELEMENTWISE and _broadcast_from(p) is not None
        cheap = small or spread or _recentred(p)
        dup = (p in self.recompute or cheap) and p.op in DUPLICABLE and p not in self.outputs
        if dup and all(self._can_join(self.groups[gid], p, cs) for gid, cs in targets.items()):
            for gid, cs in targets.items():
                self.try_join(self.groups[gid], p, cs)
            return
        self.root(p)
        why = "not chosen for recompute" if p.op in DUPLICABLE else "never duplicated"
        if p.op in REDUCE and p.op in DUPLICABLE and p not in self.recompute:
            why = "a reduction, not chosen for recompute"
        for gid in targets:
            others = len(targets) - 1
            self.refusals.append(
                (
                    self.name(p),
                    gid,
                    f"also read by {others} other kernel{'s' * (others > 1)}; "
                    f"would recompute {self.what(p)} ({why})",
                    p,
                )
            )

    # ------------------------------------------------------------ phase 2: views
    def base_of(self, s: Node) -> tuple[Node, View]:
        """The buffer a value is read from, and the view of it that gives the value."""
        if s in self.owner or self.kind[s] in ("input", "const"):
            return s, View.contiguous(s.shape)
        if self.kind[s] == "virtual":
            return self.views[s]
        raise ValueError(f"fusion: {self.what(s)} is read but never written to memory")

    def resolve_views(self) -> None:
        """Phase 2: fold each movement chain into one view; a reshape with no view copies its
        source to memory first (a copy kernel), and so does a view that is a graph output."""
        for n in self.order:
            if self.kind.get(n) != "virtual":
                continue
            s = n.src[0]
            base, view = self.base_of(s)
            v = view.apply(n.op, n.arg)
            if v is None:
                self.root(s, copy=True)
                self.notes.append(
                    (self.name(s), self.owner[s], f"copied: {self.what(n)} has no view of it")
                )
                base, v = s, View.contiguous(s.shape).apply(n.op, n.arg)
            self.views[n] = (base, v)
            if n in self.outputs:
                self.root(n, copy=True)
                self.notes.append(
                    (self.name(n), self.owner[n], "copied: a view that is a graph output")
                )
        self._copy_shared_transposes()
        for g in list(self.groups.values()):
            for n in list(g.members):
                if n in g.copies or n in g.fills or n.op in CORES:
                    continue
                for k, s in enumerate(n.src):
                    if self.kind[s] != "virtual" or s in self.owner or s in g.dims:
                        continue
                    if self.views[s][1].embed(self.demand(g, n, k), tuple(g.space)) is None:
                        self.root(s, copy=True)
                        why = "copied: a masked dim would be split over loop indices"
                        self.notes.append((self.name(s), self.owner[s], why))

    def _copy_shared_transposes(self) -> None:
        """A transposed matrix read as the B operand of several GEMMs (a recurrent weight in
        an RNN's backward: one GEMM per time step), or a batch of them (attention's keys in
        q @ k^T: many small products), is copied once to row-major order, so each GEMM reads
        B's rows where they lie instead of packing each transposed matrix into panels padded
        to the micro-kernel's width (for 128 products of 20x32 @ 32x20: 126 us against 30 on
        rows in place, and the copy takes about 15). Views of the same buffer with the same
        strides count together (autodiff may write one transpose per step)."""
        uses: dict[tuple[Node, View], list[tuple[Node, int]]] = {}
        for n in self.order:
            if self.kind.get(n) != "virtual" or n in self.owner:
                continue
            base, v = self.views[n]
            if v.mask is not None or n.ndim < 2 or n.shape[-1] == 1 or v.strides[-1] == 1:
                continue
            gemms = sum(
                1
                for c in self.users[n]
                if c.op is Op.MATMUL and c.src[1] is n and c.src[0] is not n
            )
            if gemms:
                uses.setdefault((base, v), []).append((n, gemms))
        for ns in uses.values():
            total = sum(c for _, c in ns)
            first = ns[0][0]
            batch = math.prod(first.shape[:-2])
            if total < 2 and batch < 2:
                continue
            self.root(first, copy=True)
            what = f"{total} GEMMs" if batch < 2 else f"{batch} batched products"
            why = f"copied: transposed B operand of {what}, made row-major once"
            self.notes.append((self.name(first), self.owner[first], why))
            for n, _ in ns[1:]:
                self.views[n] = (first, View.contiguous(first.shape))

    # ------------------------------------------------------------ reads
    def reads(self, g: Group):
        """Every read of memory in g: (source node, member, slot, how) with how one of
        "load", "core" (an operand of the core) or "copy"."""
        for n in g.members:
            if n in g.fills:
                continue
            if n in g.copies:
                yield n, n, 0, "copy"
                continue
            for k, s in enumerate(n.src):
                if s in g.dims or self.kind[s] == "inline":
                    continue
                yield s, n, k, "core" if n.op in CORES else "load"

    def embeddable(self, g: Group) -> bool:
        """Can every view g reads be laid over g's loop nest? (Splitting a dim that a masked
        view runs over makes it impossible.)"""
        space = tuple(g.space)
        for n in g.members:
            if n in g.copies:
                if self.views[n][1].embed(g.dims[n], space) is None:
                    return False
                continue
            if n in g.fills or n.op in CORES:
                continue
            for k, s in enumerate(n.src):
                if self.kind[s] != "virtual" or s in self.owner or s in g.dims:
                    continue
                if self.views[s][1].embed(self.demand(g, n, k), space) is None:
                    return False
        return True

    def find(self, gid: int) -> int:
        """The group a (possibly merged) group is now part of."""
        while gid in self.alias:
            gid = self.alias[gid]
        return gid

    def base_group(self, s: Node, how: str, n: Node) -> int | None:
        base = self.views[n][0] if how == "copy" else self.base_of(s)[0]
        return self.owner.get(base)


class _Refused(Exception):
    pass


def _index_text(d: Dims) -> str:
    return "[" + ",".join("0" if not kd else ",".join(f"i{k}" for k in kd) for kd in d) + "]"


def _uniform_values(order: list[Node]) -> dict[Node, object]:
    """Nodes whose every element is one known scalar: scalar constants, constant arrays of one
    value, and their movements (but not pads, which add zeros)."""
    out: dict[Node, object] = {}
    for n in order:
        if n.op is Op.CONST:
            arr = getattr(n.arg, "array", None)
            if arr is None:
                out[n] = n.arg
            elif arr.size and uniform(arr.reshape(-1)):
                out[n] = arr.flat[0].item()
        elif n.op in MOVEMENT and n.op is not Op.PAD and n.src and n.src[0] in out:
            out[n] = out[n.src[0]]
    return out
