"""Make the Cu / Cu-Au EMT training set shipped in ``datasets/cu_emt/`` (extxyz, energy, forces, stress).

ASE's EMT calculator labels, from a fixed seed:
  - strained and rattled fcc Cu cells (2x2x2 and 3x3x3 conventional; +-4 % volumetric
    and random shear strain, 0.02-0.12 Å rattle);
  - NVT MD snapshots (Langevin, 2 fs) at 300, 800 and 1400 K (liquid-like) from 3x3x3 Cu;
  - 3x3x3 Cu with one or two vacancies, relaxed partly by the MD;
  - a Cu(111) slab (4 layers, 3x3, 10 Å vacuum; pbc only in-plane for the stress-free axis
    is not needed: the cell stays periodic with vacuum, as codes usually do);
  - random fcc Cu-Au alloys (10-50 % Au), rattled and MD at 600 K.
Frames are split 85/15 into ``train.xyz`` / ``test.xyz`` at random (seeded).

Usage: python datasets/make_cu_emt.py [--out datasets/cu_emt] [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.build import bulk, fcc111
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

A_CU = 3.61


def labelled(atoms: Atoms) -> Atoms:
    """A copy carrying EMT's energy, forces and stress as a single-point result."""
    atoms = atoms.copy()
    atoms.calc = EMT()
    e, f, s = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress(voigt=False)
    out = atoms.copy()
    out.calc = SinglePointCalculator(out, energy=e, forces=f, stress=s)
    return out


def strained(rng: np.random.Generator, reps: int, n: int) -> list[Atoms]:
    frames = []
    for _ in range(n):
        atoms = bulk("Cu", "fcc", a=A_CU, cubic=True).repeat(reps)
        eps = rng.uniform(-0.04, 0.04, (3, 3))
        eps = 0.5 * (eps + eps.T)
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
        atoms.rattle(stdev=rng.uniform(0.02, 0.12), seed=int(rng.integers(1 << 30)))
        frames.append(labelled(atoms))
    return frames


def md(rng: np.random.Generator, atoms: Atoms, temperature: float, n: int, every: int = 10) -> list[Atoms]:
    atoms = atoms.copy()
    atoms.calc = EMT()
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
    dyn = Langevin(atoms, 2 * units.fs, temperature_K=temperature, friction=0.02, rng=rng)
    frames = []
    for _ in range(n):
        dyn.run(every)
        frames.append(labelled(atoms))
    return frames


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "cu_emt")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    frames: list[Atoms] = []
    frames += strained(rng, 2, 40)
    frames += strained(rng, 3, 20)
    cu333 = bulk("Cu", "fcc", a=A_CU, cubic=True).repeat(3)
    for t in (300, 800, 1400):
        frames += md(rng, cu333, t, 20)
    for k in (1, 2):
        vac = cu333.copy()
        del vac[list(rng.choice(len(vac), k, replace=False))]
        frames += md(rng, vac, 600, 10)
    slab = fcc111("Cu", size=(3, 3, 4), a=A_CU, vacuum=5.0, periodic=True)
    frames += md(rng, slab, 500, 15)
    for _ in range(3):
        alloy = bulk("Cu", "fcc", a=A_CU, cubic=True).repeat(2)
        au = rng.random(len(alloy)) < rng.uniform(0.1, 0.5)
        alloy.numbers[au] = 79
        alloy.set_cell(alloy.cell.array * (1 + 0.04 * au.mean()), scale_atoms=True)
        alloy.rattle(0.05, seed=int(rng.integers(1 << 30)))
        frames += md(rng, alloy, 600, 10)
    order = rng.permutation(len(frames))
    n_test = round(0.15 * len(frames))
    args.out.mkdir(parents=True, exist_ok=True)
    write(args.out / "test.xyz", [frames[k] for k in order[:n_test]], format="extxyz")
    write(args.out / "train.xyz", [frames[k] for k in order[n_test:]], format="extxyz")
    atoms = sum(len(f) for f in frames)
    print(f"{len(frames)} frames ({atoms} atoms): {len(frames) - n_test} train, {n_test} test -> {args.out}")


if __name__ == "__main__":
    main()
