"""needle's neural network modules.

>>> import needlec as nc
>>> model = nc.nn.Sequential(nc.nn.Linear(4, 8), nc.nn.ReLU(), nc.nn.Linear(8, 2))
>>> len(model.parameters())
4
"""

from .nn_basic import (
    BatchNorm1d,
    BatchNorm2d,
    Dropout,
    Flatten,
    Identity,
    LayerNorm1d,
    Linear,
    Module,
    Parameter,
    ReLU,
    Residual,
    Sequential,
    Sigmoid,
    SoftmaxLoss,
    Tanh,
)
from .nn_conv import Conv
from .nn_sequence import LSTM, RNN, Embedding, LSTMCell, RNNCell
from .nn_transformer import AttentionLayer, MultiHeadAttention, Transformer, TransformerLayer

__all__ = [
    "AttentionLayer",
    "BatchNorm1d",
    "BatchNorm2d",
    "Conv",
    "Dropout",
    "Embedding",
    "Flatten",
    "Identity",
    "LSTM",
    "LSTMCell",
    "LayerNorm1d",
    "Linear",
    "Module",
    "MultiHeadAttention",
    "Parameter",
    "RNN",
    "RNNCell",
    "ReLU",
    "Residual",
    "Sequential",
    "Sigmoid",
    "SoftmaxLoss",
    "Tanh",
    "Transformer",
    "TransformerLayer",
]
