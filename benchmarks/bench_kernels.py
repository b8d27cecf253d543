"""Kernels: needlec's compiled code next to numpy, torch and jax on single workloads.

Run: `python benchmarks/bench_kernels.py [--quick] [--write-results]`. Each workload (GELU, an
add/mul chain next to a plain copy, logsumexp, matmul, the LSTM step's small matmul, a ResNet9
convolution with both gradients, a 2x2 add for the per-call overhead) runs in every column that
exists on the machine: needlec jit (the LLVM backend), needlec eager, numpy, torch eager,
torch.compile and jax.jit (torch and jax are optional). All columns read the same input arrays; every jitted function is
called once before timing (the first call compiles) and every column's result is checked once
against numpy's. The figure per cell is the median of repeated calls, with the interquartile
range. `--write-results` replaces the "Kernels" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

import needlec as nc

try:
    import torch
except ImportError:  # optional peer
    torch = None
try:
    import jax
    import jax.numpy as jnp
except ImportError:  # optional peer
    jax = None

COLUMNS = ["needlec jit", "needlec eager", "numpy", "torch", "torch.compile", "jax.jit"]
GELU_C, GELU_K = 0.79788456, 0.044715


@dataclass
class Stat:
    median: float  # seconds
    q1: float
    q3: float
    n: int


@dataclass
class Impl:
    run: Callable[[], object]  # the timed call
    to_numpy: Callable[[object], object]  # result -> numpy array or tuple of them (checked once)


@dataclass
class Workload:
    name: str
    unit: str  # "GB/s", "GFLOP/s", "Gelem/s" or "" (time only)
    work: float  # bytes, flops or elements per call, for the unit
    reference: object  # numpy result (array or tuple)
    impls: dict[str, Impl] = field(default_factory=dict)
    rtol: float = 1e-5
    atol: float = 1e-6
    notes: list[str] = field(default_factory=list)


def measure(fn: Callable, repeats: int, budget_s: float) -> Stat:
    """Median and quartiles of up to `repeats` calls (at least 5, stopping after `budget_s`)."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats and (len(times) < 5 or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    q1, med, q3 = np.percentile(times, [25, 50, 75])
    return Stat(float(med), float(q1), float(q3), len(times))


# ---- the columns' ways of running a function ------------------------------------------------


def nc_jit(fn: Callable, *arrays) -> Impl:
    f = nc.jit(fn)
    return Impl(lambda: f(*arrays), _nc_numpy)


def nc_eager(fn: Callable, *arrays, grad: bool = False) -> Impl:
    ts = [nc.Tensor(a, requires_grad=grad) for a in arrays]
    return Impl(lambda: fn(*ts), _nc_numpy)


def _nc_numpy(out):
    if isinstance(out, tuple | list):
        return tuple(_nc_numpy(o) for o in out)
    return out.numpy()


def _torch_numpy(out):
    if isinstance(out, tuple | list):
        return tuple(_torch_numpy(o) for o in out)
    return out.detach().contiguous().numpy()


def _jax_ready(out):
    return jax.block_until_ready(out)


def add_peers(
    w: Workload,
    torch_fn: Callable | None,
    jax_fn: Callable | None,
    arrays: tuple,
    skip: set,
    torch_prep: Callable | None = None,
    torch_compile_fn: Callable | None = None,
) -> None:
    """torch eager, torch.compile and jax.jit columns of `w`, where installed and not skipped."""
    if torch is not None and torch_fn is not None:
        targs = (torch_prep or (lambda *a: tuple(torch.from_numpy(x) for x in a)))(*arrays)
        if "torch" not in skip:
            w.impls["torch"] = Impl(lambda: torch_fn(*targs), _torch_numpy)
        if "torch.compile" not in skip:
            compiled = torch_compile_fn or torch.compile(torch_fn, dynamic=False)
            t0 = time.perf_counter()
            try:
                compiled(*targs)
            except Exception as e:  # noqa: BLE001  (a peer that fails is a note, not an abort)
                w.notes.append(f"torch.compile failed: {type(e).__name__}: {str(e)[:120]}")
            else:
                w.notes.append(f"torch.compile first call {time.perf_counter() - t0:.1f} s")
                w.impls["torch.compile"] = Impl(lambda: compiled(*targs), _torch_numpy)
    if jax is not None and jax_fn is not None and "jax.jit" not in skip:
        jargs = tuple(jnp.asarray(a) for a in arrays)
        jf = jax.jit(jax_fn)
        _jax_ready(jf(*jargs))  # compile
        w.impls["jax.jit"] = Impl(
            lambda: _jax_ready(jf(*jargs)),
            lambda o: tuple(np.asarray(x) for x in o) if isinstance(o, tuple) else np.asarray(o),
        )


