"""Run a script on N processes with mpiexec, from a test; skips where MPI is missing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def mpiexec() -> str:
    """The mpiexec next to this Python (the mpich wheel's), or on PATH; skips without one."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        pytest.skip('mpi4py is not installed (pip install -e ".[distributed]")')
    here = Path(sys.executable).parent / "mpiexec"
    found = str(here) if here.exists() else shutil.which("mpiexec")
    if found is None:
        pytest.skip('mpiexec is not installed (pip install -e ".[distributed]" brings mpich)')
    return found


def run(n: int, script: str, tmp_path: Path, timeout: float = 300, check: bool = True):
    """Run `script` (Python source) on `n` ranks; the completed process. With `check`, a
    nonzero exit fails the test with every rank's output."""
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(script))
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    env.setdefault("NEEDLEC_NUM_THREADS", "1")  # ranks share the cores
    cmd = [mpiexec(), "-n", str(n), sys.executable, str(path)]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp_path
    )
    if check and proc.returncode != 0:
        pytest.fail(f"mpiexec -n {n} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc
