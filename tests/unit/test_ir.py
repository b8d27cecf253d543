"""The graph IR: op table, interned nodes, printer, verifier, exports, deep graphs."""

import pickle
import re
import shutil
import subprocess
import sys

import networkx as nx
import numpy as np
import pytest

from needlec.codegen.reference import ExecutionError, run_graph
from needlec.ir import (
    BINARY,
    COMPARE,
    COMPUTE,
    ELEMENTWISE,
    LEAF,
    MOVEMENT,
    RANDOM,
    REDUCE,
    SCALAR,
    TERNARY,
    UNARY,
    Graph,
    Node,
    Op,
    ShapeError,
    infer,
    toposort,
)
from needlec.passes import differentiate


def _inp(shape, i=0, dtype="float32", kind="arg"):
    return Node.leaf(Op.INPUT, dtype, shape, (kind, i))


# ---------------------------------------------------------------- the op enum and trait groups

PRIMARY_GROUPS = {
    "LEAF": LEAF,
    "RANDOM": RANDOM,
    "UNARY": UNARY,
    "SCALAR": SCALAR,
    "BINARY": BINARY,
    "TERNARY": TERNARY,
    "REDUCE": REDUCE,
    "MOVEMENT": MOVEMENT,
    "COMPUTE": COMPUTE,
}


@pytest.mark.parametrize("op", list(Op), ids=lambda op: op.name)
def test_every_op_is_in_exactly_one_trait_group(op):
    groups = [name for name, members in PRIMARY_GROUPS.items() if op in members]
    assert len(groups) == 1, f"{op} is in {groups}"


def test_derived_groups():
    assert ELEMENTWISE == UNARY | SCALAR | BINARY | TERNARY
    assert COMPARE <= BINARY
    assert {Op.ADD, Op.MUL, Op.EXP, Op.WHERE, Op.MUL_SCALAR} <= ELEMENTWISE
    assert Op.SUM not in ELEMENTWISE and Op.RESHAPE not in ELEMENTWISE
    assert {Op.SUM, Op.MAX, Op.LOGSUMEXP} == REDUCE


def test_groups_are_queried_by_membership_on_nodes():
    x = _inp((2, 3))
    assert x.exp().op in ELEMENTWISE and x.exp().op in UNARY
    assert (x + x).op in BINARY
    assert x.sum().op in REDUCE
    assert x.reshape((3, 2)).op in MOVEMENT


# ---------------------------------------------------------------- shape and dtype rules

