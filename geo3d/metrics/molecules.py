"""Quality metrics for generated 3D molecules (EQGAT-diff / MiDi style), with their known bugs fixed.

Input: RDKit molecules with **explicit hydrogens as atoms** and a 3D conformer,
exactly as a generator predicted them (``geo3d.data.molecules.build_mol``, or an
SDF read with ``removeHs=False, sanitize=False`` — see :func:`read_generated_sdf`). ``None``
stands for a record that could not be read: it counts as a molecule that is
invalid and unstable, never as a dropped sample.

One entry point, :func:`evaluate_molecules`, returns a flat dict of numbers:

* ``atom_stability`` / ``mol_stability`` (corrected) and ``*_legacy`` (the
  MiDi / EQGAT-diff table and arithmetic, for comparison with published tables);
  see :func:`stable_atoms` for the exact difference.
* ``validity`` (RDKit sanitisation of the whole molecule succeeds),
  ``connected_validity`` (valid and one fragment: what EQGAT-diff calls
  "validity"), ``single_fragment``.
* ``uniqueness`` (true uniqueness, see :func:`evaluate_molecules`), ``novelty``.
* ``qed``, ``sa_score`` and ``sa_normalized`` over the unique valid molecules.
* against a reference set: ``atom_type_tv``, ``bond_type_tv``, ``bond_length_w1``
  (+ per bond type), ``bond_angle_w1`` (+ per centre element).
* optional: ``pb_*`` (PoseBusters) and ``xtb_*`` (GFN2-xTB relaxation with tblite),
  only when those packages are installed (``pip install 'geo3d[metrics]'``).

Hydrogens are never added: every atom is marked "no implicit H" before RDKit
sees it, so a carbon that lost a hydrogen is a radical, not silently repaired.
(MiDi and EQGAT-diff build their molecules without that flag, so sanitisation
fills missing hydrogens in implicitly: validity comes out the same, but such a
molecule gets the SMILES, uniqueness, novelty, QED and SA of the intact one.)
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from rdkit import Chem, RDConfig, rdBase
from rdkit.Chem import QED, Descriptors
from rich.console import Console
from rich.table import Table
from scipy.stats import wasserstein_distance

from geo3d.data.smiles import CanonicalSmiles, canonical_smiles, canonical_smiles_set
from geo3d.metrics.library_logs import captured_library_logs

Variant = Literal["legacy", "corrected"]
Metrics = dict[str, float | int]

INSTALL_HINT = "pip install 'geo3d[metrics]'"

# ---------------------------------------------------------------------------
# Valence tables
# ---------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------
# Validity, SMILES, uniqueness, novelty
# ---------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------
# QED and SA
# ---------------------------------------------------------------------------

_SASCORER = None


def _sascorer():
    """RDKit Contrib's SA_Score module (Ertl & Schuffenhauer), or ``None`` if this RDKit lacks it."""
    global _SASCORER
    if _SASCORER is None:
        path = os.path.join(RDConfig.RDContribDir, "SA_Score")
        if not os.path.isfile(os.path.join(path, "sascorer.py")):
            return None
        if path not in sys.path:
            sys.path.append(path)
        import sascorer

        _SASCORER = sascorer
    return _SASCORER


def drug_likeness(smiles: Iterable[str]) -> Metrics:
    """Mean QED, SA score (1 easy .. 10 hard) and normalised SA ``(10 - SA) / 9`` over SMILES."""
    scorer = _sascorer()
    qeds, sas = [], []
    for s in smiles:
        with rdBase.BlockLogs():
            mol = Chem.MolFromSmiles(s)
        if mol is None:
            continue
        try:
            qeds.append(QED.qed(mol))
        except (ValueError, RuntimeError):
            pass
        if scorer is not None:
            try:
                sas.append(scorer.calculateScore(mol))
            except (ValueError, RuntimeError, ZeroDivisionError):
                pass
    out: Metrics = {}
    if qeds:
        out["qed"] = float(np.mean(qeds))
    if sas:
        out["sa_score"] = float(np.mean(sas))
        out["sa_normalized"] = float(np.mean([(10.0 - x) / 9.0 for x in sas]))
    return out


