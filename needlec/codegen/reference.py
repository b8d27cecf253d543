"""The reference backend: every op evaluated with numpy, one row per op.

It is the oracle the compiled backends are tested against, the arithmetic of eager mode, and the
interpreter that runs a jitted graph until a compiled backend takes it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..ir import Graph, Node, Op
from ..ir.printer import format_node
from ..ir.random import draw


def _slice(x, spec):
    return x[tuple(slice(a, b, c) for a, b, c in spec)]


def _dilate(x, arg):
    axes, d = arg
    shape = [n * (d + 1) if i in axes else n for i, n in enumerate(x.shape)]
    out = np.zeros(shape, dtype=x.dtype)
    out[tuple(slice(None, None, d + 1) if i in axes else slice(None) for i in range(x.ndim))] = x
    return out


def _logsumexp(x, axes):
    m = np.max(x, axis=axes, keepdims=True) if x.size else np.zeros(())
    m = np.where(np.isfinite(m), m, 0)
    return (np.log(np.sum(np.exp(x - m), axis=axes, keepdims=True)) + m).reshape(
        [d for i, d in enumerate(x.shape) if i not in axes]
    )


def _logsoftmax(x, _):
    m = np.max(x, axis=1, keepdims=True)
    z = x - m
    return z - np.log(np.sum(np.exp(z), axis=1, keepdims=True))


def _windows(x, stride: int, pad: int, kh: int, kw: int):
    """im2col: (N*Ho*Wo, KH*KW*Cin) rows of x's zero-padded windows, one per conv output."""
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    n, h, wd, c = x.shape
    ho, wo = (h - kh) // stride + 1, (wd - kw) // stride + 1
    s = x.strides
    cols = np.lib.stride_tricks.as_strided(
        x, (n, ho, wo, kh, kw, c), (s[0], s[1] * stride, s[2] * stride, s[1], s[2], s[3])
    )
    return cols.reshape(n * ho * wo, kh * kw * c)


def _conv(x, w, arg):
    stride, pad = arg
    kh, kw, cin, cout = w.shape
    ho, wo = (x.shape[1] + 2 * pad - kh) // stride + 1, (x.shape[2] + 2 * pad - kw) // stride + 1
    return (_windows(x, stride, pad, kh, kw) @ w.reshape(kh * kw * cin, cout)).reshape(
        x.shape[0], ho, wo, cout
    )


