"""exp, log, tanh and pow as branch-free LLVM IR, so loops that call them vectorize.

LLVM lowers `llvm.exp.*` and friends to scalar libm calls, which stop the loop vectorizer. The
functions here are range reduction plus a polynomial, with special values chosen by `select`; they
use only intrinsics that become single SIMD instructions (fma, fabs, rint, trunc, copysign) and
integer ops on the exponent bits. They are internal and alwaysinline, so after inlining a loop over
float32 becomes 8- or 16-wide code. The polynomials were fitted (Chebyshev interpolation in 60-digit
arithmetic) on the reduced ranges noted beside them. The error terms need a true fused multiply-add
(`llvm.fma`, not `llvm.fmuladd`), so targets without FMA hardware get correct but slow fma calls.

Semantics follow numpy (C99 for pow), including signed zeros, infinities, NaN and denormals.
Measured error against correctly rounded results (tests/backends/test_mathlib.py, several million
inputs per function and type): at most 1 ulp for exp, log, tanh and pow in float32 and float64.
float32 pow is computed in float64 inside; float64 pow uses a double-double log (about 2^-64
relative) and carries the low part of y*log(x) through exp's reduction.

>>> from llvmlite import ir
>>> module = ir.Module()
>>> math_function(module, "exp", ir.FloatType()).name
'needlec.exp.f32'
>>> math_function(module, "exp", ir.FloatType()) is module.get_global("needlec.exp.f32")
True
"""

from __future__ import annotations

from llvmlite import ir

MATH_FUNCTIONS: tuple[str, ...] = ("exp", "log", "tanh", "pow")

# exp(r) = 1 + r + r^2 * EXP_Q(r) on |r| <= ln2/2
EXP_Q = {
    32: (0.5000000013457727, 0.16666666681614256, 0.04166646500604005, 0.008333310934448869,
         0.0013933641031986701, 0.00019890980869750327),
    64: (0.5, 0.1666666666666667, 0.04166666666666667, 0.008333333333326141,
         0.0013888888888883752, 0.00019841269874800493, 2.4801587325533363e-05,
         2.7557255425746435e-06, 2.7557273661348637e-07, 2.510520637395701e-08,
         2.0914679376583935e-09),
}  # fmt: skip
# 2*atanh(s) = 2s + s*z*LOG_W(z), z = s^2 <= ((sqrt2-1)/(sqrt2+1))^2
LOG_W = {
    32: (0.6666666655449709, 0.40000121839806124, 0.28550820815960665, 0.23330467216303835),
    64: (0.6666666666666666, 0.4000000000000088, 0.28571428570803614, 0.22222222391713917,
         0.18181795640132906, 0.15386239702814658, 0.13268773138656886, 0.13086626147840102),
}  # fmt: skip
# 2*atanh(s) = 2s + 2s^3/3 + s^5*LOG_V(z), same range (the double-double log of pow)
LOG_V = (0.4, 0.28571428571429364, 0.22222222221656232, 0.18181818335314404, 0.15384594970895457,
         0.13334804238225345, 0.11706248540922386, 0.11723051028097753)  # fmt: skip
# tanh(x) = x + x*z*TANH_T(z), z = x^2, |x| < TANH_SMALL
TANH_T = {
    32: (-0.33333333283938266, 0.1333332207319158, -0.05396406382647735, 0.021811902608433444,
         -0.008499247828795086, 0.002487614648031548),
    64: (-0.3333333333333333, 0.13333333333332392, -0.0539682539670594, 0.021869488476962563,
         -0.008863234021529514, 0.003592105532132769, -0.0014556239774192678,
         0.0005887537111834804, -0.00023410556936672797, 8.426522203958066e-05,
         -2.0026740085317684e-05),
}  # fmt: skip
TANH_SMALL = 0.5625  # above it tanh >= 0.5, so 1 - 2/(e^2x + 1) loses nothing to cancellation

LOG2E = 1.4426950408889634
# ln2 = EXP_LN2[0] + EXP_LN2[1]; the first part rounded to the type, so fma(-n, hi, x) is exact
EXP_LN2 = {32: (0.6931471824645996, -1.9046542121259336e-09), 64: (0.6931471805599453, 2.3190468138462996e-17)}  # fmt: skip
# ln2 split so that k * hi is exact for every exponent k
LOG_LN2 = {32: (0.693145751953125, 1.428606765330187e-06), 64: (0.6931471805598903, 5.497923018708371e-14)}  # fmt: skip
# exp's argument is clamped to where it is already 0 or inf, keeping 2^n within two scalings
EXP_RANGE = {32: (-104.0, 89.0), 64: (-746.0, 710.0)}
TWO_THIRDS = (0.6666666666666666, 3.700743415417188e-17)

