"""The native runtime's thread pool: parallel loops give the same bits on 1 and 2 threads, cover
every iteration once, survive concurrent callers and forks, and only loops whose iterations write
memory of their own run in parallel."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import threading

import numpy as np
import pytest

from needlec.codegen.llvm import render, runtime
from needlec.codegen.llvm.program import compile_program as compile_llvm
from needlec.codegen.reference import run_graph
from needlec.codegen.schedule import Loop
from needlec.ir import Graph, Node, Op
from needlec.passes import compile_program

pytestmark = pytest.mark.skipif(not runtime.available(), reason="needlec._runtime not built")


def arg(dtype: str, shape, k: int) -> Node:
    return Node.leaf(Op.INPUT, dtype, shape, ("arg", k))


def _graph(shape=(1023, 517)):
    """Row and column reductions, a softmax-like chain and an elementwise map: every kind of
    top-level loop the schedules make."""
    x = arg("float32", shape, 0)
    outs = [
        Node.make(Op.LOGSUMEXP, x, arg=(1,)),
        Node.make(Op.SUM, x, arg=(0,)),  # a column sum: the reduced dim is the outer loop
        Node.make(Op.SUM, x, arg=(1,)),
        Node.make(Op.TANH, Node.make(Op.MUL, x, x)),
        Node.make(Op.MAX, x, arg=(0, 1)),
    ]
    return Graph([x], outs)


@pytest.fixture
def restore_threads():
    n = runtime.num_threads()
    yield
    runtime.set_num_threads(n)


def _inputs(shape=(1023, 517)):
    rng = np.random.default_rng(7)
    return [rng.standard_normal(shape).astype(np.float32) * 4]


def test_same_bits_on_one_and_two_threads(restore_threads):
    graph = _graph()
    ex = compile_llvm(compile_program(graph))
    assert "needlec_parallel_for" in ex.source("llvm")
    runs = {}
    for n in (1, 2, 3):
        assert runtime.set_num_threads(n) == n
        runs[n] = [ex.run(_inputs()) for _ in range(3)]
    first = runs[1][0]
    for n, outs in runs.items():
        for out in outs:
            for a, b in zip(out, first, strict=True):
                assert a.tobytes() == b.tobytes(), f"{n} threads differ"
    want = run_graph(graph, _inputs())
    for a, w in zip(first, want, strict=True):
        np.testing.assert_allclose(a, w, rtol=2e-5, atol=1e-4)


def test_every_iteration_once_at_odd_sizes(restore_threads):
    """Extents that do not divide into the chunks: an elementwise map over every size."""
    runtime.set_num_threads(2)
    for n in (70_001, 131_071, 262_147):
        x = arg("float64", (n,), 0)
        graph = Graph([x], [Node.make(Op.ADD_SCALAR, x, arg=1.0)])
        ex = compile_llvm(compile_program(graph))
        assert "needlec_parallel_for" in ex.source("llvm")
        a = np.arange(n, dtype=np.float64)
        (got,) = ex.run([a])
        np.testing.assert_array_equal(got, a + 1.0)


def test_small_kernels_stay_serial():
    x = arg("float32", (16, 16), 0)
    ex = compile_llvm(compile_program(Graph([x], [Node.make(Op.EXP, x)])))
    assert "needlec_parallel_for" not in ex.source("llvm-unoptimized")


def test_only_loops_writing_their_own_memory_are_parallel():
    ex = compile_llvm(compile_program(_graph()))
    for s in ex.schedules:
        for it in s.body:
            if not isinstance(it, Loop):
                continue
            work = render.parallel_work(it, s)
            if it.role == "reduce":  # a column sum accumulates across the outer loop
                assert work is None, s.as_text()


def test_concurrent_callers_get_their_own_results(restore_threads):
    """Two Python threads in one program: the pool runs one job at a time, the other runs on
    its own thread; both results are the serial ones."""
    runtime.set_num_threads(2)
    ex = compile_llvm(compile_program(_graph()))
    want = ex.run(_inputs())
    errors = []

    def call():
        for _ in range(20):
            got = ex.run(_inputs())
            if any(a.tobytes() != b.tobytes() for a, b in zip(got, want, strict=True)):
                errors.append("differs")

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def _child(queue):
    ex = compile_llvm(compile_program(_graph()))
    queue.put((runtime.num_threads(), [a.tobytes() for a in ex.run(_inputs())]))


def test_forked_child_runs_compiled_code(restore_threads):
    runtime.set_num_threads(2)
    want = [a.tobytes() for a in compile_llvm(compile_program(_graph())).run(_inputs())]
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    p = ctx.Process(target=_child, args=(queue,))
    p.start()
    threads, got = queue.get(timeout=120)
    p.join(timeout=60)
    assert p.exitcode == 0
    assert threads == runtime.default_threads()
    assert got == want


def test_thread_count_from_the_environment(monkeypatch):
    monkeypatch.setenv("NEEDLEC_NUM_THREADS", "3")
    assert runtime.default_threads() == 3
    for bad in ("0", "-2", "two"):
        monkeypatch.setenv("NEEDLEC_NUM_THREADS", bad)
        with pytest.raises(ValueError, match="NEEDLEC_NUM_THREADS"):
            runtime.default_threads()
    monkeypatch.delenv("NEEDLEC_NUM_THREADS")
    assert runtime.default_threads() >= 1


def _blas_threads() -> int | None:
    import ctypes

    from needlec.codegen.llvm import gemm

    fns = gemm.blas_thread_functions()
    return None if fns is None else ctypes.CFUNCTYPE(ctypes.c_int)(fns[0])()


def _gemm_and_conv_graph():
    a, b = arg("float32", (300, 257), 0), arg("float32", (257, 190), 1)
    x, w = arg("float32", (9, 30, 30, 8), 2), arg("float32", (3, 3, 8, 16), 3)
    g = arg("float32", (9, 30, 30, 16), 4)
    # the weight gradient sums 3 image tiles in 3 groups, the input gradient runs 3 tiles
    outs = [Node.make(Op.MATMUL, a, b), x.conv(w, 1, 1)]
    outs += [x.conv_weight_grad(g, 1, 1, (3, 3)), g.conv_input_grad(w, 1, 1, (30, 30))]
    return Graph([a, b, x, w, g], outs)


def test_gemm_and_conv_split_over_the_pool_give_the_same_bits(restore_threads):
    """A large GEMM is cut into row blocks and a convolution (and its gradients) into image
    tiles, one BLAS call each, on the pool: the cut depends on the sizes only, so 1 and 2
    threads agree bit for bit."""
    graph = _gemm_and_conv_graph()
    ex = compile_llvm(compile_program(graph))
    assert ex.source("llvm").count("needlec_parallel_for") >= 4
    rng = np.random.default_rng(3)
    arrays = [rng.standard_normal(n.shape).astype(np.float32) for n in graph.inputs]
    runs = []
    for n in (1, 2, 1, 2):
        runtime.set_num_threads(n)
        runs.append([o.tobytes() for o in ex.run(arrays)])
    assert all(r == runs[0] for r in runs)
    want = run_graph(graph, arrays)
    for got, w in zip(ex.run(arrays), want, strict=True):
        np.testing.assert_allclose(got, w, rtol=1e-4, atol=1e-4 * np.abs(w).max())


def test_blas_thread_count_is_restored_after_a_step():
    before = _blas_threads()
    if before is None:
        pytest.skip("scipy's BLAS is not an OpenBLAS whose threads needlec can set")
    graph = _gemm_and_conv_graph()
    ex = compile_llvm(compile_program(graph))
    ex.run([np.ones(n.shape, np.float32) for n in graph.inputs])
    assert _blas_threads() == before


def test_outputs_alive_are_never_reused_and_dropped_ones_are():
    x = arg("float32", (1000,), 0)
    ex = compile_llvm(compile_program(Graph([x], [Node.make(Op.MUL_SCALAR, x, arg=3.0)])))
    a = np.arange(1000, dtype=np.float32)
    kept = [ex.run([a + k])[0] for k in range(6)]  # more than the blocks a program keeps
    for k, out in enumerate(kept):
        np.testing.assert_array_equal(out, (a + k) * 3)
    assert len({o.ctypes.data for o in kept}) == 6
    del kept
    (first,) = ex.run([a])
    address = first.ctypes.data
    del first
    (again,) = ex.run([a + 1])
    assert again.ctypes.data == address  # nothing referred to the block: reused
    np.testing.assert_array_equal(again, (a + 1) * 3)


_STRESS = """
import numpy as np
from needlec.codegen.llvm import runtime
from needlec.codegen.llvm.program import compile_program as compile_llvm
from needlec.ir import Graph, Node, Op
from needlec.passes import compile_program

