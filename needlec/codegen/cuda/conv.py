"""Convolution cores as CUDA C: implicit GEMMs, and a direct kernel where one does not apply.

A convolution (NHWC input x, (KH, KW, Cin, Cout) weight w, stride s, padding p) is the GEMM

    out[M, Cout] = col[M, K] @ wmat[K, Cout],  M = (n, oh, ow), K = (kh, kw, ci)

whose operand `col` (im2col) is never stored: a block gathers a BK-wide slice of it straight into
shared memory, the padding, the stride and the operand's view (NCHW read as NHWC, a slice, a
flipped or padded weight) all in the load's index math. Every operand element is read at view
coordinates that are sums of the GEMM's index factors (`oh * s + kh - p`), so an element's address
is a part fixed for the whole K loop (its row of M or column of N, decoded once per tile) plus a
part of its K index (decoded once per step; not at all where K is one strided run of the
operand's memory, as in a compact weight). The same kernel computes both gradients:

- the weight's gradient `dw[(kh, kw, ci), Cout] = col^T @ g[(n, oh, ow), Cout]`, K every output
  position;
- the input's gradient, where an input row h meets only the taps kh = h + p (mod s): each of the
  s * s phases (h mod s, w mod s) is a dense GEMM `dx[(n, a, b), Cin] = gcol @ wmat^T` with
  h = ph + s * a, over its own taps kh = th + s * i, reading g at oh = a - i + (ph + p - th) / s.
  No multiply-add is spent on the zeros a strided convolution's gradient interleaves (a tap past
  the kernel's edge reads 0 from both operands).

A block of 16 x 16 threads computes a BM x BN tile (each thread TM x TN outputs, rows and columns
16 apart so shared-memory reads do not conflict), accumulating in the core's float dtype
(fused multiply-adds); each step's global reads are issued into registers before the step
before it computes. Operand tiles are loaded with consecutive threads on consecutive memory:
along K where the K index's innermost factor is contiguous (NHWC channels), else along the tile's
rows or columns (an NCHW input's width, a weight's output channels). Tile sizes follow the shape;
where the tiles are fewer than the GPU's SMs (a long weight-gradient sum, a deep layer's small
image), K is split over blocks, each writing output-shaped partial sums that a second launch
adds in split order (the same bits for any grid).

Integer and bool convolutions (exact, wrapping as numpy's), and those with an empty output or an
empty sum, run as direct kernels: one thread per output element, its sum in registers.

Every output element, of either kernel (after the splits are added, where K is split), is
written through `store_out`, the renderer's `store_core_output`: an elementwise epilogue the
passes fused after the core runs there, on the element in registers.

A padding zero (or a zero a phase's out-of-range gradient reads) still multiplies its weight, so
an inf or NaN weight gives NaN there as the reference's forward and weight gradient do; the
reference's input gradient never forms those products, so only for a non-finite weight can the
two differ (the direct kernel skips them, as the reference does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ...ir import Op
from ...ir.kernel import Core, Load
from ...ir.schedule import Buffer
from ...ir.view import strides_of
from .cexpr import CTYPE, const

SIDE = 16  # threads along each side of a block (SIDE * SIDE threads)
THREADS = SIDE * SIDE
BK = 16  # K elements of one shared-memory step
PAD = 4  # extra shared-memory columns (keeps rows 16-byte aligned)
FILL_BLOCKS = 2 * 132  # blocks that fill an H200: tile and split choices aim for at least this
MAX_SPLITS = 32
PARTIAL_BYTES = 1 << 26  # at most this much scratch for split-K partial sums
INDEX_LIMIT = 1 << 30  # 32-bit index math below this many elements (room for padded addresses)

Lin = dict  # index name -> coefficient; "" -> the constant term


def render_conv(r, c: Core, into: Buffer) -> None:
    """The phases of convolution core `c` (CONV, CONV_INPUT_GRAD or CONV_WEIGHT_GRAD), writing
    its result (compact, shape `c.shape`) to `into`: an implicit GEMM for float dtypes, a direct
    kernel for integer and bool ones and for an empty output or sum."""
    g = {Op.CONV: _forward, Op.CONV_INPUT_GRAD: _input_grad, Op.CONV_WEIGHT_GRAD: _weight_grad}[
        c.op
    ](c)
    if c.dtype in ("float32", "float64") and g.size("m") * g.size("n") * g.size("k") > 0:
        _implicit_gemm(r, g, c.dtype, into)
    else:
        _direct(r, c, into)


def store_out(r, into: Buffer, idx: list[str], value: str) -> None:
    """Write `value` (a C value of the core's dtype) as the core's output element at logical
    index `idx`: every output element of a convolution core is written here, through the
    renderer's `store_core_output` (which also runs an epilogue fused into the core)."""
    r.store_core_output(into, idx, value)


# ---------------------------------------------------------------- the three GEMMs


@dataclass
class _Operand:
    """A GEMM operand read through `load`: view dim d at coordinate `coords[d]` (a linear form
    of the index factors); `outer` is its non-K GEMM dim ("m" for A, "n" for B)."""

    load: Load
    coords: list
    outer: str


@dataclass
class _Gemm:
    """An implicit GEMM C[M, N] = A[M, K] @ B[K, N], each dim a row-major list of named index
    factors, in `phases` independent parts (per-part values `tile_vars`: name, C expression of
    `phase` and earlier ones, range)."""

    dims: dict  # "m", "n", "k" -> [(factor, extent)]
    a: _Operand
    b: _Operand
    out: list  # the output's logical index, one linear form per dim
    phases: int = 1
    tile_vars: list = field(default_factory=list)
    k_bound: str | None = None  # a phase's K (a C expression), where less than K
    # (linear form, lo, hi): an output element is stored where lo <= the form < hi
    store_if: list = field(default_factory=list)
    # (linear form of K factors, hi): a K index is in the sum where the form < hi (both
    # operands read 0 elsewhere, so no product of a value with a 0 is formed there)
    k_if: list = field(default_factory=list)

    def size(self, d: str) -> int:
        return math.prod(e for _, e in self.dims[d])


def _forward(c: Core) -> _Gemm:
    x, w = c.operands
    s, p = c.arg
    nb, _, _, ci = x.view.shape
    kh, kw, _, co = w.view.shape
    _, ho, wo, _ = c.shape
    k = [("kh", kh), ("kw", kw), ("ci", ci)]
    st = x.view.strides
    if ci > 1 and abs(st[3]) > min(abs(st[1]) or 1 << 62, abs(st[2]) or 1 << 62):
        k = [("ci", ci), ("kh", kh), ("kw", kw)]  # the input's width is its contiguous dim
    return _Gemm(
        {"m": [("n", nb), ("oh", ho), ("ow", wo)], "n": [("co", co)], "k": k},
        _Operand(
            x, [{"n": 1}, _window("oh", s, "kh", p), _window("ow", s, "kw", p), {"ci": 1}], "m"
        ),
        _Operand(w, [{"kh": 1}, {"kw": 1}, {"ci": 1}, {"co": 1}], "n"),
        [{"n": 1}, {"oh": 1}, {"ow": 1}, {"co": 1}],
    )


def _weight_grad(c: Core) -> _Gemm:
    x, g = c.operands
    s, p, kh, kw = c.arg
    nb, _, _, ci = x.view.shape
    _, ho, wo, co = g.view.shape
    return _Gemm(
        {
            "m": [("kh", kh), ("kw", kw), ("ci", ci)],
            "n": [("co", co)],
            "k": [("n", nb), ("oh", ho), ("ow", wo)],
        },
        _Operand(
            x, [{"n": 1}, _window("oh", s, "kh", p), _window("ow", s, "kw", p), {"ci": 1}], "m"
        ),
        _Operand(g, [{"n": 1}, {"oh": 1}, {"ow": 1}, {"co": 1}], "n"),
        [{"kh": 1}, {"kw": 1}, {"ci": 1}, {"co": 1}],
    )


def _input_grad(c: Core) -> _Gemm:
    """Per phase (ph, pw) = (h mod s, w mod s): rows h = ph + s*ah, taps kh = th + s*bh with
    th = (ph + p) mod s, read at oh = ah - bh + ch, ch = (ph + p - th) / s."""
    g, w = c.operands
    s, p, h, wd = c.arg
    nb = g.view.shape[0]
    kh, kw, ci, co = w.view.shape
    tbh, tbw = -(-kh // s), -(-kw // s)
    dims = {
        "m": [("n", nb), ("ah", -(-h // s)), ("aw", -(-wd // s))],
        "n": [("ci", ci)],
        "k": [("bh", tbh), ("bw", tbw), ("co", co)],
    }
    if s == 1:  # one phase: a stride-1 convolution of g by the weight, flipped
        gc = [{"n": 1}, {"ah": 1, "bh": -1, "": p}, {"aw": 1, "bw": -1, "": p}, {"co": 1}]
        wc = [{"bh": 1}, {"bw": 1}, {"ci": 1}, {"co": 1}]
        out = [{"n": 1}, {"ah": 1}, {"aw": 1}, {"ci": 1}]
        return _Gemm(dims, _Operand(g, gc, "m"), _Operand(w, wc, "n"), out)
    tile_vars = [
        ("ph", f"phase / {s}", 0, s - 1),
        ("pw", f"phase % {s}", 0, s - 1),
        ("th", f"(ph + {p}) % {s}", 0, s - 1),
        ("tw", f"(pw + {p}) % {s}", 0, s - 1),
        ("ch", f"(ph + {p} - th) / {s}", 0, (s - 1 + p) // s),
        ("cw", f"(pw + {p} - tw) / {s}", 0, (s - 1 + p) // s),
    ]
    gc = [{"n": 1}, {"ah": 1, "bh": -1, "ch": 1}, {"aw": 1, "bw": -1, "cw": 1}, {"co": 1}]
    wc = [{"th": 1, "bh": s}, {"tw": 1, "bw": s}, {"ci": 1}, {"co": 1}]
    out = [{"n": 1}, {"ph": 1, "ah": s}, {"pw": 1, "aw": s}, {"ci": 1}]
    return _Gemm(
        dims,
        _Operand(g, gc, "m"),
        _Operand(w, wc, "n"),
        out,
        phases=s * s,
        tile_vars=tile_vars,
        k_bound=f"(({kh} - th + {s - 1}) / {s}) * {tbw * co}",  # only this phase's taps bh
        store_if=[(out[1], 0, h), (out[2], 0, wd)],
        k_if=[(wc[0], kh), (wc[1], kw)],  # taps past the kernel's edge
    )


def _window(o: str, s: int, k: str, p: int) -> Lin:
    return {o: s, k: 1, "": -p}


# ---------------------------------------------------------------- the kernel


@dataclass
class _Plan:
    """Tile sizes and the launch shape of one implicit GEMM."""

    bm: int
    bn: int
    tiles_m: int
    tiles_n: int
    splits: int
    chunk: int  # K elements of one split (a multiple of BK)

    @property
    def tiles(self) -> int:
        return self.tiles_m * self.tiles_n


def _plan(g: _Gemm, out_bytes: int) -> _Plan:
    """Tiles from the shape; K split where the tiles are fewer than the SMs (each split's
    partial sums an output-shaped array of `out_bytes`)."""
    m, n, k = g.size("m"), g.size("n"), g.size("k")
    bn = 16 if n <= 16 else 32 if n <= 32 else 64
    tiles_n = -(-n // bn)
    bm = 128
    while bm > 32 and -(-m // bm) * tiles_n * g.phases < FILL_BLOCKS:
        bm //= 2  # smaller tiles before fewer blocks than the GPU has
    tiles_m = -(-m // bm)
    splits = 1
    blocks = tiles_m * tiles_n * g.phases
    if blocks < FILL_BLOCKS // 2:  # fewer blocks than SMs: split K, each split 4 steps or more
        splits = min(
            -(-FILL_BLOCKS // blocks), -(-k // (4 * BK)), MAX_SPLITS, PARTIAL_BYTES // out_bytes
        )
        splits = max(1, splits)
    per_split = -(-k // splits)
    chunk = -(-per_split // BK) * BK
    splits = -(-k // chunk)
    return _Plan(bm, bn, tiles_m, tiles_n, splits, chunk)


def _ranges(g: _Gemm) -> dict:
    out = {name: (0, e - 1) for d in ("m", "n", "k") for name, e in g.dims[d]}
    out.update({name: (lo, hi) for name, _, lo, hi in g.tile_vars})
    return out


def _range(lin: Lin, ranges: dict) -> tuple[int, int]:
    lo = hi = lin.get("", 0)
    for name, c in lin.items():
        if name:
            a, b = c * ranges[name][0], c * ranges[name][1]
            lo, hi = lo + min(a, b), hi + max(a, b)
    return lo, hi


def _text(lin: Lin, names: dict, it: str) -> str:
    """A linear form as C, its index names replaced by `names` (tile vars keep their names)."""
    terms = []
    for name, c in lin.items():
        if name and c:
            v = names.get(name, name)
            terms.append(v if c == 1 else f"-{v}" if c == -1 else f"{c} * {v}")
    if lin.get("", 0) or not terms:
        terms.append(f"({lin.get('', 0)})")
    return f"(({it})({' + '.join(terms)}))".replace("+ -", "- ")


def _split(lin: Lin, dim_names: set) -> tuple[Lin, Lin]:
    """`lin` as (the part over `dim_names`, the rest with the constant)."""
    inner = {n: c for n, c in lin.items() if n in dim_names}
    return inner, {n: c for n, c in lin.items() if n not in dim_names}


def _decode(r, index: str, factors: list, prefix: str, it: str) -> dict:
    """Emit the factors of row-major `index` (the outermost not reduced: a tail index runs past
    it, and is guarded where it is used); returns factor name -> C name."""
    names, rest = {}, index
    for j in range(len(factors) - 1, -1, -1):
        name, e = factors[j]
        v = r.var(f"{prefix}{name}")
        names[name] = v
        if e == 1 and j:
            r.emit(f"const {it} {v} = 0;")
        elif j == 0:
            r.emit(f"const {it} {v} = {rest};")
        else:
            r.emit(f"const {it} {v} = {rest} % {e};")
            q = r.var("q")
            r.emit(f"const {it} {q} = {rest} / {e};")
            rest = q
    return names


def _step(op: _Operand, factor: str) -> int:
    """How far in `op`'s memory one step of index factor `factor` moves."""
    return sum(
        lin.get(factor, 0) * st for lin, st in zip(op.coords, op.load.view.strides, strict=True)
    )


class _Loader:
    """Loads one operand's BK x BF tiles into shared memory `smem[BK][BF + PAD]`."""

    def __init__(self, r, g: _Gemm, op: _Operand, bf: int, name: str, it: str, dt: str):
        self.r, self.g, self.op, self.bf, self.name, self.it, self.dt = r, g, op, bf, name, it, dt
        outer_inner = g.dims[op.outer][-1][0]
        k_inner = g.dims["k"][-1][0]
        # consecutive threads on consecutive memory: along K unless the other dim is contiguous
        self.k_fast = abs(_step(op, k_inner)) <= 1 or abs(_step(op, outer_inner)) != 1
        self.count = bf * BK // THREADS  # elements each thread loads a step
        v = op.load.view
        ranges = _ranges(g)
        self.k_if = [(lin, hi) for lin, hi in g.k_if if _range(lin, ranges)[1] >= hi]
        self.checks = {}  # view dim -> (lo or None, hi or None): the bounds it may leave
        for d, ((lo, hi), lin) in enumerate(zip(v.bounds(), op.coords, strict=True)):
            a, b = _range(lin, ranges)
            if a < lo or b >= hi:
                self.checks[d] = (lo if a < lo else None, hi if b >= hi else None)
        # a tap past the kernel's edge that this operand's own check already reads as 0
        self.k_if = [
            (lin, hi)
            for lin, hi in self.k_if
            if not any(op.coords[d] == lin and self.checks[d][1] == hi for d in self.checks)
        ]
        # where no check reads K's factors and each factor's step is the next one's times its
        # extent, a K index's offset is the index times one stride: no decoding
        names_k = {n for n, _ in g.dims["k"]}
        kf = [(f, e) for f, e in g.dims["k"] if e > 1]
        steps = [_step(op, f) for f, _ in kf]
        linear = all(
            steps[j] == steps[-1] * math.prod(e for _, e in kf[j + 1 :]) for j in range(len(kf))
        )
        k_checked = self.k_if or any(names_k & set(op.coords[d]) for d in self.checks)
        self.k_stride = (steps[-1] if kf else 0) if linear and not k_checked else None

    def fixed(self, tile: str) -> None:
        """The per-tile part of the thread's elements: base offsets and checked coordinates."""
        r, op, it = self.r, self.op, self.it
        if self.k_fast:
            slots = [f"tid / {BK} + {j * (THREADS // BK)}" for j in range(self.count)]
        else:
            slots = [f"tid % {self.bf}"]
        self.slots, self.base, self.part, self.ok = slots, [], [], []
        outer = self.g.dims[self.op.outer]
        size = math.prod(e for _, e in outer)
        names_k = {n for n, _ in self.g.dims["k"]}
        v = op.load.view
        for slot in slots:
            gi = r.var(f"{self.name}i")
            r.emit(f"const {it} {gi} = {tile} * {self.bf} + {slot};")
            names = _decode(r, gi, outer, f"{self.name}_", it)
            fixed = [_split(lin, names_k)[1] for lin in op.coords]
            off = " + ".join(
                f"{_text(lin, names, it)} * {st}"
                for lin, st in zip(fixed, v.strides, strict=True)
                if st and any(lin.values())
            )
            b = r.var(f"{self.name}base")
            r.emit(f"const {it} {b} = {v.offset} + {off or '0'};")
            self.base.append(b)
            parts = {}
            for d in self.checks:
                c = r.var(f"{self.name}c{d}_")
                r.emit(f"const {it} {c} = {_text(fixed[d], names, it)};")
                parts[d] = c
            self.part.append(parts)
            self.ok.append(f"{gi} < {size}" if size % self.bf else None)

    def declare(self, kk_names: dict) -> None:
        """The thread's K slots of a step (`kk_names`: slot -> C name, shared by A and B) and
        the registers a step's elements are read into."""
        r = self.r
        if self.k_fast:
            kslots = [f"tid % {BK}"]
        else:
            kslots = [f"tid / {self.bf} + {j * (THREADS // self.bf)}" for j in range(self.count)]
        self.kks = []
        for kslot in kslots:
            if kslot not in kk_names:
                kk_names[kslot] = r.var("kk")
                r.emit(f"const int {kk_names[kslot]} = {kslot};")
            self.kks.append(kk_names[kslot])
        self.regs = {}
        for kk in self.kks:
            for j in range(len(self.slots)):
                self.regs[kk, j] = r.var(f"{self.name}r")
        r.emit(f"{CTYPE[self.dt]} {', '.join(self.regs.values())};")

    def load(self, k0: str, kend: str, k_tail: bool, decoded: dict) -> None:
        """Read the step at `k0` into the registers: each element 0 outside the GEMM or the
        view's valid box. `decoded`: K indices already decoded in this scope (shared by A, B)."""
        r, op, it = self.r, self.op, self.it
        names_k = {n for n, _ in self.g.dims["k"]}
        v = op.load.view
        kpart = [_split(lin, names_k)[0] for lin in op.coords]
        for kk in self.kks:
            if kk not in decoded:
                gk = r.var("k")
                r.emit(f"const {it} {gk} = {k0} + {kk};")
                decoded[kk] = [gk, None]
            gk, names = decoded[kk]
            if self.k_stride is not None:  # K is one strided run of this operand's memory
                off, k_ok = f"{gk} * {self.k_stride}", []
            else:
                if names is None:
                    names = decoded[kk][1] = _decode(r, gk, self.g.dims["k"], "k_", it)
                k_ok = [f"{_text(lin, names, it)} < {hi}" for lin, hi in self.k_if]
                off = " + ".join(
                    f"{_text(lin, names, it)} * {st}"
                    for lin, st in zip(kpart, v.strides, strict=True)
                    if st and lin
                )
            for j in range(len(self.slots)):
                valid = [x for x in (self.ok[j], f"{gk} < {kend}" if k_tail else None) if x]
                valid += k_ok
                for d, (lo, hi) in self.checks.items():
                    c = (
                        f"({self.part[j][d]} + {_text(kpart[d], names, it)})"
                        if kpart[d]
                        else self.part[j][d]
                    )
                    valid += [f"{c} >= {lo}"] if lo is not None else []
                    valid += [f"{c} < {hi}"] if hi is not None else []
                read = r.guarded_read(
                    op.load.buffer, f"{self.base[j]} + {off or '0'}", valid, self.dt
                )
                r.emit(f"{self.regs[kk, j]} = {read};")

    def commit(self) -> None:
        """The registers into this operand's shared-memory tile."""
        for (kk, j), reg in self.regs.items():
            self.r.emit(f"s{self.name}[{kk}][{self.slots[j]}] = {reg};")


def _implicit_gemm(r, g: _Gemm, dt: str, into: Buffer) -> None:
    t = CTYPE[dt]
    itemsize = 4 if dt == "float32" else 8
    m, n, k = g.size("m"), g.size("n"), g.size("k")
    plan = _plan(g, math.prod(into.shape) * itemsize)
    bm, bn = plan.bm, plan.bn
    tm, tn = bm // SIDE, bn // SIDE
    big = max(
        m, n, k + BK, math.prod(into.shape), *(math.prod(o.load.buffer.shape) for o in (g.a, g.b))
    )
    it = "int" if big < INDEX_LIMIT else "long long"
    tiles = plan.tiles * g.phases * plan.splits
    total = math.prod(into.shape)
    partial = None
    if plan.splits > 1:  # split s's partial sums: an output-shaped array of its own
        partial = f"(({t}*)(scratch + {r.scratch_buffer(plan.splits * total * itemsize)}))"
    r.begin(max(1, min(65535, tiles)), THREADS, fixed_block=True)
    r.emit(f"__shared__ {t} sa[{BK}][{bm + PAD}];")
    r.emit(f"__shared__ {t} sb[{BK}][{bn + PAD}];")
    r.emit(f"const int tid = threadIdx.x, tx = tid % {SIDE}, ty = tid / {SIDE};")
    r.open(f"for (long long tile = blockIdx.x; tile < {tiles}LL; tile += gridDim.x)")
    r.emit(f"const {it} tn = tile % {plan.tiles_n};")
    r.emit(f"const {it} tm = (tile / {plan.tiles_n}) % {plan.tiles_m};")
    r.emit(f"const {it} z = tile / {plan.tiles};")  # the phase and the split of K
    if g.phases > 1:
        r.emit(f"const {it} phase = z / {plan.splits};")
    for name, expr, _, _ in g.tile_vars:
        r.emit(f"const {it} {name} = {expr};")
    kend = g.k_bound or str(k)
    if plan.splits > 1:
        r.emit(f"const {it} split = z % {plan.splits}, kbeg = split * {plan.chunk};")
        r.emit(f"const {it} kcap = {kend};")
        r.emit(f"const {it} kend = kbeg + {plan.chunk} < kcap ? kbeg + {plan.chunk} : kcap;")
    else:
        r.emit(f"const {it} kbeg = 0, kend = {kend};")
    k_tail = k % BK != 0 or g.k_bound is not None
    loaders = [_Loader(r, g, g.a, bm, "a", it, dt), _Loader(r, g, g.b, bn, "b", it, dt)]
    loaders[0].fixed("tm")
    loaders[1].fixed("tn")
    zero = const(dt, 0)
    r.emit(f"{t} acc[{tm}][{tn}];")
    r.emit("#pragma unroll")
    r.emit(f"for (int i = 0; i < {tm}; ++i)")
    r.emit("#pragma unroll")
    r.emit(f"  for (int j = 0; j < {tn}; ++j) acc[i][j] = {zero};")
    kk_names: dict = {}
    for ld in loaders:
        ld.declare(kk_names)
    decoded: dict = {}
    for ld in loaders:
        ld.load("kbeg", "kend", k_tail, decoded)
    # each step's global reads are issued before the step before it computes (in registers)
    r.open(f"for ({it} k0 = kbeg; k0 < kend; k0 += {BK})")
    for ld in loaders:
        ld.commit()
    r.emit("__syncthreads();")
    r.open(f"if (k0 + {BK} < kend)")
    decoded = {}
    for ld in loaders:
        ld.load(f"k0 + {BK}", "kend", k_tail, decoded)
    r.close()
    fma = "fmaf" if dt == "float32" else "fma"
    r.emit("#pragma unroll")
    r.open(f"for (int kk = 0; kk < {BK}; ++kk)")
    r.emit(f"{t} av[{tm}], bv[{tn}];")
    r.emit("#pragma unroll")
    r.emit(f"for (int i = 0; i < {tm}; ++i) av[i] = sa[kk][ty + {SIDE} * i];")
    r.emit("#pragma unroll")
    r.emit(f"for (int j = 0; j < {tn}; ++j) bv[j] = sb[kk][tx + {SIDE} * j];")
    r.emit("#pragma unroll")
    r.emit(f"for (int i = 0; i < {tm}; ++i)")
    r.emit("#pragma unroll")
    r.emit(f"  for (int j = 0; j < {tn}; ++j) acc[i][j] = {fma}(av[i], bv[j], acc[i][j]);")
    r.close()
    r.emit("__syncthreads();")
    r.close()
    r.emit("#pragma unroll")
    r.open(f"for (int i = 0; i < {tm}; ++i)")
    r.emit(f"const {it} gm = tm * {bm} + ty + {SIDE} * i;")
    r.emit("#pragma unroll")
    r.open(f"for (int j = 0; j < {tn}; ++j)")
    r.emit(f"const {it} gn = tn * {bn} + tx + {SIDE} * j;")
    _store(r, g, into, "gm", "gn", "acc[i][j]", dt, it, partial)
    r.close()
    r.close()
    r.close()
    r.end()
    if partial is not None:
        _reduce_splits(r, into, partial, plan.splits, dt)


def _store(
    r, g: _Gemm, into: Buffer, gm: str, gn: str, value: str, dt: str, it: str, partial=None
) -> None:
    """Store C[gm, gn] where it is an output element: to the output, or to this split's
    partial sums (`partial`, output-shaped arrays one after another)."""
    m, n = g.size("m"), g.size("n")
    r.open(f"if ({gm} < {m} && {gn} < {n})")
    names = {**_decode(r, gm, g.dims["m"], "o_", it), **_decode(r, gn, g.dims["n"], "o_", it)}
    idx = [_text(lin, names, it) for lin in g.out]
    cond = [f"{_text(lin, names, it)} < {hi}" for lin, lo, hi in g.store_if]
    if cond:
        r.open(f"if ({' && '.join(cond)})")
    if partial is None:
        store_out(r, into, idx, value)
    else:
        flat = " + ".join(
            f"({i}) * {st}LL" for i, st in zip(idx, strides_of(into.shape), strict=True) if st
        )
        total = math.prod(into.shape)
        r.emit(f"{partial}[split * {total}LL + {flat or '0LL'}] = {value};")
    if cond:
        r.close()
    r.close()


def _reduce_splits(r, into: Buffer, partial: str, splits: int, dt: str) -> None:
    """The splits' partial sums added in split order (the same bits for any grid), stored."""
    total = math.prod(into.shape)
    t = CTYPE[dt]
    r.begin(max(1, min(132 * 32, -(-total // 256))), 256)
    r.open(
        f"for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < {total}LL; "
        "e += (long long)gridDim.x * blockDim.x)"
    )
    r.emit(f"{t} sum = {partial}[e];")
    r.emit(f"for (int z = 1; z < {splits}; ++z) sum += {partial}[z * {total}LL + e];")
    idx, rest = [], "e"
    for d in range(len(into.shape) - 1, -1, -1):
        idx.insert(0, f"{rest} % {into.shape[d]}LL" if d else rest)
        rest = f"({rest} / {into.shape[d]}LL)"
    store_out(r, into, idx, "sum")
    r.close()
    r.end()


# ---------------------------------------------------------------- the direct kernel


def _direct(r, c: Core, into: Buffer) -> None:
    """One thread per output element of a convolution or of one of its gradients."""
    from .core import _mac, _operand  # core.py dispatches here: imported when used

    dt = c.dtype
    t = CTYPE[dt]
    total = math.prod(c.shape)
    r.begin(max(1, min(132 * 32, -(-total // 256))), 256)
    r.open(
        f"for (long long o = (long long)blockIdx.x * blockDim.x + threadIdx.x; o < {total}LL; "
        "o += (long long)gridDim.x * blockDim.x)"
    )
    names = ["o0", "o1", "o2", "o3"]
    rest = "o"
    for j in range(3, -1, -1):
        r.emit(f"const long long {names[j]} = {rest} % {c.shape[j]}LL;")
        if j:
            r.emit(f"const long long r{j} = {rest} / {c.shape[j]}LL;")
            rest = f"r{j}"
    r.emit(f"{t} acc = {const(dt, 0)};")
    x, y = c.operands
    if c.op is Op.CONV:
        stride, pad = c.arg
        kh, kw, cin, _ = y.view.shape
        h, w = x.view.shape[1:3]
        r.open(f"for (long long i = 0; i < {kh}; ++i)")
        r.emit(f"const long long hy = o1 * {stride} - {pad} + i;")
        r.open(f"for (long long j = 0; j < {kw}; ++j)")
        r.emit(f"const long long wx = o2 * {stride} - {pad} + j;")
        # padding reads 0, and 0 times a weight still counts (0 * inf is NaN, as numpy's)
        r.emit(f"const bool in = hy >= 0 && hy < {h} && wx >= 0 && wx < {w};")
        r.open(f"for (long long ci = 0; ci < {cin}; ++ci)")
        xv = f"(in ? {_operand(r, x, ['o0', 'hy', 'wx', 'ci'], dt)} : {const(dt, 0)})"
        wv = _operand(r, y, ["i", "j", "ci", "o3"], dt)
        r.emit(_mac("acc", xv, wv, dt))
        r.close()
        r.close()
        r.close()
    elif c.op is Op.CONV_INPUT_GRAD:  # g (N, HO, WO, Cout), w (KH, KW, Cin, Cout) -> dx
        stride, pad, _, _ = c.arg
        _, ho, wo, cout = x.view.shape
        kh, kw = y.view.shape[:2]
        r.open(f"for (long long i = 0; i < {kh}; ++i)")
        r.emit(f"const long long py = o1 + {pad} - i;")
        r.emit(f"if (py < 0 || py % {stride} != 0 || py / {stride} >= {ho}) continue;")
        r.open(f"for (long long j = 0; j < {kw}; ++j)")
        r.emit(f"const long long px = o2 + {pad} - j;")
        r.emit(f"if (px < 0 || px % {stride} != 0 || px / {stride} >= {wo}) continue;")
        r.open(f"for (long long co = 0; co < {cout}; ++co)")
        gv = _operand(r, x, ["o0", f"py / {stride}", f"px / {stride}", "co"], dt)
        wv = _operand(r, y, ["i", "j", "o3", "co"], dt)
        r.emit(_mac("acc", gv, wv, dt))
        r.close()
        r.close()
        r.close()
    else:  # CONV_WEIGHT_GRAD: x (N, H, W, Cin), g (N, HO, WO, Cout) -> dw (KH, KW, Cin, Cout)
        stride, pad, _, _ = c.arg
        nb, h, w, _ = x.view.shape
        _, ho, wo, _ = y.view.shape
        r.open(f"for (long long b = 0; b < {nb}; ++b)")
        r.open(f"for (long long p = 0; p < {ho}; ++p)")
        r.emit(f"const long long hy = p * {stride} - {pad} + o0;")
        r.open(f"for (long long q = 0; q < {wo}; ++q)")
        r.emit(f"const long long wx = q * {stride} - {pad} + o1;")
        r.emit(f"const bool in = hy >= 0 && hy < {h} && wx >= 0 && wx < {w};")
        xv = f"(in ? {_operand(r, x, ['b', 'hy', 'wx', 'o2'], dt)} : {const(dt, 0)})"
        gv = _operand(r, y, ["b", "p", "q", "o3"], dt)
        r.emit(_mac("acc", xv, gv, dt))
        r.close()
        r.close()
        r.close()
    store_out(r, into, names, "acc")
    r.close()
    r.end()


__all__ = ["render_conv", "store_out"]
