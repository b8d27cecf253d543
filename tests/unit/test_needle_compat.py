"""needle code runs unchanged: the inputs needle's homework and tests pass (uint8 pixels and
labels, numpy scalars and size-1 arrays as scalars, Python lists), identity ops that still
make a new tensor, and NDArray's helpers that needle's tests call."""

import gzip
import os

import numpy as np
import pytest

import needlec as ndl
from needlec import ops
from needlec.backend_ndarray import NDArray

# ---------------------------------------------------------------- 1. every numpy dtype

# numpy dtype -> the dtype needlec holds it in (the rule in the README and Tensor's docstring)
WIDEN = {
    "uint8": "int64",
    "int8": "int64",
    "int16": "int64",
    "uint16": "int64",
    "uint32": "int64",
    "uint64": "int64",
    "int32": "int32",
    "int64": "int64",
    "float16": "float32",
    "float32": "float32",
    "float64": "float64",
}


def _sample(dtype: str) -> np.ndarray:
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    if info is None:
        return np.array([[-1.5, 0.25, 3.0], [100.0, -0.5, 7.0]], dtype=dtype)
    lo, hi = max(info.min, -(2**40)), min(info.max, 2**40)
    return np.array([[lo, 0, 1], [hi, 7, lo + 1]], dtype=dtype)


@pytest.mark.parametrize("dtype", list(WIDEN))
def test_numpy_dtype_eager_keeps_values(dtype):
    a = _sample(dtype)
    t = ndl.Tensor(a)
    assert t.dtype == WIDEN[dtype]
    np.testing.assert_array_equal(t.numpy(), a.astype(WIDEN[dtype]))
    np.testing.assert_array_equal((t * 2).numpy(), a.astype(WIDEN[dtype]) * 2)


@pytest.mark.parametrize("dtype", list(WIDEN))
def test_numpy_dtype_as_jit_argument(dtype):
    a = _sample(dtype)
    f = ndl.jit(lambda x: x * 2)
    want = a.astype(WIDEN[dtype]) * 2
    for arg in (a, ndl.Tensor(a)):
        out = f(arg)
        assert out.dtype == WIDEN[dtype]
        np.testing.assert_array_equal(out.numpy(), want)


@pytest.mark.parametrize("dtype", ["uint8", "int16", "uint32", "float16"])
def test_requested_dtype_widens(dtype):
    a = np.arange(6).reshape(2, 3)
    t = ndl.Tensor(a, dtype=dtype)
    assert t.dtype == WIDEN[dtype]
    np.testing.assert_array_equal(t.numpy(), a)
    assert NDArray(a, dtype=dtype).dtype == WIDEN[dtype]
    assert ndl.init.zeros(2, 3, dtype=dtype).dtype == WIDEN[dtype]


def test_uint64_out_of_int64_range_is_refused():
    big = np.array([1, 2**64 - 1], dtype=np.uint64)
    with pytest.raises(ValueError, match="does not fit int64"):
        ndl.Tensor(big)
    with pytest.raises(ValueError, match="does not fit int64"):
        NDArray(big)
    assert NDArray(np.array([2**63 - 1], dtype=np.uint64)).numpy()[0] == 2**63 - 1


def test_uint8_pixels_and_labels_train_a_softmax_loss():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(8, 5)).astype(np.uint8)
    labels = rng.integers(0, 3, size=8).astype(np.uint8)
    x = ndl.Tensor(pixels, dtype="float32") / 255.0
    w = ndl.Tensor(rng.standard_normal((5, 3)).astype(np.float32))
    loss = ndl.nn.SoftmaxLoss()(x @ w, ndl.Tensor(labels))
    z = (pixels.astype(np.float32) / 255.0) @ w.numpy()
    lse = np.log(np.exp(z).sum(axis=1))
    want = np.mean(lse - z[np.arange(8), labels])
    np.testing.assert_allclose(loss.numpy(), want, rtol=1e-5)


# ---------------------------------------------------------------- 2. numpy scalars

SCALARS = {
    "randn(1)": lambda: np.random.randn(1),
    "0-d": lambda: np.array(1.75),
    "(1,1)": lambda: np.array([[0.5]]),
    "float32": lambda: np.float32(2.5),
    "float64": lambda: np.float64(-1.25),
    "int64": lambda: np.int64(3),
    "uint8": lambda: np.uint8(2),
}
SCALAR_OPS = {
    "add_scalar": (ops.add_scalar, np.add),
    "mul_scalar": (ops.mul_scalar, np.multiply),
    "divide_scalar": (ops.divide_scalar, np.divide),
    "power_scalar": (ops.power_scalar, np.power),
}


def _positive(shape=(3, 4)) -> np.ndarray:
    return np.random.rand(*shape).astype(np.float32) + 0.5


