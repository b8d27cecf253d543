"""Linear, SoftmaxLoss, BatchNorm1d/2d, LayerNorm1d, Dropout and init.one_hot against
PyTorch and numpy references, including init draws and train/eval behaviour."""

import re

import numpy as np
import pytest

import needlec as nc
from needlec import nn

from .util import close, kaiming_uniform_draw, n_params, next_draw_after, numeric_grad, randn

# ---------------------------------------------------------------- Linear


def test_linear_parameter_count():
    assert n_params(nn.Linear(784, 256)) == 200_960
    assert n_params(nn.Linear(784, 256, bias=False)) == 784 * 256


@pytest.mark.parametrize("bias", [True, False])
def test_linear_draws_weight_then_bias(bias):
    np.random.seed(3)
    lin = nn.Linear(5, 7, bias=bias)
    after = np.random.rand()  # what follows the module's draws
    np.random.seed(3)
    w = kaiming_uniform_draw(5, 7)
    assert lin.weight.shape == (5, 7) and lin.weight.dtype == "float32"
    close(lin.weight, w, rtol=1e-6, atol=1e-7)
    if bias:
        b = kaiming_uniform_draw(7, 1).reshape(1, 7)
        assert lin.bias.shape == (1, 7) and lin.bias.dtype == "float32"
        close(lin.bias, b, rtol=1e-6, atol=1e-7)
    else:
        assert lin.bias is None
    assert after == next_draw_after(3, 35 + 7 * bias)


