"""needle's sequence modules: RNN and LSTM cells and stacks, Embedding.

Sequences are time-major: X is (T, B, features), hidden states (num_layers, B, hidden).
"""

from __future__ import annotations

from .. import init, ops
from ..autograd import Tensor
from .nn_basic import Module, Parameter


def _uniform(*shape: int, bound: float, device, dtype) -> Parameter:
    return Parameter(
        init.rand(*shape, low=-bound, high=bound, device=device, dtype=dtype, requires_grad=True)
    )


def _check_step_input(cell, X: Tensor) -> None:
    """A cell's input must be (B, input_size)."""
    if X.ndim != 2 or X.shape[1] != cell.input_size:
        raise ValueError(
            f"{type(cell).__name__}({cell.input_size}, {cell.hidden_size}): the input must be "
            f"2-D (batch, input_size) = (B, {cell.input_size}), got shape {X.shape}"
        )


def _check_sequence_input(module, X: Tensor) -> None:
    """A stack's input must be (T, B, input_size)."""
    if X.ndim != 3 or X.shape[2] != module.input_size:
        raise ValueError(
            f"{type(module).__name__}({module.input_size}, {module.hidden_size}, "
            f"num_layers={module.num_layers}): the input must be 3-D (seq_len, batch, "
            f"input_size) = (T, B, {module.input_size}), got shape {X.shape}"
        )


def _check_state(module, name: str, state: Tensor, batch: int) -> None:
    """An initial state (h0 or c0) must be (num_layers, B, hidden_size)."""
    expected = (module.num_layers, batch, module.hidden_size)
    if tuple(state.shape) != expected:
        raise ValueError(
            f"{type(module).__name__}({module.input_size}, {module.hidden_size}, "
            f"num_layers={module.num_layers}): {name} must be (num_layers, batch, hidden_size) "
            f"= {expected}, got shape {state.shape}"
        )


def _affine(cell, x: Tensor, h: Tensor) -> Tensor:
    """x @ W_ih + b_ih + h @ W_hh + b_hh for a cell with those attributes (biases optional)."""
    out = x @ cell.W_ih + h @ cell.W_hh
    if cell.bias_ih is not None:
        out = out + cell.bias_ih.reshape((1, out.shape[1])).broadcast_to(out.shape)
        out = out + cell.bias_hh.reshape((1, out.shape[1])).broadcast_to(out.shape)
    return out


class RNNCell(Module):
    """One Elman step: h' = act(x @ W_ih + b_ih + h @ W_hh + b_hh), act tanh or relu.

    W_ih (in, H), W_hh (H, H), bias_ih (H,), bias_hh (H,) are drawn in that order, each uniform
    in +-1/sqrt(H).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        nonlinearity: str = "tanh",
        device=None,
        dtype="float32",
    ) -> None:
        super().__init__()
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(
                f"RNNCell: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}"
            )
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.nonlinearity = nonlinearity
        self.device, self.dtype = device, dtype
        kw = {"bound": hidden_size**-0.5, "device": device, "dtype": dtype}
        self.W_ih = _uniform(input_size, hidden_size, **kw)
        self.W_hh = _uniform(hidden_size, hidden_size, **kw)
        self.bias_ih = _uniform(hidden_size, **kw) if bias else None
        self.bias_hh = _uniform(hidden_size, **kw) if bias else None

    def forward(self, X: Tensor, h: Tensor | None = None) -> Tensor:
        """X (B, in), h (B, H) (zeros when None) -> h' (B, H)."""
        _check_step_input(self, X)
        if h is None:
            h = init.zeros(X.shape[0], self.hidden_size, device=X.device, dtype=self.dtype)
        out = _affine(self, X, h)
        return ops.tanh(out) if self.nonlinearity == "tanh" else ops.relu(out)


