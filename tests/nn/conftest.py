import numpy as np
import pytest


@pytest.fixture
def torch():
    """PyTorch (CPU) as an independent reference; the test skips where it is not installed."""
    return pytest.importorskip("torch")


@pytest.fixture
def rng():
    return np.random.default_rng(0)