# (op, source shapes, source dtypes, arg, expected shape, expected dtype)
INFER_CASES = [
    (Op.ADD, [(4, 8), (4, 8)], ["float32", "float32"], None, (4, 8), "float32"),
    (Op.ADD, [(3,), (3,)], ["float32", "float64"], None, (3,), "float64"),
    (Op.MUL, [(3,), (3,)], ["int32", "int64"], None, (3,), "int64"),
    (Op.MUL, [(3,), (3,)], ["int32", "float32"], None, (3,), "float32"),
    (Op.DIV, [(3,), (3,)], ["int32", "int32"], None, (3,), "float32"),
    (Op.CMPLT, [(2, 2), (2, 2)], ["float32", "float32"], None, (2, 2), "bool"),
    (Op.CMPEQ, [(2,), (2,)], ["bool", "bool"], None, (2,), "bool"),
    (Op.MAXIMUM, [(5,), (5,)], ["float64", "float64"], None, (5,), "float64"),
    (Op.WHERE, [(2,), (2,), (2,)], ["bool", "float32", "float64"], None, (2,), "float64"),
    (Op.EXP, [(3,)], ["int32"], None, (3,), "float32"),
    (Op.TANH, [(3,)], ["float64"], None, (3,), "float64"),
    (Op.NEG, [(2, 3)], ["int64"], None, (2, 3), "int64"),
    (Op.CAST, [(2, 3)], ["float32"], "int32", (2, 3), "int32"),
    (Op.ADD_SCALAR, [(3,)], ["int32"], 2, (3,), "int32"),
    (Op.ADD_SCALAR, [(3,)], ["int32"], 1.5, (3,), "float32"),
    (Op.MUL_SCALAR, [(3,)], ["float64"], 2.0, (3,), "float64"),
    (Op.DIV_SCALAR, [(3,)], ["int64"], 2, (3,), "float32"),
    (Op.POW_SCALAR, [(3,)], ["int32"], 2, (3,), "int32"),
    (Op.POW_SCALAR, [(3,)], ["int32"], -1, (3,), "float32"),
    (Op.SUM, [(2, 3, 4)], ["float32"], (1,), (2, 4), "float32"),
    (Op.SUM, [(2, 3, 4)], ["float32"], (0, 1, 2), (), "float32"),
    (Op.SUM, [(2, 3)], ["bool"], (0,), (3,), "int64"),
    (Op.MAX, [(2, 3)], ["int32"], (1,), (2,), "int32"),
    (Op.LOGSUMEXP, [(3, 4)], ["float32"], (1,), (3,), "float32"),
    (Op.RESHAPE, [(2, 6)], ["float32"], (3, 4), (3, 4), "float32"),
    (Op.RESHAPE, [()], ["float32"], (1, 1), (1, 1), "float32"),
    (Op.BROADCAST, [(3,)], ["float32"], (2, 3), (2, 3), "float32"),
    (Op.BROADCAST, [(1, 3)], ["float32"], (4, 2, 3), (4, 2, 3), "float32"),
    (Op.BROADCAST, [()], ["float32"], (2, 2), (2, 2), "float32"),
    (Op.PERMUTE, [(2, 3, 4)], ["float32"], (2, 0, 1), (4, 2, 3), "float32"),
    (Op.FLIP, [(2, 3)], ["float32"], (0,), (2, 3), "float32"),
    (Op.PAD, [(2, 3)], ["float32"], ((1, 2), (0, 1)), (5, 4), "float32"),
    (Op.SLICE, [(10,)], ["float32"], ((1, 8, 3),), (3,), "float32"),
    (Op.SLICE, [(4, 6)], ["float32"], ((0, 4, 2), (1, 6, 1)), (2, 5), "float32"),
    (Op.DILATE, [(2, 3)], ["float32"], ((1,), 2), (2, 9), "float32"),
    (Op.STACK, [(2, 3), (2, 3), (2, 3)], ["float32"] * 3, 1, (2, 3, 3), "float32"),
    (Op.STACK, [(2,), (2,)], ["float32"] * 2, 0, (2, 2), "float32"),
    (Op.MATMUL, [(4, 3), (3, 5)], ["float32", "float32"], None, (4, 5), "float32"),
    (Op.MATMUL, [(5, 2, 3), (3, 4)], ["float32", "float32"], None, (5, 2, 4), "float32"),
    (Op.MATMUL, [(2, 1, 3, 4), (5, 4, 6)], ["float32"] * 2, None, (2, 5, 3, 6), "float32"),
    (Op.CONV, [(1, 8, 8, 3), (3, 3, 3, 16)], ["float32"] * 2, (1, 1), (1, 8, 8, 16), "float32"),
    (Op.CONV, [(2, 8, 8, 3), (3, 3, 3, 4)], ["float32"] * 2, (2, 0), (2, 3, 3, 4), "float32"),
    (Op.LOGSOFTMAX, [(4, 5)], ["float32"], None, (4, 5), "float32"),
    (Op.LOGSOFTMAX, [(4, 5)], ["int32"], None, (4, 5), "float32"),
]


@pytest.mark.parametrize(
    "op,shapes,dtypes,arg,shape,dtype", INFER_CASES, ids=[f"{c[0].name}" for c in INFER_CASES]
)
def test_infer(op, shapes, dtypes, arg, shape, dtype):
    assert infer(op, shapes, dtypes, arg) == (shape, dtype)


