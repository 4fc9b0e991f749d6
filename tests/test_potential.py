"""Interatomic potential and its ASE calculator: derivatives, symmetries, errors, MD, data readers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.io import write

from geo3d.calculators import Geo3DCalculator
from geo3d.checkpoint import CheckpointError, save_checkpoint
from geo3d.data.atomistic import StructureFileError, read_labelled_structures, read_rmd17
from geo3d.models.potential import InteratomicPotential, UnknownElementError

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"elements": [29, 79], "r_max": 4.0, "channels": 8, "num_layers": 2, "radial_hidden": 16, "lmax": 2}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A small random potential (weights scaled up so that forces are not tiny), saved as a checkpoint."""
    torch.manual_seed(3)
    net = InteratomicPotential({**SMALL, "e0": [-1.0, -2.0], "scale": 300.0}).double()
    path = tmp_path_factory.mktemp("pot") / "pot.pt"
    save_checkpoint(
        path, arch="potential", task="test", config=net.config, state_dict=net.state_dict(), metrics={}
    )
    return path


def cu_cell(rattle: float = 0.1, seed: int = 0) -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    atoms.numbers[[1, 6]] = 79
    atoms.rattle(rattle, seed=seed)
    atoms.set_cell(
        atoms.cell.array @ np.array([[1.0, 0.03, 0.0], [0.0, 1.02, 0.05], [0.01, 0.0, 0.98]]),
        scale_atoms=True,
    )
    return atoms


def calc_of(checkpoint, **kw) -> Geo3DCalculator:
    return Geo3DCalculator(model=str(checkpoint), **kw)


def test_forces_are_minus_the_energy_gradient(checkpoint):
    atoms = cu_cell()
    atoms.calc = calc_of(checkpoint, skin=0.0)
    forces = atoms.get_forces()
    assert np.abs(forces).max() > 1e-2  # a meaningful comparison
    h = 1e-5
    for a, k in [(0, 0), (3, 1), (7, 2), (12, 0)]:
        pos = atoms.positions.copy()
        atoms.positions[a, k] = pos[a, k] + h
        ep = atoms.get_potential_energy()
        atoms.positions[a, k] = pos[a, k] - h
        em = atoms.get_potential_energy()
        atoms.positions = pos
        fd = -(ep - em) / (2 * h)
        assert abs(fd - forces[a, k]) <= 1e-6 * np.abs(forces).max() + 1e-9, (a, k, fd, forces[a, k])


def test_stress_is_the_strain_derivative(checkpoint):
    atoms = cu_cell()
    atoms.calc = calc_of(checkpoint, skin=0.0)
    stress = atoms.get_stress(voigt=False)
    volume = atoms.get_volume()
    cell0, h = atoms.cell.array.copy(), 1e-6
    for a, b in [(0, 0), (1, 1), (0, 1), (1, 2)]:
        values = []
        for sign in (1, -1):
            eps = np.zeros((3, 3))
            eps[a, b] = eps[b, a] = sign * h / (1 if a == b else 2)
            strained = atoms.copy()
            strained.calc = atoms.calc
            strained.set_cell(cell0 @ (np.eye(3) + eps), scale_atoms=True)
            values.append(strained.get_potential_energy())
        fd = (values[0] - values[1]) / (2 * h) / volume
        assert abs(fd - stress[a, b]) <= 1e-6 * np.abs(stress).max() + 1e-10, (a, b, fd, stress[a, b])


def _results(atoms, checkpoint):
    atoms.calc = calc_of(checkpoint, skin=0.0)
    return atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress(voigt=False)


@pytest.mark.parametrize("improper", [False, True])
def test_rotation_and_reflection(checkpoint, improper):
    atoms = cu_cell()
    e, f, s = _results(atoms, checkpoint)
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(3, 3)))
    q = q * np.sign(np.linalg.det(q)) * (-1 if improper else 1)
    rotated = atoms.copy()
    rotated.set_cell(atoms.cell.array @ q.T, scale_atoms=False)
    rotated.positions = atoms.positions @ q.T
    e2, f2, s2 = _results(rotated, checkpoint)
    assert abs(e2 - e) < 1e-9 * abs(e)
    np.testing.assert_allclose(f2, f @ q.T, atol=1e-9)
    np.testing.assert_allclose(s2, q @ s @ q.T, atol=1e-10)


