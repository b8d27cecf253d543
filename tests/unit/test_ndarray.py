"""NDArray against numpy: views, layouts, every op, dtypes, errors, devices."""

import numpy as np
import pytest

from needlec import backend_ndarray as nd
from needlec.backend_ndarray import NDArray

RNG = np.random.default_rng(0)


def _data(*shape, lo=-1.0, hi=1.0, dtype="float32"):
    return RNG.uniform(lo, hi, size=shape).astype(dtype)


# Each layout builds a (3, 4) NDArray and the numpy array it should equal.
def _compact(x):
    return NDArray(x), x


def _permuted(x):
    return NDArray(np.ascontiguousarray(x.T)).permute((1, 0)), x


def _stepped(x):
    big = np.zeros((6, 8), x.dtype)
    big[::2, ::2] = x
    return NDArray(big)[::2, ::2], x


def _offset(x):
    big = np.zeros((5, 7), x.dtype)
    big[1:4, 2:6] = x
    return NDArray(big)[1:4, 2:6], x


def _reversed(x):
    return NDArray(np.ascontiguousarray(x[::-1, ::-1]))[::-1, ::-1], x


def _broadcast(x):
    row = x[:1]
    return NDArray(row).broadcast_to((3, 4)), np.broadcast_to(row, (3, 4))


LAYOUTS = {
    "compact": _compact,
    "permuted": _permuted,
    "stepped": _stepped,
    "offset": _offset,
    "reversed": _reversed,
    "broadcast": _broadcast,
}


def _check(out, ref, rtol=1e-6, atol=1e-6):
    assert isinstance(out, NDArray)
    assert out.shape == np.shape(ref), (out.shape, np.shape(ref))
    np.testing.assert_allclose(out.numpy(), ref, rtol=rtol, atol=atol)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layout_matches_numpy(layout):
    a, x = LAYOUTS[layout](_data(3, 4))
    assert a.is_compact() == (layout == "compact")
    _check(a, x, rtol=0, atol=0)
    c = a.compact()
    assert c.is_compact() and (c is a) == (layout == "compact")
    _check(c, x, rtol=0, atol=0)


# ---- elementwise -------------------------------------------------------------------------------
UNARY = {
    "neg": (lambda a: -a, lambda x: -x, (-1, 1)),
    "log": (lambda a: a.log(), np.log, (0.1, 2)),
    "exp": (lambda a: a.exp(), np.exp, (-1, 1)),
    "tanh": (lambda a: a.tanh(), np.tanh, (-2, 2)),
    "pow2": (lambda a: a**2, lambda x: x**2, (-1, 1)),
    "pow_half": (lambda a: a**0.5, lambda x: x**0.5, (0.1, 2)),
    "maximum0": (lambda a: a.maximum(0), lambda x: np.maximum(x, 0), (-1, 1)),
}


@pytest.mark.parametrize("op", UNARY)
def test_unary(op):
    f, ref, (lo, hi) = UNARY[op]
    for make in LAYOUTS.values():
        a, x = make(_data(3, 4, lo=lo, hi=hi))
        out = f(a)
        _check(out, ref(x))
        assert out.dtype == "float32" and out.is_compact()


BINARY = {
    "add": (lambda a, b: a + b, np.add),
    "sub": (lambda a, b: a - b, np.subtract),
    "mul": (lambda a, b: a * b, np.multiply),
    "div": (lambda a, b: a / b, np.divide),
    "maximum": (lambda a, b: a.maximum(b), np.maximum),
    "eq": (lambda a, b: a == b, np.equal),
    "ne": (lambda a, b: a != b, np.not_equal),
    "lt": (lambda a, b: a < b, np.less),
    "le": (lambda a, b: a <= b, np.less_equal),
    "gt": (lambda a, b: a > b, np.greater),
    "ge": (lambda a, b: a >= b, np.greater_equal),
}
LAYOUT_PAIRS = [("compact", "compact"), ("permuted", "stepped"), ("broadcast", "reversed")]


@pytest.mark.parametrize("op", BINARY)
def test_binary_ndarray(op):
    f, ref = BINARY[op]
    x = _data(3, 4, lo=0.5, hi=2)
    y = x.copy()
    y[0] = _data(4, lo=0.5, hi=2)  # some equal, some different elements for comparisons
    for la, lb in LAYOUT_PAIRS:
        a, xa = LAYOUTS[la](x)
        b, yb = LAYOUTS[lb](y)
        out = f(a, b)
        _check(out, ref(xa, yb).astype("float32"))
        assert out.dtype == "float32"  # comparisons give 0/1 in self's dtype


