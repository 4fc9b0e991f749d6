"""The one SMILES key geo3d compares molecules by (uniqueness, novelty, QM9's check against its CSV).

Canonical, hydrogens implicit, no stereo (a 3D model's stereo is not what
these comparisons are about, and training SMILES often lack it), through a
SMILES round trip so that a molecule and a SMILES string of the same compound
give the same key. The round trip changes none of QM9's 97,731 training keys.
"""

from __future__ import annotations

from collections.abc import Iterable

from rdkit import Chem, rdBase


def _canonical(smiles: str) -> str | None:
    with rdBase.BlockLogs():
        mol = Chem.MolFromSmiles(smiles)
    return None if mol is None else Chem.MolToSmiles(mol, isomericSmiles=False)


def canonical_smiles(mol: Chem.Mol) -> str:
    """The key of a molecule RDKit has sanitised (for one that may be invalid, see
    :func:`geo3d.metrics.molecules.valid_smiles`). Fragments stay (``"C.O"``)."""
    with rdBase.BlockLogs():
        smiles = Chem.MolToSmiles(Chem.RemoveHs(mol), isomericSmiles=False)
    return _canonical(smiles) or smiles


class CanonicalSmiles(frozenset):
    """A set of SMILES already canonicalised by :func:`canonical_smiles_set` (not redone for novelty)."""


def canonical_smiles_set(smiles: Iterable[str], unparsable: list[int] | None = None) -> CanonicalSmiles:
    """The keys (as :func:`canonical_smiles`) of SMILES strings.

    Strings RDKit cannot parse are left out; their positions are appended to
    ``unparsable`` when a list is given. Canonicalise a large training set once
    with this and pass the result to ``evaluate_molecules`` to skip the work.
    """
    out = set()
    for k, s in enumerate(smiles):
        c = _canonical(s.strip()) if s.strip() else None  # "" would parse as an empty molecule
        if c is not None:
            out.add(c)
        elif unparsable is not None:
            unparsable.append(k)
    return CanonicalSmiles(out)
