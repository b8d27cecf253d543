"""needle's homework 4 models: ResNet9 for CIFAR-10 and a language model for Penn Treebank.

>>> import numpy as np
>>> model = ResNet9()
>>> sum(int(np.prod(p.shape)) for p in model.parameters())
431946
"""

from __future__ import annotations

from .. import nn
from ..autograd import Tensor


class ConvBN(nn.Module):
    """Conv(k, stride) -> BatchNorm2d -> ReLU on NCHW input ("same" padding k // 2)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        device=None,
        dtype: str = "float32",
    ) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.conv = nn.Conv(in_channels, out_channels, kernel_size, stride=stride, **kw)
        self.bn = nn.BatchNorm2d(out_channels, **kw)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        """x (N, in_channels, H, W) -> (N, out_channels, H', W'), H' = ceil(H / stride) for an
        odd kernel_size (see `nn.Conv`)."""
        return self.relu(self.bn(self.conv(x)))


class ResNet9(nn.Module):
    """needle's small ResNet for 32x32 RGB images (N, 3, 32, 32) -> logits (N, 10).

    ConvBN 3->16 k7 s4, 16->32 k3 s2, a residual pair of 32->32 k3 s1, 32->64 k3 s2,
    64->128 k3 s2, a residual pair of 128->128 k3 s1, Flatten, Linear(128, 128), ReLU,
    Linear(128, 10): 431,946 parameters. Spatially 32 -> 8 -> 4 -> 2 -> 1.
    """

    def __init__(self, device=None, dtype: str = "float32") -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.device, self.dtype = device, dtype
        self.model = nn.Sequential(
            ConvBN(3, 16, 7, 4, **kw),
            ConvBN(16, 32, 3, 2, **kw),
            nn.Residual(nn.Sequential(ConvBN(32, 32, 3, 1, **kw), ConvBN(32, 32, 3, 1, **kw))),
            ConvBN(32, 64, 3, 2, **kw),
            ConvBN(64, 128, 3, 2, **kw),
            nn.Residual(nn.Sequential(ConvBN(128, 128, 3, 1, **kw), ConvBN(128, 128, 3, 1, **kw))),
            nn.Flatten(),
            nn.Linear(128, 128, **kw),
            nn.ReLU(),
            nn.Linear(128, 10, **kw),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Images x (N, 3, 32, 32) -> logits (N, 10)."""
        return self.model(x)


SEQUENCE_MODELS = ("rnn", "lstm", "transformer")


class LanguageModel(nn.Module):
    """Embedding -> RNN, LSTM or Transformer -> Linear, for next-token prediction.

    forward(x (T, B) token ids, h=None) -> (logits (T*B, output_size), h'), where h' is the
    sequence model's final state: (num_layers, B, hidden) for the RNN, a pair of those for the
    LSTM, and for the Transformer (which keeps no state; its hidden width is embedding_size)
    the zeros it returns in its place. `seq_len` is the Transformer's longest sequence.

    >>> import needlec as nc, numpy as np
    >>> lm = LanguageModel(8, output_size=20, hidden_size=12, seq_model="lstm")
    >>> logits, (h, c) = lm(nc.Tensor(np.zeros((5, 3)), requires_grad=False))
    >>> logits.shape, h.shape, c.shape
    ((15, 20), (1, 3, 12), (1, 3, 12))
    """

    def __init__(
        self,
        embedding_size: int,
        output_size: int,
        hidden_size: int,
        num_layers: int = 1,
        seq_model: str = "rnn",
        seq_len: int = 40,
        device=None,
        dtype: str = "float32",
    ) -> None:
        super().__init__()
        if seq_model not in SEQUENCE_MODELS:
            raise ValueError(
                f"LanguageModel: seq_model must be one of {SEQUENCE_MODELS}, got {seq_model!r}"
            )
        kw = {"device": device, "dtype": dtype}
        self.embedding_size = embedding_size
        self.output_size = output_size
        self.num_layers = num_layers
        self.seq_model_name = seq_model
        self.embedding = nn.Embedding(output_size, embedding_size, **kw)
        if seq_model == "rnn":
            self.seq_model = nn.RNN(embedding_size, hidden_size, num_layers, **kw)
        elif seq_model == "lstm":
            self.seq_model = nn.LSTM(embedding_size, hidden_size, num_layers, **kw)
        else:
            self.seq_model = nn.Transformer(
                embedding_size, hidden_size, num_layers, sequence_len=seq_len, **kw
            )
            hidden_size = embedding_size  # the Transformer keeps the embedding width
        self.hidden_size = hidden_size
        self.linear = nn.Linear(hidden_size, output_size, **kw)

    def forward(self, x: Tensor, h=None) -> tuple[Tensor, object]:
        """Token ids x (T, B) and the sequence model's state h (None: zeros) ->
        (logits (T*B, output_size), the new state)."""
        seq_len, batch_size = x.shape
        out, h = self.seq_model(self.embedding(x), h)
        logits = self.linear(out.reshape((seq_len * batch_size, self.hidden_size)))
        return logits, h


__all__ = ["ConvBN", "LanguageModel", "ResNet9"]
