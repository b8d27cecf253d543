"""The disk cache of compiled code: a second compile of the same program loads the object code;
a damaged, truncated or foreign entry is compiled afresh and rewritten, never loaded; a new
process finds what an earlier one wrote."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from needlec.codegen.llvm import diskcache
from needlec.codegen.llvm.program import compile_program as compile_llvm
from needlec.ir import Graph, Node, Op
from needlec.passes import compile_program


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("NEEDLEC_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("NEEDLEC_DISK_CACHE", "1")
    return tmp_path


def _graph(scale: float = 2.0):
    x = Node.leaf(Op.INPUT, "float32", (33, 17), ("arg", 0))
    return Graph([x], [Node.make(Op.LOGSUMEXP, Node.make(Op.MUL_SCALAR, x, arg=scale), arg=(1,))])


X = np.linspace(-3, 3, 33 * 17, dtype=np.float32).reshape(33, 17)


def _compile(graph):
    before = diskcache.Stats(**vars(diskcache.stats))
    ex = compile_llvm(compile_program(graph))
    after = diskcache.stats
    delta = {k: getattr(after, k) - getattr(before, k) for k in vars(after)}
    return ex, delta


def _entries(root):
    return sorted(p for p in root.rglob("*.o"))


def test_second_compile_loads_from_disk(cache_dir):
    ex1, d1 = _compile(_graph())
    assert d1 == {"hits": 0, "misses": 1, "damaged": 0, "writes": 1}
    ex2, d2 = _compile(_graph())
    assert d2 == {"hits": 1, "misses": 0, "damaged": 0, "writes": 0}
    assert ex2.library.from_disk and not ex1.library.from_disk
    (a,), (b,) = ex1.run([X]), ex2.run([X])
    assert a.tobytes() == b.tobytes()
    assert "define" in ex2.source("llvm")  # the optimized module, compiled again on demand


def test_another_program_is_another_entry(cache_dir):
    _compile(_graph(2.0))
    _, d = _compile(_graph(3.0))
    assert d["misses"] == 1 and d["hits"] == 0
    assert len(_entries(cache_dir)) == 2


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "empty", "foreign"])
def test_damaged_entry_is_compiled_again(cache_dir, damage):
    ex1, _ = _compile(_graph())
    (want,) = ex1.run([X])
    (path,) = _entries(cache_dir)
    data = bytearray(path.read_bytes())
    if damage == "flip a byte":
        data[len(data) // 2] ^= 0x40
    elif damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "empty":
        data = bytearray()
    path.write_bytes(bytes(data))
    if damage == "foreign":  # a whole, valid entry of another program under this key
        _compile(_graph(5.0))
        other = next(p for p in _entries(cache_dir) if p != path)
        path.write_bytes(other.read_bytes())
    ex2, d = _compile(_graph())
    assert d == {"hits": 0, "misses": 1, "damaged": 1, "writes": 1}
    assert not ex2.library.from_disk
    (got,) = ex2.run([X])
    assert got.tobytes() == want.tobytes()
    _, d3 = _compile(_graph())  # rewritten: whole again
    assert d3["hits"] == 1


def test_cache_can_be_turned_off(cache_dir, monkeypatch):
    monkeypatch.setenv("NEEDLEC_DISK_CACHE", "0")
    _compile(_graph())
    _, d = _compile(_graph())
    assert d["hits"] == 0 and not _entries(cache_dir)


def test_new_process_loads_what_an_earlier_one_compiled(cache_dir):
    script = textwrap.dedent(
        """
        import numpy as np, needlec as nc
        from needlec.codegen.llvm import diskcache
        x = nc.Tensor(np.linspace(-2, 2, 64 * 9, dtype=np.float32).reshape(64, 9))
        f = nc.jit(lambda x: nc.ops.logsumexp(nc.ops.tanh(x) * 3.0, axes=(1,)))
        out = f(x).numpy().tobytes().hex()
        print(diskcache.stats.hits, diskcache.stats.writes, out)
        """
    )
    runs = [
        subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
        for _ in range(2)
    ]
    (h1, w1, out1), (h2, w2, out2) = (r.stdout.split() for r in runs)
    assert (h1, w1) == ("0", "1") and (h2, w2) == ("1", "0")
    assert out1 == out2


def test_the_cache_evicts_the_least_recently_used_entries_over_its_bound(cache_dir, monkeypatch):
    """Entries past NEEDLEC_CACHE_MB go, oldest use first; an entry just loaded (a hit touches
    it) and the one just written stay."""
    import os
    import time

    keys = []
    for i in range(4):
        k = diskcache.key(f"module {i}", "cpu", "features", "pipeline")
        diskcache.store(k, bytes(100_000))
        keys.append(k)
        t = time.time() - 100 + i  # written in order, a second apart
        os.utime(diskcache.path_of(k), (t, t))
    assert diskcache.load(keys[0]) is not None  # used now: the most recent
    monkeypatch.setenv("NEEDLEC_CACHE_MB", str(0.35))  # room for three entries of 100 kB
    k = diskcache.key("module 4", "cpu", "features", "pipeline")
    diskcache.store(k, bytes(100_000))  # five entries: over the bound
    left = {kk for kk in [*keys, k] if diskcache.path_of(kk).exists()}
    assert keys[1] not in left and keys[2] not in left  # the least recently used went
    assert {keys[0], keys[3], k} <= left  # down to nine tenths: three entries stay
    monkeypatch.setenv("NEEDLEC_CACHE_MB", "lots")
    with pytest.raises(ValueError, match="NEEDLEC_CACHE_MB"):
        diskcache.limit_bytes()