def _conv_input_grad(g, w, arg):
    """dx[n, oh*s + i - p, ow*s + j - p, c] += sum_o g[n, oh, ow, o] * w[i, j, c, o]: each
    output's window gets its share back (col2im), cropped to the unpadded input."""
    stride, pad, h, wd = arg
    n, ho, wo, cout = g.shape
    kh, kw, cin, _ = w.shape
    cols = g.reshape(n * ho * wo, cout) @ w.reshape(kh * kw * cin, cout).T
    cols = cols.reshape(n, ho, wo, kh, kw, cin)
    dx = np.zeros((n, h + 2 * pad, wd + 2 * pad, cin), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            dx[:, i : i + stride * ho : stride, j : j + stride * wo : stride] += cols[:, :, :, i, j]
    return dx[:, pad : pad + h, pad : pad + wd]


def _conv_weight_grad(x, g, arg):
    """dw[i, j, c, o] = sum over outputs (n, oh, ow) of x's window value times g."""
    stride, pad, kh, kw = arg
    cols = _windows(x, stride, pad, kh, kw)
    n, ho, wo, cout = g.shape
    return (cols.T @ g.reshape(n * ho * wo, cout)).reshape(kh, kw, x.shape[3], cout)


def _rand(seed, arg, shape, dtype):
    """A random node's draws: element i a function of (seed, stream, i) alone, the mapping of
    `needlec.ir.random` that every backend draws the same way."""
    dist, stream = arg
    return draw(int(np.asarray(seed).reshape(())), stream, tuple(shape), dtype, dist)


# op -> f(*source arrays, arg) -> array; the result is cast to the node's dtype by the caller
EVAL: dict[Op, Callable] = {
    Op.NEG: lambda x, _: -x,
    Op.EXP: lambda x, _: np.exp(x),
    Op.LOG: lambda x, _: np.log(x),
    Op.TANH: lambda x, _: np.tanh(x),
    Op.RELU: lambda x, _: np.maximum(x, 0),
    Op.SQRT: lambda x, _: np.sqrt(x),
    Op.CAST: lambda x, dtype: x.astype(dtype),
    Op.STOP_GRADIENT: lambda x, _: x,
    Op.ADD_SCALAR: lambda x, c: x + c,
    Op.MUL_SCALAR: lambda x, c: x * c,
    Op.DIV_SCALAR: lambda x, c: x / c,
    Op.POW_SCALAR: lambda x, c: np.power(
        x if x.dtype.kind == "f" or (isinstance(c, int) and c >= 0) else x.astype("float64"), c
    ),
    Op.ADD: lambda x, y, _: x + y,
    Op.MUL: lambda x, y, _: x * y,
    Op.DIV: lambda x, y, _: x / y,
    Op.POW: lambda x, y, _: np.power(x, y),
    Op.MAXIMUM: lambda x, y, _: np.maximum(x, y),
    Op.CMPLT: lambda x, y, _: x < y,
    Op.CMPEQ: lambda x, y, _: x == y,
    Op.WHERE: lambda c, x, y, _: np.where(c, x, y),
    Op.SUM: lambda x, axes: np.sum(x, axis=axes),
    Op.MAX: lambda x, axes: np.max(x, axis=axes),
    Op.LOGSUMEXP: _logsumexp,
    Op.RESHAPE: lambda x, shape: np.reshape(x, shape),
    Op.BROADCAST: lambda x, shape: np.broadcast_to(x, shape),
    Op.PERMUTE: lambda x, perm: np.transpose(x, perm),
    Op.FLIP: lambda x, axes: np.flip(x, axes),
    Op.PAD: lambda x, widths: np.pad(x, widths),
    Op.SLICE: _slice,
    Op.DILATE: _dilate,
    Op.STACK: lambda *xs: np.stack(xs[:-1], axis=xs[-1]),
    Op.MATMUL: lambda x, y, _: np.matmul(x, y),
    Op.CONV: _conv,
    Op.CONV_INPUT_GRAD: _conv_input_grad,
    Op.CONV_WEIGHT_GRAD: _conv_weight_grad,
    Op.LOGSOFTMAX: _logsoftmax,
}

# leaves are evaluated from the node itself
LEAF_EVAL: dict[Op, Callable] = {
    Op.CONST: lambda n: (
        n.arg.array if hasattr(n.arg, "array") else np.full(n.shape, n.arg, dtype=n.dtype)
    ),
}


def evaluate(op: Op, arrays: Sequence[np.ndarray], arg, shape, dtype: str) -> np.ndarray:
    """Apply one op to numpy arrays; the result has exactly `shape` and `dtype`."""
    with np.errstate(all="ignore"):
        out = EVAL[op](*arrays, arg)
    out = np.asarray(out)
    if out.dtype != dtype:
        out = out.astype(dtype)
    return out


class ExecutionError(RuntimeError):
    """An op failed while a graph ran; the message names the node."""


def run_graph(graph: Graph, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Run `graph` on numpy arrays (one per graph input) and return its outputs."""
    if len(inputs) != len(graph.inputs):
        raise ValueError(f"run_graph: {len(graph.inputs)} inputs expected, got {len(inputs)}")
    env: dict[Node, np.ndarray] = dict(zip(graph.inputs, inputs, strict=True))
    names = None
    for n in graph.nodes:
        if n in env:
            continue
        try:
            if n.op is Op.RAND:
                env[n] = _rand(env[n.src[0]], n.arg, n.shape, n.dtype)
            elif n.op in LEAF_EVAL:
                env[n] = LEAF_EVAL[n.op](n)
            else:
                env[n] = evaluate(n.op, [env[s] for s in n.src], n.arg, n.shape, n.dtype)
        except Exception as e:
            names = names or {m: i for i, m in enumerate(graph.nodes)}
            raise ExecutionError(
                f"while executing %{names[n]}:{format_node(n, names)}: {type(e).__name__}: {e}"
            ) from e
    return [env[n] for n in graph.outputs]


def source(graph: Graph) -> str:
    """The graph as straight-line Python over numpy: what `run_graph` does, written out.

    It runs in the namespace `source_namespace(graph)` gives (see `compile_source`).
    """
    names = {n: f"v{i}" for i, n in enumerate(graph.nodes)}
    lines = [f"def run({', '.join(names[n] for n in graph.inputs)}):"]
    consts = 0
    for n in graph.nodes[len(graph.inputs) :]:
        if n.op is Op.CONST and hasattr(n.arg, "array"):
            rhs, consts = f"CONSTS[{consts}]", consts + 1
        elif n.op is Op.CONST:
            rhs = f"np.full({n.shape}, {n.arg!r}, dtype={n.dtype!r})"
        elif n.op is Op.RAND:
            rhs = f"philox({names[n.src[0]]}, {n.arg!r}, {n.shape}, {n.dtype!r})"
        else:
            srcs = "".join(f"{names[s]}, " for s in n.src)
            rhs = f"evaluate(Op.{n.op.name}, ({srcs}), {n.arg!r}, {n.shape}, {n.dtype!r})"
        lines.append(f"    {names[n]} = {rhs}")
    lines.append(f"    return [{', '.join(names[n] for n in graph.outputs)}]")
    return "\n".join(lines) + "\n"


def source_namespace(graph: Graph) -> dict:
    """The names the code of `source(graph)` uses."""
    consts = [n.arg.array for n in graph.nodes if n.op is Op.CONST and hasattr(n.arg, "array")]
    return {"np": np, "Op": Op, "evaluate": evaluate, "philox": _rand, "CONSTS": consts}


def compile_source(graph: Graph) -> Callable:
    """`source(graph)` compiled: a function of the input arrays returning the output arrays."""
    namespace = source_namespace(graph)
    exec(compile(source(graph), "<needlec reference>", "exec"), namespace)
    return namespace["run"]
