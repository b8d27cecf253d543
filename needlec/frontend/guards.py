"""Guards: what a trace assumed about the Python state its function reads, checked before reuse.

A jitted function reads tensors, arrays, functions and Python values through its closure, its
globals, its defaults and the objects they hold (`model.w`, `cfg["act"]["scale"]`). Values read
at every call (tensor contents, numpy array contents, optimizer hyperparameters) need no guard;
everything else was baked into the trace. So a guard records:

- the roots: each closure cell, default, bound `self`, and each global (and attribute of a user
  module or class) named by the code that ran while tracing (found with `sys.setprofile`, so a
  helper's method, a `@property` or a function called through a dict count too), by identity
  (or by value, for numbers and strings);
- every object reachable from the roots (containers, objects with a `__dict__`, the user classes
  of those objects and their class attributes, user functions with their closure cells and
  defaults): a fingerprint of what it holds, numbers and strings by value, other objects by
  identity. The guard holds these objects, so an identity is never reused while it is cached.

A call reuses the trace only if every root and fingerprint is unchanged. Most of what a training
step reaches is modules and optimizers, so those are not re-fingerprinted at every call: their
classes derive from `Watched`, whose `__setattr__` / `__delattr__` append (id, attribute) to one
change log, as do the `WatchedList` / `WatchedDict` an optimizer keeps its parameters and state
in. A guard remembers the newest log entry it has seen; a check compares it with the log's newest
entry (one comparison when nothing changed) and re-fingerprints only the watched objects named
by the entries after it, or every watched object if those are too many or have left the bounded
log. Everything else it holds (lists and dicts the user made, plain objects, functions, classes)
is checked at every call as before; tuples never change and are not. A watched object's instance
dict logs the writes made to it directly (`vars(module)[k] = v`). Writes the log cannot see:
`object.__setattr__(module, k, v)` (it writes through C; `NEEDLEC_CHECK=1` catches the stale
trace), and a subclass that overrides `__setattr__` (its objects are checked at every call
instead). There is no walk limit:
a guard that checks many objects warns once, when it is made. Objects that hold state no
fingerprint reads (`__slots__`, C extension types) are guarded by identity only and listed by
`NEEDLEC_DEBUG=guards`.
"""

from __future__ import annotations

import dis
import functools
import operator
import sys
import types
import warnings
from collections import deque
from collections.abc import Callable, Iterator

import numpy as np

_MISSING = object()
_NAN = ("nan",)  # NaN compares equal to itself here: a NaN setting is not a change
_LARGE = 20_000  # items a guard checks at every call before it warns that this is slow
_PLAIN = (int, float, bool, str, bytes, complex, type(None), np.generic, np.dtype)
_VALUE_TYPES = {int, float, bool, str, bytes, complex, type(None)}  # grows: types seen plain
_OBJECT_TYPES: set[type] = set()  # grows: types seen that are kept by identity
_NOT_ENTERED = (types.ModuleType, types.BuiltinFunctionType, types.CodeType, np.ndarray)
_DUNDER_SKIP = frozenset({"__dict__", "__weakref__", "__doc__", "__module__", "__qualname__"})

Getter = Callable[[], object]
_call = getattr(operator, "call", lambda f: f())  # f(): operator.call from Python 3.11

# The change log: (id(obj), attribute name or None) for every write to a Watched object or
# container, newest last. A guard holds the newest entry it has checked (so that entry is never
# freed and its identity never reused); one that left the log makes the guard check everything.
_CHANGES: deque = deque([(-1, None)], maxlen=4096)


def note_change(obj: object, name: str | None = None) -> None:
    """Record that `obj` changed (its attribute `name`; None: its items). Call it after the
    change: a guard that reads the entry must see the new value. Code that writes an instance
    `__dict__` of a Watched object directly (bypassing `__setattr__`) calls this."""
    _CHANGES.append((id(obj), name))


