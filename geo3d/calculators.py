"""ASE calculator for geo3d's interatomic potentials.

``Geo3DCalculator(model="cu-emt")`` gives ``energy``, ``free_energy``,
``energies`` (per atom), ``forces`` and, for cells periodic in all three
directions, ``stress`` (Voigt, eV/Å^3, ASE's sign), so it drops into ``ase.md``,
``ase.optimize`` and ``ase.filters.FrechetCellFilter``. The atoms go through
the same ``atoms_to_data`` + radius graph as the training data.

Neighbour list: built with ``r_max + skin`` and reused while no atom has moved
more than ``skin / 2`` and cell, pbc and numbers are unchanged (a Verlet list).
Edges between ``r_max`` and ``r_max + skin`` contribute exactly zero (the
radial functions vanish there), so results do not depend on the skin. The
default is no skin: geo3d's radius graph is cheap next to the model, and the
~37% extra edges of a 0.5 Å skin at r_max 4.5 Å cost more than the rebuilds
they save (measured with ``benchmarks/potential_md.py --skin``, cu-emt, 2 cores:
8.66 vs 7.69 MD steps/s at 864 atoms, 0.786 vs 0.692 at 10,976). A skin pays
where the list is expensive relative to the model.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from geo3d.checkpoint import CheckpointError
from geo3d.data.atomistic import atoms_to_data
from geo3d.models.registry import load_model
from geo3d.ops.radius_graph import radius_graph
from geo3d.runtime import retain_freed_memory

DTYPES = {"float32": torch.float32, "float64": torch.float64}


class Geo3DCalculator(Calculator):
    """ASE calculator over a geo3d potential (a shipped name such as ``"cu-emt"`` or a checkpoint path).

    Args:
        model: shipped model name or checkpoint path of a ``potential`` architecture.
        device: ``"cpu"`` or ``"cuda"``.
        default_dtype: ``"float64"`` (default; MD and relaxations) or ``"float32"``.
        skin: Verlet skin in Å (0 rebuilds the neighbour list at every call).
        retain_memory: keep freed memory in the process heap for the next step
            (:func:`geo3d.runtime.retain_freed_memory`; 1.5-2.5x faster steps at
            ~10k atoms on CPU). Process-wide; pass False to leave malloc alone.
        compile: run the model's energy through ``torch.compile`` (the first call
            compiles, about a minute on 2 CPU cores; see ``InteratomicPotential.compile_energy``).

    Raises:
        CheckpointError: the checkpoint is not a geo3d potential.
        ValueError: an unknown dtype.
    """

    implemented_properties: ClassVar[list[str]] = ["energy", "free_energy", "energies", "forces", "stress"]

    def __init__(
        self,
        model: str = "cu-emt",
        device: str = "cpu",
        default_dtype: str = "float64",
        skin: float = 0.0,
        retain_memory: bool = True,
        compile: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if retain_memory:
            retain_freed_memory()
        if default_dtype not in DTYPES:
            raise ValueError(f"default_dtype={default_dtype!r}: choose one of {', '.join(DTYPES)}")
        self.dtype = DTYPES[default_dtype]
        self.device = torch.device(device)
        net = load_model(model, device=self.device, dtype=self.dtype)
        arch = net.geo3d_checkpoint.get("arch")
        if arch != "potential":
            raise CheckpointError(
                f"{net.geo3d_checkpoint.get('path', model)}: holds a {arch!r} model, not a geo3d potential"
            )
        self.net = net.compile_energy() if compile else net
        self.r_max = net.r_max
        self.skin = float(skin)
        self._graph = None  # (edge_index, shifts, positions at build, cell, pbc, numbers)
        self.neighbor_list_builds = 0

    def _neighbours(self, atoms: Atoms, pos: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor):
        g = self._graph
        if g is not None:
            _, _, pos0, cell0, pbc0, numbers0 = g
            same = (
                np.array_equal(atoms.numbers, numbers0)
                and np.array_equal(atoms.pbc, pbc0)
                and np.allclose(atoms.cell.array, cell0, rtol=0, atol=1e-12)
            )
            if same and len(pos0) == len(pos):
                moved = np.linalg.norm(atoms.positions - pos0, axis=1).max() if len(pos0) else 0.0
                if moved < 0.5 * self.skin:
                    return g[0], g[1]
        edge_index, shifts = radius_graph(pos, self.r_max + self.skin, cell=cell, pbc=pbc)
        self._graph = (
            edge_index,
            shifts,
            atoms.positions.copy(),
            atoms.cell.array.copy(),
            atoms.pbc.copy(),
            atoms.numbers.copy(),
        )
        self.neighbor_list_builds += 1
        return edge_index, shifts

    def calculate(
        self, atoms: Atoms | None = None, properties=("energy",), system_changes=all_changes
    ) -> None:
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        if atoms.pbc.any() and abs(np.linalg.det(atoms.cell.array)) < 1e-9:
            raise ValueError(
                f"Geo3DCalculator: the cell is singular (volume {abs(np.linalg.det(atoms.cell.array)):.3g}) "
                f"but pbc={atoms.pbc.tolist()}; give a cell with non-zero volume or pbc=False"
            )
        data = atoms_to_data(atoms, dtype=self.dtype, source="Geo3DCalculator atoms")
        self.net.species(data.z)  # unknown elements: a clear error before any work
        data = data.to(self.device)
        edge_index, shifts = self._neighbours(atoms, data.pos, data.cell[0], data.pbc[0])
        data.edge_index, data.shifts = edge_index.to(self.device), shifts.to(self.device)
        periodic = bool(atoms.pbc.all())
        out = self.net(data, compute_forces=True, compute_stress=periodic)
        energy = float(out["energy"].detach().sum())
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "energies": out["energies"].detach().cpu().double().numpy(),
            "forces": out["forces"].detach().cpu().double().numpy(),
        }
        if periodic:
            stress = out["stress"][0].detach().cpu().double().numpy()
            self.results["stress"] = full_3x3_to_voigt_6_stress(stress)