# ---------------------------------------------------------------------------
# Distribution distances
# ---------------------------------------------------------------------------


def _bond_name(bond: Chem.Bond) -> str:
    return BOND_NAMES.get(bond.GetBondType(), str(bond.GetBondType()).lower())


@dataclass
class MoleculeStatistics:
    """Histograms a set of molecules is compared on (MiDi's ``compute_statistics`` ingredients).

    ``bond_types`` counts every unordered atom pair, ``"none"`` for unbonded
    pairs. Lengths (Å) are per bond type; angles (degrees) are per element of
    the centre atom, over every pair of its bonded neighbours.
    ``angle_centres`` counts atoms with at least two neighbours, per element.
    """

    n_molecules: int = 0
    atom_types: Counter = field(default_factory=Counter)
    bond_types: Counter = field(default_factory=Counter)
    bond_lengths: dict[str, list[float]] = field(default_factory=dict)
    bond_angles: dict[str, list[float]] = field(default_factory=dict)
    angle_centres: Counter = field(default_factory=Counter)

    @classmethod
    def from_molecules(cls, mols: Iterable[Chem.Mol | None]) -> MoleculeStatistics:
        """Statistics of every readable molecule (valid or not, as MiDi does); ``None`` is skipped."""
        stats = cls()
        for mol in mols:
            if mol is not None:
                stats.add(mol)
        return stats

    def add(self, mol: Chem.Mol) -> None:
        """Add one molecule (geometry only if it has a conformer)."""
        n = mol.GetNumAtoms()
        self.n_molecules += 1
        symbols = [a.GetSymbol() for a in mol.GetAtoms()]
        self.atom_types.update(symbols)
        bonds = list(mol.GetBonds())
        self.bond_types.update(_bond_name(b) for b in bonds)
        self.bond_types["none"] += n * (n - 1) // 2 - len(bonds)
        if mol.GetNumConformers() == 0:
            return
        pos = np.asarray(mol.GetConformer().GetPositions(), dtype=np.float64)
        for b in bonds:
            i, j = b.GetBeginAtomIdx(), b.GetEndAtomIdx()
            self.bond_lengths.setdefault(_bond_name(b), []).append(float(np.linalg.norm(pos[i] - pos[j])))
        for atom in mol.GetAtoms():
            nbrs = [a.GetIdx() for a in atom.GetNeighbors()]
            if len(nbrs) < 2:
                continue
            centre = atom.GetIdx()
            self.angle_centres[symbols[centre]] += 1
            vec = pos[nbrs] - pos[centre]
            norm = np.linalg.norm(vec, axis=1)
            angles = self.bond_angles.setdefault(symbols[centre], [])
            for a in range(len(nbrs)):
                for b in range(a + 1, len(nbrs)):
                    if norm[a] == 0.0 or norm[b] == 0.0:
                        continue  # coincident atoms: the angle is undefined, not 0 or 90
                    cos = float(np.dot(vec[a], vec[b]) / (norm[a] * norm[b]))
                    angles.append(math.degrees(math.acos(min(1.0, max(-1.0, cos)))))


def total_variation(generated: Counter, reference: Counter) -> float:
    """MiDi's "TV": ``sum_k |p_k - q_k|`` over the union of categories (twice the textbook TV; range 0..2)."""
    g_total, r_total = sum(generated.values()), sum(reference.values())
    if g_total == 0 or r_total == 0:
        return float("nan")
    keys = set(generated) | set(reference)
    return float(sum(abs(generated[k] / g_total - reference[k] / r_total) for k in keys))


def _weighted_w1(
    generated: dict[str, list[float]], reference: dict[str, list[float]], weights: Counter, prefix: str
) -> Metrics:
    per_type: Metrics = {}
    num = den = 0.0
    for key in sorted(reference):
        if not generated.get(key) or not reference[key]:
            continue
        w1 = float(wasserstein_distance(generated[key], reference[key]))
        per_type[f"{prefix}_{key}"] = w1
        num += weights[key] * w1
        den += weights[key]
    return {prefix: num / den, **per_type} if den > 0 else per_type


