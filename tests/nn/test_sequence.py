"""RNNCell, RNN, LSTMCell, LSTM and Embedding: init draws, parameter counts, forward and
gradients against PyTorch, finite differences in float64, jit."""

import re

import numpy as np
import pytest

import needlec as nc
from needlec import nn

from .util import close, n_params, next_draw_after, numeric_grad, randn, uniform_draw

CELL_PARAMS = ("W_ih", "W_hh", "bias_ih", "bias_hh")


def _torch_cell_state(torch, torch_module, cells, layer_suffix):
    """Copy needle cells' weights into a torch RNN/LSTM (weights transposed)."""
    with torch.no_grad():
        for k, cell in enumerate(cells):
            suffix = layer_suffix(k)
            getattr(torch_module, "weight_ih" + suffix).copy_(torch.tensor(cell.W_ih.numpy().T))
            getattr(torch_module, "weight_hh" + suffix).copy_(torch.tensor(cell.W_hh.numpy().T))
            if cell.bias_ih is not None:
                getattr(torch_module, "bias_ih" + suffix).copy_(torch.tensor(cell.bias_ih.numpy()))
                getattr(torch_module, "bias_hh" + suffix).copy_(torch.tensor(cell.bias_hh.numpy()))


def _check_cell_grads(cells, torch_module, layer_suffix, atol=1e-4):
    for k, cell in enumerate(cells):
        suffix = layer_suffix(k)
        close(cell.W_ih.grad, getattr(torch_module, "weight_ih" + suffix).grad.T, atol=atol)
        close(cell.W_hh.grad, getattr(torch_module, "weight_hh" + suffix).grad.T, atol=atol)
        if cell.bias_ih is not None:
            close(cell.bias_ih.grad, getattr(torch_module, "bias_ih" + suffix).grad, atol=atol)
            close(cell.bias_hh.grad, getattr(torch_module, "bias_hh" + suffix).grad, atol=atol)


# ---------------------------------------------------------------- init draws and counts


@pytest.mark.parametrize("gates", [1, 4])
@pytest.mark.parametrize("bias", [True, False])
def test_cells_draw_w_ih_w_hh_bias_ih_bias_hh(gates, bias):
    np.random.seed(9)
    cell = nn.RNNCell(4, 3, bias=bias) if gates == 1 else nn.LSTMCell(4, 3, bias=bias)
    after = np.random.rand()
    np.random.seed(9)
    bound = 1 / np.sqrt(3)
    shapes = [(4, 3 * gates), (3, 3 * gates)] + [(3 * gates,)] * (2 * bias)
    for name, shape in zip(CELL_PARAMS, shapes, strict=False):
        param = getattr(cell, name)
        assert isinstance(param, nn.Parameter) and param.shape == shape
        close(param, uniform_draw(shape, bound), rtol=1e-6, atol=1e-7)
    if not bias:
        assert cell.bias_ih is None and cell.bias_hh is None
    assert after == next_draw_after(9, sum(int(np.prod(s)) for s in shapes))
    assert len(cell.parameters()) == len(shapes)


def test_stacks_draw_layer_by_layer():
    np.random.seed(10)
    lstm = nn.LSTM(3, 2, num_layers=2)
    np.random.seed(10)
    bound = 1 / np.sqrt(2)
    for k, cell in enumerate(lstm.lstm_cells):
        shapes = [(3 if k == 0 else 2, 8), (2, 8), (8,), (8,)]
        for name, shape in zip(CELL_PARAMS, shapes, strict=True):
            close(getattr(cell, name), uniform_draw(shape, bound), rtol=1e-6, atol=1e-7)
    assert len(lstm.parameters()) == 8 and lstm.parameters()[4] is lstm.lstm_cells[1].W_ih


def test_parameter_counts(torch):
    for ours, ref in [
        (nn.RNN(10, 20, num_layers=2), torch.nn.RNN(10, 20, num_layers=2)),
        (nn.LSTM(10, 20, num_layers=2), torch.nn.LSTM(10, 20, num_layers=2)),
        (nn.LSTM(7, 5, bias=False), torch.nn.LSTM(7, 5, bias=False)),
    ]:
        assert n_params(ours) == sum(p.numel() for p in ref.parameters())
    assert n_params(nn.LSTM(10, 20, num_layers=2)) == 5920
    assert n_params(nn.RNNCell(10, 20)) == 10 * 20 + 20 * 20 + 40
    assert n_params(nn.Embedding(100, 16)) == 1600


