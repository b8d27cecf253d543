"""Pytrees: nested tuples, lists and dicts flattened to leaves and a hashable structure."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# other container types: type -> (children of a value, rebuild from children)
CONTAINERS: dict[type, tuple[Callable[[Any], list], Callable[[list], Any]]] = {}


def register_container(cls: type, children: Callable, rebuild: Callable) -> None:
    """Let `flatten` see through values of `cls` (e.g. TensorTuple)."""
    CONTAINERS[cls] = (children, rebuild)


def flatten(tree: Any) -> tuple[list, Any]:
    """(leaves, structure). Tuples (namedtuples too), lists and dicts (and their subclasses) are
    containers, as are registered types; None is empty; anything else is a leaf."""
    leaves: list = []

    def walk(x):
        if isinstance(x, tuple | list):
            return ("seq", type(x), tuple(walk(v) for v in x))
        if isinstance(x, dict):
            keys = tuple(x)
            return ("dict", type(x), keys, tuple(walk(x[k]) for k in keys))
        if x is None:
            return ("none",)
        if type(x) in CONTAINERS:
            return ("registered", type(x), tuple(walk(v) for v in CONTAINERS[type(x)][0](x)))
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
            return s[1](zip(s[2], [build(v) for v in s[3]], strict=True))
        items = [build(v) for v in s[2]]
        if kind == "registered":
            return CONTAINERS[s[1]][1](items)
        cls = s[1]
        return cls(*items) if hasattr(cls, "_fields") else cls(items)

    out = build(structure)
    build = None  # break the closure's reference cycle (see flatten)
    return out