# (op, source shapes, source dtypes, arg, fragments the message must contain)
INFER_ERRORS = [
    (Op.ADD, [(2, 3), (3, 2)], ["float32"] * 2, None, ["add", "(2, 3)", "(3, 2)"]),
    (Op.MATMUL, [(2, 3), (4, 5)], ["float32"] * 2, None, ["matmul", "(2, 3)", "(4, 5)"]),
    (Op.MATMUL, [(3,), (3, 2)], ["float32"] * 2, None, ["matmul", "(3,)"]),
    (Op.MATMUL, [(2, 2, 3), (3, 3, 4)], ["float32"] * 2, None, ["matmul"]),
    (Op.RESHAPE, [(2, 3)], ["float32"], (4,), ["reshape", "(2, 3)", "(4,)"]),
    (Op.BROADCAST, [(2, 3)], ["float32"], (3,), ["(2, 3)", "(3,)"]),
    (Op.BROADCAST, [(2, 3)], ["float32"], (4, 3), ["(2, 3)", "(4, 3)"]),
    (Op.PERMUTE, [(2, 3)], ["float32"], (0, 0), ["permute", "(2, 3)"]),
    (Op.SUM, [(2, 3)], ["float32"], (3,), ["axis 3"]),
    (Op.PAD, [(2, 3)], ["float32"], ((1, 1),), ["pad", "(2, 3)"]),
    (Op.SLICE, [(4,)], ["float32"], ((0, 9, 1),), ["slice", "(4,)"]),
    (Op.STACK, [(2, 3), (3, 2)], ["float32"] * 2, 0, ["stack", "(2, 3)", "(3, 2)"]),
    (Op.STACK, [(2,), (2,)], ["float32", "int32"], 0, ["stack", "dtype"]),
    (Op.CONV, [(1, 8, 8, 3), (3, 3, 4, 16)], ["float32"] * 2, (1, 1), ["conv", "(3, 3, 4, 16)"]),
    (Op.CONV, [(1, 2, 2, 3), (5, 5, 3, 1)], ["float32"] * 2, (1, 0), ["conv", "(1, 2, 2, 3)"]),
    (Op.LOGSOFTMAX, [(2, 3, 4)], ["float32"], None, ["logsoftmax", "(2, 3, 4)"]),
    (Op.WHERE, [(2,), (2,), (2,)], ["float32"] * 3, None, ["where", "bool"]),
    (Op.NEG, [(2,)], ["bool"], None, ["neg", "cast"]),
    (Op.INPUT, [], [], ("arg", 0), ["input"]),
]


@pytest.mark.parametrize(
    "op,shapes,dtypes,arg,fragments", INFER_ERRORS, ids=[c[0].name for c in INFER_ERRORS]
)
def test_infer_rejects(op, shapes, dtypes, arg, fragments):
    with pytest.raises(ShapeError) as info:
        infer(op, shapes, dtypes, arg)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_node_make_uses_the_rules():
    x, y = _inp((2, 3)), _inp((3, 4), 1)
    z = Node.make(Op.MATMUL, x, y)
    assert (z.op, z.shape, z.dtype, z.src, z.arg) == (Op.MATMUL, (2, 4), "float32", (x, y), None)
    with pytest.raises(ShapeError):
        Node.make(Op.MATMUL, y, x)


def test_leaf_checks_dtype_and_op():
    with pytest.raises(ShapeError, match="dtype"):
        Node.leaf(Op.INPUT, "float16", (2,), ("arg", 0))
    with pytest.raises(ShapeError, match="leaf"):
        Node.leaf(Op.ADD, "float32", (2,))


# ---------------------------------------------------------------- interning and immutability


def test_same_structure_is_the_same_object():
    x, y = _inp((4, 8)), _inp((4, 8), 1)
    assert _inp((4, 8)) is x
    assert Node.make(Op.MUL, x, y) is Node.make(Op.MUL, x, y)
    assert (x * y) is Node.make(Op.MUL, x, y)
    assert x.exp() is x.exp()
    assert (x * 2.0) is (x * 2.0)
    assert x.sum((1,)) is x.sum(1)
    # the plain constructor interns too
    assert Node(Op.MUL, "float32", (4, 8), (x, y), None) is (x * y)
    # deep structures compare by identity all the way up
    assert ((x * y).exp() + x).tanh() is ((x * y).exp() + x).tanh()


