"""Guards: what a trace read from Python objects, so a rebound attribute makes it retrace.

A jitted function reads tensors through its closure, its globals and the objects they hold
(`model.w`). Assigning `p.data = ...` keeps the tensor and is seen at every call; rebinding
`model.w = Tensor(...)` swaps the object, which only a fresh trace can see. The fingerprint is the
identity of every tensor reachable from the function, taken at trace time and checked per call.
"""

from __future__ import annotations

import types
from collections.abc import Callable

_SKIP = (types.ModuleType, type, types.BuiltinFunctionType, str, bytes, int, float, bool)
_MAX_ITEMS = 20_000


def roots(fn: Callable) -> list:
    """The objects `fn` can reach without arguments: closure cells, bound self, named globals."""
    out, seen, todo = [], set(), [fn]
    while todo:
        f = todo.pop()
        if id(f) in seen:
            continue
        seen.add(id(f))
        if isinstance(f, types.MethodType):
            out.append(f.__self__)
            todo.append(f.__func__)
            continue
        code = getattr(f, "__code__", None)
        if code is None:  # a callable object: its attributes are what it reads
            wrapped = getattr(f, "__wrapped__", None)
            out.append(f)
            if wrapped is not None:
                todo.append(wrapped)
            continue
        for cell in f.__closure__ or ():
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            (todo if isinstance(value, types.FunctionType) else out).append(value)
        glb = getattr(f, "__globals__", {})
        for name in _names(code):
            if name in glb:
                value = glb[name]
                (todo if isinstance(value, types.FunctionType) else out).append(value)
    return out


def _names(code: types.CodeType) -> set[str]:
    names, todo = set(), [code]
    while todo:
        c = todo.pop()
        names.update(c.co_names)
        todo.extend(k for k in c.co_consts if isinstance(k, types.CodeType))
    return names


def fingerprint(objs: list, is_tensor: Callable[[object], bool]) -> tuple[int, ...]:
    """ids of the tensors reachable from `objs` through attributes, lists, tuples and dicts."""
    found, seen, todo = [], set(), list(reversed(objs))
    while todo and len(seen) < _MAX_ITEMS:
        x = todo.pop()
        if id(x) in seen or isinstance(x, _SKIP) or callable(x) and not hasattr(x, "__dict__"):
            continue
        seen.add(id(x))
        if is_tensor(x):
            found.append(id(x))
        elif isinstance(x, list | tuple):
            todo.extend(reversed(x))
        elif isinstance(x, dict):
            todo.extend(reversed(list(x.values())))
        elif hasattr(x, "__dict__") and not isinstance(x, types.FunctionType):
            todo.extend(reversed(list(vars(x).values())))
    return tuple(found)
