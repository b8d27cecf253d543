"""Every needle op, table-driven: forward vs numpy, gradients vs finite differences.

One `Case` per op variant. Each case is checked for
  - forward (float32) against a numpy reference written here, and jit forward == eager forward;
  - `Tensor.backward()` (float64) against central finite differences of the numpy reference;
  - `grad`, `jit(grad)` and the `differentiate` graph pass against `backward()`;
  - second order (smooth ops) against finite differences of the first-order gradient.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest

import needlec as nc
import needlec.passes
from needlec import ops
from needlec.codegen.reference import run_graph

EPS = 1e-6  # finite-difference step (float64)
GRAD_TOL = 1e-6  # gradients vs finite differences, relative and absolute


# ---------------------------------------------------------------- input samplers (float64)


def normal(rng, shape):
    return np.asarray(rng.standard_normal(shape))


def positive(rng, shape):
    return np.asarray(rng.uniform(0.5, 2.0, shape))


def nonzero(rng, shape):
    """|x| in [0.2, 2]: away from the kinks of relu and the pole of 1/x."""
    return np.asarray(rng.uniform(0.2, 2.0, shape) * rng.choice([-1.0, 1.0], shape))


def shifted(offset):
    def sample(rng, shape):
        return offset + np.asarray(rng.standard_normal(shape))

    return sample


# ---------------------------------------------------------------- numpy references


def np_transpose(a, axes=None):
    i, j = (a.ndim - 2, a.ndim - 1) if axes is None else axes
    return np.swapaxes(a, i, j)


def np_logsumexp(a, axes=None):
    m = np.max(a, axis=axes, keepdims=True)
    out = np.log(np.sum(np.exp(a - m), axis=axes))
    return out + m.reshape(out.shape)


def np_logsoftmax(a):
    return a - np_logsumexp(a, 1)[:, None]


def np_dilate(a, axes, dilation):
    axes = [ax % a.ndim for ax in axes]  # negative axes count from the end, as in numpy
    shape = [n * (dilation + 1) if i in axes else n for i, n in enumerate(a.shape)]
    out = np.zeros(shape, a.dtype)
    out[
        tuple(slice(None, None, dilation + 1) if i in axes else slice(None) for i in range(a.ndim))
    ] = a
    return out


def np_undilate(a, axes, dilation):
    return a[
        tuple(slice(None, None, dilation + 1) if i in axes else slice(None) for i in range(a.ndim))
    ]


def np_conv(x, w, stride=1, padding=1):
    """NHWC x (N,H,W,Cin), w (K,K,Cin,Cout): a sum over kernel offsets of strided patches @ w[i,j]."""
    x = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    k = w.shape[0]
    ho, wo = (x.shape[1] - k) // stride + 1, (x.shape[2] - k) // stride + 1
    out = np.zeros((x.shape[0], ho, wo, w.shape[3]), np.result_type(x, w))
    for i in range(k):
        for j in range(k):
            patch = x[
                :, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride
            ]
            out += patch @ w[i, j]
    return out


def np_conv_input_grad(g, w, stride, padding, hw):
    """The gradient of np_conv's x: each kernel offset's patch gets g @ w[i, j].T back."""
    k = w.shape[0]
    n, ho, wo, _ = g.shape
    dx = np.zeros((n, hw[0] + 2 * padding, hw[1] + 2 * padding, w.shape[2]), np.result_type(g, w))
    for i in range(k):
        for j in range(k):
            dx[
                :, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride
            ] += g @ w[i, j].T
    return dx[:, padding : padding + hw[0], padding : padding + hw[1]]


def np_conv_weight_grad(x, g, stride, padding, khw):
    """The gradient of np_conv's w: each kernel offset's patch, contracted with g."""
    x = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    n, ho, wo, cout = g.shape
    dw = np.zeros((*khw, x.shape[3], cout), np.result_type(x, g))
    for i in range(khw[0]):
        for j in range(khw[1]):
            patch = x[
                :, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride
            ]
            dw[i, j] = patch.reshape(-1, x.shape[3]).T @ g.reshape(-1, cout)
    return dw


def np_flip(a, axes):
    return np.flip(a, axes)


def np_sigmoid(a):
    return 1 / (1 + np.exp(-a))


# ---------------------------------------------------------------- the table


@dataclass(frozen=True)
class Case:
    name: str
    fn: Callable  # needlec, called as fn(*tensors, **kwargs)
    ref: Callable  # numpy, called as ref(*arrays, **kwargs)
    shapes: tuple
    sample: Callable | tuple = normal  # one sampler, or one per input
    kwargs: dict = field(default_factory=dict)
    tol: float = 1e-5  # forward tolerance (float32 vs a float64 reference)
    second: bool = False  # smooth: check second order
    fd: bool = True  # finite differences possible (False for inputs around 1e10)


def case(name, fn, ref, shapes, sample=normal, *, tol=1e-5, second=False, fd=True, **kwargs):
    return Case(name, fn, ref, tuple(shapes), sample, kwargs, tol, second, fd)


ARRAY = np.linspace(-1.0, 1.0, 12).reshape(3, 4).astype("float32")  # a plain array operand
M = 1e-4  # forward tolerance for matmul and conv (sums of products in float32)


def _stack_case(name, shapes, axis):
    return case(
        name,
        lambda *xs, axis: ops.stack(xs, axis),
        lambda *xs, axis: np.stack(xs, axis),
        shapes,
        axis=axis,
    )


CASES = [
    # elementwise binary, incl. numpy broadcasting
    case("add", ops.add, np.add, [(3, 4), (3, 4)]),
    case("add-bcast-col-row", ops.add, np.add, [(3, 1), (1, 4)]),
    case("add-bcast-left-pad", ops.add, np.add, [(2, 3, 4), (4,)]),
    case("add-0d", ops.add, np.add, [(), ()]),
    case("add-0d-with-2d", ops.add, np.add, [(), (2, 3)]),
    case("add_scalar", ops.add_scalar, lambda a, scalar: a + scalar, [(3, 4)], scalar=1.5),
    case("add_scalar-0d", ops.add_scalar, lambda a, scalar: a + scalar, [()], scalar=-2.0),
    case("multiply", ops.multiply, np.multiply, [(3, 4), (3, 4)], second=True),
    case("multiply-bcast", ops.multiply, np.multiply, [(2, 1, 4), (3, 1)], second=True),
    case("multiply-size1", ops.multiply, np.multiply, [(1, 1), (1, 1)], second=True),
    case("mul_scalar", ops.mul_scalar, lambda a, scalar: a * scalar, [(3, 4)], scalar=-2.5),
    case("power", ops.power, np.power, [(2, 3), (2, 3)], positive, second=True),
    case("power-bcast", ops.power, np.power, [(2, 3), (1, 3)], positive, second=True),
    *[
        case(
            f"power_scalar-c{c}",
            ops.power_scalar,
            lambda a, scalar: np.power(a, scalar),
            [(3, 4)],
            sample,
            second=True,
            scalar=c,
        )
        for c, sample in [
            (2, normal),
            (3, normal),
            (0, normal),
            (1, normal),
            (-2, nonzero),
            (-1.5, positive),
            (0.5, positive),
            (2.5, positive),
        ]
    ],
    case("divide", ops.divide, np.divide, [(3, 4), (3, 4)], (normal, nonzero), second=True),
    case("divide-bcast", ops.divide, np.divide, [(2, 3), (3,)], (normal, nonzero), second=True),
    case("divide-0d-by-2d", ops.divide, np.divide, [(), (2, 2)], (normal, nonzero), second=True),
    case("divide_scalar", ops.divide_scalar, lambda a, scalar: a / scalar, [(3, 4)], scalar=4.0),
    case("maximum", ops.maximum, np.maximum, [(3, 4), (3, 4)]),
    case("maximum-bcast", ops.maximum, np.maximum, [(4, 1), (1, 3)]),
    case("maximum-0d-with-2d", ops.maximum, np.maximum, [(), (2, 3)]),
    # elementwise unary
    case("negate", ops.negate, np.negative, [(3, 4)]),
    case("negate-0d", ops.negate, np.negative, [()]),
    case("log", ops.log, np.log, [(3, 4)], positive, second=True),
    case("log-0d", ops.log, np.log, [()], positive, second=True),
    case("exp", ops.exp, np.exp, [(3, 4)], second=True),
    case("exp-0d", ops.exp, np.exp, [()], second=True),
    case("relu", ops.relu, lambda a: np.maximum(a, 0), [(3, 4)], nonzero),
    case("relu-0d", ops.relu, lambda a: np.maximum(a, 0), [()], nonzero),
    case("tanh", ops.tanh, np.tanh, [(3, 4)], second=True),
    case("sqrt", ops.sqrt, np.sqrt, [(3, 4)], positive, second=True),
    case("sigmoid", ops.sigmoid, np_sigmoid, [(3, 4)], second=True),
    # movement
    case("transpose-default-2D", ops.transpose, np_transpose, [(3, 4)]),
    case("transpose-default-3D", ops.transpose, np_transpose, [(2, 3, 4)]),
    case("transpose-axes-0-2", ops.transpose, np_transpose, [(2, 3, 4)], axes=(0, 2)),
    case("transpose-axes-1-0", ops.transpose, np_transpose, [(2, 3, 4)], axes=(1, 0)),
    case("transpose-size1", ops.transpose, np_transpose, [(1, 4)]),
    case("transpose-negative-axes", ops.transpose, np_transpose, [(2, 3, 4)], axes=(-1, -3)),
    case("reshape-merge", ops.reshape, np.reshape, [(2, 3, 4)], shape=(6, 4)),
    case("reshape-split-size1", ops.reshape, np.reshape, [(6,)], shape=(2, 1, 3)),
    case("reshape-0d-to-2d", ops.reshape, np.reshape, [()], shape=(1, 1)),
    case("reshape-to-0d", ops.reshape, np.reshape, [(1,)], shape=()),
    case("broadcast_to-col", ops.broadcast_to, np.broadcast_to, [(3, 1)], shape=(3, 4)),
    case("broadcast_to-left-pad", ops.broadcast_to, np.broadcast_to, [(4,)], shape=(2, 3, 4)),
    case("broadcast_to-0d", ops.broadcast_to, np.broadcast_to, [()], shape=(2, 3)),
    case("broadcast_to-size1-mixed", ops.broadcast_to, np.broadcast_to, [(1, 1)], shape=(2, 1, 3)),
    case("broadcast_to-same", ops.broadcast_to, np.broadcast_to, [(2, 3)], shape=(2, 3)),
    case("broadcast_to-middle", ops.broadcast_to, np.broadcast_to, [(2, 1, 3)], shape=(2, 4, 3)),
    case("summation-all", ops.summation, np.sum, [(3, 4)]),
    case("summation-axis1", ops.summation, lambda a, axes: np.sum(a, axis=axes), [(3, 4)], axes=1),
    case(
        "summation-axes-0-2",
        ops.summation,
        lambda a, axes: np.sum(a, axis=axes),
        [(2, 3, 4)],
        axes=(0, 2),
    ),
    case(
        "summation-size1-axis",
        ops.summation,
        lambda a, axes: np.sum(a, axis=axes),
        [(3, 1, 2)],
        axes=1,
    ),
    case("summation-0d", ops.summation, np.sum, [()]),
    case(
        "summation-negative-axis",
        ops.summation,
        lambda a, axes: np.sum(a, axis=axes),
        [(2, 3, 4)],
        axes=-1,
    ),
    case("flip-axis0", ops.flip, np_flip, [(3, 4)], axes=(0,)),
    case("flip-both", ops.flip, np_flip, [(3, 4)], axes=(0, 1)),
    case("flip-3D-axis1-2", ops.flip, np_flip, [(2, 3, 4)], axes=(1, 2)),
    case("flip-no-axes", ops.flip, np_flip, [(2, 3)], axes=()),
    case("dilate-axis0-d1", ops.dilate, np_dilate, [(2, 3)], axes=(0,), dilation=1),
    case("dilate-both-d2", ops.dilate, np_dilate, [(2, 3)], axes=(0, 1), dilation=2),
    case("dilate-negative-axis", ops.dilate, np_dilate, [(2, 3)], axes=(-1,), dilation=1),
    case("dilate-d0", ops.dilate, np_dilate, [(2, 3)], axes=(0,), dilation=0),
    case("undilate-axis0-d1", ops.undilate, np_undilate, [(4, 3)], axes=(0,), dilation=1),
    case("undilate-both-d2", ops.undilate, np_undilate, [(6, 6)], axes=(0, 1), dilation=2),
    case("undilate-uneven", ops.undilate, np_undilate, [(5, 4)], axes=(0, 1), dilation=1),
    _stack_case("stack-axis0", [(2, 3)] * 3, axis=0),
    _stack_case("stack-axis1", [(2, 3)] * 3, axis=1),
    _stack_case("stack-axis-last", [(2, 3)] * 2, axis=2),
    _stack_case("stack-0d", [()] * 3, axis=0),
    case(
        "stack-single",
        lambda *xs, axis: ops.stack(xs, axis),
        lambda *xs, axis: np.stack(xs, axis),
        [(2, 3)],
        axis=0,
    ),
    case(
        "split-axis0-elem1",
        lambda a, axis: ops.split(a, axis)[1],
        lambda a, axis: np.take(a, 1, axis),
        [(3, 4)],
        axis=0,
    ),
    case(
        "split-axis1-two-elems",
        lambda a, axis: ops.split(a, axis)[0] * ops.split(a, axis)[2],
        lambda a, axis: np.take(a, 0, axis) * np.take(a, 2, axis),
        [(2, 3, 2)],
        axis=1,
    ),
    case(
        "split-size1-axis",
        lambda a, axis: ops.split(a, axis)[0],
        lambda a, axis: np.take(a, 0, axis),
        [(3, 1)],
        axis=1,
    ),
    case(
        "split-tuple_get_item",
        lambda a, axis: ops.tuple_get_item(ops.split(a, axis), 2),
        lambda a, axis: np.take(a, 2, axis),
        [(4, 2)],
        axis=0,
    ),
    case(
        "make_tuple-get-item",
        lambda a, b: ops.tuple_get_item(ops.make_tuple(a, b), 1) * a,
        lambda a, b: b * a,
        [(2, 3), (2, 3)],
    ),
    # compute
    case("matmul-2D", ops.matmul, np.matmul, [(3, 4), (4, 2)], tol=M, second=True),
    case("matmul-size1", ops.matmul, np.matmul, [(1, 3), (3, 1)], tol=M, second=True),
    case("matmul-batched-3Dx3D", ops.matmul, np.matmul, [(2, 3, 4), (2, 4, 2)], tol=M, second=True),
    case("matmul-batched-2Dx3D", ops.matmul, np.matmul, [(3, 4), (2, 4, 2)], tol=M, second=True),
    case("matmul-batched-4Dx2D", ops.matmul, np.matmul, [(2, 2, 2, 3), (3, 2)], tol=M, second=True),
    case(
        "matmul-bcast-leading",
        ops.matmul,
        np.matmul,
        [(2, 1, 2, 3), (1, 2, 3, 2)],
        tol=M,
        second=True,
    ),
    case(
        "matmul-bcast-ranks-4Dx3D",
        ops.matmul,
        np.matmul,
        [(2, 1, 2, 3), (3, 3, 2)],
        tol=M,
        second=True,
    ),
    case("logsoftmax", ops.logsoftmax, np_logsoftmax, [(3, 5)], second=True),
    case("logsoftmax-size1", ops.logsoftmax, np_logsoftmax, [(1, 4)], second=True),
    case("logsoftmax-large", ops.logsoftmax, np_logsoftmax, [(2, 4)], shifted(1e3), second=True),
    case("logsumexp-all", ops.logsumexp, np_logsumexp, [(3, 4)], second=True),
    case("logsumexp-axis1", ops.logsumexp, np_logsumexp, [(3, 4)], second=True, axes=1),
    case("logsumexp-axes-0-2", ops.logsumexp, np_logsumexp, [(2, 3, 4)], second=True, axes=(0, 2)),
    case("logsumexp-size1-axis", ops.logsumexp, np_logsumexp, [(3, 1)], second=True, axes=(1,)),
    case("logsumexp-negative-axis", ops.logsumexp, np_logsumexp, [(3, 4)], second=True, axes=-1),
    case(
        "logsumexp-large", ops.logsumexp, np_logsumexp, [(2, 4)], shifted(1e3), second=True, axes=1
    ),
    case("logsumexp-1e10", ops.logsumexp, np_logsumexp, [(2, 4)], shifted(1e10), fd=False, axes=1),
    case("logsumexp-1e10-all", ops.logsumexp, np_logsumexp, [(3,)], shifted(1e10), fd=False),
    *[
        case(
            f"conv-k{k}-s{s}-p{p}",
            ops.conv,
            np_conv,
            [(n, h, h, cin), (k, k, cin, cout)],
            tol=M,
            second=True,
            stride=s,
            padding=p,
        )
        for (n, h, cin, cout, k, s, p) in [
            (2, 4, 2, 3, 3, 1, 1),
            (1, 5, 2, 2, 3, 2, 1),
            (1, 4, 3, 2, 1, 1, 0),
            (1, 5, 2, 2, 3, 1, 0),
            (1, 4, 2, 2, 3, 1, 2),
            (1, 6, 2, 2, 3, 2, 0),  # (6 - 3) % 2 == 1: the last row reaches no window
            (1, 3, 2, 2, 3, 2, 2),
            (1, 5, 1, 2, 1, 2, 0),
            (1, 3, 2, 2, 1, 1, 1),  # padding larger than the kernel's reach
            (1, 3, 2, 2, 1, 2, 2),
            (1, 9, 2, 2, 2, 3, 0),  # a kernel smaller than the stride: phases without taps
            (1, 10, 1, 2, 7, 4, 3),  # ResNet9's stem: 7x7, stride 4
            (2, 7, 2, 1, 5, 3, 2),
        ]
    ],
    case(
        "conv-nonsquare-image",
        ops.conv,
        np_conv,
        [(1, 4, 5, 2), (3, 3, 2, 2)],
        tol=M,
        second=True,
        stride=1,
        padding=1,
    ),
    case(
        "conv-nonsquare-image-s2",
        ops.conv,
        np_conv,
        [(1, 5, 3, 2), (3, 3, 2, 2)],
        tol=M,
        second=True,
        stride=2,
        padding=1,
    ),
    case(
        "conv-default-padding", ops.conv, np_conv, [(1, 4, 4, 2), (3, 3, 2, 2)], tol=M, second=True
    ),
    # a conv's two gradients as ops of their own: (g, w) -> dx and (x, g) -> dw
    *[
        case(
            f"conv-input-grad-{h}x{w}-k{k}-s{s}-p{p}",
            lambda g, wt, **kw: g.conv_input_grad(wt, **kw),
            np_conv_input_grad,
            [(n, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1, cout), (k, k, cin, cout)],
            tol=M,
            second=True,
            stride=s,
            padding=p,
            hw=(h, w),
        )
        for (n, h, w, cin, cout, k, s, p) in [
            (2, 4, 4, 2, 3, 3, 1, 1),
            (1, 6, 5, 2, 2, 3, 2, 0),  # rows and columns no window reaches get zeros
            (1, 10, 10, 1, 2, 7, 4, 3),
            (1, 9, 9, 2, 2, 2, 3, 0),
        ]
    ],
    *[
        case(
            f"conv-weight-grad-{h}x{w}-k{k}-s{s}-p{p}",
            lambda x, g, **kw: x.conv_weight_grad(g, **kw),
            np_conv_weight_grad,
            [(n, h, w, cin), (n, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1, cout)],
            tol=M,
            second=True,
            stride=s,
            padding=p,
            khw=(k, k),
        )
        for (n, h, w, cin, cout, k, s, p) in [
            (2, 4, 4, 2, 3, 3, 1, 1),
            (1, 6, 5, 2, 2, 3, 2, 0),
            (1, 10, 10, 1, 2, 7, 4, 3),
            (1, 9, 9, 2, 2, 2, 3, 0),
        ]
    ],
    # Tensor operators and methods
    case("op-add", lambda a, b: a + b, np.add, [(3, 4), (4,)]),
    case("op-sub", lambda a, b: a - b, np.subtract, [(3, 4), (3, 1)]),
    case("op-mul", lambda a, b: a * b, np.multiply, [(3, 4), (3, 4)], second=True),
    case("op-div", lambda a, b: a / b, np.divide, [(3, 4), (3, 4)], (normal, nonzero), second=True),
    case("op-pow", lambda a, b: a**b, np.power, [(3, 4), (3, 4)], positive, second=True),
    case("op-matmul", lambda a, b: a @ b, np.matmul, [(2, 3, 4), (4, 2)], tol=M, second=True),
    case("op-neg", lambda a: -a, np.negative, [(3, 4)]),
    case("op-mul-ndarray-right", lambda a: a * ARRAY, lambda a: a * ARRAY, [(3, 4)]),
    case("op-add-ndarray-bcast", lambda a: a + ARRAY[0], lambda a: a + ARRAY[0], [(3, 4)]),
    case("op-add-scalar-right", lambda a: a + 2.0, lambda a: a + 2.0, [(3, 4)]),
    case("op-add-scalar-left", lambda a: 2.0 + a, lambda a: 2.0 + a, [(3, 4)]),
    case("op-sub-scalar-right", lambda a: a - 2.0, lambda a: a - 2.0, [(3, 4)]),
    case("op-sub-scalar-left", lambda a: 2.0 - a, lambda a: 2.0 - a, [(3, 4)]),
    case("op-mul-scalar-right", lambda a: a * 3.0, lambda a: a * 3.0, [(3, 4)]),
    case("op-mul-scalar-left", lambda a: 3.0 * a, lambda a: 3.0 * a, [(3, 4)]),
    case("op-mul-int-scalar", lambda a: a * 3, lambda a: a * 3, [(3, 4)]),
    case("op-div-scalar-right", lambda a: a / 4.0, lambda a: a / 4.0, [(3, 4)]),
    case(
        "op-div-scalar-left", lambda a: 2.0 / a, lambda a: 2.0 / a, [(3, 4)], nonzero, second=True
    ),
    case("op-pow-scalar-right", lambda a: a**2, lambda a: a**2, [(3, 4)], second=True),
    case("op-pow-scalar-left", lambda a: 2.0**a, lambda a: 2.0**a, [(3, 4)], second=True),
    case(
        "op-0d-mixed",
        lambda a, b: a * b + a / 2.0 - b,
        lambda a, b: a * b + a / 2.0 - b,
        [(), (2,)],
    ),
    case("method-sum-all", lambda a: a.sum(), np.sum, [(3, 4)]),
    case("method-sum-axes", lambda a: a.sum((0, 2)), lambda a: a.sum((0, 2)), [(2, 3, 4)]),
    case("method-reshape", lambda a: a.reshape((4, 3)), lambda a: a.reshape(4, 3), [(3, 4)]),
    case(
        "method-broadcast_to",
        lambda a: a.broadcast_to((2, 3, 4)),
        lambda a: np.broadcast_to(a, (2, 3, 4)),
        [(3, 1)],
    ),
    case("method-transpose", lambda a: a.transpose(), np_transpose, [(2, 3, 4)]),
    case(
        "method-transpose-axes",
        lambda a: a.transpose((0, 1)),
        lambda a: np.swapaxes(a, 0, 1),
        [(2, 3, 4)],
    ),
    case(
        "method-matmul", lambda a, b: a.matmul(b), np.matmul, [(3, 4), (4, 2)], tol=M, second=True
    ),
    # a small composite: gradients flow through several ops and a reused input
    case(
        "composite-reuse",
        lambda a, b: ops.tanh(a @ b) * ops.exp(a).sum(1).reshape((3, 1)),
        lambda a, b: np.tanh(a @ b) * np.exp(a).sum(1).reshape(3, 1),
        [(3, 4), (4, 2)],
        tol=M,
        second=True,
    ),
]

IDS = [c.name for c in CASES]
assert len(set(IDS)) == len(IDS), "case names must be unique"
FD_CASES = [c for c in CASES if c.fd]
SECOND_CASES = [c for c in CASES if c.second]


# ---------------------------------------------------------------- helpers


def _rng(c: Case, salt: str = "") -> np.random.Generator:
    return np.random.default_rng(zlib.crc32((c.name + salt).encode()))


def inputs(c: Case, dtype="float64") -> list[np.ndarray]:
    """The case's inputs, the same for every test (seeded by the case name)."""
    rng = _rng(c)
    samplers = c.sample if isinstance(c.sample, tuple) else (c.sample,) * len(c.shapes)
    return [s(rng, shape).astype(dtype) for s, shape in zip(samplers, c.shapes, strict=True)]


