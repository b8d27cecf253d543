"""The CUDA backend on a GPU: the op table's cases and training steps run as generated CUDA C
through pycuda, against the reference interpreter (cases and budgets of `test_cuda_host`), and
random draws bit for bit the CPU's. Skipped where `nc.cuda().enabled()` is False; the caching
allocator's bookkeeping is checked everywhere."""

from __future__ import annotations

import functools

import numpy as np
import pytest

import needlec as nc
from needlec.codegen.cuda.runtime import CachingAllocator
from needlec.passes import compile_program

from . import test_cuda_host as H

on_gpu = pytest.mark.skipif(not nc.cuda().enabled(), reason="no CUDA device or pycuda")


def test_caching_allocator_reuses_freed_blocks():
    made = []
    alloc = CachingAllocator(lambda n: made.append(n) or len(made))
    c1, a = alloc.alloc(1000)
    c2, b = alloc.alloc(1024)
    assert c1 == c2 == 1024 and a != b and made == [1024, 1024]
    alloc.free(c1, a)
    assert alloc.alloc(700) == (1024, a)  # same class: the cached block, no new allocation
    assert alloc.alloc(100)[0] == CachingAllocator.MIN_BYTES
    assert alloc.allocations == 3 and alloc.cached_bytes() == 0


def compile_as_one_module(found: list) -> list:
    """The executables of cases `found` ((name, graph, arrays, budgets) each), every program
    rendered into one module: one nvcc call for them all."""
    import pycuda.driver as drv

    from needlec.codegen.cuda.program import header, render_program
    from needlec.codegen.cuda.runtime import CudaExecutable, compile_source

    programs = [compile_program(g) for _, g, _, _ in found]
    parts = [header()]
    parts += [
        render_program(p.kernels, prefix=f"c{j}_", with_header=False).source
        for j, p in enumerate(programs)
    ]
    module = drv.module_from_buffer(compile_source("\n".join(parts)))
    return [CudaExecutable(p, prefix=f"c{j}_", module=module) for j, p in enumerate(programs)]


def _build_group(group: str) -> dict:
    """Case id -> (executable, graph, inputs, budgets): the group's programs compiled as one
    module (one nvcc call a group)."""
    found = list(H.GROUPS[group]())
    exes = compile_as_one_module(found)
    return {name: (ex, g, a, b) for (name, g, a, b), ex in zip(found, exes, strict=True)}


_group = functools.cache(_build_group)


def _executable(group: str, name: str):
    return _group(group)[name]


@on_gpu
@pytest.mark.parametrize(
    "group,name", [(g, n) for g in H.GROUPS for n in H._ids(g)], ids=lambda x: str(x)
)
def test_op_table_on_the_gpu(group, name):
    ex, graph, arrays, budgets = _executable(group, name)
    got = ex.run([np.asarray(a).copy() for a in arrays])
    got_again = ex.run([np.asarray(a).copy() for a in arrays])  # a fixed launch list, replayed
    H.compare(name, graph, arrays, budgets, got)
    for a, b in zip(got, got_again, strict=True):
        np.testing.assert_array_equal(a, b)


@on_gpu
@pytest.mark.parametrize("name", ["mlp", "mlpresnet", "lstm", "transformer", "resnet9"])
def test_training_step_on_the_gpu_matches_the_kernel_interpreter(name):
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
    got = CudaExecutable(program).run([a.copy() for a in arrays])
    want = run_kernels(program.kernels, [a.copy() for a in arrays])
    for j, (g, w) in enumerate(zip(got, want, strict=True)):
        w = np.asarray(w)
        tol = 1e-4 * max(1.0, float(np.max(np.abs(w), initial=0.0))) if w.dtype.kind == "f" else 0
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=tol, err_msg=f"{name} output {j}")


@on_gpu
def test_jit_on_cuda_tensors_runs_the_cuda_backend():
    x = np.random.default_rng(0).standard_normal((64, 32)).astype("float32")
    f = nc.jit(lambda t: (t.exp() * 2.0).sum((1,)))
    got = f(nc.Tensor(x, device=nc.cuda())).numpy()
    np.testing.assert_allclose(got, (np.exp(x) * 2).sum(1), rtol=1e-5)