# ---- workloads -------------------------------------------------------------------------------


def gelu(x):
    return 0.5 * x * (1 + nc.ops.tanh(GELU_C * (x + GELU_K * x**3)))


def np_gelu(x):
    return 0.5 * x * (1 + np.tanh(GELU_C * (x + GELU_K * x**3)))


def w_gelu(rng, n: int, label: str, skip: set) -> Workload:
    x = rng.standard_normal(n, dtype=np.float32)
    w = Workload(f"tanh-GELU {label} f32", "Gelem/s", n, np_gelu(x), rtol=1e-5, atol=1e-6)
    w.impls["needlec jit"] = nc_jit(gelu, x)
    w.impls["needlec eager"] = nc_eager(gelu, x)
    w.impls["numpy"] = Impl(lambda: np_gelu(x), lambda o: o)
    add_peers(
        w,
        lambda t: 0.5 * t * (1 + torch.tanh(GELU_C * (t + GELU_K * t**3))),
        lambda t: 0.5 * t * (1 + jnp.tanh(GELU_C * (t + GELU_K * t**3))),
        (x,),
        skip,
    )
    return w


def chain(x, a, b, c):
    return (x * a + b) * c + x


def w_chain(rng, n: int, skip: set) -> Workload:
    x, a, b, c = (rng.standard_normal(n, dtype=np.float32) for _ in range(4))
    ref = chain(x, a, b, c)
    w = Workload("chain (x*a+b)*c+x 16M f32", "GB/s", 5 * 4 * n, ref)  # 4 reads + 1 write
    w.impls["needlec jit"] = nc_jit(chain, x, a, b, c)
    w.impls["needlec eager"] = nc_eager(chain, x, a, b, c)
    w.impls["numpy"] = Impl(lambda: chain(x, a, b, c), lambda o: o)
    add_peers(w, chain, chain, (x, a, b, c), skip)
    return w


def w_copy(rng, n: int) -> Workload:
    src = rng.standard_normal(n, dtype=np.float32)
    dst = np.empty_like(src)
    w = Workload("copy 16M f32 (np.copyto)", "GB/s", 2 * 4 * n, src)  # 1 read + 1 write
    w.impls["numpy"] = Impl(lambda: np.copyto(dst, src), lambda o: dst)
    return w


def np_lse(x):
    m = x.max(axis=1, keepdims=True)
    return (np.log(np.exp(x - m).sum(axis=1, keepdims=True)) + m)[:, 0]


def w_lse(rng, skip: set) -> Workload:
    x = rng.standard_normal((4096, 1024), dtype=np.float32) * 3
    w = Workload(
        "logsumexp axis 1 (4096,1024) f32", "GB/s", x.nbytes, np_lse(x), rtol=1e-5, atol=1e-5
    )
    lse = lambda t: nc.ops.logsumexp(t, axes=(1,))  # noqa: E731
    w.impls["needlec jit"] = nc_jit(lse, x)
    w.impls["needlec eager"] = nc_eager(lse, x)
    w.impls["numpy"] = Impl(lambda: np_lse(x), lambda o: o)
    add_peers(
        w,
        lambda t: torch.logsumexp(t, 1),
        lambda t: jax.nn.logsumexp(t, axis=1),
        (x,),
        skip,
    )
    return w


def matmul(a, b):
    return a @ b


def w_matmul(rng, n: int, skip: set) -> Workload:
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    ref = a.astype(np.float64) @ b.astype(np.float64)
    w = Workload(f"matmul {n}^3 f32", "GFLOP/s", 2 * n**3, ref, rtol=1e-4, atol=1e-3 * n**0.5)
    w.impls["needlec jit"] = nc_jit(matmul, a, b)
    w.impls["needlec eager"] = nc_eager(matmul, a, b)
    w.impls["numpy"] = Impl(lambda: a @ b, lambda o: o)
    add_peers(w, matmul, matmul, (a, b), skip)
    return w