class Watched:
    """A base class whose attribute writes and deletions go to the change log, so guards check
    its objects only when the log names them (nn.Module and Optimizer derive from it). Setting
    an attribute to the very object it holds (`model.train()` in training mode) changes no
    fingerprint and is not logged."""

    __slots__ = ()

    def __setattr__(self, name: str, value: object) -> None:
        try:
            d = self.__dict__
        except AttributeError:  # a subclass with __slots__ only
            object.__setattr__(self, name, value)
            _CHANGES.append((id(self), name))
            return
        same = d.get(name, _MISSING) is value
        object.__setattr__(self, name, value)
        if type(d) is dict:  # from now on, writes to the instance dict itself are logged too
            object.__setattr__(self, "__dict__", _InstanceDict(d, id(self)))
        if not same:
            _CHANGES.append((id(self), name))

    def __delattr__(self, name: str) -> None:
        object.__delattr__(self, name)
        _CHANGES.append((id(self), name))

    def __setstate__(self, state) -> None:
        """Unpickling (and `copy.deepcopy`): the state lands in a logged instance dict."""
        if isinstance(state, tuple):  # (dict, slots) from a subclass with __slots__
            state, slots = state
            for k, v in (slots or {}).items():
                object.__setattr__(self, k, v)
        if state:
            for k, v in state.items():
                object.__setattr__(self, k, v)
            object.__setattr__(self, "__dict__", _InstanceDict(self.__dict__, id(self)))


class _InstanceDict(dict):
    """The instance dict of a Watched object: writes made to it directly (`vars(m)[k] = v`,
    `m.__dict__.update(...)`) go to the change log too. (`object.__setattr__(m, k, v)` writes
    through C and is still not seen.) Pickles as a plain dict."""

    __slots__ = ("owner",)

    def __init__(self, items, owner: int) -> None:
        super().__init__(items)
        self.owner = owner

    def __reduce__(self):
        return (dict, (dict(self),))


