"""Every op is in every table: shape rule, VJP row, reference implementation; needle's API exists.

A new op that misses a row fails here by name, before any backend or model test runs into it.
"""

import re
from pathlib import Path

import numpy as np
import pytest

import needlec
import needlec.ops
from needlec.codegen.reference import run_graph
from needlec.custom_ops import traced_op
from needlec.ir import Graph, Node, Op, stack
from needlec.ir.ops import SHAPE_RULE
from needlec.ir.semantics import EVAL, LEAF_EVAL
from needlec.passes.autodiff import VJP, node_vjp

OPS = list(Op)
NO_VJP = {Op.INPUT, Op.CONST}  # leaves: nothing to differentiate
NO_EVAL = {Op.INPUT}  # bound to the caller's arrays
RUN_BY_RUN_GRAPH = {Op.RAND}  # evaluated by run_graph itself (counter-based draws)


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
def test_op_has_a_shape_rule(op):
    assert op in SHAPE_RULE, f"{op} has no shape rule in needlec.ir.ops.SHAPE_RULE"
    assert callable(SHAPE_RULE[op])


@pytest.mark.parametrize("op", [op for op in OPS if op not in NO_VJP], ids=lambda op: op.name)
def test_op_has_a_vjp_row(op):
    assert op in VJP, f"{op} has no VJP row in needlec.passes.autodiff.VJP"
    assert callable(VJP[op])


@pytest.mark.parametrize(
    "op", [op for op in OPS if op not in NO_EVAL | RUN_BY_RUN_GRAPH], ids=lambda op: op.name
)
def test_op_has_a_reference_implementation(op):
    assert op in EVAL or op in LEAF_EVAL, (
        f"{op} has no row in needlec.ir.semantics.EVAL or LEAF_EVAL"
    )


def test_tables_have_no_stray_rows():
    assert set(SHAPE_RULE) <= set(Op)
    assert set(VJP) <= set(Op)
    assert set(EVAL) | set(LEAF_EVAL) <= set(Op)
    assert not set(EVAL) & set(LEAF_EVAL)


# ---------------------------------------------------------------- one small example per op
#
# Each builder returns (graph inputs, output node). The tests below check that the reference
# result has exactly the shape and dtype the rules inferred, and that each VJP row gives one
# gradient per source with that source's type. A new op needs a row here too.


def _x(shape=(2, 3), i=0, dtype="float32"):
    return Node.leaf(Op.INPUT, dtype, shape, ("arg", i))


def _unary(method, *args):
    def build():
        x = _x()
        return [x], getattr(x, method)(*args)

    return build


def _binary(op):
    def build():
        x, y = _x(), _x(i=1)
        return [x, y], Node.make(op, x, y)

    return build


def _rand():
    seed = _x((), dtype="int64")
    return [seed], Node.leaf(Op.RAND, "float32", (2, 3), ("uniform", 0), src=(seed,))


def _where():
    c, x, y = _x(dtype="bool"), _x(i=1), _x(i=2)
    return [c, x, y], c.where(x, y)


def _stack():
    x, y = _x(), _x(i=1)
    return [x, y], stack([x, y], 1)


def _matmul():
    x, y = _x((4, 2, 3)), _x((3, 5), 1)
    return [x, y], x @ y


def _conv():
    x, w = _x((1, 5, 5, 2)), _x((3, 3, 2, 4), 1)
    return [x, w], x.conv(w, 2, 1)


def _conv_input_grad():
    g, w = _x((1, 3, 3, 4)), _x((3, 3, 2, 4), 1)
    return [g, w], g.conv_input_grad(w, 2, 1, (5, 6))


def _conv_weight_grad():
    x, g = _x((1, 5, 6, 2)), _x((1, 3, 3, 4), 1)
    return [x, g], x.conv_weight_grad(g, 2, 1, (3, 3))


class _Cube(needlec.TensorOp):
    """A user's needle op (compute and gradient, no IR op): a CALLBACK node when traced."""

    def compute(self, a):
        return a * a * a

    def gradient(self, out_grad, node):
        (a,) = node.inputs
        return out_grad * a * a * 3.0


def _callback():
    x = _x()
    return [x], Node.make(Op.CALLBACK, x, arg=traced_op(_Cube(), [x]).arg)


def _allreduce():  # one process: the sum over the world is the value itself
    x = _x()
    return [x], x.all_reduce("sum")


def _const():
    return [], Node.const(np.arange(6, dtype="float32").reshape(2, 3)) * 2.0


SAMPLES = {
    Op.INPUT: lambda: ([_x()], _x()),
    Op.CONST: _const,
    Op.RAND: _rand,
    Op.NEG: _unary("neg"),
    Op.EXP: _unary("exp"),
    Op.LOG: _unary("log"),
    Op.TANH: _unary("tanh"),
    Op.RELU: _unary("relu"),
    Op.SQRT: _unary("sqrt"),
    Op.CAST: _unary("cast", "float64"),
    Op.STOP_GRADIENT: _unary("stop_gradient"),
    Op.ADD_SCALAR: _unary("__add__", 1.5),
    Op.MUL_SCALAR: _unary("__mul__", 3.0),
    Op.DIV_SCALAR: _unary("__truediv__", 4.0),
    Op.POW_SCALAR: _unary("__pow__", 2.5),
    Op.ADD: _binary(Op.ADD),
    Op.MUL: _binary(Op.MUL),
    Op.DIV: _binary(Op.DIV),
    Op.POW: _binary(Op.POW),
    Op.MAXIMUM: _binary(Op.MAXIMUM),
    Op.CMPLT: _binary(Op.CMPLT),
    Op.CMPEQ: _binary(Op.CMPEQ),
    Op.WHERE: _where,
    Op.SUM: _unary("sum", (1,)),
    Op.MAX: _unary("max", (0,)),
    Op.LOGSUMEXP: _unary("logsumexp", (1,)),
    Op.RESHAPE: _unary("reshape", (3, 2)),
    Op.BROADCAST: _unary("broadcast_to", (4, 2, 3)),
    Op.PERMUTE: _unary("permute", (1, 0)),
    Op.FLIP: _unary("flip", (1,)),
    Op.PAD: _unary("pad", ((1, 0), (2, 1))),
    Op.SLICE: _unary("slice", [(0, 2, 1), (0, 3, 2)]),
    Op.DILATE: _unary("dilate", (1,), 2),
    Op.STACK: _stack,
    Op.MATMUL: _matmul,
    Op.CONV: _conv,
    Op.CONV_INPUT_GRAD: _conv_input_grad,
    Op.CONV_WEIGHT_GRAD: _conv_weight_grad,
    Op.LOGSOFTMAX: _unary("logsoftmax"),
    Op.CALLBACK: _callback,
    Op.ALLREDUCE: _allreduce,
}


