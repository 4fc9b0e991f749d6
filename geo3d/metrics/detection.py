"""3D detection metrics: yaw-aware box IoU and VoteNet's ``eval_det`` (VOC area AP, mAP@0.25/0.5).

Boxes are ``(cx, cy, cz, dx, dy, dz, yaw)``: centre, full extents along the
box's own axes, and a counter-clockwise rotation ``yaw`` about +z (upright
boxes, as in SUN RGB-D). The IoU is exact: the top-view intersection of the two
rotated rectangles (Sutherland-Hodgman clipping of one convex polygon by the
other) times the overlap of the vertical extents, in float64.

``eval_det`` follows VoteNet (facebookresearch/votenet ``utils/eval_det.py``,
``models/ap_helper.py``) and the VOC code it derives from; where VoteNet would
give NaN we choose and document (see :func:`eval_det`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
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
    boxes: Tensor, scores: Tensor, fraction: float = 0.5, labels: Tensor | None = None
) -> Tensor:
    """Greedy duplicate suppression by centre distance: one box per object even where IoU NMS keeps two.

    IoU NMS misses duplicates whose boxes disagree in size or heading (a chair
    found once as a chair-sized box and once as a table-sized one overlaps it
    by less than any usual threshold). Visiting boxes by decreasing score (ties:
    lower index), a box is dropped when its centre lies within ``fraction`` of
    a kept box's larger horizontal size (``max(dx, dy)``) of that kept box's centre,
    in 3D; with ``labels``, only kept boxes of the same label count.

    Args:
        boxes: ``[K, 7]``; scores: ``[K]``; labels: optional ``[K]`` int.

    Returns:
        ``[K']`` int64 indices of the kept boxes, by decreasing score.
    """
    order = torch.sort(scores.detach(), descending=True, stable=True).indices
    b = boxes.detach()[order].double()
    reach = fraction * b[:, 3:5].max(1).values  # [K], the kept (row) box's reach
    d = ((b[:, None, :3] - b[None, :, :3]) ** 2).sum(-1).sqrt()
    over = d < reach[:, None]
    return _greedy_keep(order, over, labels)


def match_by_score(
    boxes: Tensor, scores: Tensor, labels: Tensor, gt_boxes: Tensor, gt_labels: Tensor, iou: float = 0.25
) -> Tensor:
    """Which detections are true positives, ``[K]`` bool: by decreasing score, each takes the unmatched
    ground-truth box of its class with the highest IoU, if that IoU is at least ``iou`` (VOC matching).

    A detection's match depends only on the higher-scoring ones, so the true positives above any
    score threshold are ``tp & (scores > t)``.
    """
    tp = torch.zeros(len(boxes), dtype=torch.bool)
    if len(boxes) == 0 or len(gt_boxes) == 0:
        return tp
    overlap = box3d_iou_matrix(boxes.detach().double().cpu(), gt_boxes.detach().double().cpu())
    overlap = overlap.masked_fill(labels.cpu()[:, None] != gt_labels.cpu()[None, :], -1.0)
    free = torch.ones(len(gt_boxes), dtype=torch.bool)
    for k in torch.sort(scores.detach().cpu(), descending=True, stable=True).indices.tolist():
        row = overlap[k].masked_fill(~free, -1.0)
        j = int(row.argmax())
        if float(row[j]) >= iou:
            tp[k], free[j] = True, False
    return tp


def f1_by_threshold(
    scores: Sequence[Tensor], true_positive: Sequence[Tensor], num_gt: int, thresholds: Tensor
) -> Tensor:
    """F1 of the detections scoring above each threshold, ``[T]``, from per-scene ``scores`` and
    :func:`match_by_score` flags, over ``num_gt`` ground-truth boxes in all."""
    s = torch.cat(
        [torch.as_tensor(x, dtype=torch.float64).reshape(-1) for x in scores]
        + [torch.zeros(0, dtype=torch.float64)]
    )
    tp = torch.cat(
        [torch.as_tensor(x).reshape(-1).bool() for x in true_positive] + [torch.zeros(0, dtype=torch.bool)]
    )
    above = s[None, :] > thresholds.double()[:, None]  # [T, K]
    hits = (above & tp[None]).sum(1).double()
    return 2 * hits / (above.sum(1).double() + num_gt).clamp(min=1)


# ---------------------------------------------------------------------- eval_det


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC area AP (``use_07_metric=False``): area under the monotone precision envelope."""
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _scene_arrays(item: Any, fields: tuple[str, ...], where: str) -> list[np.ndarray]:
    if isinstance(item, Mapping):
        missing = [f for f in fields if f not in item]
        if missing:
            raise ValueError(f"{where}: missing keys {missing} (expected {list(fields)})")
        values = [item[f] for f in fields]
    else:
        values = list(item)
        if len(values) != len(fields):
            raise ValueError(f"{where}: expected a tuple ({', '.join(fields)}), got {len(values)} items")
    out = [v.detach().cpu().numpy() if isinstance(v, Tensor) else np.asarray(v) for v in values]
    boxes = out[0].astype(np.float64)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 7)
    if boxes.ndim != 2 or boxes.shape[1] != 7:
        raise ValueError(f"{where}.boxes: must be [K, 7], got {boxes.shape}")
    if not np.isfinite(boxes).all() or (boxes[:, 3:6] < 0).any():
        raise ValueError(f"{where}.boxes: NaN/inf values or negative sizes")
    out[0] = boxes
    for f, arr in zip(fields[1:], out[1:], strict=True):
        if arr.shape != (len(boxes),):
            raise ValueError(f"{where}.{f}: must be [{len(boxes)}] like its boxes, got {arr.shape}")
        if f == "scores" and not np.isfinite(arr).all():
            raise ValueError(f"{where}.scores: NaN or inf values")
    return out


