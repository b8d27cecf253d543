"""Eager per-op cost: what one needle op costs when it runs on its own, on tiny tensors.

    python benchmarks/bench_eager_ops.py [--repeats N] [--write-results]

On 4x4 float32 tensors the arithmetic is nothing, so each figure is the framework's own cost per
call: building the result tensor, recording the op for `backward()`, checking shapes, dtypes and
devices. Columns: needlec eager on `cpu()` (tensors that require gradients, as in a training
step), torch eager (the same, `requires_grad=True`), and numpy's bare call (no autograd: the
floor). The last rows time `backward()` through a small graph, per op of the graph. Each figure
is the minimum over `--repeats` blocks of calls (one thread; the minimum is the least disturbed
by other processes). `--write-results` replaces the "Eager per-op cost" section of
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import timeit
from collections.abc import Callable
from pathlib import Path

import numpy as np

SECTION = "## Eager per-op cost"


def _per_call(fn: Callable[[], object], repeats: int, budget: float = 0.05) -> float:
    """Seconds per call: the minimum over `repeats` blocks of about `budget` seconds each."""
    fn()
    n = max(1, int(budget / max(timeit.timeit(fn, number=3) / 3, 1e-9)))
    return min(timeit.repeat(fn, number=n, repeat=repeats)) / n


def workloads() -> list[tuple[str, Callable, Callable | None, Callable | None, int]]:
    """(name, needlec call, torch call or None, numpy call or None, ops per call)."""
    import needlec as nc
    from needlec import ops

    rng = np.random.default_rng(0)
    a_np, b_np = (rng.standard_normal((4, 4)).astype("float32") for _ in range(2))
    a, b = nc.Tensor(a_np, requires_grad=True), nc.Tensor(b_np, requires_grad=True)
    try:
        import torch

        torch.set_num_threads(1)
        at, bt = (torch.tensor(x, requires_grad=True) for x in (a_np, b_np))
    except ImportError:
        torch = None

    def tw(f):
        return None if torch is None else f

    def backward_nc():
        ((a @ b + a).relu().sum()).backward()

    def backward_torch():
        ((at @ bt + at).relu().sum()).backward()

    return [
        ("Tensor from a numpy array", lambda: nc.Tensor(a_np), tw(lambda: torch.from_numpy(a_np)),
         lambda: np.asarray(a_np), 1),
        ("a + b", lambda: a + b, tw(lambda: at + bt), lambda: a_np + b_np, 1),
        ("a * 2.0", lambda: a * 2.0, tw(lambda: at * 2.0), lambda: a_np * 2.0, 1),
        ("a @ b", lambda: a @ b, tw(lambda: at @ bt), lambda: a_np @ b_np, 1),
        ("relu(a)", lambda: ops.relu(a), tw(lambda: at.relu()), lambda: np.maximum(a_np, 0), 1),
        ("exp(a)", lambda: ops.exp(a), tw(lambda: at.exp()), lambda: np.exp(a_np), 1),
        ("a.sum(axes=(1,))", lambda: a.sum(axes=(1,)), tw(lambda: at.sum(1)),
         lambda: a_np.sum(1), 1),
        ("a.reshape((2, 8))", lambda: a.reshape((2, 8)), tw(lambda: at.reshape(2, 8)),
         lambda: a_np.reshape(2, 8), 1),
        ("a.transpose()", lambda: a.transpose(), tw(lambda: at.transpose(0, 1)),
         lambda: a_np.T, 1),
        ("a.broadcast_to((3, 4, 4))", lambda: a.broadcast_to((3, 4, 4)),
         tw(lambda: at.expand(3, 4, 4)), lambda: np.broadcast_to(a_np, (3, 4, 4)), 1),
        ("forward + backward of relu(a @ b + a).sum(), per op", backward_nc,
         tw(backward_torch), None, 4),
    ]  # fmt: skip


def run(repeats: int) -> list[dict]:
    rows = []
    for name, fn_nc, fn_torch, fn_np, n_ops in workloads():
        row = {"op": name, "needlec_us": 1e6 * _per_call(fn_nc, repeats) / n_ops}
        row["torch_us"] = None if fn_torch is None else 1e6 * _per_call(fn_torch, repeats) / n_ops
        row["numpy_us"] = None if fn_np is None else 1e6 * _per_call(fn_np, repeats) / n_ops
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    def us(v):
        return "-" if v is None else f"{v:.2f}"

    lines = [
        "| op (4x4 float32) | needlec eager, us | torch eager, us | numpy, us | needlec / torch |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        ratio = "-" if r["torch_us"] is None else f"{r['needlec_us'] / r['torch_us']:.1f}x"
        lines.append(
            f"| {r['op']} | {us(r['needlec_us'])} | {us(r['torch_us'])} | {us(r['numpy_us'])} "
            f"| {ratio} |"
        )
    return "\n".join(lines) + "\n"


def write_results(body: str, path: Path | None = None) -> None:
    """Replace (or append) the section of RESULTS.md; hand-written notes under `### ` stay."""
    path = path or Path(__file__).with_name("RESULTS.md")
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    section = f"{SECTION}\n\n{body}"
    m = re.search(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", text, flags=re.S | re.M)
    if m and "\n### " in m.group(0):
        old = m.group(0)
        section += "\n" + old[old.index("\n### ") + 1 :].rstrip("\n") + "\n"
    if m:
        text = text[: m.start()] + section + ("\n" if m.end() < len(text) else "") + text[m.end() :]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=15, help="timed blocks per figure")
    ap.add_argument("--write-results", action="store_true", help="update benchmarks/RESULTS.md")
    ap.add_argument("--results-md", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    os.environ.setdefault("NEEDLEC_NUM_THREADS", "1")
    rows = run(args.repeats)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    body = (
        f"`python benchmarks/bench_eager_ops.py`, {datetime.date.today().isoformat()}, "
        f"{os.cpu_count()} CPUs; one thread; the minimum over {args.repeats} blocks of calls; "
        f"load average {load} at the end.\n\n" + markdown(rows)
    )
    print(body)
    if args.write_results or args.results_md:
        write_results(body, args.results_md)


if __name__ == "__main__":
    main()
