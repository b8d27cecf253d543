"""CUDA source of every kernel of the op table and of the library's training steps, generated
everywhere and compiled for sm_90 with nvcc where it is on the PATH.

The op-table cases are the LLVM backend's (`test_llvm_ops`): each builds a small graph, runs it
through the pass pipeline, and renders every kernel as CUDA C. Generation runs in every tier; the
nvcc check compiles all the cases of a group as one file (`nvcc -arch=sm_90 -ptx`: nvcc starts
slowly, so a few large files rather than hundreds of small ones). Running the kernels needs a GPU
(`nc.cuda().enabled()`); those tests live with the device tests and skip without one.
"""

from __future__ import annotations

import functools
import itertools
import os
import shutil
import subprocess
import tempfile

import numpy as np
import pytest

import needlec as nc
from needlec.codegen.cuda import cexpr, render
from needlec.codegen.cuda.program import CudaProgram, header, render_program
from needlec.ir import ELEMENTWISE, Graph, Node, Op, stack
from needlec.ir.ops import DTYPES, FLOATS
from needlec.passes import compile_program

from . import test_llvm_ops as T

NVCC = shutil.which("nvcc")
needs_nvcc = pytest.mark.skipif(
    NVCC is None, reason="nvcc is not on the PATH: CUDA source is generated but not compiled"
)


# ---------------------------------------------------------------- coverage


@pytest.mark.parametrize("op", sorted(ELEMENTWISE, key=lambda o: o.name), ids=lambda o: o.name)
def test_every_elementwise_op_has_a_cuda_row(op):
    assert op in render.LOWER, f"{op} has no row in needlec.codegen.cuda.cexpr.LOWER"
    assert callable(render.LOWER[op])


def test_cuda_table_has_no_stray_rows():
    assert set(cexpr.LOWER) <= set(ELEMENTWISE)


# ---------------------------------------------------------------- the cases


def _elementwise():
    for p in T._cases():
        op, dtype, scalar = p.values
        xs, ys, cs = T.arg(dtype, (T.N,), 0), T.arg(dtype, (T.N,), 1), T.arg("bool", (T.N,), 2)
        yield p.id, ([xs, ys, cs], T._build(op, xs, ys, cs, scalar))


def _reductions():
    for p in T.RED_CASES:
        op, dtype, shape = p.values
        x = T.arg(dtype, shape, 0)
        subsets = T._subsets(len(shape))
        if op is Op.MAX:  # numpy has no max of no elements
            subsets = [a for a in subsets if all(shape[i] for i in a)]
        yield p.id, ([x], [Node.make(op, x, arg=a) for a in subsets])


def _views():
    for name, (shape, chain) in T.VIEWS.items():
        for dtype in ("float64", "int32", "bool"):
            x = T.arg(dtype, shape, 0)
            v = chain(x)
            outs = [v, v.cast("int64")]
            if dtype != "bool":
                outs += [v * 3, -v, v + v.flip(tuple(range(v.ndim))), v.sum(), v.max()]
            yield f"{name}-{dtype}", ([x], [o for o in outs if o is not x])


def _mixed_and_sizes():
    for a, b in T.MIXED:
        xs, ys = T.arg(a, (T.N,), 0), T.arg(b, (T.N,), 1)
        outs = [xs + ys, xs * ys]
        if "bool" not in (a, b):
            outs += [xs / ys, xs.maximum(ys), xs < ys, xs.eq(ys), (xs < ys).where(xs, ys)]
        yield f"mixed-{a}-{b}", ([xs, ys], outs)
    for shape, dtype in itertools.product(T.SHAPES, ["float32", "int32"]):
        xs, ys = T.arg(dtype, shape, 0), T.arg(dtype, shape, 1)
        outs = [xs + ys, xs * 2.5, (xs < ys).where(xs, ys), xs.exp(), xs.sqrt(), xs**3, -xs]
        yield f"shape-{'x'.join(map(str, shape)) or '0d'}-{dtype}", ([xs, ys], outs)


