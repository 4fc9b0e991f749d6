"""Upright 3D boxes: yaw-aware IoU, points in boxes, NMS and centre-distance duplicate suppression.

Boxes are ``(cx, cy, cz, dx, dy, dz, yaw)``: centre, full extents along the
box's own axes, and a counter-clockwise rotation ``yaw`` about +z (upright
boxes, as in SUN RGB-D). The IoU is exact: the top-view intersection of the two
rotated rectangles (Sutherland-Hodgman clipping of one convex polygon by the
other) times the overlap of the vertical extents, in float64. Geometry shared by
the detection heads (``geo3d.nn.heads``), ``geo3d detect`` and the metrics
(``geo3d.metrics.detection``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

# Clipping a quadrilateral by 4 half-planes leaves at most 8 vertices.
_MAX_VERTS = 8
# Pairs per chunk of the vectorised clipping (bounds memory: ~2 KB a pair).
_CHUNK = 1 << 16


def _as_boxes(boxes: Any, name: str) -> Tensor:
    t = torch.as_tensor(boxes).detach().to(torch.float64)
    if t.dim() != 2 or t.shape[1] != 7:
        raise ValueError(f"{name}: boxes must be [N, 7] (cx, cy, cz, dx, dy, dz, yaw), got {tuple(t.shape)}")
    if t.numel() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: boxes have NaN or inf values")
    if t.numel() and bool((t[:, 3:6] < 0).any()):
        raise ValueError(f"{name}: box sizes dx, dy, dz must be >= 0")
    return t


def box_corners_bev(boxes: Tensor) -> Tensor:
    """Top-view corners of boxes ``[..., 7]`` -> ``[..., 4, 2]``, counter-clockwise."""
    c, s = torch.cos(boxes[..., 6]), torch.sin(boxes[..., 6])
    hx, hy = boxes[..., 3] / 2, boxes[..., 4] / 2
    lx = torch.stack([-hx, hx, hx, -hx], dim=-1)  # [..., 4]
    ly = torch.stack([-hy, -hy, hy, hy], dim=-1)
    x = boxes[..., 0, None] + c[..., None] * lx - s[..., None] * ly
    y = boxes[..., 1, None] + s[..., None] * lx + c[..., None] * ly
    return torch.stack([x, y], dim=-1)


def _clip_half_plane(poly: Tensor, n: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """One Sutherland-Hodgman step for a batch of convex polygons.

    Keeps the part of each polygon ``poly [P, K, 2]`` (first ``n [P]`` vertices
    valid, counter-clockwise) left of the directed line ``a -> b`` (``[P, 2]``);
    points on the line count as inside, so shared edges need no intersection.
    """
    k = poly.shape[1]
    idx = torch.arange(k, device=poly.device)
    valid = idx < n[:, None]  # [P, K]
    nxt = torch.where(idx + 1 < n[:, None], idx + 1, 0)
    s, e = poly, torch.gather(poly, 1, nxt[..., None].expand(-1, -1, 2))  # edge s -> e
    d = (b - a)[:, None, :]
    side_s = d[..., 0] * (s[..., 1] - a[:, None, 1]) - d[..., 1] * (s[..., 0] - a[:, None, 0])
    side_e = d[..., 0] * (e[..., 1] - a[:, None, 1]) - d[..., 1] * (e[..., 0] - a[:, None, 0])
    s_in, e_in = side_s >= 0, side_e >= 0
    crosses = valid & (s_in != e_in)
    # side_s and side_e have opposite signs (or one is 0) where the edge crosses: t in [0, 1].
    denom = torch.where(crosses, side_s - side_e, torch.ones_like(side_s))
    cut = s + (side_s / denom)[..., None] * (e - s)
    cand = torch.stack([cut, e], dim=2).reshape(len(poly), 2 * k, 2)  # emit the cut, then e
    keep = torch.stack([crosses, valid & e_in], dim=2).reshape(len(poly), 2 * k)
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices[:, :_MAX_VERTS]
    out = torch.gather(cand, 1, order[..., None].expand(-1, -1, 2))
    # A convex polygon never exceeds 8 vertices here; the clamp only guards round-off.
    return out, keep.sum(1).clamp(max=_MAX_VERTS)


def _polygon_area(poly: Tensor, n: Tensor) -> Tensor:
    """Shoelace area of polygons ``[P, K, 2]`` with ``n [P]`` valid vertices."""
    idx = torch.arange(poly.shape[1], device=poly.device)
    valid = idx < n[:, None]
    nxt = torch.where(idx + 1 < n[:, None], idx + 1, 0)
    q = torch.gather(poly, 1, nxt[..., None].expand(-1, -1, 2))
    cross = poly[..., 0] * q[..., 1] - poly[..., 1] * q[..., 0]
    return 0.5 * torch.where(valid, cross, torch.zeros_like(cross)).sum(1).abs()


def _bev_intersection(ca: Tensor, cb: Tensor) -> Tensor:
    """Intersection areas of rectangle pairs: corners ``ca, cb [P, 4, 2]`` -> ``[P]``."""
    out = []
    for lo in range(0, len(ca), _CHUNK):
        a, b = ca[lo : lo + _CHUNK], cb[lo : lo + _CHUNK]
        poly = torch.cat([a, a.new_zeros(len(a), _MAX_VERTS - 4, 2)], dim=1)
        n = torch.full((len(a),), 4, dtype=torch.long, device=a.device)
        for j in range(4):
            poly, n = _clip_half_plane(poly, n, b[:, j], b[:, (j + 1) % 4])
        out.append(_polygon_area(poly, n))
    return torch.cat(out) if out else ca.new_zeros(0)


def box3d_iou_matrix(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> Tensor | np.ndarray:
    """Pairwise IoU of upright 3D boxes, exact (top-view polygon clipping x vertical overlap).

    Args:
        a: ``[N, 7]`` boxes ``(cx, cy, cz, dx, dy, dz, yaw)``, torch or numpy.
        b: ``[M, 7]`` boxes.

    Returns:
        ``[N, M]`` float64 IoU, a numpy array if ``a`` is one, else a tensor on
        ``a``'s device. Zero-volume pairs give 0.

    Raises:
        ValueError: wrong shape, NaN/inf, or negative sizes.
    """
    is_numpy = isinstance(a, np.ndarray)
    ta, tb = _as_boxes(a, "box3d_iou_matrix: a"), _as_boxes(b, "box3d_iou_matrix: b")
    tb = tb.to(ta.device)
    n, m = len(ta), len(tb)
    iou = ta.new_zeros(n, m)
    if n and m:
        zmax = torch.minimum((ta[:, 2] + ta[:, 5] / 2)[:, None], (tb[:, 2] + tb[:, 5] / 2)[None])
        zmin = torch.maximum((ta[:, 2] - ta[:, 5] / 2)[:, None], (tb[:, 2] - tb[:, 5] / 2)[None])
        dz = (zmax - zmin).clamp(min=0)
        # Only pairs whose top-view circumcircles and vertical extents overlap need clipping.
        ra, rb = ta[:, 3:5].norm(dim=1) / 2, tb[:, 3:5].norm(dim=1) / 2
        centre_d = (ta[:, None, :2] - tb[None, :, :2]).norm(dim=-1)
        i, j = ((centre_d <= ra[:, None] + rb[None]) & (dz > 0)).nonzero(as_tuple=True)
        if len(i):
            area = _bev_intersection(box_corners_bev(ta[i]), box_corners_bev(tb[j]))
            inter = area * dz[i, j]
            va, vb = ta[:, 3:6].prod(1), tb[:, 3:6].prod(1)
            union = va[i] + vb[j] - inter
            iou[i, j] = torch.where(union > 0, inter / union.clamp(min=1e-300), torch.zeros_like(inter))
    return iou.cpu().numpy() if is_numpy else iou


def box3d_iou(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> float:
    """IoU of two single boxes ``[7]``."""
    return float(box3d_iou_matrix(torch.as_tensor(a).reshape(1, 7), torch.as_tensor(b).reshape(1, 7))[0, 0])


def points_in_boxes(points: Tensor, boxes: Tensor) -> Tensor:
    """Which points lie in which box (faces included): ``[S, 3]``, ``[M, 7]`` -> ``[S, M]`` bool."""
    d = points[:, None, :] - boxes[None, :, :3]  # [S, M, 3]
    c, s = torch.cos(boxes[:, 6]), torch.sin(boxes[:, 6])
    lx = c * d[..., 0] + s * d[..., 1]  # rotate by -yaw into the box frame
    ly = -s * d[..., 0] + c * d[..., 1]
    half = boxes[:, 3:6] / 2
    return (lx.abs() <= half[:, 0]) & (ly.abs() <= half[:, 1]) & (d[..., 2].abs() <= half[:, 2])


def _greedy_keep(order: Tensor, over: Tensor, labels: Tensor | None) -> Tensor:
    """Greedy suppression: visit ``order`` (boxes by decreasing score); keep a box unless a kept one
    suppresses it (``over [K, K]``, rows: the kept box, in ``order``), of the same label when given."""
    if labels is not None:
        lab = labels[order]
        over = over & (lab[:, None] == lab[None, :])
    over = over.cpu()
    alive = torch.ones(len(order), dtype=torch.bool)
    keep = []
    for r in range(len(order)):
        if alive[r]:
            keep.append(r)
            alive &= ~over[r]
    return order[torch.tensor(keep, dtype=torch.long, device=order.device)]


def nms_3d(boxes: Tensor, scores: Tensor, iou_threshold: float, labels: Tensor | None = None) -> Tensor:
    """Greedy non-maximum suppression on the yaw-aware 3D IoU.

    Boxes are visited by decreasing score (ties: lower index first); a box is
    dropped when its IoU with an already kept box is strictly above
    ``iou_threshold`` (VoteNet's ``nms_3d_faster``), and, with ``labels``, only
    when that kept box has the same label.

    Args:
        boxes: ``[K, 7]``; scores: ``[K]``; labels: optional ``[K]`` int.

    Returns:
        ``[K']`` int64 indices of the kept boxes, by decreasing score.
    """
    order = torch.sort(scores.detach(), descending=True, stable=True).indices
    over = box3d_iou_matrix(boxes[order], boxes[order]) > iou_threshold  # [K, K] on boxes' device
    return _greedy_keep(order, over, labels)


def suppress_close_centres(
    boxes: Tensor,
    scores: Tensor,
    fraction: float = 0.5,
    labels: Tensor | None = None,
    horizontal_only: bool = False,
) -> Tensor:
    """Greedy duplicate suppression by centre distance: one box per object even where IoU NMS keeps two.

    IoU NMS misses duplicates whose boxes disagree in size or heading (a chair
    found once as a chair-sized box and once as a table-sized one overlaps it
    by less than any usual threshold). Visiting boxes by decreasing score (ties:
    lower index), a box is dropped when its centre lies within ``fraction`` of
    a kept box's larger horizontal size (``max(dx, dy)``) of that kept box's centre,
    in 3D, or in plan (x, y) with ``horizontal_only``: for objects standing on a
    floor, where a box above another is the same object found in two pieces (a
    wardrobe as two stacked cabinets); with ``labels``, only kept boxes of the
    same label count.

    Args:
        boxes: ``[K, 7]``; scores: ``[K]``; labels: optional ``[K]`` int.

    Returns:
        ``[K']`` int64 indices of the kept boxes, by decreasing score.
    """
    order = torch.sort(scores.detach(), descending=True, stable=True).indices
    b = boxes.detach()[order].double()
    reach = fraction * b[:, 3:5].max(1).values  # [K], the kept (row) box's reach
    axes = 2 if horizontal_only else 3
    d = ((b[:, None, :axes] - b[None, :, :axes]) ** 2).sum(-1).sqrt()
    over = d < reach[:, None]
    return _greedy_keep(order, over, labels)