@pytest.mark.parametrize("op", BINARY)
def test_binary_scalar(op):
    f, ref = BINARY[op]
    a, x = _permuted(np.array([[0.5, 1.5, 2.0, 3.0]] * 3, "float32"))
    for c in (1.5, np.float64(2.0), 3):
        _check(f(a, c), ref(x, c).astype("float32"))
        assert f(a, c).dtype == "float32"


@pytest.mark.parametrize(
    "f, ref",
    [
        (lambda a: 2 + a, lambda x: 2 + x),
        (lambda a: 2 - a, lambda x: 2 - x),
        (lambda a: 2 * a, lambda x: 2 * x),
        (lambda a: 2 / a, lambda x: 2 / x),
    ],
    ids=["radd", "rsub", "rmul", "rdiv"],
)
def test_reflected_scalar(f, ref):
    a, x = _stepped(_data(3, 4, lo=0.5, hi=2))
    _check(f(a), ref(x))


def test_binary_returns_notimplemented_for_foreign_types():
    class Other:
        def __radd__(self, a):
            return "other"

    assert NDArray([1.0]) + Other() == "other"


# ---- reductions and matmul ---------------------------------------------------------------------
@pytest.mark.parametrize("axis", [None, 0, 1, 2, -1, (0, 2)], ids=str)
@pytest.mark.parametrize("red", ["sum", "max"])
def test_reduce(red, axis):
    x = _data(2, 3, 4)
    a = NDArray(np.ascontiguousarray(x.transpose(2, 0, 1))).permute((1, 2, 0))
    for keepdims in (False, True):
        out = getattr(a, red)(axis=axis, keepdims=keepdims)
        _check(out, getattr(np, red)(x, axis=axis, keepdims=keepdims), rtol=1e-5)


@pytest.mark.parametrize("layout", ["stepped", "broadcast", "reversed"])
def test_reduce_non_compact(layout):
    a, x = LAYOUTS[layout](_data(3, 4))
    _check(a.sum(axis=1), x.sum(axis=1))
    _check(a.max(axis=0, keepdims=True), x.max(axis=0, keepdims=True))
    _check(nd.summation(a, 0), x.sum(0))
    _check(nd.sum(a), x.sum(), rtol=1e-5)


@pytest.mark.parametrize(
    "sa, sb",
    [((3, 4), (4, 5)), ((2, 3, 4), (2, 4, 5)), ((2, 3, 4), (4, 5)), ((1, 3, 4), (2, 4, 2))],
)
def test_matmul(sa, sb):
    x, y = _data(*sa), _data(*sb)
    _check(NDArray(x) @ NDArray(y), x @ y, rtol=1e-5)


def test_matmul_transposed_inputs():
    x, y = _data(4, 3), _data(5, 4)
    out = NDArray(x).permute((1, 0)) @ NDArray(y).permute((1, 0))
    _check(out, x.T @ y.T, rtol=1e-5)


# ---- views share memory --------------------------------------------------------------------------
VIEWS = {
    "reshape": lambda a: a.reshape((4, 3)),
    "reshape_-1": lambda a: a.reshape((2, -1)),
    "permute": lambda a: a.permute((1, 0)),
    "broadcast": lambda a: a[0:1, :].broadcast_to((2, 3, 4)),
    "getitem": lambda a: a[1:, ::2],
    "as_strided": lambda a: a.as_strided((2, 2), (4, 1)),
}


@pytest.mark.parametrize("view", VIEWS)
def test_views_share_memory(view):
    a = NDArray(np.arange(12, dtype="float32").reshape(3, 4))
    v = VIEWS[view](a)
    assert v.handle is a.handle
    assert np.shares_memory(np.asarray(v), np.asarray(a))
    before = a.numpy()
    v[(0,) * v.ndim] = -7.0
    assert (a.numpy() == -7.0).sum() == 1 and (before == -7.0).sum() == 0


def test_view_fields():
    a = NDArray(np.arange(24, dtype="float32").reshape(2, 3, 4))
    assert a.strides == (12, 4, 1) and a.offset == 0 and a.ndim == 3 and a.size == 24
    p = a.permute((2, 0, 1))
    assert p.shape == (4, 2, 3) and p.strides == (1, 12, 4)
    s = a[1, 1:3, ::-2]
    assert s.shape == (1, 2, 2) and s.strides == (12, 4, -2) and s.offset == 12 + 4 + 3
    b = a[:, :1, :].broadcast_to((5, 2, 3, 4))
    assert b.strides == (0, 12, 0, 1)


