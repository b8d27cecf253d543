"""The same training steps written for torch (eager and torch.compile), jax.jit and numpy.

`Forward` walks a needlec module tree and runs the same computation through a framework's ops,
reading parameters by their index in `model.parameters()`; `TorchOps` and `JaxOps` supply the
ops. So the torch and jax models have needlec's architecture, parameter shapes and initial
weights by construction (conv weights are laid out as torch wants them, LSTM weights
transposed for `torch.lstm`). The hand-written numpy step covers the MLPs only.

Every step is: zero gradients, forward, mean softmax cross-entropy, backward, then needle's SGD
with damped momentum, u = m u + (1 - m) g, p -= lr u. BatchNorm updates its running statistics
as it does in each framework (they never enter the loss).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .steps import LR, MOMENTUM


@dataclass
class Runner:
    """A framework's step on one batch: `step()` runs one training step and returns its loss
    (synchronized, so timing it times the work); `loss_value` turns that loss into a float;
    `note` is said under the table."""

    step: Callable[[], object]
    loss_value: Callable[[object], float]
    note: str = ""


class NotWritten(Exception):
    """This framework has no equivalent of a module here (reported as a skipped cell)."""


class Forward:
    """A needlec module tree run through another framework's ops (`ops`), parameters read
    from `P` by their index in the root module's `parameters()`."""

    def __init__(self, root, ops) -> None:
        self.ops = ops
        self.index = {id(p): i for i, p in enumerate(root.parameters())}
        self.root = root

    def p(self, P, param):
        return P[self.index[id(param)]]

    def __call__(self, P, x):
        return self.run(self.root, P, x)

    def run(self, m, P, x):
        name = type(m).__name__
        ops = self.ops
        if name == "Sequential":
            for sub in m.modules:
                x = self.run(sub, P, x)
            return x
        if name == "Residual":
            return self.run(m.fn, P, x) + x
        if name == "Linear":
            y = x @ self.p(P, m.weight)
            return y if m.bias is None else y + self.p(P, m.bias)
        if name == "ReLU":
            return ops.relu(x)
        if name == "Dropout":
            if m.p != 0:
                raise NotWritten("Dropout with p > 0")
            return x
        if name == "Flatten":
            return x.reshape((x.shape[0], -1))
        if name in ("BatchNorm1d", "BatchNorm2d"):
            return ops.batch_norm(m, x, self.p(P, m.weight), self.p(P, m.bias))
        if name == "LayerNorm1d":
            return ops.layer_norm(x, self.p(P, m.weight), self.p(P, m.bias), m.eps)
        if name == "Conv":
            b = None if m.bias is None else self.p(P, m.bias)
            return ops.conv(x, self.p(P, m.weight), b, m.stride, m.padding)
        if name == "ConvBN":
            return ops.relu(self.run(m.bn, P, self.run(m.conv, P, x)))
        if name == "ResNet9":
            return self.run(m.model, P, x)
        if name == "LanguageModel":
            t, b = x.shape
            h = ops.embed(x, self.p(P, m.embedding.weight))
            h = self.run(m.seq_model, P, h)
            return self.run(m.linear, P, h.reshape((t * b, m.hidden_size)))
        if name == "LSTM":
            weights = [
                [self.p(P, w) for w in (c.W_ih, c.W_hh, c.bias_ih, c.bias_hh)] for c in m.lstm_cells
            ]
            return ops.lstm(x, weights, m.hidden_size)
        if name == "Transformer":
            if not m.batch_first:
                x = ops.swap(x, 0, 1)
            t = x.shape[1]
            pos = ops.positions(self.p(P, m.pos_embedding.weight), t)
            x = self.run(m.layers, P, x + pos)
            return ops.swap(x, 0, 1) if not m.batch_first else x
        if name == "TransformerLayer":
            x = x + self.run(m.attn, P, x)
            return x + self.run(m.ff, P, self.run(m.layernorm, P, x))
        if name == "AttentionLayer":
            return self.attention(m, P, x)
        raise NotWritten(f"no equivalent written for {name}")

    def attention(self, m, P, x):
        """needlec's AttentionLayer with q = k = v = x: pre-norm, heads, causal softmax."""
        ops = self.ops
        b, t, _ = x.shape
        heads, d = m.num_head, m.dim_head

        def project(norm, proj):
            y = self.run(proj, P, self.run(norm, P, x)).reshape((b, t, heads, d))
            return ops.swap(y, 1, 2)

        q = project(m.prenorm_q, m.q_projection)
        k = project(m.prenorm_k, m.k_projection)
        v = project(m.prenorm_v, m.v_projection)
        scores = (q @ ops.swap(k, 2, 3)) / math.sqrt(d)
        if m.attn.causal:
            mask = -np.finfo(np.float32).max * np.triu(np.ones((t, t), np.float32), 1)
            scores = scores + ops.constant(mask)
        out = ops.softmax(scores) @ v
        out = ops.swap(out, 1, 2).reshape((b, t, heads * d))
        return self.run(m.out_projection, P, out)


