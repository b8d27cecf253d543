"""The training steps `python -m benchmarks` times, as needlec models with their batches.

Each `StepSpec` builds a needlec model from a fixed numpy seed (so two builds hold the same
initial weights, and a new process builds the same graph again) and makes its batch. One step
is the same for every framework: zero the gradients, forward, mean softmax cross-entropy,
backward, SGD with needle's damped momentum (u = 0.9 u + 0.1 g; p -= lr u).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

LR, MOMENTUM = 0.01, 0.9


@dataclass(frozen=True)
class StepSpec:
    """One benchmarked training step: a needlec model and the shapes of its batch."""

    name: str  # the id `--only` takes
    title: str  # the row's label
    kind: str  # "mlp" (hand-written numpy exists), "conv" or "lm"
    build: Callable[[], object]  # -> a needlec nn.Module (call with the seed set)
    batch: Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray]]  # -> (x, labels)
    mlp_dims: tuple[int, ...] = ()  # for kind "mlp": the layer widths, input first
    seed: int = 0


def mlp(dims: tuple[int, ...]):
    """needlec's Sequential of Linear layers with ReLU between them (widths `dims`)."""
    from needlec import nn

    layers: list = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        if i:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(a, b))
    return nn.Sequential(*layers)


def _images(n: int, shape: tuple[int, ...], classes: int = 10):
    def make(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        x = rng.random((n, *shape), dtype="float32")
        return x, rng.integers(0, classes, n).astype("float32")

    return make


def _tokens(seq: int, batch: int, vocab: int):
    def make(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        x = rng.integers(0, vocab, (seq, batch)).astype("float32")
        return x, rng.integers(0, vocab, seq * batch).astype("float32")

    return make


def _mlp_spec(dims: tuple[int, ...], batch: int) -> StepSpec:
    widths = "-".join(str(d) for d in dims)
    short = f"{dims[0]}-{dims[1]}x{len(dims) - 2}-{dims[-1]}" if len(dims) > 3 else widths
    return StepSpec(
        name=f"mlp-{short}-b{batch}",
        title=f"MLP {widths}, batch {batch}",
        kind="mlp",
        build=lambda: mlp(dims),
        batch=_images(batch, (dims[0],)),
        mlp_dims=dims,
    )


def _mlp_resnet():
    from needlec.apps.mlp_resnet import MLPResNet

    return MLPResNet(784, hidden_dim=100, num_blocks=3, drop_prob=0.0)


def _resnet9():
    from needlec.apps.models import ResNet9

    return ResNet9()


def _lstm_lm():
    from needlec.apps.models import LanguageModel

    return LanguageModel(32, 200, hidden_size=64, num_layers=2, seq_model="lstm")


def _transformer_lm():
    from needlec.apps.models import LanguageModel

    return LanguageModel(
        64, 200, hidden_size=128, num_layers=2, seq_model="transformer", seq_len=20
    )


SPECS: list[StepSpec] = [
    _mlp_spec((784, 256, 10), 32),
    _mlp_spec((784, 256, 10), 256),
    _mlp_spec((784, 512, 512, 512, 10), 32),
    _mlp_spec((784, 512, 512, 512, 10), 256),
    StepSpec(
        "mlpresnet-b128",
        "MLPResNet 784-100x3-10, batch 128 (MNIST)",
        "conv",
        _mlp_resnet,
        _images(128, (784,)),
    ),
    StepSpec(
        "resnet9-b128",
        "ResNet9, batch 128, 32x32x3 (CIFAR-10)",
        "conv",
        _resnet9,
        _images(128, (3, 32, 32)),
    ),
    StepSpec(
        "lstm-lm",
        "LSTM LM 2x64, emb 32, seq 20, batch 16, vocab 200",
        "lm",
        _lstm_lm,
        _tokens(20, 16, 200),
    ),
    StepSpec(
        "transformer-lm",
        "Transformer LM 2 layers, emb 64, 8x32 heads, ff 128, seq 20, batch 16, vocab 200",
        "lm",
        _transformer_lm,
        _tokens(20, 16, 200),
    ),
]
QUICK = ["mlp-784-256-10-b32", "mlpresnet-b128"]


def spec(name: str) -> StepSpec:
    """The step named `name` (KeyError listing the names otherwise)."""
    for s in SPECS:
        if s.name == name:
            return s
    raise KeyError(f"no step {name!r}; steps: {', '.join(s.name for s in SPECS)}")


def build_needlec(s: StepSpec):
    """(model, jit-able step function, x, y): the model drawn from `s.seed`, SGD with momentum,
    SoftmaxLoss; x and y are the step's batch as numpy arrays."""
    from needlec import nn, optim

    from .bench_train_step import make_step

    np.random.seed(s.seed)
    model = s.build()
    opt = optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    step = make_step(model, opt, nn.SoftmaxLoss())
    x, y = s.batch(np.random.default_rng(s.seed + 1))
    return model, step, x, y