def reference(c: Case, xs) -> np.ndarray:
    return np.asarray(c.ref(*[np.asarray(x, np.float64) for x in xs], **c.kwargs))


def weights(c: Case, xs, salt: str = "c") -> np.ndarray:
    """A fixed random array of the output's shape: f = sum(op(x) * weights) is a scalar loss."""
    return np.asarray(_rng(c, salt).standard_normal(reference(c, xs).shape))


def loss(c: Case, w: np.ndarray) -> Callable:
    """f(*xs) = sum(op(*xs) * w), in needlec (the tensor of w is made inside any trace)."""

    def f(*xs):
        return (c.fn(*xs, **c.kwargs) * nc.Tensor(w, requires_grad=False)).sum()

    return f


def finite_diff(f: Callable, xs: list[np.ndarray], eps: float = EPS) -> list[np.ndarray]:
    """Central differences of the scalar f(*xs) with respect to each array of xs (in place, restored)."""
    grads = []
    for x in xs:
        g = np.zeros_like(x)
        for j in range(x.size):
            old = x.flat[j]
            x.flat[j] = old + eps
            hi = float(f(*xs))
            x.flat[j] = old - eps
            lo = float(f(*xs))
            x.flat[j] = old
            g.flat[j] = (hi - lo) / (2 * eps)
        grads.append(g)
    return grads


