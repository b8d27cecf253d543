"""Whole training steps under jit: the same needle code, eager and jitted, gives the same model.

Two copies of a model are built from the same seed; one is trained eagerly and one with the step
under `needlec.jit`. After 20 steps their parameters, optimizer state and BatchNorm running
statistics must agree to float32 rounding (in practice they are bit-identical: both run the same
ops in the same order on the reference backend).
"""

from __future__ import annotations

import numpy as np
import pytest

import needlec as nc
from needlec import TracerError, nn, optim
from needlec.apps.mlp_resnet import MLPResNet
from needlec.apps.models import LanguageModel

OPTIMIZERS = {
    "sgd_momentum": (optim.SGD, dict(lr=0.05, momentum=0.9, weight_decay=1e-3)),
    "adam": (optim.Adam, dict(lr=0.01, weight_decay=1e-3)),
}


def make_step(model, opt, loss_fn):
    def step(x, y):
        opt.reset_grad()
        out = model(x)
        logits = out[0] if isinstance(out, tuple) else out
        loss = loss_fn(logits, y)
        loss.backward()
        opt.step()
        return loss

    return step


def state_of(model, opt) -> list[np.ndarray]:
    """Everything a step writes: parameters, running statistics, optimizer state."""
    arrays = [p.numpy() for p in model.parameters()]
    for m in _modules(model):
        for name in ("running_mean", "running_var"):
            if hasattr(m, name):
                arrays.append(getattr(m, name).numpy())
    for name in ("u", "m", "v"):
        arrays += [t.numpy() for t in getattr(opt, name, {}).values()]
    return arrays


def _modules(m):
    todo, seen = [m], set()
    while todo:
        x = todo.pop()
        if id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, nn.Module):
            yield x
            todo.extend(vars(x).values())
        elif isinstance(x, list | tuple):
            todo.extend(x)
        elif isinstance(x, dict):
            todo.extend(x.values())


def train_both(build, batches, opt_name, steps=20, device=None):
    opt_cls, kw = OPTIMIZERS[opt_name]
    eager_model, jit_model = build(), build()
    eager_opt = opt_cls(eager_model.parameters(), **kw)
    jit_opt = opt_cls(jit_model.parameters(), **kw)
    loss_fn = nn.SoftmaxLoss()
    eager_step = make_step(eager_model, eager_opt, loss_fn)
    jit_step = nc.jit(make_step(jit_model, jit_opt, loss_fn))
    for i in range(steps):
        x, y = batches[i % len(batches)]
        if device in (None, nc.cpu()):  # numpy batches, as a user passes them
            xj, yj = x, y
        else:
            xj, yj = (nc.Tensor(a, device=device, requires_grad=False) for a in (x, y))
        le = eager_step(*(nc.Tensor(a, device=device, requires_grad=False) for a in (x, y)))
        lj = jit_step(xj, yj)
        np.testing.assert_allclose(lj.numpy(), le.numpy(), rtol=1e-5, atol=1e-6)
    return (eager_model, eager_opt), (jit_model, jit_opt), jit_step


def assert_same_state(a, b, atol=1e-5):
    sa, sb = state_of(*a), state_of(*b)
    assert len(sa) == len(sb) and len(sa) > 0
    for x, y in zip(sa, sb, strict=True):
        assert x.dtype == y.dtype == np.float32
        # compiled float32 code differs from numpy by ulps (summation order, correctly rounded
        # exp/log); a few Adam steps magnify them
        np.testing.assert_allclose(y, x, rtol=1e-4, atol=atol)