@pytest.mark.parametrize("kind", list(SCALARS))
@pytest.mark.parametrize("name", list(SCALAR_OPS))
def test_numpy_scalar_in_scalar_ops(name, kind):
    fn, ref = SCALAR_OPS[name]
    c = SCALARS[kind]()
    a = _positive()
    want = ref(a, float(np.asarray(c).reshape(())))
    eager = fn(ndl.Tensor(a), c)
    assert eager.dtype == "float32" and eager.shape == a.shape
    np.testing.assert_allclose(eager.numpy(), want, rtol=1e-5)
    closed = ndl.jit(lambda x: fn(x, c))(ndl.Tensor(a))  # a constant of the trace
    np.testing.assert_allclose(closed.numpy(), want, rtol=1e-5)
    passed = ndl.jit(fn)(ndl.Tensor(a), c)  # an argument of the jitted function
    assert passed.shape == a.shape
    np.testing.assert_allclose(passed.numpy(), want, rtol=1e-5)


@pytest.mark.parametrize("kind", list(SCALARS))
def test_numpy_scalar_in_operators(kind):
    c = SCALARS[kind]()
    v = float(np.asarray(c).reshape(()))
    a = _positive((2, 3))
    t = ndl.Tensor(a)
    for got, want in [
        (t + c, a + v),
        (t - c, a - v),
        (t * c, a * v),
        (t / c, a / v),
        (t**c, a**v),
    ]:
        assert got.shape == a.shape
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5)


def test_scalar_gradient_with_numpy_scalar():
    a = _positive()
    x = ndl.Tensor(a.astype(np.float64))
    ops.divide_scalar(x, np.array([4.0])).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), np.full(a.shape, 0.25))


def test_scalar_with_many_elements_is_refused():
    with pytest.raises(TypeError, match="one element"):
        ops.add_scalar(ndl.Tensor(_positive()), np.ones(2))


# ---------------------------------------------------------------- 3. identity ops

IDENTITY_OPS = {
    "dilate 0": (lambda x: ops.dilate(x, (0, 1), 0), ops.Dilate),
    "dilate no axes": (lambda x: ops.dilate(x, (), 2), ops.Dilate),
    "undilate 0": (lambda x: ops.undilate(x, (1,), 0), ops.UnDilate),
    "reshape same": (lambda x: ops.reshape(x, (3, 4)), ops.Reshape),
    "broadcast same": (lambda x: ops.broadcast_to(x, (3, 4)), ops.BroadcastTo),
    "flip no axes": (lambda x: ops.flip(x, ()), ops.Flip),
}


def _numeric_grad(f, a: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    g = np.zeros_like(a)
    for j in range(a.size):
        p, m = a.copy(), a.copy()
        p.flat[j] += eps
        m.flat[j] -= eps
        g.flat[j] = (f(p) - f(m)) / (2 * eps)
    return g


@pytest.mark.parametrize("name", list(IDENTITY_OPS))
def test_identity_op_makes_a_new_tensor(name):
    fn, cls = IDENTITY_OPS[name]
    a = np.random.randn(3, 4)
    w = np.random.randn(3, 4)
    x = ndl.Tensor(a)
    out = fn(x)
    assert out is not x
    assert isinstance(out.op, cls) and out.inputs == [x]
    np.testing.assert_array_equal(out.numpy(), a)
    (fn(x) * ndl.Tensor(w)).sum().backward()
    numeric = _numeric_grad(lambda v: float((fn(ndl.Tensor(v)).numpy() * w).sum()), a)
    np.testing.assert_allclose(x.grad.numpy(), numeric, rtol=1e-6, atol=1e-8)
    np.testing.assert_array_equal(ndl.jit(fn)(ndl.Tensor(a)).numpy(), a)


# ---------------------------------------------------------------- 4. lists

LISTS = {
    "ints": ([1, 2, 3], (3,)),
    "nested ints": ([[1, 2], [3, 4], [5, 6]], (3, 2)),
    "mixed": ([[1, 2.5], [3, 4]], (2, 2)),
    "numpy scalars": ([np.float32(1.5), np.int64(2), np.uint8(255)], (3,)),
    "nested numpy scalars": ([[np.float64(0.5)], [np.int32(-3)]], (2, 1)),
    "0-d arrays": ([np.array(1.0), np.array(2.0)], (2,)),
    "rows of arrays": ([np.array([1, 2]), np.array([3, 4])], (2, 2)),
}


@pytest.mark.parametrize("name", list(LISTS))
def test_list_input(name):
    data, shape = LISTS[name]
    want = np.array(data, dtype=np.float64).astype(np.float32)
    t = ndl.Tensor(data)
    assert t.dtype == "float32" and t.shape == shape
    np.testing.assert_array_equal(t.numpy(), want)
    np.testing.assert_array_equal(ndl.jit(lambda x: x + 1)(t).numpy(), want + 1)
    np.testing.assert_array_equal((t + data).numpy(), want * 2)


# ---------------------------------------------------------------- 5. NDArray helpers


class _SubArray(NDArray):
    """needle's NDArray tests subclass NDArray and call its helpers."""

    def spans(self, idxs):
        return [self.process_slice(s, i) for i, s in enumerate(idxs)]


@pytest.mark.parametrize(
    "sl, dim, want",
    [
        (slice(None), 0, slice(0, 5, 1)),
        (slice(None), 1, slice(0, 4, 1)),
        (slice(1, None, 2), 0, slice(1, 5, 2)),
        (slice(-3, -1), 0, slice(2, 4, 1)),
        (slice(None, 10), 1, slice(0, 4, 1)),
        (slice(3, 1), 0, slice(3, 3, 1)),
    ],
)
def test_process_slice(sl, dim, want):
    a = _SubArray(np.zeros((5, 4), dtype=np.float32))
    got = a.process_slice(sl, dim)
    assert got == want
    assert list(range(5 if dim == 0 else 4))[got] == list(range(5 if dim == 0 else 4))[sl]


def test_process_slice_refuses_non_positive_step():
    with pytest.raises(ValueError, match="step"):
        NDArray(np.zeros(3)).process_slice(slice(None, None, -1), 0)


def test_compact_of_a_view():
    a = _SubArray(np.arange(24, dtype=np.float32).reshape(4, 6))
    assert a.is_compact()
    assert a.spans((slice(1, 3), slice(None, None, 2))) == [slice(1, 3, 1), slice(0, 6, 2)]
    v = a.permute((1, 0))[1:5:2, :]
    assert not v.is_compact()
    c = v.compact()
    assert c.is_compact() and c.shape == v.shape
    np.testing.assert_array_equal(c.numpy(), np.arange(24).reshape(4, 6).T[1:5:2, :])
    assert a.compact() is a


# ---------------------------------------------------------------- 6. the real MNIST test set

MNIST_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "mnist")
MNIST_DIR = os.environ.get("NEEDLEC_MNIST_T10K_DIR", os.path.normpath(MNIST_DIR))
T10K = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
# the published class counts of MNIST's 10,000 test images
T10K_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _t10k() -> tuple[str, str]:
    files = tuple(os.path.join(MNIST_DIR, f) for f in T10K)
    if not all(os.path.isfile(f) for f in files):
        pytest.skip(f"the real MNIST t10k files are not in {MNIST_DIR} (or NEEDLEC_MNIST_T10K_DIR)")
    return files


