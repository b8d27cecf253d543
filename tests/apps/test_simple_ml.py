"""simple_ml: homework 2's hand-written network against numpy, homework 4's loops eager vs jit."""

from __future__ import annotations

import numpy as np
import pytest

import needlec as nc
from needlec.apps import simple_ml
from needlec.apps._loop import clip_grad_norm
from needlec.apps.models import LanguageModel, ResNet9

from .conftest import write_idx


def numpy_softmax_loss(Z, y):
    Z = Z.astype("float64")
    return np.mean(np.log(np.exp(Z).sum(axis=1)) - Z[np.arange(len(y)), y])


def test_softmax_loss_against_numpy():
    rng = np.random.default_rng(0)
    Z = rng.standard_normal((7, 5)).astype("float32") * 3
    y = rng.integers(0, 5, 7)
    got = simple_ml.softmax_loss(nc.Tensor(Z), nc.Tensor(np.eye(5, dtype="float32")[y]))
    np.testing.assert_allclose(got.numpy(), numpy_softmax_loss(Z, y), rtol=1e-6)


def test_softmax_loss_gradient_against_numpy():
    rng = np.random.default_rng(1)
    Z = rng.standard_normal((4, 3))
    y = np.array([0, 2, 1, 2])
    Zt = nc.Tensor(Z)
    simple_ml.softmax_loss(Zt, nc.Tensor(np.eye(3)[y])).backward()
    softmax = np.exp(Z) / np.exp(Z).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(Zt.grad.numpy(), (softmax - np.eye(3)[y]) / 4, rtol=1e-10)


def numpy_nn_epoch(X, y, W1, W2, lr, batch):
    """Homework 1's numpy version: the gradients written out by hand."""
    W1, W2 = W1.astype("float64"), W2.astype("float64")
    for i in range(0, len(y), batch):
        Xb, yb = X[i : i + batch], y[i : i + batch]
        H = np.maximum(Xb @ W1, 0)
        S = np.exp(H @ W2)
        S /= S.sum(axis=1, keepdims=True)
        S[np.arange(len(yb)), yb] -= 1
        G2 = H.T @ S / len(yb)
        G1 = Xb.T @ ((H > 0) * (S @ W2.T)) / len(yb)
        W1, W2 = W1 - lr * G1, W2 - lr * G2
    return W1, W2


@pytest.mark.parametrize("jit", [False, True])
def test_nn_epoch_against_numpy(jit):
    rng = np.random.default_rng(0)
    X = rng.random((130, 12)).astype("float32")  # batches of 50, 50, 30
    y = rng.integers(0, 4, 130).astype("uint8")
    W1 = (rng.standard_normal((12, 16)) / 4).astype("float32")
    W2 = (rng.standard_normal((16, 4)) / 4).astype("float32")
    got1, got2 = simple_ml.nn_epoch(
        X, y, nc.Tensor(W1), nc.Tensor(W2), lr=0.2, batch=50, jit=jit, progress=False
    )
    ref1, ref2 = numpy_nn_epoch(X, y, W1, W2, 0.2, 50)
    np.testing.assert_allclose(got1.numpy(), ref1, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got2.numpy(), ref2, rtol=1e-4, atol=1e-6)
    assert got1.is_leaf() and got1.requires_grad and got1.dtype == "float32"


def test_loss_err_against_numpy():
    rng = np.random.default_rng(2)
    h = rng.standard_normal((6, 3)).astype("float32")
    y = np.array([0, 1, 2, 0, 1, 2])
    loss, err = simple_ml.loss_err(nc.Tensor(h), y)
    assert loss == pytest.approx(numpy_softmax_loss(h, y), rel=1e-6)
    assert err == pytest.approx(np.mean(h.argmax(axis=1) != y))


def test_parse_mnist_reads_idx_files(tmp_path):
    images = np.array([[[0, 255], [51, 102]], [[255, 0], [0, 0]]])
    write_idx(tmp_path / "img.gz", 2051, images)
    write_idx(tmp_path / "lbl.gz", 2049, np.array([3, 7]))
    X, y = simple_ml.parse_mnist(tmp_path / "img.gz", tmp_path / "lbl.gz")
    assert X.dtype == np.float32 and X.shape == (2, 4)
    np.testing.assert_allclose(X, images.reshape(2, 4) / 255.0, rtol=1e-6)
    assert y.tolist() == [3, 7]


def clipper(params, max_norm):
    return lambda: clip_grad_norm(params, max_norm)


