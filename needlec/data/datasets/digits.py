"""scikit-learn's bundled 8x8 handwritten digits: a small, download-free stand-in for MNIST."""

from __future__ import annotations

import numpy as np


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """Return `(X, y)`: X float32 (1797, 64), pixels / 16 so in [0, 1]; y int64 labels 0..9.

    Needs the optional scikit-learn (`pip install scikit-learn`); nothing is downloaded.

    >>> X, y = load_digits()  # doctest: +SKIP
    >>> X.shape, X.dtype, y[:5].tolist()  # doctest: +SKIP
    ((1797, 64), dtype('float32'), [0, 1, 2, 3, 4])
    """
    try:
        from sklearn import datasets
    except ImportError as e:
        raise ImportError(
            "needlec.data.load_digits needs scikit-learn: pip install scikit-learn"
        ) from e
    digits = datasets.load_digits()
    X = (np.asarray(digits.data, dtype=np.float32) / np.float32(16.0)).astype(np.float32)
    return X, np.asarray(digits.target, dtype=np.int64)


def train_test_split(
    *arrays: np.ndarray, test_size: float = 0.2, seed: int = 0
) -> list[np.ndarray]:
    """Split arrays (same length) into train and test parts by one seeded permutation.

    Returns `[a_train, a_test, b_train, b_test, ...]`, as scikit-learn's function of the same
    name. The permutation comes from its own `np.random.default_rng(seed)`, so the split never
    moves numpy's global generator (needle's weight draws stay where they were).

    >>> X, y = np.arange(10).reshape(5, 2), np.arange(5)
    >>> X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.4)
    >>> len(y_tr), len(y_te), sorted(y_tr.tolist() + y_te.tolist())
    (3, 2, [0, 1, 2, 3, 4])
    >>> bool((X_te[:, 0] == 2 * y_te).all())
    True
    """
    if not arrays:
        raise ValueError("train_test_split needs at least one array")
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError("train_test_split: arrays differ in length")
    if not 0.0 <= test_size <= 1.0:
        raise ValueError(f"train_test_split: test_size must be in [0, 1], got {test_size}")
    order = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * test_size))
    train, test = order[n_test:], order[:n_test]
    return [part for a in arrays for part in (a[train], a[test])]
