"""Train needle's MLPResNet on handwritten digits, the training step compiled by `needlec.jit`.

Usage::

    python -m needlec.examples.train              # scikit-learn's bundled 8x8 digits, jitted
    python -m needlec.examples.train --eager      # the same training, op by op
    python -m needlec.examples.train --data DIR   # MNIST: the four idx files in DIR
    python -m needlec.examples.train --epochs 20 --batch-size 64 --lr 0.003 --hidden 128 --seed 1
    mpiexec -n 2 python -m needlec.examples.train --distributed   # data-parallel, 2 processes

The digits (1,797 images, 64 pixels each) come with scikit-learn, so nothing is downloaded;
20% of them are held out. With `--data DIR`, DIR holds MNIST's `train-images-idx3-ubyte.gz`,
`train-labels-idx1-ubyte.gz`, `t10k-images-idx3-ubyte.gz` and `t10k-labels-idx1-ubyte.gz`
(plain idx files work too) and the t10k set is held out. When DIR holds only the two t10k files,
its 10,000 images are split 8,000 to train and 2,000 held out by a permutation seeded with `--seed`.

The training step (`needlec.apps._loop.make_step`, shared with the homework epoch functions)
is ordinary needle code, `opt.reset_grad(); loss = loss_fn(model(x), y); loss.backward();
opt.step()`, under `needlec.jit`: it is traced once per batch shape, and the parameters, Adam's
state and BatchNorm's running statistics are written back after each call. It returns the loss
and the logits, which are read outside (inside a trace a tensor has no value yet). Each epoch
prints the training and held-out loss and accuracy; at the end the same step is timed eagerly
and jitted on one batch, and the median milliseconds per step and the speedup are printed.
numpy's generator is seeded with `--seed`, so runs repeat exactly.

With `--distributed` (under `mpiexec -n N`) each process trains a replica on its shard of every
epoch (`needlec.distributed.DistributedSampler`), `--batch-size` stays the global batch (each
rank takes 1/N of it), gradients are averaged across processes inside the jitted step
(`DistributedOptimizer`), BatchNorm's statistics are synchronized, and rank 0 alone prints and
shows the progress bar; the losses and accuracies it prints are over all ranks.

`--eager` and the jitted run compute the same first epoch. After that they part ways: the
model's Dropout layers (p = 0 here) still draw a mask each step, eagerly from numpy's
generator and under jit as one seed per call, so the next epoch's shuffle differs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np

import needlec as nc
from needlec import nn
from needlec.apps._loop import Tally, make_step, run_steps
from needlec.apps.mlp_resnet import MLPResNet

SKLEARN_MISSING = (
    "This demo trains on scikit-learn's bundled digits, and scikit-learn is not installed.\n"
    "Install it with:  pip install scikit-learn\n"
    "or train on MNIST idx files instead:  python -m needlec.examples.train --data DIR"
)
MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The demo's options from `argv` (`sys.argv[1:]` when None); `--help` lists them."""
    parser = argparse.ArgumentParser(
        prog="python -m needlec.examples.train",
        description="Train needle's MLPResNet on handwritten digits with a jitted step.",
    )
    parser.add_argument("--epochs", type=int, default=10, help="passes over the training set")
    parser.add_argument("--batch-size", type=int, default=32, help="examples per step")
    parser.add_argument("--lr", type=float, default=0.003, help="Adam's learning rate")
    parser.add_argument("--hidden", type=int, default=64, help="width of the residual MLP")
    parser.add_argument("--seed", type=int, default=0, help="seed of numpy's generator")
    parser.add_argument("--data", metavar="DIR", help="train on MNIST idx files in DIR")
    parser.add_argument("--eager", action="store_true", help="train without jit")
    parser.add_argument(
        "--distributed", action="store_true", help="data-parallel over the ranks of mpiexec"
    )
    return parser.parse_args(argv)