def distribution_distances(generated: MoleculeStatistics, reference: MoleculeStatistics) -> Metrics:
    """TV of atom and bond types, W1 of bond lengths (per type) and bond angles (per centre element).

    W1 is ``scipy.stats.wasserstein_distance`` on the raw values (MiDi bins
    lengths at 0.01 Å and angles at 0.1° first). The aggregate ``bond_length_w1``
    weights the per-type values by the reference's bond counts (MiDi weights by
    type frequency among *all pairs*, so its weights sum to the bond fraction,
    not 1); ``bond_angle_w1`` weights by the reference's count of atoms with
    ≥ 2 neighbours (MiDi: type frequency × P(valency ≥ 2)). A type missing from
    either set has no per-type value and is left out of the aggregate.

    Bond types come from the molecules as given. In the released MiDi and
    EQGAT-diff code ``check_stability`` rewrites the aromatic class in place
    (to 1) before these distances are taken, so their EdgeTypesTV and
    BondLengthsW1 see generated aromatic bonds as single; that is not reproduced.
    """
    out: Metrics = {}
    if generated.atom_types and reference.atom_types:
        out["atom_type_tv"] = total_variation(generated.atom_types, reference.atom_types)
    if sum(generated.bond_types.values()) and sum(reference.bond_types.values()):
        out["bond_type_tv"] = total_variation(generated.bond_types, reference.bond_types)
    ref_bonds = Counter({k: len(v) for k, v in reference.bond_lengths.items()})
    out.update(_weighted_w1(generated.bond_lengths, reference.bond_lengths, ref_bonds, "bond_length_w1"))
    out.update(
        _weighted_w1(generated.bond_angles, reference.bond_angles, reference.angle_centres, "bond_angle_w1")
    )
    return out


# ---------------------------------------------------------------------------
# Optional: PoseBusters and GFN2-xTB (tblite)
# ---------------------------------------------------------------------------


def optional_packages() -> dict[str, str | None]:
    """``{"posebusters": None or why not, "xtb": None or why not}`` without importing them."""
    return {
        "posebusters": None
        if importlib.util.find_spec("posebusters")
        else f"posebusters is not installed ({INSTALL_HINT})",
        "xtb": None if importlib.util.find_spec("tblite") else f"tblite is not installed ({INSTALL_HINT})",
    }


def _tracked(items: Sequence, description: str, enabled: bool) -> Iterator:
    if not enabled:
        yield from items
        return
    from rich.progress import track

    # stderr: stdout may be carrying JSON
    yield from track(items, description=description, console=Console(stderr=True), transient=True)


def posebusters_checks(
    mols: Sequence[Chem.Mol | None], config: str = "mol", progress: bool = False
) -> Metrics:
    """Pass rate of each PoseBusters check (config ``"mol"``: chemistry, geometry, energy ratio).

    Rates are over all molecules; an unreadable one fails every check.
    ``pb_valid`` = all checks pass. Molecules are given as their explicit-H
    copies, so a lost hydrogen shows up as a radical.
    """
    import pandas as pd
    from posebusters import PoseBusters

    buster = PoseBusters(config=config, max_workers=0)
    rows = []
    for mol in _tracked(mols, "PoseBusters", progress):
        if mol is None or mol.GetNumAtoms() == 0:
            rows.append(None)
            continue
        try:
            with rdBase.BlockLogs():
                table = buster.bust([explicit_copy(mol)])
        except Exception:  # a molecule PoseBusters itself chokes on fails every check
            rows.append(None)
            continue
        rows.append(table.iloc[0])
    columns = sorted({c for r in rows if r is not None for c in r.index})
    out: Metrics = {}
    if not mols:
        return out
    passed = np.zeros((len(mols), len(columns)), dtype=bool)
    for i, r in enumerate(rows):
        if r is not None:
            passed[i] = [bool(r[c]) if not pd.isna(r[c]) else False for c in columns]
    out["pb_valid"] = float(passed.all(axis=1).mean()) if columns else 0.0
    for k, c in enumerate(columns):
        key = "pb_" + re.sub(r"[^0-9a-z]+", "_", str(c).lower()).strip("_")
        out[key] = float(passed[:, k].mean())
    return out