def _matmuls():
    for name, (a_shape, b_shape, pa, pb) in T.MATMULS.items():
        for dtype in FLOATS:
            a, b, av, bv = T._matmul_graph(a_shape, b_shape, pa, pb, dtype)
            out = av @ bv
            yield f"matmul-{name}-{dtype}", ([a, b], [out, out.relu() * 2.0])
    for name, (a_shape, b_shape, pa, pb) in T.INT_MATMULS.items():
        for dtype in ("int32", "int64", "bool"):
            a, b, av, bv = T._matmul_graph(a_shape, b_shape, pa, pb, dtype)
            yield f"matmul-{name}-{dtype}", ([a, b], [av @ bv])
    for name, view in T.MATMUL_VIEWS.items():
        a, b = T.arg("float32", (9, 9), 0), T.arg("float32", (9, 4), 1)
        yield f"matmul-view-{name}", ([a, b], [view(a) @ b])


def _convs():
    for name, (xs_shape, w_shape, stride, pad) in T.INT_CONVS.items():
        for dtype in ("float32", "float64", "int32"):
            xs, ws = T.arg(dtype, xs_shape, 0), T.arg(dtype, w_shape, 1)
            y = xs.conv(ws, stride, pad)
            gs = T.arg(dtype, y.shape, 2)
            dx = gs.conv_input_grad(ws, stride, pad, xs_shape[1:3])
            dw = xs.conv_weight_grad(gs, stride, pad, w_shape[:2])
            yield f"conv-{name}-{dtype}", ([xs, ws, gs], [y, y.relu(), dx, dw])
    for name, (xv, wv) in T.CONV_VIEWS.items():
        xs, ws = T.arg("float32", (3, 9, 9, 3), 0), T.arg("float32", (3, 3, 3, 4), 1)
        a, b = (xv or (lambda v: v))(xs), (wv or (lambda v: v))(ws)
        yield f"conv-view-{name}", ([xs, ws], [a.conv(b, 2, 1)])


def _random():
    seed = T.arg("int64", (), 0)
    x = T.arg("float32", (5, 7), 1)
    outs = []
    for dtype, dist in itertools.product(FLOATS, ("uniform", "normal")):
        r = Node.leaf(Op.RAND, dtype, (5, 7), (dist, 3), src=(seed,))
        outs.append(r * 2.0 if dtype == "float64" else r * x)
    yield "random", ([seed, x], outs)
    yield "stack", ([x], [stack([x, x.exp()], 1).sum((1,))])


GROUPS = {
    "elementwise": _elementwise,
    "reductions": _reductions,
    "views": _views,
    "mixed_and_sizes": _mixed_and_sizes,
    "matmuls": _matmuls,
    "convs": _convs,
    "random": _random,
}


@functools.cache
def group_sources(group: str) -> dict[str, CudaProgram]:
    """Case id -> its kernels as CUDA C (no header; names prefixed by the case's number)."""
    out = {}
    for j, (name, (inputs, outputs)) in enumerate(GROUPS[group]()):
        program = compile_program(Graph(inputs, outputs))
        out[name] = render_program(program.kernels, prefix=f"c{j}_", with_header=False)
    return out


