"""The potentials' training domain (extrapolation signal) and the calculator's refusals of bad input."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, fcc111
from ase.cluster import Icosahedron

from geo3d.calculators import ExtrapolationWarning, Geo3DCalculator
from geo3d.checkpoint import CheckpointError
from geo3d.data.atomistic import read_structures
from geo3d.models.potential_domain import THRESHOLD, ExtrapolationError, farthest_points, fit_domain


def _quiet_calc(**kwargs) -> Geo3DCalculator:
    return Geo3DCalculator("cu-emt", **kwargs)


def _extrapolation(calc, atoms: Atoms) -> float:
    atoms = atoms.copy()
    atoms.calc = calc
    atoms.get_potential_energy()
    assert calc.results["extrapolations"].shape == (len(atoms),)
    return calc.results["extrapolation"]


def test_in_domain_structures_stay_quiet():
    calc = _quiet_calc()
    cu = bulk("Cu", "fcc", a=3.61, cubic=True)
    vacancy = cu.repeat(3)
    del vacancy[0]
    rng = np.random.default_rng(0)
    rattled = cu.repeat(2)
    rattled.positions += rng.normal(0, 0.05, rattled.positions.shape)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ExtrapolationWarning)
        for atoms in [vacancy, rattled, fcc111("Cu", (3, 3, 4), vacuum=10.0, a=3.61)]:
            assert _extrapolation(calc, atoms) < THRESHOLD
        for atoms in read_structures("datasets/cu_emt/test.xyz")[:6]:
            assert _extrapolation(calc, atoms) < THRESHOLD


def test_cluster_dimer_and_compression_are_flagged_once_and_strict_raises():
    cu13 = Icosahedron("Cu", 2, latticeconstant=3.61)
    cu13.center(vacuum=8.0)
    dimer = Atoms("Cu2", positions=[[0, 0, 0], [2.22, 0, 0]])
    strained = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(3)
    strained.set_cell(strained.cell * 0.9, scale_atoms=True)
    calc = _quiet_calc()
    with pytest.warns(ExtrapolationWarning, match="outside the training domain") as record:
        values = [_extrapolation(calc, a) for a in (cu13, dimer, strained)]
    assert all(v > THRESHOLD for v in values), values
    assert (
        len([w for w in record if issubclass(w.category, ExtrapolationWarning)]) == 1
    )  # once per calculator
    assert "coordination" in str(record[0].message) and "atom" in str(record[0].message)
    strict = _quiet_calc(strict=True)
    a = dimer.copy()
    a.calc = strict
    with pytest.raises(ExtrapolationError, match="Cu"):
        a.get_potential_energy()


def test_domain_travels_with_the_checkpoint_and_fits_the_training_set():
    calc = _quiet_calc()
    domain = calc.net.config["domain"]
    assert len(domain["feature_representatives"]) == len(calc.net.elements)
    # Every training atom lies within the covering radius: the ratio is <= 1 on the training set.
    for atoms in read_structures("datasets/cu_emt/train.xyz")[:5]:
        assert _extrapolation(calc, atoms) <= 1.0 + 1e-9


def test_farthest_points_cover_the_set():
    x = torch.randn(200, 5, dtype=torch.float64)
    idx, radius = farthest_points(x, 20)
    assert len(set(idx.tolist())) == 20
    nearest = torch.cdist(x, x[idx]).amin(1)
    assert torch.isclose(nearest.max(), torch.tensor(radius, dtype=torch.float64))


def test_fit_domain_refuses_an_element_with_too_few_atoms():
    species = torch.tensor([0] * 20 + [1] * 1)
    feats = torch.randn(21, 4)
    ei = torch.tensor([[0, 1], [1, 0]])
    with pytest.raises(ValueError, match="element index 1 has 1 training atoms"):
        fit_domain([(species, feats, ei, torch.tensor([2.5, 2.5]))], 2, 4.5)


def test_coincident_atoms_are_named():
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    atoms.positions[5] = atoms.positions[2]
    atoms.calc = _quiet_calc()
    with pytest.raises(ValueError, match=r"atoms (2 and 5|5 and 2) are 0 Å apart"):
        atoms.get_potential_energy()


def test_bad_checkpoint_device_and_skin_are_refused(tmp_path):
    path = tmp_path / "string.pt"
    with open(path, "wb") as fh:
        pickle.dump("not a model", fh, protocol=2)
    with pytest.raises(CheckpointError, match=str(path.name)):
        Geo3DCalculator(str(path))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device='cuda'"):
            Geo3DCalculator("cu-emt", device="cuda")
    with pytest.raises(ValueError, match="skin"):
        Geo3DCalculator("cu-emt", skin=-1.0)
