"""jit and eager agree: the same value, or the same clear error.

Each case runs eagerly and under `jit` with each executor (`NEEDLEC_EXECUTE` = compiled, the
default; reference, the graph interpreter; kernels, the fused-kernel interpreter).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

import needlec as nc
from needlec import nn, ops

MODES = ["eager", "compiled", "reference", "kernels"]


def run(mode: str, f: Callable, *arrays, monkeypatch):
    """f(*arrays) eagerly, or under jit with the executor `mode`; numpy arrays become tensors."""
    if mode == "eager":
        args = [
            nc.Tensor(a, requires_grad=False) if isinstance(a, np.ndarray) else a for a in arrays
        ]
        return f(*args)
    monkeypatch.setenv("NEEDLEC_EXECUTE", mode)
    return nc.jit(f)(*arrays)


def assert_same_bits(got: np.ndarray, want: np.ndarray) -> None:
    """Equal values and dtypes; any NaN matches any NaN, and -0.0 is not 0.0."""
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    number = ~np.isnan(want)
    np.testing.assert_array_equal(np.signbit(got[number]), np.signbit(want[number]))


# ---------------------------------------------------------------- labels


def loss_fn(logits, y):
    return nn.SoftmaxLoss()(logits, y)


LOGITS = np.array([[0.5, -1.0, 2.0], [1.5, 0.25, -0.5]], dtype="float32")


def np_loss(logits: np.ndarray, y: np.ndarray) -> np.float32:
    lse = np.log(np.exp(logits.astype("float64")).sum(1))
    return np.float32(np.mean(lse - logits[np.arange(len(y)), y]))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", ["int64", "float32"])
def test_softmax_loss_with_valid_labels(mode, dtype, monkeypatch):
    y = np.array([2, 0], dtype=dtype)
    got = run(mode, loss_fn, LOGITS, y, monkeypatch=monkeypatch).numpy()
    np.testing.assert_allclose(got, np_loss(LOGITS, y.astype(int)), rtol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_softmax_loss_with_negative_labels_counts_from_the_end(mode, monkeypatch):
    """As numpy's indexing (np.eye(n)[i]): -1 is the last class, eagerly and under jit."""
    y = np.array([-1, -3], dtype="int64")
    got = run(mode, loss_fn, LOGITS, y, monkeypatch=monkeypatch).numpy()
    np.testing.assert_allclose(got, np_loss(LOGITS, y % 3), rtol=1e-6)


BAD_LABELS = {
    "out-of-range": np.array([3, 0], dtype="int64"),
    "too-negative": np.array([-4, 0], dtype="int64"),
    "fractional": np.array([0.5, 1.0], dtype="float32"),
    "nan": np.array([np.nan, 1.0], dtype="float32"),
}


@pytest.mark.parametrize("name", sorted(BAD_LABELS))
def test_softmax_loss_with_bad_labels_raises_eagerly(name):
    y = nc.Tensor(BAD_LABELS[name], requires_grad=False)
    with pytest.raises(IndexError, match="one_hot"):
        loss_fn(nc.Tensor(LOGITS), y)
    with pytest.raises(IndexError, match="one_hot"):
        nc.init.one_hot(3, y)


@pytest.mark.parametrize("mode", MODES[1:])
@pytest.mark.parametrize("name", sorted(BAD_LABELS))
def test_softmax_loss_with_bad_labels_is_nan_under_jit(mode, name, monkeypatch):
    """Under jit a label's value is not known when tracing: a bad one gives a NaN loss (never
    a plausible number), as documented in `init.one_hot`."""
    got = run(mode, loss_fn, LOGITS, BAD_LABELS[name], monkeypatch=monkeypatch).numpy()
    assert np.isnan(got)


@pytest.mark.parametrize("mode", MODES[1:])
@pytest.mark.parametrize("name", sorted(BAD_LABELS))
def test_bad_labels_known_while_tracing_raise_under_jit(mode, name, monkeypatch):
    """Labels made inside the function are known while tracing: checked as eagerly."""
    labels = BAD_LABELS[name]

    def f(logits):
        return loss_fn(logits, nc.Tensor(labels, requires_grad=False))

    with pytest.raises(IndexError, match="one_hot"):
        run(mode, f, LOGITS, monkeypatch=monkeypatch)


# ---------------------------------------------------------------- devices


@pytest.mark.parametrize("mode", MODES)
def test_arguments_on_two_devices_raise(mode, monkeypatch):
    a = nc.Tensor([1.0, 2.0], device=nc.cpu())
    b = nc.Tensor([3.0, 4.0], device=nc.cpu_numpy())
    with pytest.raises(ValueError, match="different devices"):
        run(mode, lambda x, y: x + y, a, b, monkeypatch=monkeypatch)


@pytest.mark.parametrize("mode", MODES)
def test_result_is_on_the_arguments_device(mode, monkeypatch):
    a = nc.Tensor([1.0, 2.0], device=nc.cpu_numpy())
    got = run(mode, lambda x, y: x + y, a, a, monkeypatch=monkeypatch)
    assert got.device == nc.cpu_numpy()
    np.testing.assert_array_equal(got.numpy(), [2.0, 4.0])


# ---------------------------------------------------------------- empty axes and -0.0


@pytest.mark.parametrize("mode", MODES)
def test_max_over_an_empty_axis_raises(mode, monkeypatch):
    x = np.zeros((3, 0), dtype="float32")
    with pytest.raises(ValueError, match="max: reduction over an empty axis"):
        run(mode, lambda t: t.max((1,)), x, monkeypatch=monkeypatch)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("op", ["sum", "logsumexp"])
def test_sum_and_logsumexp_over_an_empty_axis(mode, op, monkeypatch):
    x = np.zeros((3, 0), dtype="float32")
    got = run(mode, lambda t: getattr(t, op)((1,)), x, monkeypatch=monkeypatch).numpy()
    with np.errstate(divide="ignore"):
        want = np.sum(x, axis=1) if op == "sum" else np.log(np.sum(np.exp(x), axis=1))
    assert_same_bits(got, want.astype("float32"))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("axis", [0, 1])
def test_stack_keeps_the_sign_of_zero(mode, axis, monkeypatch):
    x = np.array([0.0, -0.0, 1.0, np.inf, np.nan], dtype="float32")
    got = run(mode, lambda t: 1 / ops.stack([t, -t], axis), x, monkeypatch=monkeypatch).numpy()
    with np.errstate(divide="ignore"):
        want = 1 / np.stack([x, -x], axis)
    assert_same_bits(got, want)


# ---------------------------------------------------------------- int ** negative int


@pytest.mark.parametrize("mode", MODES)
def test_int_to_a_negative_int_power_raises(mode, monkeypatch):
    a, b = np.array([2, 3], dtype="int64"), np.array([-1, 2], dtype="int64")
    with pytest.raises((ValueError, RuntimeError), match="negative integer powers"):
        run(mode, lambda x, y: x**y, a, b, monkeypatch=monkeypatch).numpy()