@pytest.mark.parametrize(
    "idx, np_idx",
    [
        (1, (slice(1, 2),)),
        (-1, (slice(2, 3),)),
        ((0, 2), (slice(0, 1), slice(2, 3))),
        ((slice(None), -2), (slice(None), slice(2, 3))),
        ((slice(1, None), slice(None, None, 2)), None),
        ((slice(None, None, -1), slice(3, 0, -2)), None),
        ((slice(-2, None),), None),
        ((slice(2, 1),), None),
    ],
    ids=["int", "neg_int", "two_ints", "slice_int", "steps", "neg_steps", "neg_start", "empty"],
)
def test_getitem(idx, np_idx):
    x = _data(3, 4)
    for layout in ("compact", "permuted", "offset"):
        a, xa = LAYOUTS[layout](x)
        _check(a[idx], xa[np_idx if np_idx is not None else idx], rtol=0, atol=0)


@pytest.mark.parametrize("idx", [3, -4, (0, 4), (0, 0, 0)])
def test_getitem_out_of_range(idx):
    with pytest.raises(IndexError):
        NDArray(_data(3, 4))[idx]


@pytest.mark.parametrize(
    "idx, value",
    [
        ((1, slice(None)), 5.0),
        ((slice(None), slice(1, 3)), np.arange(6, dtype="float32").reshape(3, 2)),
        ((slice(None, None, 2), slice(None)), np.arange(4, dtype="float32")),  # broadcast row
        ((slice(None, None, -1), 2), np.arange(3, dtype="float32").reshape(3, 1)),
    ],
    ids=["scalar", "block", "broadcast", "neg_step"],
)
def test_setitem(idx, value):
    np_idx = tuple(slice(i, i + 1) if isinstance(i, int) else i for i in idx)
    for layout in ("compact", "permuted", "offset"):
        a, x = LAYOUTS[layout](_data(3, 4))
        ref = x.copy()
        ref[np_idx] = value
        a[idx] = NDArray(value) if isinstance(value, np.ndarray) else value
        _check(a, ref, rtol=0, atol=0)


def test_setitem_same_size_other_shape_and_overlap():
    a = NDArray(np.arange(6, dtype="float32").reshape(2, 3))
    a[0, :] = NDArray(np.array([7.0, 8.0, 9.0]))  # (3,) into (1, 3)
    a[1, :] = a[0, :]
    np.testing.assert_array_equal(a.numpy(), [[7, 8, 9], [7, 8, 9]])
    b = NDArray(np.arange(5, dtype="float32"))
    b[1:] = b[:-1]  # overlapping source and destination
    np.testing.assert_array_equal(b.numpy(), [0, 0, 1, 2, 3])
    with pytest.raises(ValueError, match=r"\(2,\).*\(1, 3\)"):
        a[0, :] = NDArray([1.0, 2.0])


@pytest.mark.parametrize("layout", ["compact", "permuted", "stepped"])
def test_flat_writes_through(layout):
    a, x = LAYOUTS[layout](_data(3, 4, dtype="float64"))
    base = a.numpy()
    a.flat[5] += 1e-3
    base.flat[5] += 1e-3
    np.testing.assert_array_equal(a.numpy(), base)
    assert a.dtype == "float64"


def test_reshape_non_compact_compacts():
    a, x = _permuted(_data(3, 4))
    r = a.reshape((12,))
    _check(r, x.reshape(12), rtol=0, atol=0)
    assert r.is_compact() and r.handle is not a.handle
    _check(nd.reshape(a, (2, 2, 3)), x.reshape(2, 2, 3), rtol=0, atol=0)


@pytest.mark.parametrize(
    "src, dst",
    [((3,), (2, 3)), ((3, 1), (3, 4)), ((), (2, 2)), ((1, 4), (2, 3, 4)), ((2, 1, 1), (2, 5, 3))],
)
def test_broadcast_to(src, dst):
    x = _data(*src)
    b = nd.broadcast_to(NDArray(x), dst)
    _check(b, np.broadcast_to(x, dst), rtol=0, atol=0)
    _check(b + b, np.broadcast_to(x, dst) * 2)