def assert_close(got, want, rtol=GRAD_TOL, atol=GRAD_TOL, what=""):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=what)


def backward_grads(c: Case, xs: list[np.ndarray], w: np.ndarray) -> list[np.ndarray]:
    ts = [nc.Tensor(x) for x in xs]
    loss(c, w)(*ts).backward()
    for t in ts:
        assert t.grad is not None, f"{c.name}: an input got no .grad"
        assert t.grad.dtype == "float64", f"{c.name}: grad dtype {t.grad.dtype}"
    return [t.grad.numpy() for t in ts]


# ---------------------------------------------------------------- per-case tests


@pytest.mark.parametrize("c", CASES, ids=IDS)
def test_forward(c: Case, device):
    xs = inputs(c, "float32")
    out = c.fn(*[nc.Tensor(x, device=device) for x in xs], **c.kwargs)
    assert out.dtype == "float32", f"{c.name}: float32 inputs gave {out.dtype}"
    assert out.device == device, f"{c.name}: inputs on {device!r} gave an output on {out.device!r}"
    got = out.numpy()
    assert np.all(np.isfinite(got))
    assert_close(got, reference(c, xs), rtol=c.tol, atol=c.tol, what=f"{c.name} forward")


@pytest.mark.parametrize("c", CASES, ids=IDS)
def test_float32_gradients_stay_float32(c: Case, device):
    ts = [nc.Tensor(x, device=device) for x in inputs(c, "float32")]
    c.fn(*ts, **c.kwargs).sum().backward()
    assert [t.grad.dtype for t in ts] == ["float32"] * len(ts)
    assert all(t.grad.device == device for t in ts)


