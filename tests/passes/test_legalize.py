"""Legalize: every conversion in a kernel an explicit cast, every constant typed, and the values
unchanged (the kernel interpreter gives the same bits before and after)."""

from __future__ import annotations

import numpy as np
import pytest

import needlec as nc
from needlec import nn
from needlec.codegen.kernels import run_kernels
from needlec.ir.kernel import KOp
from needlec.ir.ops import Op
from needlec.passes import fuse, optimize
from needlec.passes.legalize import is_legal, legalize, why_illegal

from .steps import lower_sgd_step

RNG = np.random.default_rng(0)
I32 = np.array([[1, -2, 3], [7, 0, -5]], np.int32)
J32 = np.array([[3, 2, -1], [2, 4, 5]], np.int32)
F32 = np.array([[-1.5, 0.0, 2.5], [np.nan, -0.0, np.inf]], np.float32)
F64 = RNG.standard_normal((2, 3))

# name -> (function, arguments): each mixes dtypes the way numpy promotes them
CASES = {
    "int_div_int": (lambda a, b: a / b, (I32, J32)),
    "int_pow_negative": (lambda a: a**-2, (J32,)),
    "int_pow_int": (lambda a: a**3, (I32,)),
    "int_times_float_scalar": (lambda a: a * 0.1, (I32,)),
    "int_plus_int_scalar": (lambda a: a + 3, (I32,)),
    "bool_times_float": (lambda f: (f > 0) * f, (F32,)),
    "int_exp": (lambda a: nc.ops.exp(a), (I32,)),
    "int_less_than_float": (lambda a, f: a < f, (I32, F32)),
    "float32_plus_float64": (lambda f, g: f + g, (F32, F64)),
    "sum_of_bools": (lambda f: (f > 0).sum(), (F32,)),
    "relu_of_int": (lambda a: nc.ops.relu(a), (I32,)),
    "max_with_nan": (lambda f: f.max(axes=(1,)), (F32,)),
    "int_sum": (lambda a: a.sum(axes=(0,)), (I32,)),
    "int_times_bool": (lambda a: a * (a > 0), (I32,)),
}


def _tensor(a: np.ndarray) -> nc.Tensor:
    return nc.Tensor(a, dtype=str(a.dtype))


@pytest.mark.parametrize("name", list(CASES))
def test_legalized_kernels_compute_the_same_bits(name):
    fn, args = CASES[name]
    low = nc.jit(fn).lower(*map(_tensor, args))
    for k in low.kernels.kernels:
        assert is_legal(k), why_illegal(k)
    raw = fuse(optimize(low.traced.graph))  # the same kernels as fusion wrote them
    legal = legalize(raw)
    for before, after in zip(run_kernels(raw, args), run_kernels(legal, args), strict=True):
        assert before.dtype == after.dtype
        np.testing.assert_array_equal(before, after)  # NaN where NaN, -0.0 where -0.0
        assert np.array_equal(np.signbit(before), np.signbit(after))


# what numpy computes where the function itself does not run on numpy arrays as it is
ORACLE = {
    "int_pow_negative": lambda a: a.astype("float64") ** -2,  # needle's power: a float result
    "int_exp": np.exp,
    "relu_of_int": lambda a: np.maximum(a, 0),
    "max_with_nan": lambda f: f.max(axis=1),
    "int_sum": lambda a: a.sum(axis=0),
    "sum_of_bools": lambda f: (f > 0).sum(),
}


@pytest.mark.parametrize("name", list(CASES))
def test_mixed_dtype_functions_agree_with_numpy(name):
    fn, args = CASES[name]
    got = nc.jit(fn)(*map(_tensor, args))
    with np.errstate(all="ignore"):
        want = np.asarray(ORACLE.get(name, fn)(*args))
    np.testing.assert_allclose(got.numpy(), want.astype(got.dtype), rtol=1e-6)


def test_casts_are_explicit():
    """int32 / int32 divides in float64: both loads are cast up, the quotient cast down."""
    low = nc.jit(lambda a, b: a / b).lower(_tensor(I32), _tensor(J32))
    (k,) = low.kernels.kernels
    ops = [e.op for e in k.exprs]
    assert ops.count(Op.CAST) == 3, k.as_text()
    div = next(e for e in k.exprs if e.op is Op.DIV)
    assert div.dtype == "float64" and all(s.dtype == "float64" for s in div.src)


def test_scalars_are_typed_in_the_compute_dtype():
    """0.1 times a float32 tensor multiplies by float32(0.1); times an int32 tensor, by
    float64(0.1) after the tensor is cast to float64, as numpy computes both."""
    for a, dt in ((F32, "float32"), (I32, "float64")):
        (k,) = nc.jit(lambda a: a * 0.1).lower(_tensor(a)).kernels.kernels
        (mul,) = [e for e in k.exprs if e.op is Op.MUL_SCALAR]
        assert isinstance(mul.arg, np.generic) and mul.arg.dtype == np.dtype(dt)
        assert "c=0.1" in k.as_text()
    (k,) = nc.jit(lambda f: (f > 0) * f).lower(_tensor(F32)).kernels.kernels
    consts = [e for e in k.exprs if e.op is KOp.CONST]
    assert consts and all(e.arg.dtype == np.dtype(e.dtype) for e in consts)


def test_why_illegal_names_the_value():
    raw = fuse(optimize(nc.jit(lambda a, b: a / b).lower(_tensor(I32), _tensor(J32)).traced.graph))
    (k,) = raw.kernels
    why = why_illegal(k)
    assert why is not None and k.name in why and "div" in why and "float64" in why
    once = legalize(raw)
    assert legalize(once) is once  # a legal kernel graph is returned as it is


def test_training_step_kernels_are_legal():
    np.random.seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    x = RNG.standard_normal((5, 6)).astype("float32")
    y = RNG.integers(0, 3, 5).astype("float32")
    lowered, _ = lower_sgd_step(model, x, y)
    for k in lowered.kernels.kernels:
        assert is_legal(k), why_illegal(k)
