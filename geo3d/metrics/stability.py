"""Atom and molecule stability: allowed valences per element and charge, the MiDi / EQGAT-diff (legacy) table and a corrected one."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from rdkit import Chem

from geo3d.metrics.validity import Metrics

Variant = Literal["legacy", "corrected"]

# The allowed-valence table of MiDi (midi/analysis/rdkit_functions.py) and
# EQGAT-diff (experiments/sampling/utils.py), value for value. A tuple applies
# to every formal charge; a dict is looked up by charge and, as in their code,
# falls back to the neutral entry for a charge it does not list.
LEGACY_VALENCES: dict[str, tuple[int, ...] | dict[int, tuple[int, ...]]] = {
    "H": {0: (1,), 1: (0,), -1: (0,)},
    "C": {0: (3, 4), 1: (3,), -1: (3,)},
    "N": {0: (2, 3), 1: (2, 3, 4), -1: (2,)},
    "O": {0: (2,), 1: (3,), -1: (1,)},
    "F": {0: (1,), -1: (0,)},
    "B": (3,),
    "Al": (3,),
    "Si": (4,),
    "P": {0: (3, 5), 1: (4,)},
    "S": {0: (2, 6), 1: (2, 3), 2: (4,), 3: (5,), -1: (3,)},
    "Cl": (1,),
    "As": (3,),
    "Br": {0: (1,), 1: (2,)},
    "I": (1,),
    "Hg": (1, 2),
    "Bi": (3, 5),
    "Se": (2, 4, 6),
}

# Closed-shell valences per element and formal charge. First-row atoms follow
# the octet rule with the isoelectronic shift (N+ like C, O+ like N, O- like F,
# B- like C); heavier main-group atoms add their expanded valences (S(IV)/S(VI),
# P(V), As(V), I(III)/I(V)). No radicals (neutral C=3, N=2 and N+=2/3 of the
# legacy table are under-valent atoms, i.e. a lost hydrogen), and a charge that
# is not listed is unstable rather than judged by the neutral entry.
CORRECTED_VALENCES: dict[str, dict[int, tuple[int, ...]]] = {
    "H": {0: (1,)},
    "B": {0: (3,), -1: (4,)},
    "C": {0: (4,), 1: (3,), -1: (3,)},
    "N": {0: (3,), 1: (4,), -1: (2,)},
    "O": {0: (2,), 1: (3,), -1: (1,)},
    "F": {0: (1,), -1: (0,)},
    "Al": {0: (3,), -1: (4,)},
    "Si": {0: (4,)},
    "P": {0: (3, 5), 1: (4,), -1: (2,)},
    "S": {0: (2, 4, 6), 1: (3,), -1: (1,)},
    "Cl": {0: (1,), 1: (2,), -1: (0,)},
    "As": {0: (3, 5), 1: (4,)},
    "Se": {0: (2, 4, 6), 1: (3,), -1: (1,)},
    "Br": {0: (1,), 1: (2,), -1: (0,)},
    "I": {0: (1, 3, 5), 1: (2,), -1: (0,)},
    "Hg": {0: (2,)},
    "Bi": {0: (3, 5)},
}

_INTEGER_ORDERS = {
    Chem.BondType.SINGLE: 1,
    Chem.BondType.DOUBLE: 2,
    Chem.BondType.TRIPLE: 3,
}
BOND_NAMES = {
    Chem.BondType.SINGLE: "single",
    Chem.BondType.DOUBLE: "double",
    Chem.BondType.TRIPLE: "triple",
    Chem.BondType.AROMATIC: "aromatic",
}


def _bond_counts(mol: Chem.Mol) -> list[tuple[int, int, int]]:
    """Per atom: (sum of single/double/triple orders, number of aromatic bonds, number of other bonds)."""
    counts = [[0, 0, 0] for _ in range(mol.GetNumAtoms())]
    for bond in mol.GetBonds():
        kind = bond.GetBondType()
        for idx in (bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()):
            if kind in _INTEGER_ORDERS:
                counts[idx][0] += _INTEGER_ORDERS[kind]
            elif kind == Chem.BondType.AROMATIC:
                counts[idx][1] += 1
            else:
                counts[idx][2] += 1
    return [(s, k, o) for s, k, o in counts]


def _legacy_allowed(symbol: str, charge: int) -> tuple[int, ...]:
    entry = LEGACY_VALENCES.get(symbol)
    if entry is None:
        return ()  # their code raises KeyError; here such an atom is simply unstable
    if isinstance(entry, tuple):
        return entry
    return entry.get(charge, entry[0])


def stable_atoms(mol: Chem.Mol, variant: Variant = "corrected") -> list[bool]:
    """Whether each atom's valence (from the bonds present, no implicit H) is allowed.

    ``"legacy"`` reproduces MiDi's / EQGAT-diff's ``check_stability``: valence =
    sum of bond orders where an aromatic bond counts **1**, not 1.5 (their
    ``edge_types[edge_types == 4] = 1.5`` writes into an integer tensor, which
    truncates 1.5 to 1), checked against :data:`LEGACY_VALENCES`. With neutral
    C allowed 3 and neutral N allowed 2 this passes benzene, but it also passes a
    methyl radical and an ammonium N+ that lost an H, and it rejects S(IV)
    (sulfoxides) and aromatic O+ (pyrylium).

    ``"corrected"`` checks :data:`CORRECTED_VALENCES`. An atom without aromatic
    bonds needs ``sum of orders`` in the table. An atom with ``k`` aromatic bonds
    and integer-order sum ``s`` must be able to sit in a Kekulé structure: its
    aromatic bonds are single except at most one double, so some allowed ``v``
    must satisfy ``v - s in {k, k + 1}``, and ``k`` must be 2 or 3 (an aromatic
    bond belongs to a ring; an sp2 atom has at most three). This is the
    per-atom part of Kekulé feasibility (benzene C: 1 + 1.5 + 1.5 = 4, but
    pyrrole N-H and furan O, which a plain 1.5 sum would call 4 and 3, also
    pass); whether the whole ring can be kekulized is left to ``validity``.

    Bonds of any other type (dative, zero, ...) make both atoms unstable.
    """
    flags = []
    for atom, (s, k, other) in zip(mol.GetAtoms(), _bond_counts(mol), strict=True):
        symbol, charge = atom.GetSymbol(), atom.GetFormalCharge()
        if other:
            flags.append(False)
        elif variant == "legacy":
            flags.append(s + k in _legacy_allowed(symbol, charge))
        elif variant == "corrected":
            allowed = CORRECTED_VALENCES.get(symbol, {}).get(charge, ())
            if k == 0:
                flags.append(s in allowed)
            else:
                flags.append(k in (2, 3) and any(v - s in (k, k + 1) for v in allowed))
        else:
            raise ValueError(f"variant must be 'legacy' or 'corrected', not {variant!r}")
    return flags


def stability(mols: Sequence[Chem.Mol | None], variant: Variant = "corrected") -> Metrics:
    """Atom stability (stable atoms / all atoms) and molecule stability (all atoms stable / molecules).

    As in MiDi/EQGAT-diff both are over every molecule given, stable or not;
    unreadable (``None``) and empty molecules count as unstable molecules with no atoms.
    """
    n_atoms = n_stable_atoms = n_stable_mols = 0
    for mol in mols:
        if mol is None or mol.GetNumAtoms() == 0:
            continue
        flags = stable_atoms(mol, variant)
        n_atoms += len(flags)
        n_stable_atoms += sum(flags)
        n_stable_mols += all(flags)
    suffix = "_legacy" if variant == "legacy" else ""
    out: Metrics = {}
    if n_atoms:
        out[f"atom_stability{suffix}"] = n_stable_atoms / n_atoms
    if mols:
        out[f"mol_stability{suffix}"] = n_stable_mols / len(mols)
    return out