# ---- errors name both shapes ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "f, pattern",
    [
        (lambda: NDArray(_data(2, 3)) + NDArray(_data(3, 2)), r"\(2, 3\).*\(3, 2\)"),
        (lambda: NDArray(_data(2, 3)) < NDArray(_data(3)), r"\(2, 3\).*\(3,\)"),
        (lambda: NDArray(_data(2, 3)).reshape((4, 2)), r"\(2, 3\).*\(4, 2\)"),
        (lambda: NDArray(_data(2, 3)).reshape((4, -1)), r"\(2, 3\).*\(4, -1\)"),
        (lambda: NDArray(_data(2, 3)).broadcast_to((2, 4)), r"\(2, 3\).*\(2, 4\)"),
        (lambda: NDArray(_data(2, 3)).broadcast_to((3,)), r"\(2, 3\).*\(3,\)"),
        (lambda: NDArray(_data(2, 3)) @ NDArray(_data(2, 3)), r"\(2, 3\).*\(2, 3\)"),
        (lambda: NDArray(_data(2, 3)).permute((0, 0)), r"\(0, 0\).*\(2, 3\)"),
    ],
    ids=["add", "lt", "reshape", "reshape_-1", "broadcast", "broadcast_rank", "matmul", "permute"],
)
def test_errors_name_shapes(f, pattern):
    with pytest.raises(ValueError, match=pattern):
        f()


# ---- dtypes --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "int64", "bool"])
def test_dtype_kept(dtype):
    x = (np.arange(12).reshape(3, 4) % 3).astype(dtype)
    a = NDArray(x)
    assert a.dtype == dtype and a.numpy().dtype == np.dtype(dtype)
    p = a.permute((1, 0))
    assert p.compact().dtype == dtype and p.reshape((12,)).dtype == dtype
    assert (a == a).dtype == dtype and a.max().dtype == dtype
    if dtype != "bool":
        assert (a + a).dtype == dtype and (a * 2).dtype == dtype and a.sum(0).dtype == dtype
        np.testing.assert_array_equal(a.sum(0).numpy(), x.sum(0))


def test_dtype_conversions():
    assert NDArray(np.ones(3)).dtype == "float64"
    assert NDArray(np.ones(3), dtype="float32").dtype == "float32"
    assert NDArray([1, 2]).dtype == "float32" and NDArray(2.0).shape == ()
    assert NDArray([1, 2], dtype=np.int32).dtype == "int32"
    assert NDArray(np.ones(3, np.uint8)).dtype == "int64"
    a64 = NDArray(_data(3, 4, dtype="float64"))
    assert (a64.exp() + 1.0).dtype == "float64" and a64.astype("float32").dtype == "float32"
    assert (a64.astype(np.dtype("int32"))).dtype == "int32"
    assert nd.array(np.ones(3)).dtype == "float32"
    assert nd.array(np.ones(3), dtype=None).dtype == "float64"
    assert (NDArray([1.0]) + NDArray(np.ones(1))).dtype == "float64"  # numpy promotion
    with pytest.raises(TypeError):
        NDArray([1.0], dtype="complex64")


# ---- construction, numpy interop -----------------------------------------------------------------
def test_from_numpy_wraps_without_copy():
    x = _data(3, 4)
    a = NDArray.from_numpy(x)
    assert np.shares_memory(a.handle, x) and a.is_compact()
    b = NDArray(x)  # the constructor copies
    assert not np.shares_memory(b.handle, x)
    c = NDArray.from_numpy(x.T)  # not C-contiguous: copied
    _check(c, x.T, rtol=0, atol=0)
    d = NDArray(b)
    assert d.handle is not b.handle and d.device == b.device


def test_numpy_and_array_protocol():
    a, x = _stepped(_data(3, 4))
    n = a.numpy()
    assert n.flags.c_contiguous and not np.shares_memory(n, a.handle)
    v = np.asarray(a)
    assert np.shares_memory(v, a.handle) and v.shape == (3, 4)
    np.testing.assert_array_equal(np.asarray(a, dtype="float64"), x.astype("float64"))
    assert not np.shares_memory(np.array(a), a.handle)


def test_make():
    h = np.arange(10, dtype="float32")
    a = NDArray.make((2, 2), strides=(3, 1), handle=h, offset=1)
    np.testing.assert_array_equal(a.numpy(), [[1, 2], [4, 5]])
    assert NDArray.make((2, 3), dtype="int64").dtype == "int64"
    assert NDArray.make((2, 3)).dtype == "float32"


