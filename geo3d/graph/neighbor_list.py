"""The neighbour list a model is handed: a radius graph at the model's cutoff, with an optional Verlet skin.

One object for every place that builds graphs for a model (the ASE calculator,
training data, ``geo3d neighbors``). It builds the graph at ``cutoff + skin``
and keeps it while no atom has moved more than ``skin / 2`` since the build and
the cell, periodicity and atoms are the same (then no pair can have come within
``cutoff`` unseen; edges between ``cutoff`` and ``cutoff + skin`` cost time, not
accuracy, for a model whose radial functions vanish at its cutoff). The graph
records the radius it was built at (``data.graph_cutoff``), and
:func:`check_graph_cutoff` refuses a graph built short of a model's cutoff:
such a graph silently misses neighbours.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.data import Data

from geo3d.ops.radius_graph import radius_graph


class NeighborList:
    """Radius graph at ``cutoff`` (Å), rebuilt only when needed.

    Args:
        cutoff: the model's cutoff.
        skin: extra radius kept so the list survives small moves (0: rebuild on every move).
        loop: include self-edges.
        backend: radius-graph backend (default: automatic).

    ``builds`` counts how often the graph was built.
    """

    def __init__(
        self, cutoff: float, skin: float = 0.0, loop: bool = False, backend: str | None = None
    ) -> None:
        if not cutoff > 0:  # also refuses NaN
            raise ValueError(f"NeighborList: cutoff={cutoff!r} Å must be > 0")
        if not skin >= 0:
            raise ValueError(f"NeighborList: skin={skin!r} Å; the Verlet skin must be >= 0")
        self.cutoff, self.skin, self.loop, self.backend = float(cutoff), float(skin), bool(loop), backend
        self.builds = 0
        self._key: tuple | None = None  # (positions, cell, pbc, batch, numbers) at the last build
        self._graph: tuple[Tensor, Tensor] | None = None

    @property
    def radius(self) -> float:
        """The radius the graph is built at: ``cutoff + skin``."""
        return self.cutoff + self.skin

    def _still_valid(self, pos: Tensor, cell: Tensor | None, pbc: Tensor | None, batch, numbers) -> bool:
        if self._key is None:
            return False
        pos0, cell0, pbc0, batch0, numbers0 = self._key
        same = (
            pos0.shape == pos.shape
            and _equal(cell0, cell)
            and _equal(pbc0, pbc)
            and _equal(batch0, batch)
            and _equal(numbers0, numbers)
        )
        if not same:
            return False
        if self.skin == 0.0:
            return bool(torch.equal(pos0, pos.detach()))
        moved = (pos.detach() - pos0).norm(dim=1).max() if len(pos) else pos.new_zeros(())
        return float(moved) < 0.5 * self.skin

    def __call__(
        self,
        pos: Tensor,
        cell: Tensor | None = None,
        pbc: Tensor | None = None,
        batch: Tensor | None = None,
        numbers: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``(edge_index [2, E], shifts [E, 3])`` for positions ``pos [N, 3]`` (cell, pbc and batch as
        :func:`geo3d.ops.radius_graph`); ``numbers [N]`` (atom types), when given, must also be
        unchanged for the last graph to be reused."""
        if not self._still_valid(pos, cell, pbc, batch, numbers):
            self._graph = radius_graph(pos, self.radius, batch=batch, cell=cell, pbc=pbc, loop=self.loop,
                                       backend=self.backend)  # fmt: skip
            self._key = tuple(
                None if t is None else t.detach().clone() for t in (pos, cell, pbc, batch, numbers)
            )
            self.builds += 1
        assert self._graph is not None
        return self._graph

    def attach(self, data: Data) -> Data:
        """Set ``edge_index``, ``shifts`` and ``graph_cutoff`` on ``data`` (a ``Data`` or ``Batch``;
        ``data.cell [B, 3, 3]`` / ``data.pbc [B, 3]`` when present, ``data.batch`` when batched)."""
        batch = getattr(data, "batch", None)
        edge_index, shifts = self(
            data.pos,
            cell=getattr(data, "cell", None),
            pbc=getattr(data, "pbc", None),
            batch=batch,
            numbers=getattr(data, "z", None),
        )
        data.edge_index, data.shifts = edge_index, shifts
        data.graph_cutoff = self.radius
        return data


def _equal(a: Tensor | None, b: Tensor | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and bool(torch.equal(a.detach().cpu(), b.detach().cpu()))


def check_graph_cutoff(data: Data, cutoff: float, who: str = "model") -> None:
    """Refuse a graph built at a radius below ``cutoff`` (it misses neighbours the model expects).

    Graphs from :class:`NeighborList` (or ``with_radius_graph``) carry ``graph_cutoff``; one built
    by hand without it is taken as the caller's responsibility.

    Raises:
        ValueError: names both radii.
    """
    built = getattr(data, "graph_cutoff", None)
    if built is None:
        return
    smallest = float(torch.as_tensor(built).min())
    if smallest < cutoff - 1e-9:
        raise ValueError(
            f"{who}: the graph was built at {smallest:g} Å but the model's cutoff is {cutoff:g} Å; "
            f"build it with NeighborList({cutoff:g}) (geo3d.graph) so no neighbour is missed"
        )