runtime.set_num_threads(3)  # more threads than cores: workers are often late
sizes = [70_000, 150_000, 400_000, 90_000, 260_000] * 4  # jobs of 5 to 25 chunks
xs = [Node.leaf(Op.INPUT, "float32", (n,), ("arg", i)) for i, n in enumerate(sizes)]
# one kernel per input, run back to back in one native step: a worker finishing one job's last
# chunk races the caller setting up the next
outs = [Node.make(Op.ADD_SCALAR, Node.make(Op.MUL_SCALAR, x, arg=2.0), arg=1.0) for x in xs]
ex = compile_llvm(compile_program(Graph(xs, outs)))
assert ex.source("llvm-unoptimized").count('call void @"needlec_parallel_for"') == len(set(sizes))
arrays = [np.arange(n, dtype=np.float32) + i for i, n in enumerate(sizes)]
want = [a * 2 + 1 for a in arrays]
for i in range(3000):
    got = ex.run(arrays)
    if i % 100 == 0 and not all(np.array_equal(g, w) for g, w in zip(got, want)):
        raise SystemExit(f"wrong result at {i}")
print("ok")
"""


def test_back_to_back_jobs_of_different_sizes_never_hang_or_overlap():
    """Thousands of small parallel loops in a row, their chunk counts changing from job to job,
    on more threads than cores (late workers): each job's chunks run once, within its call."""
    r = subprocess.run([sys.executable, "-c", _STRESS], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr


def test_per_kernel_entries_profile_each_kernel_and_give_the_same_results():
    graph = _gemm_and_conv_graph()
    program = compile_program(graph)
    whole, split = compile_llvm(program), compile_llvm(program, per_kernel=True)
    rng = np.random.default_rng(5)
    arrays = [rng.standard_normal(n.shape).astype(np.float32) for n in graph.inputs]
    for a, b in zip(whole.run(arrays), split.run(arrays), strict=True):
        np.testing.assert_array_equal(a, b)
    times = split.profile(arrays, repeats=3)
    names = sorted(k.name for k in program.kernels.kernels)
    assert sorted(t.name for t in times) == names
    assert all(t.seconds > 0 and t.how == "native" for t in times)
    assert [t.seconds for t in times] == sorted((t.seconds for t in times), reverse=True)
    conv = next(t for t in times if t.kind == "conv")
    assert conv.flops > 0 and "GFLOP/s" in conv.as_text()
    with pytest.raises(ValueError, match="per_kernel"):
        whole.profile(arrays)


def test_a_gemm_with_few_rows_is_cut_into_column_blocks_with_the_same_bits(restore_threads):
    """64 rows and 300 columns: the pool's blocks are blocks of columns (each packs only its
    share of B); every element is still one BLAS dot product over all of K, so the bits do not
    depend on the thread count, and the result matches the reference."""
    a, b = arg("float32", (64, 512), 0), arg("float32", (512, 300), 1)
    graph = Graph([a, b], [Node.make(Op.MATMUL, a, b)])
    ex = compile_llvm(compile_program(graph))
    src = ex.source("llvm-unoptimized")
    assert "needlec_parallel_for" in src
    rng = np.random.default_rng(4)
    arrays = [rng.standard_normal(n.shape).astype(np.float32) for n in graph.inputs]
    runs = []
    for n in (1, 2, 3):
        runtime.set_num_threads(n)
        runs.append(ex.run(arrays)[0].tobytes())
    assert runs[0] == runs[1] == runs[2]
    (want,) = run_graph(graph, arrays)
    np.testing.assert_allclose(ex.run(arrays)[0], want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
