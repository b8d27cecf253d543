"""The arg of a CALLBACK node: a Python function the node's value comes from.

A needle `TensorOp` written by a user (its own `compute` over NDArrays and `gradient` over
Tensors, with no IR op behind it) is traced as one CALLBACK node. Its arg, a `Callback`, holds
the function that computes the node's value from its sources' numpy arrays, the output's shape
and dtype (found when the op was traced), the op's name and the user's line that applied it. Its
VJP is a second CALLBACK node whose function calls the user's `gradient` (see
`Callback.gradient`); the function that builds both lives above the IR (`needlec.custom_ops`).

Every pass treats the node as opaque: it is never folded, fused with other ops, duplicated or
recomputed, and it runs on the interpreters (the LLVM backend runs it between native segments).

>>> import numpy as np
>>> cb = Callback(lambda x: x * 2, (3,), "float64", "Twice", "<doc>", key=("Twice",))
>>> cb(np.ones(3)).tolist(), cb.describe()
([2.0, 2.0, 2.0], 'custom op Twice (applied at <doc>)')
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .ops import user_frame


class CallbackError(RuntimeError):
    """A custom op run as a Python callback failed, or was asked for what it cannot do (a second
    order gradient); the message names the op and the user's line."""


class Callback:
    """A CALLBACK node's arg.

    `fn(*arrays) -> array` computes the value from the sources' numpy arrays; `shape`, `dtype`:
    the value's type; `name`: the op (its class name); `where`: the user's line that applied
    it; `key`: what tells two callbacks apart (the op's class and attributes, or its identity),
    so two applications of equal ops to the same values intern as one node. `kind` is "forward"
    or "gradient"; `make_gradient(shapes, dtypes) -> Callback` gives the gradient callback of a
    forward one over sources of those types (None for a gradient: no second order).
    """

    __slots__ = ("fn", "shape", "dtype", "name", "where", "key", "kind", "make_gradient")

    def __init__(
        self,
        fn: Callable[..., np.ndarray],
        shape: tuple[int, ...],
        dtype: str,
        name: str,
        where: str,
        key: object,
        kind: str = "forward",
        make_gradient: Callable[..., Callback] | None = None,
    ) -> None:
        self.fn, self.shape, self.dtype = fn, tuple(int(d) for d in shape), str(dtype)
        self.name, self.where, self.key, self.kind = name, where, key, kind
        self.make_gradient = make_gradient

    def __call__(self, *arrays: np.ndarray) -> np.ndarray:
        return self.fn(*arrays)

    def _id(self) -> tuple:
        return (self.kind, self.key, self.shape, self.dtype)

    def __hash__(self) -> int:
        return hash(self._id())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Callback) and self._id() == other._id()

    def __repr__(self) -> str:
        return self.name if self.kind == "forward" else f"{self.name}.gradient"

    def describe(self) -> str:
        """`custom op Square (applied at train.py:12)`, or the gradient of one."""
        what = f"custom op {self.name} (applied at {self.where})"
        return what if self.kind == "forward" else f"the gradient of {what}"

    def gradient(self, shapes: list[tuple[int, ...]], dtypes: list[str]) -> Callback:
        """The callback that computes this op's input gradients from (out_grad, out, *inputs):
        the one float input's gradient, or, for several float inputs, theirs raveled and
        concatenated in order (the VJP row slices them apart). A CallbackError for a gradient's
        own gradient (second order through a Python callback)."""
        if self.make_gradient is None:
            raise CallbackError(
                f"second-order gradient through custom op {self.name} (applied at "
                f"{self.where}): its gradient runs as a "
                "Python callback, which cannot be differentiated again; write the op with "
                f"needlec ops to differentiate it twice (at {user_frame()})"
            )
        return self.make_gradient(shapes, dtypes)


__all__ = ["Callback", "CallbackError"]
