"""Fully connected graphs per molecule (EQGAT-diff uses no cutoff)."""

from __future__ import annotations

import torch
from torch import Tensor


def fully_connected_edges(ptr: Tensor) -> tuple[Tensor, Tensor]:
    """All ordered pairs (j -> i), j != i, inside each graph of a batch.

    Args:
        ptr: ``[B + 1]`` graph offsets (PyG's ``Batch.ptr``).

    Returns:
        ``edge_index [2, E]`` (row 0 = sender j, row 1 = receiver i), sorted by
        (i, j); and ``reverse [E]``, the index of edge (i -> j) for every edge
        (j -> i), used to symmetrise edge features.
    """
    ptr = ptr.to(torch.long)
    counts = ptr[1:] - ptr[:-1]
    device = ptr.device
    # Per graph an n x n grid minus its diagonal, built for the whole batch at once.
    sizes = counts * counts
    graph = torch.repeat_interleave(torch.arange(counts.numel(), device=device), sizes)
    start = torch.repeat_interleave(torch.cumsum(sizes, 0) - sizes, sizes)
    local = torch.arange(int(sizes.sum()), device=device) - start
    n = counts[graph]
    i_local, j_local = local // n, local % n
    keep = i_local != j_local
    i = (i_local + ptr[graph])[keep]
    j = (j_local + ptr[graph])[keep]
    edge_index = torch.stack([j, i])
    # Position of (i -> j): in graph g, pairs are enumerated row-major over (i, j)
    # minus the diagonal; compute the flat index of the swapped pair and remove
    # the diagonal entries before it.
    flat_rev = j_local * n + i_local
    flat_rev = flat_rev[keep]
    offset = (start - (torch.cumsum(counts, 0) - counts)[graph])[
        keep
    ]  # start of graph g after diagonal removal
    rev_local = flat_rev - j_local[keep] - (i_local[keep] > j_local[keep]).long()
    reverse = offset + rev_local
    return edge_index, reverse
