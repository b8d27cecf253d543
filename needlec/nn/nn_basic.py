"""needle's basic modules: Module and Parameter, Linear, activations, losses, norms, Dropout.

Every `forward` uses tensor ops only (no `.numpy()`, no Python branches on tensor values), so a
module runs eagerly and traces under `needlec.jit` alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from .. import init, ops
from ..autograd import Tensor
from ..frontend.guards import Watched
from ..serialization import copy_into as _copy_into


class Parameter(Tensor):
    """A tensor that is a parameter of a module: `Module.parameters()` collects these."""


def _unpack_params(value: object) -> list[Tensor]:
    """Parameters in `value`, depth first in insertion order (duplicates kept, as in needle)."""
    if isinstance(value, Parameter):
        return [value]
    if isinstance(value, Module):
        return value.parameters()
    if isinstance(value, dict):
        return [p for v in value.values() for p in _unpack_params(v)]
    if isinstance(value, list | tuple):
        return [p for v in value for p in _unpack_params(v)]
    return []


def _child_modules(value: object) -> list[Module]:
    """Every module in `value` and below it."""
    if isinstance(value, Module):
        return [value, *_child_modules(value.__dict__)]
    if isinstance(value, dict):
        return [m for v in value.values() for m in _child_modules(v)]
    if isinstance(value, list | tuple):
        return [m for v in value for m in _child_modules(v)]
    return []


class Module(Watched):
    """Base class of needle's modules.

    Parameters are found by walking the attributes (through modules, lists, tuples and dicts);
    plain tensors are not parameters. Setting or deleting an attribute is recorded in the jit
    guards' change log (see `needlec.frontend.guards.Watched`), so a jitted function's guard
    re-checks a module only after such a write; a subclass that defines its own `__setattr__`
    is re-checked at every call instead.

    >>> import needlec as nc
    >>> class Affine(nc.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.w = nc.nn.Parameter(nc.init.ones(2, 2))
    ...         self.blocks = [nc.nn.Linear(2, 3), {"act": nc.nn.ReLU()}]
    ...     def forward(self, x):
    ...         return self.blocks[0](x @ self.w)
    >>> m = Affine()
    >>> [p.shape for p in m.parameters()]
    [(2, 2), (2, 3), (1, 3)]
    >>> m.eval().blocks[1]["act"].training
    False
    """

    def __init__(self) -> None:
        self.training = True

    def parameters(self) -> list[Tensor]:
        """The Parameters of this module and its submodules, in attribute order."""
        return _unpack_params(self.__dict__)

    def _children(self) -> list[Module]:
        return _child_modules(self.__dict__)

    def state_dict(self) -> dict[str, Tensor]:
        """Every tensor of this module and its submodules, by dotted name: the parameters and
        the plain tensors (running statistics). `nc.save(model.state_dict(), path)` writes it.

        >>> import needlec as nc
        >>> sorted(nc.nn.Sequential(nc.nn.Linear(2, 3)).state_dict())
        ['modules.0.bias', 'modules.0.weight']
        """
        out: dict[str, Tensor] = {}
        _named_tensors(self.__dict__, "", out)
        return out

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Copy the values of `state` (tensors or arrays by name, as `state_dict` gives them)
        into this module's tensors in place; names, shapes and dtypes must match (every name,
        unless `strict` is False)."""
        own = self.state_dict()
        missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own)
        if strict and (missing or unexpected):
            raise KeyError(
                f"load_state_dict: {type(self).__name__} is missing {missing} and does not "
                f"have {unexpected}"
            )
        for name, t in own.items():
            if name in state:
                _copy_into(t, state[name], f"load_state_dict: {name!r}")

    def eval(self) -> Module:
        """Evaluation mode, here and in every submodule."""
        self.training = False
        for m in self._children():
            m.training = False
        return self

    def train(self) -> Module:
        """Training mode, here and in every submodule."""
        self.training = True
        for m in self._children():
            m.training = True
        return self

    def forward(self, *args, **kwargs):
        """The module's computation; every subclass defines it."""
        raise NotImplementedError(f"{type(self).__name__} must define forward")

    def __call__(self, *args, **kwargs):
        """`module(*args)` is `module.forward(*args)`."""
        return self.forward(*args, **kwargs)