INF, NAN = float("inf"), float("nan")


class _Float:
    """IR arithmetic on one float type at the builder's insertion point."""

    def __init__(self, b: ir.IRBuilder, ty: ir.Type):
        self.b, self.ty = b, ty
        self.bits = 64 if isinstance(ty, ir.DoubleType) else 32
        self.ity = ir.IntType(self.bits)
        self.mant = 52 if self.bits == 64 else 23
        self.bias = 1023 if self.bits == 64 else 127

    def c(self, v: float) -> ir.Constant:
        return ir.Constant(self.ty, v)

    def ci(self, v: int) -> ir.Constant:
        return ir.Constant(self.ity, v)

    def intrinsic(self, name: str, *args: ir.Value) -> ir.Value:
        module = self.b.module
        full = f"llvm.{name}.f{self.bits}"
        fn = module.globals.get(full)
        if fn is None:
            fn = ir.Function(module, ir.FunctionType(self.ty, [self.ty] * len(args)), full)
        return self.b.call(fn, args)

    def fma(self, a, b, c):
        return self.intrinsic("fma", a, b, c)

    def abs(self, a):
        return self.intrinsic("fabs", a)

    def add(self, a, b):
        return self.b.fadd(a, b)

    def sub(self, a, b):
        return self.b.fsub(a, b)

    def mul(self, a, b):
        return self.b.fmul(a, b)

    def div(self, a, b):
        return self.b.fdiv(a, b)

    def cmp(self, op: str, a, b):
        return self.b.fcmp_ordered(op, a, b)

    def isnan(self, a):
        return self.b.fcmp_unordered("uno", a, a)

    def isfinite(self, a):
        return self.cmp("<", self.abs(a), self.c(INF))

    def signbit(self, a):
        return self.b.icmp_signed("<", self.b.bitcast(a, self.ity), self.ci(0))

    def sel(self, cond, a, b):
        return self.b.select(cond, a, b)

    def poly(self, x, coeffs):
        """c0 + c1 x + c2 x^2 + ... by Horner's rule with fma."""
        acc = self.c(coeffs[-1])
        for c in reversed(coeffs[:-1]):
            acc = self.fma(acc, x, self.c(c))
        return acc

    def pow2(self, k):
        """2^k for an integer k in the normal exponent range, built from its bits."""
        return self.b.bitcast(
            self.b.shl(self.b.add(k, self.ci(self.bias)), self.ci(self.mant)), self.ty
        )

    def two_sum(self, a, b):
        """(s, e) with s = fl(a + b) and a + b = s + e exactly, for any magnitudes."""
        s = self.add(a, b)
        bb = self.sub(s, a)
        e = self.add(self.sub(a, self.sub(s, bb)), self.sub(b, bb))
        return s, e


def _exp(f: _Float, x, lo=None):
    """e^(x + lo): n = rint(x/ln2), r = x - n ln2, e^r by polynomial, times 2^n in two steps."""
    lo_clamp, hi_clamp = EXP_RANGE[f.bits]
    xc = f.sel(f.cmp(">", x, f.c(hi_clamp)), f.c(hi_clamp), x)
    xc = f.sel(f.cmp("<", xc, f.c(lo_clamp)), f.c(lo_clamp), xc)
    xc = f.sel(f.isnan(x), f.c(0.0), xc)  # keeps fptosi defined; NaN is restored at the end
    n = f.intrinsic("rint", f.mul(xc, f.c(LOG2E)))
    ln2_hi, ln2_lo = EXP_LN2[f.bits]
    neg_n = f.sub(f.c(-0.0), n)
    r = f.fma(neg_n, f.c(ln2_hi), xc)
    if lo is None:
        r, r_lo = f.fma(neg_n, f.c(ln2_lo), r), None
    else:
        lo = f.sel(f.cmp("==", xc, x), lo, f.c(0.0))  # a clamped x is far past the edges
        r, r_lo = f.two_sum(r, f.fma(neg_n, f.c(ln2_lo), lo))
    p = f.add(f.c(1.0), f.fma(f.mul(r, r), f.poly(r, EXP_Q[f.bits]), r))
    if r_lo is not None:
        p = f.fma(p, r_lo, p)  # e^(r + r_lo) = e^r (1 + r_lo)
    # two halves of n, so that results down to denormals are rounded only once
    k = f.b.fptosi(n, f.ity)
    k1 = f.b.ashr(k, f.ci(1))
    y = f.mul(f.mul(p, f.pow2(k1)), f.pow2(f.b.sub(k, k1)))
    return f.sel(f.isnan(x), x, y)


