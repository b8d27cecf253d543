import gzip
import struct

import numpy as np
import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a short training run (seconds, not milliseconds)")


def write_idx(path, magic: int, array: np.ndarray) -> None:
    """An idx file in MNIST's format: big-endian magic and sizes, then uint8 data, gzipped."""
    header = struct.pack(f">{1 + array.ndim}I", magic, *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def mnist_dir(tmp_path):
    """A directory of fake MNIST files (random 28x28 images): 120 training, 60 t10k."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 120), ("t10k", 60)):
        images = rng.integers(0, 256, size=(n, 28, 28))
        images[0, 0, 0], images[0, 0, 1] = 0, 255  # the full range, so x / 255 is exact
        write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", 2051, images)
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", 2049, rng.integers(0, 10, size=n))
    return tmp_path


@pytest.fixture
def learnable_mnist_dir(tmp_path):
    """Fake MNIST files whose labels can be learned: an image of class k is dim noise with a
    bright 5x5 patch at the k-th of ten places. 200 training, 100 t10k."""
    rng = np.random.default_rng(1)
    for split, n in (("train", 200), ("t10k", 100)):
        labels = rng.integers(0, 10, size=n)
        images = rng.integers(0, 60, size=(n, 28, 28))
        for image, k in zip(images, labels, strict=True):
            row, col = 3 + 14 * (k // 5), 1 + 5 * (k % 5)
            image[row : row + 5, col : col + 5] = rng.integers(200, 256, size=(5, 5))
        images[0, 0, 0], images[0, 0, 1] = 0, 255  # the full range, so x / 255 is exact
        write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", 2051, images)
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", 2049, labels)
    return tmp_path
