"""MultiHeadAttention, AttentionLayer, TransformerLayer and Transformer against a PyTorch
reference written here (weights copied in `parameters()` order), plus init draws, parameter
counts, the causal mask, dropout on the attention probabilities, and jit."""

import math

import numpy as np
import pytest

import needlec as nc
from needlec import nn

from .util import close, kaiming_uniform_draw, n_params, next_draw_after, randn

# ---------------------------------------------------------------- the torch reference


def ref_attention(torch, q, k, v, causal):
    """softmax(q k^T / sqrt(D) + mask) v, the mask aligned to the bottom right (needle's)."""
    i, j = q.shape[-2], k.shape[-2]
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        future = torch.ones(i, j, dtype=torch.bool).triu(j - i + 1)
        scores = scores.masked_fill(future, float("-inf"))
    probs = torch.softmax(scores, -1)
    return probs @ v, probs


def ref_attention_layer(torch, P, q, k, v, num_head, dim_head, causal, eps=1e-5):
    """P yields the layer's parameters in `parameters()` order."""
    F = torch.nn.functional
    normed = [F.layer_norm(x, (x.shape[-1],), next(P), next(P), eps) for x in (q, k, v)]
    heads = []
    for x in normed:
        b, t, _ = x.shape
        heads.append((x @ next(P)).reshape(b, t, num_head, dim_head).transpose(1, 2))
    out, _ = ref_attention(torch, *heads, causal)
    b, t = q.shape[:2]
    return out.transpose(1, 2).reshape(b, t, num_head * dim_head) @ next(P)


def ref_transformer_layer(torch, P, x, num_head, dim_head, causal):
    x = x + ref_attention_layer(torch, P, x, x, x, num_head, dim_head, causal)
    y = torch.nn.functional.layer_norm(x, (x.shape[-1],), next(P), next(P), 1e-5)
    w1, b1, w2, b2 = next(P), next(P), next(P), next(P)
    return x + torch.relu(y @ w1 + b1) @ w2 + b2


def ref_transformer(torch, P, x, num_layers, num_head, dim_head, causal, batch_first):
    pos = next(P)
    x = x if batch_first else x.transpose(0, 1)
    x = x + pos[: x.shape[1]][None]
    for _ in range(num_layers):
        x = ref_transformer_layer(torch, P, x, num_head, dim_head, causal)
    return x if batch_first else x.transpose(0, 1)


def torch_params(torch, module):
    return [torch.tensor(p.numpy(), requires_grad=True) for p in module.parameters()]


def randomize_norms(module, rng):
    """Give every LayerNorm1d random weights, so the reference's use of them is checked."""
    for m in module._children():
        if isinstance(m, nn.LayerNorm1d):
            m.weight.data = nc.Tensor(1 + randn(rng, m.dim, scale=0.2))
            m.bias.data = nc.Tensor(randn(rng, m.dim, scale=0.2))


def check_against_torch(torch, module, ours, theirs, inputs, rng, atol=1e-4):
    """Forward, then gradients of a random projection for the inputs and every parameter."""
    tparams = torch_params(torch, module)
    xs = [nc.Tensor(a) for a in inputs]
    xts = [torch.tensor(a, requires_grad=True) for a in inputs]
    y, yt = ours(xs), theirs(iter(tparams), xts)
    assert y.shape == tuple(yt.shape)
    close(y, yt, atol=atol)
    seed = randn(rng, *y.shape)
    (y * nc.Tensor(seed)).sum().backward()
    (yt * torch.tensor(seed)).sum().backward()
    for x, xt in zip(xs, xts, strict=True):
        close(x.grad, xt.grad, atol=atol)
    for p, pt in zip(module.parameters(), tparams, strict=True):
        close(p.grad, pt.grad, atol=atol)


# ---------------------------------------------------------------- MultiHeadAttention


def test_causal_mask():
    mha = nn.MultiHeadAttention(causal=True)
    big = -np.finfo(np.float32).max
    mask = mha.create_causal_mask(3, 3).numpy()
    assert mask.shape == (1, 1, 3, 3)
    np.testing.assert_array_equal(mask[0, 0], [[0, big, big], [0, 0, big], [0, 0, 0]])
    np.testing.assert_array_equal(
        mha.create_causal_mask(2, 4).numpy()[0, 0] == 0, np.tril(np.ones((2, 4)), 2) == 1
    )


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kv_len", [4, 6])
def test_multi_head_attention_matches_torch(causal, kv_len, torch, rng):
    mha = nn.MultiHeadAttention(causal=causal)
    arrays = [randn(rng, 2, 3, 4, 5), randn(rng, 2, 3, kv_len, 5), randn(rng, 2, 3, kv_len, 5)]
    xs = [nc.Tensor(a) for a in arrays]
    xts = [torch.tensor(a, requires_grad=True) for a in arrays]
    out, probs = mha(*xs)
    out_t, probs_t = ref_attention(torch, *xts, causal)
    assert out.shape == (2, 3, 4, 5) and probs.shape == (2, 3, 4, kv_len)
    close(out, out_t)
    close(probs, probs_t, atol=1e-6)
    s1, s2 = randn(rng, *out.shape), randn(rng, *probs.shape)
    ((out * nc.Tensor(s1)).sum() + (probs * nc.Tensor(s2)).sum()).backward()
    ((out_t * torch.tensor(s1)).sum() + (probs_t * torch.tensor(s2)).sum()).backward()
    for x, xt in zip(xs, xts, strict=True):
        close(x.grad, xt.grad, atol=1e-5)


