"""Arrays in device memory and eager CUDA, over the stand-in GPU (`fake_pycuda`: the host's
fibers run the generated kernels): storage, views, transfers, each eager op a generated kernel
compiled once per signature, an eager training step against the CPU's, and a jitted step that
keeps the parameters on the device (nothing through the host but its scalars); where a real GPU
is present the same tests run on it too."""

from __future__ import annotations

import gc

import numpy as np
import pytest

import needlec as nc
from needlec import backend_ndarray as nd
from needlec import ops

from .test_cuda_device import host_gpu  # noqa: F401  (the stand-in's fixture)


@pytest.fixture(scope="module")
def kernel_cache(tmp_path_factory):
    """One disk cache for the module: a kernel compiled by one test is loaded by the next."""
    return tmp_path_factory.mktemp("cuda_kernels")


def _counting(real, kind: str, size, rec):
    def counted(*a, **k):
        rec.stats[kind] += 1
        rec.copies.append((kind, int(size(a))))
        return real(*a, **k)

    return counted


def _record(monkeypatch):
    """Counters over the real pycuda: every memcpy (direction, bytes) and every compile."""
    import collections
    import types

    import pycuda.compiler as compiler
    import pycuda.driver as drv

    rec = types.SimpleNamespace(stats=collections.Counter(), copies=[])
    for kind, size in (
        ("htod", lambda a: a[1].nbytes),
        ("dtoh", lambda a: a[0].nbytes),
        ("dtod", lambda a: a[2]),
    ):
        for name in (f"memcpy_{kind}", f"memcpy_{kind}_async"):
            monkeypatch.setattr(drv, name, _counting(getattr(drv, name), kind, size, rec))
    real_compile = compiler.compile

    def compiled(*a, **k):
        rec.stats["compiles"] += 1
        return real_compile(*a, **k)

    monkeypatch.setattr(compiler, "compile", compiled)
    return rec


@pytest.fixture(params=["stand-in", "gpu"])
def gpu(request, monkeypatch, kernel_cache):
    """`nc.cuda()` enabled, with empty eager caches: over the stand-in (everywhere), and over
    the real device where there is one; `.stats` and `.copies` count what it does."""
    from needlec.codegen.cuda import eager

    if request.param == "stand-in":
        found = request.getfixturevalue("host_gpu")
        monkeypatch.setattr(nd, "_cuda_available", lambda: True)
        monkeypatch.setitem(nd._DEVICES, "cuda", nd.BackendDevice("cuda", lambda: True))
    elif not nc.cuda().enabled():
        pytest.skip("no CUDA device or pycuda")
    else:
        found = _record(monkeypatch)
    monkeypatch.setenv("NEEDLEC_CACHE_DIR", str(kernel_cache))
    monkeypatch.delenv("NEEDLEC_EXECUTE", raising=False)  # jit picks the CUDA backend
    eager.clear()
    yield found
    eager.clear()


def _rng():
    return np.random.default_rng(0)


def test_a_cuda_tensor_lives_in_device_memory(gpu):
    from needlec.codegen.cuda import runtime
    from needlec.codegen.cuda.storage import DeviceBuffer

    x = _rng().standard_normal((5, 7)).astype("float32")
    t = nc.Tensor(x, device=nc.cuda())
    data = t.cached_data
    assert type(data._handle) is DeviceBuffer and not isinstance(data._handle, np.ndarray)
    assert data.__cuda_array_interface__["data"][0] == data._handle.ptr()
    np.testing.assert_array_equal(t.numpy(), x)
    on_cpu = nc.Tensor(t, device=nc.cpu())  # device to host
    assert on_cpu.device == nc.cpu() and isinstance(on_cpu.cached_data.handle, np.ndarray)
    back = on_cpu.cached_data.to(nc.cuda())  # host to device
    assert type(back._handle) is DeviceBuffer and back._handle is not data._handle
    np.testing.assert_array_equal(back.numpy(), x)
    with pytest.raises(AttributeError):
        on_cpu.cached_data.__cuda_array_interface__  # noqa: B018
    # a dead array's block goes back to the allocator and the next of its size reuses it
    alloc = runtime.allocator()
    del t, data, back
    gc.collect()
    cached, made = alloc.cached_bytes(), alloc.allocations
    assert cached >= x.nbytes
    again = nc.Tensor(x, device=nc.cuda())
    assert alloc.allocations == made and alloc.cached_bytes() < cached
    np.testing.assert_array_equal(again.numpy(), x)