@pytest.mark.parametrize("c", CASES, ids=IDS)
def test_jit_forward_matches_eager(c: Case, device):
    xs = inputs(c, "float32")
    eager = c.fn(*[nc.Tensor(x) for x in xs], **c.kwargs).numpy()
    ts = [nc.Tensor(x, device=device, requires_grad=False) for x in xs]
    jitted = nc.jit(lambda *ts: c.fn(*ts, **c.kwargs))(*ts)
    assert jitted.dtype == "float32" and jitted.device == device
    # sums of products (matmul, conv and its gradients) may add in another order compiled than
    # eagerly: a few float32 eps of their terms' size (about 1 here) apart
    atol = 2e-6 if c.tol >= M else 1e-7
    assert_close(jitted.numpy(), eager, rtol=1e-6, atol=atol, what=f"{c.name} jit forward")


@pytest.mark.parametrize("c", FD_CASES, ids=[c.name for c in FD_CASES])
def test_backward_vs_finite_differences(c: Case):
    xs = inputs(c)
    w = weights(c, xs)
    want = finite_diff(lambda *a: np.sum(reference(c, a) * w), [x.copy() for x in xs])
    for i, (got, fd) in enumerate(zip(backward_grads(c, xs, w), want, strict=True)):
        assert_close(got, fd, what=f"{c.name} d/dx{i}")


