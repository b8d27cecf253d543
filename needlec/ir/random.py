"""Counter-based random numbers: element i of a random node is a function of (seed, stream, i).

This module is the definition every backend reproduces bit for bit; it uses numpy only.

The mapping, for a node with integer `seed` and `stream` (both taken modulo 2**64, as an i64 is)
and row-major flat element index `i` (64-bit):

- key = (seed & 0xffffffff, seed >> 32), counter = (i & 0xffffffff, i >> 32, stream & 0xffffffff,
  stream >> 32), and (w0, w1, w2, w3) = Philox4x32-10(counter, key) (Salmon et al., "Parallel
  random numbers: as easy as 1, 2, 3", SC11; multipliers 0xD2511F53, 0xCD9E8D57, Weyl increments
  0x9E3779B9, 0xBB67AE85, the key bumped before rounds 2..10). Each element uses one counter, so
  its draw depends on i alone, never on the shape.
- uniform float32: (w0 >> 8) * 2**-24, in [0, 1); 1.0 is never drawn.
- uniform float64: (((w1 << 32) | w0) >> 11) * 2**-53, in [0, 1).
- normal (Box-Muller over one counter), computed in float64, then rounded to the dtype:
  u1 = ((((w1 << 32) | w0) >> 11) + 1) * 2**-53 in (0, 1],
  u2 = (((w3 << 32) | w2) >> 11) * 2**-53 in [0, 1),
  z = sqrt(-2.0 * log(u1)) * cos(TWO_PI * u2), with TWO_PI the float64 nearest 2*pi.

`log` and `cos` are not the platform's libm (whose last bits differ between libraries) but `_log`
and `_cos` below: integer bit manipulation, exact int <-> float conversions, and polynomials in
IEEE float64 +, -, *, / and sqrt, each rounded to nearest, evaluated in the order written, with no
fused multiply-add. A backend gets the same bits by issuing the same operations in the same order
(and must not contract a*b+c into an fma: LLVM without fast-math flags does not; nvcc needs
-fmad=false). Over the inputs they get here, both are within 1 ulp of numpy's np.log and np.cos.

>>> draw(seed=0, stream=0, shape=(3,), dtype="float32", dist="uniform").tolist()
[0.3990464210510254, 0.9722411632537842, 0.01944941282272339]
>>> bool((draw(1, 0, (10, 100), "float64", "normal").ravel() == draw(1, 0, (1000,), "float64", "normal")).all())
True
"""

from __future__ import annotations

import math

import numpy as np

PHILOX_M = (0xD2511F53, 0xCD9E8D57)  # round multipliers
# key increments: 2**32 times the fractional parts of the golden ratio and of sqrt(3)
PHILOX_W = (0x9E3779B9, 0xBB67AE85)
PHILOX_ROUNDS = 10

TWO_PI = 2 * math.pi  # the float64 nearest 2*pi; the angle is TWO_PI * u2, rounded once
TWO_OVER_PI = 2 / math.pi

# ln 2 split so that e * LN2_HI is exact for any float64 exponent e (LN2_HI has 32 significant bits)
LN2_HI = float.fromhex("0x1.62e42fee00000p-1")
LN2_LO = float.fromhex("0x1.a39ef35793c76p-33")
# pi/2 in three parts (33, 33, 53 bits): q * PIO2_1 and q * PIO2_2 are exact for the small q used
PIO2_1 = float.fromhex("0x1.921fb54400000p+0")
PIO2_2 = float.fromhex("0x1.0b4611a600000p-34")
PIO2_3 = float.fromhex("0x1.3198a2e037073p-69")
SQRT_HALF_BITS = 0x3FE6A09E667F3BCD  # the bits of the float64 nearest sqrt(1/2)
MANTISSA_BITS = 52

# Taylor coefficients, lowest order first; the omitted terms are below 2**-60 relative on the
# reduced ranges (|s| <= 0.172 for log, |r| <= pi/4 + tiny for sin and cos)
LOG_COEFFS = tuple(2.0 / (2 * k + 1) for k in range(1, 11))  # atanh: 2s + s*sum 2 s^2k/(2k+1)
SIN_COEFFS = tuple((-1) ** k / math.factorial(2 * k + 1) for k in range(1, 9))  # r^3, r^5, ...
COS_COEFFS = tuple((-1) ** k / math.factorial(2 * k) for k in range(2, 10))  # r^4, r^6, ...

_CHUNK = 1 << 20  # elements drawn at a time, to bound the temporaries of a large draw


def philox4x32(
    counter: np.ndarray, key: tuple[int, int], rounds: int = PHILOX_ROUNDS
) -> np.ndarray:
    """Philox4x32-`rounds` of each row of `counter` ((n, 4) uint32) under `key` (two uint32).

    >>> [hex(w) for w in philox4x32(np.zeros((1, 4), np.uint32), (0, 0))[0]]
    ['0x6627e8d5', '0xe169c58d', '0xbc57ac4c', '0x9b00dbd8']
    """
    c = np.asarray(counter, dtype=np.uint32)
    x0, x1, x2, x3 = (c[:, j].astype(np.uint64) for j in range(4))
    k0, k1 = key[0] & 0xFFFFFFFF, key[1] & 0xFFFFFFFF
    m0, m1 = np.uint64(PHILOX_M[0]), np.uint64(PHILOX_M[1])
    low, shift = np.uint64(0xFFFFFFFF), np.uint64(32)
    for r in range(rounds):
        if r:
            k0, k1 = (k0 + PHILOX_W[0]) & 0xFFFFFFFF, (k1 + PHILOX_W[1]) & 0xFFFFFFFF
        p0, p1 = x0 * m0, x2 * m1  # 32 x 32 -> 64 bits, no overflow in uint64
        x0, x1, x2, x3 = (
            (p1 >> shift) ^ x1 ^ np.uint64(k0),
            p1 & low,
            (p0 >> shift) ^ x3 ^ np.uint64(k1),
            p0 & low,
        )
    return np.stack([x0, x1, x2, x3], axis=1).astype(np.uint32)