def _logged_item(name: str) -> Callable:
    method = getattr(dict, name)

    def logged(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        finally:
            _CHANGES.append((self.owner, args[0] if name == "__setitem__" and args else None))

    logged.__name__ = logged.__qualname__ = name
    logged.__doc__ = method.__doc__
    return logged


for _name in (
    "__setitem__", "__delitem__", "pop", "popitem", "clear", "update", "setdefault", "__ior__",
):  # fmt: skip
    setattr(_InstanceDict, _name, _logged_item(_name))
del _name


def _logged(base: type, name: str) -> Callable:
    """`base.name`, followed by a change-log entry for the container (even if it raised: a
    `sort` whose key raises may have moved items)."""
    method = getattr(base, name)

    def logged(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        finally:
            _CHANGES.append((id(self), None))

    logged.__name__ = logged.__qualname__ = name
    logged.__doc__ = method.__doc__
    return logged


class WatchedList(list):
    """A list whose mutating methods go to the change log (an optimizer's `params`). Writes
    through `list`'s own methods (`list.append(xs, v)`) are not seen."""

    __slots__ = ()


class WatchedDict(dict):
    """A dict whose mutating methods go to the change log (an optimizer's state by parameter
    index). Writes through `dict`'s own methods (`dict.update(d, ...)`) are not seen."""

    __slots__ = ()


for _name in (
    "append", "extend", "insert", "pop", "remove", "clear", "sort", "reverse",
    "__setitem__", "__delitem__", "__iadd__", "__imul__",
):  # fmt: skip
    setattr(WatchedList, _name, _logged(list, _name))
for _name in (
    "__setitem__", "__delitem__", "pop", "popitem", "clear", "update", "setdefault", "__ior__",
):  # fmt: skip
    setattr(WatchedDict, _name, _logged(dict, _name))
del _name


@functools.cache  # one entry per class a guard meets
def _watched_type(kind: type) -> bool:
    """Whether every change to an object of this type that a fingerprint reads is logged."""
    if kind is WatchedList or kind is WatchedDict:
        return True
    return (
        issubclass(kind, Watched)
        and kind.__setattr__ is Watched.__setattr__
        and kind.__delattr__ is Watched.__delattr__
        and not getattr(kind, "_jit_opaque", False)
        and getattr(kind, "_jit_guard_attrs", None) is None
    )


class Root:
    """A named zero-argument reader of something a function can reach (a global, a cell)."""

    __slots__ = ("name", "read", "key")

    def __init__(self, name: str, read: Getter, key: object = None) -> None:
        self.name, self.read, self.key = name, read, key

    def __call__(self) -> object:
        return self.read()


_LIBRARIES = {"needlec", "numpy", "scipy", "llvmlite", *sys.stdlib_module_names}


def _library(module: str | None) -> bool:
    """Whether a module name belongs to needlec itself, numpy or the standard library."""
    if not module:
        return False
    top = module.split(".")[0]
    return top in _LIBRARIES and not module.startswith("needlec.examples")


@functools.lru_cache(maxsize=1024)
def _installed(filename: str) -> bool:
    """Whether code comes from an installed package (its globals are the package's, not the
    user's: a test runner's or profiler's callbacks also run while a trace runs)."""
    return "site-packages" in filename or "dist-packages" in filename


def _cell(cell) -> object:
    try:
        return cell.cell_contents
    except ValueError:  # an empty cell
        return _MISSING


@functools.lru_cache(maxsize=4096)
def _global_names(code: types.CodeType) -> tuple[frozenset, frozenset]:
    """(names this code object reads as globals, every name it uses) (nested code excluded)."""
    loads = {
        i.argval for i in dis.get_instructions(code) if i.opname in ("LOAD_GLOBAL", "LOAD_NAME")
    }
    return frozenset(loads), frozenset(code.co_names)


def _nested_codes(code: types.CodeType) -> Iterator[types.CodeType]:
    todo = [code]
    while todo:
        c = todo.pop()
        yield c
        todo.extend(k for k in c.co_consts if isinstance(k, types.CodeType))


def global_roots(code: types.CodeType, glb: dict, out: dict) -> None:
    """Add to `out` (id key -> Root) the globals `code` reads, and the attributes of user
    modules and classes among them that the code names (`cfg_module.W`)."""
    if _library(glb.get("__name__")) or _installed(code.co_filename):
        return  # our own (and numpy's, the standard library's) globals are not user state
    loads, names = _global_names(code)
    for name in loads:
        if name not in glb or (id(glb), name) in out:
            continue
        value = glb[name]
        if isinstance(value, types.ModuleType) and _library(value.__name__):
            continue  # `np`, `nc`: never rebound in practice, and costly to check by the dozen
        out[(id(glb), name)] = Root(name, lambda g=glb, n=name: g.get(n, _MISSING))
        if isinstance(value, types.ModuleType | type) and not _library(
            getattr(value, "__module__", None) or value.__name__
        ):
            for attr in names & set(dir(value)):
                key = (id(value), attr)
                if key not in out:
                    read = lambda o=value, a=attr: getattr(o, a, _MISSING)  # noqa: E731
                    out[key] = Root(f"{name}.{attr}", read)


def _keyed(out: dict) -> list[Root]:
    for k, r in out.items():
        r.key = k
    return list(out.values())


def merge(*lists: list[Root]) -> list[Root]:
    """The roots of several lists, each once."""
    out: dict = {}
    for roots_ in lists:
        for r in roots_:
            out.setdefault(r.key if r.key is not None else id(r), r)
    return list(out.values())


def roots(fn: Callable) -> list[Root]:
    """Readers of what `fn` can reach before it runs: closure cells, bound self, defaults, and
    the globals its code (and the functions found that way) names. Re-read on every call, so
    rebinding a global or a `nonlocal` is seen. Tracing adds the globals of the code it ran."""
    out: dict = {}
    seen, todo = set(), [fn]
    while todo:
        f = todo.pop()
        if id(f) in seen:
            continue
        seen.add(id(f))
        if isinstance(f, types.MethodType):
            out[("self", id(f))] = Root("self", lambda obj=f.__self__: obj)
            todo.append(f.__func__)
            continue
        if isinstance(f, functools.partial):  # its function, and the arguments it binds
            out[("partial", id(f))] = Root("partial.args", lambda p=f: p.args)
            out[("keywords", id(f))] = Root("partial.keywords", lambda p=f: p.keywords)
            todo.append(f.func)
            continue
        code = getattr(f, "__code__", None)
        if code is None:  # a callable object: its attributes are what it reads
            out[("obj", id(f))] = Root(type(f).__name__, lambda obj=f: obj)
            if getattr(f, "__wrapped__", None) is not None:
                todo.append(f.__wrapped__)
            continue
        name = getattr(f, "__name__", "f")
        # (partial(getattr, ...): read in C, for the hit path's guard check)
        defaults = functools.partial(getattr, f, "__defaults__")
        out[("defaults", id(f))] = Root(f"{name}.__defaults__", defaults)
        kwdefaults = functools.partial(getattr, f, "__kwdefaults__")
        out[("kwdefaults", id(f))] = Root(f"{name}.__kwdefaults__", kwdefaults)
        for var, cell in zip(code.co_freevars, f.__closure__ or (), strict=False):
            out[("cell", id(cell))] = Root(var, lambda c=cell: _cell(c))
            value = _cell(cell)
            if isinstance(value, types.FunctionType):
                todo.append(value)
        glb = getattr(f, "__globals__", {})
        for c in _nested_codes(code):
            global_roots(c, glb, out)
        for c in _nested_codes(code):
            for n in _global_names(c)[0]:
                if isinstance(glb.get(n), types.FunctionType):
                    todo.append(glb[n])
    return _keyed(out)


class CodeRecorder:
    """While active in this thread, records the code objects that run (and their globals).

    A profiler already running (cProfile, a debugger) is left alone: then only the globals
    that `roots` finds before the call are guarded, and `skipped` says so."""

    def __init__(self) -> None:
        self.codes: dict[types.CodeType, dict] = {}
        self.skipped = False

    def __enter__(self) -> CodeRecorder:
        if sys.getprofile() is not None:
            self.skipped = True
            return self
        codes = self.codes

        def profile(frame, event, arg):
            if event == "call" and frame.f_code not in codes:
                codes[frame.f_code] = frame.f_globals

        sys.setprofile(profile)
        return self

    def __exit__(self, *exc) -> None:
        if not self.skipped:
            sys.setprofile(None)

    def roots(self) -> list[Root]:
        """Readers of the globals the recorded code read."""
        while True:  # a __del__ run by the collector meanwhile is recorded too: read again
            try:
                codes = list(self.codes.items())
                break
            except RuntimeError:
                continue
        out: dict = {}
        for code, glb in codes:
            global_roots(code, glb, out)
        return _keyed(out)


def _key(v) -> object:
    """What a fingerprint keeps of a value: numbers and strings themselves, else identity."""
    kind = type(v)
    if kind in _VALUE_TYPES:
        return v if v == v else _NAN
    if kind in _OBJECT_TYPES:
        return ("id", id(v))
    # first meeting of this type (isinstance on numpy's types is slow: ask once per type)
    (_VALUE_TYPES if isinstance(v, _PLAIN) else _OBJECT_TYPES).add(kind)
    return _key(v)


@functools.cache  # one entry per class a guard meets
def _user_classes_of(kind: type) -> tuple[type, ...]:
    return tuple(c for c in kind.__mro__ if not _library(c.__module__) and c is not object)


def _user_classes(x) -> tuple[type, ...]:
    return _user_classes_of(type(x))


def _children(x) -> list[tuple[tuple, object]]:
    """(step, child) pairs of an object a guard enters; steps are ("attr"|"item"|"class", key)."""
    if isinstance(x, list | tuple):
        return [(("item", i), v) for i, v in enumerate(x)]
    if isinstance(x, dict):
        return [(("item", k), v) for k, v in x.items()]
    if isinstance(x, types.FunctionType):
        cells = zip(x.__code__.co_freevars, x.__closure__ or (), strict=False)
        out = [(("cell", n), _cell(c)) for n, c in cells]
        return out + [(("attr", "__defaults__"), x.__defaults__)]
    if isinstance(x, types.MethodType):
        return [(("attr", "__self__"), x.__self__), (("attr", "__func__"), x.__func__)]
    if isinstance(x, functools.partial):
        return [
            (("attr", "func"), x.func),
            (("attr", "args"), x.args),
            (("attr", "kw"), x.keywords),
        ]
    if isinstance(x, property):
        return [(("attr", "fget"), x.fget)]
    if isinstance(x, type):
        return [(("attr", k), v) for k, v in vars(x).items() if k not in _DUNDER_SKIP]
    kind = type(x)
    if getattr(kind, "_jit_opaque", False):  # compiled code: nothing a trace reads
        return []
    only = getattr(kind, "_jit_guard_attrs", None)
    if only is not None:
        return [(("attr", k), getattr(x, k)) for k in only]
    d = getattr(x, "__dict__", None)
    if not isinstance(d, dict):
        return []
    out = [(("attr", k), v) for k, v in d.items()]
    return out + [(("class", c.__qualname__), c) for c in _user_classes(x)]


def _enters(x) -> bool:
    """Whether a guard fingerprints `x` (else it is kept by identity or value only)."""
    if isinstance(x, _PLAIN) or isinstance(x, _NOT_ENTERED):
        return False
    if isinstance(x, list | tuple | dict | functools.partial | property | types.MethodType):
        return True
    if isinstance(x, types.FunctionType | type):
        return not _library(getattr(x, "__module__", None))
    return isinstance(getattr(x, "__dict__", None), dict)


def _unseen(x) -> bool:
    """Whether `x` may hold state that no fingerprint reads (slots, a C extension object)."""
    if isinstance(x, _PLAIN + _NOT_ENTERED) or callable(x) or _enters(x):
        return False
    module = getattr(type(x), "__module__", None)
    return module != "builtins" and not _library(module)


def where(root: str, path: tuple) -> str:
    """An access path as the user would write it: `cache['h']`, `model.layers[0].w`."""
    out = root
    for kind, key in path:
        if kind == "item":
            out += f"[{key!r}]"
        elif kind == "class":
            out = f"type({out})"
        elif kind == "cell":
            out += f" (closure variable {key})"
        else:
            out += f".{key}"
    return out


def walk(getters: list[Root], is_leaf: Callable[[object], bool]):
    """(root name, path, object) for everything reachable from the roots, each once, depth
    first; leaves (tensors) are yielded but not entered."""
    seen: set[int] = set()
    todo = [(g.name, (), g()) for g in reversed(getters)]
    while todo:
        name, path, x = todo.pop()
        if x is _MISSING or isinstance(x, _PLAIN) or id(x) in seen:
            continue
        seen.add(id(x))
        yield name, path, x
        if not is_leaf(x) and _enters(x):
            todo.extend((name, (*path, step), v) for step, v in reversed(_children(x)))


def _layout(x) -> str:
    """How `_fingerprint` reads `x`: "seq" (keys by index), "item" (dict (key, key) pairs),
    "attr" (an object's (attribute, key) pairs, then its user classes), "step" (steps)."""
    kind = type(x)
    if kind is list or kind is tuple:
        return "seq"
    if kind is dict or kind is WatchedDict:
        return "item"
    if kind is WatchedList:
        return "seq"
    if (
        type(getattr(x, "__dict__", None)) is dict
        and not isinstance(x, types.FunctionType | type | functools.partial)
        and not getattr(kind, "_jit_opaque", False)
        and getattr(kind, "_jit_guard_attrs", None) is None
    ):
        return "attr"
    return "seq" if isinstance(x, list | tuple) else "step"


def _fingerprint(x, skip: frozenset, layout: str) -> tuple:
    """What `x` holds: numbers and strings by value, other objects by identity (the hot path:
    run for every object a guard holds, before every call)."""
    if layout == "seq":
        return tuple(map(_key, x))
    if layout == "item":  # keys too by _key: a tensor key must never be compared with ==
        out = [(_key(k), _key(v)) for k, v in x.items()]
        return tuple([e for e in out if e[0] not in skip] if skip else out)
    if layout == "attr":
        items = x.__dict__.items()
        out = (
            [(k, _key(v)) for k, v in items if k not in skip]
            if skip
            else [(k, _key(v)) for k, v in items]
        )
        classes = _user_classes_of(type(x))
        if classes:
            out.append((_CLASSES, tuple(map(id, classes))))
        return tuple(out)
    out = [((kind, _key(k)), _key(v)) for (kind, k), v in _children(x)]
    return tuple([e for e in out if e[0] not in skip and e[0][1] not in skip] if skip else out)


_CLASSES = ("class",)  # the fingerprint entry of an object's user classes


def _changed_entries(old: tuple, new: tuple, layout: str) -> frozenset | None:
    """The fingerprint entries that differ (as `_fingerprint` skips them), or None when only
    the whole object will do (a list that grew, a changed class)."""
    if layout == "seq":
        return None
    was, now = dict(old), dict(new)
    changed = {k for k in was.keys() | now.keys() if was.get(k, _MISSING) != now.get(k, _MISSING)}
    return None if _CLASSES in changed else frozenset(changed)


def _snapshot(x, layout: str) -> tuple | None:
    """The objects `x` holds now (for `_unchanged`), or None where only a fingerprint will do."""
    if layout == "seq":
        return (tuple(x), (), None)
    if layout == "item":
        return (tuple(x.values()), tuple(x), None)
    if layout == "attr":
        return (tuple(x.__dict__.values()), tuple(x.__dict__), type(x))
    if type(x) is types.FunctionType:  # its closure variables, then its defaults
        return (tuple(map(_cell, x.__closure__ or ())) + (x.__defaults__,), (), _FUNCTION_SNAP)
    if isinstance(x, type):  # a user class: its attributes
        d = vars(x)
        return (tuple(d.values()), tuple(d), _CLASS_SNAP)
    return None


_FUNCTION_SNAP, _CLASS_SNAP = ("function",), ("class",)  # the kinds of "step" snapshots


def _unchanged(x, layout: str, snap: tuple) -> bool:
    """Whether `x` holds the very same objects (keys included) as in `snap`: no fingerprint
    needed then. A value rebound to an equal number fails this and is fingerprinted instead."""
    values, keys, kind = snap
    if layout == "seq":
        return len(x) == len(values) and all(map(operator.is_, x, values))
    if kind is _FUNCTION_SNAP:
        cells = x.__closure__ or ()
        return (
            len(cells) + 1 == len(values)
            and x.__defaults__ is values[-1]
            and all(map(operator.is_, map(_cell, cells), values))
        )
    if kind is _CLASS_SNAP:
        x = vars(x)
    elif layout == "attr":
        if type(x) is not kind:
            return False
        x = x.__dict__
    return (
        len(x) == len(values)
        and all(map(operator.is_, x.values(), values))
        and all(map(operator.is_, x, keys))
    )


class Guard:
    """What a trace assumed about the objects its function reads (see the module docstring).

    `dynamic` holds (id(obj), name) of the attributes the graph reads or writes at every call
    (`opt.lr`, `opt.t`): those are inputs, not assumptions.
    """

    _jit_opaque = True  # a guard walk never enters another guard

    def __init__(
        self,
        getters: list[Root],
        is_leaf: Callable[[object], bool],
        dynamic=frozenset(),
        before: dict | None = None,
    ) -> None:
        self.roots = getters
        self._last = _CHANGES[-1]  # before the walk: a change made during it is seen later
        self.root_values = [g() for g in getters]  # held: their identity stays theirs
        self.root_keys = [_key(v) for v in self.root_values]
        self._readers = [g.read for g in getters]
        skips: dict[int, set] = {}
        for i, name in dynamic:
            skips.setdefault(i, set()).add(name)
        # (object, skip, layout, fingerprint, root name, path, snapshot of its contents)
        self.objects: list = []
        self.unseen: list[str] = []  # where objects that no fingerprint reads were found
        self.written: list[str] = []  # objects the function changed while it was traced
        n_items = 0
        for name, path, x in walk(getters, is_leaf):
            if is_leaf(x) or not _enters(x):
                if not is_leaf(x) and _unseen(x):
                    self.unseen.append(f"{where(name, path)} ({type(x).__name__})")
                continue
            skip = frozenset(skips.get(id(x), ()))
            layout = _layout(x)
            fp = _fingerprint(x, skip, layout)
            full = fp if not skip or before is None else _fingerprint(x, frozenset(), layout)
            was = None if before is None else before.get(id(x))
            if was is not None and was != full:
                # written while tracing (`calls.append(...)`, `state["n"] += 1`): a side
                # effect, not an input; the other entries stay guarded
                changed = _changed_entries(was, full, layout)
                self.written.append(where(name, path))
                if changed is None:
                    continue
                skip = skip | changed
                fp = _fingerprint(x, skip, layout)
            n_items += len(fp)
            snap = None if skip else _snapshot(x, layout)
            self.objects.append((x, skip, layout, fp, name, path, snap))
        self.n_items = n_items + len(getters)
        # objects whose changes the log records, by id; the rest (but tuples: they never
        # change) are checked at every call
        self._watched = {id(e[0]): e for e in self.objects if _watched_type(type(e[0]))}
        self._walked = [
            e for e in self.objects if id(e[0]) not in self._watched and type(e[0]) is not tuple
        ]
        self._scan = 16 + 2 * len(self._watched)  # log entries worth reading before a full check
        self._stale_at: tuple | None = None  # (the log's newest entry, what changed) if stale
        self.visits = 0  # objects fingerprinted or compared by checks so far (for tests)

    def check(self) -> str | None:
        """None if the trace still holds, else what changed."""
        # every root reads the very object it read at trace time (the common case, in C)
        if not all(map(operator.is_, map(_call, self._readers), self.root_values)):
            for g, value, old in zip(self.roots, self.root_values, self.root_keys, strict=True):
                now = g.read()
                if now is value:
                    continue
                new = _key(now)
                if new != old:
                    return f"{g.name} changed ({_show(old)} -> {_show(new)})"
        for entry in self._walked:
            why = self._stale(entry)
            if why is not None:
                return why
        head = _CHANGES[-1]
        if head is self._last:
            return None  # the steady state: nothing was written to a watched object
        return self._check_watched(head)

    def _stale(self, entry: tuple) -> str | None:
        """None if one object holds what it held at trace time, else what changed."""
        x, skip, layout, old, name, path, snap = entry
        self.visits += 1
        try:
            if snap is not None and _unchanged(x, layout, snap):
                return None  # the fast path: the same objects in the same places
            new = _fingerprint(x, skip, layout)
        except RuntimeError:  # another thread changed its size while it was read
            return f"{where(name, path)} changed while it was checked"
        if new != old:
            return _describe(where(name, path), old, new, layout)
        return None

    def _check_watched(self, head: tuple) -> str | None:
        """Check the watched objects the change log names after the last entry this guard saw
        (all of them if it cannot tell which), then remember `head` as seen."""
        if self._stale_at is not None and self._stale_at[0] is head:
            return self._stale_at[1]  # stale when the log ended here, and nothing was written since
        watched, last = self._watched, self._last
        named: set | None = None
        if watched:
            try:
                ids: set = set()
                for n, change in enumerate(reversed(_CHANGES)):
                    if change is last:
                        named = ids
                        break
                    if n >= self._scan:
                        break  # many changes: checking every object costs less
                    i, attr = change
                    entry = watched.get(i)
                    if entry is not None and attr not in entry[1]:  # not an input it skips
                        ids.add(i)
            except RuntimeError:  # another thread wrote meanwhile
                named = None
            entries = watched.values() if named is None else [watched[i] for i in named]
            for entry in entries:
                why = self._stale(entry)
                if why is not None:
                    self._stale_at = (head, why)
                    return why
        self._last = head
        return None

    def summary(self) -> str:
        """What this guard checks, for NEEDLEC_DEBUG=guards."""
        lines = [f"{len(self.roots)} roots, {len(self.objects)} objects, {self.n_items} items"]
        if self.written:
            lines.append("changed while tracing (not guarded): " + ", ".join(self.written))
        if self.unseen:
            lines.append("no guard sees inside (identity only): " + ", ".join(self.unseen))
        return "; ".join(lines)


def fingerprints(getters: list[Root], is_leaf: Callable[[object], bool]) -> dict[int, tuple]:
    """id -> fingerprint of every object a guard would enter (taken before a trace, to tell
    the objects the function writes while tracing)."""
    return {
        id(x): _fingerprint(x, frozenset(), _layout(x))
        for _, _, x in walk(getters, is_leaf)
        if not is_leaf(x) and _enters(x)
    }


def _show(k) -> str:
    if k is _NAN:
        return "nan"
    if k == ("id", id(_MISSING)):
        return "missing"
    if isinstance(k, tuple) and len(k) == 2 and k[0] == "id":
        return "another object"
    return repr(k)


def _describe(at: str, old: tuple, new: tuple, layout: str) -> str:
    if layout != "seq":
        before, after = dict(old), dict(new)
        for step in [*before, *(s for s in after if s not in before)]:
            a, b = before.get(step, _MISSING), after.get(step, _MISSING)
            if a != b:
                if step is _CLASSES:
                    return f"the class of {at} changed"
                sub = where(at, (step if layout == "step" else (layout, step),))
                if a is _MISSING or b is _MISSING:
                    return f"{sub} was {'added' if a is _MISSING else 'removed'}"
                return f"{sub} changed ({_show(a)} -> {_show(b)})"
    if len(old) != len(new):
        return f"{at} changed length ({len(old)} -> {len(new)})"
    for i, (a, b) in enumerate(zip(old, new, strict=True)):
        if a != b:
            return f"{at}[{i}] changed ({_show(a)} -> {_show(b)})"
    return f"{at} changed"


def warn_if_large(name: str, guard: Guard) -> bool:
    """A guard is checked at every call: say so when it is large enough to cost (True if so)."""
    if guard.n_items <= _LARGE:
        return False
    warnings.warn(
        f"jit({name}) reaches {guard.n_items:,} objects and values through its globals, "
        "closure and objects, and checks them all before every call. Pass large data as "
        "an argument, or keep it where the function does not reach it.",
        stacklevel=4,
    )
    return True


def plain_state(getters: list[Root], is_leaf) -> list:
    """The Python numbers and strings held by each root but tensors (for the side-effect check)."""
    out = []
    for x in (g() for g in getters):
        if is_leaf(x):
            out.append(None)
        elif isinstance(x, _PLAIN):
            out.append(_key(x))
        elif _enters(x) and not isinstance(x, types.FunctionType | type):
            layout = _layout(x)
            fp = _fingerprint(x, frozenset(), layout)
            if layout == "seq":
                out.append(tuple(k for k in fp if not _is_id(k)))
            else:
                out.append(tuple(e for e in fp if not _is_id(e[1]) and e[0] is not _CLASSES))
        else:
            out.append(None)
    return out


def _is_id(k) -> bool:
    """Whether a fingerprint key stands for an object (not a number or string)."""
    return type(k) is tuple and len(k) == 2 and k[0] == "id"


def check_side_effects(
    name: str, getters: list[Root], before: list, trace, is_leaf, more: list[Root] = ()
) -> None:
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
    for root, path, x in walk(merge(getters, list(more)), is_leaf):
        if is_leaf(x) and getattr(x, "_trace", None) is trace:
            raise TracerError(
                f"jit({name}) stored a traced value in {where(root, path)}: writes to Python "
                "objects inside jit are not replayed at each call. Return the value from the "
                "function, or keep the state in a tensor made outside the function and "
                "assign its .data (written back after every call)."
            )
