"""The training step the pass tests compile: SGD with momentum on SoftmaxLoss, returning the loss."""

from __future__ import annotations

import numpy as np

import needlec as nc
from needlec import nn, optim


def lower_sgd_step(model: nn.Module, x: np.ndarray, y: np.ndarray):
    """(lowered, arrays): `jit(step).lower(x, y)` for `model`'s training step (reset_grad,
    SoftmaxLoss, backward, SGD lr 0.1 momentum 0.9), and an array for every input of its graph
    (the batch, the captured parameters and state, the hyperparameters)."""
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_fn = nn.SoftmaxLoss()

    def step(x, y):
        opt.reset_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss

    lowered = nc.jit(step).lower(x, y)
    traced = lowered.traced
    arrays = [x, y] + [t.numpy() for t in traced.captured]
    arrays += [np.array(getattr(obj, name), dtype="float64") for obj, name in traced.scalars]
    return lowered, arrays


def sgd_step_graph(model: nn.Module, x: np.ndarray, y: np.ndarray):
    """The traced graph of `lower_sgd_step`, before any pass."""
    return lower_sgd_step(model, x, y)[0].traced.graph
