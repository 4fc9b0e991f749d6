"""Shared test utilities: random cells and backend lists."""

from __future__ import annotations

import numpy as np
import torch

from geo3d.ops import backend_status

NATIVE_BACKENDS_HERE = [b for b in ("cpu",) if backend_status()[b][0]]


def random_cell(rng: np.random.Generator, scale: float = 6.0) -> np.ndarray:
    """A random, well-conditioned triclinic cell (rows are vectors)."""
    while True:
        cell = np.diag(rng.uniform(0.6, 1.4, 3) * scale) + rng.uniform(-0.35, 0.35, (3, 3)) * scale
        if abs(np.linalg.det(cell)) > 0.2 * scale**3:
            return cell


def min_height(cell: np.ndarray) -> float:
    """Shortest perpendicular height of the cell."""
    inv = np.linalg.inv(cell)
    return float(1.0 / np.linalg.norm(inv, axis=0).max())


def as_sets(edge_index: torch.Tensor, shifts: torch.Tensor) -> set[tuple[int, ...]]:
    return {
        (int(j), int(i), *map(int, s))
        for (j, i), s in zip(edge_index.T.tolist(), shifts.tolist(), strict=True)
    }