class RNN(Module):
    """A stack of `num_layers` RNNCells (`rnn_cells`) run over a sequence.

    forward(X (T, B, in), h0 (L, B, H) = None) -> (output (T, B, H), h_n (L, B, H)).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        nonlinearity: str = "tanh",
        device=None,
        dtype="float32",
    ) -> None:
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.rnn_cells = [
            RNNCell(
                input_size if k == 0 else hidden_size,
                hidden_size,
                bias=bias,
                nonlinearity=nonlinearity,
                device=device,
                dtype=dtype,
            )
            for k in range(num_layers)
        ]

    def forward(self, X: Tensor, h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """X (T, B, in), h0 (L, B, H) (zeros when None) -> (output (T, B, H), h_n (L, B, H)):
        the last layer's state at every step and every layer's state at the last step."""
        _check_sequence_input(self, X)
        if h0 is not None:
            _check_state(self, "h0", h0, X.shape[1])
        xs = list(ops.split(X, 0))
        hs = list(ops.split(h0, 0)) if h0 is not None else [None] * self.num_layers
        h_n = []
        for cell, h in zip(self.rnn_cells, hs, strict=True):
            for t in range(len(xs)):
                h = xs[t] = cell(xs[t], h)
            h_n.append(h)
        return ops.stack(xs, 0), ops.stack(h_n, 0)


class LSTMCell(Module):
    """One LSTM step with gates i, f, g, o (PyTorch's order).

    W_ih (in, 4H), W_hh (H, 4H), bias_ih (4H,), bias_hh (4H,) are drawn in that order, each
    uniform in +-1/sqrt(H). c' = f * c + i * g, h' = o * tanh(c').

    >>> import needlec as nc
    >>> cell = nc.nn.LSTMCell(10, 20)
    >>> h, c = cell(nc.init.ones(4, 10))
    >>> h.shape, c.shape
    ((4, 20), (4, 20))
    """

    def __init__(
        self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype="float32"
    ) -> None:
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.device, self.dtype = device, dtype
        kw = {"bound": hidden_size**-0.5, "device": device, "dtype": dtype}
        self.W_ih = _uniform(input_size, 4 * hidden_size, **kw)
        self.W_hh = _uniform(hidden_size, 4 * hidden_size, **kw)
        self.bias_ih = _uniform(4 * hidden_size, **kw) if bias else None
        self.bias_hh = _uniform(4 * hidden_size, **kw) if bias else None

    def forward(self, X: Tensor, h: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """X (B, in), h = (h0, c0) each (B, H) (zeros when None) -> (h', c')."""
        _check_step_input(self, X)
        bs, hidden = X.shape[0], self.hidden_size
        if h is None:
            zeros = init.zeros(bs, hidden, device=X.device, dtype=self.dtype)
            h = (zeros, zeros)
        h0, c0 = h
        gates = _affine(self, X, h0).reshape((bs, 4, hidden))
        i, f, g, o = ops.split(gates, 1)
        i, f, g, o = ops.sigmoid(i), ops.sigmoid(f), ops.tanh(g), ops.sigmoid(o)
        c = f * c0 + i * g
        return o * ops.tanh(c), c


class LSTM(Module):
    """A stack of `num_layers` LSTMCells (`lstm_cells`) run over a sequence.

    forward(X (T, B, in), (h0, c0) each (L, B, H) = None) -> (output (T, B, H), (h_n, c_n)).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        device=None,
        dtype="float32",
    ) -> None:
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.lstm_cells = [
            LSTMCell(
                input_size if k == 0 else hidden_size,
                hidden_size,
                bias=bias,
                device=device,
                dtype=dtype,
            )
            for k in range(num_layers)
        ]

    def forward(
        self, X: Tensor, h: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """X (T, B, in), h = (h0, c0) each (L, B, H) (zeros when None) -> (output (T, B, H),
        (h_n, c_n) each (L, B, H)): the last layer's h at every step and every layer's state
        at the last step."""
        _check_sequence_input(self, X)
        if h is not None:
            _check_state(self, "h0", h[0], X.shape[1])
            _check_state(self, "c0", h[1], X.shape[1])
        xs = list(ops.split(X, 0))
        if h is None:
            states = [None] * self.num_layers
        else:
            states = list(zip(ops.split(h[0], 0), ops.split(h[1], 0), strict=True))
        h_n, c_n = [], []
        for cell, state in zip(self.lstm_cells, states, strict=True):
            for t in range(len(xs)):
                state = cell(xs[t], state)
                xs[t] = state[0]
            h_n.append(state[0])
            c_n.append(state[1])
        return ops.stack(xs, 0), (ops.stack(h_n, 0), ops.stack(c_n, 0))


class Embedding(Module):
    """A lookup table: ids x (T, B) -> weight[x] (T, B, dim), weight = randn(num, dim).

    The lookup is one_hot(num, x) @ weight, so ids may be an integer or float tensor.
    """

    def __init__(
        self, num_embeddings: int, embedding_dim: int, device=None, dtype="float32"
    ) -> None:
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.device, self.dtype = device, dtype
        self.weight = Parameter(
            init.randn(num_embeddings, embedding_dim, device=device, dtype=dtype)
        )

    def forward(self, x: Tensor) -> Tensor:
        """Ids x (T, B) -> their embeddings (T, B, embedding_dim).

        Eagerly an id outside [-num_embeddings, num_embeddings) raises IndexError (a negative
        id counts from the end, as in numpy); under jit it gives a zero embedding (see
        `init.one_hot`)."""
        if x.ndim != 2:
            raise ValueError(
                f"Embedding({self.num_embeddings}, {self.embedding_dim}): ids must be 2-D "
                f"(seq_len, batch) = (T, B), got shape {x.shape}"
            )
        seq_len, bs = x.shape
        hot = init.one_hot(self.num_embeddings, x, device=x.device, dtype=self.dtype)
        rows = hot.reshape((seq_len * bs, self.num_embeddings)) @ self.weight
        return rows.reshape((seq_len, bs, self.embedding_dim))
