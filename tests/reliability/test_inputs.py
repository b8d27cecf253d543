"""Inputs that used to be converted silently, or to fail deep inside numpy or needlec.

Each case either does what numpy does (compared with numpy) or raises a `TypeError` or
`ValueError` (or the error type numpy raises) whose message names the op and the line of this
file that called it. Cases that build an op are checked eagerly and under `jit`.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import pytest

import needlec as nc
from needlec import ops

HERE = os.path.basename(__file__)


def check_error(exc: type, op: str, fn: Callable, *args) -> None:
    """fn(*args) raises `exc` with a message naming `op` and a line of this file."""
    with pytest.raises(exc) as info:
        fn(*args)
    message = str(info.value)
    assert op in message, message
    assert HERE in message, message


def both(fn: Callable) -> list[Callable]:
    """fn eagerly and under jit, each a function of numpy arrays."""
    return [lambda *a: fn(*(nc.Tensor(x, requires_grad=False) for x in a)), nc.jit(fn)]


def x23() -> np.ndarray:
    return np.arange(6, dtype="float32").reshape(2, 3)


# ---------------------------------------------------------------- converted silently


def test_complex_input_is_rejected():
    check_error(TypeError, "Tensor", lambda: nc.Tensor(np.array([1 + 2j, 3.0])))
    check_error(TypeError, "Tensor", lambda: nc.Tensor([1j]))


def test_uint64_above_int64_range_is_rejected():
    big = np.array([2**63 + 5, 1], dtype=np.uint64)
    check_error(ValueError, "Tensor", lambda: nc.Tensor(big))
    ok = nc.Tensor(np.array([2**62, 1], dtype=np.uint64))
    np.testing.assert_array_equal(ok.numpy(), np.array([2**62, 1], dtype=np.int64))


def test_none_is_rejected():
    check_error(TypeError, "Tensor", lambda: nc.Tensor(None))
    check_error(TypeError, "Tensor", lambda: nc.Tensor(np.array([1.0, None], dtype=object)))
    check_error(TypeError, "Tensor", lambda: nc.Tensor([1.0, None]))


def test_object_array_of_numbers_still_converts():
    got = nc.Tensor(np.array([1.5, 2], dtype=object)).numpy()
    np.testing.assert_array_equal(got, np.array([1.5, 2.0], dtype="float32"))


@pytest.mark.parametrize("k", [0, 1])
def test_float_dims_in_reshape_are_rejected(k):
    f = both(lambda t: t.reshape((3.0, 2)))[k]
    check_error(TypeError, "reshape", f, x23())
    g = both(lambda t: ops.reshape(t, (3, 2.5)))[k]
    check_error(TypeError, "reshape", g, x23())


@pytest.mark.parametrize("k", [0, 1])
def test_float_dims_in_broadcast_to_are_rejected(k):
    f = both(lambda t: ops.broadcast_to(t, (2.0, 2, 3)))[k]
    check_error(TypeError, "broadcast_to", f, x23())


@pytest.mark.parametrize("k", [0, 1])
def test_numpy_integer_dims_are_accepted(k):
    f = both(lambda t: t.reshape((np.int64(3), np.int32(2))))[k]
    np.testing.assert_array_equal(f(x23()).numpy(), x23().reshape(3, 2))


def conv_inputs():
    rng = np.random.default_rng(0)
    return rng.standard_normal((1, 5, 5, 2)).astype("float32"), np.ones((3, 3, 2, 1), "float32")


@pytest.mark.parametrize("k", [0, 1])
def test_fractional_conv_stride_and_padding_are_rejected(k):
    x, w = conv_inputs()
    check_error(TypeError, "conv", both(lambda a, b: ops.conv(a, b, stride=1.5))[k], x, w)
    check_error(TypeError, "conv", both(lambda a, b: ops.conv(a, b, padding=1.7))[k], x, w)


@pytest.mark.parametrize("k", [0, 1])
def test_dilate_negative_axis_counts_from_the_end(k):
    got = both(lambda t: ops.dilate(t, (-1,), 1))[k](x23()).numpy()
    want = np.zeros((2, 6), "float32")
    want[:, ::2] = x23()
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("k", [0, 1])
def test_dilate_axis_past_the_last_is_rejected(k):
    check_error(ValueError, "dilate", both(lambda t: ops.dilate(t, (2,), 1))[k], x23())
    check_error(ValueError, "dilate", both(lambda t: ops.dilate(t, (-3,), 1))[k], x23())


# ---------------------------------------------------------------- raw errors from inside


@pytest.mark.parametrize("k", [0, 1])
def test_conv_stride_zero(k):
    x, w = conv_inputs()
    check_error(ValueError, "conv", both(lambda a, b: ops.conv(a, b, stride=0))[k], x, w)
    check_error(ValueError, "conv", both(lambda a, b: ops.conv(a, b, padding=-1))[k], x, w)


@pytest.mark.parametrize("k", [0, 1])
def test_broadcast_to_negative_dim(k):
    check_error(ValueError, "broadcast_to", both(lambda t: t.broadcast_to((-1, 3)))[k], x23())


@pytest.mark.parametrize("k", [0, 1])
def test_summation_over_axis_0_of_a_0d_tensor(k):
    # numpy: np.sum(np.float32(1), axis=0) raises AxisError
    x = np.array(1.0, dtype="float32")
    check_error(ValueError, "summation", both(lambda t: ops.summation(t, axes=0))[k], x)
    np.testing.assert_array_equal(both(lambda t: ops.summation(t))[k](x).numpy(), np.sum(x))


@pytest.mark.parametrize("k", [0, 1])
def test_max_over_an_empty_axis(k):
    x = np.zeros((2, 0), dtype="float32")
    check_error(ValueError, "max", both(lambda t: t.max(1))[k], x)
    np.testing.assert_array_equal(both(lambda t: t.max(0))[k](x).numpy(), np.max(x, axis=0))


@pytest.mark.parametrize("k", [0, 1])
def test_logsoftmax_over_an_empty_axis(k):
    x = np.zeros((2, 0), dtype="float32")
    check_error(ValueError, "logsoftmax", both(ops.logsoftmax)[k], x)


@pytest.mark.parametrize("k", [0, 1])
def test_int32_plus_an_int_out_of_range(k):
    x = np.array([1, 2], dtype=np.int32)
    check_error(OverflowError, "add", both(lambda t: t + 2**40)[k], x)
    check_error(OverflowError, "mul", both(lambda t: t * 2**40)[k], x)
    got = both(lambda t: t + 2**30)[k](x).numpy()
    np.testing.assert_array_equal(got, x + 2**30)


def test_int_to_a_negative_int_power():
    a = nc.Tensor(np.array([2, 3], dtype=np.int64))
    b = nc.Tensor(np.array([-1, 2], dtype=np.int64))
    check_error(ValueError, "pow", lambda: a**b)


@pytest.mark.parametrize("k", [0, 1])
def test_slice_with_too_few_specs(k):
    check_error(ValueError, "slice", both(lambda t: t.slice([slice(0, 1)]))[k], x23())


@pytest.mark.parametrize("k", [0, 1])
def test_dilate_negative_dilation(k):
    check_error(ValueError, "dilate", both(lambda t: ops.dilate(t, (0,), -1))[k], x23())
    check_error(TypeError, "dilate", both(lambda t: ops.dilate(t, (0,), 1.5))[k], x23())


@pytest.mark.parametrize("k", [0, 1])
@pytest.mark.parametrize("other", ["a", None, object()])
def test_tensor_plus_a_non_number(k, other):
    check_error(TypeError, "add", both(lambda t: t + other)[k], x23())
    check_error(TypeError, "add", both(lambda t: other + t)[k], x23())
    check_error(TypeError, "mul", both(lambda t: t * other)[k], x23())


@pytest.mark.parametrize("k", [0, 1])
@pytest.mark.parametrize("base", [-2.0, 0, 0.0, -0.0, 2.0, -1])
def test_scalar_to_a_tensor_power(k, base):
    x = np.array([0.0, 0.5, 1.0, 2.0, -1.0, 3.0], dtype="float32")
    got = both(lambda t: base**t)[k](x).numpy()
    with np.errstate(all="ignore"):
        want = np.power(np.float32(base), x)
    assert got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_device_given_by_name():
    t = nc.Tensor([1.0], device="cpu")
    assert t.device == nc.cpu()
    assert nc.Tensor([1.0], device="cpu_numpy").device == nc.cpu_numpy()
    assert nc.init.ones(2, device="cpu_numpy").device == nc.cpu_numpy()
    check_error(ValueError, "device", lambda: nc.Tensor([1.0], device="tpu"))
    check_error(TypeError, "device", lambda: nc.Tensor([1.0], device=3))


@pytest.mark.parametrize("k", [0, 1])
def test_float_axes(k):
    check_error(TypeError, "summation", both(lambda t: t.sum(axes=1.0))[k], x23())
    check_error(TypeError, "summation", both(lambda t: ops.summation(t, (0, 1.0)))[k], x23())
    got = both(lambda t: t.sum(axes=np.int64(1)))[k](x23()).numpy()
    np.testing.assert_array_equal(got, x23().sum(axis=1))


@pytest.mark.parametrize(
    "call,error,match",
    [
        (
            lambda g, w, x: g.conv_input_grad(w, 0, 1, (5, 6)),
            ValueError,
            "conv_input_grad: stride 0",
        ),
        (lambda g, w, x: g.conv_input_grad(w, 1.5, 1, (5, 6)), TypeError, "conv_input_grad"),
        (lambda g, w, x: g.conv_input_grad(w, 2, 1, (5,)), TypeError, "conv_input_grad: hw"),
        (lambda g, w, x: x.conv_weight_grad(g, 2, -1, (3, 3)), ValueError, "conv_weight_grad"),
        (lambda g, w, x: x.conv_weight_grad(g, 2, 1, 3), TypeError, "conv_weight_grad: khw"),
    ],
)
def test_conv_gradient_ops_name_themselves_in_errors(call, error, match):
    g = nc.Tensor(np.ones((1, 3, 3, 4), "float32"))
    w = nc.Tensor(np.ones((3, 3, 2, 4), "float32"))
    x = nc.Tensor(np.ones((1, 5, 6, 2), "float32"))
    with pytest.raises(error, match=match):
        call(g, w, x)
