"""needle's `Dataset` and `DataLoader`.

Shuffling draws from numpy's global generator, one `np.random.permutation(len(dataset))` per
epoch at `iter(loader)`, so a seeded needle run and a seeded needlec run see the same batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np

from ..autograd import Tensor


class Dataset:
    """An indexable collection of examples; subclasses define `__getitem__` and `__len__`.

    `transforms` is a list of callables applied in order by `apply_transforms` (image datasets
    call it on each H x W x C image).

    >>> class Squares(Dataset):
    ...     def __getitem__(self, i):
    ...         return (np.asarray(i) ** 2,)
    ...     def __len__(self):
    ...         return 4
    >>> len(Squares()), Squares()[np.array([1, 3])][0].tolist()
    (4, [1, 9])
    """

    def __init__(self, transforms: Sequence[Callable] | None = None) -> None:
        self.transforms = transforms

    def __getitem__(self, index) -> object:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def apply_transforms(self, x: np.ndarray) -> np.ndarray:
        """Apply each transform in `self.transforms`, in order, to one example."""
        if self.transforms is not None:
            for transform in self.transforms:
                x = transform(x)
        return x

    def transform_items(self, X: np.ndarray, item_ndim: int, transform) -> np.ndarray:
        """`transform` on one item (`X.ndim == item_ndim`) or on each item of a batch."""
        if X.ndim == item_ndim:
            return transform(X)
        return np.stack([transform(x) for x in X]) if len(X) else X


class DataLoader:
    """Iterates over `dataset` in batches of `batch_size`; each batch is a tuple of Tensors.

    A batch is `dataset[index_array]`, one Tensor per field of the item. The last batch is
    smaller when `batch_size` does not divide the dataset. With `shuffle`, each epoch (each
    `iter(loader)`) draws one `np.random.permutation(len(dataset))`. `device` and `dtype` are
    needlec extras passed to `Tensor` (None keeps Tensor's defaults: float data stays float32,
    integer labels stay integers). Batches are data, so they do not require grad. A `sampler`
    (an iterable of item indices with a length, such as `needlec.distributed.DistributedSampler`)
    gives each epoch's order instead (then `shuffle` must be False).

    >>> from needlec.data import NDArrayDataset
    >>> loader = DataLoader(NDArrayDataset(np.arange(5.0)), batch_size=2)
    >>> [x.numpy().tolist() for (x,) in loader]
    [[0.0, 1.0], [2.0, 3.0], [4.0]]
    """

    dataset: Dataset
    batch_size: int | None

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int | None = 1,
        shuffle: bool = False,
        *,
        device=None,
        dtype: str | None = None,
        sampler=None,
    ) -> None:
        if sampler is not None and shuffle:
            raise ValueError("DataLoader: pass shuffle to the sampler, not with one")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"DataLoader: batch_size must be at least 1, got {batch_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.device = device
        self.dtype = dtype
        self.sampler = sampler
        self.ordering: list[np.ndarray] = []
        self._next = 0

    def _items(self) -> int:
        return len(self.dataset) if self.sampler is None else len(self.sampler)

    def _batch_size(self) -> int:
        return self.batch_size if self.batch_size is not None else max(self._items(), 1)

    def __len__(self) -> int:
        """The number of batches in one epoch."""
        return -(-self._items() // self._batch_size())

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        n, size = self._items(), self._batch_size()
        if self.sampler is not None:
            order = np.fromiter(iter(self.sampler), dtype=np.int64)
            n = len(order)
        else:
            order = np.random.permutation(n) if self.shuffle else np.arange(n)
        self.ordering = np.array_split(order, range(size, n, size))
        self._next = 0
        return self

    def __next__(self) -> tuple[Tensor, ...]:
        if self._next >= len(self.ordering) or len(self.ordering[self._next]) == 0:
            raise StopIteration
        item = self.dataset[self.ordering[self._next]]
        self._next += 1
        fields = item if isinstance(item, tuple | list) else (item,)
        return tuple(
            Tensor(x, device=self.device, dtype=self.dtype, requires_grad=False) for x in fields
        )