def digits_batches(n=3, batch=32, dim=64, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    return [
        (
            rng.standard_normal((batch, dim)).astype("float32"),
            rng.integers(0, classes, batch).astype("float32"),
        )
        for _ in range(n)
    ]


def build_mlp_resnet():
    np.random.seed(3)
    return MLPResNet(64, hidden_dim=32, num_blocks=2, num_classes=10, drop_prob=0.0)


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_mlp_resnet_with_batchnorm_jit_equals_eager(opt_name):
    eager, jitted, step = train_both(build_mlp_resnet, digits_batches(), opt_name)
    # a Linear bias right before a BatchNorm has a gradient of exactly 0 in exact arithmetic:
    # what is computed is rounding noise (1e-9), and Adam scales noise up to steps of size lr
    # (0.01), so those biases agree only to about lr between any two summation orders; the
    # losses above, step by step, and the SGD variant hold the state to 1e-5
    atol = 1e-2 if opt_name == "adam" else 1e-5
    assert_same_state(eager, jitted, atol=atol)
    assert step.trace_count == 1
    if opt_name == "adam":
        assert eager[1].t == jitted[1].t == 20
    # eval mode afterwards reads the written-back running statistics
    eager[0].eval()
    jitted[0].eval()
    x = digits_batches(1, seed=9)[0][0]
    want = eager[0](nc.Tensor(x)).numpy()
    got = nc.jit(lambda t: jitted[0](t))(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=atol)  # eval reads those biases


def ptb_batches(n=2, seq=6, batch=4, vocab=20, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ids = rng.integers(0, vocab, (seq + 1, batch))
        out.append((ids[:-1].astype("float32"), ids[1:].reshape(-1).astype("float32")))
    return out


def build_lstm_lm(device=None):
    np.random.seed(5)
    return LanguageModel(8, 20, hidden_size=12, num_layers=2, seq_model="lstm", device=device)


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_lstm_language_model_jit_equals_eager(opt_name, device):
    build = lambda: build_lstm_lm(device)  # noqa: E731
    eager, jitted, step = train_both(build, ptb_batches(), opt_name, device=device)
    assert all(p.device == device for p in jitted[0].parameters())
    assert_same_state(eager, jitted)
    assert step.trace_count == 1


def test_eager_steps_continue_from_jitted_ones():
    """10 jitted steps then 10 eager steps reach the model 20 eager steps reach."""
    batches = digits_batches()
    ref_model, model = build_mlp_resnet(), build_mlp_resnet()
    ref_opt = optim.SGD(ref_model.parameters(), lr=0.05, momentum=0.9)
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.SoftmaxLoss()
    ref_step, step = make_step(ref_model, ref_opt, loss_fn), make_step(model, opt, loss_fn)
    jit_step = nc.jit(step)
    params = model.parameters()
    for i in range(20):
        x, y = (nc.Tensor(a, requires_grad=False) for a in batches[i % 3])
        ref_step(x, y)
        (jit_step if i < 10 else step)(x, y)
    assert all(p is q for p, q in zip(params, model.parameters(), strict=True))
    assert_same_state((ref_model, ref_opt), (model, opt))


def test_learning_rate_schedule_applies_without_retrace():
    batches = digits_batches()
    em, jm = build_mlp_resnet(), build_mlp_resnet()
    eo = optim.SGD(em.parameters(), lr=0.1, momentum=0.5)
    jo = optim.SGD(jm.parameters(), lr=0.1, momentum=0.5)
    loss_fn = nn.SoftmaxLoss()
    es, js = make_step(em, eo, loss_fn), nc.jit(make_step(jm, jo, loss_fn))
    for i in range(6):
        eo.lr = jo.lr = 0.1 / (1 + i)
        x, y = batches[i % 3]
        es(nc.Tensor(x), nc.Tensor(y))
        js(x, y)
    assert js.trace_count == 1
    assert_same_state((em, eo), (jm, jo))


def test_dropout_draws_fresh_masks_every_call_and_seed_reproduces():
    np.random.seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5))
    f = nc.jit(lambda x: model(x))
    x = np.ones((4, 8), dtype="float32")
    np.random.seed(1)
    a, b = f(x).numpy(), f(x).numpy()
    assert not np.array_equal(a == 0, b == 0)  # a new mask each call
    np.random.seed(1)
    np.testing.assert_array_equal(f(x).numpy(), a)  # the same seed, the same masks
    zero = (a == 0).mean()
    assert 0.2 < zero < 0.8  # about p of the units dropped
    model.eval()
    np.testing.assert_array_equal(f(x).numpy(), model(nc.Tensor(x)).numpy())  # identity in eval


