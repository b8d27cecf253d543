"""The op table: every op of the IR, its trait group, and its shape and dtype rule.

This file is the one truth about an op. Its numpy semantics are one row of
`needlec.ir.semantics.EVAL`, autodiff keeps its VJP rule in a table of its own
(`needlec.passes.autodiff.VJP`) and each backend its lowering (`needlec.codegen.llvm.render.LOWER`);
`tests/unit/test_coverage.py` fails for any op that is missing from one of them.
"""

from __future__ import annotations

import functools
import math
import operator
import os
import sys
from collections.abc import Callable
from enum import Enum, auto

import numpy as np

Shape = tuple[int, ...]

DTYPES = ("bool", "int32", "int64", "float32", "float64")
FLOATS = ("float32", "float64")
SHORT = {"bool": "bool", "int32": "i32", "int64": "i64", "float32": "f32", "float64": "f64"}


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def user_frame() -> str:
    """`file:line` of the innermost stack frame outside the needlec package (the user's line)."""
    f = sys._getframe(1)
    while f is not None:
        path = os.path.abspath(f.f_code.co_filename)
        if not path.startswith(_PACKAGE_DIR + os.sep) and "<frozen" not in path:
            return f"{f.f_code.co_filename}:{f.f_lineno}"
        f = f.f_back
    return "<unknown>"


class ShapeError(ValueError):
    """An op was applied to shapes (or dtypes) it does not accept; says where, in user code."""

    def __init__(self, message: str) -> None:
        super().__init__(f"{message} (at {user_frame()})")


def as_int(value, op: str, what: str) -> int:
    """`value` as a Python int (an int or a numpy integer, as numpy takes an index), or a
    TypeError naming the op, what the value is for and the user's line: a float is never
    truncated."""
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(
            f"{op}: {what} must be an int, got {type(value).__name__} {value!r} (at {user_frame()})"
        ) from None


class Op(Enum):
    # leaves
    INPUT = auto()  # arg = (kind, index): ("arg", 0) or ("capture", 2)
    CONST = auto()  # arg = a Python scalar or a ConstArray; the node's shape is given
    RAND = auto()  # src = (seed,), arg = (distribution, stream); counter-based draws
    # unary elementwise
    NEG = auto()
    EXP = auto()
    LOG = auto()
    TANH = auto()
    RELU = auto()
    SQRT = auto()
    CAST = auto()  # arg = dtype
    STOP_GRADIENT = auto()  # the value itself; no gradient flows through (detach, .data)
    # elementwise with a Python scalar (arg = the scalar)
    ADD_SCALAR = auto()
    MUL_SCALAR = auto()
    DIV_SCALAR = auto()
    POW_SCALAR = auto()
    # binary elementwise (equal shapes; the frontend inserts broadcasts)
    ADD = auto()
    MUL = auto()
    DIV = auto()
    POW = auto()
    MAXIMUM = auto()
    CMPLT = auto()
    CMPEQ = auto()
    # ternary
    WHERE = auto()  # where(cond, x, y)
    # reductions (arg = axes; reduced dims are dropped, as in needle)
    SUM = auto()
    MAX = auto()
    LOGSUMEXP = auto()
    # movement
    RESHAPE = auto()  # arg = new shape
    BROADCAST = auto()  # arg = new shape (numpy rules, left padding with 1s)
    PERMUTE = auto()  # arg = axis order
    FLIP = auto()  # arg = axes
    PAD = auto()  # arg = ((lo, hi), ...) zero padding per dim
    SLICE = auto()  # arg = ((start, stop, step), ...) per dim, normalized, step > 0
    DILATE = auto()  # arg = (axes, dilation)
    STACK = auto()  # arg = axis, any number of sources
    # compute
    MATMUL = auto()  # batched, leading dims broadcast
    CONV = auto()  # arg = (stride, padding); NHWC input, (KH, KW, Cin, Cout) weight
    # a conv's gradients (its adjoints): the input's from (grad, weight), arg = (stride,
    # padding, H, W); the weight's from (input, grad), arg = (stride, padding, KH, KW)
    CONV_INPUT_GRAD = auto()
    CONV_WEIGHT_GRAD = auto()
    LOGSOFTMAX = auto()  # 2-D, over axis 1
    # a Python function (a user's needle TensorOp, or its gradient): arg = a `Callback` that
    # holds the function and the output's shape and dtype; opaque to every pass
    CALLBACK = auto()
    # the elementwise sum or max of a tensor over every process of the communicator
    # (`needlec.ir.collective`): arg = "sum" or "max". Several sources are one buffer, their
    # elements end to end (a bucket of gradients: one call). Opaque to every pass, so it stays
    # where the program puts it and no computation moves across it
    ALLREDUCE = auto()

    def __repr__(self) -> str:
        return f"Op.{self.name}"


