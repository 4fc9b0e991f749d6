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
