"""Guards: where a trace found each tensor it captured, so that rebinding one makes it retrace.

A jitted function reads tensors through its closure, its globals and the objects they hold
(`model.w`). Assigning `p.data = ...` keeps the tensor, so the next call reads the new values
anyway; rebinding `model.w = Tensor(...)` swaps the object, which only a fresh trace can see. At
trace time each captured tensor gets an access path (a root such as a global name or a closure
cell, then attributes, keys and indices); every call re-reads those paths and checks identity.
"""

from __future__ import annotations

import functools
import sys
import types
import warnings
from collections.abc import Callable

import numpy as np

_SKIP = (types.ModuleType, type, types.BuiltinFunctionType, str, bytes, int, float, bool)
_MAX_ITEMS = 50_000
_MISSING = object()

Getter = Callable[[], object]


def roots(fn: Callable) -> list[Getter]:
    """Zero-argument readers of what `fn` can reach: closure cells, bound self, named globals.

    They are re-read on every call, so rebinding a global or a `nonlocal` is seen.
    """
    out: list[Getter] = []
    seen, todo = set(), [fn]
    while todo:
        f = todo.pop()
        if id(f) in seen:
            continue
        seen.add(id(f))
        if isinstance(f, types.MethodType):
            out.append(lambda obj=f.__self__: obj)
            todo.append(f.__func__)
            continue
        if isinstance(f, functools.partial):  # its function, and the arguments it binds
            out.append(lambda p=f: (p.args, p.keywords))
            todo.append(f.func)
            continue
        code = getattr(f, "__code__", None)
        if code is None:  # a callable object: its attributes are what it reads
            out.append(lambda obj=f: obj)
            if getattr(f, "__wrapped__", None) is not None:
                todo.append(f.__wrapped__)
            continue
        out.append(lambda f=f: (f.__defaults__, f.__kwdefaults__))
        for cell in f.__closure__ or ():
            out.append(lambda c=cell: _cell(c))
            value = _cell(cell)
            if isinstance(value, types.FunctionType):
                todo.append(value)
        if _library(getattr(f, "__module__", None)):
            continue  # our own (and numpy's, the standard library's) globals are not user state
        glb = getattr(f, "__globals__", {})
        names = _names(code)
        for name in names:
            if name not in glb:
                continue
            out.append(lambda g=glb, n=name: g.get(n, _MISSING))
            value = glb[name]
            if isinstance(value, types.FunctionType):
                todo.append(value)
            elif isinstance(value, types.ModuleType | type) and not _library(
                getattr(value, "__module__", None) or value.__name__
            ):
                # `mod.W`, `Cls.w`: the attributes the code names are read like globals
                for attr in names & set(dir(value)):
                    out.append(lambda o=value, a=attr: getattr(o, a, _MISSING))
                    if isinstance(getattr(value, attr, None), types.FunctionType):
                        todo.append(getattr(value, attr))
    return out


_LIBRARIES = {"needlec", "numpy", *sys.stdlib_module_names}


def _library(module: str | None) -> bool:
    """Whether a module name belongs to needlec itself, numpy or the standard library."""
    if not module:
        return False
    top = module.split(".")[0]
    return top in _LIBRARIES and not module.startswith("needlec.examples")


def _cell(cell) -> object:
    try:
        return cell.cell_contents
    except ValueError:  # an empty cell
        return _MISSING


def _names(code: types.CodeType) -> set[str]:
    names, todo = set(), [code]
    while todo:
        c = todo.pop()
        names.update(c.co_names)
        todo.extend(k for k in c.co_consts if isinstance(k, types.CodeType))
    return names


def _children(x):
    """(step, child) pairs of a container or object; steps are ("attr"|"item", key)."""
    if isinstance(x, list | tuple):
        return [(("item", i), v) for i, v in enumerate(x)]
    if isinstance(x, dict):
        return [(("item", k), v) for k, v in x.items()]
    d = getattr(x, "__dict__", None)
    if isinstance(d, dict) and not isinstance(x, types.FunctionType):
        if getattr(type(x), "_jit_opaque", False):  # compiled code: nothing a trace reads
            return []
        return [(("attr", k), v) for k, v in d.items()]
    return []


def _walk(getters: list[Getter], is_leaf: Callable[[object], bool]):
    """(getter, path, object) for everything reachable from the roots, each once, depth first;
    leaves (tensors) are yielded but not entered."""
    seen: set[int] = set()
    todo = [(g, (), g()) for g in reversed(getters)]
    while todo and len(seen) < _MAX_ITEMS:
        getter, path, x = todo.pop()
        if id(x) in seen or isinstance(x, _SKIP) or x is _MISSING:
            continue
        seen.add(id(x))
        yield getter, path, x
        if not is_leaf(x):
            todo.extend((getter, (*path, step), v) for step, v in reversed(_children(x)))


def find_paths(getters: list[Getter], targets: list, is_leaf: Callable[[object], bool]) -> list:
    """For each target object, (getter, path) of the first place it is found, or None."""
    want = {id(t): k for k, t in enumerate(targets)}
    found: list = [None] * len(targets)
    for getter, path, x in _walk(getters, is_leaf) if want else ():
        k = want.pop(id(x), None)
        if k is not None:
            found[k] = (getter, path)
            if not want:
                break
    return found


def resolve(getter: Getter, path: tuple) -> object:
    """Follow a path from its root again; _MISSING if a step no longer exists."""
    x = getter()
    for kind, key in path:
        try:
            x = getattr(x, key) if kind == "attr" else x[key]
        except (AttributeError, KeyError, IndexError, TypeError):
            return _MISSING
    return x


_PLAIN = (int, float, bool, str, type(None), np.generic)


