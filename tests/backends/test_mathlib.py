"""The IR math library against numpy: ulp sweeps, exact special values, and vectorized loops."""

import ctypes
import functools
import re

import numpy as np
import pytest
from llvmlite import ir

from needlec.codegen.llvm import target
from needlec.codegen.llvm.mathlib import MATH_FUNCTIONS, math_function

IR_TYPES = {np.float32: ir.FloatType(), np.float64: ir.DoubleType()}
MAX_ULP = 4  # the budget; measured: 1 for every function and type
RNG_SEED = 20240611


def _loop_module(name: str, dtype) -> ir.Module:
    """`void f(T* x, [T* y,] T* out, i64 n)`: out[i] = name(x[i] [, y[i]])."""
    ty = IR_TYPES[dtype]
    module = ir.Module()
    fn_math = math_function(module, name, ty)
    nin = len(fn_math.args)
    ptr = ty.as_pointer()
    fn = ir.Function(
        module, ir.FunctionType(ir.VoidType(), [ptr] * (nin + 1) + [ir.IntType(64)]), "f"
    )
    *ins, out, n = fn.args
    for p in (*ins, out):
        p.add_attribute("noalias")
    entry, loop, done = (fn.append_basic_block(s) for s in ("entry", "loop", "done"))
    b = ir.IRBuilder(entry)
    zero = ir.Constant(ir.IntType(64), 0)
    b.cbranch(b.icmp_signed(">", n, zero), loop, done)
    b.position_at_end(loop)
    i = b.phi(ir.IntType(64))
    i.add_incoming(zero, entry)
    args = [b.load(b.gep(p, [i], inbounds=True)) for p in ins]
    b.store(b.call(fn_math, args), b.gep(out, [i], inbounds=True))
    nxt = b.add(i, ir.Constant(ir.IntType(64), 1))
    i.add_incoming(nxt, loop)
    b.cbranch(b.icmp_signed("<", nxt, n), loop, done)
    b.position_at_end(done)
    b.ret_void()
    return module


@functools.cache
def _kernel(name: str, dtype):
    """The compiled loop as a numpy-level function of one or two arrays."""
    engine = target.compile_module(str(_loop_module(name, dtype)))
    nin = 2 if name == "pow" else 1
    cptr = ctypes.POINTER(ctypes.c_float if dtype == np.float32 else ctypes.c_double)
    cfn = ctypes.CFUNCTYPE(None, *[cptr] * (nin + 1), ctypes.c_int64)(engine.function_address("f"))

    def run(*arrays):
        arrays = [np.ascontiguousarray(a, dtype=dtype) for a in np.broadcast_arrays(*arrays)]
        out = np.empty_like(arrays[0])
        cfn(*[a.ctypes.data_as(cptr) for a in (*arrays, out)], out.size)
        return out

    run.engine = engine  # the machine code lives as long as the engine
    return run


NUMPY = {"exp": np.exp, "log": np.log, "tanh": np.tanh, "pow": np.power}


def _reference(name: str, dtype, *args):
    """Correctly rounded (up to a final double rounding): float64 for float32, long double for
    float64."""
    wide = np.float64 if dtype == np.float32 else np.longdouble
    with np.errstate(all="ignore"):
        return NUMPY[name](*[a.astype(wide) for a in args]).astype(dtype)


