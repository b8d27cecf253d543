"""The demo `python -m needlec.examples.train`, run through its `main(argv)`."""

from __future__ import annotations

import importlib.util
import re

import numpy as np
import pytest

import needlec as nc
from needlec.apps.mlp_resnet import MLPResNet
from needlec.examples import train

needs_sklearn = pytest.mark.skipif(
    importlib.util.find_spec("sklearn") is None, reason="the digits come with scikit-learn"
)


@needs_sklearn
def test_demo_runs_and_prints_accuracy_and_timings(capsys):
    result = train.main(["--epochs", "2", "--hidden", "32"])
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("epoch")]
    assert len(lines) == 2
    printed = [float(m) for m in re.findall(r"held-out loss [\d.]+ accuracy ([\d.]+)", out)]
    assert printed == pytest.approx(result["test_acc"], abs=1e-4)
    assert all(0.0 <= a <= 1.0 for a in result["test_acc"])
    assert result["test_acc"][-1] > 0.6  # chance is 0.1; this run gets 0.85
    assert re.search(r"eager [\d.]+ ms/step, jit [\d.]+ ms/step, speedup [\d.]+x", out)
    assert result["eager_ms"] > 0 and result["jit_ms"] > 0


@needs_sklearn
def test_demo_eager_and_jit_agree_on_the_first_epoch():
    """From the same seed the first epoch is the same computation. (Later epochs differ:
    dropout's mask draws move numpy's generator differently eagerly and under jit, so the
    shuffles part ways.)"""
    args = ["--epochs", "1", "--hidden", "16", "--batch-size", "64"]
    eager = train.main([*args, "--eager"])
    jitted = train.main(args)
    # The biases in front of each BatchNorm get a gradient that is rounding noise alone (the
    # normalization removes them), and Adam scales any noise to a full step: compiled float32,
    # summing in another order, walks them elsewhere by ~5e-5. The training loss is unaffected
    # (1e-8), but the held-out loss is taken with BatchNorm's running statistics, which carry
    # the walk: it agrees to ~2e-4.
    for key, rtol in [("train_loss", 1e-4), ("train_acc", 1e-4), ("test_loss", 1e-3)]:
        np.testing.assert_allclose(jitted[key], eager[key], rtol=rtol, err_msg=key)
    np.testing.assert_allclose(jitted["test_acc"], eager["test_acc"], atol=2 / 360, rtol=0)


@needs_sklearn
@pytest.mark.slow
def test_demo_default_config_reaches_93_percent(capsys):
    result = train.main([])
    assert result["test_acc"][-1] >= 0.93
    assert "held-out accuracy" in capsys.readouterr().out


def test_demo_trains_on_mnist_idx_files(mnist_dir, capsys):
    result = train.main(["--data", str(mnist_dir), "--epochs", "1", "--hidden", "8"])
    out = capsys.readouterr().out
    assert "120 training and 60 held-out examples" in out
    assert len(result["test_acc"]) == 1 and np.isfinite(result["test_loss"][0])


def test_demo_without_sklearn_says_how_to_install(monkeypatch):
    def missing(seed):
        raise ImportError("No module named 'sklearn'")

    monkeypatch.setattr(train, "load_digits", missing)
    with pytest.raises(SystemExit, match="pip install scikit-learn"):
        train.main(["--epochs", "1"])


def test_demo_reports_missing_mnist_files(tmp_path):
    with pytest.raises(SystemExit, match="train-images-idx3-ubyte"):
        train.main(["--data", str(tmp_path)])


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_run_epoch_reports_mean_loss_per_example_and_accuracy(jit):
    """`run_epoch` (the shared `_loop` tally and step) against numpy, batches of 4, 4 and 2."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((10, 6)).astype("float32")
    y = rng.integers(0, 3, 10)
    np.random.seed(0)
    model = MLPResNet(6, 8, num_blocks=1, num_classes=3, drop_prob=0.0).eval()
    opt = nc.optim.SGD(model.parameters(), lr=0.1)
    _, eval_step = train.make_steps(model, opt, jit=jit)
    loader = nc.data.DataLoader(nc.data.NDArrayDataset(X, y), 4)
    loss, acc = train.run_epoch(loader, eval_step, "held-out")
    logits = model(nc.Tensor(X, requires_grad=False)).numpy().astype("float64")
    lse = np.log(np.exp(logits).sum(axis=1))
    assert loss == pytest.approx(np.mean(lse - logits[np.arange(10), y]), rel=1e-5)
    assert acc == pytest.approx(np.mean(logits.argmax(axis=1) == y))
