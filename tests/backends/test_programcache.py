"""The disk cache's program entries: a step traced again (in this process or a new one) loads
what the passes and the code generator made of its graph, without running them; an entry that
is damaged, foreign, written by another version, or whose machine code is gone is compiled
afresh, never used; a changed graph is another entry."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import needlec as nc
from needlec import nn, optim
from needlec.codegen.llvm import diskcache, programcache
from needlec.ir import ConstArray, Graph, Node, Op
from needlec.ir.digest import graph_digest

jit_module = importlib.import_module("needlec.jit")  # the module (`needlec.jit` is the function)

compiled_only = pytest.mark.skipif(
    os.environ.get("NEEDLEC_EXECUTE", "compiled") != "compiled",
    reason="program entries hold compiled code",
)
pytestmark = compiled_only


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("NEEDLEC_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("NEEDLEC_DISK_CACHE", "1")
    return tmp_path


@pytest.fixture
def passes_run(monkeypatch):
    """How many times the graph passes ran (`optimize`, as the jit calls it)."""
    count = [0]
    real = jit_module.optimize

    def counted(graph):
        count[0] += 1
        return real(graph)

    monkeypatch.setattr(jit_module, "optimize", counted)
    return count


X = np.random.default_rng(0).random((16, 12), dtype="float32")
Y = np.arange(16, dtype="float32") % 5


def _train(steps: int = 3, scale: float = 1.0):
    """A fresh model and a fresh jitted SGD-momentum step (so each call traces anew); the
    losses of `steps` steps and the final weights."""
    np.random.seed(3)
    model = nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 5))
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_fn = nn.SoftmaxLoss()

    @nc.jit
    def step(x, y):
        opt.reset_grad()
        loss = loss_fn(model(x) * scale, y)
        loss.backward()
        opt.step()
        return loss

    x, y = nc.Tensor(X), nc.Tensor(Y)
    losses = [float(step(x, y).numpy()) for _ in range(steps)]
    return losses, [p.numpy().copy() for p in model.parameters()], step.lower(x, y)


def _delta(before: diskcache.Stats) -> dict:
    after = diskcache.program_stats
    return {k: getattr(after, k) - getattr(before, k) for k in vars(after)}


def _snap() -> diskcache.Stats:
    return diskcache.Stats(**vars(diskcache.program_stats))


def _program_entries(root):
    return sorted(root.rglob("*.program"))


def test_a_second_trace_loads_the_compiled_program_and_skips_the_passes(cache_dir, passes_run):
    s = _snap()
    losses1, weights1, _ = _train()
    assert _delta(s) == {"hits": 0, "misses": 1, "damaged": 0, "writes": 1}
    assert passes_run[0] == 1 and len(_program_entries(cache_dir)) == 1
    s = _snap()
    losses2, weights2, lowered = _train()
    assert _delta(s) == {"hits": 1, "misses": 0, "damaged": 0, "writes": 0}
    assert passes_run[0] == 1  # the second trace ran no pass
    assert losses1 == losses2
    for a, b in zip(weights1, weights2, strict=True):
        assert a.tobytes() == b.tobytes()
    # what was loaded reads like what was compiled
    assert "matmul" in lowered.as_text() and lowered.kernels.kernels
    assert "define" in lowered.source("llvm")
    assert lowered.executable.library.from_disk


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "empty", "foreign"])
def test_a_damaged_program_entry_is_compiled_again(cache_dir, passes_run, damage):
    losses1, weights1, _ = _train()
    (path,) = _program_entries(cache_dir)
    data = bytearray(path.read_bytes())
    if damage == "flip a byte":
        data[len(data) // 2] ^= 0x40
    elif damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "empty":
        data = bytearray()
    path.write_bytes(bytes(data))
    if damage == "foreign":  # a whole, valid entry of another step under this key
        _train(scale=2.0)
        other = next(p for p in _program_entries(cache_dir) if p != path)
        path.write_bytes(other.read_bytes())
    runs = passes_run[0]
    s = _snap()
    losses2, weights2, _ = _train()
    assert _delta(s) == {"hits": 0, "misses": 1, "damaged": 1, "writes": 1}
    assert passes_run[0] == runs + 1  # compiled again
    assert losses1 == losses2
    for a, b in zip(weights1, weights2, strict=True):
        assert a.tobytes() == b.tobytes()
    s = _snap()
    _train()  # rewritten: whole again
    assert _delta(s)["hits"] == 1


def test_an_entry_that_does_not_unpickle_is_compiled_again(cache_dir, passes_run):
    _train()
    (path,) = _program_entries(cache_dir)
    key = path.stem
    diskcache.store(key, b"not a pickle", "program")  # whole, checksummed, but not ours
    s = _snap()
    _train()
    assert _delta(s)["damaged"] == 1 and passes_run[0] == 2


def test_another_version_or_compiler_is_another_entry(cache_dir, passes_run, monkeypatch):
    _train()
    monkeypatch.setattr(nc, "__version__", nc.__version__ + ".dev1")
    programcache._compiler_fingerprint.cache_clear()
    programcache._environment.cache_clear()
    try:
        s = _snap()
        _train()
        assert _delta(s) == {"hits": 0, "misses": 1, "damaged": 0, "writes": 1}
        assert passes_run[0] == 2 and len(_program_entries(cache_dir)) == 2
    finally:
        monkeypatch.undo()
        programcache._compiler_fingerprint.cache_clear()
        programcache._environment.cache_clear()


def test_another_thread_count_is_another_entry(cache_dir, passes_run):
    """A step compiled while the pool had 1 thread keeps its GEMMs whole: a process with 2
    threads compiles its own (cut in two), and both give the same numbers."""
    from needlec.codegen.llvm import runtime

    before = runtime.num_threads()
    try:
        runtime.set_num_threads(1)
        losses1, weights1, _ = _train()
        runtime.set_num_threads(2)
        s = _snap()
        losses2, weights2, _ = _train()
        assert _delta(s) == {"hits": 0, "misses": 1, "damaged": 0, "writes": 1}
        runtime.set_num_threads(1)
        s = _snap()
        _train()
        assert _delta(s) == {"hits": 1, "misses": 0, "damaged": 0, "writes": 0}
    finally:
        runtime.set_num_threads(before)
    assert losses1 == losses2
    for a, b in zip(weights1, weights2, strict=True):
        assert a.tobytes() == b.tobytes()


def test_a_changed_graph_is_another_entry(cache_dir, passes_run):
    losses1, _, _ = _train(scale=1.0)
    s = _snap()
    losses2, _, _ = _train(scale=2.0)
    assert _delta(s)["misses"] == 1 and _delta(s)["hits"] == 0
    assert passes_run[0] == 2 and losses1 != losses2


def test_missing_machine_code_is_compiled_again(cache_dir, passes_run):
    losses1, _, _ = _train()
    for p in cache_dir.rglob("*.o"):
        p.unlink()
    losses2, _, _ = _train()
    assert passes_run[0] == 2 and losses1 == losses2
    assert len(list(cache_dir.rglob("*.o"))) == 1  # the object entry is back


def test_the_cache_off_writes_no_program_entry(cache_dir, passes_run, monkeypatch):
    monkeypatch.setenv("NEEDLEC_DISK_CACHE", "0")
    _train()
    _train()
    assert passes_run[0] == 2 and not _program_entries(cache_dir)


def test_debug_output_of_the_passes_compiles_anew(cache_dir, passes_run, monkeypatch, capfd):
    _train()
    monkeypatch.setenv("NEEDLEC_DEBUG", "passes")
    _train()
    assert passes_run[0] == 2 and "--- after simplify" in capfd.readouterr().err


def test_the_digest_sees_constant_values_the_printed_graph_hides():
    x = Node.leaf(Op.INPUT, "float32", (16,), ("arg", 0))
    c1 = Node.leaf(Op.CONST, "float32", (16,), ConstArray(np.arange(16, dtype="float32")))
    c2 = Node.leaf(Op.CONST, "float32", (16,), ConstArray(np.arange(16, dtype="float32") + 1))
    g1, g2 = Graph([x], [x + c1]), Graph([x], [x + c2])
    assert g1.as_text() == g2.as_text()  # large constants print as their type only
    assert graph_digest(g1) != graph_digest(g2)
    assert graph_digest(g1) == graph_digest(Graph([x], [x + c1]))
    assert graph_digest(Graph([x], [x * 0.0])) != graph_digest(Graph([x], [x * -0.0]))


def test_an_arg_without_a_faithful_encoding_has_no_digest():
    x = Node.leaf(Op.INPUT, "float32", (3,), ("arg", 0))
    odd = Node.leaf(Op.INPUT, "float32", (3,), ("arg", object()))
    assert graph_digest(Graph([x, odd], [x + odd])) is None


def test_a_new_process_loads_the_program_without_running_the_passes(cache_dir):
    script = textwrap.dedent(
        """
        import importlib, numpy as np, needlec as nc
        jm = importlib.import_module("needlec.jit")
        from needlec import nn, optim
        from needlec.codegen.llvm import diskcache
        runs = []
        real = jm.optimize
        jm.optimize = lambda g: runs.append(1) or real(g)
        np.random.seed(3)
        model = nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 5))
        opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        @nc.jit
        def step(x, y):
            opt.reset_grad()
            loss = nn.SoftmaxLoss()(model(x), y)
            loss.backward()
            opt.step()
            return loss
        x = nc.Tensor(np.linspace(0, 1, 16 * 12, dtype=np.float32).reshape(16, 12))
        y = nc.Tensor(np.arange(16, dtype=np.float32) % 5)
        out = [step(x, y).numpy().tobytes().hex() for _ in range(3)]
        print(diskcache.program_stats.hits, len(runs), *out)
        """
    )
    runs = [
        subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
        for _ in range(2)
    ]
    (h1, p1, *out1), (h2, p2, *out2) = (r.stdout.split() for r in runs)
    assert (h1, p1) == ("0", "1") and (h2, p2) == ("1", "0")
    assert out1 == out2


def test_a_pass_replaced_in_this_process_turns_the_cache_off(cache_dir, passes_run, monkeypatch):
    import needlec.passes

    _train()
    monkeypatch.setattr(needlec.passes, "merge_gemms", lambda graph, report=None: graph)
    s = _snap()
    _train()
    assert _delta(s)["hits"] == 0 and passes_run[0] == 2  # compiled with the replaced pass


def test_a_step_with_an_all_reduce_is_never_a_program_entry(cache_dir, passes_run):
    """Its code depends on the process's MPI world (the communicator bound when it compiled,
    or a copy in a world of one): every process compiles it (ranks check each other then)."""
    from needlec import distributed

    f = nc.jit(lambda a: distributed.all_reduce(a * 2.0, "sum"))
    a = nc.Tensor(X)
    np.testing.assert_allclose(f(a).numpy(), X * 2.0)
    g = nc.jit(lambda a: distributed.all_reduce(a * 2.0, "sum"))
    np.testing.assert_allclose(g(a).numpy(), X * 2.0)
    assert passes_run[0] == 2 and not _program_entries(cache_dir)
