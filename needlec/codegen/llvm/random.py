"""Random draws as LLVM IR: `needlec.ir.random`'s mapping, emitted op for op.

Every float64 operation below is the one `needlec.ir.random` performs at the same step, in the same
order, with the same constants, and none carries a fast-math flag, so the compiled draw equals
`draw` bit for bit (LLVM does not fuse a separate fmul and fadd into an fma without a `contract`
flag). The code is straight-line (selects, no branches), so a loop over elements vectorizes.

>>> from llvmlite import ir
>>> fn = ir.Function(ir.Module(), ir.FunctionType(ir.FloatType(), [I64, I64]), "draw_one")
>>> b = ir.IRBuilder(fn.append_basic_block())
>>> b.ret(emit_draw(b, fn.args[0], 3, fn.args[1], "float32", "normal")).opname
'ret'
"""

from __future__ import annotations

from llvmlite import ir

from ...ir import random as rnd

I32, I64, F32, F64 = ir.IntType(32), ir.IntType(64), ir.FloatType(), ir.DoubleType()


def _i32(v: int) -> ir.Constant:
    return ir.Constant(I32, v)


def _i64(v: int) -> ir.Constant:
    return ir.Constant(I64, v)


def _f64(v: float) -> ir.Constant:
    return ir.Constant(F64, v)


def emit_philox4x32(
    builder: ir.IRBuilder,
    counter: list[ir.Value],
    key: list[ir.Value],
    rounds: int = rnd.PHILOX_ROUNDS,
) -> list[ir.Value]:
    """The four i32 words of Philox4x32-`rounds` of `counter` (4 x i32) under `key` (2 x i32)."""
    b = builder
    x0, x1, x2, x3 = counter
    k0, k1 = key

    def mulhilo(x: ir.Value, m: int) -> tuple[ir.Value, ir.Value]:
        p = b.mul(b.zext(x, I64), _i64(m))  # the full 64-bit product of two 32-bit words
        return b.trunc(b.lshr(p, _i64(32)), I32), b.trunc(p, I32)

    for r in range(rounds):
        if r:
            k0, k1 = b.add(k0, _i32(rnd.PHILOX_W[0])), b.add(k1, _i32(rnd.PHILOX_W[1]))
        hi0, lo0 = mulhilo(x0, rnd.PHILOX_M[0])
        hi1, lo1 = mulhilo(x2, rnd.PHILOX_M[1])
        x0, x1, x2, x3 = b.xor(b.xor(hi1, x1), k0), lo1, b.xor(b.xor(hi0, x3), k1), lo0
    return [x0, x1, x2, x3]


def _horner(b: ir.IRBuilder, z: ir.Value, coeffs: tuple[float, ...]) -> ir.Value:
    p = b.fadd(b.fmul(_f64(coeffs[-1]), z), _f64(coeffs[-2]))
    for c in reversed(coeffs[:-2]):
        p = b.fadd(b.fmul(p, z), _f64(c))
    return p


def emit_log(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """`needlec.ir.random._log` of a positive normal double."""
    bits = b.bitcast(x, I64)
    e = b.ashr(b.sub(bits, _i64(rnd.SQRT_HALF_BITS)), _i64(rnd.MANTISSA_BITS))
    m = b.bitcast(b.sub(bits, b.shl(e, _i64(rnd.MANTISSA_BITS))), F64)
    ef = b.sitofp(e, F64)
    f = b.fsub(m, _f64(1.0))
    s = b.fdiv(f, b.fadd(_f64(2.0), f))
    z = b.fmul(s, s)
    r = b.fmul(z, _horner(b, z, rnd.LOG_COEFFS))
    hfsq = b.fmul(b.fmul(_f64(0.5), f), f)
    tail = b.fadd(b.fmul(s, b.fadd(hfsq, r)), b.fmul(ef, _f64(rnd.LN2_LO)))
    return b.fadd(b.fmul(ef, _f64(rnd.LN2_HI)), b.fsub(f, b.fsub(hfsq, tail)))


def emit_cos(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """`needlec.ir.random._cos` of a double in [0, 2*pi]."""
    q = b.fptosi(b.fadd(b.fmul(x, _f64(rnd.TWO_OVER_PI)), _f64(0.5)), I64)
    qf = b.sitofp(q, F64)
    r = b.fsub(x, b.fmul(qf, _f64(rnd.PIO2_1)))
    r = b.fsub(r, b.fmul(qf, _f64(rnd.PIO2_2)))
    r = b.fsub(r, b.fmul(qf, _f64(rnd.PIO2_3)))
    z = b.fmul(r, r)
    sin = b.fadd(r, b.fmul(b.fmul(r, z), _horner(b, z, rnd.SIN_COEFFS)))
    hz = b.fmul(_f64(0.5), z)
    w = b.fsub(_f64(1.0), hz)
    lost = b.fsub(b.fsub(_f64(1.0), w), hz)
    cos = b.fadd(w, b.fadd(lost, b.fmul(b.fmul(z, z), _horner(b, z, rnd.COS_COEFFS))))
    quadrant = b.and_(q, _i64(3))
    pick = lambda k, then, other: b.select(b.icmp_signed("==", quadrant, _i64(k)), then, other)
    return pick(0, cos, pick(1, b.fneg(sin), pick(2, b.fneg(cos), sin)))


def _uniform53(b: ir.IRBuilder, hi: ir.Value, lo: ir.Value) -> ir.Value:
    word = b.or_(b.shl(b.zext(hi, I64), _i64(32)), b.zext(lo, I64))
    return b.lshr(word, _i64(11))


def emit_draw(
    builder: ir.IRBuilder,
    seed_i64: ir.Value,
    stream: int,
    index_i64: ir.Value,
    dtype: str,
    dist: str,
) -> ir.Value:
    """Element `index_i64` of the random node (seed, stream): a float or double equal to `draw`'s."""
    b = builder
    dtype = rnd.check_draw(dtype, dist)
    stream &= 2**64 - 1
    key = [b.trunc(seed_i64, I32), b.trunc(b.lshr(seed_i64, _i64(32)), I32)]
    counter = [
        b.trunc(index_i64, I32),
        b.trunc(b.lshr(index_i64, _i64(32)), I32),
        _i32(stream & 0xFFFFFFFF),
        _i32(stream >> 32),
    ]
    w0, w1, w2, w3 = emit_philox4x32(b, counter, key)
    if dist == "uniform" and dtype == "float32":
        return b.fmul(b.uitofp(b.lshr(w0, _i32(8)), F32), ir.Constant(F32, 2.0**-24))
    if dist == "uniform":
        return b.fmul(b.uitofp(_uniform53(b, w1, w0), F64), _f64(2.0**-53))
    u1 = b.fmul(b.uitofp(b.add(_uniform53(b, w1, w0), _i64(1)), F64), _f64(2.0**-53))
    u2 = b.fmul(b.uitofp(_uniform53(b, w3, w2), F64), _f64(2.0**-53))
    sqrt = b.module.declare_intrinsic("llvm.sqrt", [F64])
    radius = b.call(sqrt, [b.fmul(_f64(-2.0), emit_log(b, u1))])
    z = b.fmul(radius, emit_cos(b, b.fmul(_f64(rnd.TWO_PI), u2)))
    return z if dtype == "float64" else b.fptrunc(z, F32)
