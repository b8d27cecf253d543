"""optim: SGD and Adam, eagerly and under jit, against numpy (and torch where installed).

The reference is an independent float64 numpy reimplementation of needle's formulas, with
gradients of the two losses (least squares, softmax cross-entropy) worked out by hand:

    SGD:  g = grad + wd*p;  u = m*u + (1-m)*g;  p = p - lr*u
    Adam: t += 1;  g = grad + wd*p;  m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g**2
          p = p - lr * (m/(1-b1**t)) / (sqrt(v/(1-b2**t)) + eps)
"""

import numpy as np
import pytest

import needlec as nc

N, D, K = 8, 4, 3  # batch, features, outputs
STEPS = 10
F64 = np.float64

# tolerances: needlec (float32) against the float64 reference or torch; jit against eager
REF = dict(rtol=1e-4, atol=1e-5)
SAME = dict(rtol=1e-5, atol=1e-6)
# compiled against eager: float32 sums run in another order and exp/log are correctly rounded
# where numpy's SIMD float32 ones are not; Adam divides by sqrt(v) and magnifies those ulps
COMPILED = dict(rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- problem


def _data(seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, D)).astype("float32")
    Y = rng.standard_normal((N, K)).astype("float32")
    onehot = np.eye(K, dtype="float32")[rng.integers(0, K, size=N)]
    W0 = (0.5 * rng.standard_normal((D, K))).astype("float32")
    b0 = (0.5 * rng.standard_normal(K)).astype("float32")
    return X, Y, onehot, W0, b0


def _targets(loss, Y, onehot):
    return Y if loss == "lsq" else onehot


def nc_loss(loss, X, T, W, b):
    """The loss built from needlec tensor ops; X, T are (N, D), (N, K) tensors."""
    Z = X @ W + b.reshape((1, K)).broadcast_to((N, K))
    if loss == "lsq":
        return ((Z - T) ** 2).sum() / N
    return (nc.ops.logsumexp(Z, axes=(1,)) - (Z * T).sum(axes=(1,))).sum() / N


def np_loss_and_grads(loss, X, T, W, b):
    """The same loss and its gradients (dW, db) in float64 numpy, derived by hand."""
    X, T = X.astype(F64), T.astype(F64)
    Z = X @ W + b
    if loss == "lsq":
        R = Z - T
        value = (R**2).sum() / N
        gZ = 2.0 * R / N
    else:
        mx = Z.max(axis=1, keepdims=True)
        lse = mx[:, 0] + np.log(np.exp(Z - mx).sum(axis=1))
        value = (lse - (Z * T).sum(axis=1)).sum() / N
        gZ = (np.exp(Z - lse[:, None]) - T) / N
    return value, [X.T @ gZ, gZ.sum(axis=0)]


# ---------------------------------------------------------------- numpy reference optimizers


class NpSGD:
    def __init__(self, params, lr=0.01, momentum=0.0, weight_decay=0.0):
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.u = [np.zeros_like(p) for p in params]

    def step(self, params, grads):
        for i, (p, g) in enumerate(zip(params, grads, strict=True)):
            if g is None:
                continue
            g = g + self.weight_decay * p
            self.u[i] = self.momentum * self.u[i] + (1 - self.momentum) * g
            params[i] = p - self.lr * self.u[i]


class NpAdam:
    def __init__(self, params, lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0):
        self.lr, self.beta1, self.beta2 = lr, beta1, beta2
        self.eps, self.weight_decay = eps, weight_decay
        self.t = 0
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]

    def step(self, params, grads):
        self.t += 1
        b1, b2 = self.beta1, self.beta2
        for i, (p, g) in enumerate(zip(params, grads, strict=True)):
            if g is None:
                continue
            g = g + self.weight_decay * p
            self.m[i] = b1 * self.m[i] + (1 - b1) * g
            self.v[i] = b2 * self.v[i] + (1 - b2) * g**2
            m_hat = self.m[i] / (1 - b1**self.t)
            v_hat = self.v[i] / (1 - b2**self.t)
            params[i] = p - self.lr * m_hat / (np.sqrt(v_hat) + self.eps)


NP_OPT = {"sgd": NpSGD, "adam": NpAdam}
NC_OPT = {"sgd": lambda: nc.optim.SGD, "adam": lambda: nc.optim.Adam}


# ---------------------------------------------------------------- tables

CONFIGS = [
    ("sgd", dict(lr=0.1)),
    ("sgd", dict(lr=0.1, momentum=0.9)),
    ("sgd", dict(lr=0.1, weight_decay=0.01)),
    ("sgd", dict(lr=0.1, momentum=0.9, weight_decay=0.01)),
    ("adam", dict(lr=0.05)),
    ("adam", dict(lr=0.05, weight_decay=0.01)),
]
LOSSES = ["lsq", "softmax"]