# ---- torch ------------------------------------------------------------------------------


class TorchOps:
    """The ops `Forward` needs, in torch (NCHW convolutions, torch.lstm, F.batch_norm)."""

    def __init__(self, torch, buffers: dict) -> None:
        self.torch = torch
        self.F = torch.nn.functional
        self.buffers = buffers  # id(BatchNorm) -> (running_mean, running_var)
        self.device = "cpu"  # where constants go (the GPU benchmark sets "cuda")

    def relu(self, x):
        return self.torch.relu(x)

    def swap(self, x, a: int, b: int):
        return x.transpose(a, b)

    def constant(self, a: np.ndarray):
        return self.torch.from_numpy(a).to(self.device)

    def softmax(self, x):
        return self.torch.softmax(x, dim=-1)

    def batch_norm(self, m, x, w, b):
        rm, rv = self.buffers[id(m)]
        return self.F.batch_norm(x, rm, rv, w, b, True, m.momentum, m.eps)

    def layer_norm(self, x, w, b, eps: float):
        return self.F.layer_norm(x, (x.shape[-1],), w, b, eps)

    def conv(self, x, w, b, stride: int, padding: int):
        return self.F.conv2d(x, w, b, stride=stride, padding=padding)

    def embed(self, ids, w):
        return self.F.embedding(ids, w)

    def positions(self, w, t: int):
        return w[:t].unsqueeze(0)

    def lstm(self, x, weights, hidden: int):
        flat = [w for layer in weights for w in layer]
        zeros = x.new_zeros((len(weights), x.shape[1], hidden))
        out, _, _ = self.torch.lstm(
            x, (zeros, zeros), flat, True, len(weights), 0.0, True, False, False
        )
        return out


def _torch_layouts(model) -> dict[int, str]:
    """Parameter index -> how torch holds it: "conv" (k, k, in, out) -> (out, in, k, k), "T"
    (an LSTM weight, (in, 4H) -> (4H, in)); others as they are."""
    index = {id(p): i for i, p in enumerate(model.parameters())}
    layouts = {}
    for m in _modules(model):
        name = type(m).__name__
        if name == "Conv":
            layouts[index[id(m.weight)]] = "conv"
        elif name == "LSTMCell":
            layouts[index[id(m.W_ih)]] = layouts[index[id(m.W_hh)]] = "T"
    return layouts


def _modules(m):
    """Every module in a needlec module tree, `m` first."""
    yield m
    for child in m._children():
        yield from _modules(child)


