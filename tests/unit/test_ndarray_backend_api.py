"""needle's NDArray backend API (hw3): `_handle.ptr()` for memory sharing, the device kernels
(`compact`, `ewise_setitem`, `ewise_add`, `reduce_sum`, `matmul_tiled`, ...) that take `_handle`s,
`NDArray.make`, and strides and offsets as needle computes them."""

import copy
import pickle

import numpy as np
import pytest

import needlec as needle
from needlec import backend_ndarray as nd
from needlec.backend_ndarray import NDArray
from needlec.ndarray_backend import Array

DEVICES = [nd.cpu(), nd.cpu_numpy()]
IDS = ["cpu", "cpu_numpy"]


def compare_strides(a_np, a_nd):
    """needle's check: numpy's byte strides over the item size are the NDArray's strides."""
    assert tuple(s // a_np.itemsize for s in a_np.strides) == a_nd.strides


def check_same_memory(original, view):
    assert original._handle.ptr() == view._handle.ptr()


# ---- views share their base's buffer -------------------------------------------------------------
VIEWS = {
    "transpose": ((4, 4), lambda x: x.transpose(), lambda x: x.permute((1, 0))),
    "permute3": ((4, 5, 6), lambda x: x.transpose(2, 0, 1), lambda x: x.permute((2, 0, 1))),
    "broadcast_to": (
        (4, 1, 4),
        lambda x: np.broadcast_to(x, (4, 5, 4)),
        lambda x: x.broadcast_to((4, 5, 4)),
    ),
    "broadcast_new_dims": (
        (1, 3, 4),
        lambda x: np.broadcast_to(x, (2, 6, 3, 4)),
        lambda x: x.broadcast_to((2, 6, 3, 4)),
    ),
    "reshape": ((8, 16), lambda x: x.reshape(2, 4, 16), lambda x: x.reshape((2, 4, 16))),
    "reshape_many_dims": (
        (16, 16),
        lambda x: x.reshape(2, 4, 2, 2, 2, 2, 2),
        lambda x: x.reshape((2, 4, 2, 2, 2, 2, 2)),
    ),
    "getitem_offset0": ((8, 16), lambda x: x[:4, ::2], lambda x: x[:4, ::2]),
    "getitem": ((8, 16), lambda x: x[3:4, 1:4], lambda x: x[3:4, 1:4]),
    "getitem_step": ((8, 16), lambda x: x[1:4:2, 3:4], lambda x: x[1:4:2, 3:4]),
    "getitem6": (
        (8, 8, 2, 2, 2, 2),
        lambda x: x[1:3, 5:8, 1:2, 0:1, 0:1, 1:2],
        lambda x: x[1:3, 5:8, 1:2, 0:1, 0:1, 1:2],
    ),
    "transpose_getitem": (
        (7, 8),
        lambda x: x.transpose()[3:7, 2:5],
        lambda x: x.permute((1, 0))[3:7, 2:5],
    ),
}


@pytest.mark.parametrize("device", DEVICES, ids=IDS)
@pytest.mark.parametrize("name", VIEWS)
def test_views_share_the_buffer(name, device):
    shape, np_fn, nd_fn = VIEWS[name]
    x = np.random.randn(*shape)
    a = nd.array(x, device=device)
    v = nd_fn(a)
    expect = np_fn(x.astype("float32"))
    np.testing.assert_array_equal(v.numpy(), expect)
    compare_strides(expect, v)
    check_same_memory(a, v)
    assert v._handle.size == a._handle.size == x.size
    # the view is the base's memory: writing through it shows in the base
    before = a.numpy()
    v[(0,) * v.ndim] = 123.0
    assert (a.numpy() == 123.0).sum() == 1 and (before == 123.0).sum() == 0


def test_ptr_is_the_buffer_address():
    x = np.arange(6, dtype="float32")
    a = NDArray.from_numpy(x)
    assert a._handle.ptr() == x.ctypes.data
    b = NDArray.from_numpy(np.arange(6, dtype="float32"))
    assert a._handle.ptr() != b._handle.ptr()
    # a compact copy is a new buffer; compact() of a compact array is the array itself
    v = a.reshape((2, 3)).permute((1, 0))
    c = v.compact()
    assert c.is_compact() and not v.is_compact()
    assert c._handle.ptr() != a._handle.ptr()
    assert a.compact() is a and a.compact()._handle.ptr() == a._handle.ptr()


def test_offsets_and_strides_as_needle_computes_them():
    a = nd.array(np.zeros((5, 6)))
    assert a.strides == (6, 1) == NDArray.compact_strides((5, 6)) and a.offset == 0
    assert NDArray.compact_strides((2, 3, 4)) == (12, 4, 1)
    v = a[1:3, 2:4]  # offset = 1 * 6 + 2 * 1
    assert (v.shape, v.strides, v._offset) == ((2, 2), (6, 1), 8)
    w = v[1, 1:]  # an int keeps its dim; offsets add up through views
    assert (w.shape, w.strides, w.offset) == ((1, 1), (6, 1), 8 + 6 + 1)
    s = a[1::2, ::3]
    assert (s.shape, s.strides, s.offset) == ((2, 2), (12, 3), 6)
    t = nd.array(np.zeros((7, 8))).permute((1, 0))[3:7, 2:5]
    assert (t.shape, t.strides, t.offset) == ((4, 3), (1, 8), 3 * 1 + 2 * 8)
    b = a.broadcast_to((2, 5, 6))
    assert b.strides == (0, 6, 1) and b.offset == 0
    assert (a._shape, a._strides) == (a.shape, a.strides)  # needle's field names


class _ShapeAndSlices(NDArray):
    """needle's test helper: index with ints and slices, get the shape and explicit slices."""

    def __getitem__(self, idxs):
        idxs = tuple(
            self.process_slice(s, i) if isinstance(s, slice) else slice(s, s + 1, 1)
            for i, s in enumerate(idxs)
        )
        return self.shape, idxs


def ShapeAndSlices(*shape):
    return _ShapeAndSlices(np.ones(shape))


@pytest.mark.parametrize("device", DEVICES, ids=IDS)
@pytest.mark.parametrize(
    "lhs,rhs",
    [
        (ShapeAndSlices(4, 5, 6)[1:2, 0, 0], ShapeAndSlices(7, 7, 7)[1:2, 0, 0]),
        (ShapeAndSlices(4, 5, 6)[1:4:2, 0, 0], ShapeAndSlices(7, 7, 7)[1:3, 0, 0]),
        (ShapeAndSlices(4, 5, 6)[1:3, 2:5, 2:6], ShapeAndSlices(7, 7, 7)[:2, :3, :4]),
    ],
)
def test_setitem_ewise_in_place(lhs, rhs, device):
    (lhs_shape, lhs_slices), (rhs_shape, rhs_slices) = lhs, rhs
    x, y = np.random.randn(*lhs_shape), np.random.randn(*rhs_shape)
    a, b = nd.array(x, device=device), nd.array(y, device=device)
    start = a._handle.ptr()
    handle = a._handle
    a[lhs_slices] = b[rhs_slices]
    x[lhs_slices] = y[rhs_slices]
    assert a._handle.ptr() == start and a._handle is handle
    compare_strides(x, a)
    np.testing.assert_allclose(a.numpy(), x, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("device", DEVICES, ids=IDS)
@pytest.mark.parametrize(
    "params",
    [
        ShapeAndSlices(4, 5, 6)[1, 2, 3],
        ShapeAndSlices(4, 5, 6)[1:4, 2, 3],
        ShapeAndSlices(4, 5, 6)[:4, 2:5, 3],
        ShapeAndSlices(4, 5, 6)[1::2, 2:5, ::2],
    ],
)
def test_setitem_scalar_in_place(params, device):
    shape, slices = params
    x = np.random.randn(*shape)
    a = nd.array(x, device=device)
    start = a._handle.ptr()
    x[slices] = 4.0
    a[slices] = 4.0
    assert a._handle.ptr() == start
    np.testing.assert_allclose(a.numpy(), x, atol=1e-6, rtol=1e-6)
    compare_strides(x, a)


# ---- the device kernels ------------------------------------------------------------------------
def _tiles(x, t):
    """A (r, c) matrix as a compact (r/t, c/t, t, t) grid of tiles."""
    r, c = x.shape
    return np.ascontiguousarray(x.reshape(r // t, t, c // t, t).transpose(0, 2, 1, 3))


def _untile(x):
    """A (r/t, c/t, t, t) grid of tiles as the (r, c) matrix."""
    gr, gc, t, _ = x.shape
    return x.transpose(0, 2, 1, 3).reshape(gr * t, gc * t)


@pytest.mark.parametrize("m,n,p", [(1, 1, 1), (2, 2, 3), (1, 2, 1), (3, 3, 3), (4, 1, 2)])
def test_matmul_tiled(m, n, p):
    """hw3's test: a, b and out are grids of T x T tiles; out is overwritten."""
    device = nd.cpu()
    assert hasattr(device, "matmul_tiled")
    t = device.__tile_size__
    assert t == 8
    A = nd.array(np.random.randn(m, n, t, t), device=device)
    B = nd.array(np.random.randn(n, p, t, t), device=device)
    C = NDArray.make((m, p, t, t), device=device)
    C.fill(np.nan)  # whatever the buffer held is overwritten, not accumulated into
    device.matmul_tiled(A._handle, B._handle, C._handle, m * t, n * t, p * t)
    lhs = _untile(A.numpy()) @ _untile(B.numpy())
    np.testing.assert_allclose(_untile(C.numpy()), lhs, atol=1e-5, rtol=1e-5)
    # the same product through needle's tiling of plain matrices (as_strided views, compacted)
    a, b = nd.array(_untile(A.numpy())), nd.array(_untile(B.numpy()))

    def tile(x):
        return x.as_strided(
            (x.shape[0] // t, x.shape[1] // t, t, t), (x.shape[1] * t, t, x.shape[1], 1)
        ).compact()

    ta, tb = tile(a), tile(b)
    np.testing.assert_array_equal(ta.numpy(), _tiles(a.numpy(), t))
    out = NDArray.make((m, p, t, t))
    device.matmul_tiled(ta._handle, tb._handle, out._handle, m * t, n * t, p * t)
    res = out.permute((0, 2, 1, 3)).compact().reshape((m * t, p * t))
    np.testing.assert_allclose(res.numpy(), lhs, atol=1e-5, rtol=1e-5)


def test_matmul_tiled_errors():
    dev, t = nd.cpu(), nd.cpu().__tile_size__
    a, b, c = (NDArray.make((1, 1, t, t)) for _ in range(3))
    with pytest.raises(ValueError, match=r"matmul_tiled: m, n, p = 4, 8, 8 .*multiples"):
        dev.matmul_tiled(a._handle, b._handle, c._handle, 4, 8, 8)
    with pytest.raises(ValueError, match=r"matmul_tiled: out has 64 elements.*\(1, 2, 8, 8\)"):
        dev.matmul_tiled(a._handle, NDArray.make((1, 2, t, t))._handle, c._handle, t, t, 2 * t)
    with pytest.raises(TypeError, match="matmul_tiled: a must be an Array"):
        dev.matmul_tiled(a.handle, b._handle, c._handle, t, t, t)


@pytest.mark.parametrize("m,n,p", [(1, 2, 3), (5, 4, 3), (8, 8, 8), (7, 1, 9)])
def test_matmul_kernel(m, n, p):
    x, y = np.random.randn(m, n).astype("float32"), np.random.randn(n, p).astype("float32")
    a, b = nd.array(x), nd.array(y)
    out = NDArray.make((m, p))
    nd.cpu().matmul(a._handle, b._handle, out._handle, m, n, p)
    np.testing.assert_allclose(out.numpy(), x @ y, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=rf"matmul: a has {m * n} elements, \({m}, {n + 1}\)"):
        nd.cpu().matmul(a._handle, b._handle, out._handle, m, n + 1, p)


EWISE = {
    "ewise_add": np.add,
    "ewise_mul": np.multiply,
    "ewise_div": np.divide,
    "ewise_maximum": np.maximum,
    "ewise_eq": np.equal,
    "ewise_ge": np.greater_equal,
}
SCALAR = {
    "scalar_add": np.add,
    "scalar_mul": np.multiply,
    "scalar_div": np.divide,
    "scalar_power": np.power,
    "scalar_maximum": np.maximum,
    "scalar_eq": np.equal,
    "scalar_ge": np.greater_equal,
}
UNARY = {"ewise_log": np.log, "ewise_exp": np.exp, "ewise_tanh": np.tanh}


@pytest.mark.parametrize("device", DEVICES, ids=IDS)
@pytest.mark.parametrize("name", EWISE)
def test_ewise_kernels_write_into_out(name, device):
    x = np.random.randn(4, 5).astype("float32")
    y = np.random.randn(4, 5).astype("float32")
    y[0, :3] = x[0, :3]  # some equal elements for eq and ge
    a, b = nd.array(x, device=device), nd.array(y, device=device)
    out = NDArray.make((4, 5), device=device)
    ptr = out._handle.ptr()
    getattr(device, name)(a._handle, b._handle, out._handle)
    assert out._handle.ptr() == ptr and out.dtype == "float32"
    np.testing.assert_allclose(out.numpy(), EWISE[name](x, y).astype("float32"), rtol=1e-6)
    # out may be an input: a += b in place
    getattr(device, name)(a._handle, b._handle, a._handle)
    np.testing.assert_allclose(a.numpy(), EWISE[name](x, y).astype("float32"), rtol=1e-6)


@pytest.mark.parametrize("device", DEVICES, ids=IDS)
@pytest.mark.parametrize("name", SCALAR)
def test_scalar_kernels_write_into_out(name, device):
    x = np.abs(np.random.randn(3, 4)).astype("float32") + 0.1
    val = float(x[1, 2]) if name in ("scalar_eq", "scalar_ge") else 1.5
    a = nd.array(x, device=device)
    out = NDArray.make((3, 4), device=device)
    getattr(device, name)(a._handle, val, out._handle)
    expect = SCALAR[name](x, np.float32(val)).astype("float32")
    np.testing.assert_allclose(out.numpy(), expect, rtol=1e-6)
    if name in ("scalar_eq", "scalar_ge"):
        assert set(np.unique(out.numpy())) <= {0.0, 1.0} and out.numpy()[1, 2] == 1.0
    getattr(device, name)(a._handle, np.float64(val), a._handle)  # numpy scalars, in place
    np.testing.assert_allclose(a.numpy(), expect, rtol=1e-6)


@pytest.mark.parametrize("name", UNARY)
def test_unary_kernels_write_into_out(name):
    x = np.abs(np.random.randn(2, 3, 4)).astype("float32") + 0.1
    a = nd.array(x)
    out = NDArray.make((2, 3, 4))
    getattr(nd.cpu(), name)(a._handle, out._handle)
    np.testing.assert_allclose(out.numpy(), UNARY[name](x), rtol=1e-6)


def test_elementwise_kernel_errors():
    a, b, out = NDArray.make((2, 3)), NDArray.make((3, 2, 2)), NDArray.make((2, 3))
    with pytest.raises(ValueError, match="ewise_add: sizes differ .*a has 6, b has 12, out has 6"):
        nd.cpu().ewise_add(a._handle, b._handle, out._handle)
    with pytest.raises(ValueError, match="scalar_mul: sizes differ"):
        nd.cpu().scalar_mul(a._handle, 2.0, b._handle)
    with pytest.raises(TypeError, match="scalar_add: val must be a number, got str"):
        nd.cpu().scalar_add(a._handle, "2", out._handle)
    with pytest.raises(TypeError, match="ewise_exp: a must be an Array"):
        nd.cpu().ewise_exp(a, out._handle)


@pytest.mark.parametrize("device", DEVICES, ids=IDS)
@pytest.mark.parametrize("dims,axis", [((10,), 0), ((4, 5, 6), 0), ((4, 5, 6), 1), ((4, 5, 6), 2)])
def test_reduce_kernels(dims, axis, device):
    """needle reduces over the last, contiguous dim: permute the axis last, compact, reduce."""
    x = np.random.randn(*dims).astype("float32")
    a = nd.array(x, device=device)
    order = tuple(i for i in range(len(dims)) if i != axis) + (axis,)
    view = a.permute(order).compact()
    out_shape = tuple(1 if i == axis else n for i, n in enumerate(dims))
    for name, np_fn in (("reduce_sum", np.sum), ("reduce_max", np.max)):
        out = NDArray.make(out_shape, device=device)
        getattr(device, name)(view._handle, out._handle, view.shape[-1])
        np.testing.assert_allclose(
            out.numpy(), np_fn(x, axis=axis, keepdims=True), atol=1e-5, rtol=1e-5
        )


def test_reduce_kernel_edges():
    a = nd.array(np.arange(12.0).reshape(3, 4))
    out = NDArray.make((3,))
    with pytest.raises(ValueError, match=r"reduce_sum: a has 12 elements, but out has 3 and "):
        nd.cpu().reduce_sum(a._handle, out._handle, 3)
    nd.cpu().reduce_sum(a._handle, NDArray.make((1,))._handle, 12)  # the whole array
    empty, zeros = NDArray.make((0,)), NDArray.make((3,))
    nd.cpu().reduce_sum(empty._handle, zeros._handle, 0)
    np.testing.assert_array_equal(zeros.numpy(), [0, 0, 0])
    with pytest.raises(ValueError, match="reduce_max: reduce_size is 0"):
        nd.cpu().reduce_max(empty._handle, zeros._handle, 0)


@pytest.mark.parametrize("device", DEVICES, ids=IDS)
def test_fill_compact_and_setitem_kernels(device):
    x = np.random.randn(7, 8).astype("float32")
    a = nd.array(x, device=device)
    # fill
    f = NDArray.make((3, 2), device=device)
    device.fill(f._handle, 2.5)
    np.testing.assert_array_equal(f.numpy(), np.full((3, 2), 2.5))
    # compact: the view a.permute((1, 0))[3:7, 2:5] by its shape, strides and offset
    v = a.permute((1, 0))[3:7, 2:5]
    out = NDArray.make(v.shape, device=device)
    device.compact(a._handle, out._handle, v.shape, v.strides, v._offset)
    np.testing.assert_array_equal(out.numpy(), x.T[3:7, 2:5])
    assert out.is_compact()
    # ewise_setitem: the compact `out` into a strided region of a, in place
    ptr = a._handle.ptr()
    target = a[1:5, 2:8:2]  # shape (4, 3), strides (8, 2), offset 10
    assert (target.shape, target.strides, target.offset) == ((4, 3), (8, 2), 10)
    device.ewise_setitem(out._handle, a._handle, target.shape, target.strides, target._offset)
    x[1:5, 2:8:2] = x.T[3:7, 2:5]
    np.testing.assert_array_equal(a.numpy(), x)
    # scalar_setitem: size is the number of elements set
    device.scalar_setitem(6, -1.0, a._handle, (2, 3), (16, 3), 1)
    x[0:4:2, 1:8:3] = -1.0
    np.testing.assert_array_equal(a.numpy(), x)
    assert a._handle.ptr() == ptr
    # a broadcast view (stride 0) compacts to its repetitions
    b = nd.array(x[:1], device=device)
    bo = NDArray.make((3, 8), device=device)
    device.compact(b._handle, bo._handle, (3, 8), (0, 1), 0)
    np.testing.assert_array_equal(bo.numpy(), np.broadcast_to(x[:1], (3, 8)))


def test_strided_kernel_errors():
    a, out = NDArray.make((4, 4)), NDArray.make((2, 2))
    with pytest.raises(
        ValueError, match=r"compact: shape \(2, 2\), strides \(4, 1\) and offset 11"
    ):
        nd.cpu().compact(a._handle, out._handle, (2, 2), (4, 1), 11)
    with pytest.raises(ValueError, match=r"compact: out has 4 elements, shape \(3, 2\) needs 6"):
        nd.cpu().compact(a._handle, out._handle, (3, 2), (4, 1), 0)
    with pytest.raises(ValueError, match=r"ewise_setitem: shape \(2, 2\) and strides \(1,\)"):
        nd.cpu().ewise_setitem(out._handle, a._handle, (2, 2), (1,), 0)
    with pytest.raises(ValueError, match=r"scalar_setitem: size 3, but shape \(2, 2\) has 4"):
        nd.cpu().scalar_setitem(3, 0.0, a._handle, (2, 2), (4, 1), 0)


def test_to_numpy_and_from_numpy_kernels():
    x = np.arange(12, dtype="float32")
    h = nd.cpu().Array(12)
    nd.cpu().from_numpy(x.reshape(3, 4), h)
    np.testing.assert_array_equal(h.array, x)
    v = nd.cpu().to_numpy(h, (2, 2), (1, 4), 5)  # the transpose of rows 1-2, cols 1-2
    np.testing.assert_array_equal(v, [[5, 9], [6, 10]])
    v[...] = 0  # a copy, as the CPU backend gives
    assert h.array[5] == 5
    with pytest.raises(ValueError, match=r"from_numpy: array of shape \(5,\) .* Array of 12"):
        nd.cpu().from_numpy(np.zeros(5), h)


# ---- Array and NDArray.make ---------------------------------------------------------------------
def test_array_buffer():
    h = nd.cpu().Array(5)
    assert isinstance(h, Array) and h.size == 5 and h.dtype == np.float32
    assert isinstance(h.ptr(), int) and h.ptr() == h.array.ctypes.data
    assert nd.cpu_numpy().Array(3, "int64").dtype == np.int64
    assert np.asarray(h) is h.array
    with pytest.raises(ValueError, match="Array: size must be a non-negative integer"):
        Array(-1)
    with pytest.raises(TypeError, match="Array: unsupported dtype 'float16'"):
        Array(2, "float16")
    with pytest.raises(ValueError, match=r"Array.wrap: needs a 1-D C-contiguous writeable"):
        Array.wrap(np.zeros((2, 2), "float32"))
    frozen = np.zeros(3, "float32")
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match=r"got shape \(3,\) with strides \(4,\), read-only"):
        NDArray.make((3,), handle=frozen)


def test_make():
    a = NDArray.make((2, 3), device=nd.cpu())
    assert (a.shape, a.strides, a.offset, a.dtype) == ((2, 3), (3, 1), 0, "float32")
    assert isinstance(a._handle, Array) and a._handle.size == 6 and a.is_compact()
    assert a.device == nd.cpu()
    a.fill(1.0)
    # a view of another array's handle: shares the buffer, strides and offset in elements
    base = nd.array(np.arange(10.0))
    v = NDArray.make((2, 2), strides=(3, 1), handle=base._handle, offset=1)
    np.testing.assert_array_equal(v.numpy(), [[1, 2], [4, 5]])
    check_same_memory(base, v)
    assert not v.is_compact() and v.compact().is_compact()
    # a 1-D numpy buffer is wrapped, shared
    buf = np.arange(6, dtype="float64")
    w = NDArray.make((3, 2), handle=buf)
    assert w.dtype == "float64" and w._handle.ptr() == buf.ctypes.data
    assert NDArray.make((2,), dtype="int32").dtype == "int32"
    with pytest.raises(
        ValueError, match=r"NDArray.make: shape \(2, 2\), strides \(3, 1\) and offset 6"
    ):
        NDArray.make((2, 2), strides=(3, 1), handle=base._handle, offset=6)
    with pytest.raises(ValueError, match=r"NDArray.make: shape \(2, 2\) and strides \(1,\)"):
        NDArray.make((2, 2), strides=(1,))
    with pytest.raises(TypeError, match="NDArray.make: dtype int64 does not match"):
        NDArray.make((2,), handle=base._handle, dtype="int64")
    with pytest.raises(TypeError, match="NDArray.make: handle must be an Array"):
        NDArray.make((2,), handle=[1.0, 2.0])


# ---- devices expose the backend module -----------------------------------------------------------
KERNELS = [
    "Array", "to_numpy", "from_numpy", "fill", "compact", "ewise_setitem", "scalar_setitem",
    "ewise_add", "scalar_add", "ewise_mul", "scalar_mul", "ewise_div", "scalar_div",
    "scalar_power", "ewise_maximum", "scalar_maximum", "ewise_eq", "scalar_eq", "ewise_ge",
    "scalar_ge", "ewise_log", "ewise_exp", "ewise_tanh", "matmul", "matmul_tiled",
    "reduce_max", "reduce_sum",
]  # fmt: skip


@pytest.mark.parametrize("device", nd.all_devices(), ids=["cpu", "cuda", "cpu_numpy"])
def test_devices_expose_the_kernels(device):
    for name in KERNELS:
        assert callable(getattr(device, name)), name
        assert name in dir(device)
    assert device.__tile_size__ == 8
    assert device.mod is nd.ndarray_backend
    with pytest.raises(AttributeError, match=r"has no attribute 'np'"):
        device.np  # noqa: B018 - the module's imports are not the device's
    with pytest.raises(AttributeError):
        device.__deepcopy_hook__  # noqa: B018
    assert copy.deepcopy(device) is device and pickle.loads(pickle.dumps(device)) is device
    assert device == needle.cpu() or device.name != "cpu"


def test_backend_module_names():
    from needlec.backend_ndarray import ndarray_backend_cpu, ndarray_backend_numpy

    assert ndarray_backend_cpu is ndarray_backend_numpy is nd.ndarray_backend
    assert ndarray_backend_cpu.__tile_size__ == 8


def test_ndarray_via_device_api_matches():
    """An NDArray method written the way hw3 students write it, against needlec's own."""
    x = np.random.randn(3, 4, 5).astype("float32")
    a = nd.array(x)

    def student_sum_last(arr):
        out = NDArray.make(arr.shape[:-1] + (1,), device=arr.device)
        arr.device.reduce_sum(arr.compact()._handle, out._handle, arr.shape[-1])
        return out

    def student_add(arr, other):
        out = NDArray.make(arr.shape, device=arr.device)
        arr.device.ewise_add(arr.compact()._handle, other.compact()._handle, out._handle)
        return out

    p = a.permute((2, 0, 1))
    np.testing.assert_allclose(
        student_sum_last(p).numpy(), p.sum(axis=2, keepdims=True).numpy(), rtol=1e-5
    )
    np.testing.assert_array_equal(student_add(p, p).numpy(), (p + p).numpy())