def test_different_structure_is_a_different_object():
    x, y = _inp((4, 8)), _inp((4, 8), 1)
    assert (x * y) is not (y * x)
    assert x is not _inp((4, 8), dtype="float64")
    assert x is not _inp((8, 4))
    assert x is not _inp((4, 8), kind="capture")
    assert x.sum(0) is not x.sum(1)
    assert (x * 2.0) is not (x * 3.0)
    # 2 == 2.0 in Python, but an int scalar and a float scalar are different args
    assert (x * 2) is not (x * 2.0)
    assert (x * 2).arg == 2 and isinstance((x * 2).arg, int)


def test_constants_intern_by_value():
    assert Node.const(1.0, (3,)) is Node.const(1.0, (3,))
    assert Node.const(1.0, (3,)) is not Node.const(2.0, (3,))
    assert Node.const(1.0, (3,)) is not Node.const(1.0, (3,), "float64")
    a = np.arange(6, dtype="float32").reshape(2, 3)
    c = Node.const(a.copy())
    assert Node.const(a.copy()) is c
    assert c.shape == (2, 3) and c.dtype == "float32"
    assert Node.const((a + 1).copy()) is not c
    assert Node.const(a.astype("float64")) is not c


def test_interned_nodes_are_dict_keys():
    x = _inp((3,))
    memo = {x.exp(): "e", x.tanh(): "t"}
    assert memo[x.exp()] == "e" and memo[x.tanh()] == "t"


@pytest.mark.parametrize("field", ["op", "dtype", "shape", "src", "arg"])
def test_node_fields_cannot_be_assigned(field):
    x = _inp((4, 8))
    n = x * x
    before = (n.op, n.dtype, n.shape, n.src, n.arg)
    with pytest.raises(AttributeError):
        setattr(n, field, getattr(x, field))
    assert (n.op, n.dtype, n.shape, n.src, n.arg) == before


def test_node_takes_no_new_attributes():
    n = _inp((2,)).exp()
    with pytest.raises(AttributeError):
        n.extra = 1
    assert not hasattr(n, "extra")


def test_node_fields_cannot_be_deleted():
    for field in ("op", "dtype", "shape", "src", "arg"):
        # a unique structure, so a failure here cannot corrupt nodes other tests intern
        n = Node.leaf(Op.INPUT, "float32", (7, 1, 3), ("arg", f"del-{field}")).exp()
        with pytest.raises(AttributeError):
            delattr(n, field)
        assert hasattr(n, field), f"del node.{field} removed the field of an interned node"


def test_const_arrays_are_read_only():
    c = Node.const(np.arange(4, dtype="float32"))
    with pytest.raises(ValueError):
        c.arg.array[0] = 7.0
    assert c.arg.array.tolist() == [0.0, 1.0, 2.0, 3.0]


def test_pickle_round_trip_is_the_same_node():
    x, y = _inp((2, 3)), _inp((3,), 1)
    z = (x + y.broadcast_to((2, 3))).sum(0)
    assert pickle.loads(pickle.dumps(z)) is z


# ---------------------------------------------------------------- graph and printer


def test_graph_nodes_are_inputs_first_then_topological():
    x, y = _inp((2, 3)), _inp((2, 3), 1)
    a = y.exp()
    b = x * a
    g = Graph([x, y], [b.sum(), a])
    nodes = g.nodes
    assert nodes[:2] == [x, y]
    pos = {n: i for i, n in enumerate(nodes)}
    for n in nodes:
        for s in n.src:
            assert pos[s] < pos[n]
    assert len(g) == len(nodes) == 5
    assert g.users()[a] == [b] and g.users()[x] == [b]


def test_graph_keeps_only_what_the_outputs_need():
    x = _inp((3,))
    dead = x.tanh()
    g = Graph([x], [x.exp()])
    assert dead not in g.nodes and len(g.nodes) == 2


def test_unused_input_stays_in_the_graph():
    x, y = _inp((3,)), _inp((3,), 1)
    g = Graph([x, y], [x.exp()])
    assert g.nodes[:2] == [x, y]
    assert g.as_text().splitlines()[0] == "graph(%0:f32[3] = arg[0], %1:f32[3] = arg[1]):"


