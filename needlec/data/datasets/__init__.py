"""needle's datasets: NDArray, MNIST, CIFAR-10, Penn Treebank, and scikit-learn's digits."""

from .cifar10_dataset import CIFAR10Dataset
from .digits import load_digits, train_test_split
from .mnist_dataset import MNISTDataset, parse_mnist
from .ndarray_dataset import NDArrayDataset
from .ptb_dataset import Corpus, Dictionary, batchify, get_batch