LEAF = frozenset({Op.INPUT, Op.CONST})
UNARY = frozenset({Op.NEG, Op.EXP, Op.LOG, Op.TANH, Op.RELU, Op.SQRT, Op.CAST, Op.STOP_GRADIENT})
SCALAR = frozenset({Op.ADD_SCALAR, Op.MUL_SCALAR, Op.DIV_SCALAR, Op.POW_SCALAR})
BINARY = frozenset({Op.ADD, Op.MUL, Op.DIV, Op.POW, Op.MAXIMUM, Op.CMPLT, Op.CMPEQ})
COMPARE = frozenset({Op.CMPLT, Op.CMPEQ})
TERNARY = frozenset({Op.WHERE})
ELEMENTWISE = UNARY | SCALAR | BINARY | TERNARY
REDUCE = frozenset({Op.SUM, Op.MAX, Op.LOGSUMEXP})
MOVEMENT = frozenset(
    {Op.RESHAPE, Op.BROADCAST, Op.PERMUTE, Op.FLIP, Op.PAD, Op.SLICE, Op.DILATE, Op.STACK}
)
CONVS = frozenset({Op.CONV, Op.CONV_INPUT_GRAD, Op.CONV_WEIGHT_GRAD})
# ops no pass looks into: never fused with others, duplicated, folded or recomputed
OPAQUE = frozenset({Op.CALLBACK, Op.ALLREDUCE})
# what each opaque op is, for the reasons fusion gives
OPAQUE_WHAT = {Op.CALLBACK: "a Python callback", Op.ALLREDUCE: "an all-reduce (communication)"}
COMPUTE = frozenset({Op.MATMUL, Op.LOGSOFTMAX}) | CONVS | OPAQUE
RANDOM = frozenset({Op.RAND})

# the name the printer gives each op's arg
ARG_NAME = {
    Op.INPUT: "",
    Op.CONST: "",
    Op.RAND: "dist,stream",
    Op.CAST: "dtype",
    Op.SUM: "axes",
    Op.MAX: "axes",
    Op.LOGSUMEXP: "axes",
    Op.RESHAPE: "shape",
    Op.BROADCAST: "shape",
    Op.PERMUTE: "perm",
    Op.FLIP: "axes",
    Op.PAD: "widths",
    Op.SLICE: "slices",
    Op.DILATE: "axes,dilation",
    Op.STACK: "axis",
    Op.CONV: "stride,padding",
    Op.CONV_INPUT_GRAD: "stride,padding,h,w",
    Op.CONV_WEIGHT_GRAD: "stride,padding,kh,kw",
    Op.CALLBACK: "fn",
    Op.ALLREDUCE: "op",
    **{op: "c" for op in SCALAR},
}


class ConstArray:
    """A numpy array made hashable by content, so constant nodes intern like any other."""

    __slots__ = ("array", "_key")

    def __init__(self, array) -> None:
        self.array = array
        self.array.setflags(write=False)
        self._key = (array.dtype.str, array.shape, array.tobytes())

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ConstArray) and self._key == other._key

    def __repr__(self) -> str:
        if self.array.size <= 8:
            return repr(self.array.tolist())
        return f"<array {self.array.dtype}{list(self.array.shape)}>"


def uniform(flat: np.ndarray) -> bool:
    """Whether a 1-d array holds one value: equal, no NaN, and zeros of one sign (-0.0 is not
    0.0: 1/x tells them apart)."""
    first = flat[0]
    if not (flat == first).all() or np.isnan(first):
        return False
    return first != 0 or bool((np.signbit(flat) == np.signbit(first)).all())


def arg_key(arg):
    """What tells two op args apart for interning: -0.0 and 0.0 are different args."""
    if isinstance(arg, float) and arg == 0.0:
        return (arg, math.copysign(1.0, arg))
    return arg


