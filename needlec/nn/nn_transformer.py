"""needle's Transformer (the final homework's): multi-head attention, pre-norm blocks, a causal
mask and a learned positional embedding."""

from __future__ import annotations

import math

import numpy as np

from .. import init, ops
from ..autograd import Tensor
from .nn_basic import Dropout, LayerNorm1d, Linear, Module, ReLU, Sequential
from .nn_sequence import Embedding


class MultiHeadAttention(Module):
    """Scaled dot-product attention over heads: softmax(q @ k^T / sqrt(D) + mask) @ v.

    forward(q, k, v), each (B, H, T, D) (k and v may have another length), returns
    (result (B, H, Tq, D), probs (B, H, Tq, Tk)); probs are after dropout, as in needle.
    """

    def __init__(
        self, *, dropout: float = 0.0, causal: bool = False, device=None, dtype="float32"
    ) -> None:
        super().__init__()
        self.device = device
        self.dtype = dtype
        self.causal = causal
        self.dropout = Dropout(dropout)

    def create_causal_mask(self, i: int, j: int, device=None) -> Tensor:
        """(1, 1, i, j): 0 where a query may look, -float32 max above the shifted diagonal."""
        mask = -np.finfo(np.float32).max * np.triu(np.ones((1, 1, i, j), np.float32), j - i + 1)
        return Tensor(mask, device=device, dtype=self.dtype, requires_grad=False)

    def matmul(self, a: Tensor, b_transpose: Tensor) -> Tensor:
        """a @ b_transpose^T over the last two axes, batched over the leading ones."""
        return a @ b_transpose.transpose()

    def softmax(self, logit: Tensor) -> Tensor:
        """Softmax over the last axis, shifted by its (detached) max for stability."""
        kept = (*logit.shape[:-1], 1)
        last = logit.ndim - 1
        shift = logit.max((last,)).detach().reshape(kept).broadcast_to(logit.shape)
        probs = ops.exp(logit - shift)
        return probs / probs.sum((last,)).reshape(kept).broadcast_to(logit.shape)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """q (B, H, Tq, D), k and v (B, H, Tk, D) -> (result (B, H, Tq, D), probs (B, H, Tq,
        Tk)); with `causal`, query i attends to keys up to i + Tk - Tq only."""
        _, _, queries_len, q_dim = q.shape
        _, _, keys_values_len, k_dim = k.shape
        if q_dim != k_dim or k_dim != v.shape[-1]:
            raise ValueError(f"MultiHeadAttention: head dims differ: {q.shape} {k.shape} {v.shape}")
        scores = self.matmul(q, k) / math.sqrt(q_dim)
        if self.causal:
            mask = self.create_causal_mask(queries_len, keys_values_len, q.device)
            scores = scores + mask.broadcast_to(scores.shape)
        probs = self.dropout(self.softmax(scores))
        return probs @ v, probs


class AttentionLayer(Module):
    """Pre-norm multi-head attention: LayerNorm q, k, v, project to heads, attend, project out.

    forward(q (B, Tq, q_features), k = q, v = q) -> (B, Tq, out_features). The projections
    (q, k, v, then out) are Linear without bias; out_features defaults to q_features.
    """

    def __init__(
        self,
        q_features: int,
        num_head: int,
        dim_head: int,
        *,
        out_features: int | None = None,
        k_features: int | None = None,
        v_features: int | None = None,
        dropout: float = 0.0,
        causal: bool = True,
        device=None,
        dtype="float32",
    ) -> None:
        super().__init__()
        self.device = device
        self.dtype = dtype
        k_features = q_features if k_features is None else k_features
        v_features = q_features if v_features is None else v_features
        out_features = q_features if out_features is None else out_features
        self.q_features, self.k_features, self.v_features = q_features, k_features, v_features
        self.out_features = out_features
        self.num_head = num_head
        self.dim_head = dim_head
        kw = {"device": device, "dtype": dtype}
        inner = num_head * dim_head
        self.prenorm_q = LayerNorm1d(q_features, **kw)
        self.prenorm_k = LayerNorm1d(k_features, **kw)
        self.prenorm_v = LayerNorm1d(v_features, **kw)
        self.q_projection = Linear(q_features, inner, bias=False, **kw)
        self.k_projection = Linear(k_features, inner, bias=False, **kw)
        self.v_projection = Linear(v_features, inner, bias=False, **kw)
        self.attn = MultiHeadAttention(dropout=dropout, causal=causal, **kw)
        self.out_projection = Linear(inner, out_features, bias=False, **kw)

    def _heads(self, x: Tensor) -> Tensor:
        """(B, T, H*D) -> (B, H, T, D)."""
        b, t, _ = x.shape
        return x.reshape((b, t, self.num_head, self.dim_head)).transpose((1, 2))

    def forward(self, q: Tensor, k: Tensor | None = None, v: Tensor | None = None) -> Tensor:
        """q (B, Tq, q_features), k and v (B, Tk, k/v_features) (q when None) ->
        (B, Tq, out_features)."""
        k = q if k is None else k
        v = q if v is None else v
        batch_size, queries_len, _ = q.shape
        q = self._heads(self.q_projection(self.prenorm_q(q)))
        k = self._heads(self.k_projection(self.prenorm_k(k)))
        v = self._heads(self.v_projection(self.prenorm_v(v)))
        out, _ = self.attn(q, k, v)
        out = out.transpose((1, 2)).reshape(
            (batch_size, queries_len, self.num_head * self.dim_head)
        )
        return self.out_projection(out)


