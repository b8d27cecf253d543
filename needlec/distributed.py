"""Data-parallel training over MPI (mpi4py): one process per core or machine, launched with
`mpiexec -n N python train.py`.

Each process holds the whole model, reads its own shard of every batch (`DistributedSampler`),
and averages gradients with the others before each update (`DistributedOptimizer`). The
average is an `ALLREDUCE` node of the graph, so a jitted training step holds its own
communication: `step.lower(x, y).as_text()` shows where it happens, and the compiled step calls
the MPI library itself, without returning to Python.

>>> import needlec as nc
>>> nc.distributed.world_size(), nc.distributed.rank()  # before init(), or without mpiexec
(1, 0)
>>> nc.distributed.all_reduce(nc.Tensor([1.0, 2.0]), "mean").numpy().tolist()
[1.0, 2.0]

Errors: once `init()` has run, an exception that reaches the top of any rank prints the rank
and the error and aborts every rank (`MPI_Abort`), so the others stop instead of waiting in a
collective forever. Before its first run, a jitted step holding an all-reduce compares a hash
of each rank's compiled program across ranks and raises on every rank if they differ
(mismatched shapes or dtypes would otherwise reduce buffers of different sizes).
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
from collections.abc import Iterable, Iterator

import numpy as np

from .autograd import Tensor
from .ir import Op, collective
from .nn import BatchNorm1d, BatchNorm2d
from .serialization import copy_into

_LAUNCHER_VARIABLES = (
    "PMI_RANK",
    "PMI_SIZE",
    "OMPI_COMM_WORLD_SIZE",
    "PMIX_RANK",
    "HYDI_CONTROL_FD",
)


class DistributedError(RuntimeError):
    """Ranks disagree (different programs, shapes or dtypes), or MPI is missing where needed."""


def init() -> None:
    """Join the MPI world mpiexec started (a second call does nothing). Without mpi4py and
    without mpiexec, this process is a world of one and everything still works."""
    if collective.comm() is not None:
        return
    try:
        from mpi4py import MPI
    except ImportError:
        if any(v in os.environ for v in _LAUNCHER_VARIABLES):
            raise DistributedError(
                "distributed.init: started by mpiexec, but mpi4py is not installed "
                '(pip install -e ".[distributed]")'
            ) from None
        return
    if collective.compiled_alone() and MPI.COMM_WORLD.Get_size() > 1:
        raise DistributedError(
            "distributed.init: a jitted function with an all-reduce was compiled before init() "
            "(for one process: it would not communicate); call init() first"
        )
    comm = MPI.COMM_WORLD.Dup()  # needlec's own messages never meet the user's
    comm.Set_errhandler(MPI.ERRORS_ARE_FATAL)  # an MPI failure ends every rank, never hangs
    collective.set_comm(comm)
    if comm.Get_size() > 1:
        _abort_on_error(comm)


def _abort_on_error(comm) -> None:
    """An exception that reaches the top of this rank prints it, names the rank and aborts all
    ranks: the others would otherwise wait in their next collective forever."""
    previous = sys.excepthook

    def hook(kind, value, tb) -> None:
        sys.stderr.write(
            f"needlec.distributed: rank {comm.Get_rank()} of {comm.Get_size()} failed\n"
        )
        previous(kind, value, tb)
        sys.stderr.flush()
        comm.Abort(1)

    sys.excepthook = hook


def rank() -> int:
    """This process's rank (0 without mpiexec)."""
    return collective.rank()


def world_size() -> int:
    """The number of processes (1 without mpiexec)."""
    return collective.world_size()


def barrier() -> None:
    """Wait until every rank gets here."""
    comm = collective.comm()
    if comm is not None:
        comm.Barrier()


def all_reduce(t: Tensor, op: str = "sum") -> Tensor:
    """The elementwise "sum", "mean" or "max" of `t` over every rank, on every rank; eagerly
    or inside `jit` (an ALLREDUCE node), differentiable (the gradient is an all-reduce of the
    cotangent). A mean of integers is float, as `t / n` is.

    >>> all_reduce(Tensor([3.0]), "max").numpy().tolist()
    [3.0]
    """
    t = t if isinstance(t, Tensor) else Tensor(t)
    if op not in ("sum", "mean", "max"):
        raise ValueError(f"all_reduce: op must be 'sum', 'mean' or 'max', got {op!r}")
    out = t.all_reduce("max" if op == "max" else "sum")
    return out / world_size() if op == "mean" else out


def reduce_together(tensors: list[Tensor], op: str = "sum") -> list[Tensor]:
    """`all_reduce` of each tensor (all of one dtype), in one call: one ALLREDUCE node over
    their elements end to end, sliced apart again."""
    if len(tensors) == 1:
        return [tensors[0].all_reduce(op)]
    flat = tensors[0]._apply(Op.ALLREDUCE, tuple(tensors), op)
    out, at = [], 0
    for t in tensors:
        size = math.prod(t.shape)
        out.append(flat.slice(((at, at + size, 1),)).reshape(t.shape))
        at += size
    return out


