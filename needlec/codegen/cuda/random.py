"""Random draws as CUDA C: `needlec.ir.random`'s mapping, written op for op.

Every float64 operation is the one `needlec.ir.random` performs at the same step, in the same order
and with the same constants, through the round-to-nearest intrinsics (`__dmul_rn`, `__dadd_rn`,
...) that nvcc never contracts into a fused multiply-add, so the draw equals `draw` bit for bit
whatever `-fmad` says.

>>> "nc_philox" in device_functions()
True
"""

from __future__ import annotations

from ...ir import random as rnd


def _d(v: float) -> str:
    """A double constant, exactly (its bits)."""
    import struct

    bits = struct.unpack("<q", struct.pack("<d", float(v)))[0]
    return f"__longlong_as_double({bits}LL)"


def _horner(z: str, coeffs: tuple[float, ...]) -> str:
    p = f"__dadd_rn(__dmul_rn({_d(coeffs[-1])}, {z}), {_d(coeffs[-2])})"
    for c in reversed(coeffs[:-2]):
        p = f"__dadd_rn(__dmul_rn({p}, {z}), {_d(c)})"
    return p


def device_functions() -> str:
    """The device functions every kernel that draws calls: Philox4x32-10, the exact log and cos,
    and `nc_draw_<dtype>_<dist>(seed, stream, index)`."""
    m0, m1 = rnd.PHILOX_M
    w0, w1 = rnd.PHILOX_W
    return f"""
__device__ __forceinline__ void nc_philox(unsigned c[4], unsigned k0, unsigned k1) {{
  for (int r = 0; r < {rnd.PHILOX_ROUNDS}; ++r) {{
    if (r) {{ k0 += {w0}u; k1 += {w1}u; }}
    unsigned long long p0 = (unsigned long long)c[0] * {m0}ull;
    unsigned long long p1 = (unsigned long long)c[2] * {m1}ull;
    unsigned x0 = (unsigned)(p1 >> 32) ^ c[1] ^ k0, x1 = (unsigned)p1;
    unsigned x2 = (unsigned)(p0 >> 32) ^ c[3] ^ k1, x3 = (unsigned)p0;
    c[0] = x0; c[1] = x1; c[2] = x2; c[3] = x3;
  }}
}}
__device__ __forceinline__ double nc_rlog(double x) {{
  long long bits = __double_as_longlong(x);
  long long e = (bits - {rnd.SQRT_HALF_BITS}LL) >> {rnd.MANTISSA_BITS};
  double m = __longlong_as_double(bits - (e << {rnd.MANTISSA_BITS}));
  double ef = __ll2double_rn(e);
  double f = __dsub_rn(m, 1.0);
  double s = __ddiv_rn(f, __dadd_rn(2.0, f));
  double z = __dmul_rn(s, s);
  double r = __dmul_rn(z, {_horner("z", rnd.LOG_COEFFS)});
  double hfsq = __dmul_rn(__dmul_rn(0.5, f), f);
  double tail = __dadd_rn(__dmul_rn(s, __dadd_rn(hfsq, r)), __dmul_rn(ef, {_d(rnd.LN2_LO)}));
  return __dadd_rn(__dmul_rn(ef, {_d(rnd.LN2_HI)}), __dsub_rn(f, __dsub_rn(hfsq, tail)));
}}
__device__ __forceinline__ double nc_rcos(double x) {{
  long long q = (long long)__dadd_rn(__dmul_rn(x, {_d(rnd.TWO_OVER_PI)}), 0.5);
  double qf = __ll2double_rn(q);
  double r = __dsub_rn(x, __dmul_rn(qf, {_d(rnd.PIO2_1)}));
  r = __dsub_rn(r, __dmul_rn(qf, {_d(rnd.PIO2_2)}));
  r = __dsub_rn(r, __dmul_rn(qf, {_d(rnd.PIO2_3)}));
  double z = __dmul_rn(r, r);
  double sn = __dadd_rn(r, __dmul_rn(__dmul_rn(r, z), {_horner("z", rnd.SIN_COEFFS)}));
  double hz = __dmul_rn(0.5, z);
  double w = __dsub_rn(1.0, hz);
  double lost = __dsub_rn(__dsub_rn(1.0, w), hz);
  double cs = __dadd_rn(w, __dadd_rn(lost, __dmul_rn(__dmul_rn(z, z), {_horner("z", rnd.COS_COEFFS)})));
  long long quadrant = q & 3;
  return quadrant == 0 ? cs : quadrant == 1 ? -sn : quadrant == 2 ? -cs : sn;
}}
__device__ __forceinline__ void nc_words(long long seed, unsigned long long stream,
                                         long long index, unsigned c[4]) {{
  c[0] = (unsigned)index; c[1] = (unsigned)((unsigned long long)index >> 32);
  c[2] = (unsigned)stream; c[3] = (unsigned)(stream >> 32);
  nc_philox(c, (unsigned)seed, (unsigned)((unsigned long long)seed >> 32));
}}
__device__ __forceinline__ unsigned long long nc_u53(unsigned hi, unsigned lo) {{
  return (((unsigned long long)hi << 32) | lo) >> 11;
}}
__device__ __forceinline__ float nc_draw_float32_uniform(long long seed, unsigned long long stream, long long i) {{
  unsigned c[4]; nc_words(seed, stream, i, c);
  return __fmul_rn(__uint2float_rn(c[0] >> 8), {2.0**-24:.17g}f);
}}
__device__ __forceinline__ double nc_draw_float64_uniform(long long seed, unsigned long long stream, long long i) {{
  unsigned c[4]; nc_words(seed, stream, i, c);
  return __dmul_rn(__ull2double_rn(nc_u53(c[1], c[0])), {_d(2.0**-53)});
}}
__device__ __forceinline__ double nc_normal(long long seed, unsigned long long stream, long long i) {{
  unsigned c[4]; nc_words(seed, stream, i, c);
  double u1 = __dmul_rn(__ull2double_rn(nc_u53(c[1], c[0]) + 1), {_d(2.0**-53)});
  double u2 = __dmul_rn(__ull2double_rn(nc_u53(c[3], c[2])), {_d(2.0**-53)});
  double radius = __dsqrt_rn(__dmul_rn(-2.0, nc_rlog(u1)));
  return __dmul_rn(radius, nc_rcos(__dmul_rn({_d(rnd.TWO_PI)}, u2)));
}}
__device__ __forceinline__ double nc_draw_float64_normal(long long seed, unsigned long long stream, long long i) {{
  return nc_normal(seed, stream, i);
}}
__device__ __forceinline__ float nc_draw_float32_normal(long long seed, unsigned long long stream, long long i) {{
  return __double2float_rn(nc_normal(seed, stream, i));
}}
"""


def draw_call(seed: str, stream: int, index: str, dtype: str, dist: str) -> str:
    """The C expression of element `index` of the random node (`seed`, `stream`)."""
    dtype = rnd.check_draw(dtype, dist)
    return f"nc_draw_{dtype}_{dist}({seed}, {stream & (2**64 - 1)}ull, {index})"
