"""needle's homework 2 MLPResNet: structure, parameter counts, needle's own forward values, and
`epoch`/`train_mnist` eager against jit."""

from __future__ import annotations

import numpy as np
import pytest

import needlec as nc
from needlec import nn
from needlec.apps.mlp_resnet import MLPResNet, ResidualBlock, epoch, train_mnist


def count(model: nn.Module) -> int:
    return sum(int(np.prod(p.shape)) for p in model.parameters())


def linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


@pytest.mark.parametrize(
    "dim, hidden, blocks, classes",
    [(64, 32, 2, 10), (10, 100, 1, 100), (150, 100, 5, 10)],
)
def test_mlp_resnet_parameter_count(dim, hidden, blocks, classes):
    half = hidden // 2
    block = linear(hidden, half) + 2 * half + linear(half, hidden) + 2 * hidden  # norms: w, b
    expected = linear(dim, hidden) + blocks * block + linear(hidden, classes)
    assert count(MLPResNet(dim, hidden, blocks, classes)) == expected
    assert count(MLPResNet(dim, hidden, blocks, classes, norm=nn.LayerNorm1d)) == expected


@pytest.mark.parametrize(
    "args, expected",  # needle's homework 2 tests
    [((15, 2, nn.BatchNorm1d), 111), ((784, 100, nn.LayerNorm1d), 159452)],
)
def test_residual_block_parameter_count_matches_needle(args, expected):
    assert count(ResidualBlock(*args)) == expected


def test_mlp_resnet_structure():
    model = MLPResNet(20, 16, num_blocks=3, num_classes=4, norm=nn.LayerNorm1d, drop_prob=0.25)
    kinds = [type(m).__name__ for m in model.modules]
    assert kinds == ["Linear", "ReLU", "Sequential", "Sequential", "Sequential", "Linear"]
    assert (model.modules[0].in_features, model.modules[0].out_features) == (20, 16)
    assert (model.modules[-1].in_features, model.modules[-1].out_features) == (16, 4)
    for block in model.modules[2:5]:
        residual, relu = block.modules
        assert isinstance(residual, nn.Residual) and isinstance(relu, nn.ReLU)
        inner = residual.fn.modules
        assert [type(m).__name__ for m in inner] == [
            "Linear",
            "LayerNorm1d",
            "ReLU",
            "Dropout",
            "Linear",
            "LayerNorm1d",
        ]
        assert (inner[0].out_features, inner[4].in_features, inner[4].out_features) == (8, 8, 16)
        assert inner[3].p == 0.25


def test_forward_matches_needles_homework_values():
    """needle's test_mlp_resnet_forward_1: draws in needle's order give needle's numbers."""
    np.random.seed(4)
    x = nc.Tensor(np.random.randn(2, 10), dtype="float32")
    out = MLPResNet(10, 5, 2, 5, nn.LayerNorm1d, 0.5)(x).numpy()
    expected = [
        [3.046162, 1.44972, -1.921363, 0.021816, -0.433953],
        [3.489114, 1.820994, -2.111306, 0.226388, -1.029428],
    ]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def synthetic_loader(n=90, dim=12, classes=4, batch=16, shuffle=True):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, dim)).astype("float32")
    y = (X[:, :classes].argmax(axis=1) + (rng.random(n) < 0.2)) % classes  # learnable, noisy
    return nc.data.DataLoader(nc.data.NDArrayDataset(X, y), batch_size=batch, shuffle=shuffle)


def run(jit: bool, optimizer, epochs: int = 2):
    np.random.seed(0)
    model = MLPResNet(12, 16, num_blocks=2, num_classes=4, drop_prob=0.0)
    opt = optimizer(model.parameters(), lr=0.05, weight_decay=0.001)
    loader = synthetic_loader()
    results = [epoch(loader, model, opt, jit=jit, progress=False) for _ in range(epochs)]
    results.append(epoch(loader, model, jit=jit, progress=False))
    running = [m.running_var.numpy() for m in _batchnorms(model)]
    return results, [p.numpy() for p in model.parameters()], running


def _batchnorms(model):
    return [
        m
        for block in model.modules[2:-1]
        for m in block.modules[0].fn.modules
        if hasattr(m, "running_var")
    ]