def test_print_one_node_line():
    x, y = _inp((4, 8)), _inp((4, 8), 1)
    g = Graph([x, y], [(x + y) * y])
    assert g.as_text().splitlines()[2] == "  %3:f32[4,8] = mul %2 %1"


def test_print_golden_matmul_relu_sum():
    x, w = _inp((4, 8)), _inp((8, 2), 1)
    g = Graph([x, w], [(x @ w).relu().sum(1)])
    assert g.as_text() == (
        "graph(%0:f32[4,8] = arg[0], %1:f32[8,2] = arg[1]):\n"
        "  %2:f32[4,2] = matmul %0 %1\n"
        "  %3:f32[4,2] = relu %2\n"
        "  %4:f32[4] = sum %3 axes=(1,)\n"
        "  return (%4)"
    )
    assert str(g) == g.as_text()


def test_print_golden_dtypes_scalars_consts_and_movement():
    x = _inp((2, 3), dtype="float64")
    i = _inp((), 1, dtype="int32")
    c = Node.const(np.array([1.0, 2.0, 3.0]))
    y = (x.transpose() * 0.5).reshape((6,)) + 1
    z = x + c.broadcast_to((2, 3))
    g = Graph([x, i], [y, z, i.cast("int64")])
    assert g.as_text() == (
        "graph(%0:f64[2,3] = arg[0], %1:i32[] = arg[1]):\n"
        "  %2:f64[3,2] = permute %0 perm=(1,0)\n"
        "  %3:f64[3,2] = mul_scalar %2 c=0.5\n"
        "  %4:f64[6] = reshape %3 shape=(6,)\n"
        "  %5:f64[6] = add_scalar %4 c=1\n"
        "  %6:f64[3] = const [1.0, 2.0, 3.0]\n"
        "  %7:f64[2,3] = broadcast %6 shape=(2,3)\n"
        "  %8:f64[2,3] = add %0 %7\n"
        "  %9:i64[] = cast %1 dtype=int64\n"
        "  return (%5, %8, %9)"
    )


def test_print_shared_subexpression_once():
    x = _inp((3,), dtype="float32")
    g = Graph([x], [x.exp() + x.exp()])
    assert g.as_text() == (
        "graph(%0:f32[3] = arg[0]):\n  %1:f32[3] = exp %0\n  %2:f32[3] = add %1 %1\n  return (%2)"
    )


def test_print_rand_and_same_output_twice():
    seed = _inp((), dtype="int64")
    r = Node.leaf(Op.RAND, "float32", (2, 2), ("normal", 3), src=(seed,))
    g = Graph([seed], [r, r])
    assert g.as_text() == (
        "graph(%0:i64[] = arg[0]):\n"
        "  %1:f32[2,2] = rand %0 dist,stream=(normal,3)\n"
        "  return (%1, %1)"
    )


def test_node_repr_names_type_and_op():
    x = _inp((4, 8))
    assert repr(x * x) == "<Node f32[4,8] = mul %? %?>"


# ---------------------------------------------------------------- verifier


def test_verify_accepts_a_good_graph():
    x, y = _inp((4, 8)), _inp((8, 3), 1)
    g = Graph([x, y], [(x @ y).tanh().sum()])
    assert g.verify() is g


def _verify_message(g):
    with pytest.raises(ValueError) as info:
        g.verify()
    return str(info.value)


def test_verify_names_a_node_with_a_wrong_shape():
    x, y = _inp((4, 8)), _inp((4, 8), 1)
    bad = Node(Op.MUL, "float32", (5,), (x, y), None)
    msg = _verify_message(Graph([x, y], [bad.exp()]))
    assert "%2" in msg and "mul %0 %1" in msg and "f32[5]" in msg
    assert "(4, 8)" in msg  # what the rules give


def test_verify_names_a_node_with_a_wrong_dtype():
    x, y = _inp((4, 8)), _inp((4, 8), 1)
    bad = Node(Op.ADD, "float64", (4, 8), (x, y), None)
    msg = _verify_message(Graph([x, y], [bad]))
    assert "%2" in msg and "add %0 %1" in msg and "float64" in msg and "float32" in msg


