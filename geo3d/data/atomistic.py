"""Atomistic structures (ASE ``Atoms`` and files ASE reads) as PyG ``Data``.

Layout (DESIGN.md): ``pos [N, 3]``, ``z [N]``, ``cell [1, 3, 3]``, ``pbc [1, 3]``,
so that ``Batch`` stacks cells to ``[B, 3, 3]``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from torch_geometric.data import Data


class StructureFileError(ValueError):
    """A structure file that cannot be read, with the file and frame it concerns."""


def atoms_to_data(atoms: Atoms, dtype: torch.dtype = torch.float64, source: str = "atoms") -> Data:
    """One ``Atoms`` object as ``Data(pos, z, cell, pbc)``.

    Raises:
        StructureFileError: NaN/inf positions or cell, naming ``source``.
    """
    pos = np.asarray(atoms.get_positions(), dtype=np.float64)
    cell = np.asarray(atoms.get_cell().array, dtype=np.float64)
    if not np.isfinite(pos).all():
        bad = int(np.flatnonzero(~np.isfinite(pos).all(axis=1))[0])
        raise StructureFileError(f"{source}: atom {bad} has a NaN or inf position")
    if not np.isfinite(cell).all():
        raise StructureFileError(f"{source}: the cell has NaN or inf entries")
    return Data(
        pos=torch.tensor(pos, dtype=dtype),
        z=torch.tensor(atoms.get_atomic_numbers(), dtype=torch.long),
        cell=torch.tensor(cell, dtype=dtype).unsqueeze(0),
        pbc=torch.tensor(atoms.get_pbc(), dtype=torch.bool).unsqueeze(0),
    )


def read_structures(path: str | Path, index: str = ":", fmt: str | None = None) -> list[Atoms]:
    """Read every frame of a structure file through ``ase.io.read``.

    Raises:
        FileNotFoundError: no such file.
        StructureFileError: ASE cannot parse it, or it holds no frame; the message
            names the file and ASE's complaint.
    """
    from ase.io import read

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such structure file")
    try:
        frames = read(path, index=index, format=fmt)
    except Exception as exc:  # ASE raises many types for malformed files
        raise StructureFileError(
            f"{path}: cannot read as a structure file ({type(exc).__name__}: {exc})"
        ) from exc
    frames = frames if isinstance(frames, list) else [frames]
    if not frames:
        raise StructureFileError(f"{path}: no frames found")
    return frames


def _label(atoms: Atoms, key: str, kind: str):
    """A label stored under ``key`` in ``info``/``arrays``, or in the attached single-point result."""
    if kind == "per-atom" and key in atoms.arrays:
        return atoms.arrays[key]
    if kind != "per-atom" and key in atoms.info:
        return atoms.info[key]
    calc = atoms.calc
    results = getattr(calc, "results", {}) if calc is not None else {}
    return results.get(key)


def read_labelled_structures(
    path: str | Path,
    energy_key: str = "energy",
    forces_key: str = "forces",
    stress_key: str | None = "stress",
    dtype: torch.dtype = torch.float64,
) -> list[Data]:
    """Frames of an extxyz (or any ASE-readable) file with their labels, as ``Data``.

    Each frame gets ``energy [1]`` (eV), ``forces [N, 3]`` (eV/Å) and, when
    ``stress_key`` is given and the frame is periodic, ``stress [1, 3, 3]`` (eV/Å^3,
    ASE's sign; Voigt 6-vectors are expanded). The keys are looked up in
    ``atoms.info``/``atoms.arrays`` first, then in the stored calculator results
    (ASE moves ``energy``/``forces``/``stress`` there when reading extxyz).

    Raises:
        StructureFileError: a missing key or a label of the wrong shape, naming
            the file, the frame and the key.
    """
    frames = read_structures(path)
    out = []
    for k, atoms in enumerate(frames):
        where = f"{path}, frame {k}"
        data = atoms_to_data(atoms, dtype=dtype, source=where)
        energy = _label(atoms, energy_key, "per-frame")
        if energy is None:
            raise StructureFileError(f"{where}: no energy under key {energy_key!r}")
        forces = _label(atoms, forces_key, "per-atom")
        if forces is None:
            raise StructureFileError(f"{where}: no forces under key {forces_key!r}")
        forces = np.asarray(forces, dtype=np.float64)
        if forces.shape != (len(atoms), 3):
            raise StructureFileError(
                f"{where}: forces {forces_key!r} have shape {forces.shape}, expected ({len(atoms)}, 3)"
            )
        data.energy = torch.tensor([float(energy)], dtype=dtype)
        data.forces = torch.tensor(forces, dtype=dtype)
        if stress_key is not None and atoms.pbc.all():
            stress = _label(atoms, stress_key, "per-frame")
            if stress is None:
                raise StructureFileError(f"{where}: periodic frame without stress under key {stress_key!r}")
            stress = np.asarray(stress, dtype=np.float64)
            if stress.shape == (6,):
                xx, yy, zz, yz, xz, xy = stress
                stress = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
            elif stress.shape == (9,):
                stress = stress.reshape(3, 3)
            if stress.shape != (3, 3):
                raise StructureFileError(f"{where}: stress {stress_key!r} has shape {stress.shape}")
            data.stress = torch.tensor(stress, dtype=dtype).unsqueeze(0)
        out.append(data)
    return out


# rMD17 (Christensen & von Lilienfeld 2020) stores kcal/mol and kcal/mol/Å.
KCAL_PER_MOL_IN_EV = 0.0433641153087705


def read_rmd17(path: str | Path, dtype: torch.dtype = torch.float64) -> list[Data]:
    """The revised MD17 ``.npz`` format (``nuclear_charges``, ``coords``, ``energies``, ``forces``) in eV, Å.

    Raises:
        FileNotFoundError: no such file.
        StructureFileError: a missing array or inconsistent shapes, naming the file and array.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        npz = np.load(path)
    except Exception as exc:
        raise StructureFileError(f"{path}: not a readable .npz file ({exc})") from exc
    for key in ("nuclear_charges", "coords", "energies", "forces"):
        if key not in npz:
            raise StructureFileError(
                f"{path}: missing array {key!r} (rMD17 has nuclear_charges, coords, energies, forces)"
            )
    z, coords, energies, forces = (npz[k] for k in ("nuclear_charges", "coords", "energies", "forces"))
    n = len(z)
    if (
        coords.ndim != 3
        or coords.shape[1:] != (n, 3)
        or forces.shape != coords.shape
        or len(energies) != len(coords)
    ):
        raise StructureFileError(
            f"{path}: inconsistent shapes: nuclear_charges {z.shape}, coords {coords.shape}, "
            f"energies {energies.shape}, forces {forces.shape}"
        )
    if not np.isfinite(coords).all():
        raise StructureFileError(f"{path}: coords hold NaN or inf")
    out = []
    for k in range(len(coords)):
        out.append(
            Data(
                pos=torch.tensor(coords[k], dtype=dtype),
                z=torch.tensor(z, dtype=torch.long),
                cell=torch.zeros(1, 3, 3, dtype=dtype),
                pbc=torch.zeros(1, 3, dtype=torch.bool),
                energy=torch.tensor([energies[k] * KCAL_PER_MOL_IN_EV], dtype=dtype),
                forces=torch.tensor(forces[k] * KCAL_PER_MOL_IN_EV, dtype=dtype),
            )
        )
    return out
