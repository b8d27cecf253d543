"""`python -m benchmarks`: whole training steps, needlec jit next to eager, numpy, torch and jax.

For every step in `steps.SPECS` (MLPs, MLPResNet, ResNet9, the LSTM and Transformer language
models) it runs, in this one process, the same training step in each column that exists here:

- needlec jit (`@needlec.jit` on the needle step) and needlec eager (the same Python, no jit);
- hand-written numpy (MLPs only);
- torch eager, torch.compile and jax.jit (optional: skipped with a note when not installed).

`--distributed` runs `benchmarks.bench_distributed` instead: data-parallel steps on 1 and 2
processes (mpiexec), samples per second and the all-reduce's share of a step. `--device cuda`
runs `benchmarks.gpu.bench_cuda` instead: the CUDA backend on a GPU against the GPU's copy
bandwidth, cuBLAS and torch (needs pycuda, a GPU and torch built for CUDA).

All columns start from needlec's initial weights; the first step's losses must agree (their
largest difference from needlec eager's goes in the JSON). A cell's figure is the median time
of repeated steps after warm-up, with the interquartile range. needlec's first call is timed
cold (an empty disk cache in `NEEDLEC_CACHE_DIR`) and again in a new process reading that
cache (`FIRST_CALL_SCRIPT`), split into `import needlec` (numpy included: it is the process's
first import), "ready" (trace, then the passes and LLVM or the disk cache's program entry) and
the first step.

Writes `train_steps.json`, `train_steps.md` and the ratio chart `ratios.png` (matplotlib,
optional) to `--out` (default benchmarks/results/), and with the default output also the
"Whole training steps" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

from .steps import StepSpec

HERE = Path(__file__).resolve().parent
COLUMNS = ["needlec jit", "needlec eager", "numpy", "torch", "torch.compile", "jax.jit"]
PEERS = ["numpy", "torch", "torch.compile", "jax.jit"]
RATIOS = {  # column name in the table -> the peer needlec jit is divided by
    "jit / jax.jit": "jax.jit",
    "jit / numpy": "numpy",
    "jit / torch": "torch",
    "jit / torch.compile": "torch.compile",
    "jit / eager": "needlec eager",
}
SECTION = "## Whole training steps against peers"
LOSS_TOL = 1e-4  # float32: |loss - needlec eager's| / max(1, |loss|)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line of `python -m benchmarks`."""
    from .steps import SPECS

    ap = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Time whole training steps: needlec jit vs eager, numpy, torch, jax.",
    )
    ap.add_argument("--repeats", type=int, default=30, help="timed steps per cell (at most)")
    ap.add_argument(
        "--budget", type=float, default=2.0, help="seconds per cell before stopping (>= 5 runs)"
    )
    ap.add_argument("--quick", action="store_true", help="smoke check: 2 steps, 5 repeats")
    ap.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help=f"run only this step (repeatable): {', '.join(s.name for s in SPECS)}",
    )
    ap.add_argument(
        "--peers",
        default=",".join(PEERS),
        help="comma-separated peer columns to run, or 'none' (default: all installed)",
    )
    ap.add_argument("--out", type=Path, default=None, help="output folder (benchmarks/results)")
    ap.add_argument("--results-md", type=Path, default=None, help="RESULTS.md to update")
    ap.add_argument("--no-chart", action="store_true", help="do not draw ratios.png")
    ap.add_argument(
        "--no-disk-cache-run", action="store_true", help="skip the new-process first call"
    )
    ap.add_argument(
        "--distributed",
        action="store_true",
        help="instead: data-parallel steps on 1 and 2 processes (benchmarks.bench_distributed)",
    )
    ap.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="cuda: instead, the GPU benchmarks (benchmarks.gpu.bench_cuda), written to --out",
    )
    ap.add_argument("--first-call-only", metavar="NAME", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.repeats = min(args.repeats, 5)
        args.budget = min(args.budget, 1.0)
    peers = [] if args.peers.strip() in ("", "none") else args.peers.split(",")
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        ap.error(f"--peers: unknown {unknown}; choose from {PEERS} or 'none'")
    args.peer_list = peers
    if args.results_md is None and args.out is None:
        args.results_md = HERE / "RESULTS.md"
    args.out = args.out or HERE / "results"
    return args


# a new process's first call: `import needlec` timed as the process's first import
FIRST_CALL_SCRIPT = (
    "import time; t0 = time.perf_counter(); import needlec; t1 = time.perf_counter()\n"
    "import json, sys; from benchmarks.run import first_call_only\n"
    "print(json.dumps(first_call_only(sys.argv[1], import_s=t1 - t0)))"
)


def first_call_only(name: str, import_s: float | None = None) -> dict:
    """In a fresh process: import needlec (`import_s`: the seconds that took, measured by the
    caller before anything else was imported), build the step, lower it (trace, then the
    passes and LLVM or the disk cache's entries) and run it once; times in ms."""
    t0 = time.perf_counter()
    import needlec as nc

    t1 = time.perf_counter()
    import_ms = 1e3 * (import_s if import_s is not None else t1 - t0)
    from .steps import build_needlec, spec

    _, step, x, y = build_needlec(spec(name))
    jitted = nc.jit(step)
    t2 = time.perf_counter()
    jitted.lower(x, y).executable  # noqa: B018  (trace, passes, compile or load)
    t3 = time.perf_counter()
    loss = float(jitted(x, y).numpy())
    t4 = time.perf_counter()
    from needlec.codegen.llvm import diskcache

    return {
        "import_ms": import_ms,
        "ready_ms": 1e3 * (t3 - t2),
        "first_step_ms": 1e3 * (t4 - t3),
        "import_and_ready_ms": import_ms + 1e3 * (t3 - t2),
        # False where Python compiles needlec's sources at every import (no .pyc written:
        # PYTHONDONTWRITEBYTECODE), which an installed package never does
        "bytecode_cached": not sys.dont_write_bytecode,
        "loss": loss,
        "disk_cache_hits": diskcache.stats.hits,
        "disk_cache_misses": diskcache.stats.misses,
        "program_cache_hits": diskcache.program_stats.hits,
    }


def others_cpu_s() -> float | None:
    """CPU seconds every process but this one (and its waited-for children) has used since
    boot, from /proc/stat; None where there is no /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    t = os.times()
    return busy - (t.user + t.system + t.children_user + t.children_system)


def _measure(fn, repeats: int, budget_s: float) -> dict:
    """Median and quartiles of the timed steps, and the share of the CPUs that other processes
    took meanwhile (`others_cpu`, 0..1: above 0.1 the cell's time is not to be trusted)."""
    from .bench_kernels import measure

    cpu0, t0 = others_cpu_s(), time.perf_counter()
    s = measure(fn, repeats, budget_s)
    cpu1, t1 = others_cpu_s(), time.perf_counter()
    cell = {"median_ms": 1e3 * s.median, "q1_ms": 1e3 * s.q1, "q3_ms": 1e3 * s.q3, "n": s.n}
    cell["timed_s"] = t1 - t0
    if cpu0 is not None and cpu1 is not None and t1 > t0:
        cell["others_cpu"] = max(0.0, (cpu1 - cpu0) / ((t1 - t0) * (os.cpu_count() or 1)))
    return cell


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def bench_step(s: StepSpec, args: argparse.Namespace, cache_dir: Path, progress) -> dict:
    """Every column of one step (first call, first loss, then the timed steps), needlec's first
    call cold into `cache_dir` and from it in a new process; `progress` is the tqdm bar."""
    import needlec as nc

    from .peers import NotWritten, Runner, jax_runner, numpy_runner, torch_runner
    from .steps import build_needlec

    row: dict = {"name": s.name, "title": s.title, "columns": {}}
    cols = row["columns"]
    model, step, x, y = build_needlec(s)
    init = [p.numpy().copy() for p in model.parameters()]
    row["input_shape"], row["parameters"] = list(x.shape), int(sum(a.size for a in init))

    def run_column(col: str, make) -> None:
        progress.set_postfix_str(f"{s.name}: {col}")
        cell: dict = {}
        cols[col] = cell
        try:
            runner = make()
            if isinstance(runner, str):  # a skip note
                cell["skipped"] = runner
                return
            t0 = time.perf_counter()
            first = runner.step()
            cell["first_call_ms"] = 1e3 * (time.perf_counter() - t0)
            cell["first_loss"] = runner.loss_value(first)
            for _ in range(2):  # warm up
                runner.step()
            gc.collect()  # garbage left by earlier columns is not collected on this one's time
            cell.update(_measure(runner.step, args.repeats, args.budget))
            if runner.note:
                cell["note"] = runner.note
        except NotWritten as e:
            cell["skipped"] = f"not written: {e}"
        except Exception as e:  # a peer's failure is reported, not fatal
            cell["error"] = f"{type(e).__name__}: {e}"
            traceback.print_exc(file=sys.stderr)
        finally:
            progress.update(1)

    # needlec jit: its own copy of the model (same seed, same weights), first call cold
    def make_jit() -> Runner:
        model2, step2, _, _ = build_needlec(s)
        for a, p in zip(init, model2.parameters(), strict=True):
            np.testing.assert_array_equal(a, p.numpy())
        jitted = nc.jit(step2)
        os.environ["NEEDLEC_CACHE_DIR"] = str(cache_dir)
        t0 = time.perf_counter()
        jitted.lower(x, y).executable  # noqa: B018  (trace, passes, LLVM, written to the cache)
        row["first_call_cold"] = {"ready_ms": 1e3 * (time.perf_counter() - t0)}
        return Runner(lambda: jitted(x, y), lambda loss: float(loss.numpy()))

    run_column("needlec jit", make_jit)
    if "first_call_ms" in cols["needlec jit"]:
        row["first_call_cold"]["first_step_ms"] = cols["needlec jit"]["first_call_ms"]

    xt, yt = nc.Tensor(x, requires_grad=False), nc.Tensor(y, requires_grad=False)
    run_column("needlec eager", lambda: Runner(lambda: step(xt, yt), lambda l: float(l.numpy())))

    def peer(col: str, make):
        if col not in args.peer_list:
            progress.update(1)
            return
        run_column(col, make)

    peer(
        "numpy",
        lambda: (
            numpy_runner(init, x, y)
            if s.kind == "mlp"
            else "not written (hand-written numpy for the MLPs only)"
        ),
    )
    have_torch, have_jax = _installed("torch"), _installed("jax")
    peer(
        "torch",
        lambda: (
            torch_runner(model, init, x, y, compiled=False) if have_torch else "torch not installed"
        ),
    )
    peer(
        "torch.compile",
        lambda: (
            torch_runner(model, init, x, y, compiled=True) if have_torch else "torch not installed"
        ),
    )
    peer("jax.jit", lambda: jax_runner(model, init, x, y) if have_jax else "jax not installed")

    if not args.no_disk_cache_run and "error" not in cols["needlec jit"]:
        progress.set_postfix_str(f"{s.name}: first call from the disk cache")
        env = {**os.environ, "NEEDLEC_CACHE_DIR": str(cache_dir)}
        env["PYTHONPATH"] = os.pathsep.join(
            [str(HERE.parent), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        t0 = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", FIRST_CALL_SCRIPT, s.name],
            env=env,
            capture_output=True,
            text=True,
        )
        if out.returncode == 0:
            fresh = json.loads(out.stdout.strip().splitlines()[-1])
            fresh["process_ms"] = 1e3 * (time.perf_counter() - t0)
            row["first_call_disk_cache"] = fresh
        else:
            row["first_call_disk_cache_error"] = out.stderr[-2000:]
            print(out.stderr, file=sys.stderr)
    _compare(row)
    return row


def _compare(row: dict) -> None:
    """Losses of the first step against needlec eager's, and the ratios of needlec jit."""
    cols = row["columns"]
    ref = cols.get("needlec eager", {}).get("first_loss")
    diffs = {}
    for col, cell in cols.items():
        if ref is not None and "first_loss" in cell and col != "needlec eager":
            cell["loss_diff"] = abs(cell["first_loss"] - ref)
            diffs[col] = cell["loss_diff"]
    fresh = row.get("first_call_disk_cache")
    if ref is not None and fresh:
        diffs["needlec jit (new process)"] = abs(fresh["loss"] - ref)
    row["first_loss"] = ref
    row["max_abs_loss_diff"] = max(diffs.values()) if diffs else None
    row["losses_agree"] = all(d <= LOSS_TOL * max(1.0, abs(ref)) for d in diffs.values())
    jit = cols.get("needlec jit", {}).get("median_ms")
    row["ratios"] = {}
    for name, col in RATIOS.items():
        other = cols.get(col, {}).get("median_ms")
        row["ratios"][name] = jit / other if jit and other else None


def _meta(args, argv: list[str], wall_s: float, load_before, others_cpu: float | None) -> dict:
    from importlib import metadata

    from needlec.codegen.llvm import runtime

    cpus = os.cpu_count() or 1
    versions = {"numpy": np.__version__}
    for mod in ("torch", "jax", "llvmlite"):
        if _installed(mod):
            versions[mod] = metadata.version(mod)
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python -m benchmarks", *argv]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {_cpu_name()}",
        "python": platform.python_version(),
        "versions": versions,
        "threads": {
            "needlec": runtime.num_threads(),
            "torch": runtime.num_threads(),
            "jax": "XLA's own pool",
        },
        "repeats": args.repeats,
        "budget_s": args.budget,
        "load_average_start": list(load_before),
        "load_average_end": list(os.getloadavg()),
        "wall_s": wall_s,
        "loss_tolerance": f"{LOSS_TOL} * max(1, |loss|)",
        # at the end the load average includes this run's own threads (up to one per CPU)
        "quiet": (
            others_cpu < BUSY
            if others_cpu is not None
            else load_before[0] < 0.5 * cpus and os.getloadavg()[0] < 1.5 * cpus
        ),
        "others_cpu": others_cpu,
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


BUSY = 0.1  # a cell during which other processes took more than this share of the CPUs


def _ms(cell: dict) -> str:
    if "median_ms" in cell:
        busy = " *" if cell.get("others_cpu", 0.0) > BUSY else ""
        return f"{_num(cell['median_ms'])} ({_num(cell['q1_ms'])}-{_num(cell['q3_ms'])}){busy}"
    if "error" in cell:
        return "error"
    return "-"


def _num(v: float) -> str:
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def markdown(result: dict, chart_link: str = "results/ratios.png") -> str:
    """The results as markdown: a header, the times, the ratios and needlec's first calls, the
    first call of every column, notes, and the chart (linked as `chart_link`)."""
    m, steps = result["meta"], result["steps"]
    la0 = ", ".join(f"{v:.2f}" for v in m["load_average_start"])
    la1 = ", ".join(f"{v:.2f}" for v in m["load_average_end"])
    vers = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    lines = [
        f"`{m['command']}`, {m['date'][:10]}, {m['machine']}; {vers}; needlec and torch on "
        f"{m['threads']['needlec']} threads; load average {la0} at the start, {la1} at the "
        f"end; the run took {m['wall_s']:.0f} s.",
        "",
        *(
            []
            if m.get("quiet", True)
            else [
                "**Not quiet**: other processes were running (see the * cells; without "
                "/proc/stat: the load average above half the CPUs at the start, or above 1.5 "
                "per CPU at the end). Threaded code (BLAS, OpenMP, needlec's pool) then waits for descheduled "
                "threads, so these times are noisy; rerun on a quiet machine.",
                "",
            ]
        ),
        "One step = zero grads, forward, softmax cross-entropy, backward, SGD with momentum "
        "0.9, the same in every column, from the same initial weights. Median ms per step "
        f"(interquartile range), up to {m['repeats']} steps after warm-up. * marks a cell "
        f"during which other processes took over {BUSY:.0%} of the CPUs (its time is not to be "
        "trusted)"
        + (
            f"; over all timed steps they took {m['others_cpu']:.0%}."
            if m.get("others_cpu") is not None
            else "."
        ),
        "",
        "| step | " + " | ".join(COLUMNS) + " |",
        "|" + " --- |" * (len(COLUMNS) + 1),
    ]
    for r in steps:
        lines.append(
            f"| {r['title']} | " + " | ".join(_ms(r["columns"].get(c, {})) for c in COLUMNS) + " |"
        )
    lines += [
        "",
        "needlec jit's time divided by each peer's (below 1.00x: needlec jit is faster). First "
        "call: ready (trace, passes, LLVM or loading its machine code) + first step, ms; cold "
        "= empty disk cache, disk cache = a new process (then the import of needlec, numpy "
        "included, and whether .pyc files were used). "
        "Loss diff: the largest |first-step loss - needlec eager's| over the columns.",
        "",
        "| step | "
        + " | ".join(RATIOS)
        + " | first call cold | first call from disk cache | loss diff |",
        "|" + " --- |" * (len(RATIOS) + 4),
    ]
    for r in steps:
        ratios = [f"{v:.2f}x" if v else "-" for v in r["ratios"].values()]
        cold, fresh = r.get("first_call_cold", {}), r.get("first_call_disk_cache")
        cold_s = (
            f"{cold['ready_ms']:.0f} + {cold['first_step_ms']:.1f}"
            if "first_step_ms" in cold
            else "-"
        )
        fresh_s = (
            f"{fresh['ready_ms']:.0f} + {fresh['first_step_ms']:.1f} (import "
            f"{fresh['import_ms']:.0f}"
            + ("" if fresh.get("bytecode_cached", True) else ", no .pyc")
            + ")"
            if fresh
            else "error"
            if "first_call_disk_cache_error" in r
            else "-"
        )
        diff = r["max_abs_loss_diff"]
        diff_s = "-" if diff is None else f"{diff:.1e}" + ("" if r["losses_agree"] else " (!)")
        lines.append(f"| {r['title']} | " + " | ".join([*ratios, cold_s, fresh_s, diff_s]) + " |")
    lines += [
        "",
        "First call of each column, ms (needlec jit: the first step once ready; torch.compile "
        "and jax.jit: tracing and compiling included):",
        "",
        "| step | " + " | ".join(COLUMNS) + " |",
        "|" + " --- |" * (len(COLUMNS) + 1),
    ]
    for r in steps:
        firsts = [r["columns"].get(c, {}).get("first_call_ms") for c in COLUMNS]
        lines.append(
            f"| {r['title']} | " + " | ".join("-" if v is None else _num(v) for v in firsts) + " |"
        )
    notes = sorted(
        {
            f"{c}: {cell.get('skipped') or cell.get('note') or cell.get('error')}"
            for r in steps
            for c, cell in r["columns"].items()
            if any(k in cell for k in ("skipped", "note", "error"))
        }
    )
    if notes:
        lines += ["", "Notes:", *[f"- {n}" for n in notes]]
    lines += [
        "",
        "jax.jit runs on XLA's own thread pool; torch is set to needlec's thread count. "
        "torch.compile's first call reads torch's own compile cache on disk when an earlier "
        "run left one; needlec's cold first call starts from an empty disk cache but shares "
        "this process's memory of LLVM functions compiled for earlier steps.",
        "",
        f"![needlec jit / peer]({chart_link})",
    ]
    return "\n".join(lines) + "\n"


def chart(result: dict, path: Path) -> bool:
    """A bar chart of needlec jit's time over each peer's per step (log scale); False when
    matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    steps = result["steps"]
    names = list(RATIOS)
    fig, ax = plt.subplots(figsize=(10, 1.5 + 0.75 * len(steps)))
    height = 0.8 / len(names)
    ys = np.arange(len(steps))
    for k, name in enumerate(names):
        vals = [r["ratios"].get(name) or np.nan for r in steps]
        bars = ax.barh(ys + (k - (len(names) - 1) / 2) * height, vals, height, label=name)
        for bar, v in zip(bars, vals, strict=True):
            if v == v:  # not nan
                ax.text(v, bar.get_y() + height / 2, f" {v:.2f}", va="center", fontsize=6)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_yticks(ys, [r["name"] for r in steps])
    ax.invert_yaxis()
    ax.set_xlabel("needlec jit time / peer time (below 1: needlec jit faster; log scale)")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=len(names))
    ax.set_title(f"Whole training steps, {result['meta']['date'][:10]}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_section(md_path: Path, body: str) -> None:
    """Replace (or add, after the file's introduction) the section `SECTION` of RESULTS.md."""
    text = md_path.read_text() if md_path.exists() else "# Benchmark results\n\n"
    block = f"{SECTION}\n\n{body}\n"
    if SECTION in text:
        start = text.index(SECTION)
        nxt = text.find("\n## ", start + len(SECTION))
        text = text[:start] + block + (text[nxt + 1 :] if nxt >= 0 else "")
    else:
        first = text.find("\n## ")
        text = text + "\n" + block if first < 0 else text[: first + 1] + block + text[first + 1 :]
    md_path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or, with --first-call-only, one first call) and write the results."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.first_call_only:
        print(json.dumps(first_call_only(args.first_call_only)))
        return 0
    if args.distributed:  # needs mpiexec: pip install -e ".[distributed]"
        from . import bench_distributed

        return bench_distributed.main(["--repeats", str(args.repeats)])
    if args.device == "cuda":  # needs pycuda and a GPU: pip install -e ".[cuda]"
        import needlec as nc

        if not nc.cuda().enabled():
            print(
                "--device cuda: cuda() is not enabled here (no GPU or no pycuda)", file=sys.stderr
            )
            return 2
        from .gpu import bench_cuda

        out = args.out or Path(__file__).resolve().parent / "results" / "gpu"
        bench_cuda.main(["--out", str(out), "--repeats", str(min(args.repeats, 20))])
        return 0
    load_before = os.getloadavg()
    t_start = time.perf_counter()
    from tqdm import tqdm

    from needlec.codegen.llvm import runtime

    from .steps import QUICK, SPECS, spec

    names = args.only or (QUICK if args.quick else [s.name for s in SPECS])
    specs = [spec(n) for n in names]
    if "torch" in args.peer_list or "torch.compile" in args.peer_list:
        if _installed("torch"):
            import torch

            torch.set_num_threads(runtime.num_threads())
    rows = []
    saved_cache = os.environ.get("NEEDLEC_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="needlec-bench-cache-") as tmp:
        with tqdm(total=len(specs) * len(COLUMNS), desc="benchmarks", unit="cell") as progress:
            for s in specs:
                rows.append(bench_step(s, args, Path(tmp) / s.name, progress))
        if saved_cache is None:
            os.environ.pop("NEEDLEC_CACHE_DIR", None)
        else:
            os.environ["NEEDLEC_CACHE_DIR"] = saved_cache
    # other processes' share of the CPUs while cells were timed (torch.compile's compile
    # workers, which are processes too, run only before the timed steps)
    timed = [c for r in rows for c in r["columns"].values() if "others_cpu" in c]
    total = sum(c["timed_s"] for c in timed)
    others = sum(c["others_cpu"] * c["timed_s"] for c in timed) / total if total else None
    wall = time.perf_counter() - t_start
    result = {"meta": _meta(args, argv, wall, load_before, others), "steps": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_steps.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "train_steps.md").write_text(markdown(result, "ratios.png"))
    if not args.no_chart and not chart(result, args.out / "ratios.png"):
        print("matplotlib is not installed: no chart (pip install -e '.[bench]')", file=sys.stderr)
    md = markdown(result, os.path.relpath(args.out / "ratios.png", HERE))
    if args.results_md is not None:
        md = markdown(result, os.path.relpath(args.out / "ratios.png", args.results_md.parent))
        write_section(args.results_md, md)
    print(md)
    failed = [
        r["name"]
        for r in rows
        for c in ("needlec jit", "needlec eager")
        if "error" in r["columns"][c]
    ]
    return 1 if failed else 0
