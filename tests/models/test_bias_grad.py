"""A Linear layer's bias gradient (the column sum of the output gradient over the batch) runs
after the GEMM core in the kernel that computes that gradient, not in a reduce kernel of its own;
the step's results still match eager needle (the reference backend)."""

from __future__ import annotations

import re

import numpy as np

import needlec as nc
from needlec import nn, optim

from .test_train_steps import assert_same_state, digits_batches, train_both


def build_mlp():
    np.random.seed(5)
    return nn.Sequential(
        nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 10)
    )


def _lower(model, x, y):
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.SoftmaxLoss()

    def step(x, y):
        opt.reset_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return nc.jit(step).lower(x, y)


def test_bias_gradients_are_summed_inside_gemm_kernels():
    x, y = digits_batches(n=1, batch=32)[0]
    kernels = _lower(build_mlp(), x, y).kernels.kernels
    texts = [k.as_text() for k in kernels]
    # 8 matmuls (3 forward, 3 weight gradients, 2 input gradients: x needs none), each the
    # core of a kernel of its own; nothing else is a kernel of its own
    assert len(kernels) == 8 and all(k.kind == "gemm" for k in kernels), "\n".join(texts)
    # a column sum over the batch (i0) of a [32, n] gradient into a [1, n] bias gradient, for
    # each of the 3 layers, inside a GEMM kernel
    col_sum = re.compile(r"f32\[1,(48|32|10)\] = reduce_sum \S+ over=\(i0\)")
    found = sorted(m.group(1) for t in texts for m in col_sum.finditer(t))
    assert found == ["10", "32", "48"], "\n".join(texts)


def test_mlp_with_fused_bias_gradients_matches_eager():
    eager, jit, _ = train_both(build_mlp, digits_batches(), "sgd_momentum", steps=6)
    assert_same_state(eager, jit)
