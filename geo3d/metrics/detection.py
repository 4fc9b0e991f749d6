"""3D detection metrics: VoteNet's ``eval_det`` (VOC area AP, mAP@0.25/0.5), score matching and F1.

The box geometry (IoU, NMS) is :mod:`geo3d.ops.boxes`. ``eval_det`` follows
VoteNet (facebookresearch/votenet ``utils/eval_det.py``, ``models/ap_helper.py``)
and the VOC code it derives from; where VoteNet would give NaN we choose and
document (see :func:`eval_det`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from geo3d.ops.boxes import box3d_iou_matrix


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