def test_verify_names_a_node_whose_sources_do_not_fit():
    x, y = _inp((4, 8)), _inp((3,), 1)
    bad = Node(Op.ADD, "float32", (4, 8), (x, y), None)
    msg = _verify_message(Graph([x, y], [bad]))
    assert "%2" in msg and "add %0 %1" in msg and "(3,)" in msg


def test_verify_rejects_an_input_missing_from_the_inputs():
    x, y = _inp((2,)), _inp((2,), 1)
    msg = _verify_message(Graph([x], [x * y]))
    assert "%1" in msg and "arg[1]" in msg and "input" in msg.lower()


def test_verify_rejects_a_non_input_among_the_inputs():
    x = _inp((2,))
    e = x.exp()
    msg = _verify_message(Graph([x, e], [e]))
    assert "exp" in msg and "INPUT" in msg


def test_verify_rejects_a_duplicated_input():
    x = _inp((2,))
    assert "twice" in _verify_message(Graph([x, x], [x.exp()]))


def test_verify_rejects_a_leaf_with_sources():
    x = _inp((2,))
    bad = Node(Op.CONST, "float32", (2,), (x,), 1.0)
    msg = _verify_message(Graph([x], [bad]))
    assert "const" in msg and "leaf" in msg


def test_verify_rejects_a_random_node_without_a_scalar_seed():
    seed = _inp((3,), dtype="int64")
    r = Node.leaf(Op.RAND, "float32", (2,), ("uniform", 0), src=(seed,))
    msg = _verify_message(Graph([seed], [r]))
    assert "rand" in msg and "seed" in msg


# ---------------------------------------------------------------- exports


def _small_graph():
    x, y = _inp((2, 3)), _inp((2, 3), 1)
    s = x * x + y
    return Graph([x, y], [s.sum(), s]), x, y, s


def test_to_networkx():
    g, x, y, s = _small_graph()
    d = g.to_networkx()
    assert isinstance(d, nx.DiGraph)
    assert d.number_of_nodes() == len(g.nodes) == 5
    assert nx.is_directed_acyclic_graph(d)
    names = {n: i for i, n in enumerate(g.nodes)}
    for n, i in names.items():
        attrs = d.nodes[i]
        assert attrs["op"] == n.op.name.lower()
        assert attrs["shape"] == n.shape and attrs["dtype"] == n.dtype
        assert attrs["node"] is n
        assert attrs["output"] == (n in g.outputs)
        assert set(d.predecessors(i)) == {names[src] for src in n.src}
    sq = names[x * x]
    # x * x reads x twice: one edge, both operand slots
    assert d.edges[names[x], sq]["slots"] == [0, 1]
    assert d.edges[sq, names[s]]["slots"] == [0]
    assert d.edges[names[y], names[s]]["slots"] == [1]
    assert d.nodes[names[s.sum()]]["arg"] == "axes=(0,1)"
    # a networkx topological order is a valid evaluation order
    order = list(nx.topological_sort(d))
    assert set(order) == set(range(5))


def _parse_dot(text):
    nodes = dict(re.findall(r'^\s*(n\d+) \[label="((?:[^"\\]|\\.)*)"', text, re.M))
    edges = re.findall(r"^\s*(n\d+) -> (n\d+);", text, re.M)
    return nodes, edges


def test_to_dot_matches_the_graph():
    g, *_ = _small_graph()
    text = g.to_dot("small")
    assert text.startswith("digraph small {") and text.rstrip().endswith("}")
    nodes, edges = _parse_dot(text)
    assert len(nodes) == len(g.nodes)
    names = {n: i for i, n in enumerate(g.nodes)}
    expected_edges = sorted((f"n{names[s]}", f"n{i}") for n, i in names.items() for s in n.src)
    assert sorted(edges) == expected_edges
    assert nodes["n2"] == "%2 mul\\nf32[2,3]"
    assert nodes["n4"] == "%4 sum axes=(0,1)\\nf32[]"
    for i in range(2):  # inputs highlighted
        assert re.search(rf"n{i} \[label=.*fillcolor=lightblue", text)
    # the same vertices and edges as the networkx export
    d = g.to_networkx()
    assert sorted((f"n{a}", f"n{b}") for a, b in d.edges) == sorted(set(expected_edges))


