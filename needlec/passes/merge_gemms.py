"""Merging GEMMs: independent matrix products that share an operand become one larger product.

An unrolled recurrent layer multiplies every time step's input by the same weight (`x_t @ W_ih`),
and its backward multiplies every step's gate gradient by the same transposed weight
(`g_t @ W_ih^T`) and sums the weight gradient over the steps (`dW = sum_t x_t^T @ g_t`). Each of
those is a small GEMM; one call on stacked operands does the same arithmetic with one call's
overhead and a shape BLAS runs well (and in parallel). Four rewrites, on float products:

- rows (2-D): `X_t @ W` for several `X_t` of one shape -> `[X_1; ...; X_k] @ W`, each product a row
  slice of the result;
- cols (2-D): `X @ W_j` for several `W_j` of one shape -> `X @ [W_1 | ... | W_k]`, each product a
  column slice (q/k/v projections of one input);
- sum (2-D): an ADD tree over several `A_t @ B_t` (the A_t of one shape, the B_t of one shape) ->
  `[A_1 | ... | A_k] @ [B_1; ...; B_k]`, added to the tree's other terms;
- batch (3-D): a batched product summed over its batch (`sum_b A_b @ B_b`, the weight gradient of a
  Linear applied to a 3-D input) -> the same one product, on the batch already stacked.

Only products that are independent (neither reads the other's result, through any path) are
merged, so the merged graph stays acyclic; only when every merged operand has the same float
dtype; and only when it pays, by the cost model below: the calls saved against the stacking.
Fusion expands a STACK of k pieces into one kernel in which every element selects among k
masked reads, so stacking costs grow with k: twenty [16,256] gate gradients are merged as five
GEMMs over stacks of four, not one over a stack of twenty. Pieces that are already consecutive
slices of one array (the time steps of a sequence split from one tensor) are not copied (their
concatenation is a view of that array), nor are pieces another merge already stacked in the
same order (the input-gradient and weight-gradient merges of one layer share the stacks of its
gate gradients).

Numerics: a rows or cols merge computes each output element as the same dot product over the
same K, so it is within the matmul budget of `needlec.ir.ops.TOLERANCE`. A sum merge adds the
terms of the sum inside one GEMM instead of GEMM by GEMM: the summation order changes, within
the "order" budget with n the merged inner dim (k times K). A batch merge likewise sums the
batch inside the GEMM instead of in a reduction after it.
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from ..ir import Graph, Node, Op
from ..ir.ops import FLOATS, ConstArray, fmt_type

# The cost model, measured on the LSTM language model's step (2 cores, OpenBLAS through the
# thread pool): a GEMM call costs about CALL_NS before its flops (a [16,64]@[64,256] product
# takes 12 us, twenty of them stacked into one [320,64]@[64,256] take 49 us); stacking k pieces
# is one kernel in which every element selects among k masked reads (fusion expands STACK so),
# about SELECT_NS per element and piece. A merge of k products into n GEMMs saves (k - n) calls
# and costs the stacking; the flops are the same (a larger GEMM runs them no slower).
CALL_NS = 10_000.0
SELECT_NS = 0.13
MIN_GAIN_NS = 0.5 * CALL_NS  # below this the model's error is larger than the gain
MAX_MERGES = 10_000  # a bound on rounds (each round merges at least one group)


@dataclass(frozen=True)
class Merge:
    """One merge: `kind` ("rows", "cols", "sum" or "batch"), how many products were merged into how
    many GEMMs, the first merged product's (m, k, n) and dtype, how many elements stacking the
    operands copies (not counting stacks an earlier merge made), and the time the cost model
    says it saves."""

    kind: str
    count: int
    gemms: int
    mkn: tuple[int, int, int]
    dtype: str
    copied: int
    gain_ns: float

    def describe(self) -> str:
        m, k, n = self.mkn
        what = {
            "rows": "products sharing their right operand, stacked by rows",
            "cols": "products sharing their left operand, their right operands side by side",
            "sum": "products summed, as one product over stacked operands",
            "batch": "products of a batch summed over it, as one product",
        }[self.kind]
        into = "one" if self.gemms == 1 else f"{self.gemms} GEMMs like"
        return (
            f"{self.count} {what} -> {into} {fmt_type(self.dtype, (m, k))} @ "
            f"{fmt_type(self.dtype, (k, n))} ({self.copied:,} elements stacked, "
            f"about {self.gain_ns / 1000:.0f} us saved)"
        )


@dataclass
class _Candidate:
    kind: str
    members: list[Node]  # the products merged (rows, cols, batch) or the terms merged (sum)
    root: Node | None = None  # sum: the ADD tree's root; batch: the SUM over the batch
    terms: tuple[Node, ...] = ()  # sum: all the tree's terms, in order


# ---------------------------------------------------------------- concatenation


def _contiguous_offset(n: Node) -> int | None:
    """For a SLICE that selects one contiguous run of its source in row-major order: where the
    run starts (in elements); None for any other slice."""
    src = n.src[0].shape
    spec = n.arg
    partial = [i for i, (s, d) in enumerate(zip(spec, src, strict=True)) if s != (0, d, 1)]
    if not partial:
        return 0
    b = partial[-1]
    lengths = n.shape
    if lengths[b] > 1 and spec[b][2] != 1:
        return None
    if any(lengths[i] > 1 for i in range(b)):
        return None
    strides = [math.prod(src[i + 1 :]) for i in range(len(src))]
    return sum(s[0] * st for s, st in zip(spec, strides, strict=True))


@functools.lru_cache(maxsize=1 << 16)  # cleared after each run of the pass
def _flat_piece(n: Node) -> tuple[Node, int, int]:
    """(base, lo, hi): `n` holds elements lo..hi of `base` in row-major order, through reshapes
    and contiguous slices (`base` is `n` itself, 0, size when it is no such view)."""
    lo, size = 0, math.prod(n.shape)
    while True:
        if n.op is Op.RESHAPE:
            n = n.src[0]
            continue
        if n.op is Op.SLICE:
            off = _contiguous_offset(n)
            if off is not None:
                lo += off
                n = n.src[0]
                continue
        return n, lo, lo + size


def _consecutive(pieces: Sequence[Node]) -> list[int] | None:
    """An order of `pieces` in which they are consecutive runs of one array, or None."""
    found = [_flat_piece(p) for p in pieces]
    base = found[0][0]
    if any(f[0] is not base for f in found):
        return None
    order = sorted(range(len(pieces)), key=lambda i: found[i][1])
    if all(found[a][2] == found[b][1] for a, b in zip(order, order[1:], strict=False)):
        return order
    return None


def _concat_rows(pieces: Sequence[Node]) -> tuple[Node, int]:
    """(the 2-D pieces stacked by rows, how many elements that copies): a view, copying
    nothing, when they are consecutive runs of one array in this order; else a stack."""
    rows, cols = pieces[0].shape
    shape = (len(pieces) * rows, cols)
    if _consecutive(pieces) == list(range(len(pieces))):
        base, lo, _ = _flat_piece(pieces[0])
        hi = _flat_piece(pieces[-1])[2]
        size = math.prod(base.shape)
        if (lo, hi) == (0, size):
            view = base
        elif base.ndim >= 1 and base.shape[0] and lo % (inner := size // base.shape[0]) == 0:
            spec = [(lo // inner, -(-hi // inner), 1)] + [(0, d, 1) for d in base.shape[1:]]
            view = base.slice(spec) if hi % inner == 0 else None
        else:
            view = None
        if view is None:
            view = base.reshape((size,)).slice([(lo, hi, 1)])
        return view.reshape(shape), 0
    return Node.make(Op.STACK, *pieces, arg=0).reshape(shape), sum(
        math.prod(p.shape) for p in pieces
    )


def _is_transpose(n: Node) -> bool:
    """A 2-D transpose, or a fill (the transpose of a fill of the transposed shape)."""
    return (n.op is Op.PERMUTE and n.arg == (1, 0)) or _is_fill(n)


def _is_fill(n: Node) -> bool:
    return n.op is Op.CONST and not isinstance(n.arg, ConstArray) and n.ndim == 2


def _untranspose(n: Node) -> Node:
    """What the transpose `n` (see `_is_transpose`) transposes."""
    return Node.const(n.arg, n.shape[::-1], n.dtype) if _is_fill(n) else n.src[0]


def _concat_cols(pieces: Sequence[Node]) -> tuple[Node, int]:
    """(the 2-D pieces side by side, how many elements that copies): transposes are stacked
    as the rows of what they transpose, so the GEMM reads the result through a transpose."""
    if all(_is_transpose(p) for p in pieces):
        rows, copied = _concat_rows([_untranspose(p) for p in pieces])
        return rows.permute((1, 0)), copied
    k, n = pieces[0].shape
    stacked = Node.make(Op.STACK, *pieces, arg=1).reshape((k, len(pieces) * n))
    return stacked, sum(math.prod(p.shape) for p in pieces)


def _rows_order(pieces: Sequence[Node], topo: dict[Node, int]) -> list[int]:
    """The order to stack pieces in: the one that makes them a view if there is one, else the
    order they are computed in."""
    order = _consecutive(pieces)
    return order if order is not None else sorted(range(len(pieces)), key=lambda i: topo[pieces[i]])


def _cols_pieces(pieces: Sequence[Node]) -> list[Node]:
    """What a column concatenation of `pieces` stacks by rows (the transposed operands)."""
    if all(_is_transpose(p) for p in pieces):
        return [_untranspose(p) for p in pieces]
    return list(pieces)


# ---------------------------------------------------------------- finding groups


def _gemm(n: Node) -> bool:
    """A 2-D float product whose operands share its dtype."""
    return (
        n.op is Op.MATMUL
        and n.ndim == 2
        and n.src[0].ndim == 2
        and n.src[1].ndim == 2
        and n.dtype in FLOATS
        and n.src[0].dtype == n.src[1].dtype == n.dtype
        and all(d > 0 for d in (*n.src[0].shape, n.shape[1]))
    )


def _ancestors(nodes: Sequence[Node], tracked: set[Node]) -> tuple[dict, dict, dict]:
    """(topological index of every node, a bit for each tracked node, and for every node the
    bits of the tracked nodes it reads, transitively). Only products that could be merged are
    tracked, so the bitsets stay as small as the number of products, not of nodes."""
    index = {n: i for i, n in enumerate(nodes)}
    bit = {n: 1 << j for j, n in enumerate(n for n in nodes if n in tracked)}
    anc: dict[Node, int] = {}
    for n in nodes:
        a = 0
        for s in n.src:
            a |= anc[s] | bit.get(s, 0)
        anc[n] = a
    return index, bit, anc


def _independent(members: Sequence[Node], index: dict, bit: dict, anc: dict) -> list[Node]:
    """A greedy set of members, taken in topological order, none of which reads another's
    result."""
    chosen, mask = [], 0
    for m in sorted(members, key=index.__getitem__):
        if anc[m] & mask == 0:
            chosen.append(m)
            mask |= bit[m]
    return chosen


def _candidates(graph: Graph) -> list[_Candidate]:
    """Every group of products that could become one (not yet checked for independence)."""
    out: list[_Candidate] = []
    by_right: dict[tuple, list[Node]] = defaultdict(list)
    by_left: dict[tuple, list[Node]] = defaultdict(list)
    for n in graph.nodes:
        if _gemm(n):
            a, b = n.src
            by_right[(b, a.shape)].append(n)
            by_left[(a, b.shape)].append(n)
    out += [_Candidate("rows", ms) for ms in by_right.values() if len(ms) > 1]
    out += [_Candidate("cols", ms) for ms in by_left.values() if len(ms) > 1]
    users = graph.users()
    outputs = set(graph.outputs)
    for root, terms in _trees(graph, users, outputs):
        groups: dict[tuple, list[Node]] = defaultdict(list)
        for t in terms:
            if _gemm(t) and t not in outputs and len(users[t]) == 1:
                groups[(t.src[0].shape, t.src[1].shape, t.dtype)].append(t)
        for ms in groups.values():
            if len(ms) > 1:
                out.append(_Candidate("sum", ms, root, tuple(terms)))
    for n in graph.nodes:
        m = n.src[0] if n.op is Op.SUM and n.arg == (0,) else None
        if m is not None and _batched_sum(m) and m not in outputs and users[m] == [n]:
            out.append(_Candidate("batch", [m], n))
    return out


def _batched_sum(m: Node) -> bool:
    """A 3-D float product with its batch in both operands (summed over the batch, it is
    one 2-D product)."""
    return (
        m.op is Op.MATMUL
        and m.ndim == 3
        and m.src[0].shape[0] == m.src[1].shape[0] == m.shape[0] > 1
        and m.dtype in FLOATS
        and m.src[0].dtype == m.src[1].dtype == m.dtype
        and all(d > 0 for d in m.src[0].shape)
    )


def _build_batch(c: _Candidate) -> tuple[dict[Node, Node], Merge] | None:
    """sum_b A_b @ B_b over the batch of a batched product -> [A_1 | ... | A_b] @ [B_1; ...;
    B_b], one GEMM with no reduction after it (a weight's gradient through a Linear on 3-D
    input). A transposed A (X^T per batch, as autodiff makes it) stacks as the rows of X,
    a view; any other A is copied once."""
    m = c.members[0]
    a, b = m.src
    nb, rows, inner = a.shape
    cols = b.shape[2]
    if a.op is Op.PERMUTE and a.arg == (0, 2, 1):
        left, copied = a.src[0].reshape((nb * inner, rows)).permute((1, 0)), 0
    else:
        left, copied = a.permute((1, 0, 2)).reshape((rows, nb * inner)), math.prod(a.shape)
    right = b.reshape((nb * inner, cols))
    if b.op is Op.PERMUTE:
        copied += math.prod(b.shape)
    gain = (nb - 1) * CALL_NS - copied * SELECT_NS
    if gain < MIN_GAIN_NS:
        return None
    merge = Merge("batch", nb, 1, (rows, nb * inner, cols), m.dtype, copied, gain)
    return {c.root: left @ right}, merge


def _trees(
    graph: Graph, users: dict[Node, list[Node]], outputs: set[Node]
) -> list[tuple[Node, list[Node]]]:
    """(root, terms left to right) for each maximal tree of ADDs whose inner ADDs are read
    only by their parent in the tree (so no partial sum is needed anywhere else)."""

    def inner(s: Node, parent: Node) -> bool:
        return (
            s.op is Op.ADD
            and s not in outputs
            and len(users[s]) == 1
            and users[s][0] is parent
            and (s.shape, s.dtype) == (parent.shape, parent.dtype)
        )

    trees = []
    for n in graph.nodes:
        if n.op is not Op.ADD or (n not in outputs and any(inner(n, u) for u in users[n])):
            continue
        terms, todo = [], [n]
        while todo:
            a = todo.pop()
            for s in reversed(a.src):
                if inner(s, a):
                    todo.append(s)
                else:
                    terms.append(s)
        trees.append((n, terms))
    return trees


# ---------------------------------------------------------------- building a merge


def _chunks(k: int, n: int) -> list[int]:
    """Sizes of `n` near-equal consecutive chunks of `k` members."""
    return [k // n + (1 if i < k % n else 0) for i in range(n)]


def _merge_chunk(kind: str, ms: Sequence[Node]) -> tuple[Node, dict[Node, Node], int]:
    """(the merged product, the replacement of each member (rows, cols), elements copied)."""
    if kind == "rows":
        left, copied = _concat_rows([m.src[0] for m in ms])
        merged = left @ ms[0].src[1]
        r, cols = ms[0].shape[0], (0, merged.shape[1], 1)
        return (
            merged,
            {m: merged.slice([(i * r, (i + 1) * r, 1), cols]) for i, m in enumerate(ms)},
            copied,
        )
    if kind == "cols":
        right, copied = _concat_cols([m.src[1] for m in ms])
        merged = ms[0].src[0] @ right
        w, rows = ms[0].shape[1], (0, merged.shape[0], 1)
        return (
            merged,
            {m: merged.slice([rows, (i * w, (i + 1) * w, 1)]) for i, m in enumerate(ms)},
            copied,
        )
    left, copied_l = _concat_cols([m.src[0] for m in ms])
    right, copied_r = _concat_rows([m.src[1] for m in ms])
    return left @ right, {}, copied_l + copied_r


def _rows_copies(pieces: Sequence[Node], existing: set[tuple]) -> int:
    """The elements `_concat_rows(pieces)` copies, without building it: none for a view, and
    none for a stack the graph already computes (another merge stacked the same pieces;
    `existing` holds (axis, sources) of every stack in the graph)."""
    if _consecutive(pieces) == list(range(len(pieces))):
        return 0
    if (0, tuple(pieces)) in existing:
        return 0
    return sum(math.prod(p.shape) for p in pieces)


def _cols_copies(pieces: Sequence[Node], existing: set[tuple]) -> int:
    """The elements `_concat_cols(pieces)` copies, without building it."""
    if all(_is_transpose(p) for p in pieces):
        return _rows_copies([_untranspose(p) for p in pieces], existing)
    if (1, tuple(pieces)) in existing:
        return 0
    return sum(math.prod(p.shape) for p in pieces)


def _chunk_copies(kind: str, ms: Sequence[Node], existing: set[tuple]) -> int:
    """The elements `_merge_chunk(kind, ms)` copies, without building it."""
    if kind == "rows":
        return _rows_copies([m.src[0] for m in ms], existing)
    if kind == "cols":
        return _cols_copies([m.src[1] for m in ms], existing)
    return _cols_copies([m.src[0] for m in ms], existing) + _rows_copies(
        [m.src[1] for m in ms], existing
    )


def _orders(c: _Candidate, topo: dict[Node, int]) -> list[list[Node]]:
    """Orders of the members to try stacking their operands in: one that makes a stacked
    operand a view when there is one, and the order the stacked pieces are computed in (so
    that merges stacking the same pieces share one stack)."""
    ms = c.members
    if c.kind == "rows":
        orders = [_rows_order([m.src[0] for m in ms], topo)]
    elif c.kind == "cols":
        orders = [_rows_order(_cols_pieces([m.src[1] for m in ms]), topo)]
    else:
        lefts = _cols_pieces([m.src[0] for m in ms])
        rights = [m.src[1] for m in ms]
        orders = [_rows_order(lefts, topo), _rows_order(rights, topo)]
    unique = []
    for order in orders:
        if order not in unique:
            unique.append(order)
    return [[ms[i] for i in order] for order in unique]


def _build(
    c: _Candidate, topo: dict[Node, int], existing: set[tuple]
) -> tuple[dict[Node, Node], Merge] | None:
    """The best way to merge the candidate's members (into one product, or into a few when
    stacking them all at once costs more than it saves): the replacement of each replaced node
    and the merge's description, or None when no way pays (the cost model: `CALL_NS`)."""
    best = None
    for ms in _orders(c, topo):
        k = len(ms)
        for n in range(1, k // 2 + 1):
            starts = [0]
            for size in _chunks(k, n):
                starts.append(starts[-1] + size)
            bounds = list(zip(starts, starts[1:], strict=False))
            copies = [_chunk_copies(c.kind, ms[a:b], existing) for a, b in bounds]
            stack_ns = sum(
                e * (b - a) * SELECT_NS for e, (a, b) in zip(copies, bounds, strict=True)
            )
            gain = (k - n) * CALL_NS - stack_ns
            if gain >= MIN_GAIN_NS and (best is None or gain > best[0]):
                best = (gain, starts, ms, sum(copies))
    if best is None:
        return None
    gain, starts, ms, copied = best
    k = len(ms)
    parts = [
        _merge_chunk(c.kind, ms[a:b]) + (b - a,) for a, b in zip(starts, starts[1:], strict=False)
    ]
    mapping: dict[Node, Node] = {}
    for _, replaced, _, _ in parts:
        mapping.update(replaced)
    if c.kind == "sum":
        total = parts[0][0]
        for merged, _, _, _ in parts[1:]:
            total = total + merged
        merged_terms = set(ms)
        for t in (t for t in c.terms if t not in merged_terms):
            total = total + t
        mapping = {c.root: total}
    first = parts[0][0]
    m_, k_ = first.src[0].shape
    merge = Merge(
        c.kind,
        k,
        len(parts),
        (m_, k_, first.shape[1]),
        first.dtype,
        copied,
        gain,
    )
    return mapping, merge


def _substitute(graph: Graph, mapping: dict[Node, Node]) -> Graph:
    """`graph` with each key of `mapping` replaced by its value, and everything that reads a
    replaced node rebuilt; a value is built over nodes of the old graph, which are themselves
    replaced where `mapping` says so (the merges never make a cycle: see `merge_gemms`)."""
    memo: dict[Node, Node] = {n: n for n in graph.inputs}
    for root in graph.outputs:
        stack = [root]
        while stack:
            n = stack[-1]
            if n in memo:
                stack.pop()
                continue
            new = mapping.get(n)
            if new is not None and new is not n:
                if new not in memo:
                    stack.append(new)
                    continue
                memo[n] = memo[new]
                stack.pop()
                continue
            pending = [s for s in n.src if s not in memo]
            if pending:
                stack.extend(pending)
                continue
            src = tuple(memo[s] for s in n.src)
            memo[n] = n if src == n.src else Node(n.op, n.dtype, n.shape, src, n.arg)
            stack.pop()
    return Graph(graph.inputs, [memo[o] for o in graph.outputs])


def merge_gemms(graph: Graph, report: list[Merge] | None = None) -> Graph:
    """Merge independent GEMMs that share an operand (see the module docstring); append a
    `Merge` to `report` for each merge made.

    Each round finds every group that could merge and takes them by the time the cost model
    says they save, largest first, each built knowing the stacks the ones before it made (so
    merges stacking the same pieces share one stack). A group is taken only if its operands
    read none of the products an earlier group of the round merges: a merged product then
    reads only values no merge of the round changes, so the merged graph has no cycle. The
    graph is rebuilt once a round, and the rounds go on until no group pays."""
    try:
        return _merge_rounds(graph, report)
    finally:
        _flat_piece.cache_clear()  # it holds nodes: let the old graphs go


def _merge_rounds(graph: Graph, report: list[Merge] | None) -> Graph:
    """The rounds of `merge_gemms`."""
    for _ in range(MAX_MERGES):
        candidates = _candidates(graph)
        tracked = {m for c in candidates for m in c.members}
        index, bit, anc = _ancestors(graph.nodes, tracked)
        existing = {(n.arg, n.src) for n in graph.nodes if n.op is Op.STACK}
        ranked = []
        for c in candidates:
            if c.kind != "batch":
                c.members = _independent(c.members, index, bit, anc)
                if len(c.members) < 2:
                    continue
            built = _build_batch(c) if c.kind == "batch" else _build(c, index, existing)
            if built is not None:
                ranked.append(((built[1].gain_ns, built[1].count), c))
        ranked.sort(key=lambda r: r[0], reverse=True)
        mapping: dict[Node, Node] = {}
        merged_mask = 0
        for _, c in ranked:
            mask = reads = 0
            for m in c.members:
                mask |= bit[m]
                reads |= anc[m]
            if mask & merged_mask or reads & merged_mask:
                continue
            built = _build_batch(c) if c.kind == "batch" else _build(c, index, existing)
            if built is None or any(k in mapping for k in built[0]):
                continue
            mapping.update(built[0])
            merged_mask |= mask
            existing |= {
                (n.arg, n.src)
                for v in built[0].values()
                for n in _new_nodes(v, index)
                if n.op is Op.STACK
            }
            if report is not None:
                report.append(built[1])
        if not mapping:
            break
        graph = _substitute(graph, mapping)
    return graph


def _new_nodes(v: Node, old: dict[Node, int]) -> list[Node]:
    """The nodes of `v`'s subgraph that are not in the old graph (what a merge built)."""
    out, todo, seen = [], [v], set()
    while todo:
        n = todo.pop()
        if n in old or n in seen:
            continue
        seen.add(n)
        out.append(n)
        todo.extend(n.src)
    return out