def test_views_share_the_device_buffer(gpu):
    x = np.arange(60, dtype="float32").reshape(3, 4, 5)
    a = nd.NDArray(x, device=nc.cuda())
    views = [
        (a.permute((2, 0, 1))[1:4, :, ::2], x.transpose(2, 0, 1)[1:4, :, ::2]),
        (a[:, 1:2, :].broadcast_to((2, 3, 4, 5)), np.broadcast_to(x[:, 1:2, :], (2, 3, 4, 5))),
        (a.reshape((12, 5))[2:7], x.reshape(12, 5)[2:7]),
        (a[2, 1:, 3], x[2:3, 1:, 3:4]),
    ]
    for view, want in views:
        assert view._handle is a._handle
        np.testing.assert_array_equal(view.numpy(), want)
    c = views[0][0].compact()  # a strided view gathered on the device
    assert c.is_compact() and c._handle is not a._handle
    np.testing.assert_array_equal(c.numpy(), views[0][1])


def test_needles_backend_functions_move_device_buffers(gpu):
    """`cuda().Array`, `from_numpy`, `to_numpy`, `fill` and `compact` on device buffers; the
    arithmetic kernels are refused by name (the arrays' own ops run on the device)."""
    dev = nc.cuda()
    x = np.arange(12, dtype="float32")
    buf = dev.Array(12)
    dev.from_numpy(x, buf)
    got = dev.to_numpy(buf, (3, 2), (1, 3), 2)  # element (i, j) at 2 + i + 3 j
    np.testing.assert_array_equal(got, [[2, 5], [3, 6], [4, 7]])
    out = dev.Array(6)
    dev.compact(buf, out, (2, 3), (1, 2), 1)
    np.testing.assert_array_equal(dev.to_numpy(out, (6,), (1,), 0), [1, 3, 5, 2, 4, 6])
    dev.fill(out, 7)
    np.testing.assert_array_equal(dev.to_numpy(out, (6,), (1,), 0), np.full(6, 7, "float32"))
    with pytest.raises(AttributeError, match="ewise_add"):
        dev.ewise_add  # noqa: B018


def test_setitem_and_fill_write_on_the_device(gpu):
    rng = _rng()
    x = rng.standard_normal((4, 6)).astype("float32")
    y = rng.standard_normal((2, 3)).astype("float32")
    a, want = nd.NDArray(x, device=nc.cuda()), x.copy()
    a[1:3, ::2] = nd.NDArray(y, device=nc.cuda())
    want[1:3, ::2] = y
    a[0] = 5.0
    want[0] = 5.0
    a[:, 5] = np.arange(4, dtype="float32").reshape(4, 1)  # a host array, copied in
    want[:, 5] = np.arange(4)
    a[3, :] = a[2, :]  # a row of itself
    want[3, :] = want[2, :]
    a[0:2, 1:5] = a[1:3, 0:4]  # overlapping views of one buffer
    want[0:2, 1:5] = want[1:3, 0:4].copy()
    np.testing.assert_array_equal(a.numpy(), want)
    h = a._handle
    a.fill(-2)
    assert a._handle is h
    np.testing.assert_array_equal(a.numpy(), np.full((4, 6), -2, "float32"))