def _named_tensors(value: object, prefix: str, out: dict) -> None:
    """The tensors in `value` (through modules, dicts, lists and tuples) by dotted name."""
    if isinstance(value, Tensor):
        out[prefix] = value
    elif isinstance(value, Module):
        _named_tensors(value.__dict__, prefix, out)
    elif isinstance(value, dict):
        for k, v in value.items():
            _named_tensors(v, f"{prefix}.{k}" if prefix else str(k), out)
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _named_tensors(v, f"{prefix}.{i}" if prefix else str(i), out)


def _row(t: Tensor, shape: tuple) -> Tensor:
    """A per-feature vector (dim,) broadcast over the leading axes of `shape` (..., dim)."""
    return t.reshape((1,) * (len(shape) - 1) + (t.shape[-1],)).broadcast_to(shape)


class Identity(Module):
    """Returns its input unchanged (a placeholder where a module is expected)."""

    def forward(self, x: Tensor) -> Tensor:
        """x, as is."""
        return x


class Linear(Module):
    """y = x @ W + b, with W (in, out) and b (1, out); x may have any number of leading axes.

    W = kaiming_uniform(in, out) is drawn first, then b = kaiming_uniform(out, 1) reshaped.

    >>> import needlec as nc, numpy as np
    >>> np.random.seed(0)
    >>> layer = nc.nn.Linear(784, 256)
    >>> sum(int(np.prod(p.shape)) for p in layer.parameters())
    200960
    >>> layer(nc.init.ones(8, 784)).shape
    (8, 256)
    """

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, device=None, dtype="float32"
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        kw = {"device": device, "dtype": dtype}
        self.weight = Parameter(init.kaiming_uniform(in_features, out_features, **kw))
        self.bias = None
        if bias:
            b = init.kaiming_uniform(out_features, 1, **kw).reshape((1, out_features))
            self.bias = Parameter(b)

    def forward(self, X: Tensor) -> Tensor:
        """X (..., in_features) -> (..., out_features)."""
        if X.ndim < 1 or X.shape[-1] != self.in_features:
            raise ValueError(
                f"Linear({self.in_features}, {self.out_features}): the input's last dim must be "
                f"in_features = {self.in_features}, got an input of shape {X.shape}"
            )
        y = X @ self.weight
        if self.bias is not None:
            y = y + self.bias.broadcast_to(y.shape)
        return y


class Flatten(Module):
    """(B, d1, d2, ...) -> (B, d1 * d2 * ...)."""

    def forward(self, X: Tensor) -> Tensor:
        """X (B, ...) -> (B, prod of the other dims)."""
        return X.reshape((X.shape[0], math.prod(X.shape[1:])))


class ReLU(Module):
    """max(x, 0), elementwise."""

    def forward(self, x: Tensor) -> Tensor:
        """relu(x), the same shape as x."""
        return ops.relu(x)


class Tanh(Module):
    """tanh(x), elementwise."""

    def forward(self, x: Tensor) -> Tensor:
        """tanh(x), the same shape as x."""
        return ops.tanh(x)


class Sigmoid(Module):
    """1 / (1 + exp(-x))."""

    def forward(self, x: Tensor) -> Tensor:
        """sigmoid(x), the same shape as x."""
        return ops.sigmoid(x)


class Sequential(Module):
    """Applies `modules` in order (kept in `.modules`)."""

    def __init__(self, *modules: Module) -> None:
        super().__init__()
        self.modules = modules

    def forward(self, x: Tensor) -> Tensor:
        """x through each module in turn."""
        for m in self.modules:
            x = m(x)
        return x


class Residual(Module):
    """fn(x) + x."""

    def __init__(self, fn: Module | Callable) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        """fn(x) + x (fn must keep x's shape)."""
        return self.fn(x) + x


class SoftmaxLoss(Module):
    """Mean cross entropy: mean over the batch of logsumexp(logits) - logits[y].

    `y` holds class ids (B,), as an integer or float tensor.
    """

    def forward(self, logits: Tensor, y: Tensor) -> Tensor:
        """The 0-d mean loss of logits (B, classes) against class ids y (B,)."""
        if logits.ndim != 2:
            raise ValueError(
                f"SoftmaxLoss: logits must be 2-D (batch, classes), got shape {logits.shape}"
            )
        n, k = logits.shape
        y_shape = tuple(y.shape) if hasattr(y, "shape") else (len(y),)
        if y_shape != (n,):
            raise ValueError(
                f"SoftmaxLoss: labels must be ({n},), one class id per row of the logits "
                f"{logits.shape}, got labels of shape {y_shape}"
            )
        y_one_hot = init.one_hot(k, y, device=logits.device, dtype=logits.dtype)
        z_y = (logits * y_one_hot).sum((1,))
        return (logits.logsumexp((1,)) - z_y).sum() / n


