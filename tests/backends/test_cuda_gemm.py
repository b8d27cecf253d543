"""The float32 CUDA matmul kernels (`needlec/codegen/cuda/gemm.py`): every tiling of the SIMT and
tensor-core (TF32, bf16) variants, run as CUDA C on the host (`cuda_emulation`) against the
reference on odd shapes, transposed, batched, broadcast and masked operands, with and without an
epilogue fused into the kernel; the same sources compiled for sm_90 by nvcc; the autotuner over
the stand-in GPU (`fake_pycuda`) with a fake clock.
"""

from __future__ import annotations

import contextlib
import functools
import os

import numpy as np
import pytest

import needlec as nc
from needlec.codegen.cuda import autotune
from needlec.codegen.cuda.program import header, render_program
from needlec.codegen.reference import run_graph
from needlec.ir import Graph
from needlec.ir.ops import TENSOR_CORE_ROUNDING
from needlec.passes import compile_program

from . import cuda_emulation as emu
from . import test_llvm_ops as T
from .test_cuda_source import needs_nvcc, nvcc_ptx

pytestmark = pytest.mark.skipif(emu.CXX is None, reason="no C++ compiler to run CUDA C on the host")

# name: (a shape, b shape, a permute, b permute); the emulation runs a fiber per GPU thread, so
# the shapes stay small while crossing tile edges (1, 7, 33, 130)
SHAPES = {
    "1x1x1": ((1, 1), (1, 1), None, None),
    "7x33x1": ((7, 33), (33, 1), None, None),
    "33x7x130": ((33, 7), (7, 130), None, None),
    "130x33x7": ((130, 33), (33, 7), None, None),
    "k0": ((5, 0), (0, 3), None, None),
    "a_transposed": ((33, 7), (33, 9), (1, 0), None),
    "b_transposed": ((7, 33), (9, 33), None, (1, 0)),
    "both_transposed_batched": ((2, 9, 7), (2, 5, 9), (0, 2, 1), (0, 2, 1)),
    "broadcast_batch": ((2, 1, 7, 9), (3, 9, 5), None, None),
}
MASKED = {  # A through a view with a mask or odd strides
    "sliced_rows": lambda v: v.slice([(0, 33, 2), (0, 33, 1)]),
    "padded": lambda v: v.pad(((1, 1), (0, 0))).slice([(0, 33, 1), (0, 33, 1)]),
    "broadcast_row": lambda v: v.slice([(0, 1, 1), (0, 33, 1)]).broadcast_to((33, 33)),
}
VARIANTS = [t for mode in autotune.MODES for t in autotune.CANDIDATES[mode]]


def _vid(t: autotune.Tiles) -> str:
    return f"{t.kind}-{t.bm}x{t.bn}x{t.bk}-{t.tm}x{t.tn}"


@contextlib.contextmanager
def tiles(t: autotune.Tiles):
    """Render every float32 matmul with tiling `t` (and its kind as the kernel option)."""
    saved, env = autotune.choose, os.environ.get("NEEDLEC_CUDA_MATMUL")
    autotune.choose = lambda r, c, mode: t
    os.environ["NEEDLEC_CUDA_MATMUL"] = t.kind
    try:
        yield
    finally:
        autotune.choose = saved
        if env is None:
            os.environ.pop("NEEDLEC_CUDA_MATMUL", None)
        else:
            os.environ["NEEDLEC_CUDA_MATMUL"] = env