def test_translation_permutation_and_periodic_image(checkpoint):
    atoms = cu_cell()
    e, f, s = _results(atoms, checkpoint)
    moved = atoms.copy()
    moved.positions += np.array([0.7, -1.3, 2.2])
    moved.positions[5] += atoms.cell.array[0] - 2 * atoms.cell.array[2]  # another periodic image
    e2, f2, s2 = _results(moved, checkpoint)
    assert abs(e2 - e) < 1e-9 * abs(e)
    np.testing.assert_allclose(f2, f, atol=1e-9)
    np.testing.assert_allclose(s2, s, atol=1e-10)
    perm = np.random.default_rng(2).permutation(len(atoms))
    e3, f3, _ = _results(atoms[perm], checkpoint)
    assert abs(e3 - e) < 1e-9 * abs(e)
    np.testing.assert_allclose(f3, f[perm], atol=1e-9)


def test_supercell_is_extensive(checkpoint):
    atoms = cu_cell()
    e, f, s = _results(atoms, checkpoint)
    big = atoms.repeat((2, 2, 2))
    e8, f8, s8 = _results(big, checkpoint)
    assert abs(e8 - 8 * e) < 1e-8 * abs(e8)
    np.testing.assert_allclose(f8[: len(atoms)], f, atol=1e-9)
    np.testing.assert_allclose(s8, s, atol=1e-10)


def test_verlet_skin_changes_nothing_and_saves_rebuilds(checkpoint):
    atoms = cu_cell()
    with_skin, without = calc_of(checkpoint, skin=1.0), calc_of(checkpoint, skin=0.0)
    rng = np.random.default_rng(0)
    for _ in range(5):
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        a, b = atoms.copy(), atoms.copy()
        a.calc, b.calc = with_skin, without
        assert abs(a.get_potential_energy() - b.get_potential_energy()) < 1e-10
        np.testing.assert_allclose(a.get_forces(), b.get_forces(), atol=1e-10)
    assert with_skin.neighbor_list_builds < without.neighbor_list_builds == 5


def test_molecule_without_cell_has_no_stress(checkpoint):
    atoms = Atoms("Cu3", positions=[[0, 0, 0], [2.4, 0, 0], [1.2, 2.0, 0.3]])
    atoms.calc = calc_of(checkpoint)
    assert np.isfinite(atoms.get_potential_energy())
    assert atoms.get_forces().shape == (3, 3)
    assert "stress" not in atoms.calc.results


def test_clear_errors(checkpoint):
    atoms = cu_cell()
    atoms.numbers[0] = 26
    atoms.calc = calc_of(checkpoint)
    with pytest.raises(UnknownElementError, match=r"\[26\] not among this potential's elements \[29, 79\]"):
        atoms.get_potential_energy()
    flat = Atoms("Cu2", positions=[[0, 0, 0], [1, 1, 1]], cell=[[3, 0, 0], [0, 3, 0], [0, 0, 0]], pbc=True)
    flat.calc = calc_of(checkpoint)
    with pytest.raises(ValueError, match="cell is singular"):
        flat.get_potential_energy()
    with pytest.raises(CheckpointError, match="not an interatomic-potential"):
        Geo3DCalculator(model="eqgat-qm9")


def test_energy_is_conserved_in_md(checkpoint):
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    atoms = cu_cell(rattle=0.0)
    atoms.calc = calc_of(checkpoint)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    dyn = VelocityVerlet(atoms, 1 * units.fs)
    e0 = atoms.get_total_energy()
    dyn.run(100)
    assert abs(atoms.get_total_energy() - e0) / len(atoms) < 1e-3  # eV/atom over 100 fs


def test_extxyz_labels_and_errors(tmp_path):
    frames = read_labelled_structures(ROOT / "datasets/cu_emt/test.xyz")
    assert frames and all(f.forces.shape == (f.num_nodes, 3) for f in frames)
    assert all(f.stress.shape == (1, 3, 3) for f in frames)
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.info["E"] = -1.0
    atoms.arrays["F"] = np.zeros((len(atoms), 2))
    write(tmp_path / "bad.xyz", atoms, format="extxyz")
    with pytest.raises(StructureFileError, match=r"bad\.xyz, frame 0: no energy under key .energy."):
        read_labelled_structures(tmp_path / "bad.xyz")
    with pytest.raises(StructureFileError, match=r"forces 'F' have shape \(4, 2\)"):
        read_labelled_structures(tmp_path / "bad.xyz", energy_key="E", forces_key="F")


