"""Pytrees: nested tuples, lists and dicts flattened to leaves and a hashable structure."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

# other container types: type -> (children of a value, rebuild from children)
CONTAINERS: dict[type, tuple[Callable[[Any], list], Callable[[list], Any]]] = {}


def register_container(cls: type, children: Callable, rebuild: Callable) -> None:
    """Let `flatten` see through values of `cls` (e.g. TensorTuple): `children(value)` lists
    its items, `rebuild(items)` makes a value from them.

    >>> class Pair(list):
    ...     def __init__(self, a, b):
    ...         super().__init__([a, b])
    >>> register_container(Pair, list, lambda items: Pair(*items))
    >>> unflatten(*reversed(flatten(Pair(1, 2))))
    [1, 2]
    """
    CONTAINERS[cls] = (children, rebuild)


def _check_rebuildable(cls: type) -> None:
    """A subclass of tuple, list or dict is rebuilt as `cls(items)`: it must take its items as
    the standard containers do (no `__init__` or `__new__` of its own), unless registered."""
    if hasattr(cls, "_fields"):  # a namedtuple: cls(*items)
        return
    for name in ("__init__", "__new__"):
        owner = next(c for c in cls.__mro__ if name in c.__dict__)
        if owner.__module__ not in ("builtins", "collections"):
            raise TypeError(
                f"pytree: {cls.__qualname__} defines its own {name}, so it cannot be rebuilt "
                f"from its items; register it with needlec.frontend.pytree.register_container("
                f"{cls.__qualname__}, children, rebuild), where children(value) lists its "
                "items and rebuild(items) makes one from them"
            )


def flatten(tree: Any) -> tuple[list, Any]:
    """(leaves, structure). Tuples (namedtuples too), lists and dicts (OrderedDict, defaultdict
    and plain subclasses too) are containers, as are registered types; None is empty; anything
    else is a leaf."""
    leaves: list = []

    def walk(x):
        if type(x) in CONTAINERS:
            return ("registered", type(x), tuple(walk(v) for v in CONTAINERS[type(x)][0](x)))
        if isinstance(x, tuple | list):
            _check_rebuildable(type(x))
            return ("seq", type(x), tuple(walk(v) for v in x))
        if isinstance(x, dict):
            _check_rebuildable(type(x))
            keys = tuple(x)
            factory = x.default_factory if isinstance(x, defaultdict) else None
            return ("dict", type(x), keys, tuple(walk(x[k]) for k in keys), factory)
        if x is None:
            return ("none",)
        leaves.append(x)
        return "*"

    structure = walk(tree)
    walk = None  # a recursive closure is a reference cycle: break it, so the leaves free at once
    return leaves, structure


def unflatten(structure: Any, leaves: list) -> Any:
    """The inverse of `flatten`."""
    it = iter(leaves)

    def build(s):
        if s == "*":
            return next(it)
        kind = s[0]
        if kind == "none":
            return None
        if kind == "dict":
            items = zip(s[2], [build(v) for v in s[3]], strict=True)
            if issubclass(s[1], defaultdict):
                out = s[1](s[4])
                out.update(items)
                return out
            return s[1](items)
        items = [build(v) for v in s[2]]
        if kind == "registered":
            return CONTAINERS[s[1]][1](items)
        cls = s[1]
        return cls(*items) if hasattr(cls, "_fields") else cls(items)

    out = build(structure)
    build = None  # break the closure's reference cycle (see flatten)
    return out
