"""The counter-based random mapping of `needlec.ir.random`: Philox known answers, the float64 log and
cos it uses instead of libm's, and the draws' statistics and independence from shape."""

import math
from decimal import Decimal, getcontext

import numpy as np
import pytest

from needlec.ir import random as rnd
from needlec.ir.random import draw, philox4x32

# Random123's known answers (its kat_vectors file, as quoted in DEShawResearch/Random123-Boost,
# libs/random/test/test_philox.cpp at 916db91): rounds, counter, key, output
KAT = [
    (7, (0, 0, 0, 0), (0, 0), (0x5F6FB709, 0x0D893F64, 0x4F121F81, 0x4F730A48)),
    (7, (0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x5207DDC2, 0x45165E59, 0x4D8EE751, 0x8C52F662)),
    (
        7,
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0x4DFCCABA, 0x190A87F0, 0xC47362BA, 0xB6B5242A),
    ),
    (10, (0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    (10, (0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        10,
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]

PI = Decimal("3.14159265358979323846264338327950288419716939937510582097494459")


def ulps(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """|got - want| in units of the last place of `want`."""
    return np.abs(got - want) / np.spacing(np.abs(want))


def test_philox_known_answers():
    for rounds, counter, key, want in KAT:
        got = philox4x32(np.array([counter], np.uint32), key, rounds)
        assert [int(w) for w in got[0]] == list(want), (rounds, counter, key)


def test_philox_rows_are_independent():
    rows = np.array([c for _, c, _, _ in KAT[3:]], np.uint32)
    together = philox4x32(rows, (5, 6))
    for k in range(len(rows)):
        assert np.array_equal(together[k], philox4x32(rows[k : k + 1], (5, 6))[0])


def test_split_constants():
    getcontext().prec = 60
    ln2, pio2 = Decimal(2).ln(), PI / 2
    assert abs(Decimal(rnd.LN2_HI) + Decimal(rnd.LN2_LO) - ln2) < Decimal(2) ** -85
    pio2_sum = Decimal(rnd.PIO2_1) + Decimal(rnd.PIO2_2) + Decimal(rnd.PIO2_3)
    assert abs(pio2_sum - pio2) < Decimal(2) ** -120
    # the high parts have few enough bits that multiplying by an exponent or a quadrant is exact
    for hi, bits in ((rnd.LN2_HI, 32), (rnd.PIO2_1, 33), (rnd.PIO2_2, 33)):
        m, _ = math.frexp(hi)
        assert (m * 2**bits).is_integer()
    assert rnd.TWO_PI == float(2 * PI) and rnd.TWO_OVER_PI == float(2 / PI)
    assert np.float64(math.sqrt(0.5)).view(np.int64) == rnd.SQRT_HALF_BITS


def test_log_within_one_ulp():
    rng = np.random.default_rng(0)
    k = np.arange(1, 100_000, dtype=np.float64)
    u = np.concatenate(
        [
            rng.integers(1, 2**53, 1_000_000, dtype=np.uint64).astype(np.float64) * 2.0**-53,
            1.0 - k * 2.0**-53,  # near 1, where log(u) is tiny
            k * 2.0**-53,  # the smallest u1, every binade down to 2**-53
            2.0 ** -np.arange(54.0),
            np.sqrt(0.5) * (1 + np.arange(-500, 500) * 2.0**-52),  # where the reduction switches
        ]
    )
    got, want = rnd._log(u), np.log(u)
    assert np.all(got[want == 0] == 0)
    err = ulps(got[want != 0], want[want != 0])
    assert err.max() <= 1.0, err.max()


def test_cos_within_one_ulp():
    rng = np.random.default_rng(1)
    u2 = np.concatenate(
        [rng.integers(0, 2**53, 1_000_000, dtype=np.uint64).astype(np.float64), np.arange(4096.0)]
    )
    x = [rnd.TWO_PI * (u2 * 2.0**-53), rnd.TWO_PI * np.arange(4096) / 4096]
    for c in np.pi / 4 * np.arange(1, 8):  # zeros of cos and the quadrant boundaries
        x.append(c + np.arange(-2000, 2000) * np.spacing(c))
    x = np.concatenate(x)
    x = x[(x >= 0) & (x < 2 * np.pi)]
    err = ulps(rnd._cos(x), np.cos(x))
    assert err.max() <= 1.0, err.max()


def test_uniform_float32_never_reaches_one():
    top = np.full((1, 4), 0xFFFFFFFF, np.uint32)
    assert rnd._from_words(top, "float32", "uniform")[0] == np.float32(1 - 2**-24)
    assert rnd._from_words(top, "float64", "uniform")[0] == 1 - 2**-53
    u = draw(3, 0, (2**24,), "float32", "uniform")
    assert u.max() < 1.0 and u.min() >= 0.0


def test_normal_extremes():
    # u1 = 1 gives radius 0; the smallest u1, 2**-53, gives the largest radius sqrt(106 ln 2)
    words = np.array([[0xFFFFFFFF, 0xFFFFFFFF, 0, 0], [0, 0, 0, 0]], np.uint32)
    z = rnd._from_words(words, "float64", "normal")
    assert z[0] == 0
    assert z[1] == pytest.approx(math.sqrt(106 * math.log(2)), rel=1e-15)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_moments(dtype):
    n = 1 << 20
    u = draw(11, 2, (n,), dtype, "uniform").astype(np.float64)
    assert u.dtype == np.float64 and abs(u.mean() - 0.5) < 5 * math.sqrt(1 / 12 / n)
    assert abs(u.var() - 1 / 12) < 5 * math.sqrt(1 / 180 / n)
    z = draw(11, 3, (n,), dtype, "normal").astype(np.float64)
    assert abs(z.mean()) < 5 / math.sqrt(n)
    assert abs(z.var() - 1) < 5 * math.sqrt(2 / n)
    assert abs(np.mean(z < 1.959963984540054) - 0.975) < 5 * math.sqrt(0.975 * 0.025 / n)
    assert abs(np.mean(z**4) - 3) < 5 * math.sqrt(96 / n)  # kurtosis: the tails are right


@pytest.mark.parametrize("dist", ["uniform", "normal"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_element_depends_on_index_not_shape(dtype, dist):
    flat = draw(5, 1, (1000,), dtype, dist)
    assert flat.dtype == dtype
    assert np.array_equal(draw(5, 1, (10, 100), dtype, dist).ravel(), flat)
    assert np.array_equal(draw(5, 1, (2, 5, 4, 25), dtype, dist).ravel(), flat)
    assert np.array_equal(draw(5, 1, (10,), dtype, dist), flat[:10])
    assert draw(5, 1, (), dtype, dist) == flat[0] and draw(5, 1, (0, 3), dtype, dist).shape == (
        0,
        3,
    )


def test_draws_span_chunks_seamlessly():
    n = rnd._CHUNK + 5
    tail = draw(9, 4, (n,), "float64", "uniform")[-10:]
    words = philox4x32(
        np.stack([np.arange(n - 10, n), np.zeros(10), np.full(10, 4), np.zeros(10)], 1), (9, 0)
    )
    assert np.array_equal(tail, rnd._from_words(words, "float64", "uniform"))


def test_streams_and_seeds_differ():
    base = draw(1, 0, (1000,), "float32", "uniform")
    others = [
        draw(1, 1, (1000,), "float32", "uniform"),
        draw(2, 0, (1000,), "float32", "uniform"),
        draw(1 + 2**32, 0, (1000,), "float32", "uniform"),  # the seed's high word is in the key
        draw(1, 2**32, (1000,), "float32", "uniform"),  # so is the stream's
    ]
    for other in others:
        assert np.mean(base == other) < 0.01
    assert np.array_equal(draw(1, 0, (1000,), "float32", "uniform"), base)
    # a negative seed is its two's-complement 64 bits, as an i64 register holds it
    assert np.array_equal(
        draw(-1, 0, (9,), "float64", "normal"), draw(2**64 - 1, 0, (9,), "float64", "normal")
    )


def test_other_dtypes_and_distributions_are_rejected():
    with pytest.raises(ValueError, match="float32 or float64"):
        draw(0, 0, (3,), "float16", "normal")
    with pytest.raises(ValueError, match="float32 or float64"):
        draw(0, 0, (3,), "int32", "uniform")
    with pytest.raises(ValueError, match="unknown distribution"):
        draw(0, 0, (3,), "float32", "bernoulli")