def test_to_dot_escapes_quotes():
    seed = _inp((), dtype="int64")
    r = Node.leaf(Op.RAND, "float32", (2,), ('say "hi"', 0), src=(seed,))
    text = Graph([seed], [r]).to_dot()
    nodes, _ = _parse_dot(text)
    assert len(nodes) == 2 and '\\"hi\\"' in nodes["n1"]


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz `dot` is not installed")
def test_to_dot_is_accepted_by_graphviz():
    g, *_ = _small_graph()
    res = subprocess.run(["dot", "-Tsvg"], input=g.to_dot(), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


# ---------------------------------------------------------------- run_graph


def test_run_graph_evaluates_and_names_a_failing_node():
    x, y = _inp((2, 3)), _inp((2, 3), 1)
    g = Graph([x, y], [(x * y).sum(1), x - y])
    a = np.arange(6, dtype="float32").reshape(2, 3)
    b = np.full((2, 3), 2.0, dtype="float32")
    s, d = run_graph(g, [a, b])
    np.testing.assert_array_equal(s, [6.0, 24.0])
    np.testing.assert_array_equal(d, a - 2.0)
    assert s.dtype == np.float32
    with pytest.raises(ValueError, match="2 inputs"):
        run_graph(g, [a])
    with pytest.raises(ExecutionError) as info:
        run_graph(g, [a, np.ones((5,), "float32")])
    assert "%2:f32[2,3] = mul %0 %1" in str(info.value)


# ---------------------------------------------------------------- deep graphs

DEPTH = 10_000


@pytest.fixture
def low_recursion_limit():
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)  # far below the depth of the chain
    yield
    sys.setrecursionlimit(old)


def _chain(depth=DEPTH):
    x = _inp((3,), dtype="float64")
    y = x
    for i in range(depth):
        y = y.tanh() if i % 2 else y * 1.0001
    return x, y


def _chain_numpy(a, depth=DEPTH):
    """Value and derivative of the chain, elementwise, by hand."""
    v, d = a.copy(), np.ones_like(a)
    for i in range(depth):
        if i % 2:
            v = np.tanh(v)
            d = d * (1 - v * v)
        else:
            v, d = v * 1.0001, d * 1.0001
    return v, d


def test_deep_chain_toposort_print_verify(low_recursion_limit):
    x, y = _chain()
    order = toposort([y])
    assert len(order) == DEPTH + 1 and order[0] is x and order[-1] is y
    g = Graph([x], [y.sum()])
    text = g.as_text()
    lines = text.splitlines()
    assert len(lines) == DEPTH + 3
    assert lines[1] == "  %1:f64[3] = mul_scalar %0 c=1.0001"
    assert lines[-2] == f"  %{DEPTH + 1}:f64[] = sum %{DEPTH} axes=(0,)"
    assert g.verify() is g
    assert g.to_networkx().number_of_nodes() == DEPTH + 2
    assert g.to_dot().count("->") == DEPTH + 1


def test_deep_chain_run_and_differentiate(low_recursion_limit):
    x, y = _chain()
    g = Graph([x], [y.sum()])
    a = np.array([0.1, -0.4, 0.9])
    v, d = _chain_numpy(a)
    (out,) = run_graph(g, [a])
    np.testing.assert_allclose(out, v.sum(), rtol=1e-12)
    dg = differentiate(g)
    dg.verify()
    (grad,) = run_graph(dg, [a])
    assert np.all(np.abs(d) > 1e-6)  # the chain keeps a gradient worth checking
    np.testing.assert_allclose(grad, d, rtol=1e-9)


def test_deep_graph_pickles_to_the_same_interned_nodes(low_recursion_limit):
    import pickle

    x, y = _chain()
    g = Graph([x], [y])
    back = pickle.loads(pickle.dumps(g))
    assert back.inputs[0] is x and back.outputs[0] is y  # interning: the same objects