def fmt_type(dtype: str, shape: Shape) -> str:
    """`f32[4,8]`: the printed type of a value."""
    return f"{SHORT[dtype]}[{','.join(map(str, shape))}]"


# ---------------------------------------------------------------- dtype rules


def promote(a: str, b: str) -> str:
    """Result dtype of a binary op: floats win (the wider one), then the wider int."""
    if a == b:
        return a
    fa, fb = a in FLOATS, b in FLOATS
    if fa and fb:
        return "float64"
    if fa or fb:
        return a if fa else b
    order = DTYPES
    return max(a, b, key=order.index)


def scalar_dtype(dtype: str, c: float) -> str:
    """A Python scalar is weak: it keeps a float dtype; an int tensor with a float scalar is f32."""
    if dtype in FLOATS:
        return dtype
    if isinstance(c, float) or dtype == "bool":
        return "float32" if isinstance(c, float) else "int64"
    return dtype


def float_of(dtype: str) -> str:
    return dtype if dtype in FLOATS else "float32"


# ---------------------------------------------------------------- shape rules


def normalize_axes(axes, ndim: int, op: str = "op") -> tuple[int, ...]:
    """Axes as a sorted tuple of non-negative ints; None means all."""
    if axes is None:
        return tuple(range(ndim))
    if not isinstance(axes, tuple | list | range):
        axes = (axes,)
    out = []
    for a in axes:
        a = as_int(a, op, "an axis")
        if not -ndim <= a < ndim:  # as numpy: a 0-d input has no axis 0
            raise ShapeError(f"{op}: axis {a} is out of range for a {ndim}-d input")
        out.append(a % ndim)
    if len(set(out)) != len(out):
        raise ShapeError(f"{op}: repeated axis in {tuple(axes)}")
    return tuple(sorted(out))


def broadcast_shapes(a: Shape, b: Shape, op: str = "broadcast") -> Shape:
    """numpy broadcasting of two shapes, or a ShapeError naming both."""
    n = max(len(a), len(b))
    pa, pb = (1,) * (n - len(a)) + tuple(a), (1,) * (n - len(b)) + tuple(b)
    out = []
    for x, y in zip(pa, pb, strict=True):
        if x != y and x != 1 and y != 1:
            raise ShapeError(f"{op}: shapes {tuple(a)} and {tuple(b)} cannot be broadcast together")
        out.append(y if x == 1 else x)
    return tuple(out)


def _same(op: Op, shapes: list[Shape]) -> Shape:
    if any(s != shapes[0] for s in shapes):
        raise ShapeError(f"{op.name.lower()}: shapes {' and '.join(str(s) for s in shapes)} differ")
    return shapes[0]


def _reduce(op: Op, s: Shape, arg) -> Shape:
    axes = normalize_axes(arg, len(s), op.name.lower())
    if op is Op.MAX and any(s[a] == 0 for a in axes):  # as numpy: no max of nothing
        raise ShapeError(f"max: reduction over an empty axis of shape {s} (axes {axes})")
    return tuple(d for i, d in enumerate(s) if i not in axes)


def _reshape(op: Op, s: Shape, shape) -> Shape:
    if math.prod(s) != math.prod(shape) or any(d < 0 for d in shape):
        raise ShapeError(f"reshape: cannot reshape {s} ({math.prod(s)} elements) to {shape}")
    return tuple(shape)


def _broadcast(op: Op, s: Shape, shape) -> Shape:
    shape = tuple(shape)
    if len(shape) < len(s) or broadcast_shapes(s, shape, "broadcast_to") != shape:
        raise ShapeError(f"broadcast_to: cannot broadcast {s} to {shape}")
    return shape


def _permute(op: Op, s: Shape, perm) -> Shape:
    if sorted(perm) != list(range(len(s))):
        raise ShapeError(f"permute: {tuple(perm)} is not an order of the {len(s)} axes of {s}")
    return tuple(s[p] for p in perm)


def _pad(op: Op, s: Shape, widths) -> Shape:
    if len(widths) != len(s) or any(lo < 0 or hi < 0 for lo, hi in widths):
        raise ShapeError(f"pad: widths {widths} do not fit shape {s}")
    return tuple(d + lo + hi for d, (lo, hi) in zip(s, widths, strict=True))