def test_parse_mnist_real_t10k():
    images, labels = _t10k()
    X, y = ndl.data.parse_mnist(images, labels)
    assert X.shape == (10000, 784) and X.dtype == np.float32
    assert y.shape == (10000,) and y.dtype == np.uint8
    assert X.min() == 0.0 and X.max() == 1.0
    assert np.bincount(y, minlength=10).tolist() == T10K_COUNTS
    assert y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    with gzip.open(images) as f:  # the raw bytes, scaled by 255, are the parsed values
        raw = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(10000, 784)
    np.testing.assert_array_equal(X, raw.astype(np.float32) / 255)


def test_mnist_dataset_real_t10k():
    images, labels = _t10k()
    ds = ndl.data.MNISTDataset(images, labels)
    assert len(ds) == 10000
    x, y = ds[0]
    assert np.asarray(x).shape in ((28, 28, 1), (784,)) and int(np.asarray(y)) == 7
    batch = next(iter(ndl.data.DataLoader(ds, batch_size=32)))
    assert batch[0].shape[0] == 32 and batch[1].shape == (32,)
    assert batch[1].numpy().tolist() == [int(v) for v in np.asarray(ds[np.arange(32)][1])]


def test_train_demo_on_t10k_alone_reaches_90_percent():
    """With only the t10k files, the demo trains on 8,000 and holds out 2,000; two jitted
    epochs of its MLPResNet reach 90% held-out accuracy (about two seconds)."""
    _t10k()
    from needlec.apps.mlp_resnet import MLPResNet
    from needlec.examples import train

    X_train, y_train, X_test, y_test = train.load_mnist(MNIST_DIR, seed=0)
    assert X_train.shape == (8000, 784) and X_test.shape == (2000, 784)
    assert len(set(map(bytes, X_train[:500])) & set(map(bytes, X_test))) == 0
    np.random.seed(0)
    model = MLPResNet(784, 64, num_blocks=2, num_classes=10, drop_prob=0.0)
    opt = ndl.optim.Adam(model.parameters(), lr=0.003, weight_decay=1e-4)
    train_step, eval_step = train.make_steps(model, opt, jit=True)
    train_loader = ndl.data.DataLoader(ndl.data.NDArrayDataset(X_train, y_train), 32, shuffle=True)
    test_loader = ndl.data.DataLoader(ndl.data.NDArrayDataset(X_test, y_test), 256)
    for _ in range(2):
        model.train()
        train.run_epoch(train_loader, train_step, "train")
    model.eval()
    _, accuracy = train.run_epoch(test_loader, eval_step, "held-out")
    assert accuracy >= 0.90