@pytest.mark.parametrize("shape", [(6, 5), (2, 3, 5), (2, 2, 3, 5)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_torch(shape, bias, torch, rng, device):
    np.random.seed(4)
    lin = nn.Linear(5, 4, bias=bias, device=device)
    ref = torch.nn.Linear(5, 4, bias=bias)
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(lin.weight.numpy().T))
        if bias:
            ref.bias.copy_(torch.tensor(lin.bias.numpy()[0]))
    x_np = randn(rng, *shape)
    seed = randn(rng, *shape[:-1], 4)
    x, xt = nc.Tensor(x_np, device=device), torch.tensor(x_np, requires_grad=True)
    y, yt = lin(x), ref(xt)
    assert y.shape == tuple(yt.shape) and y.device == device
    close(y, yt)
    (y * nc.Tensor(seed, device=device)).sum().backward()
    (yt * torch.tensor(seed)).sum().backward()
    close(x.grad, xt.grad)
    close(lin.weight.grad, ref.weight.grad.T)
    if bias:
        close(lin.bias.grad, ref.bias.grad[None, :])


# ---------------------------------------------------------------- SoftmaxLoss


@pytest.mark.parametrize("label_dtype", ["int64", "float32"])
def test_softmax_loss_matches_torch(label_dtype, torch, rng):
    logits_np = randn(rng, 8, 5, scale=3.0)
    labels = rng.integers(0, 5, size=8)
    logits = nc.Tensor(logits_np)
    y = nc.Tensor(labels.astype(label_dtype), requires_grad=False)
    loss = nn.SoftmaxLoss()(logits, y)
    assert loss.shape == ()
    lt = torch.tensor(logits_np, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(lt, torch.tensor(labels))
    close(loss, ref)
    loss.backward()
    ref.backward()
    close(logits.grad, lt.grad, atol=1e-6)


def test_softmax_loss_is_stable_for_large_logits():
    logits = nc.Tensor(np.array([[1e4, 0.0, -1e4], [0.0, 2e4, 0.0]], dtype="float32"))
    loss = nn.SoftmaxLoss()(logits, nc.Tensor(np.array([0, 0])))
    close(loss, 1e4, rtol=1e-6)  # (0 + 2e4) / 2


def test_softmax_loss_under_jit(rng):
    loss_fn = nn.SoftmaxLoss()
    logits = nc.Tensor(randn(rng, 6, 4))
    for labels in (rng.integers(0, 4, 6), rng.integers(0, 4, 6).astype("float32")):
        y = nc.Tensor(labels, requires_grad=False)
        jitted = nc.jit(lambda a, b: loss_fn(a, b))(logits, y)
        close(jitted, loss_fn(logits, y), rtol=1e-6, atol=1e-7)
        lse = np.log(np.exp(logits.numpy()).sum(1))
        expected = (lse - logits.numpy()[np.arange(6), labels.astype(int)]).mean()
        close(jitted, expected, rtol=1e-5)


# ---------------------------------------------------------------- init.one_hot


def test_one_hot_of_tensors_is_eye_rows(rng):
    ids = rng.integers(0, 7, size=(3, 4))
    for t in (nc.Tensor(ids), nc.Tensor(ids.astype("float32"))):
        hot = nc.init.one_hot(7, t)
        assert hot.shape == (3, 4, 7) and hot.dtype == "float32" and not hot.requires_grad
        np.testing.assert_array_equal(hot.numpy(), np.eye(7)[ids])
    np.testing.assert_array_equal(nc.init.one_hot(7, ids).numpy(), np.eye(7)[ids])
    hot64 = nc.init.one_hot(7, nc.Tensor(ids), dtype="float64", requires_grad=True)
    assert hot64.dtype == "float64" and hot64.requires_grad


def test_one_hot_under_jit(rng):
    ids = rng.integers(0, 5, size=(6,))
    out = nc.jit(lambda i: nc.init.one_hot(5, i))(nc.Tensor(ids))
    np.testing.assert_array_equal(out.numpy(), np.eye(5)[ids])


@pytest.mark.parametrize("id_dtype", ["int64", "int32", "float32"])
def test_one_hot_of_eager_tensors_is_numpy_indexing_negative_ids_included(id_dtype):
    """Outside a trace a concrete Tensor of ids is exactly `np.eye(n)[ids]`: -1 is the last row."""
    ids = np.array([[0, -1, 3], [-4, 2, -2]])
    hot = nc.init.one_hot(4, nc.Tensor(ids.astype(id_dtype), requires_grad=False))
    assert hot.shape == (2, 3, 4) and hot.dtype == "float32"
    np.testing.assert_array_equal(hot.numpy(), np.eye(4)[ids])
    np.testing.assert_array_equal(hot.numpy()[0, 1], [0, 0, 0, 1])
    # the same as the array path
    np.testing.assert_array_equal(nc.init.one_hot(4, ids).numpy(), np.eye(4)[ids])


@pytest.mark.parametrize("bad", [4, 7, -5])
@pytest.mark.parametrize("as_tensor", [True, False], ids=["tensor", "array"])
def test_one_hot_eager_out_of_range_id_raises_index_error(bad, as_tensor):
    ids = np.array([0, bad, 1])
    with pytest.raises(IndexError, match=rf"class id {bad} .*n=4"):
        nc.init.one_hot(4, nc.Tensor(ids) if as_tensor else ids)


def test_one_hot_inside_a_trace_gives_nan_rows_for_out_of_range_ids():
    """Values are unknown while tracing: a negative id counts from the end as eagerly, and an
    id outside [-n, n) gives a row of NaN there (documented in init.one_hot)."""
    ids = np.array([0, 4, -1, 2, 3, -5])
    out = nc.jit(lambda i: nc.init.one_hot(4, i))(nc.Tensor(ids)).numpy()
    np.testing.assert_array_equal(out[[0, 2, 3, 4]], np.eye(4)[[0, -1, 2, 3]])
    assert np.isnan(out[[1, 5]]).all()


@pytest.mark.parametrize("label_dtype", ["int64", "float32"])
def test_jitted_softmax_loss_and_gradient_equal_eager_for_valid_labels(label_dtype, rng):
    """Eager labels go through numpy indexing, jitted ones through the traced comparison: the
    loss and the weight gradient agree for every valid label."""
    loss_fn = nn.SoftmaxLoss()
    W = nc.Tensor(randn(rng, 5, 4))
    x = nc.Tensor(randn(rng, 12, 5), requires_grad=False)
    y = nc.Tensor(np.arange(12).astype(label_dtype) % 4, requires_grad=False)  # every class

    def f(x, y):
        W.grad = None
        loss = loss_fn(x @ W, y)
        loss.backward()
        return loss, W.grad

    jitted_loss, jitted_grad = nc.jit(f)(x, y)
    eager_loss, eager_grad = f(x, y)
    close(jitted_loss, eager_loss, rtol=1e-6, atol=1e-7)
    close(jitted_grad, eager_grad, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- shape errors


def test_linear_rejects_wrong_input_width():
    lin = nn.Linear(5, 3)
    with pytest.raises(ValueError, match=r"Linear\(5, 3\).*in_features = 5.*\(4, 6\)"):
        lin(nc.Tensor(np.ones((4, 6), "float32")))
    with pytest.raises(ValueError, match=r"Linear\(5, 3\).*\(2, 3, 4\)"):
        nc.jit(lambda x: lin(x))(np.ones((2, 3, 4), "float32"))


def test_softmax_loss_rejects_logits_that_are_not_2d():
    with pytest.raises(ValueError, match=r"SoftmaxLoss: logits must be 2-D.*\(2, 3, 4\)"):
        nn.SoftmaxLoss()(nc.Tensor(np.zeros((2, 3, 4), "float32")), nc.Tensor(np.zeros(2)))
    with pytest.raises(ValueError, match=r"SoftmaxLoss: logits must be 2-D.*\(4,\)"):
        nn.SoftmaxLoss()(nc.Tensor(np.zeros(4, "float32")), nc.Tensor(np.zeros(4)))


@pytest.mark.parametrize("label_shape", [(5,), (4, 1), (3,)])
def test_softmax_loss_rejects_labels_that_do_not_match_the_batch(label_shape):
    logits = nc.Tensor(np.zeros((4, 3), "float32"))
    labels = nc.Tensor(np.zeros(label_shape), requires_grad=False)
    shape = re.escape(str(label_shape))
    with pytest.raises(ValueError, match=rf"SoftmaxLoss: labels must be \(4,\).*\(4, 3\).*{shape}"):
        nn.SoftmaxLoss()(logits, labels)
    with pytest.raises(ValueError, match=rf"labels must be \(4,\).*{shape}"):
        nc.jit(lambda a, b: nn.SoftmaxLoss()(a, b))(logits, labels)


# ---------------------------------------------------------------- BatchNorm


def _np_batchnorm_steps(xs, momentum, eps, weight, bias):
    """Training outputs and running statistics (biased variance) after each batch, in numpy."""
    mean, var, outs = np.zeros(xs[0].shape[1]), np.ones(xs[0].shape[1]), []
    for x in xs:
        bm, bv = x.mean(0), x.var(0)
        outs.append(weight * (x - bm) / np.sqrt(bv + eps) + bias)
        mean = (1 - momentum) * mean + momentum * bm
        var = (1 - momentum) * var + momentum * bv
    return outs, mean, var


def test_batchnorm1d_running_statistics_and_eval(rng):
    bn = nn.BatchNorm1d(4, momentum=0.2, eps=1e-3)
    w, b = randn(rng, 4), randn(rng, 4)
    bn.weight.data = nc.Tensor(w)
    bn.bias.data = nc.Tensor(b)
    xs = [randn(rng, 6, 4, scale=2.0) + 1.5 for _ in range(3)]
    outs, mean, var = _np_batchnorm_steps(xs, 0.2, 1e-3, w, b)
    for x, expected in zip(xs, outs, strict=True):
        close(bn(nc.Tensor(x)), expected, atol=1e-5)
    close(bn.running_mean, mean)
    close(bn.running_var, var)
    for stat in (bn.running_mean, bn.running_var):
        assert stat.dtype == "float32" and not stat.requires_grad and stat.is_leaf()
    x = randn(rng, 5, 4)
    bn.eval()
    close(bn(nc.Tensor(x)), w * (x - mean) / np.sqrt(var + 1e-3) + b, atol=1e-5)
    close(bn.running_mean, mean)  # evaluation leaves the statistics alone


def test_batchnorm1d_matches_torch_in_training(torch, rng, device):
    bn = nn.BatchNorm1d(5, device=device)
    ref = torch.nn.BatchNorm1d(5)
    w, b = randn(rng, 5), randn(rng, 5)
    bn.weight.data, bn.bias.data = nc.Tensor(w, device=device), nc.Tensor(b, device=device)
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(w))
        ref.bias.copy_(torch.tensor(b))
    x_np, seed = randn(rng, 8, 5), randn(rng, 8, 5)
    x, xt = nc.Tensor(x_np, device=device), torch.tensor(x_np, requires_grad=True)
    y, yt = bn(x), ref(xt)
    assert y.device == device
    close(y, yt, atol=1e-5)
    close(bn.running_mean, ref.running_mean)  # same update rule for the mean
    (y * nc.Tensor(seed, device=device)).sum().backward()
    (yt * torch.tensor(seed)).sum().backward()
    close(x.grad, xt.grad, atol=1e-4)
    close(bn.weight.grad, ref.weight.grad, atol=1e-5)
    close(bn.bias.grad, ref.bias.grad, atol=1e-5)


def test_batchnorm2d_matches_torch(torch, rng, device):
    bn = nn.BatchNorm2d(3, device=device)
    ref = torch.nn.BatchNorm2d(3)
    w, b = randn(rng, 3), randn(rng, 3)
    bn.weight.data, bn.bias.data = nc.Tensor(w, device=device), nc.Tensor(b, device=device)
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(w))
        ref.bias.copy_(torch.tensor(b))
    x_np, seed = randn(rng, 2, 3, 4, 5) + 0.5, randn(rng, 2, 3, 4, 5)
    x, xt = nc.Tensor(x_np, device=device), torch.tensor(x_np, requires_grad=True)
    y, yt = bn(x), ref(xt)
    assert y.shape == (2, 3, 4, 5) and y.device == device
    close(y, yt, atol=1e-5)
    close(bn.running_mean, ref.running_mean)
    close(bn.running_var, 0.9 + 0.1 * x_np.var(axis=(0, 2, 3)))  # biased, unlike torch's
    (y * nc.Tensor(seed, device=device)).sum().backward()
    (yt * torch.tensor(seed)).sum().backward()
    close(x.grad, xt.grad, atol=1e-4)
    close(bn.weight.grad, ref.weight.grad, atol=1e-4)
    close(bn.bias.grad, ref.bias.grad, atol=1e-4)
    bn.eval()
    x2 = randn(rng, 2, 3, 4, 5)
    mean = bn.running_mean.numpy().reshape(1, 3, 1, 1)
    var = bn.running_var.numpy().reshape(1, 3, 1, 1)
    expected = w.reshape(1, 3, 1, 1) * (x2 - mean) / np.sqrt(var + 1e-5) + b.reshape(1, 3, 1, 1)
    close(bn(nc.Tensor(x2, device=device)), expected, atol=1e-5)


# ---------------------------------------------------------------- LayerNorm1d


@pytest.mark.parametrize("shape", [(4, 6), (2, 3, 6)])
def test_layernorm_matches_torch(shape, torch, rng, device):
    ln = nn.LayerNorm1d(6, eps=1e-4, device=device)
    assert [p.shape for p in ln.parameters()] == [(6,), (6,)]
    np.testing.assert_array_equal(ln.weight.numpy(), np.ones(6))
    np.testing.assert_array_equal(ln.bias.numpy(), np.zeros(6))
    w, b = randn(rng, 6), randn(rng, 6)
    ln.weight.data, ln.bias.data = nc.Tensor(w, device=device), nc.Tensor(b, device=device)
    x_np, seed = randn(rng, *shape, scale=3.0), randn(rng, *shape)
    x = nc.Tensor(x_np, device=device)
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x_np, w, b))
    y = ln(x)
    yt = torch.nn.functional.layer_norm(xt, (6,), wt, bt, eps=1e-4)
    assert y.device == device
    close(y, yt, atol=1e-5)
    (y * nc.Tensor(seed, device=device)).sum().backward()
    (yt * torch.tensor(seed)).sum().backward()
    close(x.grad, xt.grad, atol=1e-4)
    close(ln.weight.grad, wt.grad, atol=1e-5)
    close(ln.bias.grad, bt.grad, atol=1e-5)