def _log_reduce(f: _Float, x):
    """x = 2^k * (1 + g) with 1 + g in [sqrt(1/2), sqrt(2)); returns (k as float, g exact)."""
    tiny = f.cmp("<", x, f.c(2.0 ** (1 - f.bias)))
    scale = f.mant + 1
    x = f.sel(tiny, f.mul(x, f.c(2.0**scale)), x)  # denormals become normal
    sqrt_half = 0x3FE6A09E667F3BCD if f.bits == 64 else 0x3F3504F3
    one = (f.bias << f.mant) - sqrt_half
    ix = f.b.add(f.b.bitcast(x, f.ity), f.ci(one))
    k = f.b.sub(f.b.ashr(ix, f.ci(f.mant)), f.ci(f.bias))
    k = f.b.sub(k, f.b.select(tiny, f.ci(scale), f.ci(0)))
    ix = f.b.add(f.b.and_(ix, f.ci((1 << f.mant) - 1)), f.ci(sqrt_half))
    g = f.sub(f.b.bitcast(ix, f.ty), f.c(1.0))
    return f.b.sitofp(k, f.ty), g


def _log_special(f: _Float, x, y):
    y = f.sel(f.cmp("==", x, f.c(0.0)), f.c(-INF), y)
    y = f.sel(f.cmp("<", x, f.c(0.0)), f.c(NAN), y)
    y = f.sel(f.cmp("==", x, f.c(INF)), f.c(INF), y)
    return f.sel(f.isnan(x), x, y)


def _log(f: _Float, x):
    """log(1+g) = g - g^2/2 + s (g^2/2 + R(s^2)), s = g/(2+g): the large terms stay exact."""
    dk, g = _log_reduce(f, x)
    s = f.div(g, f.add(f.c(2.0), g))
    z = f.mul(s, s)
    hfsq = f.mul(f.c(0.5), f.mul(g, g))
    ln2_hi, ln2_lo = LOG_LN2[f.bits]
    t = f.fma(s, f.fma(z, f.poly(z, LOG_W[f.bits]), hfsq), f.mul(dk, f.c(ln2_lo)))
    y = f.add(f.add(f.sub(t, hfsq), g), f.mul(dk, f.c(ln2_hi)))
    return _log_special(f, x, y)


def _log_dd(f: _Float, x):
    """log(x) as hi + lo to about 2^-64 relative (float64, x >= 0), for pow."""
    dk, g = _log_reduce(f, x)
    d = f.add(f.c(2.0), g)
    d_lo = f.sub(g, f.sub(d, f.c(2.0)))  # 2 + g = d + d_lo exactly
    s = f.div(g, d)
    s_lo = f.div(f.sub(f.fma(f.sub(f.c(-0.0), s), d, g), f.mul(s, d_lo)), d)
    z = f.mul(s, s)
    z_lo = f.fma(f.mul(f.c(2.0), s), s_lo, f.fma(s, s, f.sub(f.c(-0.0), z)))
    c = f.mul(s, z)  # s^3 as c + c_lo
    c_lo = f.add(f.fma(s, z, f.sub(f.c(-0.0), c)), f.fma(s, z_lo, f.mul(s_lo, z)))
    q, q_lo = TWO_THIRDS
    t3 = f.mul(f.c(q), c)  # 2s^3/3 as t3 + t3_lo
    t3_lo = f.add(f.fma(f.c(q), c, f.sub(f.c(-0.0), t3)), f.fma(f.c(q), c_lo, f.mul(f.c(q_lo), c)))
    t5 = f.mul(f.mul(c, z), f.poly(z, LOG_V))
    two_s = f.mul(f.c(2.0), s)
    hi = f.add(two_s, t3)
    lo = f.add(f.sub(two_s, hi), t3)
    lo = f.add(lo, f.add(f.fma(f.c(2.0), s_lo, t3_lo), t5))
    ln2_hi, ln2_lo = LOG_LN2[64]
    hi, e = f.two_sum(f.mul(dk, f.c(ln2_hi)), hi)
    lo = f.add(e, f.fma(dk, f.c(ln2_lo), lo))
    out = f.add(hi, lo)
    lo = f.sub(lo, f.sub(out, hi))
    hi = _log_special(f, x, out)
    return hi, f.sel(f.isfinite(hi), lo, f.c(0.0))


