"""CIFAR-10 from the python-pickle batches of `cifar-10-batches-py` (needle's `CIFAR10Dataset`)."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Sequence

import numpy as np

from ..data_basic import Dataset

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)


def _load_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise ValueError(f"{path}: a CIFAR-10 batch needs 'data' and 'labels' entries")
    data = np.asarray(data, dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise ValueError(
            f"{path}: expected data (N, 3072) and N labels, got data {data.shape} "
            f"and {len(labels)} labels"
        )
    return data, np.asarray(labels, dtype=np.uint8)


class CIFAR10Dataset(Dataset):
    """CIFAR-10 images, float32 in [0, 1] (pixels / 255), shape (3, 32, 32); uint8 labels.

    `train` picks `data_batch_1` .. `data_batch_5` (concatenated in that order) or
    `test_batch` under `base_folder`. `X` holds (N, 3, 32, 32) images, `y` the labels. `p` is
    accepted for needle compatibility and unused (needle's transforms carry their own
    probabilities). Transforms see each image as 32 x 32 x 3 (H x W x C); the result goes back
    to (3, 32, 32).
    """

    def __init__(
        self,
        base_folder: str | os.PathLike,
        train: bool,
        p: float | None = 0.5,
        transforms: Sequence[Callable] | None = None,
    ) -> None:
        super().__init__(transforms)
        self.p = p
        names = TRAIN_BATCHES if train else TEST_BATCHES
        batches = [_load_batch(os.path.join(base_folder, name)) for name in names]
        data = np.concatenate([b[0] for b in batches])
        self.X = (data.reshape(-1, 3, 32, 32) / np.float32(255.0)).astype(np.float32)
        self.y = np.concatenate([b[1] for b in batches])

    def _transform(self, image: np.ndarray) -> np.ndarray:
        out = self.apply_transforms(image.transpose(1, 2, 0))
        return np.ascontiguousarray(np.asarray(out, dtype=np.float32).transpose(2, 0, 1))

    def __getitem__(self, index) -> tuple[np.ndarray, np.ndarray]:
        X, y = self.X[index], self.y[index]
        if self.transforms:
            X = self.transform_items(X, 3, self._transform)
        return X, y

    def __len__(self) -> int:
        return len(self.X)