def _horner(z: np.ndarray, coeffs: tuple[float, ...]) -> np.ndarray:
    """coeffs[0] + z * (coeffs[1] + z * (...)), innermost first."""
    p = coeffs[-1] * z + coeffs[-2]
    for c in reversed(coeffs[:-2]):
        p = p * z + c
    return p


def _log(x: np.ndarray) -> np.ndarray:
    """Natural log of positive normal float64 `x`.

    x = 2**e * m with m in [sqrt(1/2), sqrt(2)), f = m - 1 (exact), s = f / (2 + f), and
    log(1 + f) = 2 atanh(s) = f - (f*f/2 - s * (f*f/2 + R(s*s))), which keeps the rounding error of
    s out of the leading term.
    """
    bits = x.view(np.int64)
    e = (bits - SQRT_HALF_BITS) >> MANTISSA_BITS  # floor(log2(x / sqrt(1/2))): one integer step
    m = (bits - (e << MANTISSA_BITS)).view(np.float64)
    ef = e.astype(np.float64)
    f = m - 1.0
    s = f / (2.0 + f)
    z = s * s
    r = z * _horner(z, LOG_COEFFS)
    hfsq = 0.5 * f * f
    return ef * LN2_HI + (f - (hfsq - (s * (hfsq + r) + ef * LN2_LO)))


def _cos(x: np.ndarray) -> np.ndarray:
    """Cosine of float64 `x` in [0, 2*pi].

    q = round(x / (pi/2)), r = x - q*pi/2 with pi/2 in three parts, so |r| <= pi/4 and r is
    accurate even where cos(x) is near 0; then cos(x) is +-cos(r) or +-sin(r) by q mod 4.
    """
    q = (x * TWO_OVER_PI + 0.5).astype(np.int64)  # x >= 0, so truncation is floor
    qf = q.astype(np.float64)
    r = ((x - qf * PIO2_1) - qf * PIO2_2) - qf * PIO2_3
    z = r * r
    sin = r + (r * z) * _horner(z, SIN_COEFFS)
    hz = 0.5 * z
    w = 1.0 - hz
    cos = w + (((1.0 - w) - hz) + (z * z) * _horner(z, COS_COEFFS))  # (1-w)-hz: what 1-hz lost
    quadrant = q & 3
    return np.where(
        quadrant == 0, cos, np.where(quadrant == 1, -sin, np.where(quadrant == 2, -cos, sin))
    )


def _uniform53(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """The top 53 of the 64 bits (hi << 32) | lo, as uint64."""
    return ((hi.astype(np.uint64) << np.uint64(32)) | lo.astype(np.uint64)) >> np.uint64(11)


def _from_words(words: np.ndarray, dtype: str, dist: str) -> np.ndarray:
    """Element values from their Philox words ((n, 4) uint32), as the module docstring maps them."""
    w0, w1, w2, w3 = (words[:, j] for j in range(4))
    if dist == "uniform" and dtype == "float32":
        return (w0 >> np.uint32(8)).astype(np.float32) * np.float32(2.0**-24)
    if dist == "uniform":
        return _uniform53(w1, w0).astype(np.float64) * 2.0**-53
    u1 = (_uniform53(w1, w0) + np.uint64(1)).astype(np.float64) * 2.0**-53
    u2 = _uniform53(w3, w2).astype(np.float64) * 2.0**-53
    z = np.sqrt(-2.0 * _log(u1)) * _cos(TWO_PI * u2)
    return z.astype(dtype)


def check_draw(dtype: str, dist: str) -> str:
    """The dtype's name if (dtype, dist) is a draw this module defines; ValueError otherwise."""
    name = np.dtype(dtype).name
    if dist not in ("uniform", "normal"):
        raise ValueError(f"random draw: unknown distribution {dist!r} (uniform or normal)")
    if name not in ("float32", "float64"):
        raise ValueError(f"random draw: {dist} draws are float32 or float64, not {name}")
    return name


def draw(seed: int, stream: int, shape: tuple[int, ...], dtype: str, dist: str) -> np.ndarray:
    """Elements 0..prod(shape)-1 of the random node (seed, stream), as the module docstring maps them.

    >>> draw(7, 1, (2, 2), "float64", "normal").shape
    (2, 2)
    """
    dtype = check_draw(dtype, dist)
    seed, stream = int(seed) & (2**64 - 1), int(stream) & (2**64 - 1)
    key = (seed & 0xFFFFFFFF, seed >> 32)
    n = math.prod(shape)
    out = np.empty(n, dtype=dtype)
    for start in range(0, n, _CHUNK):
        i = np.arange(start, min(start + _CHUNK, n), dtype=np.uint64)
        counter = np.empty((len(i), 4), dtype=np.uint32)
        counter[:, 0] = i & np.uint64(0xFFFFFFFF)
        counter[:, 1] = i >> np.uint64(32)
        counter[:, 2] = stream & 0xFFFFFFFF
        counter[:, 3] = stream >> 32
        out[start : start + len(i)] = _from_words(philox4x32(counter, key), dtype, dist)
    return out.reshape(shape)