def _aligned_scenes(predictions: Any, ground_truth: Any) -> list[tuple[list, list, str]]:
    if isinstance(predictions, Mapping) != isinstance(ground_truth, Mapping):
        raise ValueError("eval_det: predictions and ground_truth must both be sequences or both mappings")
    if isinstance(predictions, Mapping):
        if set(predictions) != set(ground_truth):
            raise ValueError("eval_det: predictions and ground_truth have different scene ids")
        keys = list(ground_truth)
        pairs = [(predictions[k], ground_truth[k], f"scene {k!r}") for k in keys]
    else:
        if len(predictions) != len(ground_truth):
            raise ValueError(
                f"eval_det: {len(predictions)} predicted scenes but {len(ground_truth)} ground-truth scenes"
            )
        pairs = [(p, g, f"scene {i}") for i, (p, g) in enumerate(zip(predictions, ground_truth, strict=True))]
    return [
        (
            _scene_arrays(p, ("boxes", "scores", "labels"), f"predictions[{w}]"),
            _scene_arrays(g, ("boxes", "labels"), f"ground_truth[{w}]"),
            w,
        )
        for p, g, w in pairs
    ]


def _class_curve(dets: list[tuple[float, int, int, float]], num_gt: list[int], thr: float) -> np.ndarray:
    """TP flags (1/0) of ``dets`` (score, scene, best GT, best IoU), already sorted by score."""
    matched = [np.zeros(m, dtype=bool) for m in num_gt]
    tp = np.zeros(len(dets))
    for d, (_, scene, j, iou) in enumerate(dets):
        # VoteNet/VOC: the GT of highest IoU decides; if it is taken, the detection is a duplicate (FP).
        if iou > thr and not matched[scene][j]:
            matched[scene][j] = True
            tp[d] = 1.0
    return tp