@pytest.mark.parametrize("c", CASES, ids=IDS)
def test_grad_jit_and_graph_pass_match_backward(c: Case):
    xs = inputs(c)
    w = weights(c, xs)
    f = loss(c, w)
    argnums = tuple(range(len(xs)))
    want = backward_grads(c, xs, w)
    eager = nc.grad(f, argnums=argnums)(*xs)
    jitted = nc.jit(nc.grad(f, argnums=argnums))(*xs)
    graph = needlec.passes.differentiate(nc.make_graph(f)(*xs))
    from_graph = run_graph(graph, xs)
    for i, g in enumerate(want):
        assert_close(eager[i].numpy(), g, 1e-12, 1e-12, f"{c.name} grad d/dx{i}")
        assert_close(jitted[i].numpy(), g, 1e-12, 1e-12, f"{c.name} jit(grad) d/dx{i}")
        assert_close(from_graph[i], g, 1e-12, 1e-12, f"{c.name} differentiate d/dx{i}")


@pytest.mark.parametrize("c", SECOND_CASES, ids=[c.name for c in SECOND_CASES])
def test_second_order_vs_finite_differences(c: Case):
    xs = inputs(c)
    w = weights(c, xs)
    vs = [np.asarray(_rng(c, f"v{i}").standard_normal(x.shape)) for i, x in enumerate(xs)]
    argnums = tuple(range(len(xs)))
    df = nc.grad(loss(c, w), argnums=argnums)

    def h(*a):  # directional first derivative: sum_i <grad_i f(a), v_i>
        return sum(
            (g * nc.Tensor(v, requires_grad=False)).sum() for g, v in zip(df(*a), vs, strict=True)
        )

    got = nc.grad(h, argnums=argnums)(*xs)
    want = finite_diff(lambda *a: h(*a).numpy(), [x.copy() for x in xs])
    for i, fd in enumerate(want):
        assert_close(got[i].numpy(), fd, 1e-5, 1e-5, f"{c.name} d2/dx{i}")
    # needle's way: differentiate the .grad that backward() built
    ts = [nc.Tensor(x) for x in xs]
    loss(c, w)(*ts).backward()
    sum(
        (t.grad * nc.Tensor(v, requires_grad=False)).sum() for t, v in zip(ts, vs, strict=True)
    ).backward()
    for i, (t, fd) in enumerate(zip(ts, want, strict=True)):
        assert_close(t.grad.numpy(), fd, 1e-5, 1e-5, f"{c.name} backward() twice d2/dx{i}")


