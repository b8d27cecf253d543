"""What the epoch functions share: one training or evaluation step (eager or under `jit`), a
running tally of loss and accuracy, the progress bar, and the loop over a classifier's batches
(`run_steps`, and `classification_epoch` around it: needle's seeding and train/eval mode).

A step is built once per epoch call and called once per batch with the batch as arguments, so
under `jit` the step traces once per batch shape (a smaller last batch traces a second time) and
every later call runs the compiled graph. Values are read (`.numpy()`) outside the step only.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence

import numpy as np
from tqdm.auto import tqdm

from .. import nn, ops
from ..autograd import Tensor
from ..data import DataLoader
from ..jit import jit as _jit
from ..optim import Optimizer


def progress_bar(
    iterable: Iterable, *, total: int | None = None, desc: str = "", progress: bool | None = None
) -> tqdm:
    """A tqdm bar over `iterable`; `progress=None` shows it only when stderr is a terminal."""
    disable = not sys.stderr.isatty() if progress is None else not progress
    return tqdm(iterable, total=total, desc=desc, disable=disable, leave=False, dynamic_ncols=True)


def clip_grad_norm(params: Sequence[Tensor], max_norm: float) -> None:
    """Scale the gradients of `params` so that their global L2 norm is at most `max_norm`.

    Built from tensor ops only (min(1, c) is written 1 - relu(1 - c)), so it also runs inside
    `jit`, where reading the norm as a Python number is not possible.
    """
    grads = [p.grad.data for p in params if p.grad is not None]
    if not grads:
        return
    total = (grads[0] ** 2).sum()
    for g in grads[1:]:
        total = total + (g**2).sum()
    ratio = (total**0.5 + 1e-6) ** -1 * max_norm
    factor = 1.0 - ops.relu(1.0 - ratio)
    for p in params:
        if p.grad is not None:
            p.grad = p.grad.data * factor.broadcast_to(p.grad.shape).cast(p.grad.dtype)


def make_step(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    opt: Optimizer | None = None,
    *,
    jit: bool = False,
    flatten: bool = False,
    clip: float | None = None,
) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """`step(x, y) -> (loss, logits)`: one optimizer update when `opt` is given, else a forward
    pass. With `flatten`, x (B, ...) is reshaped to (B, prod) first. With `jit`, the step is
    compiled with `needlec.jit`."""

    def forward(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        if flatten and len(x.shape) > 2:
            x = x.reshape((x.shape[0], int(np.prod(x.shape[1:]))))
        logits = model(x)
        return loss_fn(logits, y), logits

    def train_step(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        opt.reset_grad()
        loss, logits = forward(x, y)
        loss.backward()
        if clip is not None:
            clip_grad_norm(opt.params, clip)
        opt.step()
        return loss.detach(), logits.detach()

    step = forward if opt is None else train_step
    return _jit(step) if jit else step


def make_sequence_step(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    opt: Optimizer | None = None,
    *,
    jit: bool = False,
    clip: float | None = None,
) -> Callable:
    """`step(x, y, h) -> (loss, logits, h')` for a language model `model(x, h) -> (logits, h)`.

    The returned hidden state is detached, so backpropagation stops at each chunk (truncated
    BPTT). `h` is None on the first chunk, a tensor (RNN) or a pair of tensors (LSTM) after.
    """

    def forward(x: Tensor, y: Tensor, h) -> tuple[Tensor, Tensor, object]:
        logits, h = model(x, h)
        return loss_fn(logits, y), logits, _detach(h)

    def train_step(x: Tensor, y: Tensor, h) -> tuple[Tensor, Tensor, object]:
        opt.reset_grad()
        loss, logits, h = forward(x, y, h)
        loss.backward()
        if clip is not None:
            clip_grad_norm(opt.params, clip)
        opt.step()
        return loss.detach(), logits.detach(), h

    step = forward if opt is None else train_step
    return _jit(step) if jit else step


def _detach(h):
    if h is None:
        return None
    if isinstance(h, tuple | list):
        return tuple(_detach(t) for t in h)
    return h.detach()


class Tally:
    """Sums over the batches of an epoch: examples, correct predictions and losses."""

    def __init__(self) -> None:
        self.count = 0
        self.correct = 0
        self.batch_losses: list[float] = []
        self.weighted_loss = 0.0

    def add(self, loss: Tensor, logits: Tensor, y: Tensor) -> None:
        """Record one batch: its mean loss and its logits (B, classes) against labels y (B,)."""
        value = float(np.asarray(loss.numpy()).reshape(()))
        labels = np.asarray(y.numpy()).reshape(-1)
        predicted = np.asarray(logits.numpy()).argmax(axis=1)
        self.count += labels.shape[0]
        self.correct += int((predicted == labels).sum())
        self.batch_losses.append(value)
        self.weighted_loss += value * labels.shape[0]

    @property
    def accuracy(self) -> float:
        """The fraction of examples predicted correctly (0 before any batch)."""
        return self.correct / max(self.count, 1)

    @property
    def error(self) -> float:
        """The fraction of examples misclassified: 1 - accuracy."""
        return 1.0 - self.accuracy

    @property
    def mean_batch_loss(self) -> float:
        """The mean over batches of each batch's mean loss."""
        return float(np.mean(self.batch_losses)) if self.batch_losses else float("nan")

    @property
    def mean_loss(self) -> float:
        """The mean loss per example (batches weighted by their size)."""
        return self.weighted_loss / max(self.count, 1)


def loss_and_accuracy(tally: Tally) -> dict[str, str]:
    """The default progress-bar postfix: the mean loss per example and the accuracy."""
    return {"loss": f"{tally.mean_loss:.4f}", "acc": f"{tally.accuracy:.4f}"}


def run_steps(
    batches: Iterable[tuple[Tensor, Tensor]],
    step: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]],
    *,
    total: int | None = None,
    desc: str = "",
    progress: bool | None = None,
    postfix: Callable[[Tally], dict[str, str]] = loss_and_accuracy,
) -> Tally:
    """`loss, logits = step(x, y)` for every batch `(x, y)`, tallied; returns the `Tally`.

    A progress bar (`progress_bar(batches, total=total, desc=desc, progress=progress)`) shows
    `postfix(tally)` after each batch.
    """
    tally = Tally()
    bar = progress_bar(batches, total=total, desc=desc, progress=progress)
    for x, y in bar:
        loss, logits = step(x, y)
        tally.add(loss, logits, y)
        bar.set_postfix(**postfix(tally))
    return tally


def classification_epoch(
    dataloader: DataLoader,
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    opt: Optimizer | None = None,
    *,
    jit: bool = False,
    flatten: bool = False,
    progress: bool | None = None,
    postfix: Callable[[Tally], dict[str, str]] = loss_and_accuracy,
) -> Tally:
    """needle's homework epoch over a classifier's `(x, y)` batches; returns the `Tally`.

    Seeds numpy's generator with 4 first (as needle does), then trains (model.train(), one
    update per batch) when `opt` is given, or evaluates (model.eval()) otherwise, with the step
    from `make_step(model, loss_fn, opt, jit=jit, flatten=flatten)`. The bar is described
    "train" or "eval".
    """
    np.random.seed(4)
    if opt is not None:
        model.train()
    else:
        model.eval()
    step = make_step(model, loss_fn, opt, jit=jit, flatten=flatten)
    return run_steps(
        dataloader,
        step,
        total=len(dataloader),
        desc="train" if opt is not None else "eval",
        progress=progress,
        postfix=postfix,
    )
