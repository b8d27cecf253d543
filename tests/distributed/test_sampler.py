"""DistributedSampler and DataLoader(sampler=...) in one process, ranks given explicitly."""

import numpy as np
import pytest

import needlec as nc
from needlec.distributed import DistributedOptimizer, DistributedSampler


@pytest.mark.parametrize("n_items,ranks", [(10, 2), (10, 3), (7, 4), (1, 3), (12, 4)])
def test_shards_are_equal_in_size_and_cover_the_epoch(n_items, ranks):
    data = range(n_items)
    for epoch in range(3):
        shards = []
        for r in range(ranks):
            s = DistributedSampler(data, num_replicas=ranks, rank=r, shuffle=True, seed=5)
            s.set_epoch(epoch)
            shards.append(list(s))
            assert len(shards[-1]) == len(s)
        assert len({len(s) for s in shards}) == 1
        flat = [i for s in shards for i in s]
        assert sorted(set(flat)) == list(range(n_items))
        assert len(flat) - n_items < ranks  # padding: fewer repeats than ranks
        if n_items == len(flat):  # no padding: disjoint
            assert len(set(flat)) == n_items


def test_epochs_and_seeds_draw_new_orders_the_same_on_every_rank():
    a = DistributedSampler(range(50), num_replicas=2, rank=0, seed=1)
    b = DistributedSampler(range(50), num_replicas=2, rank=0, seed=1)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    assert list(DistributedSampler(range(50), num_replicas=2, rank=0, seed=2)) != first


def test_data_loader_reads_the_sampler_order():
    data = nc.data.NDArrayDataset(np.arange(10.0))
    sampler = DistributedSampler(data, num_replicas=3, rank=1, shuffle=False)
    loader = nc.data.DataLoader(data, batch_size=2, sampler=sampler)
    assert len(loader) == 2
    assert [x.numpy().tolist() for (x,) in loader] == [[1.0, 4.0], [7.0, 0.0]]
    with pytest.raises(ValueError, match="shuffle"):
        nc.data.DataLoader(data, batch_size=2, shuffle=True, sampler=sampler)
    with pytest.raises(ValueError, match="rank 3"):
        DistributedSampler(data, num_replicas=3, rank=3)


def test_one_process_optimizer_wrapper_is_the_optimizer():
    w1, w2 = nc.Tensor([1.0, 2.0]), nc.Tensor([1.0, 2.0])
    opt1 = nc.optim.SGD([w1], lr=0.5, momentum=0.9)
    opt2 = DistributedOptimizer(nc.optim.SGD([w2], lr=0.5, momentum=0.9), bucket_mb=1)
    opt2.lr = 0.25  # the wrapped optimizer's hyperparameters
    opt1.lr = 0.25
    for _ in range(3):
        for w, opt in ((w1, opt1), (w2, opt2)):
            opt.reset_grad()
            (w * w * w).sum().backward()
            opt.step()
    np.testing.assert_array_equal(w1.numpy(), w2.numpy())
    assert opt2.optimizer.lr == 0.25