def test_multi_head_attention_is_stable_for_large_scores(rng):
    q = nc.Tensor(randn(rng, 1, 1, 3, 2) * 1e3)
    out, probs = nn.MultiHeadAttention()(q, q, q)
    assert np.isfinite(out.numpy()).all()
    close(probs.sum((3,)), np.ones((1, 1, 3)), atol=1e-6)


def test_multi_head_attention_dropout_acts_on_probs(rng):
    q, k, v = (randn(rng, 1, 2, 3, 4) for _ in range(3))
    mha = nn.MultiHeadAttention(dropout=0.5)
    scores = q @ k.transpose(0, 1, 3, 2) / 2.0
    soft = np.exp(scores - scores.max(-1, keepdims=True))
    soft /= soft.sum(-1, keepdims=True)
    np.random.seed(13)
    out, probs = mha(nc.Tensor(q), nc.Tensor(k), nc.Tensor(v))
    np.random.seed(13)
    mask = np.random.rand(1, 2, 3, 3).astype("float32") <= 0.5
    close(probs, soft * mask / 0.5, atol=1e-6)
    close(out, (soft * mask / 0.5) @ v, atol=1e-5)
    mha.eval()
    close(mha(nc.Tensor(q), nc.Tensor(k), nc.Tensor(v))[1], soft, atol=1e-6)


# ---------------------------------------------------------------- AttentionLayer


def test_attention_layer_structure_and_draws():
    np.random.seed(14)
    layer = nn.AttentionLayer(6, 2, 3, k_features=5, v_features=4, out_features=7)
    after = np.random.rand()
    np.random.seed(14)
    expected = [
        kaiming_uniform_draw(6, 6),
        kaiming_uniform_draw(5, 6),
        kaiming_uniform_draw(4, 6),
        kaiming_uniform_draw(6, 7),
    ]
    projections = [layer.q_projection, layer.k_projection, layer.v_projection]
    for lin, w in zip([*projections, layer.out_projection], expected, strict=True):
        assert lin.bias is None
        close(lin.weight, w, rtol=1e-6, atol=1e-7)
    assert after == next_draw_after(14, 36 + 30 + 24 + 42)
    assert [m.dim for m in (layer.prenorm_q, layer.prenorm_k, layer.prenorm_v)] == [6, 5, 4]
    assert layer.attn.causal  # causal by default
    assert n_params(layer) == 2 * (6 + 5 + 4) + 36 + 30 + 24 + 42


@pytest.mark.parametrize("causal", [False, True])
def test_attention_layer_self_attention_matches_torch(causal, torch, rng):
    layer = nn.AttentionLayer(8, 2, 3, causal=causal)
    randomize_norms(layer, rng)
    check_against_torch(
        torch,
        layer,
        lambda xs: layer(xs[0]),
        lambda P, xs: ref_attention_layer(torch, P, xs[0], xs[0], xs[0], 2, 3, causal),
        [randn(rng, 2, 5, 8)],
        rng,
    )


@pytest.mark.parametrize("causal", [False, True])
def test_attention_layer_cross_attention_matches_torch(causal, torch, rng):
    layer = nn.AttentionLayer(6, 3, 2, k_features=5, v_features=4, out_features=7, causal=causal)
    randomize_norms(layer, rng)
    check_against_torch(
        torch,
        layer,
        lambda xs: layer(*xs),
        lambda P, xs: ref_attention_layer(torch, P, *xs, 3, 2, causal),
        [randn(rng, 2, 3, 6), randn(rng, 2, 5, 5), randn(rng, 2, 5, 4)],
        rng,
    )


# ---------------------------------------------------------------- TransformerLayer


