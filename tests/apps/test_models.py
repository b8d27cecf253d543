"""ResNet9 and LanguageModel: parameter counts by formula, output shapes, jit == eager."""

from __future__ import annotations

import numpy as np
import pytest

import needlec as nc
from needlec import nn
from needlec.apps.models import ConvBN, LanguageModel, ResNet9


def count(model: nn.Module) -> int:
    return sum(int(np.prod(p.shape)) for p in model.parameters())


def conv_bn_params(c_in: int, c_out: int, k: int) -> int:
    return k * k * c_in * c_out + c_out + 2 * c_out  # weight, bias, BatchNorm weight and bias


def test_resnet9_has_needles_parameter_count():
    convs = [(3, 16, 7), (16, 32, 3), (32, 32, 3), (32, 32, 3), (32, 64, 3), (64, 128, 3)]
    convs += [(128, 128, 3), (128, 128, 3)]
    expected = sum(conv_bn_params(*c) for c in convs) + (128 * 128 + 128) + (128 * 10 + 10)
    assert expected == 431_946
    assert count(ResNet9()) == expected


def test_resnet9_layers_in_order():
    layers = ResNet9().model.modules
    kinds = [type(m).__name__ for m in layers]
    assert kinds == [
        "ConvBN",
        "ConvBN",
        "Residual",
        "ConvBN",
        "ConvBN",
        "Residual",
        "Flatten",
        "Linear",
        "ReLU",
        "Linear",
    ]
    strides = [(m.conv.kernel_size, m.conv.stride) for m in layers if isinstance(m, ConvBN)]
    assert strides == [(7, 4), (3, 2), (3, 2), (3, 2)]
    inner = layers[5].fn.modules
    assert [(m.conv.in_channels, m.conv.out_channels, m.conv.stride) for m in inner] == [
        (128, 128, 1),
        (128, 128, 1),
    ]


def test_resnet9_output_shape_and_jit_agrees_in_eval_mode():
    np.random.seed(0)
    model = ResNet9()
    x = np.random.rand(2, 3, 32, 32).astype("float32")
    out = model(nc.Tensor(x, requires_grad=False))
    assert out.shape == (2, 10) and out.dtype == "float32"
    model.eval()
    eager = model(nc.Tensor(x, requires_grad=False)).numpy()
    jitted = nc.jit(lambda t: model(t))(x).numpy()
    np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-6)


def lm_params(vocab: int, emb: int, hidden: int, layers: int, gates: int) -> int:
    """Embedding, recurrent layers (W_ih, W_hh, two biases; `gates` blocks each), Linear."""
    rnn = sum(
        gates * (i * hidden + hidden * hidden + 2 * hidden) for i in [emb] + [hidden] * (layers - 1)
    )
    return vocab * emb + rnn + hidden * vocab + vocab


@pytest.mark.parametrize("seq_model, gates", [("rnn", 1), ("lstm", 4)])
def test_language_model_parameter_count(seq_model, gates):
    model = LanguageModel(8, 30, 12, num_layers=2, seq_model=seq_model)
    assert count(model) == lm_params(30, 8, 12, 2, gates)


@pytest.mark.parametrize("seq_model", ["rnn", "lstm", "transformer"])
def test_language_model_shapes(seq_model):
    T, B, V, E, H, L = 5, 3, 20, 8, 12, 2
    np.random.seed(0)
    model = LanguageModel(E, V, H, num_layers=L, seq_model=seq_model, seq_len=T)
    x = nc.Tensor(np.random.randint(0, V, size=(T, B)).astype("float32"), requires_grad=False)
    logits, h = model(x)
    assert logits.shape == (T * B, V)
    if seq_model == "rnn":
        assert h.shape == (L, B, H)
    elif seq_model == "lstm":
        assert [t.shape for t in h] == [(L, B, H), (L, B, H)]
    else:
        assert model.hidden_size == E and model.linear.weight.shape == (E, V)
    logits2, _ = model(x, h)  # the state goes back in
    assert logits2.shape == (T * B, V)
    assert np.isfinite(logits2.numpy()).all()


def test_language_model_rejects_unknown_sequence_model():
    with pytest.raises(ValueError, match="gru"):
        LanguageModel(4, 10, 4, seq_model="gru")
