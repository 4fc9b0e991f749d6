"""The radius-graph, kNN and FPS CUDA kernels on the host simulator (cuda_ext/cudasim).

Their contract on a GPU (test_cuda_build.py, test_point_ops_cuda.py) is the cpu backend's
output exactly: same edges in the same order, same shifts, same FPS picks, ties included.
Here the same ``.cu`` kernels and launch code run on the simulator, with threads
scheduled in a random order, blocks on one or two OS threads, and a smaller shared-memory
limit where that reaches the kernels' global-memory fallbacks.
"""

from __future__ import annotations

import pytest
import torch
from helpers import batch_of, check_radius_graph_against_cpu, point_clouds, random_pbc_batch

from geo3d.ops import backend_status
from geo3d.ops.point_ops import fps, knn_graph

SIM_OK, SIM_WHY = backend_status()["cudasim"]
pytestmark = [pytest.mark.cudasim, pytest.mark.skipif(not SIM_OK, reason=SIM_WHY)]


@pytest.fixture(autouse=True)
def _fresh_simulator(sim):
    """Every test starts on the default simulated device (conftest's ``sim``)."""


def _same_as_cpu(pos, r, **kw):
    return check_radius_graph_against_cpu(pos, r, "cudasim", **kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("r", [0.7, 6.0])  # 6.0 is larger than every cell: many periodic images
@pytest.mark.parametrize("loop", [False, True])
def test_radius_graph_triclinic_mixed_pbc_batches(dtype, r, loop):
    sizes = [0, 13, 1, 0, 24, 7, 0]  # empty graphs first, in the middle and last
    pos, batch, cell, pbc = random_pbc_batch(seed=17, sizes=sizes, dtype=dtype)
    ei = _same_as_cpu(pos, r, batch=batch, cell=cell, pbc=pbc, loop=loop, num_graphs=len(sizes))
    assert ei.shape[1] > 0


def test_radius_graph_many_blocks_and_points_on_cell_faces(sim):
    # 600 points: 3 blocks of 256 threads, the last one partly idle; two graphs, so the
    # one-block-per-graph bounds kernel reduces over strided points.
    gen = torch.Generator().manual_seed(4)
    sizes = [350, 250]
    cell = torch.tensor([[[9.0, 0, 0], [1.0, 8.0, 0], [0.5, 0.5, 9.0]]] * 2, dtype=torch.float64)
    pos = torch.rand(600, 3, generator=gen, dtype=torch.float64) @ cell[0]
    pbc = torch.tensor([[True, True, True], [True, False, True]])
    for workers in (1, 2):
        sim.configure(workers=workers, seed=workers)
        _same_as_cpu(pos, 2.1, batch=batch_of(sizes), cell=cell, pbc=pbc, num_graphs=2)
    # Lattice points exactly on the faces (fractions 0 and 1, and just below 0): wrap corners, bin ties.
    c = torch.tensor([[4.0, 0.0, 0.0], [1.0, 4.0, 0.0], [0.5, 0.5, 4.0]], dtype=torch.float64)
    ticks = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0, -1e-17, -1e-9], dtype=torch.float64)
    _same_as_cpu(torch.cartesian_prod(ticks, ticks, ticks) @ c, 1.3, cell=c, pbc=[True, True, False])
    _same_as_cpu(torch.rand(90, 3, generator=gen) * 5, 1.5)  # no cell


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", [1, 8, 20, 40])  # register lists of 8 / 32 slots, the global-memory list
def test_knn_matches_cpu_exactly(dtype, k):
    # Batches with empty graphs, > one 256-point tile and > one 128-query block, lattice ties,
    # duplicates, float near-ties, extreme scales.
    for name, pos, sizes in point_clouds(dtype):
        for loop in (False, True):
            got = knn_graph(
                pos, k, batch=batch_of(sizes), loop=loop, num_graphs=len(sizes), backend="cudasim"
            )
            want = knn_graph(pos, k, batch=batch_of(sizes), loop=loop, num_graphs=len(sizes), backend="cpu")
            assert torch.equal(got, want), (name, loop)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fps_matches_cpu_in_shared_and_global_memory(sim, dtype):
    g = torch.Generator().manual_seed(2)
    sizes = [300, 0, 1, 57, 1700]
    pos = (torch.rand(sum(sizes), 3, generator=g) * 4).to(dtype)
    batch = batch_of(sizes)
    # 48 KiB opt-in: ~1,500 float64 points fit, so the 1,700-point graph keeps its distances
    # in global scratch and reads coordinates from global memory.
    for optin in (232448, 49152):
        sim.configure(smem_optin=optin)
        for ratio in (0.04, 1.0):
            for random_start in (False, True):
                kw = dict(ratio=ratio, random_start=random_start, num_graphs=len(sizes))
                got = fps(pos, batch, generator=torch.Generator().manual_seed(3), backend="cudasim", **kw)
                want = fps(pos, batch, generator=torch.Generator().manual_seed(3), backend="cpu", **kw)
                assert torch.equal(got, want), (optin, ratio, random_start)
    lattice = (
        torch.stack(torch.meshgrid(*[torch.arange(5.0)] * 3, indexing="ij"), -1).reshape(-1, 3).to(dtype)
    )
    assert torch.equal(
        fps(lattice, ratio=0.5, backend="cudasim"), fps(lattice, ratio=0.5, backend="cpu")
    )  # ties
    dup = torch.ones(30, 3, dtype=dtype)
    assert torch.equal(fps(dup, ratio=0.5, backend="cudasim"), fps(dup, ratio=0.5, backend="cpu"))
    assert fps(torch.empty(0, 3, dtype=dtype), backend="cudasim").shape == (0,)


def test_binding_checks_run_in_the_simulator():
    with pytest.raises(RuntimeError, match="'ptr' must be a CPU int64"):
        torch.ops.geo3d_cudasim.knn_graph(torch.rand(10, 3), torch.tensor([0.0, 10.0]), 3, False)
