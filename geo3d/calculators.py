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

Extrapolation: a potential whose checkpoint carries a training domain
(:mod:`geo3d.models.potential_domain`) reports with every calculation how far
outside what it was trained on each atom is: ``results["extrapolations"]``
(per atom) and ``results["extrapolation"]`` (the structure's largest). Above
``extrapolation_threshold`` (default 2.0) the calculator warns once
(:class:`ExtrapolationWarning`); ``strict=True`` raises
:class:`~geo3d.models.potential_domain.ExtrapolationError` instead.
"""

from __future__ import annotations

import warnings
from typing import ClassVar

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from geo3d.data.atomistic import atoms_to_data
from geo3d.graph.edges import edge_vectors
from geo3d.graph.neighbor_list import NeighborList
from geo3d.models.potential_domain import THRESHOLD, ExtrapolationError, describe_atom
from geo3d.registry import load_model, require_kind
from geo3d.runtime import resolve_device, retain_freed_memory

DTYPES = {"float32": torch.float32, "float64": torch.float64}
# Closer than this, two atoms are one atom typed twice: the edge direction is undefined
# (the spherical harmonics give NaN) and no potential has seen such a pair.
MIN_DISTANCE = 1e-2  # Å


class ExtrapolationWarning(UserWarning):
    """A structure outside the potential's training domain (``Geo3DCalculator``, once per calculator)."""


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
        strict: raise :class:`ExtrapolationError` for a structure whose extrapolation
            exceeds ``extrapolation_threshold``, instead of warning once.
        extrapolation_threshold: where the warning (or error) starts; 1 is the edge of
            the training set, the default 2.0 is measured to keep in-domain cases quiet.

    Raises:
        CheckpointError: the checkpoint is not an interatomic potential.
        ValueError: an unknown dtype, a device that is not there, a negative skin; at
            calculation time, atoms closer than ``MIN_DISTANCE``, a singular periodic cell.
    """

    implemented_properties: ClassVar[list[str]] = [
        "energy",
        "free_energy",
        "energies",
        "forces",
        "stress",
        "extrapolation",
        "extrapolations",
    ]

    def __init__(
        self,
        model: str = "cu-emt",
        device: str = "cpu",
        default_dtype: str = "float64",
        skin: float = 0.0,
        retain_memory: bool = True,
        compile: bool = False,
        strict: bool = False,
        extrapolation_threshold: float = THRESHOLD,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if default_dtype not in DTYPES:
            raise ValueError(f"default_dtype={default_dtype!r}: choose one of {', '.join(DTYPES)}")
        if not skin >= 0:  # also refuses NaN
            raise ValueError(f"Geo3DCalculator: skin={skin!r} Å; the Verlet skin must be >= 0")
        if retain_memory:
            retain_freed_memory()
        self.dtype = DTYPES[default_dtype]
        self.device = resolve_device(device, "Geo3DCalculator")
        net = load_model(model, device=self.device, dtype=self.dtype)
        require_kind(net, "interatomic-potential")
        self.net = net.compile_energy() if compile else net
        self.model_name = str(net.geo3d_checkpoint.get("path", model))
        self.r_max = net.r_max
        self.skin = float(skin)
        self.strict = bool(strict)
        self.extrapolation_threshold = float(extrapolation_threshold)
        self._warned = False
        if net.domain is None:
            warnings.warn(
                f"{self.model_name}: the checkpoint has no training domain, so results carry no "
                "'extrapolation' (refit it with benchmarks/potential_extrapolation.py --refit)",
                ExtrapolationWarning,
                stacklevel=2,
            )
        self._neighbors = NeighborList(self.r_max, self.skin)

    @property
    def neighbor_list_builds(self) -> int:
        """How often the neighbour list was built (a Verlet skin saves rebuilds)."""
        return self._neighbors.builds

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
        self._neighbors.attach(data)
        self._refuse_coincident(data)
        periodic = bool(atoms.pbc.all())
        out = self.net(data, compute_forces=True, compute_stress=periodic)
        if "extrapolation" in out:
            self._check_domain(atoms, data, out)
        energy = float(out["energy"].detach().sum())
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "energies": out["energies"].detach().cpu().double().numpy(),
            "forces": out["forces"].detach().cpu().double().numpy(),
        }
        if "extrapolation" in out:
            per_atom = out["extrapolation"].numpy()
            self.results["extrapolations"] = per_atom
            self.results["extrapolation"] = float(per_atom.max()) if len(per_atom) else 0.0
        if periodic:
            stress = out["stress"][0].detach().cpu().double().numpy()
            self.results["stress"] = full_3x3_to_voigt_6_stress(stress)

    def _refuse_coincident(self, data) -> None:
        """Two atoms (or an atom and a periodic image) closer than ``MIN_DISTANCE``: name them."""
        ei = data.edge_index
        if ei.shape[1] == 0:
            return
        batch = torch.zeros(data.pos.shape[0], dtype=torch.long, device=data.pos.device)
        lengths = edge_vectors(data.pos, ei, data.shifts, data.cell.reshape(-1, 3, 3), batch).norm(dim=1)
        k = int(lengths.argmin())
        if float(lengths[k]) < MIN_DISTANCE:
            j, i = int(ei[0, k]), int(ei[1, k])
            image = "" if data.shifts is None or not data.shifts[k].any() else " (a periodic image)"
            raise ValueError(
                f"Geo3DCalculator: atoms {i} and {j}{image} are {float(lengths[k]):.3g} Å apart "
                f"(< {MIN_DISTANCE} Å): coincident atoms have no energy; remove the duplicate"
            )

    def _check_domain(self, atoms: Atoms, data, out) -> None:
        """Warn once (or raise with ``strict``) when the structure is outside the training domain."""
        ext = out["extrapolation"]
        if ext.numel() == 0 or float(ext.max()) <= self.extrapolation_threshold:
            return
        if self._warned and not self.strict:
            return
        atom = int(ext.argmax())
        domain = self.net.domain
        parts = domain.components(self.net.species(data.z), out["features"], data.edge_index, out["lengths"])
        flagged = int((ext > self.extrapolation_threshold).sum())
        message = (
            f"{self.model_name}: {flagged} of {len(atoms)} atoms lie outside the training domain "
            f"(threshold {self.extrapolation_threshold}); worst "
            f"{describe_atom(parts, atom, atoms.get_chemical_symbols()[atom])}. Energies and forces "
            "there are extrapolated; results['extrapolations'] has every atom's value"
        )
        if self.strict:
            raise ExtrapolationError(message)
        self._warned = True
        warnings.warn(
            message + " (warned once per calculator; strict=True raises)", ExtrapolationWarning, stacklevel=3
        )