def torch_runner(
    model, init: list[np.ndarray], x, y, compiled: bool, device: str = "cpu"
) -> Runner:
    """torch eager (or, with `compiled`, forward and loss under torch.compile, backward
    through the compiled graph's autograd) from the initial weights `init`, on `device`."""
    import torch

    layouts = _torch_layouts(model)
    params = []
    for i, a in enumerate(init):
        a = {"conv": lambda a: a.transpose(3, 2, 0, 1), "T": lambda a: a.T}.get(
            layouts.get(i), lambda a: a
        )(a)
        params.append(torch.tensor(np.ascontiguousarray(a), requires_grad=True, device=device))
    buffers = {
        id(m): (
            torch.zeros(m.weight.shape[0], device=device),
            torch.ones(m.weight.shape[0], device=device),
        )
        for m in _modules(model)
        if type(m).__name__ in ("BatchNorm1d", "BatchNorm2d")
    }
    ops = TorchOps(torch, buffers)
    ops.device = device
    fwd = Forward(model, ops)
    xt = torch.from_numpy(x.astype(np.int64) if fwd_lm(model) else x).to(device)
    yt = torch.from_numpy(y.astype(np.int64)).to(device)

    def loss_fn(x, y):
        return torch.nn.functional.cross_entropy(fwd(params, x), y)

    if compiled:
        loss_fn = torch.compile(loss_fn)
    moms = [torch.zeros_like(p) for p in params]

    def step():
        for p in params:
            p.grad = None
        loss = loss_fn(xt, yt)
        loss.backward()
        with torch.no_grad():
            grads = [p.grad for p in params]
            torch._foreach_mul_(moms, MOMENTUM)
            torch._foreach_add_(moms, grads, alpha=1 - MOMENTUM)
            torch._foreach_add_(params, moms, alpha=-LR)
        return loss

    note = "forward and loss under torch.compile; SGD update eager (foreach)" if compiled else ""
    return Runner(step, lambda loss: float(loss.detach()), note)


def fwd_lm(model) -> bool:
    """Whether the model reads token ids (a LanguageModel) rather than floats."""
    return type(model).__name__ == "LanguageModel"


# ---- jax --------------------------------------------------------------------------------


class JaxOps:
    """The ops `Forward` needs, in jax.numpy and lax (NCHW/HWIO convolutions, lax.scan LSTM);
    BatchNorm's new running statistics are collected in `self.stats` while tracing."""

    def __init__(self, jax, stats_in: dict) -> None:
        self.jax, self.jnp = jax, jax.numpy
        self.stats_in = stats_in  # id(BatchNorm) -> (running_mean, running_var), traced
        self.stats: dict = {}

    def relu(self, x):
        return self.jax.nn.relu(x)

    def swap(self, x, a: int, b: int):
        return self.jnp.swapaxes(x, a, b)

    def constant(self, a: np.ndarray):
        return self.jnp.asarray(a)

    def softmax(self, x):
        return self.jax.nn.softmax(x, axis=-1)

    def batch_norm(self, m, x, w, b):
        jnp = self.jnp
        axes = (0,) if x.ndim == 2 else (0, 2, 3)
        shape = (1, -1) if x.ndim == 2 else (1, -1, 1, 1)
        mean = x.mean(axes)
        var = ((x - mean.reshape(shape)) ** 2).mean(axes)
        rm, rv = self.stats_in[id(m)]
        sg = self.jax.lax.stop_gradient
        mom = m.momentum
        self.stats[id(m)] = ((1 - mom) * rm + mom * sg(mean), (1 - mom) * rv + mom * sg(var))
        normed = (x - mean.reshape(shape)) / jnp.sqrt(var.reshape(shape) + m.eps)
        return w.reshape(shape) * normed + b.reshape(shape)

    def layer_norm(self, x, w, b, eps: float):
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return w * (x - mean) / self.jnp.sqrt(var + eps) + b

    def conv(self, x, w, b, stride: int, padding: int):
        y = self.jax.lax.conv_general_dilated(
            x,
            w,
            (stride, stride),
            [(padding, padding)] * 2,
            dimension_numbers=("NCHW", "HWIO", "NCHW"),
        )
        return y if b is None else y + b.reshape((1, -1, 1, 1))

    def embed(self, ids, w):
        return w[ids]

    def positions(self, w, t: int):
        return w[:t][None]

    def lstm(self, x, weights, hidden: int):
        jnp, lax = self.jnp, self.jax.lax
        sig = self.jax.nn.sigmoid
        for w_ih, w_hh, b_ih, b_hh in weights:
            xs = x @ w_ih + b_ih + b_hh

            def cell(carry, xt, w_hh=w_hh):
                h, c = carry
                g = xt + h @ w_hh
                i, f, gg, o = jnp.split(g, 4, axis=-1)
                c = sig(f) * c + sig(i) * jnp.tanh(gg)
                h = sig(o) * jnp.tanh(c)
                return (h, c), h

            zeros = jnp.zeros((x.shape[1], hidden), x.dtype)
            _, x = lax.scan(cell, (zeros, zeros), xs)
        return x