def _bcast_into(tensors: Iterable[tuple[str, Tensor]], root: int, what: str) -> None:
    comm = collective.comm()
    if comm is None or comm.Get_size() == 1:
        return
    for name, t in tensors:
        arr = np.ascontiguousarray(t.numpy()).copy()
        comm.Bcast(arr.view(np.uint8), root=root)
        copy_into(t, arr, f"{what}: {name}")


def broadcast_parameters(module, root: int = 0) -> None:
    """Give every rank `root`'s parameters and buffers (BatchNorm's running statistics): the
    replicas start equal. Call it once, after building the model and before training."""
    state = module.state_dict()
    _bcast_into(sorted(state.items()), root, "broadcast_parameters")


def broadcast_optimizer_state(opt, root: int = 0) -> None:
    """Give every rank `root`'s optimizer state (momentum, Adam's moments, its step count and
    hyperparameters): after loading a checkpoint on one rank, for example."""
    opt = getattr(opt, "optimizer", opt)
    comm = collective.comm()
    if comm is None or comm.Get_size() == 1:
        return
    state = opt.state_dict()
    numbers = comm.bcast(state["numbers"], root=root)
    for k, v in numbers.items():
        setattr(opt, k, v)
    tensors = [(f"{k}[{i}]", t) for k, d in sorted(state["state"].items()) for i, t in d.items()]
    _bcast_into(tensors, root, "broadcast_optimizer_state")


class DistributedOptimizer:
    """Wraps an optimizer: `step()` first averages every parameter's gradient over the ranks,
    then runs the wrapped optimizer's step. Everything else (`reset_grad`, `lr`, `state_dict`)
    is the wrapped optimizer's.

    Gradients travel in buckets of about `bucket_mb` megabytes (several parameters per
    all-reduce: one call's latency spread over many small tensors), in the order the backward
    produces them (the last layer's first). Inside `jit` each bucket is one ALLREDUCE node
    that depends only on its own parameters' gradients.

    >>> import needlec as nc
    >>> w = nc.Tensor([1.0, 2.0])
    >>> opt = DistributedOptimizer(nc.optim.SGD([w], lr=0.5))
    >>> (w * w).sum().backward(); opt.step()
    >>> w.numpy().tolist()
    [0.0, 0.0]
    """

    def __init__(self, optimizer, bucket_mb: float = 4.0) -> None:
        if bucket_mb <= 0:
            raise ValueError(f"DistributedOptimizer: bucket_mb must be positive, got {bucket_mb}")
        self.__dict__["optimizer"] = optimizer
        self.__dict__["bucket_mb"] = bucket_mb

    def __getattr__(self, name: str):
        inner = self.__dict__.get("optimizer")
        if inner is None:  # not set up yet (a copy being made): no attribute of its own
            raise AttributeError(name)
        return getattr(inner, name)

    def __setattr__(self, name: str, value) -> None:
        if name in ("optimizer", "bucket_mb"):
            self.__dict__[name] = value
        else:
            setattr(self.optimizer, name, value)

    def buckets(self) -> list[list[Tensor]]:
        """The parameters with a gradient, grouped as they are reduced: last parameter first,
        one dtype per bucket, each at most `bucket_mb` (a larger tensor alone)."""
        limit = self.bucket_mb * 2**20
        out: list[list[Tensor]] = []
        open_: dict[str, tuple[list[Tensor], list[int]]] = {}
        for p in reversed(list(self.optimizer.params)):
            if p.grad is None:
                continue
            nbytes = math.prod(p.shape) * np.dtype(p.dtype).itemsize
            bucket, size = open_.get(p.dtype, (None, [0]))
            if bucket is None or size[0] + nbytes > limit:
                bucket, size = [], [0]
                open_[p.dtype] = (bucket, size)
                out.append(bucket)
            bucket.append(p)
            size[0] += nbytes
        return out

    def average_gradients(self) -> None:
        """Replace every parameter's `.grad` by its mean over the ranks."""
        n = world_size()
        for bucket in self.buckets():
            grads = [p.grad.detach() for p in bucket]
            summed = reduce_together(grads, "sum")
            for p, piece in zip(bucket, summed, strict=True):
                p.grad = piece / n if n > 1 else piece

    def step(self) -> None:
        """Average the gradients over the ranks, then update."""
        self.average_gradients()
        self.optimizer.step()

    def reset_grad(self) -> None:
        self.optimizer.reset_grad()

    def zero_grad(self) -> None:
        self.optimizer.reset_grad()