@pytest.fixture
def host_gpu(monkeypatch, tmp_path):
    """The runtime over `fake_pycuda` (the host as the GPU), with a disk cache of its own."""
    from needlec.codegen.cuda import runtime

    from . import cuda_emulation, fake_pycuda

    if cuda_emulation.CXX is None:
        pytest.skip("no C++ compiler to stand in for the GPU")
    fake_pycuda.install(monkeypatch)
    monkeypatch.setenv("NEEDLEC_CACHE_DIR", str(tmp_path))
    caches = (runtime.available, runtime.context, runtime.allocator)
    for f in caches:
        f.cache_clear()
    yield fake_pycuda
    for f in caches:
        f.cache_clear()


def test_runtime_runs_a_program_and_replays_it_without_allocating(host_gpu):
    """The executable over the host stand-in: results match the reference; a second run
    allocates nothing; a second executable of the same program reuses the first one's freed
    memory and finds its compiled module on disk."""
    from needlec.codegen.cuda.runtime import CudaExecutable, available
    from needlec.codegen.reference import run_graph
    from needlec.ir import Graph

    assert available()
    x, w = H.T.arg("float32", (33, 70), 0), H.T.arg("float32", (70, 5), 1)
    graph = Graph([x, w], [x.logsoftmax(), (x @ w).relu(), x.sum((0,))])
    rng = np.random.default_rng(0)
    arrays = [
        rng.standard_normal((33, 70)).astype("float32"),
        rng.standard_normal((70, 5)).astype("float32"),
    ]
    program = compile_program(graph)
    ex = CudaExecutable(program)
    got = ex.run([a.copy() for a in arrays])
    for g, w_ in zip(got, run_graph(graph, arrays), strict=True):
        np.testing.assert_allclose(g, w_, rtol=1e-5, atol=1e-4)
    made = host_gpu.stats["allocations"]
    again = ex.run([a.copy() for a in arrays])
    assert host_gpu.stats["allocations"] == made  # steady state: nothing allocated
    for a, b in zip(got, again, strict=True):
        np.testing.assert_array_equal(a, b)
    ex.close()
    compiles = host_gpu.stats["compiles"]
    CudaExecutable(program).run([a.copy() for a in arrays])
    assert host_gpu.stats["compiles"] == compiles  # the module came from the disk cache
    assert host_gpu.stats["allocations"] == made  # the freed buffers were reused


def test_jit_on_cuda_tensors_over_the_stand_in(host_gpu, monkeypatch):
    """A jitted function of tensors on cuda() runs the CUDA backend (here over the stand-in)."""
    from needlec import backend_ndarray

    monkeypatch.setattr(backend_ndarray, "_cuda_available", lambda: True)
    monkeypatch.setitem(
        backend_ndarray._DEVICES, "cuda", backend_ndarray.BackendDevice("cuda", lambda: True)
    )
    monkeypatch.delenv("NEEDLEC_EXECUTE", raising=False)
    x = np.random.default_rng(0).standard_normal((64, 32)).astype("float32")
    f = nc.jit(lambda t: (t.exp() * 2.0).sum((1,)))
    before = host_gpu.stats["compiles"]
    got = f(nc.Tensor(x, device=nc.cuda())).numpy()
    assert host_gpu.stats["compiles"] == before + 1
    np.testing.assert_allclose(got, (np.exp(x) * 2).sum(1), rtol=1e-5)
    for _ in range(2):  # cached calls run the CUDA backend too, never the CPU's code
        launches = host_gpu.stats["launches"] + host_gpu.stats["graph_launches"]
        got = f(nc.Tensor(x, device=nc.cuda())).numpy()
        assert host_gpu.stats["launches"] + host_gpu.stats["graph_launches"] > launches
        np.testing.assert_allclose(got, (np.exp(x) * 2).sum(1), rtol=1e-5)


def test_a_group_compiled_as_one_module_over_the_stand_in(host_gpu):
    """Programs sharing one module (the GPU op-table tier's one nvcc call a group)."""
    before = host_gpu.stats["compiles"]
    built = _build_group("random")
    assert host_gpu.stats["compiles"] == before + 1
    for name, (ex, graph, arrays, budgets) in built.items():
        H.compare(name, graph, arrays, budgets, ex.run([np.asarray(a).copy() for a in arrays]))
