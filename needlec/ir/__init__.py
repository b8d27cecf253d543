"""The graph IR: the op table, the interned node, the graph, its printer and verifier."""

from .graph import Graph, toposort
from .mixin import OpMixin, stack
from .node import Node
from .ops import (
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
    ConstArray,
    Op,
    ShapeError,
    infer,
)

__all__ = [
    "BINARY",
    "COMPARE",
    "COMPUTE",
    "ELEMENTWISE",
    "LEAF",
    "MOVEMENT",
    "RANDOM",
    "REDUCE",
    "SCALAR",
    "TERNARY",
    "UNARY",
    "ConstArray",
    "Graph",
    "Node",
    "Op",
    "OpMixin",
    "ShapeError",
    "infer",
    "stack",
    "toposort",
]
