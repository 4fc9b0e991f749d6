"""kNN graphs and farthest-point sampling: every backend against the brute-force oracle."""

from __future__ import annotations

import pytest
import torch
from helpers import KERNEL_BACKENDS_HERE

from geo3d.ops.hashing import keyed_uniform
from geo3d.ops.point_ops import fps, knn_graph

BACKENDS = ["reference", *KERNEL_BACKENDS_HERE]


def clouds():
    g = torch.Generator().manual_seed(0)
    yield "uniform", torch.rand(500, 3, generator=g) * 10
    yield "flat", torch.cat([torch.rand(300, 2, generator=g) * 5, torch.zeros(300, 1)], 1)
    yield "line", torch.cat([torch.rand(100, 1, generator=g), torch.zeros(100, 2)], 1) * 100
    yield (
        "clustered",
        torch.cat([torch.randn(200, 3, generator=g) * 0.01, torch.randn(200, 3, generator=g) * 50]),
    )
    yield (
        "lattice (ties)",
        torch.stack(torch.meshgrid(*[torch.arange(6.0)] * 3, indexing="ij"), -1).reshape(-1, 3),
    )


def sq_dist(pos, edge_index):
    return ((pos[edge_index[0]].double() - pos[edge_index[1]].double()) ** 2).sum(-1)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS_HERE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("loop", [False, True])
def test_knn_matches_brute_force(backend, dtype, loop):
    for name, pos in clouds():
        pos = pos.to(dtype)
        for k in (1, 8, 20):
            ref = knn_graph(pos, k, loop=loop, backend="reference")
            got = knn_graph(pos, k, loop=loop, backend=backend)
            assert got.shape == ref.shape, name
            assert torch.equal(got[1], ref[1]), name  # same centres, same counts, same order
            # Same distances in the same order; indices equal wherever distances are not tied.
            d_ref, d_got = sq_dist(pos, ref), sq_dist(pos, got)
            assert torch.allclose(d_got, d_ref, rtol=1e-12, atol=0), (name, k)
            if name != "lattice (ties)":
                assert torch.equal(got, ref), (name, k)


@pytest.mark.parametrize("backend", BACKENDS)
def test_knn_batches_small_and_empty_graphs(backend):
    g = torch.Generator().manual_seed(1)
    sizes = [5, 0, 1, 40, 3]
    pos = torch.rand(sum(sizes), 3, generator=g)
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    ei = knn_graph(pos, 4, batch=batch, backend=backend)
    assert torch.equal(batch[ei[0]], batch[ei[1]])  # never across graphs
    degree = torch.bincount(ei[1], minlength=len(pos))
    expected = torch.cat([torch.full((n,), min(4, n - 1)) for n in sizes if n])
    assert torch.equal(degree, expected)  # a 3-point graph gives 2 each; nothing truncated silently
    assert not (ei[0] == ei[1]).any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_knn_bad_input(backend):
    pos = torch.rand(10, 3)
    pos[4, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf values \\(first at point 4\\)"):
        knn_graph(pos, 3, backend=backend)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        knn_graph(torch.rand(10, 3), 0, backend=backend)
    with pytest.raises(ValueError, match="batch must be non-negative and sorted"):
        knn_graph(torch.rand(4, 3), 2, batch=torch.tensor([0, 1, 0, 1]), backend=backend)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS_HERE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fps_matches_brute_force(backend, dtype):
    g = torch.Generator().manual_seed(2)
    sizes = [300, 0, 1, 57, 1000]
    pos = (torch.rand(sum(sizes), 3, generator=g) * 4).to(dtype)
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    for ratio in (0.1, 0.5, 1.0):
        for random_start in (False, True):
            ref = fps(pos, batch, ratio, random_start, torch.Generator().manual_seed(3), backend="reference")
            got = fps(pos, batch, ratio, random_start, torch.Generator().manual_seed(3), backend=backend)
            assert torch.equal(got, ref), (ratio, random_start)
    counts = torch.bincount(batch[got], minlength=len(sizes))
    assert counts.tolist() == sizes  # ratio 1: every point once
    assert len(set(got.tolist())) == len(got)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS_HERE)
def test_fps_takes_counts_and_start_points(backend):
    g = torch.Generator().manual_seed(5)
    sizes = [40, 1, 25]
    pos = torch.rand(sum(sizes), 3, generator=g, dtype=torch.float64)
    batch = torch.repeat_interleave(torch.arange(3), torch.tensor(sizes))
    start = torch.tensor([17, 0, 24])
    got = fps(pos, batch, num=torch.tensor([5, 1, 3]), start=start, backend=backend)
    assert torch.equal(got, fps(pos, batch, num=torch.tensor([5, 1, 3]), start=start, backend="reference"))
    assert got[[0, 5, 6]].tolist() == [17, 40, 41 + 24]  # each graph starts where it was told
    # brute force: the second pick of graph 0 is the point farthest from its start
    assert int(got[1]) == int(((pos[:40] - pos[17]) ** 2).sum(1).argmax())
    assert len(fps(pos, batch, num=1, backend=backend)) == 3  # an int applies to every graph
    with pytest.raises(ValueError, match="num="):
        fps(pos, batch, num=2, backend=backend)  # graph 1 has one point
    with pytest.raises(ValueError, match="start"):
        fps(pos, batch, num=1, start=torch.tensor([40, 0, 0]), backend=backend)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS_HERE)
def test_fps_large_single_cloud_uses_threads_and_agrees(backend):
    # Above 2^18 points one cloud's updates are split over threads (lowest index on ties).
    pos = torch.rand(300_000, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    got = fps(pos, ratio=1e-4, backend=backend)
    ref = fps(pos, ratio=1e-4, backend="reference")
    assert torch.equal(got, ref)


def test_fps_spreads_points():
    # Two far clusters: the second pick must come from the other cluster.
    pos = torch.cat([torch.rand(50, 3) * 0.1, torch.rand(50, 3) * 0.1 + 10])
    idx = fps(pos, ratio=0.02)
    assert (idx[0] < 50) != (idx[1] < 50)
    with pytest.raises(ValueError, match="ratio must be in"):
        fps(pos, ratio=0.0)


def test_keyed_uniform_is_uniform_follows_its_keys_and_separates_salts():
    key = torch.arange(200_000, dtype=torch.long) * 7919 - 10**9  # negative keys too
    u = keyed_uniform(key, salt=3, columns=4)
    assert u.shape == (200_000, 4) and u.dtype == torch.float64
    assert bool(((u > 0) & (u <= 1)).all())
    counts = torch.histc(u.flatten(), bins=10, min=0, max=1) / u.numel()
    assert float((counts - 0.1).abs().max()) < 0.003  # 800k draws: +-0.0003 a bin is one sigma
    perm = torch.randperm(len(key), generator=torch.Generator().manual_seed(0))
    assert torch.equal(keyed_uniform(key[perm], 3, 4), u[perm])  # a row is a function of its key
    other = keyed_uniform(key, salt=4, columns=4)
    for a, b in [(u[:, 0], other[:, 0]), (u[:, 0], u[:, 1])]:  # salts and columns: uncorrelated
        assert abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1])) < 0.01