# ---------------------------------------------------------------- cells against torch


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("with_h", [True, False])
def test_rnn_cell_matches_torch(nonlinearity, with_h, torch, rng):
    cell = nn.RNNCell(4, 5, nonlinearity=nonlinearity)
    ref = torch.nn.RNNCell(4, 5, nonlinearity=nonlinearity)
    _torch_cell_state(torch, ref, [cell], lambda k: "")
    x_np, h_np, seed = randn(rng, 3, 4), randn(rng, 3, 5), randn(rng, 3, 5)
    x, xt = nc.Tensor(x_np), torch.tensor(x_np, requires_grad=True)
    h, ht = nc.Tensor(h_np), torch.tensor(h_np, requires_grad=True)
    y = cell(x, h) if with_h else cell(x)
    yt = ref(xt, ht) if with_h else ref(xt)
    close(y, yt)
    (y * nc.Tensor(seed)).sum().backward()
    (yt * torch.tensor(seed)).sum().backward()
    close(x.grad, xt.grad)
    if with_h:
        close(h.grad, ht.grad)
    _check_cell_grads([cell], ref, lambda k: "", atol=1e-5)


def test_rnn_cell_rejects_unknown_nonlinearity():
    with pytest.raises(ValueError):
        nn.RNNCell(2, 2, nonlinearity="sigmoid")


