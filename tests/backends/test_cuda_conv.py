"""Convolution cores as CUDA C (`needlec/codegen/cuda/conv.py`): implicit GEMMs for floats, direct
kernels for integers, run on the host (`cuda_emulation`: one fiber per GPU thread, so the shapes
stay small) against the reference interpreter under each op's tolerance, and compiled with
`nvcc -arch=sm_90 -ptx` where nvcc is on the PATH.

The table covers strides 1, 2, 4; padding 0 to 3; kernels 1, 3, 7 and a dilated one; batches 1
and 3; 1, 3 and 17 channels; ResNet9's stem scaled down; a weight gradient whose sum is split
over blocks; and the operand views the passes produce, from hand-built views and from a traced
convolutional training step.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest

import needlec as nc
from needlec.codegen.cuda.program import header, render_program
from needlec.codegen.reference import run_graph
from needlec.ir import Graph, Op
from needlec.ir.semantics import EVAL
from needlec.passes import compile_program

from . import cuda_emulation as emu
from . import test_llvm_ops as T
from .test_cuda_device import compile_as_one_module
from .test_cuda_host import compare
from .test_cuda_source import NVCC, needs_nvcc, nvcc_ptx

needs_cxx = pytest.mark.skipif(emu.CXX is None, reason="no C++ compiler to run CUDA C on the host")

# name: (input NHWC, weight (KH, KW, Cin, Cout), stride, padding, dilation of the weight)
CASES = {
    "3x3_s1_p1_b3": ((3, 7, 7, 3), (3, 3, 3, 17), 1, 1, 0),
    "3x3_s2_p0_b1": ((1, 9, 8, 17), (3, 3, 17, 3), 2, 0, 0),
    "3x3_s2_p3_cin1": ((3, 6, 7, 1), (3, 3, 1, 3), 2, 3, 0),
    "3x3_s4_p2": ((3, 9, 9, 3), (3, 3, 3, 17), 4, 2, 0),
    "1x1_s1_p0": ((3, 5, 5, 17), (1, 1, 17, 17), 1, 0, 0),
    "1x1_s2_p2_cout1": ((1, 7, 7, 3), (1, 1, 3, 1), 2, 2, 0),
    "7x7_s1_p3": ((1, 9, 9, 1), (7, 7, 1, 3), 1, 3, 0),
    "7x7_s2_p1": ((3, 11, 13, 3), (7, 7, 3, 1), 2, 1, 0),
    "resnet9_stem": ((3, 16, 16, 3), (7, 7, 3, 16), 4, 3, 0),  # batch 128 x 32 x 32, scaled
    "kernel_larger_than_input": ((1, 3, 3, 3), (7, 7, 3, 3), 1, 3, 0),
    "split_k_weight_grad": ((3, 8, 8, 3), (3, 3, 3, 5), 1, 1, 0),  # K = 192 over 3 blocks
    "one_pixel_deep": ((3, 1, 1, 33), (3, 3, 33, 17), 1, 1, 0),  # ResNet9's last stage
    "split_phases_s2": ((3, 2, 2, 33), (3, 3, 33, 40), 2, 1, 0),  # 4 phases, K split in 3
    "dilated_3x3_s1": ((1, 9, 9, 3), (3, 3, 3, 3), 1, 2, 1),  # taps 2 apart
    "dilated_3x3_s2": ((3, 10, 9, 3), (3, 3, 3, 17), 2, 1, 2),
}
FLOAT64 = ["3x3_s2_p3_cin1", "7x7_s2_p1", "split_k_weight_grad"]


def _case(name: str, dtype: str):
    """(graph, inputs, budgets) of the conv, its input gradient and its weight gradient."""
    x_shape, w_shape, stride, pad, dil = CASES[name]
    rng = np.random.default_rng(T.RNG_SEED)
    if dtype in T.INTS:
        x, w = T.int_values(dtype, x_shape, rng, True), T.int_values(dtype, w_shape, rng, True)
    else:
        x = rng.standard_normal(x_shape).astype(dtype)
        w = rng.standard_normal(w_shape).astype(dtype)
    xs, ws = T.arg(dtype, x_shape, 0), T.arg(dtype, w_shape, 1)
    wd = ws.dilate((0, 1), dil)  # a buffer of its own: the convolutions see a plain weight
    wv = EVAL[Op.DILATE](w, ((0, 1), dil)) if dil else w
    y_shape = EVAL[Op.CONV](x, wv, (stride, pad)).shape
    g = (
        T.int_values(dtype, y_shape, rng, True)
        if dtype in T.INTS
        else rng.standard_normal(y_shape).astype(dtype)
    )
    gs = T.arg(dtype, y_shape, 2)
    outs = [
        xs.conv(wd, stride, pad),
        gs.conv_input_grad(wd, stride, pad, x_shape[1:3]),
        xs.conv_weight_grad(gs, stride, pad, wd.shape[:2]),
    ]
    if dtype in T.INTS:
        return Graph([xs, ws, gs], outs), [x, w, g], "exact"
    ax, aw, ag = (np.abs(v).astype("f8") for v in (x, wv, g))
    kh, kw = wd.shape[:2]
    budgets = [
        (kh * kw * x_shape[3], EVAL[Op.CONV](ax, aw, (stride, pad))),
        (kh * kw * w_shape[3], EVAL[Op.CONV_INPUT_GRAD](ag, aw, (stride, pad, *x_shape[1:3]))),
        (math.prod(y_shape[:3]), EVAL[Op.CONV_WEIGHT_GRAD](ax, ag, (stride, pad, kh, kw))),
    ]
    return Graph([xs, ws, gs], outs), [x, w, g], budgets


def _view_cases():
    """The forward conv over hand-built views of its operands, and both gradients with the
    input and the output gradient held as NCHW arrays read through a permute. Budgets: the
    graph run on the inputs' magnitudes (views commute with abs)."""
    for name, (xv, wv) in T.CONV_VIEWS.items():
        rng = np.random.default_rng(T.RNG_SEED)
        x = rng.standard_normal((3, 9, 9, 3)).astype("float32")
        w = rng.standard_normal((3, 3, 3, 4)).astype("float32")
        xs, ws = T.arg("float32", x.shape, 0), T.arg("float32", w.shape, 1)
        a, b = (xv or (lambda v: v))(xs), (wv or (lambda v: v))(ws)
        graph = Graph([xs, ws], [a.conv(b, 2, 1)])
        yield f"view-{name}", graph, [x, w], _budgets(graph, [x, w], [math.prod(b.shape[:3])])
    for name in ("3x3_stride2", "7x7_stride4_pad3", "two_pixels_stride2"):
        (x, x_held, w, held, gy), (xs, xv, ws, gs), g, (stride, pad) = T._conv_grad_case(
            name, "float32", "nchw"
        )
        dx = g.conv_input_grad(ws, stride, pad, x.shape[1:3])
        dw = xv.conv_weight_grad(g, stride, pad, w.shape[:2])
        graph = Graph([xs, ws, gs], [dx, dw])
        terms = [w.shape[0] * w.shape[1] * w.shape[3], math.prod(gy.shape[:3])]
        yield (
            f"nchw-grads-{name}",
            graph,
            [x_held, w, held],
            _budgets(graph, [x_held, w, held], terms),
        )


