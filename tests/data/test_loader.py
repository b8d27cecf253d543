"""Dataset, NDArrayDataset and DataLoader: batching, shuffling draws, Tensor batches."""

import numpy as np
import pytest

import needlec as ndl
from needlec.data import DataLoader, Dataset, NDArrayDataset


def _batches(loader):
    return [tuple(t.numpy() for t in batch) for batch in loader]


@pytest.mark.parametrize(
    "n, batch_size, sizes", [(10, 4, [4, 4, 2]), (6, 3, [3, 3]), (3, 1, [1, 1, 1]), (5, 8, [5])]
)
def test_batches_in_order_with_a_smaller_last_batch(n, batch_size, sizes):
    X = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    y = np.arange(n) % 4
    batches = list(DataLoader(NDArrayDataset(X, y), batch_size=batch_size))
    assert [len(b[0].numpy()) for b in batches] == sizes
    start = 0
    for xb, yb in batches:
        k = len(xb.numpy())
        np.testing.assert_array_equal(xb.numpy(), X[start : start + k])
        np.testing.assert_array_equal(yb.numpy(), y[start : start + k])
        start += k
    assert start == n


def test_batch_is_a_tuple_of_tensors_that_do_not_require_grad():
    loader = DataLoader(NDArrayDataset(np.ones((4, 2), np.float32), np.arange(4)), batch_size=2)
    batch = next(iter(loader))
    assert isinstance(batch, tuple) and len(batch) == 2
    assert all(isinstance(t, ndl.Tensor) for t in batch)
    assert batch[0].dtype == "float32" and batch[0].shape == (2, 2)
    assert not batch[0].requires_grad and not batch[1].requires_grad


def test_device_and_dtype_reach_every_field():
    loader = DataLoader(
        NDArrayDataset(np.ones((3, 2)), np.arange(3)),
        batch_size=3,
        device=ndl.cpu_numpy(),
        dtype="float32",
    )
    x, y = next(iter(loader))
    assert x.device == ndl.cpu_numpy() and y.device == ndl.cpu_numpy()
    assert x.dtype == "float32" and y.dtype == "float32"
    np.testing.assert_array_equal(y.numpy(), [0.0, 1.0, 2.0])


def test_shuffle_draws_one_permutation_per_epoch_at_iter():
    n, batch_size = 11, 4
    X = np.arange(n) * 10
    np.random.seed(3)
    loader = DataLoader(NDArrayDataset(X), batch_size=batch_size, shuffle=True)
    np.random.rand()  # a draw between construction and iter: the permutation comes after it
    epoch1 = _batches(loader)
    epoch2 = _batches(loader)

    np.random.seed(3)
    np.random.rand()
    perm1, perm2 = np.random.permutation(n), np.random.permutation(n)
    for epoch, perm in [(epoch1, perm1), (epoch2, perm2)]:
        assert [len(b[0]) for b in epoch] == [4, 4, 3]
        np.testing.assert_array_equal(np.concatenate([b[0] for b in epoch]), X[perm])
    assert not np.array_equal(perm1, perm2)


def test_needle_course_shuffle_values():
    # Expected values from needle's own hw2 test_dataloader_ndarray.
    np.random.seed(0)
    loader = iter(DataLoader(NDArrayDataset(np.arange(100)), batch_size=1, shuffle=True))
    first = [next(loader)[0].numpy().item() for _ in range(10)]
    assert first == [26, 86, 2, 55, 75, 93, 16, 73, 54, 95]

    loader = iter(DataLoader(NDArrayDataset(np.arange(100)), batch_size=10, shuffle=True))
    norms = [np.linalg.norm(next(loader)[0].numpy()) for _ in range(10)]
    expected = [164.805946, 173.43875, 169.841102, 189.050258, 195.880065]
    expected += [206.387984, 209.909504, 185.776748, 145.948621, 160.252925]
    np.testing.assert_allclose(norms, expected, rtol=1e-6)


def test_no_shuffle_draws_nothing_and_repeats():
    loader = DataLoader(NDArrayDataset(np.arange(7)), batch_size=3)
    np.random.seed(5)
    first = _batches(loader)
    after = np.random.rand()
    np.random.seed(5)
    assert after == np.random.rand()
    second = _batches(loader)
    assert [b[0].tolist() for b in first] == [[0, 1, 2], [3, 4, 5], [6]]
    assert [b[0].tolist() for b in second] == [[0, 1, 2], [3, 4, 5], [6]]


def test_exhausted_iterator_keeps_stopping_and_len_counts_batches():
    loader = DataLoader(NDArrayDataset(np.arange(5)), batch_size=2)
    assert len(loader) == 3
    it = iter(loader)
    assert len(list(it)) == 3
    with pytest.raises(StopIteration):
        next(it)


def test_empty_dataset_gives_no_batches():
    assert list(DataLoader(NDArrayDataset(np.zeros((0, 2))), batch_size=4)) == []


def test_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(NDArrayDataset(np.arange(3)), batch_size=0)


def test_dataset_applies_transforms_in_order():
    ds = Dataset(transforms=[lambda x: x + 1, lambda x: x * 2])
    np.testing.assert_array_equal(ds.apply_transforms(np.array([0, 3])), [2, 8])
    x = np.array([1.0])
    assert Dataset().apply_transforms(x) is x
    with pytest.raises(NotImplementedError):
        Dataset()[0]


def test_ndarray_dataset_items():
    a, b = np.arange(12).reshape(4, 3), np.array([5, 6, 7, 8])
    ds = NDArrayDataset(a, b)
    assert len(ds) == 4
    item = ds[2]
    assert isinstance(item, tuple) and item[0].tolist() == [6, 7, 8] and item[1] == 7
    assert ds[1:3][1].tolist() == [6, 7]
    with pytest.raises(ValueError, match="length"):
        NDArrayDataset(a, b[:3])