class TransformerLayer(Module):
    """A pre-norm Transformer block on (B, T, q_features):

    x = x + dropout(attention(x));  x = x + dropout(W2 dropout(relu(W1 layernorm(x)))).
    """

    def __init__(
        self,
        q_features: int,
        num_head: int,
        dim_head: int,
        hidden_size: int,
        *,
        dropout: float = 0.0,
        causal: bool = True,
        device=None,
        dtype="float32",
    ) -> None:
        super().__init__()
        self.device = device
        self.dtype = dtype
        kw = {"device": device, "dtype": dtype}
        self.attn = AttentionLayer(
            q_features, num_head, dim_head, dropout=dropout, causal=causal, **kw
        )
        self.dropout = Dropout(dropout)
        self.layernorm = LayerNorm1d(q_features, **kw)
        self.ff = Sequential(
            Linear(q_features, hidden_size, **kw),
            ReLU(),
            Dropout(dropout),
            Linear(hidden_size, q_features, **kw),
            Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        """x (B, T, q_features) -> the same shape, through attention then the feed-forward."""
        x = x + self.dropout(self.attn(x))
        return x + self.ff(self.layernorm(x))


class Transformer(Module):
    """A decoder-only Transformer: learned positional embedding, then `num_layers` blocks.

    forward(x (T, B, embedding_size), h=None) -> (y (T, B, embedding_size), zeros like y);
    with batch_first=True x and y are (B, T, embedding_size). The second output stands in for
    the hidden state the RNN and LSTM return. The positional embedding (sequence_len,
    embedding_size) is drawn first, then the layers in order.

    >>> import needlec as nc
    >>> model = nc.nn.Transformer(16, 32, num_layers=2, num_head=2, dim_head=8)
    >>> y, h = model(nc.init.ones(5, 3, 16))
    >>> y.shape, h.shape
    ((5, 3, 16), (5, 3, 16))
    """

    def __init__(
        self,
        embedding_size: int,
        hidden_size: int,
        num_layers: int,
        *,
        num_head: int = 8,
        dim_head: int = 32,
        dropout: float = 0.0,
        causal: bool = True,
        device=None,
        dtype="float32",
        batch_first: bool = False,
        sequence_len: int = 2048,
    ) -> None:
        super().__init__()
        self.device = device
        self.dtype = dtype
        self.batch_first = batch_first
        self.embedding_size = embedding_size
        self.sequence_len = sequence_len
        self.pos_embedding = Embedding(sequence_len, embedding_size, device=device, dtype=dtype)
        self.layers = Sequential(
            *[
                TransformerLayer(
                    embedding_size,
                    num_head,
                    dim_head,
                    hidden_size,
                    dropout=dropout,
                    causal=causal,
                    device=device,
                    dtype=dtype,
                )
                for _ in range(num_layers)
            ]
        )

    def forward(self, x: Tensor, h=None) -> tuple[Tensor, Tensor]:
        """x (T, B, embedding_size) ((B, T, ...) with batch_first) -> (y, zeros like y); `h` is
        accepted for the RNN/LSTM interface and ignored."""
        if not self.batch_first:
            x = x.transpose((0, 1))
        batch_size, seq_len, dim = x.shape
        positions = Tensor(
            np.arange(seq_len).reshape(seq_len, 1), device=x.device, requires_grad=False
        )
        pos = self.pos_embedding(positions).reshape((1, seq_len, dim))
        x = self.layers(x + pos.broadcast_to(x.shape))
        if not self.batch_first:
            x = x.transpose((0, 1))
        return x, init.zeros_like(x)
