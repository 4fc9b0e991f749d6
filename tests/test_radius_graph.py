"""Radius graph: every backend against the brute-force oracle and ASE's neighbour list."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.neighborlist import neighbor_list
from helpers import KERNEL_BACKENDS_HERE, NATIVE_BACKENDS_HERE, min_height, random_cell

from geo3d.ops import canonical_order, radius_graph
from geo3d.ops.radius_graph import complete_cell

ALL_BACKENDS = ["reference", *KERNEL_BACKENDS_HERE]
PBC_CASES = [
    (True, True, True),
    (True, False, True),
    (False, False, True),
    (False, False, False),
    (True, True, False),
]


def test_native_backend_is_built():
    # The CPU build is part of every install on a machine with a compiler (CI included):
    # if it silently failed, every other test here would only exercise the oracle.
    assert "cpu" in NATIVE_BACKENDS_HERE


def _ase_edges(pos, cell, pbc, r):
    atoms = Atoms(numbers=np.ones(len(pos), dtype=int), positions=pos, cell=cell, pbc=pbc)
    i, j, s = neighbor_list("ijS", atoms, r)
    return canonical_order(torch.stack([torch.from_numpy(j), torch.from_numpy(i)]), torch.from_numpy(s))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("pbc", PBC_CASES)
def test_matches_ase_on_random_triclinic_cells(backend, pbc):
    rng = np.random.default_rng(hash((backend, pbc)) % 2**32)
    for trial in range(4):
        cell = random_cell(rng)
        n = int(rng.integers(1, 40 if backend == "reference" else 80))
        frac = rng.uniform(-0.2, 1.2, (n, 3))  # some points outside the cell
        pos = frac @ cell
        h = min_height(cell)
        for r in (0.3 * h, 1.1 * h, 3.0 * h):
            ours = canonical_order(
                *radius_graph(
                    torch.from_numpy(pos), r, cell=torch.from_numpy(cell), pbc=list(pbc), backend=backend
                )
            )
            ref = _ase_edges(pos, cell, pbc, r)
            msg = f"backend={backend} pbc={pbc} trial={trial} n={n} r={r:.3f}"
            assert torch.equal(ours[0], ref[0]), msg
            assert torch.equal(ours[1], ref[1]), msg


@pytest.mark.parametrize("backend", KERNEL_BACKENDS_HERE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_native_matches_reference_in_batches(backend, dtype):
    rng = np.random.default_rng(1)
    sizes = [0, 1, 57, 0, 2, 130, 1, 0]  # empty and single-point graphs, trailing empty one
    cells, pbcs, pos, batch = [], [], [], []
    for g, n in enumerate(sizes):
        cell = random_cell(rng, scale=5.0)
        pbc = rng.random(3) < 0.6
        cells.append(cell)
        pbcs.append(pbc)
        pos.append(rng.uniform(0, 1, (n, 3)) @ cell)
        batch += [g] * n
    pos_t = torch.from_numpy(np.concatenate(pos)).to(dtype)
    args = dict(
        batch=torch.tensor(batch),
        cell=torch.from_numpy(np.stack(cells)),
        pbc=torch.from_numpy(np.stack(pbcs)),
        num_graphs=len(sizes),
    )
    for r in (0.8, 2.5, 7.0):
        ours = radius_graph(pos_t, r, backend=backend, **args)
        ref = radius_graph(pos_t, r, backend="reference", **args)
        assert ours[0].shape[1] > 0
        # Edges are sorted by centre, and identical as sets per centre.
        assert bool((ours[0][1][1:] >= ours[0][1][:-1]).all())
        a, b = canonical_order(*ours), canonical_order(*ref)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), f"r={r}"
        # No edge crosses graphs.
        bt = args["batch"]
        assert torch.equal(bt[ours[0][0]], bt[ours[0][1]])


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_edge_vectors_follow_ase_convention(backend):
    rng = np.random.default_rng(2)
    cell = random_cell(rng)
    pos = rng.uniform(-1, 2, (30, 3)) @ cell
    edge_index, shifts = radius_graph(
        torch.from_numpy(pos), 4.0, cell=torch.from_numpy(cell), backend=backend
    )
    j, i = edge_index.numpy()
    vec = pos[j] - pos[i] + shifts.numpy() @ cell
    d = np.linalg.norm(vec, axis=1)
    assert d.max() < 4.0
    assert d.min() > 0.0


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_nonperiodic_brute_force_and_loop(backend):
    pos = torch.rand(200, 3, dtype=torch.float64) * 3
    r = 0.7
    d = torch.cdist(pos, pos)
    for loop in (False, True):
        edge_index, shifts = radius_graph(pos, r, loop=loop, backend=backend)
        mask = d < r
        if not loop:
            mask.fill_diagonal_(False)
        i, j = mask.nonzero(as_tuple=True)
        expected = canonical_order(torch.stack([j, i]), torch.zeros(len(i), 3, dtype=torch.long))
        got = canonical_order(edge_index, shifts)
        assert torch.equal(got[0], expected[0])
        assert not bool(shifts.any())


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_duplicate_points(backend):
    pos = torch.tensor([[0.0, 0.0, 0.0]] * 4 + [[0.5, 0.0, 0.0]], dtype=torch.float64)
    edge_index, _ = radius_graph(pos, 0.1, backend=backend)
    # 4 coincident points: 4 * 3 directed pairs at distance 0, the fifth point isolated.
    assert edge_index.shape[1] == 12
    edge_index, _ = radius_graph(pos, 0.1, loop=True, backend=backend)
    assert edge_index.shape[1] == 16 + 1


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_points_far_outside_the_cell_are_wrapped(backend):
    rng = np.random.default_rng(3)
    cell = random_cell(rng)
    pos = rng.uniform(0, 1, (25, 3)) @ cell
    far = pos + np.array([7, -13, 40]) @ cell
    a = radius_graph(torch.from_numpy(pos), 3.0, cell=torch.from_numpy(cell), backend=backend)
    b = radius_graph(torch.from_numpy(far), 3.0, cell=torch.from_numpy(cell), backend=backend)
    a, b = canonical_order(*a), canonical_order(*b)
    assert torch.equal(a[0], b[0])
    # Same set of vectors: shifts compensate the translation of every point by the same lattice vector.
    assert torch.equal(a[1], b[1])


def test_max_num_neighbors_raises_instead_of_truncating():
    pos = torch.rand(50, 3)
    with pytest.raises(ValueError, match="never drops edges"):
        radius_graph(pos, 10.0, max_num_neighbors=10)
    edge_index, _ = radius_graph(pos, 10.0, max_num_neighbors=49)
    assert edge_index.shape[1] == 50 * 49


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(pos=torch.tensor([[0.0, float("nan"), 0.0]]), r=1.0), "NaN or inf"),
        (dict(pos=torch.tensor([[0.0, float("inf"), 0.0]]), r=1.0), "NaN or inf"),
        (dict(pos=torch.zeros(3, 3), r=0.0), "positive"),
        (dict(pos=torch.zeros(3, 3), r=-1.0), "positive"),
        (dict(pos=torch.zeros(3, 3), r=float("nan")), "positive"),
        (dict(pos=torch.zeros(3, 2), r=1.0), r"\[N, 3\]"),
        (dict(pos=torch.zeros(3, 3, dtype=torch.long), r=1.0), "float32 or float64"),
        (dict(pos=torch.zeros(3, 3), r=1.0, batch=torch.tensor([0, 1])), "batch must be"),
        (dict(pos=torch.zeros(3, 3), r=1.0, batch=torch.tensor([1, 0, 0])), "sorted"),
        (dict(pos=torch.zeros(3, 3), r=1.0, pbc=True), "no cell"),
        (dict(pos=torch.zeros(3, 3), r=1.0, cell=torch.zeros(3, 3)), "singular"),
        (
            dict(pos=torch.zeros(3, 3), r=1.0, cell=torch.tensor([[1.0, 0, 0], [2.0, 0, 0], [0, 0, 1.0]])),
            "singular",
        ),
        (dict(pos=torch.zeros(3, 3), r=1.0, cell=torch.eye(2)), r"\[3, 3\]"),
        (dict(pos=torch.zeros(3, 3), r=1.0, cell=torch.eye(3), pbc=[True, False]), "pbc must be"),
        (dict(pos=torch.zeros(3, 3), r=1.0, backend="gpu"), "unknown backend"),
    ],
)
def test_bad_input_is_a_clear_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        radius_graph(**kwargs)


def test_zero_cell_vector_on_a_nonperiodic_axis_is_fine():
    # A slab as ASE often stores it: no third cell vector, pbc only in-plane.
    cell = torch.tensor([[3.0, 0, 0], [0, 3.0, 0], [0, 0, 0]], dtype=torch.float64)
    pos = torch.rand(20, 3, dtype=torch.float64) * 3
    pbc = [True, True, False]
    got = canonical_order(*radius_graph(pos, 2.0, cell=cell, pbc=pbc))
    ref = _ase_edges(pos.numpy(), cell.numpy(), pbc, 2.0)
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
    assert not bool(got[1][:, 2].any())


def test_complete_cell_is_orthonormal_on_free_axes():
    cell = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    full = complete_cell(cell, torch.tensor([True, False, False]))
    assert torch.equal(full[0], cell[0])
    free = full[1:]
    assert torch.allclose(free @ free.T, torch.eye(2, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(free @ cell[0], torch.zeros(2, dtype=torch.float64), atol=1e-12)


def test_empty_input():
    edge_index, shifts = radius_graph(torch.zeros(0, 3), 1.0)
    assert edge_index.shape == (2, 0) and shifts.shape == (0, 3)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS_HERE)
def test_env_var_forces_backend(backend, monkeypatch):
    monkeypatch.setenv("GEO3D_RADIUS_GRAPH_BACKEND", "nonsense")
    with pytest.raises(ValueError, match=r"GEO3D_RADIUS_GRAPH_BACKEND"):
        radius_graph(torch.zeros(2, 3), 1.0)
    monkeypatch.setenv("GEO3D_RADIUS_GRAPH_BACKEND", "reference")
    assert radius_graph(torch.zeros(2, 3), 1.0)[0].shape == (2, 2)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS_HERE)
def test_op_passes_opcheck_and_compiles(backend):
    pos = torch.rand(40, 3, dtype=torch.float64) * 4
    ptr = torch.tensor([0, 15, 40])
    cell = torch.stack([torch.eye(3, dtype=torch.float64) * 4] * 2)
    pbc = torch.tensor([[True, True, True], [False, True, False]])
    args = (pos, ptr, cell, pbc, 1.5, False, 2)
    torch.library.opcheck(torch.ops.geo3d.radius_graph.default, args)

    def count(p):
        edge_index, shifts = torch.ops.geo3d.radius_graph(p, ptr, cell, pbc, 1.5, False, 2)
        return edge_index.shape[0] * 0 + shifts.abs().sum()

    compiled = torch.compile(count, fullgraph=True, backend="eager")
    assert torch.equal(compiled(pos), count(pos))