# ---------------------------------------------------------------- single tests


def test_logsumexp_stable_values_and_gradient():
    offsets = np.array([[0.0, -1.0, 0.5], [2.0, 2.0, -3.0]])
    x = 1e10 + offsets
    lse = ops.logsumexp(nc.Tensor(x), axes=1)
    want = 1e10 + np.log(np.exp(offsets).sum(1))
    assert_close(lse.numpy(), want, rtol=1e-15, atol=0, what="logsumexp(1e10 + d)")
    t = nc.Tensor(x)
    ops.logsumexp(t, axes=(1,)).sum().backward()
    softmax = np.exp(offsets) / np.exp(offsets).sum(1, keepdims=True)
    assert_close(t.grad.numpy(), softmax, what="d logsumexp(1e10 + d)")
    y = ops.logsumexp(nc.Tensor(x.astype("float32"))).numpy()
    assert np.isfinite(y) and abs(y - 1e10) < 1e4


def test_grad_set_on_intermediate_nodes():
    x = nc.Tensor(np.array([[0.5, -1.0], [2.0, 0.0]]))
    y = ops.exp(x)
    z = y * 2.0
    s = z.sum()
    s.backward()
    assert_close(s.grad.numpy(), 1.0, what="s.grad")
    assert_close(z.grad.numpy(), np.ones((2, 2)), what="z.grad")
    assert_close(y.grad.numpy(), np.full((2, 2), 2.0), what="y.grad")
    assert_close(x.grad.numpy(), 2 * np.exp(x.numpy()), what="x.grad")


