"""Molecules as PyG ``Data`` and back to RDKit: the representation EQGAT-diff trains on.

Layout (DESIGN.md): ``pos [N, 3]`` (Å), ``atom_type [N]`` (index into
:data:`ATOM_VOCAB`), ``charge [N]`` (formal charge, an integer), bonds as
``edge_index [2, 2 * n_bonds]`` (both directions) with ``bond_type [2 * n_bonds]``
(:data:`BOND_TYPES`; "no bond" is never stored). Bonds are Kekulé: aromatic
rings become alternating single/double bonds, so the aromatic class is only
used by data sets that keep it (GEOM).
"""

from __future__ import annotations

import torch
from rdkit import Chem
from torch_geometric.data import Data

# EQGAT-diff's element vocabulary (the same for QM9 and GEOM-Drugs).
ATOM_VOCAB: tuple[str, ...] = (
    "H",
    "B",
    "C",
    "N",
    "O",
    "F",
    "Al",
    "Si",
    "P",
    "S",
    "Cl",
    "As",
    "Br",
    "I",
    "Hg",
    "Bi",
)
ATOM_INDEX = {sym: k for k, sym in enumerate(ATOM_VOCAB)}
# Formal charges as classes: class = charge - CHARGE_MIN.
CHARGE_MIN, CHARGE_MAX = -2, 3
NUM_CHARGES = CHARGE_MAX - CHARGE_MIN + 1
# Bond classes; 0 = no bond (only used by models, never stored in edge_index).
BOND_TYPES: tuple[str, ...] = ("none", "single", "double", "triple", "aromatic")
_RD_BOND = {
    1: Chem.BondType.SINGLE,
    2: Chem.BondType.DOUBLE,
    3: Chem.BondType.TRIPLE,
    4: Chem.BondType.AROMATIC,
}
_BOND_CLASS = {v: k for k, v in _RD_BOND.items()}


class MoleculeError(ValueError):
    """A molecule geo3d cannot represent; the message names the source and the field."""


def mol_to_data(mol: Chem.Mol, source: str = "molecule", conformer: int = -1, kekulize: bool = True) -> Data:
    """An RDKit molecule with explicit hydrogens and a 3D conformer as ``Data``.

    Raises:
        MoleculeError: no conformer, NaN coordinates, an element outside
            :data:`ATOM_VOCAB`, a charge outside [-2, 3], or an unsupported bond.
    """
    if mol.GetNumConformers() == 0:
        raise MoleculeError(f"{source}: no 3D conformer")
    if kekulize:
        mol = Chem.Mol(mol)
        try:
            Chem.Kekulize(mol, clearAromaticFlags=True)
        except Chem.KekulizeException as exc:
            raise MoleculeError(f"{source}: cannot kekulize ({exc})") from exc
    pos = torch.tensor(mol.GetConformer(conformer).GetPositions(), dtype=torch.float32)
    if not bool(torch.isfinite(pos).all()):
        raise MoleculeError(f"{source}: NaN or inf coordinates")
    atom_type, charge = [], []
    for atom in mol.GetAtoms():
        sym = atom.GetSymbol()
        if sym not in ATOM_INDEX:
            raise MoleculeError(
                f"{source}: atom {atom.GetIdx()} is {sym!r}, not in the vocabulary {ATOM_VOCAB}"
            )
        q = atom.GetFormalCharge()
        if not CHARGE_MIN <= q <= CHARGE_MAX:
            raise MoleculeError(f"{source}: atom {atom.GetIdx()} has formal charge {q}, outside [-2, 3]")
        atom_type.append(ATOM_INDEX[sym])
        charge.append(q)
    rows, types = [], []
    for bond in mol.GetBonds():
        kind = _BOND_CLASS.get(bond.GetBondType())
        if kind is None:
            raise MoleculeError(f"{source}: bond {bond.GetIdx()} has unsupported type {bond.GetBondType()}")
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        rows += [(i, j), (j, i)]
        types += [kind, kind]
    edge_index = torch.tensor(rows, dtype=torch.long).T.reshape(2, -1)
    return Data(
        pos=pos,
        atom_type=torch.tensor(atom_type, dtype=torch.long),
        charge=torch.tensor(charge, dtype=torch.long),
        edge_index=edge_index,
        bond_type=torch.tensor(types, dtype=torch.long),
        num_nodes=len(atom_type),
    )


def build_mol(
    atom_type: torch.Tensor,
    charge: torch.Tensor,
    bond_matrix: torch.Tensor,
    pos: torch.Tensor | None = None,
    sanitize: bool = False,
) -> Chem.Mol:
    """An RDKit molecule from predicted atoms, charges and a symmetric ``[N, N]`` bond-class matrix.

    Exactly what a generator predicted: no bonds inferred from distances and
    no hydrogens added. With ``sanitize=False`` the molecule is returned even
    if RDKit would reject it (metrics decide what to make of it).
    """
    mol = Chem.RWMol()
    for a, q in zip(atom_type.tolist(), charge.tolist(), strict=True):
        atom = Chem.Atom(ATOM_VOCAB[a])
        atom.SetFormalCharge(int(q))
        atom.SetNoImplicit(True)  # explicit hydrogens only
        mol.AddAtom(atom)
    n = len(atom_type)
    bonds = torch.triu(bond_matrix, diagonal=1).nonzero().tolist()
    for i, j in bonds:
        mol.AddBond(i, j, _RD_BOND[int(bond_matrix[i, j])])
    if pos is not None:
        conf = Chem.Conformer(n)
        for k, xyz in enumerate(pos.tolist()):
            conf.SetAtomPosition(k, xyz)
        mol.AddConformer(conf, assignId=True)
    out = mol.GetMol()
    if sanitize:
        Chem.SanitizeMol(out)
    return out


def data_to_mol(data: Data, sanitize: bool = False) -> Chem.Mol:
    """Inverse of :func:`mol_to_data` (bonds from ``edge_index``/``bond_type``)."""
    return build_mol(data.atom_type, data.charge, bond_matrix(data), data.pos, sanitize=sanitize)


def bond_matrix(data: Data) -> torch.Tensor:
    """``[N, N]`` symmetric bond-class matrix of one molecule (0 = no bond)."""
    n = int(data.atom_type.shape[0])
    matrix = torch.zeros(n, n, dtype=torch.long)
    if data.edge_index.numel():
        matrix[data.edge_index[0], data.edge_index[1]] = data.bond_type
    return matrix
