"""Radius graphs on PyG ``Data``/``Batch`` objects, and their edge features."""

from __future__ import annotations

from torch import Tensor, nn
from torch_geometric.data import Data

from geo3d.graph.edges import edge_lengths, edge_vectors
from geo3d.graph.radial import RadialEmbedding
from geo3d.graph.spherical import SphericalHarmonics
from geo3d.ops.radius_graph import radius_graph


def with_radius_graph(data: Data, r: float, loop: bool = False, backend: str | None = None) -> Data:
    """Attach ``edge_index [2, E]`` and ``shifts [E, 3]`` to ``data`` (a ``Data`` or ``Batch``).

    Uses ``data.cell [B, 3, 3]`` and ``data.pbc [B, 3]`` when present (the atomistic
    layout of DESIGN.md), else a non-periodic graph; ``data.batch`` if batched.
    """
    batch = getattr(data, "batch", None)
    cell = getattr(data, "cell", None)
    pbc = getattr(data, "pbc", None)
    num_graphs = getattr(data, "num_graphs", None) if batch is not None else None
    edge_index, shifts = radius_graph(
        data.pos, r, batch=batch, cell=cell, pbc=pbc, loop=loop, backend=backend, num_graphs=num_graphs
    )
    data.edge_index = edge_index
    data.shifts = shifts
    return data


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