def test_ndarray_operators_on_cuda_match_numpy(gpu):
    """needle's NDArray API on cuda(): each result stays in device memory, computed by a
    generated kernel where the IR has the op (numpy's where its dtype rules differ)."""
    from needlec.codegen.cuda import eager

    rng = _rng()
    x = rng.uniform(0.5, 2.0, (4, 6)).astype("float32")
    y = rng.uniform(0.5, 2.0, (4, 6)).astype("float32")
    y[0, :3] = x[0, :3]
    w = rng.standard_normal((6, 3)).astype("float32")
    a, b, c = (nd.NDArray(v, device=nc.cuda()) for v in (x, y, w))
    programs = eager.stats["programs"]
    cases = [
        (a + b, x + y),
        (a - b, x - y),
        (2.5 - a, 2.5 - x),
        (a * 3, x * 3),
        (a / b, x / y),
        (a / 2, x / 2),
        (a**2, x**2),
        (a.maximum(b), np.maximum(x, y)),
        (a == b, (x == y).astype("float32")),
        (a < b, (x < y).astype("float32")),
        (a > b, (x > y).astype("float32")),
        (a >= b, (x >= y).astype("float32")),  # numpy's, copied in
        (-a, -x),
        (a.exp().log().tanh(), np.tanh(x)),
        (a.sum(axis=1), x.sum(1)),
        (a.sum(), x.sum()),
        (a.sum(axis=(0,), keepdims=True), x.sum(0, keepdims=True)),
        (a.max(axis=0), x.max(0)),
        (a @ c, x @ w),
        (a.permute((1, 0))[1:5, 1:3] * 2.0, x.T[1:5, 1:3] * 2),
        (a.astype("int32"), x.astype("int32")),
        (a.flip((1,)), x[:, ::-1]),
        (a.flip(), x[::-1, ::-1]),
        (a.pad(((1, 0), (0, 2))), np.pad(x, ((1, 0), (0, 2)))),
    ]
    assert eager.stats["programs"] >= programs + len(cases) - 1  # all but >= ran as kernels
    for k, (got, want) in enumerate(cases):
        assert got.device == nc.cuda() and type(got._handle).__name__ == "DeviceBuffer", k
        assert got.dtype == str(np.asarray(want).dtype) and got.shape == np.shape(want), k
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5, err_msg=str(k))


_X = _rng().uniform(0.5, 2.0, (6, 5)).astype("float32")
_Y = _rng().uniform(-1.0, 1.0, (6, 5)).astype("float32")
_W = _rng().standard_normal((5, 3)).astype("float32")
_B = _rng().standard_normal((1, 5)).astype("float32")
EAGER_CASES = {  # name: (the op on tensors x, y, w, b; the same in numpy)
    "add": (lambda x, y, w, b: x + y, lambda x, y, w, b: x + y),
    "mul_div": (lambda x, y, w, b: x * y / x, lambda x, y, w, b: x * y / x),
    "scalars": (lambda x, y, w, b: (x + 1.5) * 2.0 - 0.5, lambda x, y, w, b: (x + 1.5) * 2 - 0.5),
    "pow_scalar": (lambda x, y, w, b: x**3, lambda x, y, w, b: x**3),
    "exp_log_tanh": (
        lambda x, y, w, b: ops.log(x) + ops.exp(y) + ops.tanh(y),
        lambda x, y, w, b: np.log(x) + np.exp(y) + np.tanh(y),
    ),
    "relu_neg": (lambda x, y, w, b: ops.relu(-y), lambda x, y, w, b: np.maximum(-y, 0)),
    "broadcast": (
        lambda x, y, w, b: x + ops.broadcast_to(b, (6, 5)),
        lambda x, y, w, b: x + b,
    ),
    "sum_axis": (lambda x, y, w, b: ops.summation(y, axes=(0,)), lambda x, y, w, b: y.sum(0)),
    "sum_all": (lambda x, y, w, b: ops.summation(y), lambda x, y, w, b: y.sum()),
    "logsumexp": (
        lambda x, y, w, b: ops.logsumexp(y, axes=(1,)),
        lambda x, y, w, b: np.log(np.exp(y).sum(1)),
    ),
    "matmul": (lambda x, y, w, b: x @ w, lambda x, y, w, b: x @ w),
    "view_chain": (
        lambda x, y, w, b: ops.reshape(ops.transpose(x), (10, 3)) * 2.0,
        lambda x, y, w, b: x.T.reshape(10, 3) * 2,
    ),
}


