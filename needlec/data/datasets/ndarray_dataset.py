"""needle's `NDArrayDataset`: a dataset over arrays that share their first dimension."""

from __future__ import annotations

import numpy as np

from ..data_basic import Dataset


class NDArrayDataset(Dataset):
    """Item `i` is `tuple(a[i] for a in arrays)`; `i` may be an int, slice or index array.

    >>> ds = NDArrayDataset(np.arange(6).reshape(3, 2), np.array([7, 8, 9]))
    >>> len(ds), ds[np.array([2, 0])][1].tolist()
    (3, [9, 7])
    """

    def __init__(self, *arrays: np.ndarray) -> None:
        super().__init__()
        if not arrays:
            raise ValueError("NDArrayDataset needs at least one array")
        sizes = {len(a) for a in arrays}
        if len(sizes) != 1:
            shapes = ", ".join(str(np.shape(a)) for a in arrays)
            raise ValueError(f"NDArrayDataset: arrays differ in length along axis 0: {shapes}")
        self.arrays = arrays

    def __len__(self) -> int:
        return len(self.arrays[0])

    def __getitem__(self, i) -> tuple:
        return tuple(a[i] for a in self.arrays)
