"""`python -m benchmarks` runs end to end on its smallest step and writes its results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_writes_json_and_markdown(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    env["NEEDLEC_CACHE_DIR"] = str(tmp_path / "cache")  # never the user's cache
    out = tmp_path / "results"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--quick",
            "--only",
            "mlp-784-256-10-b32",
            "--peers",
            "numpy",
            "--repeats",
            "5",
            "--budget",
            "0.2",
            "--no-chart",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "train_steps.json").read_text())
    assert {
        "date",
        "command",
        "threads",
        "load_average_start",
        "wall_s",
        "others_cpu",
        "quiet",
    } <= set(result["meta"])
    (row,) = result["steps"]
    assert row["name"] == "mlp-784-256-10-b32"
    for col in ("needlec jit", "needlec eager", "numpy"):
        cell = row["columns"][col]
        assert {"median_ms", "q1_ms", "q3_ms", "n", "first_call_ms", "first_loss"} <= set(cell)
        assert cell["n"] >= 5
    assert row["losses_agree"] and row["max_abs_loss_diff"] < 1e-4
    assert {"ready_ms", "first_step_ms"} <= set(row["first_call_cold"])
    fresh = row["first_call_disk_cache"]
    assert {"import_ms", "ready_ms", "first_step_ms", "process_ms"} <= set(fresh)
    assert fresh["disk_cache_hits"] >= 1 and fresh["disk_cache_misses"] == 0
    assert fresh["program_cache_hits"] == 1  # the new process ran no pass
    assert fresh["import_and_ready_ms"] == fresh["import_ms"] + fresh["ready_ms"]
    assert set(row["ratios"]) == {
        "jit / jax.jit",
        "jit / numpy",
        "jit / torch",
        "jit / torch.compile",
        "jit / eager",
    }
    assert row["ratios"]["jit / jax.jit"] is None  # peers not run
    assert "| MLP 784-256-10, batch 32 |" in (out / "train_steps.md").read_text()
    assert not (out / "ratios.png").exists()


def test_device_cuda_without_a_gpu_says_so(tmp_path: Path) -> None:
    import needlec as nc

    if nc.cuda().enabled():
        import pytest

        pytest.skip("a GPU is present: the cuda benchmarks would run")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--device", "cuda", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "cuda() is not enabled here" in proc.stderr


def test_eager_ops_benchmark_writes_its_section(tmp_path: Path) -> None:
    from benchmarks import bench_eager_ops

    md = tmp_path / "RESULTS.md"
    md.write_text("# Benchmark results\n\n## Kernels\n\nkept\n")
    bench_eager_ops.main(["--repeats", "1", "--results-md", str(md)])
    text = md.read_text()
    assert "## Kernels\n\nkept\n" in text  # other sections stay
    section = text[text.index(bench_eager_ops.SECTION) :]
    rows = [line for line in section.splitlines() if line.startswith("| ")][2:]  # after the head
    assert len(rows) == len(bench_eager_ops.workloads())
    for line in rows:
        needlec_us = float(line.split("|")[2])
        assert 0 < needlec_us < 1e5
