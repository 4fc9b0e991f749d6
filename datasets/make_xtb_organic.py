"""Make the small-organic-molecule set shipped in ``datasets/xtb_organic/`` (GFN2-xTB energies and forces).

24 small molecules with QM9's elements (H, C, N, O, F), RDKit ETKDG conformers,
then Langevin MD with the ``tblite`` GFN2-xTB ASE calculator (0.5 fs steps) at
300 K and 800 K; a frame is kept every 10 steps. Frames are split 85/15 into
``train.xyz`` / ``test.xyz`` at random (seeded). Needs ``pip install tblite``.

Usage: python datasets/make_xtb_organic.py [--out datasets/xtb_organic] [--frames 24] [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from rdkit import Chem
from rdkit.Chem import AllChem

SMILES = [
    "CCO", "CC(=O)O", "CC(N)=O", "NCC(=O)O", "c1ccccc1", "c1ccncc1", "c1ccoc1", "CC(C)=O",
    "CN", "CC#N", "CCF", "OCCO", "C1CC1", "C=CC=O", "CC(C)(C)O", "COC(C)=O",
    "NC(=O)N", "c1cc[nH]c1", "CC=NO", "FC(F)F", "C#CCO", "OC1CCC1", "CNC=O", "C1COC1",
]  # fmt: skip


def embed(smiles: str, seed: int) -> Atoms:
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    if AllChem.EmbedMolecule(mol, randomSeed=seed) != 0:
        raise RuntimeError(f"RDKit could not embed {smiles}")
    AllChem.MMFFOptimizeMolecule(mol)
    pos = mol.GetConformer().GetPositions()
    return Atoms([a.GetSymbol() for a in mol.GetAtoms()], positions=pos)


def md_frames(atoms: Atoms, temperature: float, n: int, rng: np.random.Generator) -> list[Atoms]:
    from tblite.ase import TBLite

    atoms = atoms.copy()
    atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
    dyn = Langevin(atoms, 0.5 * units.fs, temperature_K=temperature, friction=0.02, rng=rng)
    frames = []
    for _ in range(n):
        dyn.run(10)
        out = atoms.copy()
        out.calc = SinglePointCalculator(out, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
        frames.append(out)
    return frames


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "xtb_organic")
    ap.add_argument("--frames", type=int, default=24, help="frames per molecule and temperature")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    frames: list[Atoms] = []
    for k, smiles in enumerate(SMILES):
        atoms = embed(smiles, args.seed + k)
        for temperature in (300, 800):
            frames += md_frames(atoms, temperature, args.frames, rng)
        print(f"{smiles}: {len(frames)} frames so far", flush=True)
    order = rng.permutation(len(frames))
    n_test = round(0.15 * len(frames))
    args.out.mkdir(parents=True, exist_ok=True)
    write(args.out / "test.xyz", [frames[k] for k in order[:n_test]], format="extxyz")
    write(args.out / "train.xyz", [frames[k] for k in order[n_test:]], format="extxyz")
    print(f"{len(frames)} frames: {len(frames) - n_test} train, {n_test} test -> {args.out}")


if __name__ == "__main__":
    main()
