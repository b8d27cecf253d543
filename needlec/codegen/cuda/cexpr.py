"""C types, constants, conversions and the one-row-per-op lowering table of the CUDA renderer.

Each `LOWER` row maps (sources already converted to the compute dtype, as C expressions; the
kernel value; the compute dtype) to a C expression. Float arithmetic goes through the
round-to-nearest intrinsics (`__fadd_rn`, `__dmul_rn`, ...), which nvcc never contracts into a
fused multiply-add, so an add of a product rounds twice as numpy does; integer arithmetic wraps
(through unsigned types) as numpy's does; math calls CUDA's accurate functions (no fast math).
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import numpy as np

from ...ir import Op
from ...ir.kernel import Expr
from ...ir.ops import FLOATS

CTYPE = {
    "bool": "bool",
    "int32": "int",
    "int64": "long long",
    "float32": "float",
    "float64": "double",
}
MEMTYPE = {**CTYPE, "bool": "unsigned char"}  # numpy's bool is a byte
_SUFFIX = {"float32": "f", "float64": "d"}


def const(dtype: str, value) -> str:
    """`value` as a C constant of `dtype`, exactly (floats by their bits where decimal would not
    do: infinities and NaNs)."""
    if dtype == "bool":
        return "true" if bool(value) else "false"
    if dtype in FLOATS:
        v = np.array(value, dtype)[()]
        if not np.isfinite(v):
            if dtype == "float32":
                return f"__int_as_float({struct.unpack('<i', struct.pack('<f', v))[0]})"
            return f"__longlong_as_double({struct.unpack('<q', struct.pack('<d', v))[0]}LL)"
        text = repr(float(v)) if dtype == "float64" else str(v)
        if "e" not in text and "." not in text:
            text += ".0"
        return f"{text}f" if dtype == "float32" else text
    v = int(np.array(value).astype(dtype))
    lo = int(np.iinfo(dtype).min)
    suffix = "LL" if dtype == "int64" else ""
    if v == lo:  # -2147483648 is a negated literal that does not fit
        return f"({v + 1}{suffix} - 1)"
    return f"{v}{suffix}" if v >= 0 else f"({v}{suffix})"


def convert(x: str, src: str, dst: str) -> str:
    """numpy's `astype(dst)` of a C value of dtype `src`: NaN and out-of-range floats to int give
    the least int (as x86 and the CPU backend do), a float to bool is `x != 0` (NaN is True)."""
    if src == dst:
        return x
    if dst == "bool":
        return f"({x} != 0)"
    if src in FLOATS and dst not in FLOATS:
        return f"nc_{_SUFFIX[src]}2{dst}({x})"
    if dst == "int32" and src == "int64":
        return f"((int)(unsigned)(unsigned long long)({x}))"
    if src == "float64" and dst == "float32":
        return f"__double2float_rn({x})"
    return f"(({CTYPE[dst]})({x}))"


def _binary(fname: str, cop: str) -> Callable:
    def row(xs, e, dt):
        x, y = xs
        if dt in FLOATS:
            return f"__{_SUFFIX[dt][0]}{fname}_rn({x}, {y})"
        if dt == "bool":
            return f"({x} || {y})" if cop == "+" else f"({x} && {y})"
        return f"nc_w{fname}({x}, {y})"  # wrapping

    return row


def _scalar(fname: str, cop: str) -> Callable:
    return lambda xs, e, dt: _binary(fname, cop)([xs[0], const(dt, e.arg)], e, dt)


def _div(x: str, y: str, dt: str) -> str:
    return f"__{_SUFFIX[dt][0]}div_rn({x}, {y})" if dt in FLOATS else f"nc_idiv({x}, {y})"


def _math(name: str) -> Callable:
    def row(xs, e, dt):
        fn = name + ("f" if dt == "float32" else "")
        return f"{fn}({', '.join(xs)})"

    return row


def _sqrt(x: str, dt: str) -> str:
    return f"__fsqrt_rn({x})" if dt == "float32" else f"__dsqrt_rn({x})"


def maximum(x: str, y: str, dt: str) -> str:
    """numpy's maximum: NaN wins from either side; a tie gives y (maximum(-0., 0.) is 0.)."""
    if dt in FLOATS:
        return f"nc_fmax({x}, {y})"
    if dt == "bool":
        return f"({x} || {y})"
    return f"nc_imax({x}, {y})"


