"""needle's homework 2 application: a residual MLP for MNIST.

The structure, the order of the random draws and the seeding (`np.random.seed(4)` at the start of
`epoch` and of `train_mnist`) are needle's, so a seeded eager run gives needle's numbers. Under
`jit=True` the Dropout masks come instead from the compiled graph's counter-based generator,
seeded once per call from numpy's generator: a seeded jitted run is reproducible, but when
drop_prob > 0 its masks, and so its numbers, differ from the eager run's. (With drop_prob = 0
every mask is all ones, and `epoch`, which reseeds on each call, matches eager up to float
rounding; `train_mnist` uses needle's drop_prob = 0.1.)

>>> import numpy as np
>>> import needlec as nc
>>> from needlec.apps.mlp_resnet import MLPResNet, epoch
>>> np.random.seed(0)
>>> model = MLPResNet(8, hidden_dim=16, num_blocks=2, num_classes=3, drop_prob=0.0)
>>> data = nc.data.NDArrayDataset(np.random.rand(40, 8).astype("float32"), np.arange(40) % 3)
>>> opt = nc.optim.Adam(model.parameters(), lr=0.01)
>>> err, loss = epoch(nc.data.DataLoader(data, batch_size=10), model, opt, jit=True)
>>> 0.0 <= err <= 1.0 and loss > 0
True
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from .. import data, nn, optim
from ._loop import Tally, classification_epoch


def ResidualBlock(
    dim: int,
    hidden_dim: int,
    norm: Callable[[int], nn.Module] = nn.BatchNorm1d,
    drop_prob: float = 0.1,
) -> nn.Module:
    """ReLU(x + norm(Linear(Dropout(ReLU(norm(Linear(x, dim -> hidden)))), hidden -> dim))).

    Weights are drawn in module order: the first Linear, then the second.

    >>> block = ResidualBlock(15, 2)
    >>> sum(int(np.prod(p.shape)) for p in block.parameters())  # 15*2+2 + 2+2 + 2*15+15 + 15+15
    111
    """
    return nn.Sequential(
        nn.Residual(
            nn.Sequential(
                nn.Linear(dim, hidden_dim),
                norm(hidden_dim),
                nn.ReLU(),
                nn.Dropout(drop_prob),
                nn.Linear(hidden_dim, dim),
                norm(dim),
            )
        ),
        nn.ReLU(),
    )


def MLPResNet(
    dim: int,
    hidden_dim: int = 100,
    num_blocks: int = 3,
    num_classes: int = 10,
    norm: Callable[[int], nn.Module] = nn.BatchNorm1d,
    drop_prob: float = 0.1,
) -> nn.Module:
    """Linear(dim -> hidden), ReLU, `num_blocks` residual blocks of width hidden with inner
    width hidden // 2, then Linear(hidden -> num_classes).

    >>> model = MLPResNet(10, 100, num_blocks=1, num_classes=100)
    >>> sum(int(np.prod(p.shape)) for p in model.parameters())
    21650
    """
    return nn.Sequential(
        nn.Linear(dim, hidden_dim),
        nn.ReLU(),
        *[
            ResidualBlock(hidden_dim, hidden_dim // 2, norm=norm, drop_prob=drop_prob)
            for _ in range(num_blocks)
        ],
        nn.Linear(hidden_dim, num_classes),
    )


def epoch(
    dataloader: data.DataLoader,
    model: nn.Module,
    opt: optim.Optimizer | None = None,
    *,
    jit: bool = False,
    progress: bool | None = None,
) -> tuple[float, float]:
    """One pass over `dataloader`: training (model.train(), one update per batch) when `opt` is
    given, evaluation (model.eval()) otherwise.

    Returns `(error rate, mean loss)`: the fraction of examples misclassified and the mean over
    batches of the batch's mean softmax loss. Seeds numpy's generator with 4 first, as needle
    does. Images (B, H, W, C) are flattened to (B, H*W*C). With `jit`, the step runs under
    `needlec.jit`; `progress` shows a tqdm bar (None: only when stderr is a terminal).
    """
    tally = classification_epoch(
        dataloader,
        model,
        nn.SoftmaxLoss(),
        opt,
        jit=jit,
        flatten=True,
        progress=progress,
        postfix=_loss_and_error,
    )
    return tally.error, tally.mean_batch_loss


def _loss_and_error(tally: Tally) -> dict[str, str]:
    return {"loss": f"{tally.mean_batch_loss:.4f}", "err": f"{tally.error:.4f}"}


def train_mnist(
    batch_size: int = 100,
    epochs: int = 10,
    optimizer: type[optim.Optimizer] = optim.Adam,
    lr: float = 0.001,
    weight_decay: float = 0.001,
    hidden_dim: int = 100,
    data_dir: str | os.PathLike = "data",
    *,
    jit: bool = False,
    progress: bool | None = None,
) -> tuple[float, float, float, float]:
    """Train `MLPResNet(784, hidden_dim)` on MNIST for `epochs` epochs, then evaluate it.

    `data_dir` holds the four gzip idx files (`train-images-idx3-ubyte.gz`, ...). Returns
    `(train error, train loss)` of the last training epoch and `(test error, test loss)`.
    """
    np.random.seed(4)
    train_set = data.MNISTDataset(
        os.path.join(data_dir, "train-images-idx3-ubyte.gz"),
        os.path.join(data_dir, "train-labels-idx1-ubyte.gz"),
    )
    test_set = data.MNISTDataset(
        os.path.join(data_dir, "t10k-images-idx3-ubyte.gz"),
        os.path.join(data_dir, "t10k-labels-idx1-ubyte.gz"),
    )
    train_loader = data.DataLoader(train_set, batch_size, shuffle=True)
    test_loader = data.DataLoader(test_set, batch_size, shuffle=False)
    model = MLPResNet(784, hidden_dim)
    opt = optimizer(model.parameters(), lr=lr, weight_decay=weight_decay)
    train_err = train_loss = float("nan")
    for _ in range(epochs):
        train_err, train_loss = epoch(train_loader, model, opt, jit=jit, progress=progress)
    test_err, test_loss = epoch(test_loader, model, jit=jit, progress=progress)
    return train_err, train_loss, test_err, test_loss


__all__ = ["MLPResNet", "ResidualBlock", "epoch", "train_mnist"]