def _cases():
    """(name, graph, inputs, (n, scale, kinds)) of each case: n and scale the matmul's budget
    terms, kinds how each output's error follows from the core's: "core" (the core, or an
    epilogue that moves no value by more: bias add, relu), "exp", "row-sum"."""
    rng = np.random.default_rng(T.RNG_SEED)
    for name, (a_shape, b_shape, pa, pb) in SHAPES.items():
        x = rng.standard_normal(a_shape).astype("float32")
        y = rng.standard_normal(b_shape).astype("float32")
        a, b, av, bv = T._matmul_graph(a_shape, b_shape, pa, pb, "float32")
        out = av @ bv
        bias = T.arg("float32", out.shape[-1:], 2)
        z = rng.standard_normal(out.shape[-1:]).astype("float32")
        n, scale = T._matmul_budget(*run_graph(Graph([a, b], [av, bv]), [x, y]))
        # the core alone, and with an elementwise epilogue (fused into the kernel)
        yield name, Graph([a, b], [out]), [x, y], (n, scale, ["core"])
        g = Graph([a, b, bias], [out, (out + bias).relu()])
        yield f"{name}-epilogue", g, [x, y, z], (n, scale, ["core", "core"])
    for name, view in MASKED.items():
        x = rng.standard_normal((33, 33)).astype("float32")
        y = rng.standard_normal((33, 7)).astype("float32")
        a, b = T.arg("float32", (33, 33), 0), T.arg("float32", (33, 7), 1)
        n, scale = T._matmul_budget(*run_graph(Graph([a, b], [view(a), b]), [x, y]))
        yield f"masked-{name}", Graph([a, b], [view(a) @ b]), [x, y], (n, scale, ["core"])
    # an epilogue that reduces over the core's output runs as a phase of its own
    a, b = T.arg("float32", (33, 9), 0), T.arg("float32", (9, 7), 1)
    x, y = rng.standard_normal((33, 9)).astype("float32"), rng.standard_normal((9, 7)).astype("f4")
    n, scale = T._matmul_budget(x, y)
    g = Graph([a, b], [(a @ b).exp(), (a @ b).sum((1,))])
    yield "row-sum-epilogue", g, [x, y], (n, scale, ["exp", "row-sum"])


@functools.cache
def _results(t: autotune.Tiles) -> dict:
    found = list(_cases())
    with tiles(t):
        cases = [emu.prepare(g, f"c{j}_") for j, (_, g, _, _) in enumerate(found)]
    outs = emu.run_cases(cases, [arrays for _, _, arrays, _ in found])
    return {f[0]: (f, c, o) for f, c, o in zip(found, cases, outs, strict=True)}


def _bound(t: autotune.Tiles, n: int, scale: np.ndarray) -> np.ndarray:
    eps = float(np.finfo(np.float32).eps)
    u = TENSOR_CORE_ROUNDING.get(t.kind, 0.0)
    return (3 * u + 2 * eps * np.sqrt(max(n, 1))) * scale + 1e-30


@pytest.mark.parametrize("t", VARIANTS, ids=_vid)
@pytest.mark.parametrize("name", [c[0] for c in _cases()])
def test_matmul_kernel_on_host(t, name):
    (_, graph, arrays, (n, scale, kinds)), _, got = _results(t)[name]
    want = run_graph(graph, arrays)
    bound = _bound(t, n, scale)
    for j, (g, w, kind) in enumerate(zip(got, want, kinds, strict=True)):
        assert g.shape == w.shape and g.dtype == w.dtype
        if kind == "exp":  # exp's slope, and its own rounding
            b = bound * np.abs(w) + 4 * np.spacing(np.abs(w))
        elif kind == "row-sum":  # the terms' errors, and the sum's own
            b = 2 * bound.sum(axis=-1) + 1e-5 * np.abs(scale).sum(axis=-1)
        else:
            b = bound
        err = np.abs(g.astype(np.float64) - w)
        assert (err <= b).all(), f"{name} {_vid(t)} output {j}: max error {err.max()}"


@pytest.mark.parametrize("kind", ["tf32", "bf16"])
def test_tensor_core_kernels_round_their_inputs(kind):
    """The tensor-core kernels are less accurate than fp32, by about their inputs' rounding:
    their results are not fp32 results that merely passed a looser check."""
    t = autotune.CANDIDATES[kind][0]
    (_, graph, arrays, (_, scale, _)), _, (got,) = _results(t)["130x33x7"]
    (want,) = run_graph(graph, arrays)
    worst = float(np.max(np.abs(got - want) / scale))
    assert TENSOR_CORE_ROUNDING[kind] / 8 < worst <= 3 * TENSOR_CORE_ROUNDING[kind], worst


