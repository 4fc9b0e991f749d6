"""Neighbour search on data objects and edge featurisation (vectors, lengths, radial basis, SH)."""

from geo3d.graph.edges import edge_lengths, edge_vectors
from geo3d.graph.neighbors import EdgeFeatures, with_radius_graph
from geo3d.graph.radial import BesselBasis, PolynomialCutoff, RadialEmbedding
from geo3d.graph.spherical import SphericalHarmonics

__all__ = [
    "BesselBasis",
    "EdgeFeatures",
    "PolynomialCutoff",
    "RadialEmbedding",
    "SphericalHarmonics",
    "edge_lengths",
    "edge_vectors",
    "with_radius_graph",
]