@pytest.mark.parametrize("jit", [False, True])
def test_clip_grad_norm_against_numpy(jit):
    rng = np.random.default_rng(3)
    grads = [rng.standard_normal(s).astype("float32") for s in [(3, 4), (4,)]]
    norm = np.sqrt(sum((g.astype("float64") ** 2).sum() for g in grads))
    for max_norm, factor in ((norm / 4, 0.25), (norm * 2, 1.0)):
        params = [nc.Tensor(np.zeros_like(g)) for g in grads]
        for p, g in zip(params, grads, strict=True):
            p.grad = nc.Tensor(g)
        clip = clipper(params, float(max_norm))
        (nc.jit(clip) if jit else clip)()  # parameters captured, as an optimizer's are
        for p, g in zip(params, grads, strict=True):
            np.testing.assert_allclose(p.grad.numpy(), g * factor, rtol=1e-5)


def tiny_corpus(n_tokens=230, vocab=12, batch_size=4):
    rng = np.random.default_rng(0)
    tokens = np.cumsum(rng.integers(1, 3, n_tokens)) % vocab  # predictable steps of 1 or 2
    return nc.data.batchify(tokens, batch_size, None, None), vocab


@pytest.mark.parametrize("seq_model", ["rnn", "lstm", "transformer"])
def test_epoch_general_ptb_runs_and_jit_matches_eager(seq_model):
    data, vocab = tiny_corpus()  # 57 rows: chunks of 10 rows, the last of 6
    results = {}
    for jit in (False, True):
        np.random.seed(0)
        model = LanguageModel(8, vocab, 10, num_layers=2, seq_model=seq_model, seq_len=10)
        train = simple_ml.train_ptb(
            model, data, seq_len=10, n_epochs=2, lr=0.5, clip=5.0, jit=jit, progress=False
        )
        test = simple_ml.evaluate_ptb(model, data, seq_len=10, jit=jit, progress=False)
        results[jit] = train + test
    acc, loss, test_acc, test_loss = results[False]
    assert np.isfinite([acc, loss, test_acc, test_loss]).all()
    assert 0.0 <= acc <= 1.0 and 0.0 <= test_acc <= 1.0 and loss > 0 and test_loss > 0
    # compiled float32 code differs from numpy by ulps (sums in another order, each op within
    # its budget); two epochs at lr 0.5 magnify them: the transformer's test loss ends 1.1e-4
    # apart (relative), the other numbers closer
    np.testing.assert_allclose(results[True], results[False], rtol=2e-4)


def test_epoch_general_ptb_averages_over_tokens():
    """Eval with seq_len covering all rows: one chunk, so accuracy and loss are those of the
    model's logits over every predicted token, recomputed here with numpy."""
    data, vocab = tiny_corpus(n_tokens=40, batch_size=4)  # 10 rows: one chunk of 9
    np.random.seed(0)
    model = LanguageModel(6, vocab, 7, seq_model="rnn")
    acc, loss = simple_ml.epoch_general_ptb(data, model, seq_len=20, progress=False)
    logits, _ = model(nc.Tensor(data[:-1].astype("float32"), requires_grad=False))
    logits, targets = logits.numpy(), data[1:].reshape(-1)
    assert acc == pytest.approx(np.mean(logits.argmax(axis=1) == targets))
    assert loss == pytest.approx(numpy_softmax_loss(logits, targets), rel=1e-5)


def test_cifar10_loops_jit_matches_eager():
    rng = np.random.default_rng(0)
    X = rng.random((12, 3, 32, 32)).astype("float32")
    y = rng.integers(0, 10, 12)
    results = {}
    for jit in (False, True):
        np.random.seed(0)
        model = ResNet9()
        loader = nc.data.DataLoader(nc.data.NDArrayDataset(X, y), batch_size=8)
        train = simple_ml.train_cifar10(model, loader, n_epochs=1, jit=jit, progress=False)
        test = simple_ml.evaluate_cifar10(model, loader, jit=jit, progress=False)
        results[jit] = train + test
    assert np.isfinite(results[False]).all() and 0.0 <= results[False][2] <= 1.0
    # compiled float32 code differs from numpy by ulps (sums in another order, each op within
    # its budget); two epochs at lr 0.5 magnify them: the transformer's test loss ends 1.1e-4
    # apart (relative), the other numbers closer
    np.testing.assert_allclose(results[True], results[False], rtol=2e-4)
