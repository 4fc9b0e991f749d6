"""Point layers the detection heads are built from: a per-point MLP, translation- and order-independent
FPS, ball query by distance order, gathering by index.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from geo3d.ops.point_ops import fps


class PointMLP(nn.Module):
    """Shared MLP on the last axis, ``[..., c_in] -> [..., widths[-1]]``: Linear + BatchNorm + ReLU each."""

    def __init__(self, c_in: int, widths: Sequence[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for w in widths:
            layers += [nn.Linear(c_in, w, bias=False), nn.BatchNorm1d(w), nn.ReLU()]
            c_in = w
        self.layers = nn.Sequential(*layers)
        self.out_channels = c_in

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape[:-1]
        return self.layers(x.reshape(-1, x.shape[-1])).reshape(*shape, self.out_channels)


def canonical_fps(pos: Tensor, ptr: Tensor, m: int) -> Tensor:
    """Farthest-point sampling of ``m`` points per scene, independent of point order and translation.

    Starting :func:`~geo3d.ops.point_ops.fps` at the point farthest from the scene's
    centroid (not its first point) makes the choice a function of the point set (ties aside).

    Args:
        pos: ``[N, 3]`` points of ``B`` scenes, scene b at ``ptr[b]:ptr[b+1]``.
        ptr: ``[B + 1]`` int64 (CPU) scene offsets; every scene needs ``>= m`` points.

    Returns:
        ``[B, m]`` int64 indices into ``pos``, in selection order.
    """
    sizes = ptr[1:] - ptr[:-1]
    if len(sizes) == 0 or int(sizes.min()) < m:
        raise ValueError(f"farthest-point sampling of {m} points: a scene has only {sizes.tolist()} points")
    p = pos.detach()
    batch = torch.repeat_interleave(torch.arange(len(sizes), device=pos.device), sizes.to(pos.device))
    scenes = [p[int(ptr[b]) : int(ptr[b + 1])] for b in range(len(sizes))]
    start = torch.stack([((q - q.mean(0)) ** 2).sum(1).argmax() for q in scenes])
    return fps(p, batch, num_graphs=len(sizes), num=m, start=start).reshape(len(sizes), m)


def group_nearest(centres: Tensor, points: Tensor, k: int, radius: float) -> Tensor:
    """Ball query by distance order: the ``k`` nearest ``points`` of each centre, within ``radius``.

    Neighbours beyond ``radius`` are replaced by the nearest one (PointNet++'s
    ball query pads the same way), so a max-pool over them is unaffected.
    Distances are taken from coordinate differences (not ``cdist``'s matrix
    product) so that a translation leaves the choice unchanged.

    Args:
        centres: ``[B, P, 3]``; points: ``[B, S, 3]``.

    Returns:
        ``[B, P, k']`` indices into ``points``' second axis, ``k' = min(k, S)``.
    """
    d2 = ((centres.detach()[:, :, None, :] - points.detach()[:, None, :, :]) ** 2).sum(-1)  # [B, P, S]
    d2, idx = torch.topk(d2, min(k, points.shape[1]), dim=-1, largest=False, sorted=True)
    return torch.where(d2 <= radius**2, idx, idx[..., :1])


def gather_points(x: Tensor, idx: Tensor) -> Tensor:
    """``x [B, S, C]``, ``idx [B, ...]`` -> ``[B, ..., C]``."""
    b, c = x.shape[0], x.shape[-1]
    flat = idx.reshape(b, -1)
    return torch.gather(x, 1, flat[..., None].expand(-1, -1, c)).reshape(*idx.shape, c)
