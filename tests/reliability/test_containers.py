"""Standard containers as jit arguments and results: they keep their type and contents."""

from __future__ import annotations

from collections import OrderedDict, defaultdict, namedtuple

import numpy as np
import pytest

import needlec as nc
from needlec.frontend.pytree import register_container

X = np.arange(3, dtype="float32")
Point = namedtuple("Point", "x y")


class Plain(list):
    """A list subclass that takes its items as a list does."""


class PlainDict(dict):
    pass


class Pair(list):
    """A list subclass with an __init__ of its own."""

    def __init__(self, a, b):
        super().__init__([a, b])


@pytest.mark.parametrize(
    "make",
    [
        lambda x: defaultdict(list, a=x, b=[x, x]),
        lambda x: OrderedDict([("b", x), ("a", x * 2)]),
        lambda x: Plain([x, x * 3]),
        lambda x: PlainDict(a=x),
        lambda x: Point(x, x + 1),
    ],
    ids=["defaultdict", "OrderedDict", "list-subclass", "dict-subclass", "namedtuple"],
)
def test_container_round_trips_through_jit(make):
    tree = make(nc.Tensor(X, requires_grad=False))
    seen = []

    def f(t):
        seen.append(type(t))
        return t

    out = nc.jit(f)(tree)
    assert seen == [type(tree)]  # the function sees the container it was given
    assert type(out) is type(tree)
    if isinstance(tree, dict):
        assert list(out) == list(tree)
        pairs = [(out[k], tree[k]) for k in tree]
    else:
        pairs = list(zip(out, tree, strict=True))
    for got, want in pairs:
        got, want = (got, want) if not isinstance(got, list) else (got[0], want[0])
        np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_defaultdict_keeps_its_factory():
    out = nc.jit(lambda d: d)(defaultdict(list, a=nc.Tensor(X)))
    assert out.default_factory is list
    assert out["missing"] == []


def test_defaultdict_of_arrays_computes():
    d = defaultdict(int, a=X, b=X * 2)
    out = nc.jit(lambda d: d["a"] + d["b"])(d)
    np.testing.assert_array_equal(out.numpy(), X * 3)


def test_subclass_with_its_own_init_says_how_to_register():
    with pytest.raises(TypeError, match="register_container"):
        nc.jit(lambda p: p[0] + p[1])(Pair(X, X))


def test_registered_subclass_works():
    class Twin(list):
        def __init__(self, a, b):
            super().__init__([a, b])

    register_container(Twin, list, lambda items: Twin(*items))
    out = nc.jit(lambda p: Twin(p[1], p[0] * 2))(Twin(X, X + 1))
    assert type(out) is Twin
    np.testing.assert_array_equal(out[1].numpy(), X * 2)
