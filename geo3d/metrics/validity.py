"""Validity of generated molecules: RDKit sanitisation of the explicit-H graph, and the SMILES key of a valid one.

Hydrogens are never added: every atom is marked "no implicit H" before RDKit
sees it, so a carbon that lost a hydrogen is a radical, not silently repaired.
"""

from __future__ import annotations

from rdkit import Chem, rdBase

from geo3d.data.smiles import canonical_smiles

Metrics = dict[str, float | int]  # what every metric function returns: flat and JSON-serialisable


def explicit_copy(mol: Chem.Mol) -> Chem.Mol:
    """A copy in which no atom may gain implicit hydrogens (the graph is taken as complete)."""
    out = Chem.Mol(mol)
    for atom in out.GetAtoms():
        atom.SetNoImplicit(True)
    return out


def sanitized(mol: Chem.Mol | None) -> Chem.Mol | None:
    """The sanitised explicit-H copy of ``mol``, or ``None`` if RDKit rejects it (or it is empty)."""
    if mol is None or mol.GetNumAtoms() == 0:
        return None
    out = explicit_copy(mol)
    try:
        with rdBase.BlockLogs():
            Chem.SanitizeMol(out)
    except (ValueError, RuntimeError):  # MolSanitizeException is a ValueError
        return None
    return out


def valid_smiles(mol: Chem.Mol | None) -> str | None:
    """The SMILES key (:func:`geo3d.data.smiles.canonical_smiles`) of a valid molecule; ``None`` if
    RDKit cannot sanitise its explicit-H copy."""
    clean = sanitized(mol)
    if clean is None:
        return None
    try:
        return canonical_smiles(clean)
    except (ValueError, RuntimeError):
        return None
