"""MNIST idx files written here in the real format, read back by parse_mnist and MNISTDataset."""

import gzip
import struct

import numpy as np
import pytest

import needlec as ndl
from needlec.data import DataLoader, MNISTDataset, RandomCrop, RandomFlipHorizontal, parse_mnist


def write_mnist(tmp_path, images, labels, *, compress=True, image_magic=2051, label_magic=2049):
    n, rows, cols = images.shape
    image_bytes = (
        struct.pack(">IIII", image_magic, n, rows, cols) + images.astype(np.uint8).tobytes()
    )
    label_bytes = (
        struct.pack(">II", label_magic, len(labels)) + np.asarray(labels, np.uint8).tobytes()
    )
    opener = gzip.open if compress else open
    image_file, label_file = tmp_path / "images.idx3", tmp_path / "labels.idx1"
    with opener(image_file, "wb") as f:
        f.write(image_bytes)
    with opener(label_file, "wb") as f:
        f.write(label_bytes)
    return str(image_file), str(label_file)


def _images(n, rows=4, cols=3, lo=0, hi=255, seed=0):
    images = np.random.default_rng(seed).integers(lo, hi + 1, size=(n, rows, cols), dtype=np.uint8)
    images.flat[0], images.flat[1] = lo, hi  # the file spans lo..hi
    return images


@pytest.mark.parametrize("compress", [True, False])
def test_parse_mnist_shapes_dtypes_and_scaling(tmp_path, compress):
    images, labels = _images(6), [3, 0, 9, 1, 1, 7]
    X, y = parse_mnist(*write_mnist(tmp_path, images, labels, compress=compress))
    assert X.shape == (6, 12) and X.dtype == np.float32
    assert y.shape == (6,) and y.dtype == np.uint8
    np.testing.assert_allclose(X, images.reshape(6, 12) / 255.0, rtol=1e-6)
    assert X.min() == 0.0 and X.max() == 1.0
    assert y.tolist() == labels


def test_parse_mnist_normalizes_min_max_over_the_whole_file(tmp_path):
    images = _images(5, lo=10, hi=200)
    X, _ = parse_mnist(*write_mnist(tmp_path, images, [0] * 5))
    np.testing.assert_allclose(X, (images.reshape(5, 12) - 10.0) / 190.0, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"image_magic": 2049}, "magic"), ({"label_magic": 2051}, "magic")],
)
def test_parse_mnist_rejects_wrong_magic(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        parse_mnist(*write_mnist(tmp_path, _images(2), [1, 2], **kwargs))


def test_parse_mnist_rejects_truncated_and_mismatched_files(tmp_path):
    image_file, label_file = write_mnist(tmp_path, _images(3), [1, 2, 3])
    with gzip.open(image_file, "rb") as f:
        raw = f.read()
    with gzip.open(image_file, "wb") as f:
        f.write(raw[:-5])
    with pytest.raises(ValueError, match="bytes of pixels"):
        parse_mnist(image_file, label_file)

    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(ValueError, match="labels"):
        parse_mnist(*write_mnist(other, _images(3), [1, 2]))


def test_dataset_items_and_batches(tmp_path):
    images, labels = _images(5), [4, 2, 0, 9, 9]
    ds = MNISTDataset(*write_mnist(tmp_path, images, labels))
    assert len(ds) == 5
    x, y = ds[3]
    assert x.shape == (12,) and x.dtype == np.float32 and y == 9
    np.testing.assert_allclose(x, images[3].reshape(-1) / 255.0, rtol=1e-6)
    xb, yb = ds[np.array([4, 0])]
    assert xb.shape == (2, 12) and yb.tolist() == [9, 4]
    xs, ys = ds[1:3]
    assert xs.shape == (2, 12) and ys.tolist() == [2, 0]


def _transformed(images, seed, padding, p):
    """Expected images, with the draws in needle's order: crop's shifts, then flip's coin."""
    np.random.seed(seed)
    out = []
    for img in images / 255.0:
        sx, sy = np.random.randint(low=-padding, high=padding + 1, size=2)
        h, w = img.shape
        crop = np.zeros_like(img)
        for i in range(h):
            for j in range(w):
                if 0 <= i + sx < h and 0 <= j + sy < w:
                    crop[i, j] = img[i + sx, j + sy]
        if np.random.rand() < p:
            crop = crop[:, ::-1]
        out.append(crop.reshape(-1))
    return np.array(out)


def test_transforms_see_rows_by_cols_images_in_needle_draw_order(tmp_path):
    images = _images(4, rows=5, cols=3)
    tforms = [RandomCrop(2), RandomFlipHorizontal(0.5)]
    ds = MNISTDataset(*write_mnist(tmp_path, images, [0, 1, 2, 3]), transforms=tforms)
    expected = _transformed(images[[2, 0, 3]], seed=7, padding=2, p=0.5)

    np.random.seed(7)
    single = [ds[i][0] for i in [2, 0, 3]]
    assert all(x.shape == (15,) and x.dtype == np.float32 for x in single)
    np.testing.assert_allclose(np.array(single), expected, rtol=1e-6)

    np.random.seed(7)
    batch, labels = ds[np.array([2, 0, 3])]
    assert batch.shape == (3, 15) and labels.tolist() == [2, 0, 3]
    np.testing.assert_allclose(batch, expected, rtol=1e-6)
    np.testing.assert_array_equal(ds.X[0], images[0].reshape(-1) / np.float32(255))  # unchanged


def test_dataloader_over_mnist(tmp_path):
    images, labels = _images(5), [4, 2, 0, 9, 9]
    loader = DataLoader(MNISTDataset(*write_mnist(tmp_path, images, labels)), batch_size=2)
    batches = list(loader)
    assert [b[0].shape for b in batches] == [(2, 12), (2, 12), (1, 12)]
    assert all(isinstance(t, ndl.Tensor) for b in batches for t in b)
    assert batches[0][0].dtype == "float32"
    assert np.concatenate([b[1].numpy() for b in batches]).tolist() == labels