class BatchNorm1d(Module):
    """Normalizes each feature over the batch (B, dim).

    Training uses the batch mean and biased variance and updates `running_mean`/`running_var`
    (plain tensors, outside the autograd graph): running = (1 - m) * running + m * batch.
    Evaluation uses the running statistics.
    """

    def __init__(
        self, dim: int, eps: float = 1e-5, momentum: float = 0.1, device=None, dtype="float32"
    ) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.momentum = momentum
        kw = {"device": device, "dtype": dtype}
        self.weight = Parameter(init.ones(dim, **kw))
        self.bias = Parameter(init.zeros(dim, **kw))
        self.running_mean = init.zeros(dim, **kw)
        self.running_var = init.ones(dim, **kw)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, dim) normalized per feature (batch statistics in training, running ones in
        evaluation), then scaled by `weight` and shifted by `bias`."""
        if self.training:
            mean, var = self._statistics(x)
            centered = x - _row(mean, x.shape)
            self._update_running(mean, var)
        else:
            centered = x - _row(self.running_mean, x.shape)
            var = self.running_var
        normed = centered / _row((var + self.eps) ** 0.5, x.shape)
        return _row(self.weight, x.shape) * normed + _row(self.bias, x.shape)

    def _statistics(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The batch's mean and biased variance per feature (over the rows of this process;
        `needlec.distributed.SyncBatchNorm1d` over every process's rows)."""
        n = x.shape[0]
        mean = x.sum((0,)) / n
        var = ((x - _row(mean, x.shape)) ** 2).sum((0,)) / n
        return mean, var

    def _update_running(self, mean: Tensor, var: Tensor) -> None:
        """running = (1 - m) * running + m * batch, on detached values (never in the graph)."""
        m = self.momentum
        for running, batch in ((self.running_mean, mean), (self.running_var, var)):
            running.data = (1 - m) * running.data + m * batch.data.cast(running.dtype)


class BatchNorm2d(BatchNorm1d):
    """BatchNorm over the channels of an NCHW input (statistics over N, H and W)."""

    def forward(self, x: Tensor) -> Tensor:
        """x (N, C, H, W) normalized per channel, as BatchNorm1d on the (N*H*W, C) rows."""
        n, c, h, w = x.shape
        rows = x.transpose((1, 2)).transpose((2, 3)).reshape((n * h * w, c))
        y = super().forward(rows).reshape((n, h, w, c))
        return y.transpose((2, 3)).transpose((1, 2))


class LayerNorm1d(Module):
    """Normalizes over the last axis (biased variance), then scales and shifts per feature."""

    def __init__(self, dim: int, eps: float = 1e-5, device=None, dtype="float32") -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.weight = Parameter(init.ones(dim, device=device, dtype=dtype))
        self.bias = Parameter(init.zeros(dim, device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        """x (..., dim) normalized over its last axis, then scaled and shifted."""
        last = x.ndim - 1
        kept = (*x.shape[:-1], 1)
        mean = (x.sum((last,)) / self.dim).reshape(kept).broadcast_to(x.shape)
        centered = x - mean
        var = ((centered**2).sum((last,)) / self.dim).reshape(kept).broadcast_to(x.shape)
        normed = centered / (var + self.eps) ** 0.5
        return _row(self.weight, x.shape) * normed + _row(self.bias, x.shape)


class Dropout(Module):
    """In training, zeroes each entry with probability p and scales the rest by 1 / (1 - p).

    The mask is one draw `rand(*x.shape) <= 1 - p` per call, made even when p == 0 (as needle
    does, so that the random stream stays in step). In evaluation mode it is the identity.
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        """x with a fresh dropout mask applied in training; x itself in evaluation."""
        if not self.training:
            return x
        mask = init.randb(*x.shape, p=1 - self.p, dtype=x.dtype, device=x.device)
        return x * mask / (1 - self.p)
