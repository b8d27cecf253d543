"""`python -m benchmarks.bench_distributed` runs end to end on one model and writes its table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from .mpirun import ROOT, mpiexec


def test_one_model_on_one_and_two_processes(tmp_path: Path) -> None:
    mpiexec()  # skips where MPI is missing
    env = dict(os.environ, NEEDLEC_CACHE_DIR=str(tmp_path / "cache"))  # never the user's cache
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    out = tmp_path / "results"
    cmd = [sys.executable, "-m", "benchmarks.bench_distributed", "--repeats", "1"]
    cmd += ["--only", "mlpresnet", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = json.loads((out / "distributed.json").read_text())
    assert row["model"] == "mlpresnet"
    one, two, half = row["1"], row["2"], row["half"]
    assert (one["ranks"], two["ranks"], half["ranks"]) == (1, 2, 1)
    assert (one["batch"], two["batch"], half["batch"]) == (256, 128, 128)
    for r in (one, two, half):
        assert r["step_ms"] > 0 and r["samples_per_s"] > 0
    assert two["buckets"] >= 1 and two["allreduce_ms"] > 0
    from benchmarks.steps import _mlp_resnet

    # every gradient is averaged: the buckets hold all of the model's parameters
    assert two["floats"] == sum(int(np.prod(p.shape)) for p in _mlp_resnet().parameters())
    table = (out / "distributed.md").read_text()
    assert "| MLPResNet 784-100x3-10 |" in table
