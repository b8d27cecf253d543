"""16-byte vector loads and stores in the CUDA renderer's elementwise loops: four consecutive
elements a thread where the innermost dim is contiguous and group-aligned, a scalar tail where a
1-D length is not a multiple of 4, per-lane scalar accesses for offset and strided views, and
the plain loop where a pointer is not 16-byte aligned. Checked against the reference on the host
(`cuda_emulation`) and compiled with nvcc where it is on the PATH."""

from __future__ import annotations

import re

import numpy as np
import pytest

from needlec.codegen.cuda.program import header
from needlec.codegen.reference import run_graph
from needlec.ir import Graph

from . import cuda_emulation as emu
from . import test_llvm_ops as T
from .test_cuda_source import needs_nvcc, nvcc_ptx

pytestmark = pytest.mark.skipif(emu.CXX is None, reason="no C++ compiler to run CUDA C on the host")

SIZES = [1, 3, 4, 5, 1023, 1025]


def _chain(dtype: str, n: int):
    x, y = T.arg(dtype, (n,), 0), T.arg(dtype, (n,), 1)
    if dtype == "bool":  # bytes read and written
        return Graph([x, y], [x.eq(y), x.where(y, x.eq(x))])
    return Graph([x, y], [((x * 2 + 1).maximum(y) * y - x), (x - y)])


def _values(dtype: str, shape, rng) -> np.ndarray:
    if dtype == "bool":
        return rng.random(shape) < 0.5
    if dtype in ("int32", "int64"):
        return rng.integers(-50, 50, shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def _views():
    """(name, graph, arrays): views that must take per-lane scalar accesses, and a broadcast."""
    rng = np.random.default_rng(1)
    x = T.arg("float32", (1026,), 0)
    y = T.arg("float32", (1024,), 1)
    yield (
        "offset",
        Graph([x, y], [x.slice([(1, 1025, 1)]) * y]),
        [_values("float32", (1026,), rng), _values("float32", (1024,), rng)],
    )
    z = T.arg("float32", (2048,), 0)
    yield (
        "strided",
        Graph([z, y], [z.slice([(0, 2048, 2)]) + y]),
        [_values("float32", (2048,), rng), _values("float32", (1024,), rng)],
    )
    a = T.arg("float32", (32, 64), 0)
    b = T.arg("float32", (64, 32), 1)
    yield (
        "transposed",
        Graph([a, b], [(a + b.permute((1, 0))).exp()]),
        [_values("float32", (32, 64), rng), _values("float32", (64, 32), rng)],
    )
    c = T.arg("float32", (64,), 1)
    yield (
        "broadcast row",
        Graph([a, c], [a * c.reshape((1, 64)).broadcast_to((32, 64)) + 1.0]),
        [_values("float32", (32, 64), rng), _values("float32", (64,), rng)],
    )
    d = T.arg("float32", (30, 6), 0)
    yield (
        "inner 6",
        Graph([d], [d.permute((1, 0)).tanh()]),
        [_values("float32", (30, 6), rng)],
    )


def _cases():
    rng = np.random.default_rng(0)
    out = []
    for dtype in ("float32", "int32", "float64", "int64", "bool"):
        for n in SIZES:
            g = _chain(dtype, n)
            out.append((f"{dtype}-{n}", g, [_values(dtype, (n,), rng) for _ in range(2)]))
    out += list(_views())
    return out


CASES = _cases()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cases = [emu.prepare(g, f"c{j}_") for j, (_, g, _) in enumerate(CASES)]
    lib = emu.build(cases, str(tmp_path_factory.mktemp("vector")))
    return cases, lib


def _check(graph, arrays, got, what) -> None:
    want = run_graph(graph, [np.asarray(a).copy() for a in arrays])
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, np.asarray(w), rtol=1e-6, atol=1e-6, err_msg=what)


@pytest.mark.parametrize("j", range(len(CASES)), ids=[c[0] for c in CASES])
def test_vector_loops_match_the_reference_aligned_and_not(built, j):
    cases, lib = built
    name, graph, arrays = CASES[j]
    _check(graph, arrays, emu.run(cases[j], lib, arrays), f"{name}, aligned")
    _check(graph, arrays, emu.run(cases[j], lib, arrays, misalign=True), f"{name}, misaligned")


def _source(name: str) -> str:
    j = [c[0] for c in CASES].index(name)
    return emu.prepare(CASES[j][1], "v_").cuda.source


def test_vectors_where_four_elements_fit_scalars_elsewhere():
    for n in SIZES:
        src = _source(f"float32-{n}")
        assert ("float4" in src) == (n >= 4), n
        tail = f"{n // 4 * 4}LL + (long long)blockIdx.x"  # where the scalar tail starts
        assert (tail in src) == (n >= 4 and n % 4 != 0), n
    assert "double2" in _source("float64-1025") and "longlong2" in _source("int64-4")
    assert "int4" in _source("int32-1023") and "uchar4" in _source("bool-5")
    # of a tensor and a transposed one, one is read lane by lane, the other as vectors
    src = _source("transposed")
    loads = re.findall(r"reinterpret_cast<const float4\*>\((\w+)", src)
    assert len(loads) == 1, loads
    assert "make_float4" in src
    assert "float4" in _source("broadcast row")
    for name in ("offset", "strided"):  # the view lane by lane, the other operand a vector
        src = _source(name)
        loads = re.findall(r"reinterpret_cast<const float4\*>\((\w+)", src)
        assert loads == ["b1"], (name, loads)


@needs_nvcc
def test_vector_loops_compile_with_nvcc():
    parts = [emu.prepare(g, f"c{j}_").cuda.source for j, (_, g, _) in enumerate(CASES)]
    nvcc_ptx(header() + "\n".join(parts), "the vector-loop cases")