def eval_det(
    predictions: Sequence[Any] | Mapping[Any, Any],
    ground_truth: Sequence[Any] | Mapping[Any, Any],
    iou_thresholds: Sequence[float] = (0.25, 0.5),
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """VoteNet's ``eval_det``: per-class VOC AP and recall, and mAP, at each IoU threshold.

    Per class, the detections of all scenes are sorted by decreasing score
    (exact ties keep input order: scene, then index). Each detection takes the
    ground-truth box of its class in its scene with the highest IoU; it is a true
    positive when that IoU is strictly above the threshold and that box is not
    yet matched, otherwise a false positive (so a second detection of a matched
    box is a false positive even if another, unmatched box overlaps it less;
    this is VOC's and VoteNet's rule). Precision/recall over the ranked list give
    the VOC area AP (``use_07_metric=False``).

    Edge cases: a class with ground truth but no detections has AP 0 and recall
    0 (VoteNet's ``eval_det_multiprocessing``). A class that is predicted but
    absent from the ground truth has no positives, so recall is 0/0 and VoteNet's
    AP (and hence its mAP) is NaN; here it gets no AP, is excluded from the
    means, and is listed under ``"predicted_only"`` with its detection count.

    Args:
        predictions: one entry per scene, a dict ``{boxes [K, 7], scores [K],
            labels [K]}`` or a tuple in that order (torch or numpy); or a mapping
            scene id -> entry.
        ground_truth: the same scenes, ``{boxes [M, 7], labels [M]}`` or a tuple.
        iou_thresholds: IoU thresholds (strict ``>``).
        class_names: names of the integer labels; keys are the labels without it.

    Returns:
        ``{"map@T": float, "mar@T": float, "ap@T": {cls: float}, "recall@T":
        {cls: float}}`` for each threshold T (formatted ``f"{T:g}"``, e.g.
        ``map@0.25``), plus ``"num_gt": {cls: int}`` and ``"predicted_only":
        {cls: num_detections}``. Means run over the classes with ground truth.

    Raises:
        ValueError: misaligned scenes, malformed arrays (naming the scene and
            field), labels outside ``class_names``, or no ground-truth box at all.
    """
    scenes = _aligned_scenes(predictions, ground_truth)
    labels = set()
    for (_, _, pl), (_, gl), where in scenes:
        for arr, field in ((pl, "predictions"), (gl, "ground_truth")):
            vals = {int(v) for v in arr.tolist()}
            if class_names is not None and any(v < 0 or v >= len(class_names) for v in vals):
                raise ValueError(
                    f"{field}[{where}].labels: values {sorted(vals)} outside 0..{len(class_names) - 1}"
                )
            labels |= vals

    def name(c: int) -> Any:
        return class_names[c] if class_names is not None else c

    result: dict[str, Any] = {"num_gt": {}, "predicted_only": {}}
    per_thr: dict[float, dict[str, dict]] = {t: {"ap": {}, "recall": {}} for t in iou_thresholds}
    for c in sorted(labels):
        dets: list[tuple[float, int, int, float]] = []
        num_gt = []
        for s, ((pb, ps, pl), (gb, gl), _) in enumerate(scenes):
            pbox, pscore, gbox = pb[pl == c], ps[pl == c], gb[gl == c]
            num_gt.append(len(gbox))
            if len(pbox) == 0:
                continue
            if len(gbox):
                iou = box3d_iou_matrix(pbox, gbox)
                best, arg = iou.max(1), iou.argmax(1)  # argmax: the first maximum, as VoteNet
            else:
                best, arg = np.full(len(pbox), -math.inf), np.zeros(len(pbox), dtype=int)
            dets += [(float(ps_), s, int(a), float(b)) for ps_, a, b in zip(pscore, arg, best, strict=True)]
        npos = sum(num_gt)
        if npos == 0:
            result["predicted_only"][name(c)] = len(dets)
            continue
        result["num_gt"][name(c)] = npos
        order = np.argsort(-np.array([d[0] for d in dets]), kind="stable")
        dets = [dets[i] for i in order]
        for t in iou_thresholds:
            tp = _class_curve(dets, num_gt, t)
            ctp, cfp = np.cumsum(tp), np.cumsum(1.0 - tp)
            rec = ctp / npos
            prec = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
            per_thr[t]["ap"][name(c)] = voc_ap(rec, prec) if len(dets) else 0.0
            per_thr[t]["recall"][name(c)] = float(rec[-1]) if len(dets) else 0.0
    if not result["num_gt"]:
        raise ValueError("eval_det: the ground truth has no boxes, so mAP is undefined")
    for t in iou_thresholds:
        key = f"{t:g}"
        ap, rec = per_thr[t]["ap"], per_thr[t]["recall"]
        result[f"map@{key}"] = float(np.mean(list(ap.values())))
        result[f"mar@{key}"] = float(np.mean(list(rec.values())))
        result[f"ap@{key}"] = ap
        result[f"recall@{key}"] = rec
    return result
