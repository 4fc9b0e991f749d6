"""Metrics: molecule quality (stability, validity, uniqueness, novelty, distribution distances), detection mAP."""

from geo3d.data.sdf import UnreadableRecord, read_generated_sdf
from geo3d.data.smiles import CanonicalSmiles, canonical_smiles_set
from geo3d.metrics.distributions import MoleculeStatistics, distribution_distances
from geo3d.metrics.external_checks import optional_packages
from geo3d.metrics.molecules import evaluate_molecules
from geo3d.metrics.stability import CORRECTED_VALENCES, LEGACY_VALENCES, stability, stable_atoms
from geo3d.metrics.tables import format_metrics_table
from geo3d.metrics.validity import valid_smiles

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
