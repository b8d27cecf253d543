"""needle's applications, from its homeworks: the models and the loops that train them.

- `mlp_resnet`: `ResidualBlock`, `MLPResNet`, `epoch`, `train_mnist` (homework 2).
- `models`: `ResNet9` for CIFAR-10, `LanguageModel` (RNN, LSTM or Transformer) for Penn
  Treebank (homework 4).
- `simple_ml`: `parse_mnist`, `softmax_loss`, `nn_epoch` (homework 2) and the CIFAR-10 and PTB
  loops `epoch_general_*`, `train_*`, `evaluate_*` (homework 4).

Every epoch function takes `jit=True` to run its step under `needlec.jit`, and `progress` to
show (or hide) a tqdm bar.
"""

from . import mlp_resnet, models, simple_ml
from .mlp_resnet import MLPResNet, ResidualBlock, epoch, train_mnist
from .models import LanguageModel, ResNet9