def _tanh(f: _Float, x):
    """Odd polynomial below TANH_SMALL, 1 - 2/(e^2|x| + 1) above; the sign comes from x."""
    a = f.abs(x)
    z = f.mul(a, a)
    small = f.fma(f.mul(a, z), f.poly(z, TANH_T[f.bits]), a)
    e = _exp(f, f.mul(f.c(2.0), a))
    large = f.sub(f.c(1.0), f.div(f.c(2.0), f.add(e, f.c(1.0))))
    t = f.sel(f.cmp("<", a, f.c(TANH_SMALL)), small, large)
    return f.intrinsic("copysign", t, x)


def _pow(f: _Float, x, y):
    """C99 pow: e^(y log|x|) with the sign of odd integer powers; special cases by select."""
    if f.bits == 32:  # float64 inside: y*log|x| is then exact enough for a float32 result
        d = _Float(f.b, ir.DoubleType())
        xd, yd = f.b.fpext(x, d.ty), f.b.fpext(y, d.ty)
        return f.b.fptrunc(_pow_special(d, xd, yd, _exp(d, d.mul(yd, _log(d, d.abs(xd))))), f.ty)
    hi, lo = _log_dd(f, f.abs(x))
    p = f.mul(y, hi)
    p_lo = f.fma(y, lo, f.fma(y, hi, f.sub(f.c(-0.0), p)))
    p_lo = f.sel(f.isfinite(p), p_lo, f.c(0.0))  # inf * 0 would be NaN
    return _pow_special(f, x, y, _exp(f, p, p_lo))


def _pow_special(f: _Float, x, y, r):
    """Sign and special values for pow, given r = e^(y log|x|) (which already handles 0, inf)."""
    is_int = f.b.and_(f.cmp("==", f.intrinsic("trunc", y), y), f.isfinite(y))
    half = f.mul(y, f.c(0.5))
    is_odd = f.b.and_(is_int, f.cmp("!=", f.intrinsic("trunc", half), half))
    r = f.sel(f.b.and_(f.signbit(x), is_odd), f.sub(f.c(-0.0), r), r)
    neg_finite = f.b.and_(f.cmp("<", x, f.c(0.0)), f.cmp(">", x, f.c(-INF)))
    non_int = f.b.and_(f.isfinite(y), f.b.not_(is_int))
    r = f.sel(f.b.and_(neg_finite, non_int), f.c(NAN), r)
    one = f.c(1.0)
    r = f.sel(f.b.and_(f.cmp("==", x, f.c(-1.0)), f.cmp("==", f.abs(y), f.c(INF))), one, r)
    r = f.sel(f.cmp("==", x, one), one, r)
    return f.sel(f.cmp("==", y, f.c(0.0)), one, r)


_EMITTERS = {"exp": _exp, "log": _log, "tanh": _tanh, "pow": _pow}


def math_function(module: ir.Module, name: str, ty: ir.Type) -> ir.Function:
    """The function `name` ("exp", "log", "tanh", "pow") for `ty` (ir.FloatType() or
    ir.DoubleType()), defined once per module as an internal, alwaysinline function
    `needlec.<name>.<f32|f64>` taking one argument (two for pow) of type ty and returning ty.

    >>> from llvmlite import ir
    >>> fn = math_function(ir.Module(), "pow", ir.DoubleType())
    >>> fn.name, len(fn.args), fn.linkage
    ('needlec.pow.f64', 2, 'internal')
    """
    if name not in _EMITTERS:
        raise ValueError(f"no math function {name!r}; have {', '.join(MATH_FUNCTIONS)}")
    if not isinstance(ty, (ir.FloatType, ir.DoubleType)):
        raise TypeError(f"math function {name} needs float or double, got {ty}")
    bits = 64 if isinstance(ty, ir.DoubleType) else 32
    full = f"needlec.{name}.f{bits}"
    existing = module.globals.get(full)
    if existing is not None:
        return existing
    nargs = 2 if name == "pow" else 1
    fn = ir.Function(module, ir.FunctionType(ty, [ty] * nargs), full)
    fn.linkage = "internal"
    for attr in ("alwaysinline", "nounwind", "readnone", "norecurse"):
        fn.attributes.add(attr)
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    b.ret(_EMITTERS[name](_Float(b, ty), *fn.args))
    return fn
