"""The jit cache: methods of unhashable instances, NaN static values, a bounded size, and a
retrace warning that says what keeps changing."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest

import needlec as nc


def _a(*shape) -> np.ndarray:
    return np.arange(1, 1 + int(np.prod(shape)), dtype="float32").reshape(shape) / 4


@dataclasses.dataclass
class Affine:
    scale: float

    @nc.jit
    def apply(self, x):
        return x * self.scale


def test_method_of_an_unhashable_dataclass_is_cached():
    m = Affine(2.0)
    x = _a(3)
    for _ in range(3):
        np.testing.assert_allclose(m.apply(x).numpy(), x * 2)
    assert m.apply.trace_count == 1
    m.scale = 5.0  # still guarded: a new trace, not a stale one
    np.testing.assert_allclose(m.apply(x).numpy(), x * 5)
    other = Affine(3.0)
    np.testing.assert_allclose(other.apply(x).numpy(), x * 3)


def test_nan_static_argument_hits_the_cache():
    def f(x, v):
        return x + 1.0 if v != v else x

    jf = nc.jit(f, static_argnums=(1,))
    x = _a(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "changed a Python value (nan -> nan)"
        for _ in range(3):
            np.testing.assert_allclose(jf(x, float("nan")).numpy(), x + 1)
    assert jf.trace_count == 1


def test_nan_inside_a_static_tuple_hits_the_cache():
    def f(x, cfg):
        return x + 1.0 if cfg[1] != cfg[1] else x

    jf = nc.jit(f, static_argnums=(1,))
    x = _a(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            np.testing.assert_allclose(jf(x, (2, float("nan"), (float("nan"),))).numpy(), x + 1)
    assert jf.trace_count == 1


def test_cache_is_bounded_least_recently_used():
    jf = nc.jit(lambda x: x * 2.0, cache_size=4)
    keep = _a(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for n in range(1, 12):
            jf(keep)  # used every time: never evicted
            np.testing.assert_allclose(jf(_a(n + 1)).numpy(), _a(n + 1) * 2)
    assert jf.cache_size() <= 4
    count = jf.trace_count
    jf(keep)
    assert jf.trace_count == count  # the recently used entry survived


def test_retrace_warning_names_what_keeps_changing_and_repeats():
    jf = nc.jit(lambda x: x * 2.0)
    with pytest.warns(UserWarning) as record:
        for n in range(1, 40):
            jf(_a(n))
    messages = [str(w.message) for w in record if "has traced" in str(w.message)]
    assert len(messages) >= 2  # not only at the 8th trace
    assert "argument 0" in messages[0] and "float32" in messages[0]