def xtb_relaxation_energies(
    mols: Sequence[Chem.Mol | None], steps: int = 100, fmax: float = 0.05, progress: bool = False
) -> list[tuple[float, bool] | None]:
    """Per molecule: (E_initial - E_relaxed in kcal/mol, converged) after a short GFN2-xTB BFGS.

    tblite's ASE calculator, total charge = sum of formal charges, multiplicity
    from RDKit's radical count, BFGS for at most ``steps`` steps to ``fmax``
    eV/Å. A positive value is how far the generated geometry was above the
    nearest local minimum (a lower bound when not converged). ``None`` for
    invalid molecules and molecules without a conformer; ``(nan, False)`` for
    a calculation that failed (SCF not converged, unsupported element, ...).
    """
    from ase import Atoms, units
    from ase.optimize import BFGS
    from tblite.ase import TBLite

    ev_to_kcal_per_mol = 1.0 / (units.kcal / units.mol)

    out: list[tuple[float, bool] | None] = []
    for mol in _tracked(mols, "GFN2-xTB relaxation", progress):
        clean = sanitized(mol)
        if clean is None or clean.GetNumConformers() == 0:
            out.append(None)
            continue
        atoms = Atoms(
            numbers=[a.GetAtomicNum() for a in clean.GetAtoms()],
            positions=clean.GetConformer().GetPositions(),
        )
        charge = Chem.GetFormalCharge(clean)
        unpaired = Descriptors.NumRadicalElectrons(clean)
        atoms.calc = TBLite(method="GFN2-xTB", charge=charge, multiplicity=unpaired + 1, verbosity=0)
        try:
            e0 = atoms.get_potential_energy()
            opt = BFGS(atoms, logfile=None)
            converged = bool(opt.run(fmax=fmax, steps=steps))
            e1 = atoms.get_potential_energy()
        except Exception:  # tblite raises plain RuntimeError/ValueError on SCF or setup failure
            out.append((float("nan"), False))
            continue
        out.append(((e0 - e1) * ev_to_kcal_per_mol, converged))
    return out


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------


def evaluate_molecules(
    mols: Sequence[Chem.Mol | None],
    train_smiles: Iterable[str] | None = None,
    reference: Sequence[Chem.Mol | None] | MoleculeStatistics | None = None,
    *,
    posebusters: bool | None = None,
    xtb: bool | None = None,
    xtb_steps: int = 100,
    xtb_fmax: float = 0.05,
    xtb_max_molecules: int | None = None,
    progress: bool = False,
    notes: list[str] | None = None,
) -> Metrics:
    """Every metric for a set of generated molecules, as a flat JSON-serialisable dict (the metrics and
    arguments: :func:`_evaluate_molecules`).

    The log lines RDKit and PoseBusters write while scoring (one per failed sanitisation or
    embedding) are not printed but counted: ``rdkit_log_lines``, ``posebusters_log_lines``.
    """
    with captured_library_logs() as counts:
        out = _evaluate_molecules(
            mols,
            train_smiles,
            reference,
            posebusters=posebusters,
            xtb=xtb,
            xtb_steps=xtb_steps,
            xtb_fmax=xtb_fmax,
            xtb_max_molecules=xtb_max_molecules,
            progress=progress,
            notes=notes,
        )
    out["rdkit_log_lines"] = counts["rdkit"]
    out["posebusters_log_lines"] = counts["posebusters"]
    return out


