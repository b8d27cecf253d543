"""needle's optimizers: SGD (damped momentum, weight decay) and Adam (bias correction).

They run eagerly, and inside `jit` they trace like any other tensor code: parameter updates
(`p.data = ...`) and the state (momentum, Adam's m, v and step count t) become outputs of the
graph written back after each call. Hyperparameters (`lr`, `momentum`, `beta1`, ...) are inputs
read at every call, so a schedule that sets `opt.lr` between steps needs no retrace.

>>> import needlec as nc, numpy as np
>>> w = nc.Tensor(np.ones(3, dtype="float32"))
>>> opt = nc.optim.SGD([w], lr=0.5)
>>> (w * w).sum().backward(); opt.step()
>>> w.numpy()
array([0., 0., 0.], dtype=float32)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable

from . import init
from .autograd import Tensor
from .frontend.guards import Watched, WatchedDict, WatchedList, note_change
from .frontend.trace import current
from .serialization import copy_into as _copy_into


class _Number:
    """A hyperparameter or counter attribute. Reading it as a Python number inside a trace is
    recorded, so jit then guards it (a changed value retraces) instead of treating it as a
    per-call input: code that bakes the number into the graph never sees a stale one."""

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def __get__(self, obj, objtype=None):
        if obj is None:
            return self
        trace = current()
        if trace is not None:
            trace.python_reads.add((id(obj), self.name))
        return obj.__dict__[self.name]

    def __set__(self, obj, value) -> None:
        obj.__dict__[self.name] = value


class Optimizer(Watched, ABC):
    """Holds parameters; `step()` updates them from their `.grad`, `reset_grad()` clears grads.

    A parameter whose `.grad` is None (the loss does not depend on it) is skipped, eagerly and
    under jit. Attribute writes, and writes to `params` and the state dicts (a WatchedList and
    WatchedDicts), are recorded in the jit guards' change log, so a jitted step's guard
    re-checks an optimizer only after one.
    """

    hyperparameters: tuple[str, ...] = ()

    def __init__(self, params: Iterable[Tensor]) -> None:
        self.params = WatchedList(params)

    @abstractmethod
    def step(self) -> None:
        """Update every parameter that has a gradient."""

    def reset_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def zero_grad(self) -> None:  # the PyTorch spelling
        self.reset_grad()

    def state_dict(self) -> dict:
        """The optimizer's numbers (hyperparameters, step count) and state tensors (momentum,
        moments) by parameter index; `nc.save(opt.state_dict(), path)` writes it.

        >>> import needlec as nc
        >>> opt = nc.optim.SGD([nc.init.ones(2)], lr=0.1, momentum=0.9)
        >>> sorted(opt.state_dict()["state"]["u"])
        [0]
        """
        numbers, state = {}, {}
        for k, v in vars(self).items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                numbers[k] = v
            elif isinstance(v, dict) and all(isinstance(t, Tensor) for t in v.values()):
                state[k] = dict(v)
        return {"type": type(self).__name__, "numbers": numbers, "state": state}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` gave, into this optimizer's own state tensors in place
        (the same type of optimizer, over parameters of the same shapes)."""
        if state.get("type") != type(self).__name__:
            raise ValueError(
                f"load_state_dict: a {state.get('type')} state does not fit {type(self).__name__}"
            )
        for k, v in state["numbers"].items():
            setattr(self, k, v)
        for k, tensors in state["state"].items():
            own = getattr(self, k)
            if set(tensors) != set(own):
                raise KeyError(f"load_state_dict: {k} holds {sorted(tensors)}, not {sorted(own)}")
            for i, value in tensors.items():
                _copy_into(own[i], value, f"load_state_dict: {k}[{i}]")

    def _number(self, name: str):
        """`self.name`: a Python number eagerly; inside a trace a 0-d double input read at every
        call, so changing it never retraces. Arithmetic on it stays in double precision, as
        Python's does, until `_cast` meets a tensor."""
        trace = current()
        if trace is None:
            return self.__dict__[name]
        return Tensor._make_tracer(trace.scalar(self, name), trace)

    def _count_step(self):
        """t += 1, returned: a Python int eagerly, the step counter's new value inside a trace."""
        trace = current()
        if trace is None:
            self.__dict__["t"] += 1
            note_change(self, "t")
            return self.__dict__["t"]
        t = Tensor._make_tracer(trace.scalar(self, "t"), trace) + 1
        trace.write_scalar(self, "t", t._node)
        return t

    def _state(self, like: Tensor) -> Tensor:
        """A zero state tensor shaped like a parameter (made eagerly, so jit writes it in place)."""
        return init.zeros(*like.shape, device=like.device, dtype=like.dtype)

    def __repr__(self) -> str:
        hyper = ", ".join(f"{k}={getattr(self, k)}" for k in self.hyperparameters)
        return f"{type(self).__name__}({len(self.params)} parameters, {hyper})"


class SGD(Optimizer):
    """SGD with needle's damped momentum: u = momentum*u + (1-momentum)*(grad + wd*p); p -= lr*u."""

    hyperparameters = ("lr", "momentum", "weight_decay")
    lr, momentum, weight_decay = _Number(), _Number(), _Number()

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float = 0.01,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params)
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.u = WatchedDict({i: self._state(p) for i, p in enumerate(self.params)})

    def step(self) -> None:
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            lr, m, wd = (self._number(k) for k in self.hyperparameters)
            grad = p.grad.data + _cast(wd, p) * p.data
            u = self.u[i]
            u.data = _cast(m, p) * u.data + _cast(1 - m, p) * grad
            p.data = p.data - _cast(lr, p) * u.data


class Adam(Optimizer):
    """Adam with bias correction and L2 weight decay added to the gradient (needle's Adam)."""

    hyperparameters = ("lr", "beta1", "beta2", "eps", "weight_decay")
    lr, beta1, beta2, eps, weight_decay, t = (_Number() for _ in range(6))

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float = 0.01,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params)
        self.lr, self.beta1, self.beta2 = lr, beta1, beta2
        self.eps, self.weight_decay = eps, weight_decay
        self.t = 0
        self.m = WatchedDict({i: self._state(p) for i, p in enumerate(self.params)})
        self.v = WatchedDict({i: self._state(p) for i, p in enumerate(self.params)})

    def step(self) -> None:
        t = self._count_step()
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            lr, b1, b2, eps, wd = (self._number(k) for k in self.hyperparameters)
            grad = p.grad.data + _cast(wd, p) * p.data
            m, v = self.m[i], self.v[i]
            m.data = _cast(b1, p) * m.data + _cast(1 - b1, p) * grad
            v.data = _cast(b2, p) * v.data + _cast(1 - b2, p) * grad**2
            # bias corrections in double precision, as needle computes them in Python
            m_hat = m.data / _cast(1 - b1**t, p)
            v_hat = v.data / _cast(1 - b2**t, p)
            p.data = p.data - _cast(lr, p) * m_hat / (v_hat**0.5 + _cast(eps, p))


def _cast(c, like: Tensor):
    """A Python number as is; a traced 0-d number cast to `like`'s dtype."""
    return c.cast(like.dtype) if isinstance(c, Tensor) else c


__all__ = ["Optimizer", "SGD", "Adam"]