def _slice(op: Op, s: Shape, spec) -> Shape:
    if len(spec) != len(s):
        raise ShapeError(f"slice: {len(spec)} slices for shape {s}")
    out = []
    for d, (start, stop, step) in zip(s, spec, strict=True):
        if not (0 <= start <= stop <= d and step > 0):
            raise ShapeError(f"slice: {(start, stop, step)} does not fit a dim of size {d} in {s}")
        out.append(max(0, -(-(stop - start) // step)))
    return tuple(out)


def _dilate(op: Op, s: Shape, arg) -> Shape:
    axes, d = arg
    return tuple(n * (d + 1) if i in axes else n for i, n in enumerate(s))


def _stack(op: Op, *shapes_and_axis) -> Shape:
    *shapes, axis = shapes_and_axis
    if not shapes:
        raise ShapeError("stack: needs at least one tensor")
    s = _same(op, list(shapes))
    if not 0 <= axis <= len(s):
        raise ShapeError(f"stack: axis {axis} is out of range for {len(s)}-d inputs")
    return s[:axis] + (len(shapes),) + s[axis:]


def _matmul(op: Op, a: Shape, b: Shape, arg) -> Shape:
    if len(a) < 2 or len(b) < 2 or a[-1] != b[-2]:
        raise ShapeError(f"matmul: shapes {a} and {b} are not aligned ({a[-1:]} vs {b[-2:-1]})")
    n = max(len(a), len(b)) - 2
    batch_a, batch_b = (1,) * (n - len(a) + 2) + a[:-2], (1,) * (n - len(b) + 2) + b[:-2]
    if any(x != y and 1 not in (x, y) for x, y in zip(batch_a, batch_b, strict=True)):
        raise ShapeError(f"matmul: batch dims of shapes {a} and {b} cannot be broadcast together")
    return tuple(
        max(x, y) if 0 not in (x, y) else 0 for x, y in zip(batch_a, batch_b, strict=True)
    ) + (a[-2], b[-1])


def _conv(op: Op, x: Shape, w: Shape, arg) -> Shape:
    stride, pad = arg
    if stride <= 0 or pad < 0:
        raise ShapeError(f"conv: stride {stride} must be positive and padding {pad} not negative")
    if len(x) != 4 or len(w) != 4 or x[3] != w[2]:
        raise ShapeError(
            f"conv: input {x} (N,H,W,Cin) and weight {w} (KH,KW,Cin,Cout) do not match"
        )
    ho, wo = (x[1] + 2 * pad - w[0]) // stride + 1, (x[2] + 2 * pad - w[1]) // stride + 1
    if ho <= 0 or wo <= 0 or stride <= 0 or pad < 0:
        raise ShapeError(
            f"conv: kernel {w[:2]} with stride {stride}, padding {pad} does not fit input {x}"
        )
    return (x[0], ho, wo, w[3])


def _conv_input_grad(op: Op, g: Shape, w: Shape, arg) -> Shape:
    stride, pad, h, wd = arg
    if len(g) != 4 or len(w) != 4 or g[3] != w[3]:
        raise ShapeError(
            f"conv_input_grad: gradient {g} (N,Ho,Wo,Cout) and weight {w} (KH,KW,Cin,Cout) "
            "do not match"
        )
    if _conv(op, (g[0], h, wd, w[2]), w, (stride, pad)) != g:
        raise ShapeError(
            f"conv_input_grad: gradient {g} is not the output of a conv of an input "
            f"{(g[0], h, wd, w[2])} by weight {w} with stride {stride}, padding {pad}"
        )
    return (g[0], h, wd, w[2])


def _conv_weight_grad(op: Op, x: Shape, g: Shape, arg) -> Shape:
    stride, pad, kh, kw = arg
    if len(x) != 4 or len(g) != 4 or kh <= 0 or kw <= 0:
        raise ShapeError(
            f"conv_weight_grad: input {x} (N,H,W,Cin), gradient {g} (N,Ho,Wo,Cout) and kernel "
            f"{(kh, kw)} do not match"
        )
    w = (kh, kw, x[3], g[3])
    if _conv(op, x, w, (stride, pad)) != g:
        raise ShapeError(
            f"conv_weight_grad: gradient {g} is not the output of a conv of input {x} by a "
            f"weight {w} with stride {stride}, padding {pad}"
        )
    return w


def _logsoftmax(op: Op, s: Shape, arg) -> Shape:
    if len(s) != 2:
        raise ShapeError(f"logsoftmax: needs a 2-D input, got {s}")
    if s[1] == 0:  # as numpy: its max over the row is undefined
        raise ShapeError(f"logsoftmax: reduction over an empty axis of shape {s}")
    return s


def _where(op: Op, c: Shape, x: Shape, y: Shape, arg) -> Shape:
    return _same(op, [c, x, y])


def _callback(op: Op, *shapes_and_arg) -> Shape:
    return tuple(shapes_and_arg[-1].shape)  # found when the op was traced (see ir/callback.py)


def _allreduce(op: Op, *shapes_and_arg) -> Shape:
    *shapes, arg = shapes_and_arg
    if arg not in ("sum", "max"):
        raise ShapeError(f"all_reduce: reduction {arg!r} is not 'sum' or 'max'")
    if not shapes:
        raise ShapeError("all_reduce: needs at least one tensor")
    return shapes[0] if len(shapes) == 1 else (sum(math.prod(s) for s in shapes),)


def _rand(op: Op, seed: Shape, arg) -> Shape:
    raise ShapeError("rand: the shape of a random node is given, not inferred")


SHAPE_RULE: dict[Op, Callable[..., Shape]] = {
    **{op: (lambda op, s, arg: s) for op in UNARY | SCALAR},
    **{op: (lambda op, a, b, arg: _same(op, [a, b])) for op in BINARY},
    Op.WHERE: _where,
    Op.SUM: _reduce,
    Op.MAX: _reduce,
    Op.LOGSUMEXP: _reduce,
    Op.RESHAPE: _reshape,
    Op.BROADCAST: _broadcast,
    Op.PERMUTE: _permute,
    Op.FLIP: lambda op, s, arg: (normalize_axes(arg, len(s), "flip"), s)[1],
    Op.PAD: _pad,
    Op.SLICE: _slice,
    Op.DILATE: _dilate,
    Op.STACK: _stack,
    Op.MATMUL: _matmul,
    Op.CONV: _conv,
    Op.CONV_INPUT_GRAD: _conv_input_grad,
    Op.CONV_WEIGHT_GRAD: _conv_weight_grad,
    Op.LOGSOFTMAX: _logsoftmax,
    Op.CALLBACK: _callback,
    Op.ALLREDUCE: _allreduce,
    Op.RAND: _rand,
    Op.INPUT: lambda op, arg: (),
    Op.CONST: lambda op, arg: (),
}


def _dtype_rule(op: Op, dtypes: list[str], arg) -> str:
    if op in COMPARE:
        return "bool"
    if op is Op.CAST:
        return arg
    if op is Op.CALLBACK:
        return arg.dtype
    if op is Op.WHERE:
        return promote(dtypes[1], dtypes[2])
    if op in SCALAR:
        d = scalar_dtype(dtypes[0], arg)
        return float_of(d) if op is Op.DIV_SCALAR or (op is Op.POW_SCALAR and arg < 0) else d
    if op in BINARY or op is Op.MATMUL or op in CONVS:
        d = promote(dtypes[0], dtypes[1])
        return float_of(d) if op is Op.DIV else d
    if op in (Op.EXP, Op.LOG, Op.TANH, Op.SQRT, Op.LOGSUMEXP, Op.LOGSOFTMAX):
        return float_of(dtypes[0])
    if op is Op.SUM and dtypes[0] == "bool":
        return "int64"
    if op in (Op.STACK, Op.ALLREDUCE) and len(set(dtypes)) > 1:
        raise ShapeError(f"{op.name.lower()}: inputs have different dtypes {dtypes}")
    return dtypes[0]


def infer(op: Op, shapes, dtypes, arg) -> tuple[Shape, str]:
    """(shape, dtype) of `op` applied to sources of these shapes and dtypes, or a ShapeError."""
    return _infer(op, tuple(map(tuple, shapes)), tuple(dtypes), arg)


@functools.lru_cache(maxsize=8192, typed=True)  # eager ops ask the same question again and again
def _infer(op: Op, shapes: tuple, dtypes: tuple, arg) -> tuple[Shape, str]:
    dtypes = list(dtypes)
    if op in LEAF or op is Op.RAND:
        raise ShapeError(f"{op.name.lower()}: a leaf's shape and dtype are given, not inferred")
    if (
        op in ELEMENTWISE
        and op is not Op.CAST
        and "bool" in dtypes
        and op
        not in (
            Op.WHERE,
            Op.CMPEQ,
        )
    ):
        if op not in (Op.MUL, Op.ADD) or all(d == "bool" for d in dtypes):
            raise ShapeError(
                f"{op.name.lower()}: bool operands need a cast first (dtypes {dtypes})"
            )
    if op is Op.WHERE and dtypes[0] != "bool":
        raise ShapeError(f"where: the condition must be bool, got {dtypes[0]}")
    return SHAPE_RULE[op](op, *shapes, arg), _dtype_rule(op, dtypes, arg)


# ---------------------------------------------------------------- tolerance budgets
#
# How far a compiled backend's result may lie from the reference interpreter's, per op. A budget
# applies to float results; an integer or bool result must always be identical.
#   ("exact", 0): the same bits (any NaN matches any NaN; -0.0 is not 0.0). Every op whose IEEE
#       result is correctly rounded in its compute dtype, and every op that only moves, selects
#       or compares values.
#   ("ulp", c): |compiled - reference| <= c * spacing(reference) in the result dtype; NaN where
#       the reference has NaN, the same infinity where it has one. Math functions that are not
#       correctly rounded (ours and numpy's each within about 1 ulp).
#   ("order", c): sums whose order may differ (vectorized, blocked, pairwise): the same non-finite
#       values, and for each finite element |compiled - reference| <= c * eps(dtype) * sqrt(n) *
#       scale, where n is the number of terms summed into that element (reduced elements; the
#       inner dim of a matmul; KH*KW*Cin of a conv; the row of a logsoftmax) and scale is
#       sum(|terms|) (sum, matmul: sum_k |a_ik * b_kj|, conv likewise), or 1 + |reference| for
#       the log-domain ops (logsumexp, logsoftmax: a relative error of the sum of exp terms is an
#       absolute error of its log, plus the rounding of the result itself). For a conv's input
#       gradient n is KH*KW*Cout, for its weight gradient N*Ho*Wo. A compiled conv skips kernel
#       taps that meet only padding at every output: an inf or NaN weight (or gradient) at such
#       a tap multiplies nothing there, where the reference multiplies the padding's zeros and
#       gets NaN.
# The CUDA matmul's tensor-core kernels (the option NEEDLEC_CUDA_MATMUL=tf32 or bf16; off by
# default, when MATMUL's budget above holds) round each input to TF32 (10 mantissa bits) or bf16
# (7) before multiplying, and accumulate in fp32: each product a_ik * b_kj then carries a relative
# error up to about 2u (u, below: the unit roundoff of the input format), so an element may lie
# 2u * sum_k |a_ik * b_kj| from the reference, on top of the fp32 order budget. Tests of those
# kernels hold (3u + 2 * eps(float32) * sqrt(K)) * sum_k |a_ik * b_kj|.
TENSOR_CORE_ROUNDING: dict[str, float] = {"tf32": 2.0**-11, "bf16": 2.0**-8}

TOLERANCE: dict[Op, tuple[str, float]] = {
    **{op: ("exact", 0) for op in MOVEMENT | COMPARE | TERNARY},
    **{op: ("exact", 0) for op in (Op.NEG, Op.RELU, Op.SQRT, Op.CAST, Op.STOP_GRADIENT)},
    **{op: ("exact", 0) for op in (Op.ADD_SCALAR, Op.MUL_SCALAR, Op.DIV_SCALAR)},
    **{op: ("exact", 0) for op in (Op.ADD, Op.MUL, Op.DIV, Op.MAXIMUM)},
    **{op: ("ulp", 4) for op in (Op.EXP, Op.LOG, Op.TANH, Op.POW, Op.POW_SCALAR)},
    Op.SUM: ("order", 2),
    # a max is the same whatever the order (NaN propagates), but for the sign of a zero result
    # from both zeros: +0, IEEE 754's maximum; numpy's sign then follows its evaluation order
    Op.MAX: ("exact", 0),
    Op.LOGSUMEXP: ("order", 8),
    Op.MATMUL: ("order", 2),
    **{op: ("order", 2) for op in CONVS},
    Op.LOGSOFTMAX: ("order", 8),
    # every backend runs the same Python function on the same inputs
    Op.CALLBACK: ("exact", 0),
    # every executor calls the same MPI_Allreduce on the same buffers
    Op.ALLREDUCE: ("exact", 0),
}
