"""Edge geometry from a radius graph, differentiable in positions and cell."""

from __future__ import annotations

import torch
from torch import Tensor


def edge_vectors(
    pos: Tensor,
    edge_index: Tensor,
    shifts: Tensor | None = None,
    cell: Tensor | None = None,
    batch: Tensor | None = None,
) -> Tensor:
    """Edge vectors ``vec = pos[j] - pos[i] + shifts @ cell`` (j = ``edge_index[0]``).

    Differentiable with respect to ``pos`` and ``cell``: stress is the
    derivative with respect to a strain applied to both.

    Args:
        pos: ``[N, 3]``.
        edge_index: ``[2, E]``, row 0 the neighbour j, row 1 the centre i.
        shifts: ``[E, 3]`` integer cell shifts, or None for non-periodic graphs.
        cell: ``[3, 3]`` or ``[B, 3, 3]`` (rows are cell vectors).
        batch: ``[N]`` graph of each point; needed when ``cell`` is ``[B, 3, 3]`` with B > 1.

    Returns:
        ``[E, 3]`` in the dtype of ``pos``.
    """
    j, i = edge_index[0], edge_index[1]
    vec = pos[j] - pos[i]
    if shifts is None or cell is None:
        return vec
    s = shifts.to(pos.dtype)
    if cell.dim() == 2 or cell.shape[0] == 1:
        return vec + s @ cell.reshape(3, 3)
    if batch is None:
        raise ValueError("edge_vectors: a [B, 3, 3] cell needs batch to pick each edge's cell")
    return vec + torch.einsum("ek,ekl->el", s, cell[batch[i]])


def edge_lengths(vec: Tensor, eps: float = 0.0) -> Tensor:
    """``[E]`` lengths of ``[E, 3]`` vectors; ``eps`` > 0 keeps the gradient finite at zero length."""
    if eps > 0.0:
        return torch.sqrt((vec * vec).sum(-1) + eps)
    return torch.linalg.vector_norm(vec, dim=-1)
