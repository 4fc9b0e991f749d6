"""Metrics: molecule quality (stability, validity, uniqueness, novelty, distribution distances)."""

from geo3d.data.smiles import CanonicalSmiles, canonical_smiles_set
from geo3d.metrics.molecules import (
    CORRECTED_VALENCES,
    LEGACY_VALENCES,
    MoleculeStatistics,
    UnreadableRecord,
    distribution_distances,
    evaluate_molecules,
    format_metrics_table,
    optional_packages,
    read_generated_sdf,
    stability,
    stable_atoms,
    valid_smiles,
)

__all__ = [
    "CORRECTED_VALENCES",
    "LEGACY_VALENCES",
    "CanonicalSmiles",
    "MoleculeStatistics",
    "UnreadableRecord",
    "canonical_smiles_set",
    "distribution_distances",
    "evaluate_molecules",
    "format_metrics_table",
    "optional_packages",
    "read_generated_sdf",
    "stability",
    "stable_atoms",
    "valid_smiles",
]