@pytest.mark.parametrize("optimizer", [nc.optim.SGD, nc.optim.Adam])
def test_epoch_jit_matches_eager(optimizer):
    eager, eager_params, eager_running = run(False, optimizer)
    jitted, jit_params, jit_running = run(True, optimizer)
    for (e_err, e_loss), (j_err, j_loss) in zip(eager, jitted, strict=True):
        assert j_err == e_err
        np.testing.assert_allclose(j_loss, e_loss, rtol=1e-5)
    for a, b in zip(jit_params + jit_running, eager_params + eager_running, strict=True):
        # compiled code differs from numpy by ulps; biases right before a BatchNorm get pure
        # rounding noise as gradient, which Adam scales to steps of size lr
        atol = 1e-3 if optimizer is nc.optim.Adam else 1e-5
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=atol)
    assert eager[1][1] < eager[0][1]  # it learns


def test_eval_epoch_error_and_loss_against_numpy():
    """In eval mode the outputs are per-example, so the whole set through the model at once
    gives every batch's logits; error and mean loss are recomputed here with numpy."""
    np.random.seed(0)
    model = MLPResNet(12, 16, num_blocks=1, num_classes=4)
    loader = synthetic_loader(batch=25, shuffle=False)  # batches of 25, 25, 25, 15
    err, loss = epoch(loader, model, progress=False)
    X, y = loader.dataset.arrays
    assert not model.training
    logits = model(nc.Tensor(X, requires_grad=False)).numpy().astype("float64")
    lse = np.log(np.exp(logits).sum(axis=1))
    per_example = lse - logits[np.arange(len(y)), y]
    batch_means = [per_example[i : i + 25].mean() for i in range(0, len(y), 25)]
    assert err == pytest.approx(np.mean(logits.argmax(axis=1) != y))
    assert loss == pytest.approx(np.mean(batch_means), rel=1e-5)


def test_epoch_sets_the_mode_itself():
    np.random.seed(0)
    model = MLPResNet(12, 16, num_blocks=1, num_classes=4)
    opt = nc.optim.SGD(model.parameters(), lr=0.01)
    model.eval()
    epoch(synthetic_loader(), model, opt, progress=False)
    assert model.training and model.modules[2].modules[0].fn.modules[3].training
    epoch(synthetic_loader(), model, progress=False)
    assert not model.training and not model.modules[2].modules[0].fn.modules[3].training


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_train_mnist_learns_a_learnable_task(learnable_mnist_dir, jit):
    """On fake idx files whose labels follow from the images, training lowers the training
    loss (more epochs, lower last-epoch loss) and the held-out loss and error (against the
    untrained model, `epochs=0`). Dropout (0.1 in train_mnist) draws its masks differently
    eagerly and under jit, so the two runs differ, but both learn."""
    kw = {
        "batch_size": 40,
        "hidden_dim": 32,
        "lr": 0.01,
        "data_dir": learnable_mnist_dir,
        "progress": False,
        "jit": jit,
    }
    untrained = train_mnist(**kw, epochs=0)
    short = train_mnist(**kw, epochs=1)
    trained = train_mnist(**kw, epochs=4)
    assert all(np.isfinite(short)) and all(np.isfinite(trained))
    assert all(0.0 <= e <= 1.0 for e in (short[0], short[2], trained[0], trained[2]))
    assert trained[1] < 0.5 * short[1]  # the training loss falls epoch after epoch
    assert trained[0] < 0.5 * short[0]  # and so does the training error
    assert trained[3] < 0.5 * untrained[3]  # and the held-out loss with them
    assert trained[2] <= 0.3 < 0.7 <= untrained[2]  # chance is 0.9


def test_train_mnist_on_random_idx_files_is_finite_and_reproducible(mnist_dir):
    """Each run is reproducible, eager or jitted, since train_mnist seeds numpy's generator."""
    kw = {"batch_size": 40, "epochs": 2, "hidden_dim": 16, "data_dir": mnist_dir, "progress": False}
    for jit in (False, True):
        first = train_mnist(**kw, jit=jit)
        assert len(first) == 4 and all(np.isfinite(first))
        assert 0.0 <= first[0] <= 1.0 and 0.0 <= first[2] <= 1.0
        assert train_mnist(**kw, jit=jit) == first


def test_epoch_progress_bar_is_shown_on_request(capsys):
    np.random.seed(0)
    model = MLPResNet(12, 16, num_blocks=1, num_classes=4)
    epoch(synthetic_loader(), model, progress=True)
    assert "eval" in capsys.readouterr().err  # the bar's description
    epoch(synthetic_loader(), model, progress=False)
    assert capsys.readouterr().err == ""