def _budgets(graph: Graph, arrays: list, terms: list[int]) -> list:
    scales = run_graph(graph, [np.abs(a) for a in arrays])
    return [(n, s.astype("f8")) for n, s in zip(terms, scales, strict=True)]


def _all_cases():
    for name in CASES:
        yield (f"{name}-float32", *_case(name, "float32"))
    for name in FLOAT64:
        yield (f"{name}-float64", *_case(name, "float64"))
    for name in ("3x3_s2_p3_cin1", "resnet9_stem"):
        yield (f"{name}-int32", *_case(name, "int32"))
    yield from _view_cases()


@functools.cache
def _results() -> dict:
    found = list(_all_cases())
    cases = [emu.prepare(g, f"v{j}_") for j, (_, g, _, _) in enumerate(found)]
    outs = emu.run_cases(cases, [arrays for _, _, arrays, _ in found])
    return {name: (g, a, b, got) for (name, g, a, b), got in zip(found, outs, strict=True)}


IDS = [name for name, *_ in _all_cases()]


@needs_cxx
@pytest.mark.parametrize("name", IDS)
def test_conv_cores_on_host_match_the_reference(name):
    graph, arrays, budgets, got = _results()[name]
    compare(name, graph, arrays, budgets, got)


@functools.cache
def _sources() -> str:
    parts = []
    for j, (_, graph, _, _) in enumerate(_all_cases()):
        program = compile_program(graph)
        parts.append(render_program(program.kernels, prefix=f"v{j}_", with_header=False).source)
    return header() + "\n".join(parts)