@pytest.mark.parametrize("name", list(EAGER_CASES))
def test_eager_op_on_cuda_matches_numpy(gpu, name):
    from needlec.codegen.cuda import eager

    fn, want = EAGER_CASES[name]
    args = [nc.Tensor(a, device=nc.cuda()) for a in (_X, _Y, _W, _B)]
    copies = len(gpu.copies)
    got = fn(*args)
    assert got.device == nc.cuda() and type(got.cached_data._handle).__name__ == "DeviceBuffer"
    host = [c for c in gpu.copies[copies:] if c[0] != "dtod"]
    assert eager.stats["programs"] > 0 and host == []  # nothing through the host
    np.testing.assert_allclose(got.numpy(), want(_X, _Y, _W, _B), rtol=1e-5, atol=1e-5)


def test_an_op_compiles_once_per_signature(gpu):
    from needlec.codegen.cuda import eager

    x = nc.Tensor(_X, device=nc.cuda())
    y = nc.Tensor(_Y, device=nc.cuda())
    before = eager.stats["programs"]
    np.testing.assert_allclose((x * y).numpy(), _X * _Y, rtol=1e-6)
    assert eager.stats["programs"] == before + 1
    compiles, programs = gpu.stats["compiles"], eager.stats["programs"]
    np.testing.assert_allclose((y * x).numpy(), _X * _Y, rtol=1e-6)  # same signature
    assert gpu.stats["compiles"] == compiles and eager.stats["programs"] == programs
    x2 = nc.Tensor(_X[:3], device=nc.cuda())
    np.testing.assert_allclose((x2 * x2).numpy(), _X[:3] ** 2, rtol=1e-6)  # a new shape
    assert eager.stats["programs"] == programs + 1


def test_a_changing_scalar_becomes_an_input_not_a_kernel_per_value(gpu):
    """`x * lr` with a learning rate that changes every step: the first few scalars are
    compiled in as constants, then one executable takes the scalar as an input; every result
    is what numpy computes (the scalar cast to float32 first, as a Python scalar is weak)."""
    from needlec.codegen.cuda import eager

    x = nc.Tensor(_X, device=nc.cuda())
    before = eager.stats["programs"]
    ops_ = {"mul": lambda c: x * c, "add": lambda c: x + c, "div": lambda c: x / c}
    for name, f in (("mul", np.multiply), ("add", np.add), ("div", np.divide)):
        made = eager.stats["programs"]
        for i in range(12):
            c = 0.1 * 0.93**i
            got = ops_[name](c).numpy()
            want = f(_X, np.float32(c))
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want, err_msg=f"{name} {c}")
        assert eager.stats["programs"] == made + eager.BAKED_SCALARS + 1, name
        for i in range(12):  # each value again: nothing new
            ops_[name](0.1 * 0.93**i)
        assert eager.stats["programs"] == made + eager.BAKED_SCALARS + 1, name
    assert eager.stats["programs"] == before + 3 * (eager.BAKED_SCALARS + 1)
    x64 = nc.Tensor(_X.astype("float64"), device=nc.cuda())  # a float64 tensor keeps float64
    for i in range(eager.BAKED_SCALARS + 2):
        np.testing.assert_array_equal((x64 * (1.5 + i)).numpy(), _X.astype("float64") * (1.5 + i))


def _mlp_run(device, jit: bool, steps: int, watch=None):
    """Train a small MLP for `steps` steps on `device`; (losses, parameters, the last loss
    tensor). `watch(i, model)` runs around step i (a context manager factory) when given."""
    np.random.seed(0)
    model = nc.nn.Sequential(
        nc.nn.Linear(6, 8, device=device), nc.nn.ReLU(), nc.nn.Linear(8, 3, device=device)
    )
    opt = nc.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_fn = nc.nn.SoftmaxLoss()

    def step(x, y):
        opt.reset_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss

    step = nc.jit(step) if jit else step
    rng = np.random.default_rng(1)
    x = nc.Tensor(rng.standard_normal((4, 6)).astype("float32"), device=device)
    y = nc.Tensor(rng.integers(0, 3, 4).astype("float32"), device=device)
    losses = []
    for i in range(steps):
        if watch is not None:
            with watch(i, model):
                loss = step(x, y)
        else:
            loss = step(x, y)
        losses.append(loss.numpy())
    return np.array(losses), [p.numpy() for p in model.parameters()], loss