def test_flip_pad_fill_to():
    a, x = _permuted(_data(3, 4))
    _check(a.flip((0,)), np.flip(x, 0), rtol=0, atol=0)
    _check(nd.flip(a, (0, 1)), np.flip(x, (0, 1)), rtol=0, atol=0)
    _check(a.pad(((1, 0), (0, 2))), np.pad(x, ((1, 0), (0, 2))), rtol=0, atol=0)
    with pytest.raises(ValueError):
        a.pad(((1, 1),))
    s = NDArray(np.zeros((3, 4), "float32"))
    s[:, 1:3].fill(2.0)
    assert s.numpy().sum() == 12.0
    assert a.to(nd.cpu()) is a
    b = a.to(nd.cpu_numpy())
    assert b.device == nd.cpu_numpy() and b.handle is not a.handle
    _check(b, x, rtol=0, atol=0)


def test_module_helpers():
    a, x = _offset(_data(3, 4, lo=0.1, hi=2))
    _check(nd.maximum(a, 1.0), np.maximum(x, 1.0))
    _check(nd.log(a), np.log(x))
    _check(nd.exp(a), np.exp(x))
    _check(nd.tanh(a), np.tanh(x))
    _check(nd.negative(a), -x)
    _check(nd.full((2, 3), 7, device=nd.cpu()), np.full((2, 3), 7.0))
    e = nd.empty((2, 3), dtype="int32")
    assert e.shape == (2, 3) and e.dtype == "int32" and e.device == nd.default_device()


def test_repr_str():
    a = NDArray([[1.0, 2.0]])
    assert repr(a) == "NDArray([[1. 2.]], device=cpu())"
    assert str(a) == str(np.array([[1.0, 2.0]], "float32"))
    assert repr(NDArray([1.0], device=nd.cpu_numpy())) == "NDArray([1.], device=cpu_numpy())"


def test_zero_dim_and_empty():
    s = NDArray(3.0)
    assert s.shape == () and s.size == 1 and float(s.numpy()) == 3.0
    _check(s.broadcast_to((2,)), np.array([3.0, 3.0]))
    z = NDArray(np.zeros((0, 3), "float32"))
    _check(z.sum(0), np.zeros(3))
    _check(z.permute((1, 0)).compact(), np.zeros((3, 0)))


# ---- devices and factories -----------------------------------------------------------------------
def test_devices():
    assert [repr(d) for d in nd.all_devices()] == ["cpu()", "cuda()", "cpu_numpy()"]
    assert nd.cpu() is nd.cpu() and nd.cuda() is nd.cuda() and nd.default_device() is nd.cpu()
    assert nd.cpu() == nd.cpu() and nd.cpu() != nd.cpu_numpy() and nd.cpu() != "cpu"
    assert len({nd.cpu(), nd.cpu(), nd.cuda()}) == 2
    assert nd.cpu().enabled() and nd.cpu_numpy().enabled()
    assert nd.cpu().name == "cpu"


def test_cuda_disabled_without_gpu():
    if nd.cuda().enabled():
        pytest.skip("a CUDA device is present")
    assert nd.cuda().enabled() is False
    with pytest.raises(RuntimeError, match=r"cuda\(\) is not available"):
        NDArray([1.0], device=nd.cuda())
    with pytest.raises(RuntimeError, match="not available"):
        nd.cuda().zeros(2, 2)


@pytest.mark.parametrize("device", [nd.cpu(), nd.cpu_numpy()], ids=repr)
def test_random_factories_match_numpy(device):
    np.random.seed(0)
    a = device.rand(3, 4)
    np.random.seed(0)
    np.testing.assert_array_equal(a.numpy(), np.random.rand(3, 4).astype("float32"))
    assert a.dtype == "float32" and a.device == device
    np.random.seed(1)
    b = device.randn(2, 5, dtype="float64")
    np.random.seed(1)
    np.testing.assert_array_equal(b.numpy(), np.random.randn(2, 5))


@pytest.mark.parametrize("i", [3, np.array([0, 2, 1]), np.array([[1, 0], [4, 4]])], ids=str)
def test_one_hot(i):
    out = nd.cpu().one_hot(5, i)
    _check(out, np.eye(5)[i], rtol=0, atol=0)
    assert out.dtype == "float32"
    _check(nd.cpu().one_hot(5, NDArray(np.asarray(i, "float32"))), np.eye(5)[i])


def test_constant_factories():
    dev = nd.cpu()
    _check(dev.zeros(2, 3), np.zeros((2, 3)), rtol=0, atol=0)
    _check(dev.ones((2, 3)), np.ones((2, 3)), rtol=0, atol=0)
    assert dev.ones(4, dtype="int64").dtype == "int64"
    _check(dev.full((2,), 3.5, dtype="float64"), np.full(2, 3.5))
    assert dev.empty((4, 1)).shape == (4, 1) and dev.empty(3).shape == (3,)