def _evaluate_molecules(
    mols: Sequence[Chem.Mol | None],
    train_smiles: Iterable[str] | None = None,
    reference: Sequence[Chem.Mol | None] | MoleculeStatistics | None = None,
    *,
    posebusters: bool | None = None,
    xtb: bool | None = None,
    xtb_steps: int = 100,
    xtb_fmax: float = 0.05,
    xtb_max_molecules: int | None = None,
    progress: bool = False,
    notes: list[str] | None = None,
) -> Metrics:
    """Every metric for a set of generated molecules, as a flat JSON-serialisable dict.

    Counts: ``n_molecules`` (including ``n_unreadable`` ``None`` entries),
    ``n_atoms``, ``n_valid``, ``n_connected_valid``, ``n_unique``, ``n_novel``.
    Fractions are in [0, 1]. A metric that is undefined (no valid molecule, no
    training set, no reference, package missing) is absent, never 0 or NaN;
    if ``notes`` is a list, a sentence saying why is appended to it.

    * ``validity`` = ``n_valid / n_molecules``: ``Chem.SanitizeMol`` succeeds on
      the whole molecule, fragments allowed (EQGAT-diff's ``sanitize_validity``).
    * ``connected_validity``: valid and a single fragment (what EQGAT-diff
      reports as "validity"; MiDi instead sanitises only the largest fragment).
    * ``single_fragment``: fraction of molecules with one fragment (valid or not).
    * ``uniqueness`` = distinct canonical SMILES among the valid molecules /
      ``n_valid``, computed on the full list of valid molecules. The released
      EQGAT-diff code de-duplicates the valid SMILES (``canonicalize_list`` in
      ``compute_validity``) *before* its uniqueness step divides distinct by
      total, so it always reports 1.0.
    * ``novelty`` = unique valid SMILES not in ``train_smiles`` / ``n_unique``
      (both sides canonicalised the same way, see :func:`valid_smiles`).
    * ``qed``, ``sa_score`` (1 easy .. 10 hard), ``sa_normalized`` = (10 - SA) / 9
      (EQGAT-diff's "SA", higher is better): means over the unique valid molecules.
    * with ``reference`` (molecules or their :class:`MoleculeStatistics`): see
      :func:`distribution_distances`; the generated side uses every readable molecule.
    * ``posebusters`` / ``xtb``: ``None`` runs them when the package is
      installed, ``True`` requires it, ``False`` skips. See
      :func:`posebusters_checks` and :func:`xtb_relaxation_energies`; xTB runs
      on the valid molecules (the first ``xtb_max_molecules`` if given) and
      costs seconds per drug-sized molecule.
    """
    notes = [] if notes is None else notes
    mols = list(mols)
    n = len(mols)
    out: Metrics = {
        "n_molecules": n,
        "n_unreadable": sum(m is None for m in mols),
        "n_atoms": sum(m.GetNumAtoms() for m in mols if m is not None),
    }
    if n == 0:
        notes.append("no molecules: nothing to evaluate")
        return out
    out.update(stability(mols, "corrected"))
    out.update(stability(mols, "legacy"))

    smiles: list[str] = []
    n_connected_valid = n_single = 0
    for mol in mols:
        fragments = len(Chem.GetMolFrags(mol)) if mol is not None and mol.GetNumAtoms() else 0
        n_single += fragments == 1
        s = valid_smiles(mol)
        if s is not None:
            smiles.append(s)
            n_connected_valid += fragments == 1
    n_valid = len(smiles)
    out.update(
        n_valid=n_valid,
        validity=n_valid / n,
        n_connected_valid=n_connected_valid,
        connected_validity=n_connected_valid / n,
        single_fragment=n_single / n,
    )
    unique = sorted(set(smiles))
    out["n_unique"] = len(unique)
    if n_valid:
        out["uniqueness"] = len(unique) / n_valid
    else:
        notes.append("uniqueness, novelty, QED, SA: no valid molecule")
    if train_smiles is None:
        notes.append("novelty: no training SMILES given")
    elif unique:
        train = (
            train_smiles if isinstance(train_smiles, CanonicalSmiles) else canonical_smiles_set(train_smiles)
        )
        novel = [s for s in unique if s not in train]
        out["n_novel"] = len(novel)
        out["novelty"] = len(novel) / len(unique)
    if unique:
        out.update(drug_likeness(unique))
        if _sascorer() is None:
            notes.append("SA score: RDKit Contrib SA_Score not found in this RDKit")

    if reference is None:
        notes.append("distribution distances: no reference set given")
    else:
        ref = (
            reference
            if isinstance(reference, MoleculeStatistics)
            else MoleculeStatistics.from_molecules(reference)
        )
        out.update(distribution_distances(MoleculeStatistics.from_molecules(mols), ref))

    available = optional_packages()
    if posebusters is not False:
        if available["posebusters"] is None:
            out.update(posebusters_checks(mols, progress=progress))
        elif posebusters:
            raise ImportError(available["posebusters"])
        else:
            notes.append(f"PoseBusters checks: {available['posebusters']}")
    if xtb is not False:
        if available["xtb"] is None:
            # xTB costs seconds per molecule: optionally only the first N valid ones
            todo = [m for m in mols if sanitized(m) is not None][:xtb_max_molecules]
            if xtb_max_molecules is not None and len(todo) < out["n_valid"]:
                notes.append(
                    f"GFN2-xTB relaxation: only the first {len(todo)} of {out['n_valid']} valid molecules"
                )
            results = xtb_relaxation_energies(todo, steps=xtb_steps, fmax=xtb_fmax, progress=progress)
            done = [r for r in results if r is not None and not math.isnan(r[0])]
            out["xtb_n_relaxed"] = len(done)
            out["xtb_n_failed"] = sum(r is not None and math.isnan(r[0]) for r in results)
            if done:
                drops = np.array([d for d, _ in done])
                out["xtb_energy_drop_mean"] = float(drops.mean())
                out["xtb_energy_drop_median"] = float(np.median(drops))
                out["xtb_converged"] = sum(c for _, c in done) / len(done)
        elif xtb:
            raise ImportError(available["xtb"])
        else:
            notes.append(f"GFN2-xTB relaxation energy: {available['xtb']}")
    return out