def test_an_eager_training_step_on_cuda_equals_the_cpu(gpu):
    want_loss, want_params, _ = _mlp_run(nc.cpu(), jit=False, steps=2)
    got_loss, got_params, loss = _mlp_run(nc.cuda(), jit=False, steps=2)
    assert loss.device == nc.cuda() and type(loss.cached_data._handle).__name__ == "DeviceBuffer"
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5)
    for g, w in zip(got_params, want_params, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_a_jitted_step_keeps_parameters_on_the_device(gpu):
    """In the steady state a jitted step over cuda tensors copies no parameter between host and
    device (only its scalars: learning rate, momentum); parameters the memory plan donates keep
    their device buffer, holding the new value; the numbers match the CPU's jitted step."""
    import contextlib

    seen = {}

    @contextlib.contextmanager
    def watch(i, model):
        params = list(model.parameters())
        handles = [p.cached_data._handle for p in params]
        n = len(gpu.copies)
        yield
        if i == 2:
            seen["copies"] = gpu.copies[n:]
            seen["kept"] = [
                h is p.cached_data._handle for h, p in zip(handles, params, strict=True)
            ]
            seen["on_device"] = all(p.device == nc.cuda() for p in params)

    want_loss, want_params, _ = _mlp_run(nc.cpu(), jit=True, steps=3)
    got_loss, got_params, loss = _mlp_run(nc.cuda(), jit=True, steps=3, watch=watch)
    assert loss.device == nc.cuda() and type(loss.cached_data._handle).__name__ == "DeviceBuffer"
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5)
    for g, w in zip(got_params, want_params, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    assert seen["on_device"]
    # through the host: only the hyperparameters (float64 scalars) go in; nothing comes back
    host = [(k, n) for k, n in seen["copies"] if k != "dtod"]
    assert host and all(k == "htod" and n <= 8 for k, n in host), host
    assert any(seen["kept"])  # updated in place, in its own device buffer


def test_the_copy_kernel_source_compiles_with_nvcc():
    """The strided copy (`compact`, `setitem`, `fill`) for every dtype pair a copy meets,
    broadcast and strided, built for sm_90 where nvcc is on the PATH."""
    from needlec.codegen.cuda.eager import _copy_source

    from .test_cuda_source import NVCC, nvcc_ptx

    if NVCC is None:
        pytest.skip("nvcc is not on the PATH")
    pairs = [("float32", "float32"), ("float64", "float32"), ("bool", "float32")]
    pairs += [("int64", "int32"), ("float32", "bool"), ("int32", "int64")]
    parts = [
        _copy_source(f"copy{j}", (3, 1, 4), (4, 4, 1), (0, 5, 2), dst, src)
        for j, (dst, src) in enumerate(pairs)
    ]
    parts.append(_copy_source("scalar", (), (), (), "float32", "float32"))
    nvcc_ptx("\n".join(parts), "the strided copy kernels")


def test_a_jitted_function_on_cuda_reads_a_closure_array(gpu):
    """A numpy array the function reads from its closure goes along with the call's device
    (copied in at each call, as a hyperparameter is), and later writes to it are seen."""
    w = _W.copy()
    f = nc.jit(lambda t: ops.tanh(t @ nc.Tensor(w, requires_grad=False)) * 2.0)
    x = nc.Tensor(_X, device=nc.cuda())
    got = f(x)
    assert got.device == nc.cuda()
    np.testing.assert_allclose(got.numpy(), np.tanh(_X @ w) * 2, rtol=1e-5, atol=1e-6)
    w[:] = -w
    np.testing.assert_allclose(f(x).numpy(), np.tanh(_X @ -_W) * 2, rtol=1e-5, atol=1e-6)
