"""Penn Treebank: Dictionary, Corpus on tiny text files, batchify and get_batch."""

import numpy as np
import pytest

import needlec as ndl
from needlec.data import Corpus, Dictionary, batchify, get_batch


@pytest.fixture
def ptb_dir(tmp_path):
    (tmp_path / "train.txt").write_text(" a b c \n b c d \n")
    (tmp_path / "test.txt").write_text(" c e \n\n a \n")
    return tmp_path


def test_dictionary():
    d = Dictionary()
    assert [d.add_word(w) for w in ["x", "y", "x", "z"]] == [0, 1, 0, 2]
    assert d.idx2word == ["x", "y", "z"] and d.word2idx == {"x": 0, "y": 1, "z": 2}
    assert len(d) == 3


def test_corpus_ids_with_eos(ptb_dir):
    corpus = Corpus(str(ptb_dir))
    # ids by first appearance: a0 b1 c2 <eos>3 d4, then test adds e5
    assert corpus.train == [0, 1, 2, 3, 1, 2, 4, 3]
    assert corpus.test == [2, 5, 3, 3, 0, 3]  # the empty line is one <eos>
    assert corpus.dictionary.idx2word == ["a", "b", "c", "<eos>", "d", "e"]
    assert len(corpus.dictionary) == 6


def test_corpus_max_lines(ptb_dir):
    corpus = Corpus(str(ptb_dir), max_lines=1)
    assert corpus.train == [0, 1, 2, 3]
    assert corpus.test == [2, 4, 3]
    assert corpus.dictionary.idx2word == ["a", "b", "c", "<eos>", "e"]


def test_batchify_columns_and_remainder():
    out = batchify(list(range(11)), 3, device=None, dtype=None)
    assert isinstance(out, np.ndarray) and out.dtype == np.int64
    assert out.tolist() == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]  # 9 and 10 dropped
    out = batchify(list(range(8)), 2, device=ndl.cpu(), dtype="float32")
    assert out.dtype == np.float32
    assert out.tolist() == [[0, 4], [1, 5], [2, 6], [3, 7]]


def test_get_batch_chunks_and_targets():
    batches = batchify(list(range(12)), 3, device=None, dtype="float32")  # rows [0,4,8]..[3,7,11]
    x, y = get_batch(batches, 0, 2)
    assert isinstance(x, ndl.Tensor) and isinstance(y, ndl.Tensor)
    assert x.shape == (2, 3) and y.shape == (6,)
    assert x.dtype == "float32" and y.dtype == "float32"
    assert x.numpy().tolist() == [[0, 4, 8], [1, 5, 9]]
    assert y.numpy().tolist() == [1, 5, 9, 2, 6, 10]

    x, y = get_batch(batches, 1, 10, device=ndl.cpu_numpy())  # clipped to the rows left
    assert x.shape == (2, 3) and x.device == ndl.cpu_numpy()
    assert x.numpy().tolist() == [[1, 5, 9], [2, 6, 10]]
    assert y.numpy().tolist() == [2, 6, 10, 3, 7, 11]

    with pytest.raises(IndexError):
        get_batch(batches, 3, 2)


def test_get_batch_dtype_argument():
    batches = batchify(list(range(6)), 2, device=None, dtype=None)
    x, y = get_batch(batches, 0, 1, dtype="float32")
    assert x.dtype == "float32" and y.dtype == "float32"
    x, _ = get_batch(batches, 0, 1)
    assert x.dtype == "int64"
    assert x.numpy().tolist() == [[0, 3]]


def test_pipeline_on_a_corpus(ptb_dir):
    corpus = Corpus(str(ptb_dir))
    data = batchify(corpus.train, 2, device=None, dtype="float32")
    assert data.shape == (4, 2)
    x, y = get_batch(data, 0, 3)
    assert x.numpy().tolist() == [[0, 1], [1, 2], [2, 4]]
    assert y.numpy().tolist() == [1, 2, 2, 4, 3, 3]
