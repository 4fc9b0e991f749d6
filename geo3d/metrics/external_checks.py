"""Checks that need optional packages: PoseBusters (chemistry, geometry, energy ratio) and a GFN2-xTB relaxation
energy (tblite). Both are only run when installed (``pip install 'geo3d[metrics]'``).
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator, Sequence

import numpy as np
from rdkit import Chem, rdBase
from rdkit.Chem import Descriptors
from rich.console import Console

from geo3d.metrics.validity import Metrics, explicit_copy, sanitized

INSTALL_HINT = "pip install 'geo3d[metrics]'"


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