def _cfg_id(cfg):
    kind, hp = cfg
    return kind + "".join(f"-{k}={v}" for k, v in hp.items())


CONFIG_PARAMS = [pytest.param(c, id=_cfg_id(c)) for c in CONFIGS]
# torch's SGD momentum is undamped (u = m*u + g), so only momentum 0 compares
TORCH_CONFIGS = [
    pytest.param(c, id=_cfg_id(c)) for c in CONFIGS if c[1].get("momentum", 0.0) == 0.0
]

# (optimizer, hyperparameters, the schedule: attribute -> value before each step)
SCHEDULES = [
    ("sgd", dict(lr=0.1), {"lr": [0.1 * 0.7**k for k in range(STEPS)]}),
    ("sgd", dict(lr=0.1, momentum=0.9), {"momentum": [0.9, 0.5, 0.0, 0.99, 0.3] * 2}),
    ("sgd", dict(lr=0.1, weight_decay=0.01), {"weight_decay": [0.0, 0.5] * 5}),
    ("adam", dict(lr=0.05), {"lr": [0.05 / (k + 1) for k in range(STEPS)]}),
    ("adam", dict(lr=0.05), {"beta1": [0.9, 0.5, 0.0, 0.99, 0.7] * 2}),
    ("adam", dict(lr=0.05), {"beta2": [0.999, 0.9, 0.5, 0.99, 0.0] * 2}),
    ("adam", dict(lr=0.05), {"eps": [1e-8, 0.5, 1.0, 1e-3, 2.0] * 2}),
]
SCHEDULE_PARAMS = [pytest.param(s, id=f"{s[0]}-{next(iter(s[2]))}") for s in SCHEDULES]


# ---------------------------------------------------------------- runners


class Run:
    """A needlec training setup: params W, b (plus an unused one if asked) and an optimizer."""

    def __init__(self, kind, hp, loss, unused=False, seed=0):
        X, Y, onehot, W0, b0 = _data(seed)
        self.loss_kind = loss
        self.X = nc.Tensor(X, requires_grad=False)
        self.T = nc.Tensor(_targets(loss, Y, onehot), requires_grad=False)
        self.W, self.b = nc.Tensor(W0.copy()), nc.Tensor(b0.copy())
        self.params = [self.W, self.b]
        if unused:
            self.Q0 = np.array([[1.0, -2.0], [3.0, 0.5]], dtype="float32")
            self.Q = nc.Tensor(self.Q0.copy())
            self.params.append(self.Q)
        self.opt = NC_OPT[kind]()(self.params, **hp)
        self.step = self.train_step
        self.jitted = nc.jit(self.train_step)

    def loss(self, X, T):
        return nc_loss(self.loss_kind, X, T, self.W, self.b)

    def train_step(self, X, T):
        self.opt.reset_grad()
        loss = self.loss(X, T)
        loss.backward()
        self.opt.step()
        return loss

    def run(self, steps, jit=False, schedule=None, start=0):
        """`steps` steps; returns per step (loss, [param values after the step])."""
        fn = self.jitted if jit else self.train_step
        out = []
        for k in range(start, start + steps):
            for name, values in (schedule or {}).items():
                setattr(self.opt, name, values[k])
            loss = fn(self.X, self.T)
            out.append((float(loss.numpy()), [p.numpy().copy() for p in self.params]))
        return out


def run_numpy(kind, hp, loss, steps=STEPS, schedule=None, seed=0):
    X, Y, onehot, W0, b0 = _data(seed)
    T = _targets(loss, Y, onehot)
    params = [W0.astype(F64), b0.astype(F64)]
    opt = NP_OPT[kind](params, **hp)
    out = []
    for k in range(steps):
        for name, values in (schedule or {}).items():
            setattr(opt, name, values[k])
        value, grads = np_loss_and_grads(loss, X, T, *params)
        opt.step(params, grads)
        out.append((value, [p.copy() for p in params]))
    return out