def test_grad_accumulates_over_uses_and_respects_out_grad():
    x = nc.Tensor(np.array([1.0, 2.0, 3.0]))
    y = x * x + x  # x used three times
    seed = np.array([1.0, -2.0, 0.5])
    y.backward(nc.Tensor(seed, requires_grad=False))
    assert_close(x.grad.numpy(), seed * (2 * x.numpy() + 1), what="x.grad")


@pytest.mark.parametrize(
    "fn",
    [
        lambda a, b: a + b,
        lambda a, b: ops.multiply(a, b),
        lambda a, b: ops.exp(a),
        lambda a, b: ops.summation(a, axes=0),
        lambda a, b: a @ ops.transpose(b),
        lambda a, b: ops.stack([a, b], 0),
        lambda a, b: ops.split(a, 0)[0],
        lambda a, b: a * 2.0 - 1.0,
    ],
    ids=["add", "multiply", "exp", "summation", "matmul", "stack", "split", "scalar-ops"],
)
def test_no_requires_grad_gives_detached_constant(fn):
    a = nc.Tensor(np.ones((2, 3), "float32"), requires_grad=False)
    b = nc.Tensor(np.ones((2, 3), "float32"), requires_grad=False)
    out = fn(a, b)
    assert out.op is None and out.is_leaf()
    assert not out.requires_grad
    assert out.inputs == []


