"""Compiled random draws equal `needlec.ir.random.draw` bit for bit.

Each case builds `void f(T* out, i64 seed, i64 n)` with out[i] = draw(seed, stream, i), optimizes it
at O3 for the host CPU (so the loop is vectorized) and compares the raw bits with the numpy draw.
"""

import ctypes
import functools

import numpy as np
import pytest
from llvmlite import ir

from needlec.codegen.llvm import target
from needlec.codegen.llvm.random import F32, F64, I64, emit_draw, emit_philox4x32
from needlec.ir.random import draw

INT_VIEW = {"float32": np.uint32, "float64": np.uint64}


def _compile(module: ir.Module, name: str):
    """The module compiled as the backend compiles programs; returns (library, address)."""
    lib = target.compile_module(str(module))
    return lib, lib.function_address(name)


@functools.cache
def _fill(stream: int, dtype: str, dist: str):
    """A compiled `f(out, seed, n)` writing element i of the draw to out[i], and its engine."""
    ty = F32 if dtype == "float32" else F64
    module = ir.Module(name="random_test")
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [ty.as_pointer(), I64, I64]), "f")
    out, seed, n = fn.args
    entry, loop, done = (fn.append_basic_block(s) for s in ("entry", "loop", "done"))
    b = ir.IRBuilder(entry)
    b.cbranch(b.icmp_signed(">", n, ir.Constant(I64, 0)), loop, done)
    b.position_at_end(loop)
    i = b.phi(I64)
    i.add_incoming(ir.Constant(I64, 0), entry)
    b.store(emit_draw(b, seed, stream, i, dtype, dist), b.gep(out, [i]))
    nxt = b.add(i, ir.Constant(I64, 1))
    i.add_incoming(nxt, loop)
    b.cbranch(b.icmp_signed("<", nxt, n), loop, done)
    b.position_at_end(done)
    b.ret_void()
    engine, addr = _compile(module, "f")
    ctype = ctypes.c_float if dtype == "float32" else ctypes.c_double
    f = ctypes.CFUNCTYPE(None, ctypes.POINTER(ctype), ctypes.c_int64, ctypes.c_int64)(addr)
    return f, engine, ctype


def compiled_draw(seed: int, stream: int, n: int, dtype: str, dist: str) -> np.ndarray:
    f, _, ctype = _fill(stream, dtype, dist)
    out = np.full(n, np.nan, dtype=dtype)
    f(out.ctypes.data_as(ctypes.POINTER(ctype)), seed - 2**64 if seed >= 2**63 else seed, n)
    return out


SEEDS = [0, 1, 12345, 2**32 - 1, 2**32, 2**32 + 7, 0x0123456789ABCDEF, 2**63 - 1]
STREAMS = [0, 1, 5, 2**32 + 3]


@pytest.mark.parametrize("dist", ["uniform", "normal"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n", [1, 7, 1025])
def test_compiled_draw_is_bit_identical(dtype, dist, n):
    for seed in SEEDS:
        for stream in STREAMS:
            got = compiled_draw(seed, stream, n, dtype, dist)
            want = draw(seed, stream, (n,), dtype, dist)
            view = INT_VIEW[dtype]
            assert np.array_equal(got.view(view), want.view(view)), (seed, stream, n)


@pytest.mark.parametrize("dist", ["uniform", "normal"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_compiled_draw_is_bit_identical_large(dtype, dist):
    n = 2**20
    for seed, stream in [(2024, 0), (2**40 + 9, 2**32 + 3)]:
        got, want = (
            compiled_draw(seed, stream, n, dtype, dist),
            draw(seed, stream, (n,), dtype, dist),
        )
        view = INT_VIEW[dtype]
        mismatches = np.flatnonzero(got.view(view) != want.view(view))
        assert mismatches.size == 0, f"{mismatches.size} elements differ, first at {mismatches[:5]}"


# Random123 known answers (the kat_vectors file, as quoted in DEShawResearch/Random123-Boost,
# libs/random/test/test_philox.cpp): counter, key, Philox4x32-10 output
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


def test_emitted_philox_known_answers():
    i32 = ir.IntType(32)
    module = ir.Module(name="philox_kat")
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [i32.as_pointer()] * 3), "kat")
    ctr, key, out = fn.args
    b = ir.IRBuilder(fn.append_basic_block())
    load = lambda p, k: b.load(b.gep(p, [ir.Constant(I64, k)]))
    words = emit_philox4x32(b, [load(ctr, k) for k in range(4)], [load(key, k) for k in range(2)])
    for k, w in enumerate(words):
        b.store(w, b.gep(out, [ir.Constant(I64, k)]))
    b.ret_void()
    engine, addr = _compile(module, "kat")
    p = ctypes.POINTER(ctypes.c_uint32)
    f = ctypes.CFUNCTYPE(None, p, p, p)(addr)
    for counter, k, want in KAT:
        c, kk = np.array(counter, np.uint32), np.array(k, np.uint32)
        got = np.zeros(4, np.uint32)
        f(c.ctypes.data_as(p), kk.ctypes.data_as(p), got.ctypes.data_as(p))
        assert got.tolist() == list(want)
    del engine


def test_emitted_draw_has_no_fast_math_flags():
    module = ir.Module()
    fn = ir.Function(module, ir.FunctionType(F64, [I64, I64]), "one")
    b = ir.IRBuilder(fn.append_basic_block())
    b.ret(emit_draw(b, fn.args[0], 0, fn.args[1], "float64", "normal"))
    text = str(module)
    for flag in ("fast", "contract", "reassoc", "nnan", "ninf", "nsz", "arcp", "afn"):
        assert f" {flag} " not in text


def test_emit_draw_rejects_other_dtypes():
    fn = ir.Function(ir.Module(), ir.FunctionType(F64, [I64, I64]), "one")
    b = ir.IRBuilder(fn.append_basic_block())
    with pytest.raises(ValueError, match="float32 or float64"):
        emit_draw(b, fn.args[0], 0, fn.args[1], "int32", "uniform")