def run_torch(torch, kind, hp, loss, steps=STEPS, seed=0):
    X, Y, onehot, W0, b0 = _data(seed)
    X, T = torch.tensor(X), torch.tensor(_targets(loss, Y, onehot))
    W = torch.tensor(W0.copy(), requires_grad=True)
    b = torch.tensor(b0.copy(), requires_grad=True)
    if kind == "sgd":
        assert hp.get("momentum", 0.0) == 0.0
        opt = torch.optim.SGD([W, b], lr=hp["lr"], weight_decay=hp.get("weight_decay", 0.0))
    else:
        opt = torch.optim.Adam(
            [W, b],
            lr=hp["lr"],
            betas=(hp.get("beta1", 0.9), hp.get("beta2", 0.999)),
            eps=hp.get("eps", 1e-8),
            weight_decay=hp.get("weight_decay", 0.0),
        )
    out = []
    for _ in range(steps):
        opt.zero_grad()
        Z = X @ W + b
        if loss == "lsq":
            value = ((Z - T) ** 2).sum() / N
        else:
            value = (torch.logsumexp(Z, dim=1) - (Z * T).sum(dim=1)).sum() / N
        value.backward()
        opt.step()
        out.append((value.item(), [W.detach().numpy().copy(), b.detach().numpy().copy()]))
    return out


def assert_same_trajectory(got, want, tol, what=""):
    assert len(got) == len(want)
    for k, ((gl, gp), (wl, wp)) in enumerate(zip(got, want, strict=True)):
        np.testing.assert_allclose(gl, wl, **tol, err_msg=f"{what} loss at step {k}")
        for i, (g, w) in enumerate(zip(gp, wp, strict=True)):
            np.testing.assert_allclose(g, w, **tol, err_msg=f"{what} param {i} at step {k}")


def assert_moved(traj, start, by=1e-2):
    """The trajectory goes somewhere: a comparison at REF tolerance is not vacuous."""
    final = traj[-1][1]
    assert max(np.abs(f.astype(F64) - s).max() for f, s in zip(final, start, strict=True)) > by


def _state(opt):
    """The optimizer's state tensors, as numpy, in a fixed order."""
    if isinstance(opt, nc.optim.Adam):
        return [opt.m[i].numpy() for i in sorted(opt.m)] + [opt.v[i].numpy() for i in sorted(opt.v)]
    return [opt.u[i].numpy() for i in sorted(opt.u)]


# ---------------------------------------------------------------- trajectories


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("cfg", CONFIG_PARAMS)
def test_eager_trajectory_matches_numpy(cfg, loss):
    kind, hp = cfg
    r = Run(kind, hp, loss)
    got = r.run(STEPS)
    want = run_numpy(kind, hp, loss)
    assert_same_trajectory(got, want, REF, "eager vs numpy")
    assert_moved(got, _data()[3:])


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("cfg", TORCH_CONFIGS)
def test_eager_trajectory_matches_torch(cfg, loss):
    torch = pytest.importorskip("torch")
    kind, hp = cfg
    got = Run(kind, hp, loss).run(STEPS)
    want = run_torch(torch, kind, hp, loss)
    assert_same_trajectory(got, want, REF, "eager vs torch")
    assert_moved(want, _data()[3:])


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("cfg", CONFIG_PARAMS)
def test_jit_trajectory_matches_eager(cfg, loss):
    kind, hp = cfg
    eager, jitted = Run(kind, hp, loss), Run(kind, hp, loss)
    want = eager.run(STEPS)
    got = jitted.run(STEPS, jit=True)
    assert jitted.jitted.trace_count == 1
    assert_same_trajectory(got, want, COMPILED, "jit vs eager")
    assert_same_trajectory(got, run_numpy(kind, hp, loss), REF, "jit vs numpy")
    # the state written back equals eager's, and so does the gradient of the last step
    for g, w in zip(_state(jitted.opt), _state(eager.opt), strict=True):
        np.testing.assert_allclose(g, w, **SAME)
    for pj, pe in zip(jitted.params, eager.params, strict=True):
        np.testing.assert_allclose(pj.grad.numpy(), pe.grad.numpy(), **SAME)


# ---------------------------------------------------------------- schedules


@pytest.mark.parametrize("sched", SCHEDULE_PARAMS)
def test_schedule_under_jit_matches_eager_without_retrace(sched):
    kind, hp, schedule = sched
    loss = "softmax"
    eager, jitted = Run(kind, hp, loss), Run(kind, hp, loss)
    want = eager.run(STEPS, schedule=schedule)
    got = jitted.run(STEPS, jit=True, schedule=schedule)
    assert jitted.jitted.trace_count == 1
    assert_same_trajectory(got, want, COMPILED, "jit vs eager")
    ref = run_numpy(kind, hp, loss, schedule=schedule)
    assert_same_trajectory(got, ref, REF, "jit vs numpy")
    # the schedule matters: ignoring it would be caught by the comparison above
    constant = run_numpy(kind, hp, loss)
    gap = max(np.abs(a - b).max() for a, b in zip(ref[-1][1], constant[-1][1], strict=True))
    assert gap > 1e-3


