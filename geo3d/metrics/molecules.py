"""Quality metrics for generated 3D molecules (EQGAT-diff / MiDi style), with their known bugs fixed.

Input: RDKit molecules with **explicit hydrogens as atoms** and a 3D conformer,
exactly as a generator predicted them (``geo3d.data.molecules.build_mol``, or an
SDF read with ``removeHs=False, sanitize=False`` — see :func:`read_generated_sdf`). ``None``
stands for a record that could not be read: it counts as a molecule that is
invalid and unstable, never as a dropped sample.

One entry point, :func:`evaluate_molecules`, returns a flat dict of numbers (the
parts live beside it: ``validity``, ``stability``, ``distributions``,
``external_checks``, ``tables``):

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

import math
import os
import sys
from collections.abc import Iterable, Sequence

import numpy as np
from rdkit import Chem, RDConfig, rdBase
from rdkit.Chem import QED

from geo3d.data.smiles import CanonicalSmiles, canonical_smiles_set
from geo3d.metrics.distributions import MoleculeStatistics, distribution_distances
from geo3d.metrics.external_checks import optional_packages, posebusters_checks, xtb_relaxation_energies
from geo3d.metrics.library_logs import counting_library_logs
from geo3d.metrics.stability import stability
from geo3d.metrics.validity import Metrics, sanitized, valid_smiles

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


@counting_library_logs
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
    """Every metric for a set of generated molecules, as a flat JSON-serialisable dict.

    The log lines RDKit and PoseBusters write while scoring (one per failed sanitisation or
    embedding) are not printed but counted: ``rdkit_log_lines``, ``posebusters_log_lines``.

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
