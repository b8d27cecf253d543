"""The jit cache key: the abstract signature of a call's arguments."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .pytree import flatten

_SCALARS = (bool, int, float, complex, str, bytes)


def _nan_free(value):
    """`value` as a key equal to itself: NaN floats (at any depth of tuples and frozensets)
    become a marker, since NaN != NaN would miss the cache on every call."""
    if isinstance(value, float) and value != value:
        return ("nan",)
    if type(value) is tuple:
        return tuple(_nan_free(v) for v in value)
    if type(value) is frozenset:
        return frozenset(_nan_free(v) for v in value)
    return value


def signature(
    name: str,
    args: Sequence,
    kwargs: dict,
    static_argnums: Sequence[int],
    static_argnames: Sequence[str],
    as_tensor: Callable[[object], object | None],
) -> tuple[tuple, list]:
    """(key, dynamic leaves) of a call; raises TypeError for a non-static Python value.

    The key holds the pytree structure of each argument, the shape, dtype, device and
    requires_grad of each tensor leaf, and static values themselves. `as_tensor` turns a leaf
    into a tensor (arrays included) or returns None for anything else.
    """
    key, leaves = [], []

    def dynamic(value, where: str, hint: str):
        flat, tree = flatten(value)
        sig = []
        for leaf in flat:
            t = as_tensor(leaf)
            if t is None:
                what = f"a {type(leaf).__name__}"
                what += f" ({leaf!r})" if isinstance(leaf, _SCALARS) else ""
                raise TypeError(
                    f"jit({name}): {where} is {what}, not a tensor, array or number. Pass "
                    "tensors, arrays, ints and floats (in tuples, lists or dicts), or declare it "
                    f"static: jit({name}, {hint})"
                )
            leaves.append(t)
            sig.append((t.shape, t.dtype, repr(t.device), t.requires_grad))
        return (tree, tuple(sig))

    def static(value, where: str):
        try:
            hash(value)
        except TypeError:
            raise TypeError(
                f"jit({name}): static {where} ({type(value).__name__}) must be hashable"
            ) from None
        return ("static", type(value), _nan_free(value))

    for i, a in enumerate(args):
        where = f"argument {i}"
        key.append(
            static(a, where) if i in static_argnums else dynamic(a, where, f"static_argnums=({i},)")
        )
    for k in sorted(kwargs):
        where = f"keyword argument {k!r}"
        key.append(
            (
                k,
                static(kwargs[k], where)
                if k in static_argnames
                else dynamic(kwargs[k], where, f"static_argnames=({k!r},)"),
            )
        )
    return tuple(key), leaves
