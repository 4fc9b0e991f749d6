"""The metric table `geo3d generate` and `geo3d evaluate-molecules` print: values formatted, each key explained."""

from __future__ import annotations

import re

from rich.table import Table

from geo3d.metrics.validity import Metrics

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