def _pow_scalar(xs, e, dt):
    x, c = xs[0], e.arg
    if dt not in FLOATS:
        return f"nc_ipow({x}, {const(dt, c)})"
    p = _SUFFIX[dt][0]
    if c == 2:
        return f"nc_sq({x})"
    if c == 0.5:
        return _sqrt(x, dt)
    if c == -1:
        return f"__{p}div_rn({const(dt, 1)}, {x})"
    if c == 3:
        return f"nc_cube({x})"
    if c == 4:
        return f"nc_sq(nc_sq({x}))"
    return _math("pow")([x, const(dt, c)], e, dt)


def _pow(xs, e, dt):
    if dt not in FLOATS:
        return f"nc_ipow({xs[0]}, {xs[1]})"
    return _math("pow")(xs, e, dt)


def _neg(xs, e, dt):
    return f"(-{xs[0]})" if dt in FLOATS else f"nc_wneg({xs[0]})"


# op -> lower(source C expressions in the compute dtype, expr, compute dtype) -> C expression
LOWER: dict[Op, Callable[[list[str], Expr, str], str]] = {
    Op.NEG: _neg,
    Op.EXP: _math("exp"),
    Op.LOG: _math("log"),
    Op.TANH: _math("tanh"),
    Op.RELU: lambda xs, e, dt: maximum(xs[0], const(dt, 0), dt),
    Op.SQRT: lambda xs, e, dt: _sqrt(xs[0], dt),
    Op.CAST: lambda xs, e, dt: xs[0],
    Op.STOP_GRADIENT: lambda xs, e, dt: xs[0],
    Op.ADD_SCALAR: _scalar("add", "+"),
    Op.MUL_SCALAR: _scalar("mul", "*"),
    Op.DIV_SCALAR: lambda xs, e, dt: _div(xs[0], const(dt, e.arg), dt),
    Op.POW_SCALAR: _pow_scalar,
    Op.ADD: _binary("add", "+"),
    Op.MUL: _binary("mul", "*"),
    Op.DIV: lambda xs, e, dt: _div(xs[0], xs[1], dt),
    Op.POW: _pow,
    Op.MAXIMUM: lambda xs, e, dt: maximum(xs[0], xs[1], dt),
    Op.CMPLT: lambda xs, e, dt: f"({xs[0]} < {xs[1]})",
    Op.CMPEQ: lambda xs, e, dt: f"({xs[0]} == {xs[1]})",
    Op.WHERE: lambda xs, e, dt: f"({xs[0]} ? {xs[1]} : {xs[2]})",
}


def combine(reduce_op: Op, acc: str, x: str, dt: str) -> str:
    """A reduction's combiner: SUM adds (OR for bool), MAX is numpy's NaN-propagating maximum."""
    if reduce_op is Op.SUM:
        return _binary("add", "+")([acc, x], None, dt)
    return f"nc_fmaxr({acc}, {x})" if dt in FLOATS else maximum(acc, x, dt)


