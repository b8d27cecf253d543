"""Penn Treebank language-modeling data (needle's `Dictionary`, `Corpus`, `batchify`,
`get_batch`), after PyTorch's word_language_model example."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from numpy.typing import DTypeLike

from ...autograd import Tensor
from ...backend_ndarray import BackendDevice

EOS = "<eos>"


class Dictionary:
    """Word <-> id, ids given in order of first appearance.

    >>> d = Dictionary()
    >>> d.add_word("the"), d.add_word("cat"), d.add_word("the"), len(d)
    (0, 1, 0, 2)
    """

    def __init__(self) -> None:
        self.word2idx: dict[str, int] = {}
        self.idx2word: list[str] = []

    def add_word(self, word: str) -> int:
        """Add `word` if new; return its id."""
        if word not in self.word2idx:
            self.word2idx[word] = len(self.idx2word)
            self.idx2word.append(word)
        return self.word2idx[word]

    def __len__(self) -> int:
        return len(self.idx2word)


class Corpus:
    """`train.txt` and `test.txt` under `base_dir`, tokenized with one shared `Dictionary`.

    `train` and `test` are lists of word ids; each line contributes its whitespace-separated
    words then `<eos>`. `max_lines` limits how many lines of each file are read.
    """

    def __init__(self, base_dir: str | os.PathLike, max_lines: int | None = None) -> None:
        self.dictionary = Dictionary()
        self.train = self.tokenize(os.path.join(base_dir, "train.txt"), max_lines)
        self.test = self.tokenize(os.path.join(base_dir, "test.txt"), max_lines)

    def tokenize(self, path: str | os.PathLike, max_lines: int | None = None) -> list[int]:
        """Add the words of the first `max_lines` lines of `path` (all when None) to the
        dictionary and return their ids, with `<eos>` after each line."""
        ids: list[int] = []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f):
                if max_lines is not None and n >= max_lines:
                    break
                ids.extend(self.dictionary.add_word(w) for w in line.split() + [EOS])
        return ids


def batchify(
    data: Sequence[int] | np.ndarray,
    batch_size: int,
    device: BackendDevice | None = None,
    dtype: DTypeLike | None = None,
) -> np.ndarray:
    """Arrange a token sequence into `batch_size` columns, dropping the remainder.

    Returns a numpy array of shape (len(data) // batch_size, batch_size) whose column j is the
    j-th contiguous slice of `data`. `dtype` is the array's dtype (int64 when None); `device`
    is accepted for needle compatibility (the result is a numpy array).

    >>> batchify(list(range(10)), 3, None, None).tolist()
    [[0, 3, 6], [1, 4, 7], [2, 5, 8]]
    """
    nbatch = len(data) // batch_size
    columns = np.asarray(data[: nbatch * batch_size], dtype=dtype or np.int64)
    return np.ascontiguousarray(columns.reshape(batch_size, nbatch).T)


def get_batch(
    batches: np.ndarray,
    i: int,
    bptt: int,
    device: BackendDevice | None = None,
    dtype: str | None = None,
) -> tuple[Tensor, Tensor]:
    """The chunk of rows starting at `i` and its next-token targets.

    Returns `(data, target)`: data (seq_len, batch_size) = `batches[i : i + seq_len]`, target
    (seq_len * batch_size,) = `batches[i + 1 : i + 1 + seq_len]` flattened, where
    `seq_len = min(bptt, len(batches) - 1 - i)`. `dtype` None keeps the array's dtype.

    >>> x, y = get_batch(batchify(list(range(10)), 3, None, None), 0, 2)
    >>> x.numpy().tolist(), y.numpy().tolist()
    ([[0, 3, 6], [1, 4, 7]], [1, 4, 7, 2, 5, 8])
    """
    seq_len = min(bptt, len(batches) - 1 - i)
    if i < 0 or seq_len < 1:
        raise IndexError(f"get_batch: no targets after row {i} of {len(batches)} rows")
    data = batches[i : i + seq_len]
    target = batches[i + 1 : i + 1 + seq_len].reshape(-1)
    return (
        Tensor(data, device=device, dtype=dtype, requires_grad=False),
        Tensor(target, device=device, dtype=dtype, requires_grad=False),
    )
