"""The real course datasets, when present: set NEEDLEC_MNIST_DIR (the four MNIST .gz files),
NEEDLEC_CIFAR10_DIR (cifar-10-batches-py) or NEEDLEC_PTB_DIR (train.txt, test.txt).

Expected values are those of needle's own homework tests.
"""

import os

import numpy as np
import pytest

import needlec as ndl


def _dir(var):
    path = os.environ.get(var)
    if not path or not os.path.isdir(path):
        pytest.skip(f"set {var} to run against the real dataset")
    return path


INDICES = [1, 42, 1000, 2000, 3000, 4000, 5000, 5005]


def test_mnist():
    d = _dir("NEEDLEC_MNIST_DIR")
    X, y = ndl.data.parse_mnist(
        os.path.join(d, "train-images-idx3-ubyte.gz"), os.path.join(d, "train-labels-idx1-ubyte.gz")
    )
    assert X.shape == (60000, 784) and X.dtype == np.float32 and y.dtype == np.uint8
    np.testing.assert_allclose(np.linalg.norm(X[:10]), 27.892084, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(X[:1000]), 293.0717, rtol=1e-6)
    assert y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]

    files = (
        os.path.join(d, "train-images-idx3-ubyte.gz"),
        os.path.join(d, "train-labels-idx1-ubyte.gz"),
    )
    ds = ndl.data.MNISTDataset(*files)
    assert len(ds) == 60000
    norms = [np.linalg.norm(ds[i][0]) for i in INDICES]
    expected = [10.188792, 6.261355, 8.966858, 9.4346485, 9.086626, 9.214664, 10.208544, 10.649756]
    np.testing.assert_allclose(norms, expected, rtol=1e-6)
    assert [int(ds[i][1]) for i in INDICES] == [0, 7, 0, 5, 9, 7, 7, 8]

    np.random.seed(0)
    tforms = [ndl.data.RandomCrop(28), ndl.data.RandomFlipHorizontal()]
    ds = ndl.data.MNISTDataset(*files, transforms=tforms)
    norms = [np.linalg.norm(ds[i][0]) for i in INDICES]
    expected = [2.0228338, 0.0, 7.4892044, 0.0, 0.0, 3.8012788, 9.583429, 4.2152724]
    np.testing.assert_allclose(norms, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("train, n", [(True, 50000), (False, 10000)])
def test_cifar10(train, n):
    ds = ndl.data.CIFAR10Dataset(_dir("NEEDLEC_CIFAR10_DIR"), train=train)
    assert len(ds) == n
    X, y = ds[123]
    assert X.shape == (3, 32, 32) and X.dtype == np.float32 and 0 <= int(y) < 10


def test_ptb():
    corpus = ndl.data.Corpus(_dir("NEEDLEC_PTB_DIR"))
    assert len(corpus.dictionary) == 10000
    data = ndl.data.batchify(corpus.train, 15, device=ndl.cpu(), dtype="float32")
    X, y = ndl.data.get_batch(data, 100, 32, device=ndl.cpu())
    assert X.shape == (32, 15) and y.shape == (32 * 15,) and X.dtype == "float32"