def _ulp_distance(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Distance in units in the last place, on the ordered integer bit patterns (inf is one past
    the largest finite value; NaN is 0 from NaN and huge from anything else)."""
    ity = np.int32 if got.dtype == np.float32 else np.int64
    mag = np.iinfo(ity).max

    def ordered(a):
        i = a.view(ity).astype(np.int64)
        return np.where(i < 0, -(i & mag), i)

    a, b = ordered(got), ordered(want)
    same_side = (a >= 0) == (b >= 0)
    cap = np.int64(1) << 40
    dist = np.where(
        same_side, np.abs(a - b), np.minimum(np.abs(a), cap) + np.minimum(np.abs(b), cap)
    )
    nan_got, nan_want = np.isnan(got), np.isnan(want)
    return np.where(nan_got | nan_want, np.where(nan_got & nan_want, 0, cap), dist)


def _check_ulp(name: str, dtype, *args):
    args = [np.asarray(a, dtype=dtype) for a in np.broadcast_arrays(*args)]
    got = _kernel(name, dtype)(*args)
    want = _reference(name, dtype, *args)
    dist = _ulp_distance(got, want)
    worst = int(np.argmax(dist))
    inputs = ", ".join(repr(a.flat[worst]) for a in args)
    assert dist.max() <= MAX_ULP, (
        f"{name}({inputs}) = {got.flat[worst]!r}, want {want.flat[worst]!r}: {dist.max()} ulp"
    )
    return int(dist.max())


def _random_bits(rng, dtype, n: int) -> np.ndarray:
    ity = np.uint32 if dtype == np.float32 else np.uint64
    return rng.integers(0, np.iinfo(ity).max, size=n, dtype=ity, endpoint=True).view(dtype)


def _log_uniform(rng, lo: float, hi: float, n: int) -> np.ndarray:
    return np.exp(rng.uniform(np.log(lo), np.log(hi), n))


def _sweeps(name: str, dtype, rng):
    """Input sets: random bit patterns over the whole range, then the ranges that matter."""
    f32 = dtype == np.float32
    n = 1 << (22 if f32 else 20)
    tiny = np.finfo(dtype).smallest_subnormal
    big = float(np.finfo(dtype).max)
    if name == "exp":
        lo, hi = (-104.0, 89.0) if f32 else (-746.0, 710.0)
        ln_max = float(np.log(np.finfo(dtype).max))
        edge = np.nextafter(np.full(2001, ln_max, dtype), np.inf) * (
            1 + np.arange(-1000, 1001) * 1e-7
        )
        yield (_random_bits(rng, dtype, n),)
        yield (rng.uniform(lo, hi, n),)
        yield (rng.uniform(-1, 1, n),)
        yield (edge,)
    elif name == "log":
        yield (_random_bits(rng, dtype, n),)
        yield (np.abs(_random_bits(rng, dtype, n)),)
        yield (1 + rng.uniform(-0.3, 0.5, n),)
        yield (1 + _log_uniform(rng, 1e-12, 1e-2, n) * rng.choice([-1, 1], n),)
        yield (tiny * rng.integers(1, 1 << (23 if f32 else 52), n),)
    elif name == "tanh":
        yield (_random_bits(rng, dtype, n),)
        yield (rng.uniform(-12 if f32 else -25, 12 if f32 else 25, n),)
        yield (rng.uniform(-1, 1, n),)
        yield (_log_uniform(rng, 1e-30, 1, n) * rng.choice([-1, 1], n),)
    elif name == "pow":
        yield _random_bits(rng, dtype, n), _random_bits(rng, dtype, n)
        # results over the whole finite range, denormals included: y = t / log(x)
        x = _log_uniform(rng, 1e-37 if f32 else 1e-300, 1e37 if f32 else 1e300, n)
        t = rng.uniform(-104, 89, n) if f32 else rng.uniform(-745, 709.7, n)
        yield x, t / np.log(x)
        yield rng.uniform(0, 4, n), rng.uniform(-30, 30, n)
        yield 1 + rng.uniform(-1e-3, 1e-3, n), rng.uniform(-1e4, 1e4, n)
        yield rng.uniform(-10, 10, n), rng.integers(-40, 41, n).astype(float)
        yield -_log_uniform(rng, 1e-3, big, n), rng.integers(-(1 << 30), 1 << 30, n).astype(float)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", MATH_FUNCTIONS)
def test_accuracy_sweeps(name, dtype):
    rng = np.random.default_rng(RNG_SEED)
    if dtype == np.float64 and np.finfo(np.longdouble).nmant < 63:
        pytest.skip("the float64 reference needs 80-bit long double")
    for args in _sweeps(name, dtype, rng):
        _check_ulp(name, dtype, *args)


def _specials(dtype) -> np.ndarray:
    tiny, big = np.finfo(dtype).smallest_subnormal, np.finfo(dtype).max
    v = [0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -1.0, tiny, -tiny, 2.0, 0.5, -2.0, 1.5, -1.5]
    return np.array(v + [big, -big, 3.0, -3.0, 2.0**60, -(2.0**60)], dtype)


def _assert_same(got, want, what: str):
    same = (np.isnan(got) & np.isnan(want)) | (
        (got == want) & (np.signbit(got) == np.signbit(want))
    )
    bad = np.flatnonzero(~same)
    assert bad.size == 0, f"{what} at {bad[:5]}: got {got[bad[:5]]}, want {want[bad[:5]]}"


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_special_values(dtype):
    tiny, big = np.finfo(dtype).smallest_subnormal, np.finfo(dtype).max
    ln_big = float(np.log(big))
    exact = {
        # exp(tiny) rounds to 1; the last two overflow and underflow completely
        "exp": [0.0, -0.0, np.inf, -np.inf, np.nan, tiny, -tiny, 1.1 * ln_big, -1.1 * ln_big - 50],
        "log": [0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -1.0, -tiny, -big],
        "tanh": [0.0, -0.0, np.inf, -np.inf, np.nan, tiny, -tiny, 1e-30, -1e-30, 40.0, -40.0],
    }
    with np.errstate(all="ignore"):
        for name, values in exact.items():
            x = np.array(values, dtype)
            _assert_same(_kernel(name, dtype)(x), NUMPY[name](x), name)
        s = _specials(dtype)
        x, y = (a.ravel() for a in np.meshgrid(s, s))
        # every pair with a C99 special case has an exact answer
        special = np.isin(np.abs(x), [0.0, 1.0, np.inf]) | np.isnan(x)
        special |= np.isin(np.abs(y), [0.0, np.inf]) | np.isnan(y)
        special |= (x < 0) & (y != np.trunc(y))  # NaN
        got, want = _kernel("pow", dtype)(x, y), np.power(x, y)
        _assert_same(got[special], want[special], f"pow({x[special]}, {y[special]})")
        # the rest: the sign exactly (a NaN's sign means nothing), the value within the ulp bound
        num = ~np.isnan(want)
        _assert_same(np.signbit(got[num]), np.signbit(want[num]), "sign of pow")
        assert _ulp_distance(got, want).max() <= MAX_ULP


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_exp_overflows_and_underflows_where_numpy_does(dtype):
    info = np.finfo(dtype)
    sub = np.longdouble(info.smallest_subnormal)
    edges = np.log(np.array([info.max, info.tiny, sub, sub / 2], np.longdouble))
    steps = np.arange(-50, 51).astype(dtype)
    x = np.concatenate([dtype(e) + steps * np.spacing(dtype(e)) for e in edges])
    got = _kernel("exp", dtype)(x)
    with np.errstate(over="ignore"):
        want = np.exp(x)
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    np.testing.assert_array_equal(got == 0, want == 0)
    assert _ulp_distance(got, want).max() <= MAX_ULP


def test_math_function_is_defined_once_and_pure():
    module = ir.Module()
    for name in MATH_FUNCTIONS:
        for ty in (ir.FloatType(), ir.DoubleType()):
            fn = math_function(module, name, ty)
            assert math_function(module, name, ty) is fn
            assert fn.linkage == "internal" and {"alwaysinline", "nounwind"} <= set(fn.attributes)
            assert len(fn.blocks) == 1  # branch-free
    text = str(module)
    assert 'call float @"llvm.exp' not in text and "@exp" not in text
    with pytest.raises(ValueError):
        math_function(module, "sin", ir.FloatType())


@pytest.mark.parametrize("name", ["exp", "tanh", "log"])
def test_float32_loop_is_vectorized(name):
    lib = target.compile_module(str(_loop_module(name, np.float32)))  # owns the module
    asm = target.assembly(lib.optimized)
    assert re.search(r"\bv\w+ps\b.*%[yz]mm", asm), "no packed single-precision SIMD instructions"
    assert not re.search(r"call\w*\s+\S*(exp|log|tanh)", asm), "the math function is still a call"
