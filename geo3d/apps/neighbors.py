"""`geo3d neighbors`: the radius graph of each frame of a structure file, summarised, optionally against ASE."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from ase import Atoms

from geo3d.data import atoms_to_data
from geo3d.graph import NeighborList, edge_lengths, edge_vectors
from geo3d.ops import canonical_order


@dataclass(frozen=True)
class FrameNeighbors:
    """What ``geo3d neighbors`` reports for one frame (lengths in Å)."""

    formula: str
    num_atoms: int
    cellpar: tuple[float, ...]  # a, b, c, alpha, beta, gamma
    pbc: tuple[bool, bool, bool]
    num_edges: int  # directed
    num_image_edges: int  # edges to a periodic image (a nonzero shift)
    neighbours: tuple[int, float, int] | None  # min, mean, max per atom; None without atoms
    shortest: float | None  # None without edges
    seconds: float  # the neighbour-list call alone
    matches_ase: bool | None  # edges and shifts identical to ase.neighborlist (None: not checked)
    ase_num_edges: int | None = None  # ase.neighborlist's edge count, when checked


def frame_neighbors(
    atoms: Atoms, cutoff: float, where: str, backend: str | None = None, check_ase: bool = False
) -> FrameNeighbors:
    """The radius graph of one frame at ``cutoff``.

    Raises:
        StructureFileError: the frame cannot be turned into a graph input (``where`` names it).
        ValueError, RuntimeError: the neighbour list refuses the frame (e.g. a singular cell).
    """
    data = atoms_to_data(atoms, source=where)
    t0 = time.perf_counter()
    edge_index, shifts = NeighborList(cutoff, backend=backend)(data.pos, data.cell, data.pbc)
    seconds = time.perf_counter() - t0
    n = data.pos.shape[0]
    lengths = edge_lengths(edge_vectors(data.pos, edge_index, shifts, data.cell))
    counts = torch.bincount(edge_index[1], minlength=n)
    matches, ase_edges = None, None
    if check_ase:
        from ase.neighborlist import neighbor_list

        i, j, s = neighbor_list("ijS", atoms, cutoff)
        ref = canonical_order(torch.stack([torch.from_numpy(j), torch.from_numpy(i)]), torch.from_numpy(s))
        ours = canonical_order(edge_index, shifts)
        matches = torch.equal(ours[0], ref[0]) and torch.equal(ours[1], ref[1])
        ase_edges = int(ref[0].shape[1])
    return FrameNeighbors(
        formula=atoms.get_chemical_formula(),
        num_atoms=n,
        cellpar=tuple(float(x) for x in atoms.cell.cellpar()),
        pbc=tuple(bool(p) for p in data.pbc[0].tolist()),
        num_edges=int(edge_index.shape[1]),
        num_image_edges=int((shifts != 0).any(dim=1).sum()),
        neighbours=(int(counts.min()), float(counts.float().mean()), int(counts.max())) if n else None,
        shortest=float(lengths.min()) if lengths.numel() else None,
        seconds=seconds,
        matches_ase=matches,
        ase_num_edges=ase_edges,
    )


def file_neighbors(
    path: Path, cutoff: float, backend: str | None = None, check_ase: bool = False
) -> list[FrameNeighbors]:
    """:func:`frame_neighbors` of every frame ASE reads from ``path``.

    Raises:
        FileNotFoundError, StructureFileError: the file cannot be read (named with the file).
        ValueError: a frame the neighbour list refuses (named with the file and frame).
    """
    from geo3d.data import StructureFileError, read_structures

    reports = []
    for k, atoms in enumerate(read_structures(path)):
        try:
            reports.append(frame_neighbors(atoms, cutoff, f"{path} frame {k}", backend, check_ase))
        except StructureFileError:  # a ValueError that already names the file and frame
            raise
        except (ValueError, RuntimeError) as exc:
            raise ValueError(f"{path} frame {k}: {exc}") from exc
    return reports
