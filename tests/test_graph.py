"""Edge featurisation: gradients in pos and cell, radial basis, cutoff envelope, spherical harmonics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ase.build import bulk
from e3nn import o3
from helpers import random_cell
from torch_geometric.data import Batch

from geo3d.data import atoms_to_data
from geo3d.graph import (
    BesselBasis,
    EdgeFeatures,
    PolynomialCutoff,
    SphericalHarmonics,
    edge_lengths,
    edge_vectors,
    with_radius_graph,
)
from geo3d.ops import radius_graph


def _periodic_graph(n=12, r=3.0):
    rng = np.random.default_rng(0)
    cell = torch.from_numpy(random_cell(rng, scale=4.0))
    pos = torch.from_numpy(rng.uniform(0, 1, (n, 3))) @ cell
    edge_index, shifts = radius_graph(pos, r, cell=cell)
    return pos, cell, edge_index, shifts


def test_edge_lengths_gradcheck_in_pos_and_cell():
    pos, cell, edge_index, shifts = _periodic_graph()
    assert shifts.abs().sum() > 0  # the check must involve periodic images
    pos.requires_grad_(True)
    cell.requires_grad_(True)

    def lengths(p, c):
        return edge_lengths(edge_vectors(p, edge_index, shifts, c))

    assert torch.autograd.gradcheck(lengths, (pos, cell))
    assert torch.autograd.gradgradcheck(lengths, (pos, cell))


def test_batched_cells_pick_each_edges_own_cell():
    a = atoms_to_data(bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2))
    b = atoms_to_data(bulk("Al", "fcc", a=4.05, cubic=True))
    batch = with_radius_graph(Batch.from_data_list([a, b]), 3.0)
    vec = edge_vectors(batch.pos, batch.edge_index, batch.shifts, batch.cell, batch.batch)
    d = edge_lengths(vec)
    in_cu = batch.batch[batch.edge_index[1]] == 0
    assert torch.allclose(d[in_cu], torch.full_like(d[in_cu], 3.6 / math.sqrt(2)))
    assert torch.allclose(d[~in_cu], torch.full_like(d[~in_cu], 4.05 / math.sqrt(2)))
    assert int(in_cu.sum()) == 32 * 12 and int((~in_cu).sum()) == 4 * 12


def test_bessel_basis_matches_formula():
    basis = BesselBasis(r_max=5.0, num_basis=6).double()
    r = torch.linspace(0.1, 5.0, 50, dtype=torch.float64)
    n = torch.arange(1, 7, dtype=torch.float64)
    expected = math.sqrt(2 / 5.0) * torch.sin(n * math.pi * r[:, None] / 5.0) / r[:, None]
    assert torch.allclose(basis(r), expected)


def test_polynomial_cutoff_is_smooth_at_r_max():
    cut = PolynomialCutoff(r_max=4.0, p=6)
    r = torch.tensor([4.0 - 1e-6, 4.0, 4.5], dtype=torch.float64, requires_grad=True)
    f = cut(r)
    (g,) = torch.autograd.grad(f.sum(), r, create_graph=True)
    (g2,) = torch.autograd.grad(g.sum(), r)
    assert abs(float(f[0])) < 1e-12 and float(f[1]) == 0.0 and float(f[2]) == 0.0
    assert abs(float(g[0])) < 1e-8 and abs(float(g2[0])) < 1e-3
    assert float(cut(torch.tensor(0.0, dtype=torch.float64))) == 1.0
    # Monotone decreasing on [0, r_max].
    vals = cut(torch.linspace(0, 4, 200, dtype=torch.float64))
    assert bool((vals[1:] <= vals[:-1] + 1e-15).all())


def test_spherical_harmonics_are_e3nns_and_equivariant():
    sh = SphericalHarmonics(lmax=3)
    vec = torch.randn(64, 3, dtype=torch.float64)
    expected = o3.spherical_harmonics(
        o3.Irreps.spherical_harmonics(3), vec, normalize=True, normalization="component"
    )
    assert torch.allclose(sh(vec), expected)
    rot = o3.rand_matrix(dtype=torch.float64)
    d = sh.irreps_out.D_from_matrix(rot)
    # e3nn's D_from_matrix goes through Euler angles and is good to ~1e-6 even in float64.
    assert torch.allclose(sh(vec @ rot.T), sh(vec) @ d.T, atol=1e-5)
    # Reflection: Y^l picks up (-1)^l.
    parity = sh.irreps_out.D_from_matrix(-torch.eye(3, dtype=torch.float64))
    assert torch.allclose(sh(-vec), sh(vec) @ parity.T, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_edge_features_invariance_under_rotation_and_translation(dtype):
    pos, cell, edge_index, shifts = _periodic_graph(n=20)
    pos, cell = pos.to(dtype), cell.to(dtype)
    feats = EdgeFeatures(r_max=3.0, lmax=2).to(dtype)
    vec, length, radial, sh = feats(pos, edge_index, shifts, cell)
    assert radial.shape == (edge_index.shape[1], 8) and sh.shape == (edge_index.shape[1], 9)
    rot = o3.rand_matrix(dtype=dtype)
    t = torch.randn(3, dtype=dtype)
    vec2, length2, radial2, sh2 = feats(pos @ rot.T + t, edge_index, shifts, cell @ rot.T)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    assert torch.allclose(length2, length, atol=tol)
    assert torch.allclose(radial2, radial, atol=tol)
    assert torch.allclose(vec2, vec @ rot.T, atol=tol)
    d = SphericalHarmonics(2).irreps_out.D_from_matrix(rot.double()).to(dtype)
    assert torch.allclose(sh2, sh @ d.T, atol=max(tol, 1e-5))


def _pairs(edge_index, shifts):
    return {
        (int(j), int(i), *map(int, s))
        for (j, i), s in zip(edge_index.T.tolist(), shifts.tolist(), strict=True)
    }


def test_neighbor_list_keeps_its_graph_within_half_the_skin():
    from geo3d.graph import NeighborList

    data = atoms_to_data(bulk("Cu", "fcc", a=3.6, cubic=True).repeat((3, 3, 3)), dtype=torch.float64)
    cell, pbc = data.cell[0], data.pbc[0]
    nl = NeighborList(4.0, skin=1.0)
    first = nl(data.pos, cell, pbc)
    assert nl.builds == 1 and _pairs(*first) == _pairs(*radius_graph(data.pos, 5.0, cell=cell, pbc=pbc))
    g = torch.Generator().manual_seed(0)
    moved = data.pos + 0.2 * torch.nn.functional.normalize(
        torch.randn(data.pos.shape, generator=g, dtype=torch.float64)
    )
    kept = nl(moved, cell, pbc)  # every atom moved 0.2 < skin / 2: same list, and it still holds
    assert nl.builds == 1 and kept[0] is first[0]
    within = _pairs(*radius_graph(moved, 4.0, cell=cell, pbc=pbc))
    assert within <= _pairs(*kept)  # no pair inside the cutoff is missing (brute-force radius graph)
    nl(moved + 0.35, cell, pbc)  # a rigid shift of 0.55 in all > skin / 2 -> rebuilt
    assert nl.builds == 2
    nl(moved + 0.35, cell * 1.01, pbc)  # another cell -> rebuilt
    assert nl.builds == 3
    exact = NeighborList(4.0)  # no skin: any move rebuilds
    exact(data.pos, cell, pbc), exact(data.pos, cell, pbc), exact(moved, cell, pbc)
    assert exact.builds == 2
    with pytest.raises(ValueError, match="skin"):
        NeighborList(4.0, skin=-1.0)


def test_a_model_refuses_a_graph_built_short_of_its_cutoff():
    from geo3d.graph import NeighborList, with_radius_graph
    from geo3d.models.potential import InteratomicPotential

    net = InteratomicPotential(
        {"elements": [29], "r_max": 4.0, "channels": 8, "num_layers": 1, "radial_hidden": 8}
    )
    net = net.double()
    data = atoms_to_data(bulk("Cu", "fcc", a=3.6, cubic=True), dtype=torch.float64)
    with pytest.raises(ValueError, match=r"built at 3 Å but the model's cutoff is 4 Å"):
        net(with_radius_graph(data.clone(), 3.0))
    full = net(NeighborList(4.0, skin=0.5).attach(data.clone()))["energy"]
    exact = net(with_radius_graph(data.clone(), 4.0))["energy"]
    assert torch.allclose(full, exact, atol=1e-10)  # edges in the skin add nothing
    batch = Batch.from_data_list([with_radius_graph(data.clone(), 4.0), with_radius_graph(data.clone(), 3.5)])
    with pytest.raises(ValueError, match=r"3\.5 Å"):
        net(batch)