def test_every_op_has_a_sample():
    assert set(SAMPLES) == set(Op), f"no sample for {set(Op) - set(SAMPLES)}"


def _arrays(inputs, rng):
    out = []
    for n in inputs:
        if n.dtype == "bool":
            out.append(rng.random(n.shape) < 0.5)
        elif n.dtype == "int64":
            out.append(np.array(rng.integers(0, 2**31), dtype="int64").reshape(n.shape))
        else:
            out.append(rng.uniform(0.5, 2.0, size=n.shape).astype(n.dtype))
    return out


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
def test_sample_builds_the_op_and_runs_with_the_inferred_type(op):
    inputs, out = SAMPLES[op]()
    assert out.op is op or (op is Op.CONST and Op.CONST in {s.op for s in out.src})
    g = Graph(inputs, [out]).verify()
    (value,) = run_graph(g, _arrays(inputs, np.random.default_rng(0)))
    assert value.shape == out.shape, f"{op}: reference gives {value.shape}, rule {out.shape}"
    assert str(value.dtype) == out.dtype


@pytest.mark.parametrize("op", [op for op in OPS if op not in NO_VJP], ids=lambda op: op.name)
def test_vjp_row_gives_one_gradient_per_source(op):
    _, out = SAMPLES[op]()
    g = Node.leaf(Op.INPUT, out.dtype, out.shape, ("cotangent", 0))
    grads = node_vjp(out, g)
    assert len(grads) == len(out.src)
    for src, gs in zip(out.src, grads, strict=True):
        if gs is not None:
            assert (gs.shape, gs.dtype) == (src.shape, src.dtype), f"{op}: {gs!r} for {src!r}"


def test_rand_runs_and_follows_its_seed():
    inputs, out = _rand()
    normal = Node.leaf(Op.RAND, "float32", (2, 3), ("normal", 0), src=inputs)
    g = Graph(inputs, [out, normal]).verify()
    u1, n1 = run_graph(g, [np.array(7, dtype="int64")])
    u2, _ = run_graph(g, [np.array(7, dtype="int64")])
    u3, _ = run_graph(g, [np.array(8, dtype="int64")])
    assert u1.shape == (2, 3) and u1.dtype == np.float32
    assert np.all((u1 >= 0) & (u1 < 1))
    np.testing.assert_array_equal(u1, u2)  # same seed, same numbers
    assert not np.array_equal(u1, u3)  # new seed, new numbers
    assert not np.array_equal(u1, n1)  # distributions are different draws


# ---------------------------------------------------------------- needle's op functions

# the function names of the Ops table of NEEDLE_API.md
NEEDLE_OP_FUNCTIONS = [
    "add",
    "add_scalar",
    "multiply",
    "mul_scalar",
    "power",
    "power_scalar",
    "divide",
    "divide_scalar",
    "negate",
    "log",
    "exp",
    "relu",
    "tanh",
    "transpose",
    "reshape",
    "broadcast_to",
    "summation",
    "matmul",
    "logsoftmax",
    "logsumexp",
    "stack",
    "split",
    "flip",
    "dilate",
    "undilate",
    "conv",
    "make_tuple",
    "tuple_get_item",
]


@pytest.mark.parametrize("name", NEEDLE_OP_FUNCTIONS)
def test_needle_op_function_exists(name):
    assert callable(getattr(needlec.ops, name, None)), f"needlec.ops.{name} is missing"
    assert getattr(needlec, name, None) is getattr(needlec.ops, name), f"needlec.{name}"


def _needle_api_doc():
    here = Path(__file__).resolve()
    for base in [*here.parents, Path("/work/shared")]:
        for path in (base / "NEEDLE_API.md", base / "docs" / "NEEDLE_API.md"):
            if path.is_file():
                return path
    return None


def test_needle_api_table_is_covered():
    """The list above is the table of NEEDLE_API.md (when the document is at hand)."""
    doc = _needle_api_doc()
    if doc is None:
        pytest.skip("NEEDLE_API.md not found")
    text = doc.read_text()
    table = text.split("## Ops", 1)[1].split("\n## ", 1)[0]
    names = set()
    for line in table.splitlines():
        if line.startswith("| `"):
            first_cell = line.split("|")[1]
            names |= set(re.findall(r"`(\w+)\(", first_cell))
            names |= {m for m in re.findall(r"`(\w+)`", first_cell)}
    assert names, "no op functions parsed from NEEDLE_API.md"
    assert names == set(NEEDLE_OP_FUNCTIONS)
