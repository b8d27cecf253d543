"""Data-parallel training over mpiexec: 2 ranks, each with half of a batch of 64, end 10 jitted
steps with the same parameters (and optimizer state, and running statistics) as one process
training on the whole batch; the sampler's shards; a failing rank stops every rank."""

import subprocess
import time

import pytest

from .mpirun import run

TRAIN = """
import numpy as np
import needlec as nc
from needlec import distributed as dist

dist.init()
r, n = dist.rank(), dist.world_size()
OPT, BN = {opt!r}, {bn!r}


def model_and_opt():
    np.random.seed(0)
    layers = [nc.nn.Linear(10, 32), nc.nn.ReLU(), nc.nn.Linear(32, 32)]
    if BN:
        layers.append(nc.nn.BatchNorm1d(32))
    model = nc.nn.Sequential(*layers, nc.nn.ReLU(), nc.nn.Linear(32, 4))
    if OPT == "sgd":
        opt = nc.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    else:
        opt = nc.optim.Adam(model.parameters(), lr=0.01)
    return model, opt


def make_step(model, opt):
    loss_fn = nc.nn.SoftmaxLoss()

    @nc.jit
    def step(x, y):
        opt.reset_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return step


ref_model, ref_opt = model_and_opt()
ref_step = make_step(ref_model, ref_opt)  # one process, the whole batch
model, inner = model_and_opt()
if r == 1:  # a different start on purpose: broadcast_parameters makes them equal
    for p in model.parameters():
        p.data = p.data * 3.0
dist.broadcast_parameters(model)
if BN:
    dist.sync_batch_norm(model)
opt = dist.DistributedOptimizer(inner, bucket_mb=0.002)  # several buckets
assert len(opt.buckets()) == 0  # no gradients yet
step = make_step(model, opt)

rng = np.random.default_rng(1)
half = 64 // n
for i in range(10):
    x = rng.standard_normal((64, 10)).astype("float32")
    y = rng.integers(0, 4, 64).astype("float32")
    ref_loss = ref_step(x, y)
    loss = step(x[r * half : (r + 1) * half], y[r * half : (r + 1) * half])
assert len(opt.buckets()) > 2, opt.buckets()
text = step.lower(x[:half], y[:half]).as_text()
assert text.count("allreduce") >= 3, text

def close(a, b, what):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=2e-4, atol=2e-5, err_msg=what)

for (name, a), (_, b) in zip(sorted(model.state_dict().items()), sorted(ref_model.state_dict().items())):
    close(a, b, name)
for key, d in inner.state_dict()["state"].items():
    for i, t in d.items():
        close(t, ref_opt.state_dict()["state"][key][i], f"{{key}}[{{i}}]")
assert inner.state_dict()["numbers"] == ref_opt.state_dict()["numbers"]
open(f"ok.{{r}}", "w").close()
"""


@pytest.mark.parametrize(
    "opt,bn",
    [("sgd", False), ("adam", False), ("sgd", True)],
    ids=["momentum", "adam", "batchnorm"],
)
def test_two_ranks_train_as_one_process_with_the_whole_batch(opt, bn, tmp_path):
    run(2, TRAIN.format(opt=opt, bn=bn), tmp_path)
    assert all((tmp_path / f"ok.{k}").exists() for k in range(2))


SAMPLER = """
import numpy as np
from mpi4py import MPI
import needlec as nc
from needlec import distributed as dist

dist.init()
r, n = dist.rank(), dist.world_size()
data = nc.data.NDArrayDataset(np.arange(10.0).reshape(10, 1))
sampler = dist.DistributedSampler(data, shuffle=True, seed=3)
loader = nc.data.DataLoader(data, batch_size=2, sampler=sampler)
for epoch in range(2):
    sampler.set_epoch(epoch)
    mine = [int(v) for (x,) in loader for v in x.numpy().ravel()]
    shards = MPI.COMM_WORLD.allgather(mine)
    assert len({len(s) for s in shards}) == 1, shards  # the same number of steps
    everything = [v for s in shards for v in s]
    assert sorted(set(everything)) == list(range(10)), shards  # the shards cover the epoch
    assert len(everything) == -(-10 // n) * n  # padded by at most n - 1 repeats
    if epoch == 0:
        first = shards
assert shards != first  # a new permutation each epoch
open(f"ok.{r}", "w").close()
"""


@pytest.mark.parametrize("n", [2, 3])
def test_sampler_shards_are_disjoint_and_cover_the_epoch(n, tmp_path):
    run(n, SAMPLER, tmp_path)
    assert all((tmp_path / f"ok.{k}").exists() for k in range(n))


FAIL = """
import time
import numpy as np
import needlec as nc
from needlec import distributed as dist

dist.init()
f = nc.jit(lambda x: dist.all_reduce(x, "sum"))
f(np.ones(3, dtype="float32"))
if dist.rank() == 1:
    raise ValueError("bad batch on this rank")
for _ in range(1000):  # rank 0 waits for rank 1 in its next collective: never answered
    f(np.ones(3, dtype="float32"))
    time.sleep(0.01)
"""


def test_a_failing_rank_stops_every_rank_within_a_timeout(tmp_path):
    start = time.monotonic()
    try:
        proc = run(2, FAIL, tmp_path, timeout=120, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail("the ranks hung after one of them failed")
    assert proc.returncode != 0
    assert "rank 1 of 2 failed" in proc.stderr
    assert "ValueError: bad batch on this rank" in proc.stderr
    assert time.monotonic() - start < 120


DEMO = """
import needlec as nc
from needlec.examples.train import main

history = main(["--distributed", "--epochs", "2", "--batch-size", "64"])
assert history["test_acc"][-1] > 0.8, history
open(f"ok.{nc.distributed.rank()}", "w").close()
"""


def test_the_demo_trains_on_two_processes_and_rank_0_alone_prints(tmp_path):
    proc = run(2, DEMO, tmp_path)
    assert all((tmp_path / f"ok.{k}").exists() for k in range(2))
    assert proc.stdout.count("on 2 processes") == 2, proc.stdout  # the header and the timing
    assert proc.stdout.count("epoch  2/2") == 1, proc.stdout


MISMATCH = """
import numpy as np
import needlec as nc
from needlec import distributed as dist

dist.init()
r = dist.rank()
f = nc.jit(lambda x: dist.all_reduce(x * 2.0 + r, "sum"))  # a constant of its own: allowed
f(np.ones((4, 3), dtype="float32"))
try:
    f(np.ones((2 + r, 3), dtype="float32"))  # rank 1 has another shape: caught before running
except dist.DistributedError as e:
    message = str(e)
else:
    raise AssertionError("no error")
assert "rank 0: inputs f32[2,3]; all-reduces sum:f32[2,3]" in message, message
assert "rank 1: inputs f32[3,3]; all-reduces sum:f32[3,3]" in message, message
open(f"ok.{r}", "w").close()
"""


def test_ranks_with_different_shapes_all_raise_before_the_first_step(tmp_path):
    run(2, MISMATCH, tmp_path)
    assert all((tmp_path / f"ok.{k}").exists() for k in range(2))