def nvcc_ptx(source: str, what: str) -> None:
    """Compile `source` for sm_90 to PTX; fails with nvcc's messages."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernels.cu")
        with open(path, "w") as f:
            f.write(source)
        run = subprocess.run(
            [NVCC, "-arch=sm_90", "-ptx", path, "-o", os.path.join(tmp, "kernels.ptx")],
            capture_output=True,
            text=True,
            timeout=900,
        )
    assert run.returncode == 0, f"nvcc failed on {what}:\n{run.stderr[-4000:]}"


@pytest.mark.parametrize("group", list(GROUPS))
def test_op_table_cuda_source_is_generated(group):
    sources = group_sources(group)
    assert sources, group
    for name, prog in sources.items():
        for ck in prog.kernels:  # a function per phase, or the reason it runs on the host
            assert ck.launches or ck.host, f"{group}/{name}: {ck.name} has no code\n{prog.source}"
            assert ck.source.count("__global__") == len(ck.launches), ck.source


@needs_nvcc
@pytest.mark.parametrize("group", list(GROUPS))
def test_op_table_cuda_source_compiles_with_nvcc(group):
    sources = group_sources(group)
    nvcc_ptx(header() + "\n".join(p.source for p in sources.values()), f"the {group} cases")


def test_float_constants_are_exact():
    assert cexpr.const("float32", np.float32(0.1)) == "0.1f"
    assert cexpr.const("float64", 0.1) == "0.1"
    assert cexpr.const("float32", np.inf) == "__int_as_float(2139095040)"
    assert cexpr.const("int32", -(2**31)) == "(-2147483647 - 1)"
    assert cexpr.const("int64", 5) == "5LL"


def test_generation_error_names_the_node(monkeypatch):
    def broken(xs, e, dt):
        raise ValueError("no rule today")

    monkeypatch.setitem(render.LOWER, Op.TANH, broken)
    xs = T.arg("float32", (4, 3), 0)
    program = compile_program(Graph([xs], [(xs * 2.0).tanh() + 1.0]))
    with pytest.raises(render.CudaRenderError) as info:
        render_program(program.kernels)
    message = str(info.value)
    assert "while rendering v" in message and "tanh" in message, message
    assert "no rule today" in message, message


def test_reductions_use_block_trees_and_two_stages():
    x = T.arg("float32", (64, 1000), 0)
    program = compile_program(Graph([x], [x.sum((1,)), x.max()]))
    src = render_program(program.kernels).source
    assert "nc_block_reduce<NcSum, float>" in src  # the row sums: one block a row
    assert "nc_block_reduce<NcMaxF, float>" in src
    assert src.count('extern "C" __global__') >= 3  # rows, then partials, then their combine


# ---------------------------------------------------------------- training steps


def _steps() -> dict:
    """name -> (model builder, input batch shape or None for a language model's tokens): the
    benchmarked training steps' models (benchmarks/steps.py) with small batches."""
    from benchmarks import steps

    return {
        "mlp": (lambda: steps.mlp((784, 256, 10)), (8, 784)),
        "mlpresnet": (steps._mlp_resnet, (8, 784)),
        "resnet9": (steps._resnet9, (2, 3, 32, 32)),
        "lstm": (steps._lstm_lm, None),
        "transformer": (steps._transformer_lm, None),
    }


STEPS = _steps()


@functools.cache
def lowered_step(name: str):
    """The training step `name` (SGD with momentum, softmax loss), traced and optimized."""
    from benchmarks.bench_train_step import make_step
    from needlec import nn, optim

    build, batch = STEPS[name]
    np.random.seed(0)
    model = build()
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    step = nc.jit(make_step(model, opt, nn.SoftmaxLoss()))
    rng = np.random.default_rng(1)
    if batch is None:  # a language model: (seq, batch) tokens
        x = rng.integers(0, 200, (20, 4)).astype("float32")
        y = rng.integers(0, 200, 80).astype("float32")
    else:
        x = rng.random(batch, dtype="float32")
        y = rng.integers(0, 10, batch[0]).astype("float32")
    return step.lower(nc.Tensor(x), nc.Tensor(y))


@functools.cache
def step_source(name: str) -> str:
    return lowered_step(name).source("cuda")


@pytest.mark.parametrize("name", list(STEPS))
def test_training_step_cuda_source_is_generated(name):
    src = step_source(name)
    assert src.count("__global__") > 5, src[:2000]


@needs_nvcc
@pytest.mark.parametrize("name", list(STEPS))
def test_training_step_cuda_source_compiles_with_nvcc(name):
    nvcc_ptx(step_source(name), f"the {name} training step")


@pytest.mark.skipif(not nc.cuda().enabled(), reason="no CUDA device or pycuda")
def test_cuda_device_is_enabled_with_a_gpu():
    assert nc.cuda().enabled()


def test_cuda_device_is_disabled_not_an_error_without_pycuda():
    enabled = nc.cuda().enabled()
    assert isinstance(enabled, bool)
    try:
        import pycuda  # noqa: F401
    except ImportError:
        assert not enabled


def test_dtypes_have_c_types():
    assert set(cexpr.CTYPE) == set(DTYPES)