class SyncBatchNorm1d(BatchNorm1d):
    """BatchNorm1d whose batch statistics are over every rank's rows (two all-reduces per
    layer): the replicas normalize as one process holding the whole global batch would, and
    their running statistics stay equal. A plain BatchNorm1d keeps its statistics per rank, as
    PyTorch's DistributedDataParallel does. `sync_batch_norm(model)` converts a model's."""

    def _statistics(self, x: Tensor) -> tuple[Tensor, Tensor]:
        n = x.shape[0] * world_size()
        mean = all_reduce(x.sum((0,)), "sum") / n
        centered = x - mean.reshape((1, x.shape[1])).broadcast_to(x.shape)
        var = all_reduce((centered**2).sum((0,)), "sum") / n
        return mean, var


class SyncBatchNorm2d(SyncBatchNorm1d, BatchNorm2d):
    """BatchNorm2d with statistics over every rank's images (see `SyncBatchNorm1d`)."""


def sync_batch_norm(module):
    """Make every BatchNorm1d and BatchNorm2d in `module` synchronized across ranks (in place:
    the same parameters and running statistics); returns `module`."""
    seen, stack = set(), [module]
    while stack:
        m = stack.pop()
        if id(m) in seen:
            continue
        seen.add(id(m))
        if type(m) is BatchNorm2d:  # same attributes, statistics over all ranks
            m.__class__ = SyncBatchNorm2d
        elif type(m) is BatchNorm1d:
            m.__class__ = SyncBatchNorm1d
        stack.extend(m._children())
    return module


class DistributedSampler:
    """Which items of `dataset` this rank reads in each epoch: a shard of the epoch's order.

    The order is a permutation drawn from `seed` and the epoch (the same on every rank; call
    `set_epoch(e)` at the start of each epoch for a fresh one), or the dataset's order without
    `shuffle`. It is padded with its own first items to a multiple of the world size, so every
    rank reads the same number of items (and runs the same number of steps); rank r takes items
    r, r + n, r + 2n, ... of it. Pass it to `data.DataLoader(..., sampler=...)`.

    >>> s = DistributedSampler(range(5), num_replicas=2, rank=1, shuffle=False)
    >>> list(s)
    [1, 3, 0]
    """

    def __init__(
        self,
        dataset,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
    ) -> None:
        self.n = len(dataset)
        self.num_replicas = world_size() if num_replicas is None else num_replicas
        self.rank = collective.rank() if rank is None else rank
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(
                f"DistributedSampler: rank {self.rank} is not in [0, {self.num_replicas})"
            )
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0
        self.num_samples = -(-self.n // self.num_replicas)

    def set_epoch(self, epoch: int) -> None:
        """Use the permutation of this epoch from now on."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            order = np.random.default_rng((self.seed, self.epoch)).permutation(self.n)
        else:
            order = np.arange(self.n)
        total = self.num_samples * self.num_replicas
        if self.n and total > self.n:
            order = np.concatenate([order, np.resize(order, total - self.n)])
        return iter(order[self.rank : total : self.num_replicas].tolist())


def communication(graph) -> str:
    """What a graph sends, in order: the type of each input and of each all-reduce (a rank may
    compute other things, such as constants of its own, differently)."""
    from .ir.ops import fmt_type

    inputs = " ".join(fmt_type(n.dtype, n.shape) for n in graph.inputs)
    reduces = " ".join(
        f"{n.arg}:{fmt_type(n.dtype, n.shape)}" for n in graph.nodes if n.op is Op.ALLREDUCE
    )
    return f"inputs {inputs}; all-reduces {reduces}"


def check_same_program(graph, where: str) -> None:
    """Raise on every rank if the ranks' programs for `where` would communicate differently
    (different input shapes or dtypes, different all-reduces): a hash of each rank's compiled
    graph's communication is compared before its first run."""
    comm = collective.comm()
    if comm is None or comm.Get_size() == 1:
        return
    text = communication(graph)
    mine = hashlib.sha256(text.encode()).hexdigest()[:16]
    hashes = comm.allgather(mine)
    if len(set(hashes)) > 1:
        texts = comm.allgather(text)
        ranks = "\n".join(f"  rank {r}: {t}" for r, t in enumerate(texts))
        raise DistributedError(
            f"{where}: the ranks compiled programs that communicate differently; every rank "
            f"must call it with the same shapes and dtypes:\n{ranks}"
        )


__all__ = [
    "DistributedError",
    "DistributedOptimizer",
    "DistributedSampler",
    "SyncBatchNorm1d",
    "SyncBatchNorm2d",
    "all_reduce",
    "barrier",
    "broadcast_optimizer_state",
    "broadcast_parameters",
    "init",
    "sync_batch_norm",
    "rank",
    "world_size",
]
