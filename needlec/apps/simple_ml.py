"""needle's `simple_ml`: homework 2's two-layer network trained by hand (`parse_mnist`,
`softmax_loss`, `nn_epoch`) and homework 4's training loops for CIFAR-10 and Penn Treebank.

Each epoch function takes `jit=True` to run its step under `needlec.jit` (one compiled step
per call, the batch passed as arguments) and `progress` for a tqdm bar (None: shown only when
stderr is a terminal). The homework 4 functions seed numpy's generator with 4 first, as needle
does, and return `(average accuracy, average loss)` over the examples (tokens for PTB).
"""

from __future__ import annotations

import os

import numpy as np

from .. import nn, ops, optim
from ..autograd import Tensor
from ..data import DataLoader, get_batch
from ..data import parse_mnist as _parse_mnist
from ..jit import jit as _jit
from ._loop import Tally, classification_epoch, make_sequence_step, progress_bar

SOFTMAX_LOSS = nn.SoftmaxLoss()  # the default loss of the epoch functions, as in needle


def parse_mnist(
    image_filename: str | os.PathLike, label_filename: str | os.PathLike
) -> tuple[np.ndarray, np.ndarray]:
    """Read MNIST idx files: X float32 (count, 784) scaled to [0, 1], y uint8 (count,)."""
    return _parse_mnist(image_filename, label_filename)


def softmax_loss(Z: Tensor, y_one_hot: Tensor) -> Tensor:
    """Mean softmax (cross-entropy) loss of logits Z (B, k) against one-hot labels (B, k):
    the mean over rows of log(sum(exp(Z))) - Z[y]. Computed directly, not stabilized, as
    needle's homework does.

    >>> Z = Tensor(np.zeros((2, 4), dtype="float32"))
    >>> Y = Tensor(np.eye(4, dtype="float32")[[0, 3]])
    >>> bool(np.isclose(softmax_loss(Z, Y).numpy(), np.log(4)))
    True
    """
    log_sum = ops.log(ops.exp(Z).sum((1,)))
    return (log_sum.sum() - (Z * y_one_hot).sum()) / Z.shape[0]


def _sgd_step(W1: Tensor, W2: Tensor, X: Tensor, Y: Tensor, lr: float) -> tuple[Tensor, Tensor]:
    """One SGD step on softmax_loss(ReLU(X @ W1) @ W2, Y); returns new leaf weights."""
    loss = softmax_loss(ops.relu(X @ W1) @ W2, Y)
    loss.backward()
    return Tensor(W1.data - W1.grad.data * lr), Tensor(W2.data - W2.grad.data * lr)