def jax_runner(model, init: list[np.ndarray], x, y) -> Runner:
    """The whole step (value_and_grad, momentum update, running statistics) under jax.jit,
    parameters, momenta and statistics donated."""
    import jax
    import jax.numpy as jnp

    bns = [m for m in _modules(model) if type(m).__name__ in ("BatchNorm1d", "BatchNorm2d")]
    keys = [id(m) for m in bns]

    def loss_fn(params, stats, xb, yb):
        ops = JaxOps(jax, dict(zip(keys, stats, strict=True)))
        logits = Forward(model, ops)(params, xb)
        lse = jax.nn.logsumexp(logits, axis=1)
        picked = jnp.take_along_axis(logits, yb[:, None], axis=1)[:, 0]
        return (lse - picked).mean(), [ops.stats[k] for k in keys]

    def step(params, moms, stats, xb, yb):
        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats, xb, yb)
        moms = [MOMENTUM * u + (1 - MOMENTUM) * g for u, g in zip(moms, grads, strict=True)]
        params = [p - LR * u for p, u in zip(params, moms, strict=True)]
        return params, moms, stats, loss

    jitted = jax.jit(step, donate_argnums=(0, 1, 2))
    state = {
        "params": [jnp.asarray(a) for a in init],
        "moms": [jnp.zeros(a.shape, a.dtype) for a in init],
        "stats": [
            (jnp.zeros(m.weight.shape[0], "float32"), jnp.ones(m.weight.shape[0], "float32"))
            for m in bns
        ],
    }
    xb = jnp.asarray(x.astype(np.int32) if fwd_lm(model) else x)
    yb = jnp.asarray(y.astype(np.int32))

    def run():
        state["params"], state["moms"], state["stats"], loss = jitted(
            state["params"], state["moms"], state["stats"], xb, yb
        )
        return loss.block_until_ready()

    return Runner(run, float)


# ---- numpy (MLPs) -----------------------------------------------------------------------


def numpy_runner(init: list[np.ndarray], x: np.ndarray, y: np.ndarray) -> Runner:
    """A hand-written numpy step of an MLP (Linear layers with ReLU between; `init` is
    [W1, b1, W2, b2, ...]): forward, softmax cross-entropy, backward, momentum SGD, in place."""
    params = [a.copy() for a in init]
    moms = [np.zeros_like(a) for a in params]
    grads = [np.empty_like(a) for a in params]
    n_layers = len(params) // 2
    labels = y.astype(np.int64)
    rows = np.arange(len(x))

    def step() -> float:
        acts = [x]
        for i in range(n_layers):
            h = acts[-1] @ params[2 * i]
            h += params[2 * i + 1]
            if i < n_layers - 1:
                np.maximum(h, 0, out=h)
            acts.append(h)
        logits = acts[-1]
        z = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(z)
        s = e.sum(axis=1, keepdims=True)
        loss = float(np.mean(np.log(s[:, 0]) - z[rows, labels]))
        d = e / s
        d[rows, labels] -= 1
        d /= len(x)
        for i in reversed(range(n_layers)):
            np.matmul(acts[i].T, d, out=grads[2 * i])
            d.sum(axis=0, keepdims=True, out=grads[2 * i + 1])
            if i:
                d = d @ params[2 * i].T
                d *= acts[i] > 0
        for p, u, g in zip(params, moms, grads, strict=True):
            u *= MOMENTUM
            u += (1 - MOMENTUM) * g
            p -= LR * u
        return loss

    return Runner(step, float)
