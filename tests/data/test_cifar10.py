"""CIFAR-10 python-pickle batches written here, read back by CIFAR10Dataset."""

import pickle

import numpy as np
import pytest

import needlec as ndl
from needlec.data import CIFAR10Dataset, DataLoader, RandomCrop, RandomFlipHorizontal

SIZES = {"data_batch_1": 2, "data_batch_2": 3, "data_batch_3": 1, "data_batch_4": 2}
SIZES |= {"data_batch_5": 2, "test_batch": 3}


@pytest.fixture
def cifar_dir(tmp_path):
    rng = np.random.default_rng(0)
    written = {}
    for name, n in SIZES.items():
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).tolist()
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data}
        with open(tmp_path / name, "wb") as f:
            pickle.dump(batch, f)
        written[name] = (data, labels)
    return tmp_path, written


def test_train_concatenates_batches_one_to_five(cifar_dir):
    folder, written = cifar_dir
    ds = CIFAR10Dataset(str(folder), train=True)
    names = [f"data_batch_{i}" for i in range(1, 6)]
    data = np.concatenate([written[n][0] for n in names])
    labels = sum((written[n][1] for n in names), [])
    assert len(ds) == 10
    assert ds.X.shape == (10, 3, 32, 32) and ds.X.dtype == np.float32
    np.testing.assert_allclose(ds.X, data.reshape(10, 3, 32, 32) / 255.0, rtol=1e-6)
    assert 0.0 <= ds.X.min() and ds.X.max() <= 1.0
    assert ds.y.tolist() == labels


def test_test_split_and_items(cifar_dir):
    folder, written = cifar_dir
    ds = CIFAR10Dataset(str(folder), train=False)
    data, labels = written["test_batch"]
    assert len(ds) == 3
    item = ds[1]
    assert isinstance(item, tuple)
    x, y = item
    assert isinstance(x, np.ndarray) and x.shape == (3, 32, 32) and x.dtype == np.float32
    # channel-major rows: the first 1024 bytes are the red plane
    np.testing.assert_allclose(x[0].reshape(-1), data[1, :1024] / 255.0, rtol=1e-6)
    np.testing.assert_allclose(x[2, 31, 31], data[1, 3071] / 255.0, rtol=1e-6)
    assert y == labels[1]
    xb, yb = ds[np.array([2, 0])]
    assert xb.shape == (2, 3, 32, 32) and yb.tolist() == [labels[2], labels[0]]


def test_flip_acts_on_the_width_axis(cifar_dir):
    folder, _ = cifar_dir
    plain = CIFAR10Dataset(str(folder), train=False)
    flipped = CIFAR10Dataset(str(folder), train=False, transforms=[RandomFlipHorizontal(1.0)])
    np.testing.assert_array_equal(flipped[0][0], plain.X[0][:, :, ::-1])
    batch = flipped[np.array([1, 2])][0]
    np.testing.assert_array_equal(batch, plain.X[[1, 2]][:, :, :, ::-1])


def test_crop_shifts_height_then_width(cifar_dir):
    folder, _ = cifar_dir
    plain = CIFAR10Dataset(str(folder), train=False).X[2]
    ds = CIFAR10Dataset(str(folder), train=False, transforms=[RandomCrop(4)])
    np.random.seed(11)
    sx, sy = np.random.randint(-4, 5, size=2)
    expected = np.zeros_like(plain)
    for i in range(32):
        for j in range(32):
            if 0 <= i + sx < 32 and 0 <= j + sy < 32:
                expected[:, i, j] = plain[:, i + sx, j + sy]
    np.random.seed(11)
    np.testing.assert_array_equal(ds[2][0], expected)


def test_dataloader_batches(cifar_dir):
    folder, written = cifar_dir
    loader = DataLoader(CIFAR10Dataset(str(folder), train=True), batch_size=4)
    batches = list(loader)
    assert [b[0].shape for b in batches] == [(4, 3, 32, 32), (4, 3, 32, 32), (2, 3, 32, 32)]
    X, y = batches[0]
    assert isinstance(X, ndl.Tensor) and isinstance(y, ndl.Tensor) and X.dtype == "float32"
    assert y.numpy().tolist() == (written["data_batch_1"][1] + written["data_batch_2"][1])[:4]


def test_missing_batch_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        CIFAR10Dataset(str(tmp_path), train=True)


def test_malformed_batch(tmp_path):
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(ValueError, match="3072"):
        CIFAR10Dataset(str(tmp_path), train=False)