def test_rmd17_reader(tmp_path):
    z = np.array([6, 1, 1, 1, 1])
    coords = np.random.default_rng(0).normal(size=(3, 5, 3))
    np.savez(
        tmp_path / "rmd17_methane.npz",
        nuclear_charges=z,
        coords=coords,
        energies=np.arange(3.0),
        forces=coords,
    )
    frames = read_rmd17(tmp_path / "rmd17_methane.npz")
    assert len(frames) == 3 and torch.allclose(
        frames[2].energy, torch.tensor([2 * 0.0433641153087705], dtype=torch.float64)
    )
    np.savez(tmp_path / "broken.npz", nuclear_charges=z, coords=coords)
    with pytest.raises(StructureFileError, match=r"broken\.npz: missing array .energies."):
        read_rmd17(tmp_path / "broken.npz")


@pytest.mark.parametrize("name", ["xtb-organic"])
def test_shipped_molecule_potential_relaxes_a_molecule(name):
    from ase.build import molecule
    from ase.optimize import BFGS

    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=0)
    atoms.calc = Geo3DCalculator(model=name)
    f0 = np.abs(atoms.get_forces()).max()
    BFGS(atoms, logfile=None).run(fmax=0.05, steps=200)
    assert np.abs(atoms.get_forces()).max() < min(0.05, f0)
    d_co = atoms.get_distance(1, 2)  # C-O, ~1.43 Å in GFN2-xTB
    assert 1.3 < d_co < 1.6


def test_shipped_cu_model_relaxes_a_strained_cell():
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    atoms = bulk("Cu", "fcc", a=3.75, cubic=True).repeat(2)  # 4 % too large
    atoms.calc = Geo3DCalculator(model="cu-emt")
    assert np.abs(atoms.get_stress()).max() > 1e-3
    FIRE(FrechetCellFilter(atoms), logfile=None).run(fmax=0.005, steps=300)
    a = atoms.cell.lengths()[0] / 2
    assert abs(a - 3.59) < 0.05  # EMT's Cu lattice constant is ~3.59 Å
    assert np.abs(atoms.get_stress()).max() < 1e-3


@pytest.mark.slow
def test_shipped_cu_model_conserves_energy_for_a_picosecond():
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(3)
    atoms.calc = Geo3DCalculator(model="cu-emt")
    MaxwellBoltzmannDistribution(atoms, temperature_K=600, rng=np.random.default_rng(0))
    dyn = VelocityVerlet(atoms, 1 * units.fs)
    e0 = atoms.get_total_energy()
    energies = []
    dyn.attach(lambda: energies.append(atoms.get_total_energy()), interval=50)
    dyn.run(1000)
    drift = abs(np.mean(energies[-4:]) - e0) / len(atoms)
    assert drift < 1e-3, drift  # eV/atom over 1 ps at 1 fs


def test_langevin_runs_and_thermalises_roughly(checkpoint):
    from ase import units
    from ase.md.langevin import Langevin

    atoms = cu_cell(rattle=0.0)
    atoms.calc = calc_of(checkpoint)
    dyn = Langevin(atoms, 2 * units.fs, temperature_K=500, friction=0.05, rng=np.random.default_rng(0))
    dyn.run(50)
    assert 100 < atoms.get_temperature() < 1500
    assert np.isfinite(atoms.get_forces()).all()


def test_compiled_energy_matches_eager(checkpoint):
    """torch.compile of the energy (dynamic shapes): same energy, forces and stress, also after a rebuild."""
    eager, compiled = cu_cell(), cu_cell()
    eager.calc = calc_of(checkpoint, skin=0.3)
    compiled.calc = calc_of(checkpoint, skin=0.3, compile=True)
    for step in range(2):
        if step:  # move beyond the skin: a new neighbour list with another edge count
            for atoms in (eager, compiled):
                atoms.positions += np.random.default_rng(5).normal(scale=0.2, size=atoms.positions.shape)
        assert compiled.get_potential_energy() == pytest.approx(eager.get_potential_energy(), rel=1e-12)
        np.testing.assert_allclose(compiled.get_forces(), eager.get_forces(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(compiled.get_stress(), eager.get_stress(), rtol=1e-10, atol=1e-12)
    assert compiled.calc.neighbor_list_builds == 2
