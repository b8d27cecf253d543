"""load_digits (scikit-learn's bundled 8x8 digits) and the deterministic split helper."""

import sys

import numpy as np
import pytest

from needlec.data import load_digits, train_test_split


def test_load_digits_shapes_and_range():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    X, y = load_digits()
    assert X.shape == (1797, 64) and X.dtype == np.float32
    assert y.shape == (1797,) and np.issubdtype(y.dtype, np.integer)
    assert X.min() == 0.0 and X.max() == 1.0
    assert set(y.tolist()) == set(range(10))
    raw = sklearn_datasets.load_digits()
    np.testing.assert_array_equal(X * 16, raw.data)
    np.testing.assert_array_equal(y, raw.target)


def test_load_digits_without_sklearn_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        load_digits()


def test_split_partitions_rows_together():
    X = np.arange(20).reshape(10, 2)
    y = np.arange(10)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.3, seed=4)
    assert len(y_tr) == 7 and len(y_te) == 3
    assert sorted(y_tr.tolist() + y_te.tolist()) == list(range(10))
    np.testing.assert_array_equal(X_tr[:, 0], 2 * y_tr)
    np.testing.assert_array_equal(X_te[:, 0], 2 * y_te)


def test_split_is_deterministic_and_leaves_the_global_generator_alone():
    y = np.arange(50)
    np.random.seed(0)
    first = train_test_split(y, seed=1)
    after = np.random.rand()
    np.random.seed(0)
    assert np.random.rand() == after
    again = train_test_split(y, seed=1)
    other = train_test_split(y, seed=2)
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[1], other[1])


def test_split_errors():
    with pytest.raises(ValueError, match="length"):
        train_test_split(np.arange(3), np.arange(4))
    with pytest.raises(ValueError, match="test_size"):
        train_test_split(np.arange(3), test_size=1.5)