# ---------------------------------------------------------------------------
# Presentation and SDF input
# ---------------------------------------------------------------------------

_DESCRIPTIONS = {
    "n_molecules": "molecules given (incl. unreadable records)",
    "n_unreadable": "records that could not be parsed (invalid)",
    "n_atoms": "atoms in readable molecules",
    "atom_stability": "atoms with an allowed valence (corrected table, aromatic-aware)",
    "mol_stability": "molecules with every atom stable (corrected)",
    "atom_stability_legacy": "as MiDi/EQGAT-diff (aromatic bond = 1, lenient table)",
    "mol_stability_legacy": "as MiDi/EQGAT-diff",
    "n_valid": "molecules RDKit can sanitise",
    "validity": "RDKit sanitisation succeeds (fragments allowed)",
    "n_connected_valid": "valid and one fragment",
    "connected_validity": "valid and one fragment (EQGAT-diff's 'validity')",
    "single_fragment": "molecules with one fragment",
    "n_unique": "distinct canonical SMILES among valid",
    "uniqueness": "distinct / valid (true uniqueness)",
    "n_novel": "unique valid not in the training set",
    "novelty": "novel / unique",
    "qed": "mean QED of unique valid molecules",
    "sa_score": "mean SA score (1 easy .. 10 hard)",
    "sa_normalized": "(10 - SA) / 9, as EQGAT-diff reports",
    "atom_type_tv": "sum |p - q| of element frequencies vs reference",
    "bond_type_tv": "sum |p - q| of pair classes (none/single/...) vs reference",
    "bond_length_w1": "W1 of bond lengths (Å), mean over bond types",
    "bond_angle_w1": "W1 of bond angles (°), mean over centre elements",
    "pb_valid": "passes every PoseBusters check",
    "rdkit_log_lines": "RDKit warnings and errors (counted, not printed)",
    "posebusters_log_lines": "PoseBusters warnings (counted, not printed)",
    "xtb_n_relaxed": "valid molecules relaxed with GFN2-xTB",
    "xtb_n_failed": "valid molecules whose xTB calculation failed",
    "xtb_energy_drop_mean": "mean E(generated) - E(relaxed), kcal/mol",
    "xtb_energy_drop_median": "median E(generated) - E(relaxed), kcal/mol",
    "xtb_converged": "relaxations that reached fmax within the step limit",
}
_FRACTIONS = re.compile(r"(stability|validity|single_fragment|uniqueness|novelty|^pb_|xtb_converged)")


