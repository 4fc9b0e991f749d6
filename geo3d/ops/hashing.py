"""Counter-based random numbers: values that are a function of a key, not of a generator's position.

A generator hands out numbers in index order, so reordering the inputs changes
which input gets which number. Where a choice must follow the points (APEN's
sampled part assignments at inference, ``geo3d detect``'s subsample), each point
carries an integer key (from its position in a frame fixed to the scan) and its
random numbers are hashes of that key and a salt.
"""

from __future__ import annotations

import torch
from torch import Tensor

GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)  # 2^64 / golden ratio, as a signed int64
_MANTISSA = (1 << 53) - 1


def splitmix64(x: Tensor) -> Tensor:
    """splitmix64's finaliser on int64 (wrapping products): a well-spread hash of each entry."""
    x = x ^ (x >> 31)
    x = x * 0x5851F42D4C957F2D
    x = x ^ (x >> 29)
    x = x * 0x14057B7EF767814F
    return x ^ (x >> 32)


def hash_unit(h: Tensor) -> Tensor:
    """int64 hashes -> float64 values in ``(0, 1]`` (the low 53 bits, plus one ulp)."""
    return ((h & _MANTISSA).double() + 1.0) / float(1 << 53)


def keyed_uniform(key: Tensor, salt: int, columns: int) -> Tensor:
    """Uniform-looking float64 ``[N, columns]`` in ``(0, 1]``: entry ``(i, j)`` is a hash of ``key[i]``,
    ``salt`` and ``j`` only, so it moves with its row when the rows are reordered.

    Args:
        key: ``[N]`` int64 (equal keys give equal rows).
        salt: separates independent uses of the same keys (e.g. one per network block).
        columns: numbers per key.
    """
    h = splitmix64(
        key.long() ^ splitmix64(torch.tensor(int(salt), dtype=torch.long, device=key.device) + GOLDEN)
    )
    j = torch.arange(columns, dtype=torch.long, device=key.device)
    return hash_unit(splitmix64(h[:, None] + (j[None, :] + 1) * GOLDEN))