@pytest.mark.parametrize("with_h", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_lstm_cell_matches_torch(with_h, bias, torch, rng):
    cell = nn.LSTMCell(4, 5, bias=bias)
    ref = torch.nn.LSTMCell(4, 5, bias=bias)
    _torch_cell_state(torch, ref, [cell], lambda k: "")
    x_np, h_np, c_np = randn(rng, 3, 4), randn(rng, 3, 5), randn(rng, 3, 5)
    s1, s2 = randn(rng, 3, 5), randn(rng, 3, 5)
    x, h, c = (nc.Tensor(a) for a in (x_np, h_np, c_np))
    xt, ht, ct = (torch.tensor(a, requires_grad=True) for a in (x_np, h_np, c_np))
    h1, c1 = cell(x, (h, c)) if with_h else cell(x)
    h1t, c1t = ref(xt, (ht, ct)) if with_h else ref(xt)
    close(h1, h1t)
    close(c1, c1t)
    ((h1 * nc.Tensor(s1)).sum() + (c1 * nc.Tensor(s2)).sum()).backward()
    ((h1t * torch.tensor(s1)).sum() + (c1t * torch.tensor(s2)).sum()).backward()
    close(x.grad, xt.grad)
    if with_h:
        close(h.grad, ht.grad)
        close(c.grad, ct.grad)
    _check_cell_grads([cell], ref, lambda k: "", atol=1e-5)


def test_lstm_cell_gradients_match_finite_differences(rng):
    cell = nn.LSTMCell(3, 4, dtype="float64")
    assert all(p.dtype == "float64" for p in cell.parameters())
    x, h0, c0 = (nc.Tensor(randn(rng, 2, d, dtype="float64")) for d in (3, 4, 4))
    s1, s2 = (nc.Tensor(randn(rng, 2, 4, dtype="float64"), requires_grad=False) for _ in "ab")

    def loss():
        h, c = cell(x, (h0, c0))
        return (h * s1).sum() + (c * s2).sum()

    loss().backward()
    for t in (x, h0, c0, cell.W_ih, cell.W_hh, cell.bias_hh):
        close(t.grad, numeric_grad(loss, t), rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------- stacks against torch


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("with_h", [True, False])
def test_rnn_matches_torch(nonlinearity, with_h, torch, rng):
    rnn = nn.RNN(3, 4, num_layers=2, nonlinearity=nonlinearity)
    ref = torch.nn.RNN(3, 4, num_layers=2, nonlinearity=nonlinearity)
    _torch_cell_state(torch, ref, rnn.rnn_cells, lambda k: f"_l{k}")
    X_np, h0_np = randn(rng, 5, 2, 3), randn(rng, 2, 2, 4)
    s1, s2 = randn(rng, 5, 2, 4), randn(rng, 2, 2, 4)
    X, Xt = nc.Tensor(X_np), torch.tensor(X_np, requires_grad=True)
    h0, h0t = nc.Tensor(h0_np), torch.tensor(h0_np, requires_grad=True)
    out, h_n = rnn(X, h0) if with_h else rnn(X)
    out_t, h_n_t = ref(Xt, h0t) if with_h else ref(Xt)
    assert out.shape == (5, 2, 4) and h_n.shape == (2, 2, 4)
    close(out, out_t)
    close(h_n, h_n_t)
    ((out * nc.Tensor(s1)).sum() + (h_n * nc.Tensor(s2)).sum()).backward()
    ((out_t * torch.tensor(s1)).sum() + (h_n_t * torch.tensor(s2)).sum()).backward()
    close(X.grad, Xt.grad, atol=1e-4)
    if with_h:
        close(h0.grad, h0t.grad, atol=1e-4)
    _check_cell_grads(rnn.rnn_cells, ref, lambda k: f"_l{k}")


@pytest.mark.parametrize("with_h", [True, False])
def test_lstm_matches_torch(with_h, torch, rng, device):
    lstm = nn.LSTM(3, 4, num_layers=2, device=device)
    ref = torch.nn.LSTM(3, 4, num_layers=2)
    _torch_cell_state(torch, ref, lstm.lstm_cells, lambda k: f"_l{k}")
    X_np, h0_np, c0_np = randn(rng, 5, 2, 3), randn(rng, 2, 2, 4), randn(rng, 2, 2, 4)
    s = [randn(rng, 5, 2, 4), randn(rng, 2, 2, 4), randn(rng, 2, 2, 4)]
    X, h0, c0 = (nc.Tensor(a, device=device) for a in (X_np, h0_np, c0_np))
    Xt, h0t, c0t = (torch.tensor(a, requires_grad=True) for a in (X_np, h0_np, c0_np))
    out, (h_n, c_n) = lstm(X, (h0, c0)) if with_h else lstm(X)
    out_t, (h_n_t, c_n_t) = ref(Xt, (h0t, c0t)) if with_h else ref(Xt)
    for a, b in ((out, out_t), (h_n, h_n_t), (c_n, c_n_t)):
        assert a.shape == tuple(b.shape) and a.device == device
        close(a, b)
    seeds = [nc.Tensor(a, device=device) for a in s]
    loss = (out * seeds[0]).sum() + (h_n * seeds[1]).sum()
    (loss + (c_n * seeds[2]).sum()).backward()
    loss_t = (out_t * torch.tensor(s[0])).sum() + (h_n_t * torch.tensor(s[1])).sum()
    (loss_t + (c_n_t * torch.tensor(s[2])).sum()).backward()
    close(X.grad, Xt.grad, atol=1e-4)
    if with_h:
        close(h0.grad, h0t.grad, atol=1e-4)
        close(c0.grad, c0t.grad, atol=1e-4)
    _check_cell_grads(lstm.lstm_cells, ref, lambda k: f"_l{k}")


# ---------------------------------------------------------------- Embedding


def test_embedding_draws_randn():
    np.random.seed(12)
    emb = nn.Embedding(6, 3)
    np.random.seed(12)
    close(emb.weight, np.random.randn(6, 3).astype("float32"), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("id_dtype", ["int64", "float32"])
def test_embedding_looks_up_rows(id_dtype, rng):
    emb = nn.Embedding(7, 4)
    ids = rng.integers(0, 7, size=(5, 3))
    seed = randn(rng, 5, 3, 4)
    out = emb(nc.Tensor(ids.astype(id_dtype), requires_grad=False))
    assert out.shape == (5, 3, 4)
    close(out, emb.weight.numpy()[ids], rtol=0, atol=1e-7)
    (out * nc.Tensor(seed)).sum().backward()
    expected = np.zeros((7, 4), "float32")
    np.add.at(expected, ids, seed)
    close(emb.weight.grad, expected, atol=1e-6)


def test_embedding_eager_negative_ids_count_from_the_end_and_too_large_ids_raise():
    emb = nn.Embedding(5, 3)
    out = emb(nc.Tensor(np.array([[-1, 0], [4, -5]]), requires_grad=False))
    close(out, emb.weight.numpy()[[[4, 0], [4, 0]]], rtol=0, atol=0)
    with pytest.raises(IndexError, match=r"class id 5 .*n=5"):
        emb(nc.Tensor(np.array([[0, 5]]), requires_grad=False))


# ---------------------------------------------------------------- shape errors


def _t(*shape):
    return nc.Tensor(np.zeros(shape, "float32"), requires_grad=False)


@pytest.mark.parametrize("shape", [(6, 2), (6, 2, 3, 1), (6, 2, 5)])
@pytest.mark.parametrize("cls", [nn.RNN, nn.LSTM])
def test_stacks_reject_inputs_that_are_not_t_b_input_size(cls, shape):
    model = cls(3, 4, num_layers=2)
    pattern = rf"{cls.__name__}\(3, 4, num_layers=2\): the input must be 3-D .*\(T, B, 3\)"
    with pytest.raises(ValueError, match=pattern + r".*" + re.escape(str(shape))):
        model(_t(*shape))


@pytest.mark.parametrize("h_shape", [(3, 2, 4), (1, 2, 4), (2, 5, 4), (2, 2, 6)])
def test_rnn_rejects_an_h0_of_the_wrong_shape(h_shape):
    model = nn.RNN(3, 4, num_layers=2)
    shape = re.escape(str(h_shape))
    with pytest.raises(ValueError, match=rf"RNN\(3, 4, num_layers=2\): h0 .*\(2, 2, 4\).*{shape}"):
        model(_t(6, 2, 3), _t(*h_shape))


@pytest.mark.parametrize("which", ["h0", "c0"])
@pytest.mark.parametrize("layers", [1, 3])
def test_lstm_rejects_a_state_with_another_layer_count(which, layers):
    model = nn.LSTM(3, 4, num_layers=2)
    good, bad = _t(2, 2, 4), _t(layers, 2, 4)
    state = (bad, good) if which == "h0" else (good, bad)
    pattern = rf"LSTM\(3, 4, num_layers=2\): {which} .*\(2, 2, 4\).*\({layers}, 2, 4\)"
    with pytest.raises(ValueError, match=pattern):
        model(_t(6, 2, 3), state)
    with pytest.raises(ValueError, match=pattern):  # the shapes are known while tracing too
        nc.jit(lambda x, h, c: model(x, (h, c)))(_t(6, 2, 3), *state)


@pytest.mark.parametrize("shape", [(3,), (1, 2, 3)])
@pytest.mark.parametrize("cls", [nn.RNNCell, nn.LSTMCell])
def test_cells_reject_inputs_that_are_not_2d(cls, shape):
    cell = cls(3, 4)
    pattern = rf"{cls.__name__}\(3, 4\): the input must be 2-D .*\(B, 3\).*"
    with pytest.raises(ValueError, match=pattern + re.escape(str(shape))):
        cell(_t(*shape))


@pytest.mark.parametrize("shape", [(6,), (6, 2, 1)])
def test_embedding_rejects_ids_that_are_not_t_b(shape):
    emb = nn.Embedding(9, 4)
    pattern = r"Embedding\(9, 4\): ids must be 2-D \(seq_len, batch\).*" + re.escape(str(shape))
    with pytest.raises(ValueError, match=pattern):
        emb(_t(*shape))


# ---------------------------------------------------------------- jit


@pytest.mark.parametrize(
    "make, n_inputs",
    [
        (lambda: nn.RNN(3, 4, num_layers=2), 1),
        (lambda: nn.RNN(3, 4, num_layers=2, nonlinearity="relu"), 2),
        (lambda: nn.LSTM(3, 4, num_layers=2), 1),
    ],
)
def test_stacks_under_jit(make, n_inputs, rng):
    model = make()
    X = nc.Tensor(randn(rng, 6, 2, 3))
    h0 = nc.Tensor(randn(rng, 2, 2, 4))
    if n_inputs == 1:
        eager, traced = model(X), nc.jit(lambda x: model(x))(X)
    else:
        eager, traced = model(X, h0), nc.jit(lambda x, h: model(x, h))(X, h0)
    flat_e = [eager[0], *(eager[1] if isinstance(eager[1], tuple) else [eager[1]])]
    flat_t = [traced[0], *(traced[1] if isinstance(traced[1], tuple) else [traced[1]])]
    for a, b in zip(flat_t, flat_e, strict=True):
        close(a, b, rtol=1e-6, atol=1e-6)


def test_cells_and_embedding_under_jit(rng):
    lstm_cell, rnn_cell, emb = nn.LSTMCell(3, 4), nn.RNNCell(3, 4), nn.Embedding(9, 4)
    x = nc.Tensor(randn(rng, 2, 3))
    for a, b in zip(nc.jit(lambda x: lstm_cell(x))(x), lstm_cell(x), strict=True):
        close(a, b, rtol=1e-6, atol=1e-6)
    close(nc.jit(lambda x: rnn_cell(x))(x), rnn_cell(x), rtol=1e-6, atol=1e-6)
    ids = nc.Tensor(rng.integers(0, 9, size=(4, 2)), requires_grad=False)
    close(nc.jit(lambda i: emb(i))(ids), emb(ids), rtol=0, atol=0)