def test_one_input_requiring_grad_records_the_op():
    a = nc.Tensor(np.ones((2, 3), "float32"), requires_grad=False)
    b = nc.Tensor(np.ones((2, 3), "float32"))
    out = a * b
    assert out.op is not None and out.requires_grad and not out.is_leaf()


def test_gradient_as_tuple():
    a = nc.Tensor(np.array([[1.0, 2.0], [3.0, 4.0]]))
    b = nc.Tensor(np.array([[0.5, -1.0], [2.0, 1.5]]))
    g = nc.Tensor(np.array([[1.0, 2.0], [-1.0, 0.5]]), requires_grad=False)
    node = ops.multiply(a, b)
    grads = node.op.gradient_as_tuple(g, node)
    assert isinstance(grads, tuple) and len(grads) == 2
    assert_close(grads[0].numpy(), g.numpy() * b.numpy(), what="d/da")
    assert_close(grads[1].numpy(), g.numpy() * a.numpy(), what="d/db")
    node = ops.exp(a)
    grads = node.op.gradient_as_tuple(g, node)
    assert isinstance(grads, tuple) and len(grads) == 1
    assert_close(grads[0].numpy(), g.numpy() * np.exp(a.numpy()), what="d exp/da")
    node = ops.summation(a, axes=1)
    g1 = nc.Tensor(np.array([1.0, -2.0]), requires_grad=False)
    (ga,) = node.op.gradient_as_tuple(g1, node)
    assert_close(ga.numpy(), np.array([[1.0, 1.0], [-2.0, -2.0]]), what="d sum/da")
