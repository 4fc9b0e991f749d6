"""Radius graphs on PyG ``Data``/``Batch`` objects, and their edge features."""

from __future__ import annotations

from torch import Tensor, nn
from torch_geometric.data import Data

from geo3d.graph.edges import edge_lengths, edge_vectors
from geo3d.graph.neighbor_list import NeighborList
from geo3d.graph.radial import RadialEmbedding
from geo3d.graph.spherical import SphericalHarmonics


def with_radius_graph(data: Data, r: float, loop: bool = False, backend: str | None = None) -> Data:
    """Attach ``edge_index [2, E]``, ``shifts [E, 3]`` and ``graph_cutoff`` to ``data`` (a ``Data`` or
    ``Batch``): a one-off :class:`~geo3d.graph.neighbor_list.NeighborList` at radius ``r``.

    Uses ``data.cell [B, 3, 3]`` and ``data.pbc [B, 3]`` when present (the atomistic
    layout of DESIGN.md), else a non-periodic graph; ``data.batch`` if batched.
    """
    return NeighborList(r, loop=loop, backend=backend).attach(data)


class EdgeFeatures(nn.Module):
    """Edge vectors, lengths, radial embedding and spherical harmonics of a graph.

    Shapes:
        returns ``vec [E, 3]``, ``length [E]``, ``radial [E, num_basis]``,
        ``sh [E, (lmax + 1)^2]``.
    """

    def __init__(self, r_max: float, lmax: int, num_basis: int = 8, p: int = 6) -> None:
        super().__init__()
        self.radial = RadialEmbedding(r_max, num_basis, p)
        self.sh = SphericalHarmonics(lmax)

    def forward(
        self,
        pos: Tensor,
        edge_index: Tensor,
        shifts: Tensor | None = None,
        cell: Tensor | None = None,
        batch: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        vec = edge_vectors(pos, edge_index, shifts, cell, batch)
        length = edge_lengths(vec)
        return vec, length, self.radial(length), self.sh(vec)
