"""needle's data pipeline: `Dataset`, `DataLoader`, transforms and the course datasets.

Every random draw (shuffling, transforms) comes from numpy's global generator in needle's order.
"""

from .data_basic import DataLoader, Dataset
from .data_transforms import RandomCrop, RandomFlipHorizontal, Transform
from .datasets import (
    CIFAR10Dataset,
    Corpus,
    Dictionary,
    MNISTDataset,
    NDArrayDataset,
    batchify,
    get_batch,
    load_digits,
    parse_mnist,
    train_test_split,
)

__all__ = [
    "CIFAR10Dataset",
    "Corpus",
    "DataLoader",
    "Dataset",
    "Dictionary",
    "MNISTDataset",
    "NDArrayDataset",
    "RandomCrop",
    "RandomFlipHorizontal",
    "Transform",
    "batchify",
    "get_batch",
    "load_digits",
    "parse_mnist",
    "train_test_split",
]