def test_layernorm_gradients_match_finite_differences(rng):
    ln = nn.LayerNorm1d(5, dtype="float64")
    assert ln.weight.dtype == "float64"
    ln.weight.data = nc.Tensor(randn(rng, 5, dtype="float64"))
    ln.bias.data = nc.Tensor(randn(rng, 5, dtype="float64"))
    x = nc.Tensor(randn(rng, 3, 5, dtype="float64"))
    seed = nc.Tensor(randn(rng, 3, 5, dtype="float64"), requires_grad=False)
    loss = lambda: (ln(x) * seed).sum()
    loss().backward()
    for t in (x, ln.weight, ln.bias):
        assert t.grad.dtype == "float64"
        close(t.grad, numeric_grad(loss, t), rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- Dropout


def test_dropout_is_identity_in_eval(rng):
    x = nc.Tensor(randn(rng, 4, 5))
    state = np.random.get_state()[1].copy()
    drop = nn.Dropout(0.5).eval()
    np.testing.assert_array_equal(drop(x).numpy(), x.numpy())
    np.testing.assert_array_equal(np.random.get_state()[1], state)  # nothing drawn


@pytest.mark.parametrize("p", [0.2, 0.5, 0.0])
def test_dropout_mask_in_training(p, rng):
    x_np = randn(rng, 6, 7)
    x = nc.Tensor(x_np)
    np.random.seed(11)
    y = nn.Dropout(p)(x)
    after = np.random.rand()
    np.random.seed(11)
    mask = np.random.rand(6, 7).astype("float32") <= 1 - p
    close(y, x_np * mask / (1 - p), rtol=1e-6, atol=0)
    assert after == next_draw_after(11, 42)  # one draw per forward, even for p == 0
    y.sum().backward()
    close(x.grad, mask / (1 - p), rtol=1e-6, atol=0)


def test_dropout_draws_fresh_masks():
    x = nc.init.ones(50, 40)
    drop = nn.Dropout(0.3)
    a, b = drop(x).numpy(), drop(x).numpy()
    assert not np.array_equal(a, b)
    for out in (a, b):
        assert set(np.unique(out)) <= {0.0, np.float32(1 / 0.7)}
        assert abs((out == 0).mean() - 0.3) < 0.05


def test_dropout_under_jit():
    drop = nn.Dropout(0.25)
    f = nc.jit(lambda x: drop(x))
    x = nc.init.ones(60, 50)
    np.random.seed(5)
    a = f(x).numpy()
    b = f(x).numpy()
    np.random.seed(5)
    c = f(x).numpy()
    np.testing.assert_array_equal(a, c)  # numpy's seed makes jit's draws reproducible
    assert not np.array_equal(a, b)
    assert set(np.unique(a)) <= {0.0, np.float32(1 / 0.75)}
    assert abs((a == 0).mean() - 0.25) < 0.05
    drop.eval()
    np.testing.assert_array_equal(f(x).numpy(), x.numpy())  # switching mode retraces
