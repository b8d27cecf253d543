"""A graph's content digest: equal for two graphs of the same structure, in any process.

The printed form is for people (it elides the values of large constants); the digest is for
caches. It walks the nodes in order and hashes each one's op, dtype, shape, sources (by
position) and arg, the arg encoded by type: numbers exactly, constant arrays by their bytes,
dataclasses and enums by their class's name and their values. An arg of any other type (a
Python callback of a custom op, say) has no digest that another process could trust, so the
graph has none: `graph_digest` returns None and the caller compiles as usual.

>>> from needlec.ir import Node, Op, Graph
>>> x = Node.leaf(Op.INPUT, "float32", (3,), ("arg", 0))
>>> graph_digest(Graph([x], [x.exp()])) == graph_digest(Graph([x], [x.exp()]))
True
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib

import numpy as np

from .graph import Graph
from .ops import ConstArray


class _NoDigest(Exception):
    """An arg whose value cannot be written down for another process."""


def _encode(arg, out: list) -> None:
    t = type(arg)
    if arg is None or t is bool or t is int or t is str:
        out.append(f"{t.__name__}:{arg!r}")
    elif t is float:
        out.append(f"float:{arg.hex()}")  # exact, and -0.0 differs from 0.0
    elif t is tuple or t is list:
        out.append(f"{t.__name__}({len(arg)}")
        for a in arg:
            _encode(a, out)
        out.append(")")
    elif t is frozenset or t is set:
        parts = []
        for a in arg:
            sub: list = []
            _encode(a, sub)
            parts.append("\x1f".join(sub))
        out.append(f"set({len(arg)}")
        out.extend(sorted(parts))
        out.append(")")
    elif t is dict:
        parts = []
        for k, v in arg.items():
            sub = []
            _encode(k, sub)
            _encode(v, sub)
            parts.append("\x1f".join(sub))
        out.append(f"dict({len(arg)}")
        out.extend(sorted(parts))
        out.append(")")
    elif t is ConstArray:
        a = arg.array
        body = hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()
        out.append(f"array:{a.dtype.str}{a.shape}:{body}")
    elif isinstance(arg, enum.Enum):
        out.append(f"enum:{t.__module__}.{t.__qualname__}.{arg.name}")
    elif isinstance(arg, np.dtype):
        out.append(f"dtype:{arg.str}")
    elif isinstance(arg, np.generic):
        out.append(f"np:{arg.dtype.str}:{arg.tobytes().hex()}")
    elif t is slice:
        out.append("slice")
        _encode((arg.start, arg.stop, arg.step), out)
    elif dataclasses.is_dataclass(arg) and not isinstance(arg, type):
        out.append(f"dc:{t.__module__}.{t.__qualname__}(")
        for f in dataclasses.fields(arg):
            out.append(f.name)
            _encode(getattr(arg, f.name), out)
        out.append(")")
    else:
        raise _NoDigest(t.__qualname__)


def graph_digest(graph: Graph) -> str | None:
    """The SHA-256 of `graph`'s content (hex), or None when an op's arg has no faithful
    encoding (see the module's docstring)."""
    index = {n: i for i, n in enumerate(graph.nodes)}
    h = hashlib.sha256()
    out: list[str] = []
    try:
        for n in graph.nodes:
            out.clear()
            src = ",".join(str(index[s]) for s in n.src)
            out.append(f"{n.op.name} {n.dtype} {n.shape} ({src})")
            _encode(n.arg, out)
            h.update("\x1e".join(out).encode())
            h.update(b"\n")
    except _NoDigest:
        return None
    h.update(
        f"in {[index[n] for n in graph.inputs]} out {[index[n] for n in graph.outputs]}".encode()
    )
    return h.hexdigest()


__all__ = ["graph_digest"]