def test_train_and_eval_are_separate_cache_entries():
    model = build_mlp_resnet()
    f = nc.jit(lambda x: model(x))
    x = digits_batches(1)[0][0]
    for _ in range(3):
        model.train()
        f(x)
        model.eval()
        f(x)
    assert f.trace_count == 2


def test_a_changed_module_flag_retraces_and_says_why(capsys, monkeypatch):
    monkeypatch.setenv("NEEDLEC_DEBUG", "recompiles")
    np.random.seed(0)
    drop = nn.Dropout(0.5)
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.ReLU(), nn.Sequential(drop)))
    model.eval()
    f = nc.jit(lambda x: model(x))
    x = np.ones((2, 4), dtype="float32")
    f(x)
    drop.p = 0.25
    f(x)
    assert f.trace_count == 2
    err = capsys.readouterr().err
    assert "model.modules[1].modules[1].modules[0].p changed (0.5 -> 0.25)" in err


def test_an_unused_parameter_is_skipped_eagerly_and_under_jit():
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Linear(4, 3)
            self.unused = nn.Linear(4, 3)

        def forward(self, x):
            return self.used(x)

    for jitted in (False, True):
        np.random.seed(0)
        model = TwoHeads()
        opt = optim.Adam(model.parameters(), lr=0.1)
        before = [p.numpy().copy() for p in model.unused.parameters()]
        step = make_step(model, opt, nn.SoftmaxLoss())
        step = nc.jit(step) if jitted else step
        x, y = np.ones((2, 4), "float32"), np.array([0.0, 1.0], "float32")
        for _ in range(3):
            step(x, y) if jitted else step(nc.Tensor(x), nc.Tensor(y))
        for p, b in zip(model.unused.parameters(), before, strict=True):
            assert p.grad is None
            np.testing.assert_array_equal(p.numpy(), b)
        assert model.used.weight.grad is not None


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_reading_the_loss_inside_the_step_names_the_line(opt_name):
    model = build_mlp_resnet()
    opt_cls, kw = OPTIMIZERS[opt_name]
    opt = opt_cls(model.parameters(), **kw)
    loss_fn = nn.SoftmaxLoss()

    def step(x, y):
        opt.reset_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        print(loss.numpy())  # the line the error names
        return loss

    x, y = digits_batches(1)[0]
    params = model.parameters()
    # everything the step would write, copied BEFORE the failing call: parameters, BatchNorm's
    # running statistics, the optimizer's state tensors (and Adam's step count)
    before = [a.copy() for a in state_of(model, opt)]
    t_before = getattr(opt, "t", None)
    assert all(p.grad is None for p in params)
    with pytest.raises(TracerError, match=r"numpy\(\).*test_train_steps\.py:\d+"):
        nc.jit(step)(x, y)
    # the failed trace left every parameter, gradient and optimizer state as it was
    assert all(p is q for p, q in zip(params, model.parameters(), strict=True))
    after = state_of(model, opt)
    assert len(after) == len(before)
    for a, b in zip(after, before, strict=True):
        np.testing.assert_array_equal(a, b)
    assert all(p.grad is None for p in params)
    assert getattr(opt, "t", None) == t_before
    # and the model is still usable eagerly: the same step runs and does change it
    loss = loss_fn(model(nc.Tensor(x)), nc.Tensor(y))
    loss.backward()
    opt.step()
    assert all(p.grad is not None and p.grad._node is None for p in params)
    assert any(not np.array_equal(p.numpy(), b) for p, b in zip(params, before, strict=True))
