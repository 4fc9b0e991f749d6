"""Datasets and transforms; every sample is a ``torch_geometric.data.Data``."""

from geo3d.data.articulated import Articulated
from geo3d.data.atomistic import StructureFileError, atoms_to_data, read_structures
from geo3d.data.geom import GeomFormatError, load_geom_drugs
from geo3d.data.marginals import MoleculeMarginals, molecule_marginals
from geo3d.data.qm9 import QM9, build_qm9_cache, midi_split
from geo3d.data.qm9_csv import QM9FormatError
from geo3d.data.rooms import Rooms
from geo3d.data.scan_files import ScanFileError, read_point_cloud
from geo3d.data.scene_protocols import PROTOCOLS, ProtocolSplit, apply_protocol
from geo3d.data.sdf import SDFRecordError, load_gdb9_sdf, read_sdf
from geo3d.data.smiles import canonical_smiles

__all__ = [
    "PROTOCOLS",
    "QM9",
    "Articulated",
    "GeomFormatError",
    "MoleculeMarginals",
    "ProtocolSplit",
    "QM9FormatError",
    "Rooms",
    "SDFRecordError",
    "ScanFileError",
    "StructureFileError",
    "apply_protocol",
    "atoms_to_data",
    "build_qm9_cache",
    "canonical_smiles",
    "load_gdb9_sdf",
    "load_geom_drugs",
    "midi_split",
    "molecule_marginals",
    "read_point_cloud",
    "read_sdf",
    "read_structures",
]