def load_digits(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits in [0, 1], split 80/20 by a permutation seeded with `seed`.

    Raises ImportError when scikit-learn is not installed.
    """
    X, y = nc.data.load_digits()
    X_train, X_test, y_train, y_test = nc.data.train_test_split(X, y, test_size=0.2, seed=seed)
    return X_train, y_train, X_test, y_test


def _find(data_dir: str, name: str) -> str | None:
    """The path of idx file `name` in `data_dir`, gzipped or not; None when neither is there."""
    found = [
        p for p in (os.path.join(data_dir, name + ext) for ext in (".gz", "")) if os.path.exists(p)
    ]
    return found[0] if found else None


def load_mnist(
    data_dir: str, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNIST's training and t10k sets from idx files (gzipped or not) in `data_dir`; when only
    the t10k files are there, those split 80/20 (8,000 and 2,000) by a permutation seeded with
    `seed`."""
    paths = [_find(data_dir, name) for name in MNIST_FILES]
    if paths[0] is None and paths[1] is None and None not in paths[2:]:
        X, y = nc.data.parse_mnist(paths[2], paths[3])
        X_train, X_test, y_train, y_test = nc.data.train_test_split(X, y, test_size=0.2, seed=seed)
        return X_train, y_train, X_test, y_test
    for name, path in zip(MNIST_FILES, paths, strict=True):
        if path is None:
            raise SystemExit(f"--data {data_dir}: no {name}.gz (or {name}) there")
    X_train, y_train = nc.data.parse_mnist(paths[0], paths[1])
    X_test, y_test = nc.data.parse_mnist(paths[2], paths[3])
    return X_train, y_train, X_test, y_test


def make_steps(model: nn.Module, opt: nc.optim.Optimizer, jit: bool) -> tuple[Callable, Callable]:
    """The training step and the evaluation step, each `(x, y) -> (loss, logits)`, jitted when
    `jit` (`needlec.apps._loop.make_step`: one Adam update per call, or a forward pass)."""
    loss_fn = nn.SoftmaxLoss()
    return make_step(model, loss_fn, opt, jit=jit), make_step(model, loss_fn, jit=jit)


def _postfix(tally: Tally) -> dict[str, str]:
    return {"loss": f"{tally.mean_loss:.4f}", "acc": f"{tally.accuracy:.3f}"}


def run_epoch(
    loader: nc.data.DataLoader, step: Callable, desc: str, across_ranks: bool = False
) -> tuple[float, float]:
    """Apply `step` to every batch; returns (mean loss per example, accuracy), over the
    examples of every rank when `across_ranks` (rank 0 alone shows the progress bar then)."""
    show = None if nc.distributed.rank() == 0 else False
    tally = run_steps(loader, step, total=len(loader), desc=desc, postfix=_postfix, progress=show)
    if not across_ranks:
        return tally.mean_loss, tally.accuracy
    sums = np.array([tally.weighted_loss, tally.correct, tally.count], dtype="float64")
    loss, correct, count = nc.distributed.all_reduce(nc.Tensor(sums), "sum").numpy()
    return loss / max(count, 1), correct / max(count, 1)


def time_steps(
    model: nn.Module, opt: nc.optim.Optimizer, x: nc.Tensor, y: nc.Tensor, n: int = 30
) -> tuple[float, float]:
    """Median milliseconds per training step, eager and jitted, on the batch (x, y)."""
    model.train()
    eager_step, _ = make_steps(model, opt, jit=False)
    jit_step, _ = make_steps(model, opt, jit=True)
    medians = []
    for step in (eager_step, jit_step):
        for _ in range(3):  # warm up (the jitted step traces on its first call)
            step(x, y)[0].numpy()
        times = []
        for _ in range(n):
            start = time.perf_counter()
            step(x, y)[0].numpy()
            times.append(time.perf_counter() - start)
        medians.append(1e3 * float(np.median(times)))
    return medians[0], medians[1]


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the demo with command-line arguments `argv`; returns what it printed, as numbers:
    `train_loss`, `train_acc`, `test_loss`, `test_acc` (lists, one per epoch), `eager_ms`,
    `jit_ms` (median per step) and `seconds` (training time)."""
    args = parse_args(argv)
    ranks, rank = 1, 0
    if args.distributed:
        nc.distributed.init()
        ranks, rank = nc.distributed.world_size(), nc.distributed.rank()
        if args.batch_size % ranks:
            raise SystemExit(f"--batch-size {args.batch_size} is not a multiple of {ranks} ranks")
    say = print if rank == 0 else (lambda *a, **k: None)
    if args.data:
        X_train, y_train, X_test, y_test = load_mnist(args.data, args.seed)
        name = f"MNIST from {args.data}"
    else:
        try:
            X_train, y_train, X_test, y_test = load_digits(args.seed)
        except ImportError:
            raise SystemExit(SKLEARN_MISSING) from None
        name = "scikit-learn's 8x8 digits"
    np.random.seed(args.seed)
    dim = X_train.shape[1]
    model = MLPResNet(dim, args.hidden, num_blocks=2, num_classes=10, drop_prob=0.0)
    opt = nc.optim.Adam(model.parameters(), lr=args.lr, weight_decay=1e-4)
    train_set, sampler = nc.data.NDArrayDataset(X_train, y_train), None
    if args.distributed:  # the same start everywhere, averaged gradients, shards of the data
        nc.distributed.broadcast_parameters(model)
        nc.distributed.sync_batch_norm(model)
        opt = nc.distributed.DistributedOptimizer(opt)
        sampler = nc.distributed.DistributedSampler(train_set, shuffle=True, seed=args.seed)
        train_loader = nc.data.DataLoader(train_set, args.batch_size // ranks, sampler=sampler)
    else:
        train_loader = nc.data.DataLoader(train_set, args.batch_size, shuffle=True)
    test_loader = nc.data.DataLoader(nc.data.NDArrayDataset(X_test, y_test), 256)
    mode = "eager" if args.eager else "jit"
    n_params = sum(int(np.prod(p.shape)) for p in model.parameters())
    where = f" on {ranks} processes" if args.distributed else ""
    say(
        f"{name}: {len(y_train)} training and {len(y_test)} held-out examples; "
        f"MLPResNet({dim}, hidden={args.hidden}), {n_params} parameters; {mode} steps{where}"
    )
    train_step, eval_step = make_steps(model, opt, jit=not args.eager)
    history: dict = {"train_loss": [], "train_acc": [], "test_loss": [], "test_acc": []}
    start = time.perf_counter()
    for e in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        if sampler is not None:
            sampler.set_epoch(e)
        train_loss, train_acc = run_epoch(
            train_loader, train_step, f"epoch {e}", sampler is not None
        )
        model.eval()
        test_loss, test_acc = run_epoch(test_loader, eval_step, "held-out")
        for key, value in zip(history, (train_loss, train_acc, test_loss, test_acc), strict=True):
            history[key].append(value)
        say(
            f"epoch {e:2d}/{args.epochs}  train loss {train_loss:.4f} acc {train_acc:.4f}  "
            f"held-out loss {test_loss:.4f} accuracy {test_acc:.4f}  "
            f"({time.perf_counter() - t0:.1f} s)"
        )
    history["seconds"] = time.perf_counter() - start
    say(f"trained in {history['seconds']:.1f} s; held-out accuracy {history['test_acc'][-1]:.4f}")

    batch = args.batch_size // ranks
    x = nc.Tensor(X_train[:batch], requires_grad=False)
    y = nc.Tensor(y_train[:batch], requires_grad=False)
    eager_ms, jit_ms = time_steps(model, opt, x, y)
    history["eager_ms"], history["jit_ms"] = eager_ms, jit_ms
    say(
        f"training step on a batch of {len(y_train[:batch])}{where}, median of 30: "
        f"eager {eager_ms:.2f} ms/step, jit {jit_ms:.2f} ms/step, speedup {eager_ms / jit_ms:.2f}x"
    )
    return history


if __name__ == "__main__":
    main(sys.argv[1:])