def nn_epoch(
    X: np.ndarray,
    y: np.ndarray,
    W1: Tensor,
    W2: Tensor,
    lr: float = 0.1,
    batch: int = 100,
    *,
    jit: bool = False,
    progress: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """One epoch of minibatch SGD, in order, on the bias-free network ReLU(X @ W1) @ W2.

    X (n, d) float32, y (n,) labels, W1 (d, hidden), W2 (hidden, k). Batches are consecutive
    rows (the last may be smaller). Returns the new `(W1, W2)`, leaf tensors.
    """
    k = W2.shape[1]
    step = _jit(lambda W1, W2, X, Y: _sgd_step(W1, W2, X, Y, lr)) if jit else None
    starts = range(0, X.shape[0], batch)
    for i in progress_bar(starts, total=len(starts), desc="nn_epoch", progress=progress):
        Xb = Tensor(X[i : i + batch], dtype="float32", requires_grad=False)
        Yb = Tensor(np.eye(k, dtype="float32")[y[i : i + batch]], requires_grad=False)
        if step is None:
            W1, W2 = _sgd_step(W1, W2, Xb, Yb, lr)
        else:
            W1, W2 = step(W1, W2, Xb, Yb)
    if jit:  # outputs of a jitted call remember it; hand back plain leaves as the eager path does
        W1, W2 = Tensor(W1.numpy()), Tensor(W2.numpy())
    return W1, W2


def loss_err(h: Tensor, y: np.ndarray) -> tuple[float, float]:
    """(softmax loss, error rate) of logits `h` (B, k) against labels `y` (B,)."""
    y_one_hot = Tensor(np.eye(h.shape[-1], dtype="float32")[y], requires_grad=False)
    loss = float(softmax_loss(h, y_one_hot).numpy())
    return loss, float(np.mean(h.numpy().argmax(axis=1) != y))


### CIFAR-10 ###


def epoch_general_cifar10(
    dataloader: DataLoader,
    model: nn.Module,
    loss_fn: nn.Module = SOFTMAX_LOSS,
    opt: optim.Optimizer | None = None,
    *,
    jit: bool = False,
    progress: bool | None = None,
) -> tuple[float, float]:
    """One pass over `dataloader`: training with `opt`, evaluation (model.eval()) without.

    Returns `(average accuracy, average loss)` over the examples. Seeds numpy's generator
    with 4 first, as needle does.
    """
    tally = classification_epoch(dataloader, model, loss_fn, opt, jit=jit, progress=progress)
    return tally.accuracy, tally.mean_loss


def train_cifar10(
    model: nn.Module,
    dataloader: DataLoader,
    n_epochs: int = 1,
    optimizer: type[optim.Optimizer] = optim.Adam,
    lr: float = 0.001,
    weight_decay: float = 0.001,
    loss_fn: type[nn.Module] = nn.SoftmaxLoss,
    *,
    jit: bool = False,
    progress: bool | None = None,
) -> tuple[float, float]:
    """Train for `n_epochs`; returns the last epoch's `(average accuracy, average loss)`."""
    np.random.seed(4)
    opt = optimizer(model.parameters(), lr=lr, weight_decay=weight_decay)
    avg_acc, avg_loss = float("nan"), float("nan")
    for _ in range(n_epochs):
        avg_acc, avg_loss = epoch_general_cifar10(
            dataloader, model, loss_fn(), opt, jit=jit, progress=progress
        )
    return avg_acc, avg_loss


def evaluate_cifar10(
    model: nn.Module,
    dataloader: DataLoader,
    loss_fn: type[nn.Module] = nn.SoftmaxLoss,
    *,
    jit: bool = False,
    progress: bool | None = None,
) -> tuple[float, float]:
    """`(average accuracy, average loss)` of `model` over `dataloader`, in eval mode."""
    np.random.seed(4)
    return epoch_general_cifar10(dataloader, model, loss_fn(), jit=jit, progress=progress)


### Penn Treebank ###


def epoch_general_ptb(
    data: np.ndarray,
    model: nn.Module,
    seq_len: int = 40,
    loss_fn: nn.Module = SOFTMAX_LOSS,
    opt: optim.Optimizer | None = None,
    clip: float | None = None,
    device=None,
    dtype: str = "float32",
    *,
    jit: bool = False,
    progress: bool | None = None,
) -> tuple[float, float]:
    """One pass over `data` (nbatch, batch_size), as `batchify` returns it, in chunks of
    `seq_len` rows (`get_batch`), carrying the hidden state from chunk to chunk (detached:
    truncated backpropagation through time).

    Training with `opt` (gradients clipped to global norm `clip` when given), evaluation
    without. Returns `(average accuracy, average loss)` over the predicted tokens.
    """
    np.random.seed(4)
    if opt is not None:
        model.train()
    else:
        model.eval()
    batches = data.numpy() if isinstance(data, Tensor) else np.asarray(data)
    step = make_sequence_step(model, loss_fn, opt, jit=jit, clip=clip)
    tally = Tally()
    starts = range(0, batches.shape[0] - 1, seq_len)
    desc = "train" if opt is not None else "eval"
    bar = progress_bar(starts, total=len(starts), desc=desc, progress=progress)
    h = None
    for i in bar:
        x, y = get_batch(batches, i, seq_len, device=device, dtype=dtype)
        loss, logits, h = step(x, y, h)
        tally.add(loss, logits, y)
        bar.set_postfix(loss=f"{tally.mean_loss:.4f}", acc=f"{tally.accuracy:.4f}")
    return tally.accuracy, tally.mean_loss


def train_ptb(
    model: nn.Module,
    data: np.ndarray,
    seq_len: int = 40,
    n_epochs: int = 1,
    optimizer: type[optim.Optimizer] = optim.SGD,
    lr: float = 4.0,
    weight_decay: float = 0.0,
    loss_fn: type[nn.Module] = nn.SoftmaxLoss,
    clip: float | None = None,
    device=None,
    dtype: str = "float32",
    *,
    jit: bool = False,
    progress: bool | None = None,
) -> tuple[float, float]:
    """Train a language model for `n_epochs`; returns the last epoch's `(accuracy, loss)`."""
    np.random.seed(4)
    opt = optimizer(model.parameters(), lr=lr, weight_decay=weight_decay)
    avg_acc, avg_loss = float("nan"), float("nan")
    for _ in range(n_epochs):
        avg_acc, avg_loss = epoch_general_ptb(
            data, model, seq_len, loss_fn(), opt, clip, device, dtype, jit=jit, progress=progress
        )
    return avg_acc, avg_loss


def evaluate_ptb(
    model: nn.Module,
    data: np.ndarray,
    seq_len: int = 40,
    loss_fn: type[nn.Module] = nn.SoftmaxLoss,
    device=None,
    dtype: str = "float32",
    *,
    jit: bool = False,
    progress: bool | None = None,
) -> tuple[float, float]:
    """`(average accuracy, average loss)` of a language model over `data`, in eval mode."""
    np.random.seed(4)
    return epoch_general_ptb(
        data, model, seq_len, loss_fn(), None, None, device, dtype, jit=jit, progress=progress
    )


__all__ = [
    "epoch_general_cifar10",
    "epoch_general_ptb",
    "evaluate_cifar10",
    "evaluate_ptb",
    "loss_err",
    "nn_epoch",
    "parse_mnist",
    "softmax_loss",
    "train_cifar10",
    "train_ptb",
]
