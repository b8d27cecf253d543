"""The CUDA executable's memory and launches over the host stand-in for pycuda (`fake_pycuda`):
buffers placed by the program's memory plan in one device allocation, the launch list replayed
as CUDA graphs (one graph launch per run of device kernels between host kernels), results
unchanged against the reference and the kernel interpreter."""

from __future__ import annotations

import numpy as np
import pytest

from needlec.codegen.reference import run_graph
from needlec.ir import Graph
from needlec.passes import compile_program

from . import test_llvm_ops as T
from .test_cuda_device import host_gpu  # noqa: F401  (the stand-in as pycuda)


def _chain_graph():
    """A graph of several kernels whose temporaries share arena memory."""
    x, w = T.arg("float32", (33, 70), 0), T.arg("float32", (70, 70), 1)
    h = x
    for _ in range(4):  # each product's input dies once it is read: the next reuses its memory
        h = (h @ w).tanh()
    out = h.logsoftmax()
    graph = Graph([x, w], [out, x.sum((0,))])
    rng = np.random.default_rng(0)
    arrays = [
        rng.standard_normal((33, 70)).astype("float32"),
        rng.standard_normal((70, 70)).astype("float32") * 0.1,
    ]
    return graph, arrays


def _check(graph, arrays, got) -> None:
    for g, w in zip(got, run_graph(graph, [a.copy() for a in arrays]), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_buffers_are_placed_by_the_memory_plan_in_one_allocation(host_gpu):  # noqa: F811
    from needlec.codegen.cuda.runtime import DEVICE_ALIGN, CudaExecutable

    graph, arrays = _chain_graph()
    program = compile_program(graph)
    before = host_gpu.stats["allocations"]
    ex = CudaExecutable(program)
    assert host_gpu.stats["allocations"] == before + 1  # one allocation holds every buffer
    plan = ex.plan
    assert plan.alignment % DEVICE_ALIGN == 0
    assert ex.layout.arena_bytes == plan.arena_bytes
    assert plan.arena_bytes < plan.sum_temp_bytes  # temporaries share arena space
    for b, off in plan.offsets.items():
        assert ex.layout.offsets[b] == off and off % DEVICE_ALIGN == 0
    base = min(ex.memory.values())
    assert all((p - base) % DEVICE_ALIGN == 0 for p in ex.memory.values())
    assert ex.layout.total_bytes >= ex.layout.scratch_offset > max(ex.layout.offsets.values())
    _check(graph, arrays, ex.run([a.copy() for a in arrays]))
    _check(graph, arrays, ex.run([a.copy() for a in arrays]))  # replayed over the same arena


def test_a_step_is_one_graph_launch_whatever_its_kernels(host_gpu):  # noqa: F811
    from needlec.codegen.cuda.runtime import CudaExecutable

    graph, arrays = _chain_graph()
    x = T.arg("float32", (40,), 0)
    small = Graph([x], [(x * 2.0).exp()])
    cases = [(graph, arrays), (small, [np.linspace(-1, 1, 40).astype("float32")])]
    counted = []
    for g, a in cases:
        ex = CudaExecutable(compile_program(g))
        launches = sum(kind == "device" for kind, _ in ex.launches)
        _check(g, a, ex.run([v.copy() for v in a]))  # the first run captures the graph
        stats = dict(host_gpu.stats)
        for _ in range(3):
            _check(g, a, ex.run([v.copy() for v in a]))
        assert host_gpu.stats["launches"] == stats["launches"]  # no kernel launched one by one
        assert host_gpu.stats["graph_launches"] == stats["graph_launches"] + 3
        assert host_gpu.stats["graph_kernels"] == stats["graph_kernels"] + 3 * launches
        counted.append(launches)
    assert counted[0] > counted[1]  # host cost per step the same for many kernels as for one


def test_without_graphs_the_launch_list_runs(host_gpu, monkeypatch):  # noqa: F811
    """A pycuda without stream capture (or NEEDLEC_CUDA_GRAPHS=0): one launch per kernel phase,
    the same results."""
    from needlec.codegen.cuda.runtime import CudaExecutable

    graph, arrays = _chain_graph()
    program = compile_program(graph)
    with_graphs = CudaExecutable(program).run([a.copy() for a in arrays])
    host_gpu.install(monkeypatch, graphs=False)
    for ex in (CudaExecutable(program), CudaExecutable(program, graphs=False)):
        launches = sum(kind == "device" for kind, _ in ex.launches)
        got = ex.run([a.copy() for a in arrays])
        stats = dict(host_gpu.stats)
        again = ex.run([a.copy() for a in arrays])
        assert host_gpu.stats["launches"] == stats["launches"] + launches
        assert host_gpu.stats["graph_launches"] == stats["graph_launches"]
        for a, b, c in zip(got, again, with_graphs, strict=True):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(a, c)


def test_host_kernels_split_the_step_into_graphs(host_gpu):  # noqa: F811
    """An integer power of an integer tensor runs on the host: the device kernels before and
    after it are a graph each."""
    from needlec.codegen.cuda.runtime import CudaExecutable

    x, y, m = (T.arg("int32", s, k) for k, s in enumerate([(6, 10), (6, 10), (10, 10)]))
    a = (x @ m).sum((1,))
    p = (a.reshape((6, 1)).broadcast_to((6, 10)) + y) ** y
    graph = Graph([x, y, m], [(p @ m).sum((1,))])
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 3, s).astype("int32") for s in [(6, 10), (6, 10), (10, 10)]]
    ex = CudaExecutable(compile_program(graph))
    kinds = [kind for kind, _ in ex.launches]
    assert "host" in kinds and "device" in kinds
    segments = sum(
        1 for j, k in enumerate(kinds) if k == "device" and (j == 0 or kinds[j - 1] == "host")
    )
    _check(graph, arrays, ex.run([a.copy() for a in arrays]))
    stats = dict(host_gpu.stats)
    _check(graph, arrays, ex.run([a.copy() for a in arrays]))
    assert host_gpu.stats["graph_launches"] == stats["graph_launches"] + segments
    assert host_gpu.stats["launches"] == stats["launches"]


@pytest.mark.parametrize("name", ["mlp"])
def test_training_step_over_the_stand_in_matches_the_kernel_interpreter(host_gpu, name):  # noqa: F811
    """A whole step (parameter updates written over their inputs where the plan donates them)
    through the arena and the graph, twice, against the kernel interpreter."""
    from needlec.codegen.cuda.runtime import CudaExecutable
    from needlec.codegen.kernels import run_kernels
    from needlec.ir.ops import FLOATS

    from .test_cuda_source import lowered_step

    program = lowered_step(name).program
    rng = np.random.default_rng(0)
    arrays = [
        rng.uniform(0.1, 1.0, b.shape).astype(b.dtype)
        if b.dtype in FLOATS
        else rng.integers(0, 2**31, b.shape).astype(b.dtype)
        for b in program.kernels.inputs
    ]
    ex = CudaExecutable(program)
    assert ex.plan.aliases  # the momentum and parameter updates are donated
    want = run_kernels(program.kernels, [a.copy() for a in arrays])
    for _ in range(2):
        got = ex.run([a.copy() for a in arrays])
        for j, (g, w) in enumerate(zip(got, want, strict=True)):
            w = np.asarray(w)
            tol = 1e-4 * max(1.0, float(np.max(np.abs(w), initial=0.0)))
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=tol, err_msg=f"{name} output {j}")