def w_matmul_small(rng, m: int, k: int, n: int, skip: set) -> Workload:
    """A small product, where a call's own cost counts: the LSTM step's recurrent GEMM."""
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    w = Workload(
        f"matmul {m}x{k} @ {k}x{n} f32", "GFLOP/s", 2 * m * n * k, ref, rtol=1e-4, atol=1e-4
    )
    w.impls["needlec jit"] = nc_jit(matmul, a, b)
    w.impls["needlec eager"] = nc_eager(matmul, a, b)
    w.impls["numpy"] = Impl(lambda: a @ b, lambda o: o)
    add_peers(w, matmul, matmul, (a, b), skip)
    return w


def np_conv_fwd_bwd(x, wt, dy, stride: int, pad: int):
    """NHWC conv (K, K, Cin, Cout weight) by im2col + GEMM: (y, dx, dw) for upstream grad dy."""
    k, _, cin, cout = wt.shape
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    win = sliding_window_view(xp, (k, k), axis=(1, 2))[:, ::stride, ::stride]  # N,Ho,Wo,C,K,K
    n, ho, wo = win.shape[:3]
    cols = win.transpose(0, 1, 2, 4, 5, 3).reshape(n * ho * wo, k * k * cin)
    w2 = wt.reshape(k * k * cin, cout)
    y = (cols @ w2).reshape(n, ho, wo, cout)
    dy2 = dy.reshape(-1, cout)
    dw = (cols.T @ dy2).reshape(wt.shape)
    dcols = (dy2 @ w2.T).reshape(n, ho, wo, k, k, cin)
    dxp = np.zeros_like(xp)
    for i in range(k):
        for j in range(k):
            dxp[:, i : i + stride * ho : stride, j : j + stride * wo : stride] += dcols[
                :, :, :, i, j
            ]
    return y, dxp[:, pad : pad + x.shape[1], pad : pad + x.shape[2]], dw