INT_FLOAT_SCHEDULES = [
    pytest.param(
        "sgd", 0.1, [0.1, 0.05, 0, 1, 0.02, 0.0, 0.01, 0, 0.1, 0.05], id="sgd-float-to-int"
    ),
    pytest.param(
        "adam", 0.1, [0.1, 0.05, 0, 1, 0.02, 0.0, 0.01, 0, 0.1, 0.05], id="adam-float-to-int"
    ),
    pytest.param("sgd", 1, [1, 0.5, 0.25, 0, 0.1, 1, 0.5, 0.2, 0.1, 0.05], id="sgd-int-to-float"),
]


@pytest.mark.parametrize("kind, lr, lrs", INT_FLOAT_SCHEDULES)
def test_schedule_switching_between_int_and_float(kind, lr, lrs):
    schedule = {"lr": lrs}
    eager, jitted = Run(kind, dict(lr=lr), "lsq"), Run(kind, dict(lr=lr), "lsq")
    want = eager.run(STEPS, schedule=schedule)
    got = jitted.run(STEPS, jit=True, schedule=schedule)
    assert_same_trajectory(got, want, COMPILED, "jit vs eager")
    assert_same_trajectory(got, run_numpy(kind, dict(lr=lr), "lsq", schedule=schedule), REF)
    assert jitted.jitted.trace_count == 1  # an int lr and a float lr share one trace


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_adam_t_reset_restarts_bias_correction(jit):
    """Setting `opt.t` between calls is read by the next step (it is state, not a constant)."""
    r = Run("adam", dict(lr=0.05), "lsq")
    r.run(3, jit=jit)
    r.opt.t = 0
    r.run(1, jit=jit)
    assert r.opt.t == 1 and type(r.opt.t) is int
    # with t restarted, the step uses 1 - b**1 as the bias corrections: recompute it in numpy
    X, Y, onehot, W0, b0 = _data()
    params = [W0.astype(F64), b0.astype(F64)]
    opt = NpAdam(params, lr=0.05)
    for _ in range(3):
        opt.step(params, np_loss_and_grads("lsq", X, Y, *params)[1])
    opt.t = 0
    opt.step(params, np_loss_and_grads("lsq", X, Y, *params)[1])
    for p, want in zip(r.params, params, strict=True):
        np.testing.assert_allclose(p.numpy(), want, **REF)
    if jit:
        assert r.jitted.trace_count == 1


# ---------------------------------------------------------------- Adam's step count


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_adam_t_is_a_python_int_counting_steps(jit):
    r = Run("adam", dict(lr=0.05), "lsq")
    assert r.opt.t == 0 and type(r.opt.t) is int
    for k in range(1, 6):
        r.run(1, jit=jit)
        assert type(r.opt.t) is int
        assert r.opt.t == k
    if jit:
        assert r.jitted.trace_count == 1


def test_adam_t_continues_across_eager_and_jit():
    r = Run("adam", dict(lr=0.05), "softmax")
    ref = Run("adam", dict(lr=0.05), "softmax")
    got = r.run(2) + r.run(3, jit=True) + r.run(2) + r.run(3, jit=True)
    assert type(r.opt.t) is int and r.opt.t == 10
    assert r.jitted.trace_count == 1
    assert_same_trajectory(got, ref.run(STEPS), SAME, "mixed vs eager")


@pytest.mark.parametrize("cfg", CONFIG_PARAMS)
def test_mixing_eager_and_jitted_steps_matches_eager(cfg):
    """The state a jitted step writes (u; m, v, t) is what the next eager step reads, and back."""
    kind, hp = cfg
    r, ref = Run(kind, hp, "lsq"), Run(kind, hp, "lsq")
    got = r.run(3, jit=True) + r.run(3) + r.run(4, jit=True)
    assert r.jitted.trace_count == 1
    assert_same_trajectory(got, ref.run(STEPS), SAME, "mixed vs eager")


# ---------------------------------------------------------------- what a step must not do