@pytest.mark.parametrize("t", VARIANTS[:1], ids=_vid)
def test_elementwise_epilogue_runs_inside_the_matmul_kernel(t):
    """An epilogue elementwise over the core's output adds no phase; a reduction over it does."""
    _, fused, _ = _results(t)["130x33x7-epilogue"]
    (ck,) = fused.cuda.kernels
    assert len(ck.launches) == 1, ck.source
    _, plain, _ = _results(t)["row-sum-epilogue"]
    assert sum(len(ck.launches) for ck in plain.cuda.kernels) > 1


def test_integer_and_float64_matmuls_keep_the_plain_kernel_and_fuse_the_epilogue():
    """float64 and int32 products use the 16x16 tiled kernel; its epilogue runs inside it too."""
    rng = np.random.default_rng(T.RNG_SEED)
    found = []
    for dtype in ("float64", "int32"):
        a, b, c = T.arg(dtype, (33, 9), 0), T.arg(dtype, (9, 7), 1), T.arg(dtype, (7,), 2)
        graph = Graph([a, b, c], [(a @ b) * 3 + c])
        case = emu.prepare(graph, f"{dtype}_")
        assert "acc[" not in case.cuda.source and "ta[" in case.cuda.source, case.cuda.source
        assert sum(len(ck.launches) for ck in case.cuda.kernels) == 1, case.cuda.source
        arrays = [
            T.int_values(dtype, s, rng) if dtype == "int32" else rng.standard_normal(s)
            for s in ((33, 9), (9, 7), (7,))
        ]
        found.append((case, [np.asarray(x, dtype) for x in arrays]))
    outs = emu.run_cases([f[0] for f in found], [f[1] for f in found])
    for (case, arrays), (got,) in zip(found, outs, strict=True):
        (want,) = run_graph(case.graph, arrays)
        if want.dtype.kind == "i":
            np.testing.assert_array_equal(got, want)
        else:
            x, y = np.abs(arrays[0]), np.abs(arrays[1])
            bound = 3 * 2 * np.finfo("f8").eps * 3 * (x @ y) + 4 * np.spacing(np.abs(want))
            assert (np.abs(got - want) <= bound).all()


def test_matmul_option_is_checked(monkeypatch):
    monkeypatch.setenv("NEEDLEC_CUDA_MATMUL", "fp8")
    with pytest.raises(ValueError, match="NEEDLEC_CUDA_MATMUL"):
        autotune.matmul_mode()


@needs_nvcc
def test_every_matmul_variant_compiles_with_nvcc():
    """Every tiling of every kind, with its fused epilogue and masked operands, as one file."""
    parts = [header()]
    graphs = [c[1] for c in _cases() if c[0] in ("130x33x7-epilogue", "masked-padded")]
    graphs.append(next(c[1] for c in _cases() if c[0] == "both_transposed_batched-epilogue"))
    for j, t in enumerate(VARIANTS):
        with tiles(t):
            for i, g in enumerate(graphs):
                kg = compile_program(g).kernels
                parts.append(render_program(kg, prefix=f"v{j}_{i}_", with_header=False).source)
    nvcc_ptx("\n".join(parts), "the matmul variants")


ON_GPU_CASES = ("130x33x7-epilogue", "both_transposed_batched-epilogue", "masked-padded")


@pytest.mark.skipif(not nc.cuda().enabled(), reason="no CUDA device or pycuda")
@pytest.mark.parametrize("t", VARIANTS, ids=_vid)
def test_every_matmul_tiling_on_the_gpu(t):
    """Each tiling on the device (its cases compiled as one module), against the reference."""
    from .test_cuda_device import compile_as_one_module

    found = [c for c in _cases() if c[0] in ON_GPU_CASES]
    with tiles(t):
        exes = compile_as_one_module(found)
    for (name, graph, arrays, (n, scale, _)), ex in zip(found, exes, strict=True):
        got = ex.run([a.copy() for a in arrays])
        bound = _bound(t, n, scale)
        for j, (g, w) in enumerate(zip(got, run_graph(graph, arrays), strict=True)):
            err = np.abs(g.astype(np.float64) - w)
            assert (err <= bound).all(), f"{name} {_vid(t)} output {j}: max error {err.max()}"
        ex.close()


