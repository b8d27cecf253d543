"""The interned, immutable IR node: `(op, dtype, shape, src, arg)`.

Building a node with the same structure twice returns the same object, so common subexpressions
are shared for free, memo tables are plain dicts, and tests can assert identity.
"""

from __future__ import annotations

import threading
import weakref

from .mixin import OpMixin
from .ops import DTYPES, LEAF, ConstArray, Op, Shape, ShapeError, arg_key, infer


class Node(OpMixin):
    """One value of the graph. Build with `Node.make` (inferred type) or `Node.leaf`.

    >>> x = Node.leaf(Op.INPUT, "float32", (4, 8), ("arg", 0))
    >>> (x * 2.0) is (x * 2.0)
    True
    """

    __slots__ = ("op", "dtype", "shape", "src", "arg", "__weakref__")
    _interned: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
    _intern_lock = threading.RLock()  # a miss inserts under it: two threads get one object

    op: Op
    dtype: str
    shape: Shape
    src: tuple[Node, ...]

    def __new__(cls, op: Op, dtype: str, shape: Shape, src: tuple = (), arg=None) -> Node:
        key = (op, dtype, shape, src, type(arg), arg_key(arg))
        node = cls._interned.get(key)
        if node is None:
            with cls._intern_lock:
                node = cls._interned.get(key)
                if node is None:
                    node = object.__new__(cls)
                    values = (op, dtype, shape, src, arg)
                    for name, value in zip(cls.__slots__[:5], values, strict=True):
                        object.__setattr__(node, name, value)
                    cls._interned[key] = node
        return node

    def __setattr__(self, name, value):
        raise AttributeError("Node is immutable")

    def __delattr__(self, name):
        raise AttributeError("Node is immutable")

    def __reduce__(self):
        return (Node, (self.op, self.dtype, self.shape, self.src, self.arg))

    @staticmethod
    def make(op: Op, *src: Node, arg=None) -> Node:
        """The node for `op` over `src`, its shape and dtype inferred (ShapeError if invalid)."""
        shape, dtype = infer(op, [s.shape for s in src], [s.dtype for s in src], arg)
        return Node(op, dtype, shape, tuple(src), arg)

    @staticmethod
    def leaf(op: Op, dtype: str, shape, arg=None, src: tuple = ()) -> Node:
        """An input, constant or random node, whose type is given."""
        if dtype not in DTYPES:
            raise ShapeError(f"{op.name.lower()}: unknown dtype {dtype!r}")
        if op not in LEAF and op is not Op.RAND:
            raise ShapeError(f"{op.name.lower()} is not a leaf op")
        return Node(op, dtype, tuple(int(d) for d in shape), tuple(src), arg)

    @staticmethod
    def const(value, shape=(), dtype: str = "float32") -> Node:
        """A constant: a Python scalar filled to `shape`, or a numpy array (its own shape)."""
        if hasattr(value, "shape"):
            return Node.leaf(Op.CONST, str(value.dtype), value.shape, ConstArray(value))
        return Node.leaf(Op.CONST, dtype, shape, _scalar(value, dtype))

    # OpMixin hooks
    def _apply(self, op: Op, srcs: tuple, arg=None) -> Node:
        return Node.make(op, *srcs, arg=arg)

    def _const(self, value, shape, dtype) -> Node:
        return Node.const(value, shape, dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __repr__(self) -> str:
        from .printer import format_node

        return f"<Node {format_node(self, {})}>"


def _scalar(value, dtype: str):
    if dtype == "bool":
        return bool(value)
    return int(value) if dtype.startswith("int") else float(value)