HELPERS = r"""
// float -> int as numpy's astype: NaN and out-of-range values give the least int
__device__ __forceinline__ int nc_f2int32(float x) { return (x >= -2147483648.0f && x < 2147483648.0f) ? (int)x : (int)0x80000000; }
__device__ __forceinline__ int nc_d2int32(double x) { return (x >= -2147483648.0 && x < 2147483648.0) ? (int)x : (int)0x80000000; }
__device__ __forceinline__ long long nc_f2int64(float x) { return (x >= -9223372036854775808.0f && x < 9223372036854775808.0f) ? (long long)x : (long long)0x8000000000000000ull; }
__device__ __forceinline__ long long nc_d2int64(double x) { return (x >= -9223372036854775808.0 && x < 9223372036854775808.0) ? (long long)x : (long long)0x8000000000000000ull; }
// integer arithmetic that wraps, as numpy's does
__device__ __forceinline__ int nc_wadd(int x, int y) { return (int)((unsigned)x + (unsigned)y); }
__device__ __forceinline__ long long nc_wadd(long long x, long long y) { return (long long)((unsigned long long)x + (unsigned long long)y); }
__device__ __forceinline__ int nc_wmul(int x, int y) { return (int)((unsigned)x * (unsigned)y); }
__device__ __forceinline__ long long nc_wmul(long long x, long long y) { return (long long)((unsigned long long)x * (unsigned long long)y); }
__device__ __forceinline__ int nc_wneg(int x) { return (int)(0u - (unsigned)x); }
__device__ __forceinline__ long long nc_wneg(long long x) { return (long long)(0ull - (unsigned long long)x); }
template <class T> __device__ __forceinline__ T nc_idiv(T x, T y) { return y == 0 ? (T)0 : x / y; }
template <class T> __device__ __forceinline__ T nc_imax(T x, T y) { return x >= y ? x : y; }
// numpy's maximum: NaN from either side wins; a tie gives y
template <class T> __device__ __forceinline__ T nc_fmax(T x, T y) { return (x > y || x != x) ? x : y; }
// a reduction's maximum: NaN wins, and of two zeros +0 (IEEE 754's maximum, as the CPU's)
template <class T> __device__ __forceinline__ T nc_fmaxr(T x, T y) {
  if (x != x || y != y) return x != x ? x : y;
  if (x == y) return signbit(x) ? y : x;
  return x > y ? x : y;
}
__device__ __forceinline__ float nc_sq(float x) { return __fmul_rn(x, x); }
__device__ __forceinline__ double nc_sq(double x) { return __dmul_rn(x, x); }
__device__ __forceinline__ float nc_cube(float x) { return __fmul_rn(__fmul_rn(x, x), x); }
__device__ __forceinline__ double nc_cube(double x) { return __dmul_rn(__dmul_rn(x, x), x); }
// integer power by squaring, wrapping; a negative exponent gives 0
template <class T> __device__ __forceinline__ T nc_ipow(T x, T y) {
  if (y < 0) return (T)0;
  T r = 1;
  while (y) { if (y & 1) r = nc_wmul(r, x); x = nc_wmul(x, x); y >>= 1; }
  return r;
}
struct NcSum { template <class T> __device__ __forceinline__ static T f(T a, T b) { return a + b; } };
struct NcSumI { template <class T> __device__ __forceinline__ static T f(T a, T b) { return nc_wadd(a, b); } };
struct NcMaxF { template <class T> __device__ __forceinline__ static T f(T a, T b) { return nc_fmaxr(a, b); } };
struct NcMaxI { template <class T> __device__ __forceinline__ static T f(T a, T b) { return nc_imax(a, b); } };
// a block's values combined (warp shuffles, then one warp over the warps' results) and given to
// every thread; blockDim.x is a multiple of 32
template <class Op, class T> __device__ T nc_block_reduce(T v, T identity) {
  __shared__ T part[32];
  for (int o = 16; o > 0; o >>= 1) v = Op::f(v, __shfl_down_sync(0xffffffffu, v, o));
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();  // an earlier call's readers are done with part
  if (lane == 0) part[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < (int)(blockDim.x >> 5) ? part[lane] : identity;
    for (int o = 16; o > 0; o >>= 1) v = Op::f(v, __shfl_down_sync(0xffffffffu, v, o));
    if (lane == 0) part[0] = v;
  }
  __syncthreads();
  return part[0];
}
__device__ __forceinline__ bool nc_block_or(bool v) { return __syncthreads_or(v) != 0; }
"""


def block_reduce(reduce_op: Op, x: str, dt: str, identity: str) -> str:
    """The C expression that combines `x` over the threads of a block (every thread gets it)."""
    if dt == "bool":
        return f"nc_block_or({x})"
    if reduce_op is Op.SUM:
        op = "NcSum" if dt in FLOATS else "NcSumI"
    else:
        op = "NcMaxF" if dt in FLOATS else "NcMaxI"
    return f"nc_block_reduce<{op}, {CTYPE[dt]}>({x}, {identity})"