# ---------------------------------------------------------------- the autotuner


def test_heuristic_picks_big_tiles_for_big_problems_and_small_for_small():
    big = autotune.Problem(1, 4096, 4096, 4096, "k,n", "float32", "simt", "sm_90")
    small = autotune.Problem(1, 33, 7, 130, "k,n", "float32", "simt", "sm_90")
    assert (autotune.heuristic(big).bm, autotune.heuristic(big).bn) == (128, 128)
    assert autotune.heuristic(small).bm * autotune.heuristic(small).bn == 64 * 64
    for mode in autotune.MODES:
        assert autotune.heuristic(autotune.Problem(**{**big.__dict__, "mode": mode})).kind == mode


@pytest.fixture
def host_gpu(monkeypatch, tmp_path):
    from needlec.codegen.cuda import runtime

    from . import fake_pycuda

    fake_pycuda.install(monkeypatch)
    monkeypatch.setenv("NEEDLEC_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("NEEDLEC_CUDA_AUTOTUNE", "1")
    monkeypatch.delenv("NEEDLEC_CUDA_MATMUL", raising=False)
    monkeypatch.delenv("NEEDLEC_DISK_CACHE", raising=False)
    caches = (runtime.available, runtime.context, runtime.allocator)
    for f in caches:
        f.cache_clear()
    yield fake_pycuda
    for f in caches:
        f.cache_clear()


def test_autotuner_times_the_candidates_on_the_gpu_picks_the_fastest_and_caches_it(
    host_gpu, monkeypatch, tmp_path
):
    from needlec.codegen.cuda.runtime import CudaExecutable

    fast = autotune.CANDIDATES["simt"][2]
    timed = []

    def clock(t, launch):  # each candidate really runs (on the stand-in); the clock is fake
        launch()
        timed.append(t)
        return 1e-3 if t == fast else 2e-3

    monkeypatch.setattr(autotune, "timer", clock)
    a, b = T.arg("float32", (33, 9), 0), T.arg("float32", (9, 7), 1)
    graph = Graph([a, b], [(a @ b).relu()])
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((33, 9)).astype("f4"), rng.standard_normal((9, 7)).astype("f4")]
    program = compile_program(graph)
    compiles = host_gpu.stats["compiles"]
    ex = CudaExecutable(program)
    assert timed == list(autotune.CANDIDATES["simt"])
    assert host_gpu.stats["compiles"] == compiles + 2  # the candidates as one module, the program
    assert f"float acc[{fast.tm}][{fast.tn}]" in ex.source and f"[{fast.bn + 4}]" in ex.source
    np.testing.assert_allclose(ex.run(arrays)[0], run_graph(graph, arrays)[0], rtol=1e-5, atol=1e-5)
    ex.close()
    # the choice is on disk: the same problem renders the same kernel without timing again
    timed.clear()
    again = CudaExecutable(program)
    assert timed == [] and again.source == ex.source
    again.close()
    # a damaged entry is ignored: the candidates are timed again and the entry rewritten
    c = program.kernels.kernels[0].core
    p = autotune.problem_of(c, "simt", "sm_90")
    entry = next(tmp_path.glob(f"??/{p.key()}.tune"))
    entry.write_bytes(entry.read_bytes()[:-3] + b"xyz")
    assert autotune.load(p) is None
    CudaExecutable(program).close()
    assert timed == list(autotune.CANDIDATES["simt"])
    assert autotune.load(p) == fast


def test_without_a_gpu_the_heuristic_chooses(monkeypatch):
    from needlec.codegen.cuda import runtime

    monkeypatch.setattr(runtime, "available", lambda: False)
    monkeypatch.setattr(autotune, "tune", lambda *a: pytest.fail("tuned without a GPU"))
    a, b = T.arg("float32", (33, 9), 0), T.arg("float32", (9, 7), 1)
    (k,) = compile_program(Graph([a, b], [a @ b])).kernels.kernels
    want = autotune.heuristic(autotune.problem_of(k.core, "simt", "none"))
    assert autotune.choose(None, k.core, "simt") == want