def w_conv(rng, batch: int, hw: int, cin: int, cout: int, k: int, stride: int, skip: set):
    pad = k // 2
    x = rng.standard_normal((batch, hw, hw, cin), dtype=np.float32)
    wt = (rng.standard_normal((k, k, cin, cout)) / (k * k * cin) ** 0.5).astype(np.float32)
    ho = (hw + 2 * pad - k) // stride + 1
    dy = rng.standard_normal((batch, ho, ho, cout), dtype=np.float32)
    ref = np_conv_fwd_bwd(x, wt, dy, stride, pad)
    flops = 3 * 2 * batch * ho * ho * cout * k * k * cin  # forward, dx, dw: one GEMM's worth each
    name = f"conv fwd+dx+dw {cin}->{cout} k{k} s{stride} {hw}x{hw}, batch {batch}"
    w = Workload(name, "GFLOP/s", flops, ref, rtol=1e-3, atol=1e-3)

    def nc_fb(a, b, g):
        y, pull = nc.vjp(lambda p, q: nc.ops.conv(p, q, stride=stride, padding=pad), a, b)
        return (y, *pull(g))

    w.impls["needlec jit"] = nc_jit(nc_fb, x, wt, dy)
    w.impls["needlec eager"] = nc_eager(nc_fb, x, wt, dy)
    w.impls["numpy"] = Impl(lambda: np_conv_fwd_bwd(x, wt, dy, stride, pad), lambda o: o)

    if torch is not None:
        tfwd = lambda a, b: torch.nn.functional.conv2d(a, b, stride=stride, padding=pad)  # noqa: E731

        def torch_prep(a, b, g):  # NHWC bytes seen as NCHW channels_last: no copy of the input
            ta = torch.from_numpy(a).permute(0, 3, 1, 2).requires_grad_()
            tb = torch.from_numpy(b).permute(3, 2, 0, 1).contiguous().requires_grad_()
            return ta, tb, torch.from_numpy(g).permute(0, 3, 1, 2)

        def make_torch(fwd):
            def fb(a, b, g):
                y = fwd(a, b)
                return (y, *torch.autograd.grad(y, (a, b), g))

            return fb

        cfwd = torch.compile(tfwd, dynamic=False) if "torch.compile" not in skip else None
        to_nhwc = lambda o: (  # noqa: E731
            o[0].detach().permute(0, 2, 3, 1).contiguous().numpy(),
            o[1].permute(0, 2, 3, 1).contiguous().numpy(),
            o[2].permute(2, 3, 1, 0).contiguous().numpy(),
        )
        add_peers(w, make_torch(tfwd), None, (x, wt, dy), skip, torch_prep, make_torch(cfwd))
        for col in ("torch", "torch.compile"):
            if col in w.impls:
                w.impls[col].to_numpy = to_nhwc

    def jax_fb(a, b, g):
        f = lambda p, q: jax.lax.conv_general_dilated(  # noqa: E731
            p, q, (stride, stride), [(pad, pad)] * 2, dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        y, pull = jax.vjp(f, a, b)
        return (y, *pull(g))

    add_peers(w, None, jax_fb, (x, wt, dy), skip)
    return w


def w_add(rng, skip: set) -> Workload:
    a, b = (rng.standard_normal((2, 2), dtype=np.float32) for _ in range(2))
    w = Workload("add 2x2 (per-call overhead)", "", 0, a + b)
    add = lambda p, q: p + q  # noqa: E731
    w.impls["needlec jit"] = nc_jit(add, a, b)
    w.impls["needlec eager"] = nc_eager(add, a, b)
    w.impls["numpy"] = Impl(lambda: a + b, lambda o: o)
    add_peers(w, add, add, (a, b), skip)
    return w


# ---- running and reporting -------------------------------------------------------------------


def check(w: Workload) -> None:
    """Every column's result against numpy's, once, before anything is timed."""
    for col, impl in w.impls.items():
        got, ref = impl.to_numpy(impl.run()), w.reference
        got = got if isinstance(got, tuple) else (got,)
        ref = ref if isinstance(ref, tuple) else (ref,)
        assert len(got) == len(ref), (w.name, col)
        for g, r in zip(got, ref, strict=True):
            np.testing.assert_allclose(
                np.asarray(g, dtype=np.float64),
                r,
                rtol=w.rtol,
                atol=w.atol,
                err_msg=f"{w.name}: {col}",
            )


def fmt_ms(s: Stat) -> str:
    scale, unit = (1e6, "us") if s.median < 1e-3 else (1e3, "")
    return f"{s.median * scale:.3g}{unit} ({s.q1 * scale:.3g}-{s.q3 * scale:.3g})"


def fmt_rate(w: Workload, s: Stat) -> str:
    return f"{w.work / s.median / 1e9:.3g}"


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        m = re.search(r"Model name:\s*(.+)", out)
        model = m.group(1).strip() if m else model
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {model}"


def versions() -> str:
    vs = [f"numpy {np.__version__}"]
    if torch is not None:
        vs.append(f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
    if jax is not None:
        vs.append(f"jax {jax.__version__}")
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return ", ".join(vs) + f"; load average at the end {load}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats, shorter time per cell")
    ap.add_argument("--repeats", type=int, default=None, help="most calls per cell")
    ap.add_argument("--skip", default="", help="comma-separated columns to leave out")
    ap.add_argument("--write-results", action="store_true", help="update benchmarks/RESULTS.md")
    args = ap.parse_args()
    repeats = args.repeats or (10 if args.quick else 50)
    budget = 0.5 if args.quick else 2.0
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    rng = np.random.default_rng(0)
    t_start = time.perf_counter()

    builders = [
        lambda: w_gelu(rng, 1 << 20, "1M", skip),
        lambda: w_gelu(rng, 1 << 24, "16M", skip),
        lambda: w_chain(rng, 1 << 24, skip),
        lambda: w_copy(rng, 1 << 24),
        lambda: w_lse(rng, skip),
        lambda: w_matmul(rng, 512, skip),
        lambda: w_matmul(rng, 1024, skip),
        lambda: w_matmul_small(rng, 16, 64, 256, skip),
        lambda: w_conv(rng, 128, 32, 3, 16, 7, 4, skip),  # ResNet9's stem
        lambda: w_conv(rng, 128, 4, 32, 32, 3, 1, skip),  # its first residual block's convs
        lambda: w_add(rng, skip),
    ]
    results: list[tuple[Workload, dict[str, Stat]]] = []
    for build in builders:
        w = build()
        check(w)
        stats = {}
        for col in COLUMNS:
            if col in w.impls and col not in skip:
                time.sleep(0.2)  # let the last column's BLAS/XLA threads stop spinning
                stats[col] = measure(w.impls[col].run, repeats, budget)
        results.append((w, stats))
        w.impls.clear()  # free the inputs' copies held by the columns
        print(f"  {w.name}: done ({time.perf_counter() - t_start:.0f} s)", file=sys.stderr)

    cols = [c for c in COLUMNS if any(c in s for _, s in results)]
    lines = [
        "Median ms per call (interquartile range); us where marked",
        "",
        "| workload | " + " | ".join(cols) + " |",
        "| --- |" + " --- |" * len(cols),
    ]
    for w, st in results:
        lines.append(
            f"| {w.name} | " + " | ".join(fmt_ms(st[c]) if c in st else "-" for c in cols) + " |"
        )
    lines += ["", "Throughput (of the median)", ""]
    lines.append("| workload | unit | " + " | ".join(cols) + " |")
    lines.append("| --- | --- |" + " --- |" * len(cols))
    for w, st in results:
        if w.unit:
            cells = " | ".join(fmt_rate(w, st[c]) if c in st else "-" for c in cols)
            lines.append(f"| {w.name} | {w.unit} | {cells} |")
    targets = target_lines(results)
    notes = [f"- {w.name}: {'; '.join(w.notes)}" for w, _ in results if w.notes]
    total = time.perf_counter() - t_start
    report = "\n".join(lines + ["", *targets, "", "Notes:", *notes])
    print(report)
    print(f"\ntotal {total:.0f} s; {machine()}; {versions()}")
    if args.write_results:
        write_results(report, args, total)


def target_lines(results) -> list[str]:
    by = {w.name: (w, st) for w, st in results}

    def t(name: str, col: str) -> float | None:
        st = by.get(name, (None, {}))[1]
        return st[col].median if col in st else None

    def row(what, target, value, ok) -> str:
        verdict = "-" if ok is None else ("met" if ok else "missed")
        return f"| {what} | {target} | {value} | {verdict} |"

    out = ["| target | goal | measured | |", "| --- | --- | --- | --- |"]
    for label in ("1M", "16M"):
        name = f"tanh-GELU {label} f32"
        a, b = t(name, "needlec jit"), t(name, "jax.jit")
        r = b / a if a and b else None
        out.append(
            row(
                f"GELU {label}: jit throughput / jax.jit's",
                ">= 1.00x",
                f"{r:.2f}x" if r else "n/a",
                r >= 1.0 if r else None,
            )
        )
    a, b = t("chain (x*a+b)*c+x 16M f32", "needlec jit"), t("copy 16M f32 (np.copyto)", "numpy")
    if a and b:
        chain_gbs, copy_gbs = 5 * 4 * (1 << 24) / a, 2 * 4 * (1 << 24) / b
        r = chain_gbs / copy_gbs
        out.append(row("chain GB/s / copy GB/s", ">= 85%", f"{100 * r:.0f}%", r >= 0.85))
    a, b = (
        t("logsumexp axis 1 (4096,1024) f32", "needlec jit"),
        t("logsumexp axis 1 (4096,1024) f32", "jax.jit"),
    )
    r = a / b if a and b else None
    out.append(
        row(
            "logsumexp: jit time / jax.jit's",
            "<= 1.00x",
            f"{r:.2f}x" if r else "n/a",
            r <= 1.0 if r else None,
        )
    )
    for n in (512, 1024):
        a, b = t(f"matmul {n}^3 f32", "needlec jit"), t(f"matmul {n}^3 f32", "numpy")
        r = b / a if a and b else None
        out.append(
            row(
                f"matmul {n}^3: jit GFLOP/s / numpy's",
                ">= 90%",
                f"{100 * r:.0f}%" if r else "n/a",
                r >= 0.9 if r else None,
            )
        )
    for w, st in results:
        if w.name.startswith("conv") and "needlec jit" in st and "torch" in st:
            r = st["needlec jit"].median / st["torch"].median
            short = w.name.split(", ")[0].replace("conv fwd+dx+dw ", "conv ")
            out.append(row(f"{short}: jit time / torch's", "<= 1.30x", f"{r:.2f}x", r <= 1.3))
    return out


def write_results(report: str, args, total: float) -> None:
    path = Path(__file__).with_name("RESULTS.md")
    text = path.read_text()
    cmd = "python benchmarks/bench_kernels.py" + (" --quick" if args.quick else "")
    section = (
        "## Kernels\n\n"
        f"`{cmd}`, {datetime.date.today().isoformat()}, {machine()}; {versions()}; "
        f"the whole run took {total:.0f} s.\n\n" + report + "\n"
    )
    m = re.search(r"^## Kernels\n.*?(?=^## |\Z)", text, flags=re.S | re.M)
    if m and "\n### " in m.group(0):  # hand-written subsections (profiling notes) stay
        old = m.group(0)
        section += "\n" + old[old.index("\n### ") + 1 :].rstrip("\n") + "\n"
    if m:
        text = text[: m.start()] + section + ("\n" if m.end() < len(text) else "") + text[m.end() :]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


if __name__ == "__main__":
    main()
