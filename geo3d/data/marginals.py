"""Marginals of a molecule set: the priors of EQGAT-diff's categorical diffusion and the training SMILES.

(The distribution statistics the metrics compare generated molecules by, bond
lengths and angles, are :class:`geo3d.metrics.distributions.MoleculeStatistics`.)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch_geometric.data import Data

from geo3d.data.molecules import ATOM_VOCAB, BOND_TYPES, CHARGE_MAX, CHARGE_MIN, NUM_CHARGES
from geo3d.data.qm9 import QM9


@dataclass
class MoleculeMarginals:
    """Marginals of a molecule set, the priors of EQGAT-diff's categorical diffusion.

    Probabilities are float64 and sum to 1; ``*_count`` are the raw int64 counts.
    ``num_atoms [N_max + 1]`` (index = atom count), ``atom_types [16]`` (``ATOM_VOCAB``),
    ``charges [6]`` (formal charge -2..3), ``bond_types [5]`` (``BOND_TYPES``, class 0 =
    no bond) over all unordered atom pairs of each molecule.
    """

    num_molecules: int
    num_atoms: torch.Tensor
    atom_types: torch.Tensor
    charges: torch.Tensor
    bond_types: torch.Tensor
    num_atoms_count: torch.Tensor
    atom_type_count: torch.Tensor
    charge_count: torch.Tensor
    bond_type_count: torch.Tensor
    smiles: frozenset[str] = field(default_factory=frozenset)

    def as_dict(self) -> dict[str, object]:
        """Readable marginals keyed by element / charge / bond name (for printing, JSON)."""
        return {
            "num_molecules": self.num_molecules,
            "atom_types": {s: float(p) for s, p in zip(ATOM_VOCAB, self.atom_types, strict=True)},
            "charges": {
                q: float(p) for q, p in zip(range(CHARGE_MIN, CHARGE_MAX + 1), self.charges, strict=True)
            },
            "bond_types": {b: float(p) for b, p in zip(BOND_TYPES, self.bond_types, strict=True)},
            "num_atoms": {n: float(p) for n, p in enumerate(self.num_atoms) if p > 0},
        }


def _normalise(counts: torch.Tensor) -> torch.Tensor:
    total = counts.sum()
    return counts.double() / total if total > 0 else counts.double()


def molecule_marginals(dataset: Iterable[Data]) -> MoleculeMarginals:
    """Atom-count histogram, atom/charge/bond marginals and the SMILES set of a molecule set.

    Works on any iterable of molecule ``Data`` (QM9, SDF, GEOM). ``smiles`` collects
    ``data.smiles`` where present. Bond marginals count each unordered pair once:
    ``n (n - 1) / 2`` pairs per molecule, the unbonded ones as class 0.
    """
    if isinstance(dataset, QM9):  # vectorised path over the stored tensors, same numbers
        n = dataset._node_ptr.diff()
        directed = dataset._edge_index[0] < dataset._edge_index[1]
        bonds = torch.bincount(dataset._bond_type[directed].long(), minlength=len(BOND_TYPES))
        atom = torch.bincount(dataset._atom_type.long(), minlength=len(ATOM_VOCAB))
        charge = torch.bincount(dataset._charge.long() - CHARGE_MIN, minlength=NUM_CHARGES)
        n_hist = torch.bincount(n) if len(n) else torch.zeros(1, dtype=torch.long)
        smiles = frozenset(dataset.smiles)
        num = len(dataset)
    else:
        atom = torch.zeros(len(ATOM_VOCAB), dtype=torch.long)
        charge = torch.zeros(NUM_CHARGES, dtype=torch.long)
        bonds = torch.zeros(len(BOND_TYPES), dtype=torch.long)
        sizes: list[int] = []
        found: set[str] = set()
        for data in dataset:
            sizes.append(int(data.atom_type.shape[0]))
            atom += torch.bincount(data.atom_type, minlength=len(ATOM_VOCAB))
            charge += torch.bincount(data.charge - CHARGE_MIN, minlength=NUM_CHARGES)
            directed = data.edge_index[0] < data.edge_index[1]
            bonds += torch.bincount(data.bond_type[directed], minlength=len(BOND_TYPES))
            if getattr(data, "smiles", None) is not None:
                found.add(data.smiles)
        n = torch.tensor(sizes, dtype=torch.long)
        n_hist = torch.bincount(n) if sizes else torch.zeros(1, dtype=torch.long)
        smiles = frozenset(found)
        num = len(sizes)
    bonds = bonds.clone()
    bonds[0] = int((n * (n - 1) // 2).sum()) - int(bonds[1:].sum())  # unbonded pairs
    return MoleculeMarginals(
        num_molecules=num,
        num_atoms=_normalise(n_hist),
        atom_types=_normalise(atom),
        charges=_normalise(charge),
        bond_types=_normalise(bonds),
        num_atoms_count=n_hist,
        atom_type_count=atom,
        charge_count=charge,
        bond_type_count=bonds,
        smiles=smiles,
    )