@needs_nvcc
def test_conv_cores_compile_with_nvcc():
    assert NVCC is not None
    nvcc_ptx(_sources(), "the convolution cases")


def _core_kernels(graph: Graph) -> dict:
    """op name -> the CUDA kernel of the graph's convolution core of that op."""
    program = compile_program(graph)
    cuda = render_program(program.kernels, prefix="t_", with_header=False)
    return {
        k.core.op.name: ck
        for k, ck in zip(program.kernels.kernels, cuda.kernels, strict=True)
        if k.core is not None and k.core.op in (Op.CONV, Op.CONV_INPUT_GRAD, Op.CONV_WEIGHT_GRAD)
    }


def test_float_convolutions_are_implicit_gemms_and_integer_ones_direct():
    graph, _, _ = _case("3x3_s2_p3_cin1", "float32")
    floats = _core_kernels(graph)
    assert set(floats) == {"CONV", "CONV_INPUT_GRAD", "CONV_WEIGHT_GRAD"}
    for op, ck in floats.items():
        assert "__shared__ float sa[" in ck.source and "fmaf(" in ck.source, op
        assert ck.launches[0].fixed_block and ck.launches[0].block == 256, op
    # the strided input gradient: one GEMM per phase (h mod 2, w mod 2), each over its own taps
    assert "const int phase = z / " in floats["CONV_INPUT_GRAD"].source
    graph, _, _ = _case("3x3_s2_p3_cin1", "int32")
    for op, ck in _core_kernels(graph).items():
        assert "__shared__" not in ck.source and len(ck.launches) == 1, op


def test_a_long_weight_gradient_sum_is_split_over_blocks_then_added_in_order():
    graph, _, _ = _case("split_k_weight_grad", "float32")
    ck = _core_kernels(graph)["CONV_WEIGHT_GRAD"]
    assert len(ck.launches) == 2 and ck.scratch_bytes > 0
    assert "for (int z = 1; z < 3; ++z)" in ck.source


# ---------------------------------------------------------------- a traced convolutional step


@functools.cache
def _conv_step():
    """A small convolutional training step (NCHW convolutions with stride and padding,
    BatchNorm, ReLU, a linear head; SGD with momentum), traced and optimized."""
    import needlec as nc
    from benchmarks.bench_train_step import make_step
    from needlec import nn, optim

    np.random.seed(0)
    model = nn.Sequential(
        nn.Conv(3, 5, 3, stride=2),
        nn.BatchNorm2d(5),
        nn.ReLU(),
        nn.Conv(5, 4, 3, stride=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 5 * 5, 3),
    )
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    step = nc.jit(make_step(model, opt, nn.SoftmaxLoss()))
    rng = np.random.default_rng(1)
    x = rng.random((2, 3, 10, 10), dtype="float32")
    y = rng.integers(0, 3, 2).astype("float32")
    return step.lower(nc.Tensor(x), nc.Tensor(y)).program


