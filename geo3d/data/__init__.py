"""Datasets and transforms; every sample is a ``torch_geometric.data.Data``."""

from geo3d.data.atomistic import StructureFileError, atoms_to_data, read_structures

__all__ = ["StructureFileError", "atoms_to_data", "read_structures"]