def _plain_state(x, skip: frozenset = frozenset()) -> object:
    """What a trace may have read from `x` as a Python value: x itself if it is a number or
    string, else the numbers and strings it holds (attributes, items), but for the attributes
    named in `skip` (those the graph reads or writes at every call, like `opt.lr`)."""
    if isinstance(x, _PLAIN):
        return x
    if isinstance(x, tuple | list):
        return tuple((i, v) for i, v in enumerate(x) if isinstance(v, _PLAIN))
    if isinstance(x, dict):
        return tuple((k, v) for k, v in x.items() if isinstance(v, _PLAIN))
    if hasattr(x, "__dict__") and not isinstance(x, _SKIP + (types.FunctionType,)):
        return tuple((k, v) for k, v in vars(x).items() if isinstance(v, _PLAIN) and k not in skip)
    return None


def _structure(x, skip: frozenset) -> object:
    """A watched object's state: its numbers and strings, and which objects it holds (a swapped
    layer, a list grown by one, a tuple of factors): anything its methods may have read."""

    def item(v):
        return v if isinstance(v, _PLAIN) else ("id", id(v))

    out = []
    for k, v in vars(x).items():
        if k in skip:
            continue
        if isinstance(v, list | tuple):
            out.append((k, id(v), tuple(map(item, v))))
        elif isinstance(v, dict):
            out.append((k, id(v), tuple((key, item(e)) for key, e in v.items())))
        else:
            out.append((k, item(v)))
    return tuple(out)


class Guard:
    """What a trace assumed about the objects its function reads, checked before each reuse.

    - each captured tensor is still found at the path it was found at (not rebound);
    - the Python numbers and strings held by the roots and by the objects on those paths
      (a scale factor, a flag) are unchanged: the trace baked them in;
    - so are those of every `watched` object reachable from the roots (every nn.Module and
      Optimizer: `training`, a dropout probability), however deep, but for the `dynamic`
      attributes, which the graph reads or writes at every call (`opt.lr`, `opt.t`).
    """

    def __init__(
        self,
        getters: list[Getter],
        tensors: list,
        is_leaf,
        watched: Callable[[object], bool] | None = None,
        dynamic: frozenset | set = frozenset(),
    ) -> None:
        self.is_leaf = is_leaf
        paths = find_paths(getters, tensors, is_leaf)
        self.tensors = [(t, *p) for t, p in zip(tensors, paths, strict=True) if p is not None]
        self.places = [(g, ()) for g in getters]
        self.places += sorted(
            {(g, path[:k]) for _, g, path in self.tensors for k in range(1, len(path))},
            key=lambda gp: len(gp[1]),
        )
        # and the objects these hold directly (`model.cfg` for `model.cfg.scale`)
        known = {(id(g), path) for g, path in self.places}
        for g, path in list(self.places):
            for step, child in _children(resolve(g, path)):
                if (id(g), (*path, step)) in known or is_leaf(child):
                    continue
                if isinstance(child, dict | list | tuple) or (
                    hasattr(child, "__dict__")
                    and not isinstance(child, _SKIP + (types.FunctionType, types.MethodType))
                ):
                    self.places.append((g, (*path, step)))
                    known.add((id(g), (*path, step)))
        self.n_plain = len(self.places)  # the places after these are watched objects
        if watched is not None:
            for g, path, x in _walk(getters, is_leaf):
                if watched(x):
                    self.places.append((g, path))
        self.skips = []
        for g, path in self.places:
            x = resolve(g, path)
            self.skips.append(frozenset(n for i, n in dynamic if i == id(x)))
        self.state = self._state()

    def _state(self) -> list:
        out = []
        for k, ((g, path), skip) in enumerate(zip(self.places, self.skips, strict=True)):
            x = resolve(g, path)
            if self.is_leaf(x):
                out.append(None)
            elif k < self.n_plain:
                out.append(_plain_state(x, skip))
            else:
                out.append(_structure(x, skip))
        return out

    def check(self) -> str | None:
        """None if the trace still holds, else why not."""
        for t, getter, path in self.tensors:
            if resolve(getter, path) is not t:
                where = ".".join(str(key) for _, key in path) or "a global or closure variable"
                return f"the tensor at {where} was rebound"
        for (_, path), old, new in zip(self.places, self.state, self._state(), strict=True):
            if old != new:
                where = ".".join(str(key) for _, key in path) or "a global or closure variable"
                return f"a Python value the trace read changed (at {where}: {old} -> {new})"
        return None


def plain_state(getters: list[Getter], is_leaf) -> list:
    """The Python numbers and strings held by each root but tensors (see `Guard`)."""
    return [None if is_leaf(x) else _plain_state(x) for x in (g() for g in getters)]


def check_side_effects(name: str, getters: list[Getter], before: list, trace, is_leaf) -> None:
    """Raise if tracing changed Python state or left a tracer in an object the function reaches:
    both would make the compiled function disagree with the Python one."""
    from .trace import TracerError

    for old, new in zip(before, plain_state(getters, is_leaf), strict=True):
        if old != new:  # a counter of traces is fine; state the computation reads is not
            warnings.warn(
                f"jit({name}) changed a Python value while tracing ({old} -> {new}): side effects "
                "run once, when the function is traced, not at every call. Keep state the "
                "computation reads in a tensor and return its new value instead.",
                stacklevel=4,
            )
            break
    for _, path, x in _walk(getters, is_leaf):
        if is_leaf(x) and getattr(x, "_trace", None) is trace:
            where = ".".join(str(key) for _, key in path) or "a global or closure variable"
            raise TracerError(
                f"jit({name}) stored a traced value in {where}: writes to Python objects "
                "inside jit are not replayed at each call. Return the value from the "
                "function, or keep the state in a tensor made outside the function and "
                "assign its .data (written back after every call)."
            )