@pytest.mark.parametrize("cfg", CONFIG_PARAMS)
def test_eager_step_keeps_float32_grad_and_graph(cfg):
    kind, hp = cfg
    r = Run(kind, hp, "softmax")
    for _ in range(3):
        r.opt.reset_grad()
        r.loss(r.X, r.T).backward()
        grads = [p.grad for p in r.params]
        grad_values = [g.numpy().copy() for g in grads]
        before = [p.numpy().copy() for p in r.params]
        requires = [p.requires_grad for p in r.params]
        r.opt.step()
        for p, g, gv, b, rq in zip(r.params, grads, grad_values, before, requires, strict=True):
            assert p.grad is g
            np.testing.assert_array_equal(p.grad.numpy(), gv)
            assert p.dtype == "float32" and p.numpy().dtype == np.float32
            assert p.op is None and p.inputs == []
            assert p.requires_grad == rq
            assert not np.array_equal(p.numpy(), b)
        for s in _state(r.opt):
            assert s.dtype == np.float32


@pytest.mark.parametrize("cfg", CONFIG_PARAMS)
def test_jitted_step_keeps_float32_and_graph(cfg):
    kind, hp = cfg
    r = Run(kind, hp, "softmax")
    requires = [p.requires_grad for p in r.params]
    for _ in range(3):
        loss = r.jitted(r.X, r.T)
        assert loss.dtype == "float32" and loss.numpy().dtype == np.float32
        for p, rq in zip(r.params, requires, strict=True):
            assert p.dtype == "float32" and p.numpy().dtype == np.float32
            assert p.op is None and p.inputs == []
            assert p.requires_grad == rq
            assert p.grad.dtype == "float32"
        for s in _state(r.opt):
            assert s.dtype == np.float32
    assert r.jitted.trace_count == 1


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("cfg", CONFIG_PARAMS)
def test_param_without_grad_is_skipped(cfg, jit):
    kind, hp = cfg
    hp = {**hp, "weight_decay": 0.1}  # a decayed zero gradient would still move it
    r = Run(kind, hp, "lsq", unused=True)
    ref = Run(kind, hp, "lsq")
    got = r.run(4, jit=jit)
    assert r.Q.grad is None
    np.testing.assert_array_equal(r.Q.numpy(), r.Q0)
    state = (r.opt.m, r.opt.v) if kind == "adam" else (r.opt.u,)
    for s in state:
        np.testing.assert_array_equal(s[2].numpy(), np.zeros_like(r.Q0))
    # the others are stepped as if it were not there
    want = ref.run(4)
    for (gl, gp), (wl, wp) in zip(got, want, strict=True):
        np.testing.assert_allclose(gl, wl, **SAME)
        for g, w in zip(gp[:2], wp, strict=True):
            np.testing.assert_allclose(g, w, **SAME)
    if jit:
        assert r.jitted.trace_count == 1


@pytest.mark.parametrize("cfg", CONFIG_PARAMS)
def test_reset_grad_sets_every_grad_to_none(cfg):
    kind, hp = cfg
    r = Run(kind, hp, "softmax", unused=True)
    r.loss(r.X, r.T).backward()
    assert r.W.grad is not None and r.b.grad is not None
    r.opt.reset_grad()
    assert all(p.grad is None for p in r.params)
    r.jitted(r.X, r.T)
    assert r.W.grad is not None and r.b.grad is not None
    r.opt.reset_grad()
    assert all(p.grad is None for p in r.params)


# ---------------------------------------------------------------- eager sees jitted results


@pytest.mark.parametrize("cfg", CONFIG_PARAMS)
def test_eager_code_sees_jitted_updates(cfg):
    kind, hp = cfg
    r = Run(kind, hp, "softmax")
    W, b = r.W, r.b
    params = list(r.opt.params)
    X, Y, onehot, W0, b0 = _data()
    T = _targets("softmax", Y, onehot)
    reference = run_numpy(kind, hp, "softmax", steps=3)
    for k in range(3):
        before = [W.numpy().copy(), b.numpy().copy()]
        r.jitted(r.X, r.T)
        assert r.W is W and r.b is b
        assert all(q is p for q, p in zip(r.opt.params, params, strict=True))
        assert r.opt.params[0] is W and r.opt.params[1] is b
        assert not np.array_equal(W.numpy(), before[0])
        assert not np.array_equal(b.numpy(), before[1])
        # an eager computation on the same tensors uses the new values
        eager_loss = r.loss(r.X, r.T).numpy()
        want, _ = np_loss_and_grads("softmax", X, T, W.numpy().astype(F64), b.numpy().astype(F64))
        np.testing.assert_allclose(eager_loss, want, **REF)
        # realize_cached_data (what gradient checkers perturb) holds the updated values too:
        # the independent numpy optimizer's parameters after k + 1 steps
        for p, want in zip((W, b), reference[k][1], strict=True):
            data = p.realize_cached_data()
            assert isinstance(data, nc.backend_ndarray.NDArray)
            np.testing.assert_allclose(data.numpy(), want, **REF)
    assert r.jitted.trace_count == 1