@needs_cxx
def test_traced_conv_step_on_host_matches_the_kernel_interpreter():
    """The step's kernels, its convolution cores reading the views the passes made (the NCHW
    input read as NHWC), run as CUDA C on the host against the kernel interpreter."""
    from needlec.codegen.kernels import run_kernels

    program = _conv_step()
    cores = [k.core for k in program.kernels.kernels if k.core is not None]
    convs = [c for c in cores if c.op in (Op.CONV, Op.CONV_INPUT_GRAD, Op.CONV_WEIGHT_GRAD)]
    assert {c.op for c in convs} == {Op.CONV, Op.CONV_INPUT_GRAD, Op.CONV_WEIGHT_GRAD}
    assert any(not ld.view.is_contiguous for c in convs for ld in c.operands)
    rng = np.random.default_rng(0)
    arrays = [
        rng.uniform(0.1, 1.0, b.shape).astype(b.dtype)
        if b.dtype.startswith("float")
        else rng.integers(0, 3, b.shape).astype(b.dtype)
        for b in program.kernels.inputs
    ]
    case = emu.Case(None, program, render_program(program.kernels, prefix="s_", with_header=False))
    (got,) = emu.run_cases([case], [arrays])
    want = run_kernels(program.kernels, [a.copy() for a in arrays])
    for j, (g, w) in enumerate(zip(got, want, strict=True)):
        w = np.asarray(w)
        tol = 1e-4 * max(1.0, float(np.max(np.abs(w), initial=0.0))) if w.dtype.kind == "f" else 0
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=tol, err_msg=f"output {j}")


@needs_nvcc
def test_traced_conv_step_compiles_with_nvcc():
    program = _conv_step()
    source = render_program(program.kernels, prefix="s_", with_header=True).source
    nvcc_ptx(source, "the convolutional training step")


@needs_cxx
def test_64_bit_index_math_matches_the_reference(monkeypatch):
    """Index math in 64 bits (chosen for operands of 2^30 elements or more, forced here on
    small ones) computes the same convolutions."""
    from needlec.codegen.cuda import conv

    monkeypatch.setattr(conv, "INDEX_LIMIT", 0)
    found = [(n, *_case(n, "float32")) for n in ("3x3_s2_p3_cin1", "split_phases_s2")]
    cases = [emu.prepare(g, f"w{j}_") for j, (_, g, _, _) in enumerate(found)]
    assert all("const long long kbeg" in c.cuda.source for c in cases)
    outs = emu.run_cases(cases, [arrays for _, _, arrays, _ in found])
    for (name, graph, arrays, budgets), got in zip(found, outs, strict=True):
        compare(name, graph, arrays, budgets, got)


@needs_cxx
def test_strided_input_gradient_forms_no_product_the_reference_does_not():
    """A phase's taps past the kernel's edge read 0 from both operands: an inf in the output
    gradient reaches only the input positions whose windows hold it, as in the reference."""
    x_shape, w_shape, stride, pad = (1, 7, 7, 2), (3, 3, 2, 3), 2, 1
    rng = np.random.default_rng(T.RNG_SEED)
    w = rng.standard_normal(w_shape).astype("float32")
    g = rng.standard_normal((1, 4, 4, 3)).astype("float32")
    g[0, 1, 2, 1] = np.inf
    gs, ws = T.arg("float32", g.shape, 0), T.arg("float32", w_shape, 1)
    graph = Graph([gs, ws], [gs.conv_input_grad(ws, stride, pad, x_shape[1:3])])
    (got,) = emu.run_cases([emu.prepare(graph, "f_")], [[g, w]])
    (want,) = run_graph(graph, [g, w])
    assert np.isfinite(want).sum() > 0 and not np.isfinite(want).all()
    np.testing.assert_array_equal(np.isfinite(got[0]), np.isfinite(want))
    budgets = _budgets(graph, [np.where(np.isinf(g), 0, g), w], [9 * 3])
    compare("inf-gradient", graph, [g, w], budgets, got)


# ---------------------------------------------------------------- on a GPU

on_gpu = pytest.mark.skipif(not nc.cuda().enabled(), reason="no CUDA device or pycuda")