def test_transformer_layer_parameters():
    np.random.seed(15)
    layer = nn.TransformerLayer(8, 2, 4, 16)
    after = np.random.rand()
    np.random.seed(15)
    draws = [kaiming_uniform_draw(8, 8) for _ in range(4)]  # q, k, v, out projections
    draws += [kaiming_uniform_draw(8, 16), kaiming_uniform_draw(16, 1).reshape(1, 16)]
    draws += [kaiming_uniform_draw(16, 8), kaiming_uniform_draw(8, 1).reshape(1, 8)]
    weights = [p for p in layer.parameters() if p.shape not in ((8,),)]
    assert len(weights) == len(draws)
    for p, w in zip(weights, draws, strict=True):
        close(p, w, rtol=1e-6, atol=1e-7)
    assert after == next_draw_after(15, 4 * 64 + 128 + 16 + 128 + 8)
    assert n_params(layer) == 8 * 8 * 4 + 6 * 8 + 2 * 8 + (8 * 16 + 16) + (16 * 8 + 8)


@pytest.mark.parametrize("causal", [False, True])
def test_transformer_layer_matches_torch(causal, torch, rng):
    layer = nn.TransformerLayer(8, 2, 4, 16, causal=causal)
    randomize_norms(layer, rng)
    check_against_torch(
        torch,
        layer,
        lambda xs: layer(xs[0]),
        lambda P, xs: ref_transformer_layer(torch, P, xs[0], 2, 4, causal),
        [randn(rng, 2, 5, 8)],
        rng,
    )


# ---------------------------------------------------------------- Transformer


def _model(**kw):
    kw = {"num_head": 2, "dim_head": 8, "sequence_len": 20, **kw}
    return nn.Transformer(16, 32, 2, **kw)


def test_transformer_parameter_count_and_draw_order():
    np.random.seed(16)
    model = _model()
    np.random.seed(16)
    pos = np.random.randn(20, 16).astype("float32")
    first_q = kaiming_uniform_draw(16, 16)
    params = model.parameters()
    close(params[0], pos, rtol=1e-6, atol=1e-7)
    assert params[0].shape == (20, 16)
    close(model.layers.modules[0].attn.q_projection.weight, first_q, rtol=1e-6, atol=1e-7)
    per_layer = 6 * 16 + 4 * 16 * 16 + 2 * 16 + (16 * 32 + 32) + (32 * 16 + 16)
    assert n_params(model) == 20 * 16 + 2 * per_layer == 4768


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("causal", [False, True])
def test_transformer_matches_torch(batch_first, causal, torch, rng):
    model = _model(batch_first=batch_first, causal=causal)
    randomize_norms(model, rng)
    shape = (3, 6, 16) if batch_first else (6, 3, 16)
    check_against_torch(
        torch,
        model,
        lambda xs: model(xs[0])[0],
        lambda P, xs: ref_transformer(torch, P, xs[0], 2, 2, 8, causal, batch_first),
        [randn(rng, *shape)],
        rng,
        atol=2e-4,
    )


def test_transformer_second_output_is_zeros(rng):
    y, h = _model()(nc.Tensor(randn(rng, 4, 2, 16)))
    assert h.shape == y.shape == (4, 2, 16)
    np.testing.assert_array_equal(h.numpy(), np.zeros((4, 2, 16)))


@pytest.mark.parametrize("causal", [False, True])
def test_transformer_causality(causal, rng):
    model = _model(causal=causal)
    x = randn(rng, 6, 2, 16)
    moved = x.copy()
    moved[4:] += 1.0  # change the last two time steps
    a, _ = model(nc.Tensor(x))
    b, _ = model(nc.Tensor(moved))
    same = np.allclose(a.numpy()[:4], b.numpy()[:4], atol=1e-6)
    assert same == causal


# ---------------------------------------------------------------- jit


@pytest.mark.parametrize("training", [True, False])
def test_attention_modules_under_jit(training, rng):
    mha = nn.MultiHeadAttention(causal=True)
    attn = nn.AttentionLayer(8, 2, 4, k_features=6, v_features=6)
    block = nn.TransformerLayer(8, 2, 4, 16)
    model = _model()
    for m in (mha, attn, block, model):
        m.train() if training else m.eval()
    q4, k4 = nc.Tensor(randn(rng, 2, 2, 5, 4)), nc.Tensor(randn(rng, 2, 2, 5, 4))
    x3, k3 = nc.Tensor(randn(rng, 2, 5, 8)), nc.Tensor(randn(rng, 2, 5, 6))
    x_seq = nc.Tensor(randn(rng, 5, 2, 16))
    cases = [
        (lambda q, k: mha(q, k, k), (q4, k4)),
        (lambda q, k: attn(q, k, k), (x3, k3)),
        (lambda x: block(x), (x3,)),
        (lambda x: model(x), (x_seq,)),
    ]
    for fn, args in cases:
        eager, traced = fn(*args), nc.jit(fn)(*args)
        eager = eager if isinstance(eager, tuple) else (eager,)
        traced = traced if isinstance(traced, tuple) else (traced,)
        for a, b in zip(traced, eager, strict=True):
            close(a, b, rtol=1e-5, atol=1e-5)