def format_metrics_table(metrics: Metrics, title: str = "molecule metrics") -> Table:
    """A rich table of :func:`evaluate_molecules` output: fractions as %, counts as integers."""
    return format_metrics_columns({"value": metrics}, title)


def format_metrics_columns(columns: dict[str, Metrics], title: str = "molecule metrics") -> Table:
    """Several :func:`evaluate_molecules` outputs side by side (e.g. raw and valence-aware sampling);
    a metric missing from a column shows as "-"."""
    table = Table(title=title)
    table.add_column("metric")
    for name in columns:
        table.add_column(name, justify="right")
    table.add_column("meaning")
    keys = list(dict.fromkeys(k for metrics in columns.values() for k in metrics))
    for key in keys:
        cells = [_format_value(key, m[key]) if key in m else "-" for m in columns.values()]
        table.add_row(key, *cells, _meaning(key))
    return table


def _format_value(key: str, value: float | int) -> str:
    if isinstance(value, bool) or isinstance(value, int):
        return f"{int(value):,}"
    if _FRACTIONS.search(key):
        return f"{100.0 * value:.2f} %"
    return f"{value:.4f}"


def _meaning(key: str) -> str:
    meaning = _DESCRIPTIONS.get(key, "")
    if not meaning and key.startswith("bond_length_w1_"):
        meaning = f"W1 of {key.removeprefix('bond_length_w1_')} bond lengths (Å)"
    elif not meaning and key.startswith("bond_angle_w1_"):
        meaning = f"W1 of angles (°) centred on {key.removeprefix('bond_angle_w1_')}"
    elif not meaning and key.startswith("pb_"):
        meaning = "PoseBusters check pass rate"
    return meaning


@dataclass(frozen=True)
class UnreadableRecord:
    """A record of an SDF file that RDKit could not parse."""

    path: str
    record: int  # 1-based position of the record in the file
    line: int  # 1-based line where the record starts
    message: str

    def __str__(self) -> str:
        return f"{self.path}: record {self.record} (line {self.line}) could not be read: {self.message}"


def _parse_record(text: str) -> Chem.Mol | None:
    supplier = Chem.SDMolSupplier()
    supplier.SetData(text, sanitize=False, removeHs=False, strictParsing=True)
    return supplier[0] if len(supplier) else None


def _parse_block(text: str) -> tuple[Chem.Mol | None, str]:
    """Parse one SDF record, returning RDKit's own complaint when it fails."""
    with rdBase.BlockLogs():
        mol = _parse_record(text)
    if mol is not None:
        return mol, ""
    # RDKit says why only on its C++ stderr stream: parse again with file
    # descriptor 2 pointed at a temporary file and read the complaint back.
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            _parse_record(text)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        log = tmp.read().decode(errors="replace")
    lines = [re.sub(r"^\[[0-9:]+\]\s*(ERROR:\s*)?", "", x).strip() for x in log.splitlines()]
    lines = [x for x in lines if x and not x.startswith("moving to the beginning of the next molecule")]
    return None, "; ".join(lines) or "RDKit could not parse the record"


def read_generated_sdf(path: str | Path) -> tuple[list[Chem.Mol | None], list[UnreadableRecord]]:
    """Every record of an SDF file, read with ``removeHs=False, sanitize=False``.

    A record RDKit cannot parse is ``None`` in the list (so it is counted, as
    an invalid molecule) and described in the error list with its record
    number and starting line. Raises ``FileNotFoundError`` for a missing file.
    Records are split by :func:`geo3d.data.sdf.iter_sdf_blocks`, as the training loader does.
    """
    from geo3d.data.sdf import iter_sdf_blocks

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such SDF file")
    mols: list[Chem.Mol | None] = []
    errors: list[UnreadableRecord] = []
    for record, first_line, text in iter_sdf_blocks(path):
        mol, reason = _parse_block(text + "$$$$\n")
        if mol is None:
            # RDKit counts lines from the start of the record; report file lines
            reason = re.sub(
                r"on line (\d+)", lambda m, s=first_line: f"on line {s - 1 + int(m.group(1))}", reason
            )
            errors.append(UnreadableRecord(str(path), record, first_line, reason))
        mols.append(mol)
    return mols, errors
