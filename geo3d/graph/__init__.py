"""Neighbour search on data objects and edge featurisation (vectors, lengths, radial basis, SH)."""

from geo3d.graph.edges import edge_lengths, edge_vectors
from geo3d.graph.neighbor_list import NeighborList, check_graph_cutoff
from geo3d.graph.neighbors import EdgeFeatures, with_radius_graph
from geo3d.graph.radial import BesselBasis, PolynomialCutoff, RadialEmbedding
from geo3d.graph.spherical import SphericalHarmonics

__all__ = [
    "BesselBasis",
    "EdgeFeatures",
    "NeighborList",
    "PolynomialCutoff",
    "RadialEmbedding",
    "SphericalHarmonics",
    "check_graph_cutoff",
    "edge_lengths",
    "edge_vectors",
    "with_radius_graph",
]
