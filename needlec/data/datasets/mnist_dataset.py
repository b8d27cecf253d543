"""MNIST from its gzip-compressed idx files (needle's `parse_mnist` and `MNISTDataset`).

The idx format: a big-endian header (magic 2051, count, rows, cols for images; magic 2049,
count for labels) followed by uint8 data.
"""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Callable, Sequence

import numpy as np

from ..data_basic import Dataset

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049


def _read_bytes(filename: str | os.PathLike) -> bytes:
    with open(filename, "rb") as f:
        raw = f.read()
    return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw  # plain idx files work too


def _read_idx(filename: str | os.PathLike, magic: int, header_ints: int) -> tuple[tuple, bytes]:
    raw = _read_bytes(filename)
    size = 4 * header_ints
    if len(raw) < size:
        raise ValueError(f"{filename}: too short for an idx header ({len(raw)} bytes)")
    header = struct.unpack(f">{header_ints}I", raw[:size])
    if header[0] != magic:
        raise ValueError(f"{filename}: idx magic number is {header[0]}, expected {magic}")
    return header[1:], raw[size:]


def parse_mnist(
    image_filename: str | os.PathLike, label_filename: str | os.PathLike
) -> tuple[np.ndarray, np.ndarray]:
    """Read MNIST-format images and labels (gzip or plain idx files).

    Returns `(X, y)`: X float32 of shape (count, rows*cols), min-max normalized over the whole
    file to [0, 1] as needle's docstring asks (for MNIST, whose pixels span 0..255, this is
    x / 255; a file of one constant value gives zeros); y uint8 of shape (count,).
    """
    X, y, _ = _load_mnist(image_filename, label_filename)
    return X, y


def _load_mnist(image_filename, label_filename) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    (count, rows, cols), pixels = _read_idx(image_filename, IMAGES_MAGIC, 4)
    (label_count,), labels = _read_idx(label_filename, LABELS_MAGIC, 2)
    if len(pixels) != count * rows * cols:
        raise ValueError(
            f"{image_filename}: header says {count} images of {rows}x{cols} "
            f"({count * rows * cols} bytes), file has {len(pixels)} bytes of pixels"
        )
    if len(labels) != label_count:
        raise ValueError(
            f"{label_filename}: header says {label_count} labels, file has {len(labels)}"
        )
    if label_count != count:
        raise ValueError(
            f"{image_filename} has {count} images but {label_filename} has {label_count} labels"
        )
    X = np.frombuffer(pixels, dtype=np.uint8).reshape(count, rows * cols).astype(np.float32)
    lo, hi = (X.min(), X.max()) if X.size else (0.0, 0.0)
    X = (X - lo) / (hi - lo) if hi > lo else np.zeros_like(X)
    y = np.frombuffer(labels, dtype=np.uint8).copy()
    return X.astype(np.float32), y, (rows, cols)


class MNISTDataset(Dataset):
    """MNIST images (flattened, float32 in [0, 1]) and uint8 labels.

    `X` holds (N, rows*cols) images, `y` the labels. An int index gives `(image (rows*cols,),
    label)`; a slice or index array gives a batch. Transforms see each image as an H x W x 1
    array and their result is flattened back.
    """

    def __init__(
        self,
        image_filename: str | os.PathLike,
        label_filename: str | os.PathLike,
        transforms: Sequence[Callable] | None = None,
    ) -> None:
        super().__init__(transforms)
        self.X, self.y, (self.rows, self.cols) = _load_mnist(image_filename, label_filename)

    def _transform(self, image: np.ndarray) -> np.ndarray:
        out = self.apply_transforms(image.reshape(self.rows, self.cols, 1))
        return np.asarray(out, dtype=np.float32).reshape(-1)

    def __getitem__(self, index) -> tuple[np.ndarray, np.ndarray]:
        X, y = self.X[index], self.y[index]
        if self.transforms:
            X = self.transform_items(X, 1, self._transform)
        return X, y

    def __len__(self) -> int:
        return len(self.X)
