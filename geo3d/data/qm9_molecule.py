"""One QM9 row to a molecule: bonds and charges from the geometry, checked against the CSV SMILES.

The steps and why (Hückel connectivity, resonance forms kept with a note) are in
:mod:`geo3d.data.qm9`'s docstring; the outcome of each row is ``("ok", id, note, arrays)``
or ``("excluded", id, reason, detail)`` with a reason of
:data:`geo3d.data.qm9.EXCLUSION_REASONS`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from collections.abc import Iterator, Sequence

import numpy as np
from rdkit import Chem
from rdkit.Chem import rdDetermineBonds

from geo3d.data.molecules import ATOM_INDEX, CHARGE_MAX, CHARGE_MIN, MoleculeError, mol_to_data
from geo3d.data.qm9_csv import parse_elements, parse_xyz
from geo3d.data.smiles import canonical_smiles

_LIBC = None


@contextlib.contextmanager
def _quiet_fds() -> Iterator[None]:
    """Silence C-level stdout/stderr (YAeHMOP prints a warning per short O-H/N-H distance)."""
    global _LIBC
    try:
        if _LIBC is None:
            _LIBC = ctypes.CDLL(None)
        sys.stdout.flush()
        sys.stderr.flush()
        saved = [os.dup(1), os.dup(2)]
    except (OSError, AttributeError, ValueError):  # no real fds (e.g. embedded): just run
        yield
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        yield
    finally:
        _LIBC.fflush(None)
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


def mol_from_xyz(elements: Sequence[str], pos: np.ndarray) -> Chem.Mol:
    """A bond-less RDKit molecule with one conformer (``pos [N, 3]``, Å)."""
    rw = Chem.RWMol()
    for sym in elements:
        rw.AddAtom(Chem.Atom(sym))
    conf = Chem.Conformer(len(elements))
    for k, xyz in enumerate(np.asarray(pos, dtype=np.float64).tolist()):
        conf.SetAtomPosition(k, xyz)
    rw.AddConformer(conf, assignId=True)
    return rw.GetMol()


def derive_bonds(mol: Chem.Mol, charge: int = 0, use_hueckel: bool = True) -> Chem.Mol:
    """Bonds and formal charges from the 3D geometry (RDKit's xyz2mol), in a new molecule.

    Raises:
        ValueError: RDKit finds no valence-consistent bond assignment.
    """
    out = Chem.Mol(mol)
    with _quiet_fds():
        rdDetermineBonds.DetermineBonds(out, useHueckel=use_hueckel, charge=charge)
    return out


def _skeleton(mol: Chem.Mol) -> str:
    """Canonical SMILES of the graph with every bond single and no charges: identical for two
    Lewis structures of one molecule (same atoms, same bonded pairs, same H on each atom)."""
    rw = Chem.RWMol(Chem.AddHs(mol))
    for atom in rw.GetAtoms():
        atom.SetFormalCharge(0)
        atom.SetNoImplicit(True)
        atom.SetNumExplicitHs(0)
        atom.SetIsAromatic(False)
    for bond in rw.GetBonds():
        bond.SetBondType(Chem.BondType.SINGLE)
        bond.SetIsAromatic(False)
    rw.UpdatePropertyCache(strict=False)
    return Chem.MolToSmiles(rw, isomericSmiles=False, canonical=True)


def compare_to_smiles(mol: Chem.Mol, smiles: str) -> str:
    """``"match"``, ``"resonance"`` (same skeleton, other Lewis structure), ``"mismatch"`` or
    ``"unparsable"`` (RDKit cannot read ``smiles``)."""
    ref = Chem.MolFromSmiles(smiles)
    if ref is None:
        return "unparsable"
    if canonical_smiles(mol) == canonical_smiles(ref):
        return "match"
    return "resonance" if _skeleton(mol) == _skeleton(ref) else "mismatch"


# One processed molecule, as plain arrays (cheap to send between processes).
Processed = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]


def process_qm9_molecule(
    idx: int, smiles: str, elements: str, xyz: str, where: str = "row", accept_resonance: bool = True
) -> tuple[str, int, str, Processed | str]:
    """One CSV row -> ``("ok", idx, note, arrays)`` or ``("excluded", idx, reason, detail)``.

    ``arrays`` = ``(pos [N, 3] float32 (mean-centred), atom_type [N] int8,
    charge [N] int8, edge_index [2, 2B] int32 (both directions), bond_type [2B]
    int8, canonical SMILES)``; ``note`` is ``""`` or ``"resonance_form"``.

    Raises:
        QM9FormatError: unreadable Elements / XYZ_Ang (a broken file, not a molecule to skip).
    """
    symbols = parse_elements(elements, where)
    pos = parse_xyz(xyz, len(symbols), where)
    bad = [s for s in symbols if s not in ATOM_INDEX]
    if bad:
        return "excluded", idx, "element_not_in_vocab", f"element {bad[0]!r}"
    try:
        mol = derive_bonds(mol_from_xyz(symbols, pos), charge=0)
    except Exception as exc:  # RDKit raises ValueError/RuntimeError subclasses here
        return "excluded", idx, "bond_determination_failed", str(exc).splitlines()[0][:160]
    verdict = compare_to_smiles(mol, smiles)
    note = ""
    if verdict == "unparsable":
        return "excluded", idx, "reference_smiles_unparsable", smiles
    if verdict == "mismatch" or (verdict == "resonance" and not accept_resonance):
        return "excluded", idx, "smiles_mismatch", f"derived {canonical_smiles(mol)} vs csv {smiles}"
    if verdict == "resonance":
        note = "resonance_form"
    charges = [a.GetFormalCharge() for a in mol.GetAtoms()]
    if any(not CHARGE_MIN <= q <= CHARGE_MAX for q in charges):
        return "excluded", idx, "charge_out_of_range", f"charges {sorted(set(charges))}"
    try:
        data = mol_to_data(mol, source=f"QM9 id {idx}")
    except MoleculeError as exc:
        return "excluded", idx, "not_representable", str(exc)
    p = data.pos.double()
    p = (p - p.mean(dim=0, keepdim=True)).float()  # plain mean, as EQGAT-diff
    arrays = (
        p.numpy(),
        data.atom_type.numpy().astype(np.int8),
        data.charge.numpy().astype(np.int8),
        data.edge_index.numpy().astype(np.int32),
        data.bond_type.numpy().astype(np.int8),
        canonical_smiles(mol),
    )
    return "ok", idx, note, arrays
