"""needlec: needle (CMU's Deep Learning Systems library) as a compiler.

Write ordinary needle code; `jit` traces it into a graph IR, `grad` differentiates as a graph
transform, and eager mode runs every op at once.
"""

from . import autograd, backend_ndarray, data, distributed, init, nn, ops, optim
from .autograd import Tensor, TensorOp, TensorTuple, Value
from .backend_ndarray import (
    BackendDevice as Device,
)
from .backend_ndarray import (
    NDArray,
    all_devices,
    cpu,
    cpu_numpy,
    cuda,
    default_device,
)
from .frontend.trace import TracerError
from .init import ones, ones_like, zeros, zeros_like
from .ir import Graph, ShapeError
from .ir.callback import CallbackError
from .jit import StaleTraceError, jit, make_graph
from .ops import *  # noqa: F403
from .serialization import load, save
from .transforms import grad, value_and_grad, vjp

__version__ = "0.1.0"