def _resnet9_layers():
    """ResNet9's convolutions at batch 4, forward and both gradients: grids of many blocks."""
    from benchmarks.gpu.bench_conv import LAYERS, graphs

    for name, cin, cout, k, stride, side in LAYERS:
        rng = np.random.default_rng(T.RNG_SEED)
        gs = graphs(4, cin, cout, k, stride, side, name.startswith("stem"))
        for op, (graph, _) in gs.items():
            arrays = [rng.standard_normal(x.shape).astype("float32") for x in graph.inputs]
            n = {"forward": k * k * cin, "input_grad": k * k * cout}.get(op)
            n = n or math.prod(graph.inputs[1].shape[:3])  # the weight gradient: N * Ho * Wo
            yield (
                f"resnet9-{name.replace(' ', '_')}-{op}",
                graph,
                arrays,
                _budgets(graph, arrays, [n]),
            )


@functools.cache
def _gpu_cases() -> dict:
    """Case id -> (executable, graph, inputs, budgets), every program in one module."""
    found = [*_all_cases(), *_resnet9_layers()]
    exes = compile_as_one_module(found)
    return {name: (ex, g, a, b) for (name, g, a, b), ex in zip(found, exes, strict=True)}


@on_gpu
@pytest.mark.parametrize("name", IDS + [name for name, *_ in _resnet9_layers()])
def test_conv_cores_on_the_gpu_match_the_reference(name):
    ex, graph, arrays, budgets = _gpu_cases()[name]
    got = ex.run([np.asarray(a).copy() for a in arrays])
    compare(name, graph, arrays, budgets, got)
    again = ex.run([np.asarray(a).copy() for a in arrays])  # split sums in a fixed order
    for a, b in zip(got, again, strict=True):
        np.testing.assert_array_equal(a, b)


@needs_cxx
def test_elementwise_epilogue_runs_inside_the_conv_kernels():
    """A bias and relu after a convolution (implicit GEMM), a scale after a strided input
    gradient (phases) and after a split weight gradient (in the launch adding the splits), and
    after an integer convolution (direct kernel): no phase of their own, results within each
    core's budget (integers exact)."""
    found = []
    for name, dtype in (("3x3_s2_p3_cin1", "float32"), ("split_k_weight_grad", "float32")):
        graph, arrays, budgets = _case(name, dtype)
        xs, ws, gs = graph.inputs
        bias = T.arg(dtype, (graph.outputs[0].shape[3],), 3)
        y, dx, dw = graph.outputs
        outs = [(y + bias.broadcast_to(y.shape)).relu(), dx * 3.0, dw * 0.5]
        arrays = [*arrays, np.random.default_rng(1).standard_normal(bias.shape).astype(dtype)]
        scaled = [(n, s) for n, s in budgets]
        scaled = [(n, 2 * s, Op.CONV) for n, s in scaled[:1]] + [
            (scaled[1][0], 3 * scaled[1][1], Op.CONV_INPUT_GRAD),
            (scaled[2][0], 0.5 * scaled[2][1], Op.CONV_WEIGHT_GRAD),
        ]
        found.append((name, Graph([xs, ws, gs, bias], outs), arrays, scaled, graph))
    graph, arrays, _ = _case("3x3_s2_p3_cin1", "int32")
    outs = [o * 3 for o in graph.outputs]
    found.append(("int32", Graph(graph.inputs, outs), arrays, "exact", graph))
    cases = [emu.prepare(g, f"e{j}_") for j, (_, g, *_) in enumerate(found)]
    for (name, *_, plain), case in zip(found, cases, strict=True):
        launches = [len(ck.launches) for ck in case.cuda.kernels]
        alone = [len(ck.launches) for ck in emu.prepare(plain, "p_").cuda.kernels]
        assert launches == alone and len(launches) == 3, (name, launches, alone)
    found = [f[:4] for f in found]
    outs = emu.run_cases(cases, [arrays for _, _, arrays, _ in found])
    for (name, graph, arrays, budgets), got in zip(found, outs, strict=True):
        compare(name, graph, arrays, budgets, got)
