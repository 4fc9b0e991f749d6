"""``geo3d detect``: 3D boxes in a user's scan with a trained detector, as JSON and an optional picture.

Inference is deterministic and follows the scan: the same file gives the same
boxes on every run, and a scan rotated about z, translated or with its points
reordered gives the boxes moved with it (float round-off aside). Three steps
make it so:

- Every point gets a *priority* (:func:`point_priority`): a hash of the seed and
  of the point's 1 cm cell in a frame fixed to the scan (origin at the centroid,
  x toward the point farthest from it horizontally, z up). The frame moves with
  the scan, so the priorities do too; only a point within round-off of a cell
  wall can change its priority (about 1 point in 2,000).
- The scan is brought to the detector's training point count (``num_points`` in
  its checkpoint's config) by keeping the points of lowest priority (a larger
  scan: a uniform random subsample, the density the training scenes had) or by
  repeating points in priority order (a smaller one).
- APEN detectors draw their random initial parts from the same priorities
  (``point_priority``, see :func:`geo3d.nn.partition.random_fill`) rather than from
  a random generator, and the noise of their sampled part assignments from hashes
  of them (:func:`geo3d.nn.partition.assign_parts`): a generator's draws follow the
  point order, and the 3 points of 28,000 whose priority flips at a cell wall
  reorder the subsample. Their FPS steps start at the point farthest from the
  centroid. Everything after is a function of the points.

Boxes then go through the model's per-class 3D NMS (IoU ``nms_iou``) and a
class-agnostic duplicate suppression (:func:`~geo3d.ops.boxes.suppress_close_centres`:
no two boxes whose centres are within half the higher-scoring box's larger
horizontal size in plan: objects stand on the floor, so a box above another is the
same object found in two pieces), and are kept above ``score_threshold`` (the value calibrated on
validation scenes and kept in the checkpoint's config, else 0.5). Coordinates are
used as given: metres, z up, as in training.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch_geometric.data import Batch, Data

from geo3d.files import atomic_write
from geo3d.ops.boxes import points_in_boxes, suppress_close_centres
from geo3d.ops.hashing import GOLDEN, hash_unit, splitmix64

PRIORITY_CELL = 0.01  # metres: the grid of point_priority (round-off crossings ~ 3 * 1e-6 / cell per point)
DEFAULT_SCORE_THRESHOLD = 0.5  # VoteNet's demo, for checkpoints without a calibrated one
DUPLICATE_FRACTION = 0.5  # suppress_close_centres: half an object size


def scan_frame_coordinates(pos: Tensor) -> Tensor:
    """``pos [N, 3]`` in the scan's own frame, float64 ``[N, 3]``: origin at the centroid, x toward the
    point farthest from it horizontally, z up. Moves with any rotation about z and translation."""
    rel = pos.detach().double()
    rel = rel - rel.mean(0)
    far = int((rel[:, :2] ** 2).sum(1).argmax())
    norm = float(rel[far, :2].norm())
    if norm == 0.0:  # every point on one vertical line: any horizontal axis will do
        return rel
    c, s = float(rel[far, 0]) / norm, float(rel[far, 1]) / norm
    x = rel[:, 0] * c + rel[:, 1] * s
    y = -rel[:, 0] * s + rel[:, 1] * c
    return torch.stack([x, y, rel[:, 2]], 1)


def point_priority(pos: Tensor, seed: int = 0, cell: float = PRIORITY_CELL) -> Tensor:
    """A priority in ``(0, 1]`` per point, ``[N]`` float64: uniform-looking, a function of the seed and of
    the point's ``cell``-sized cell in :func:`scan_frame_coordinates`, so it follows the scan.

    Points sharing a cell share a priority (:func:`fit_points` breaks those ties by a finer cell).
    """
    if len(pos) == 0:
        return torch.empty(0, dtype=torch.float64)
    return _cell_priority(scan_frame_coordinates(pos), seed, cell)


def _cell_priority(frame: Tensor, seed: int, cell: float) -> Tensor:
    """:func:`point_priority` from coordinates already in the scan's frame ``[N, 3]``."""
    ijk = torch.floor(frame / cell).long()
    h = splitmix64(torch.full((len(frame),), int(seed), dtype=torch.long) + GOLDEN)
    for a in range(3):
        h = splitmix64(h ^ (ijk[:, a] * GOLDEN))
    return hash_unit(h)


def fit_points(scan: Data, num_points: int, seed: int = 0) -> tuple[Data, str]:
    """``scan`` with exactly ``num_points`` points (and their ``point_priority``), and a sentence saying
    what was done.

    A larger scan keeps its ``num_points`` points of lowest :func:`point_priority`
    (a uniform random subsample that follows the scan under rotation and
    reordering); a smaller one repeats points in priority order.

    Args:
        scan: ``pos [N, 3]`` and optional ``normal [N, 3]``.
        num_points: the detector's training point count.
        seed: the seed of the priorities.
    """
    n = scan.pos.shape[0]
    frame = scan_frame_coordinates(scan.pos) if n else torch.zeros(0, 3, dtype=torch.float64)
    priority = _cell_priority(frame, seed, PRIORITY_CELL)  # = point_priority(scan.pos, seed)
    # Points sharing a cell share a priority: break the ties by a finer cell's hash, not by file
    # order, so that a reordered file keeps the same points (ties at the cut happen at 28,000 points).
    tie = _cell_priority(frame, seed + 1, PRIORITY_CELL / 64)
    by_tie = torch.sort(tie, stable=True).indices
    order = by_tie[torch.sort(priority[by_tie], stable=True).indices]
    if n == num_points:
        idx, note = order, f"{n} points, as the model was trained"
    elif n > num_points:
        idx = order[:num_points]
        note = f"{n} points, subsampled uniformly to the model's {num_points}"
    else:
        idx = torch.cat([order, order[torch.arange(num_points - n) % n]])
        note = f"{n} points, padded to the model's {num_points} by repeating points"
        if n < num_points // 2:
            note += " (much sparser than training: expect fewer, less accurate boxes)"
    out = Data(pos=scan.pos[idx].float(), point_priority=priority[idx])
    if getattr(scan, "normal", None) is not None:
        out.normal = scan.normal[idx].float()
    return out, note


def _wrap(yaw: Tensor) -> Tensor:
    return torch.remainder(yaw + math.pi, 2 * math.pi) - math.pi


def calibrated_score_threshold(model: nn.Module) -> float:
    """The score threshold kept in the model's checkpoint config (``score_threshold``), else 0.5."""
    config = getattr(model, "geo3d_checkpoint", {}).get("config", {})
    value = config.get("score_threshold")
    return DEFAULT_SCORE_THRESHOLD if value is None else float(value)


@torch.no_grad()
def detect(
    model: nn.Module,
    points: Data,
    nms_iou: float = 0.25,
    score_threshold: float | None = None,
    duplicate_fraction: float | None = DUPLICATE_FRACTION,
    seed: int = 0,
) -> dict[str, Tensor]:
    """Run a detector on one scene ``pos [N, 3]``; ``boxes [K, 7]`` (yaw in ``[-pi, pi)``), ``scores``, ``labels``.

    Deterministic: the model's random draws come from ``torch.Generator().manual_seed(seed)``
    and, for APEN, from ``points.point_priority`` when present (:func:`fit_points` sets it).
    Boxes: per-class IoU NMS at ``nms_iou``, then (unless ``duplicate_fraction`` is None)
    :func:`~geo3d.ops.boxes.suppress_close_centres` over all classes, then the score
    threshold (None: :func:`calibrated_score_threshold`).

    Also ``point_class [N]``: the class of each point, from the model's
    ``seg_logits`` when it has a segmentation head (0 = background, k + 1 =
    class k, shifted to -1 / k here), else the class of the highest-scoring box
    that contains the point (-1: none).
    """
    if not hasattr(model, "decode"):
        raise ValueError("this model has no detection head (no decode)")
    threshold = calibrated_score_threshold(model) if score_threshold is None else float(score_threshold)
    device = next(iter(model.parameters()), torch.empty(0)).device
    batch = Batch.from_data_list([points]).to(device)
    kwargs = {}
    if "generator" in inspect.signature(model.forward).parameters:
        kwargs["generator"] = torch.Generator(device=device).manual_seed(int(seed))
    out = model(batch, **kwargs)
    res = model.decode(out, nms_iou=nms_iou, score_threshold=0.0)[0]
    boxes, scores, labels = res["boxes"].cpu().clone(), res["scores"].cpu(), res["labels"].cpu()
    if duplicate_fraction is not None and len(boxes):
        keep = suppress_close_centres(boxes, scores, duplicate_fraction, horizontal_only=True)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    keep = scores > threshold
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    boxes[:, 6] = _wrap(boxes[:, 6])
    if isinstance(out, dict) and "seg_logits" in out:
        point_class = out["seg_logits"].argmax(-1).cpu() - 1
    else:
        inside = points_in_boxes(points.pos, boxes)  # [N, K]; boxes come sorted by decreasing score
        first = torch.where(inside.any(1), inside.float().argmax(1), -1)
        point_class = torch.where(first >= 0, labels[first.clamp(min=0)], -1)
    return {"boxes": boxes, "scores": scores, "labels": labels, "point_class": point_class}


def boxes_json(result: dict[str, Tensor], class_names: Sequence[str]) -> dict[str, Any]:
    """``{"boxes": [{"class", "score", "centre", "size", "yaw"}, ...]}`` by decreasing score (metres, radians)."""
    rows = []
    for box, score, label in zip(result["boxes"], result["scores"], result["labels"], strict=True):
        k = int(label)
        rows.append(
            {
                "class": class_names[k] if k < len(class_names) else str(k),
                "score": round(float(score), 6),
                "centre": [round(float(v), 6) for v in box[:3]],
                "size": [round(float(v), 6) for v in box[3:6]],
                "yaw": round(float(box[6]), 6),
            }
        )
    return {"boxes": rows}


def write_json(payload: dict[str, Any], path: str | Path) -> Path:
    """Write ``{"boxes": [...]}`` as JSON, one box a line, atomically."""
    path = Path(path)
    rows = ",\n".join(f"  {json.dumps(box)}" for box in payload["boxes"])
    with atomic_write(path) as tmp:
        tmp.write_text('{"boxes": [\n' + rows + "\n]}\n" if rows else '{"boxes": []}\n')
    return path


def _footprint(box: Tensor) -> Tensor:
    """``[4, 2]`` top-view corners of a yaw box ``[7]``, counter-clockwise."""
    c, s = math.cos(float(box[6])), math.sin(float(box[6]))
    hx, hy = float(box[3]) / 2, float(box[4]) / 2
    local = torch.tensor([[-hx, -hy], [hx, -hy], [hx, hy], [-hx, hy]])
    rot = torch.tensor([[c, -s], [s, c]])
    return local @ rot.T + box[:2]


def plot_detections(
    pos: Tensor,
    result: dict[str, Tensor],
    class_names: Sequence[str],
    path: str | Path,
    side_view: bool = True,
    title: str = "",
) -> Path:
    """PNG of the points coloured by class (grey: none) and the boxes with ``class score`` labels.

    Top view (x-y, boxes as rotated rectangles) and, with ``side_view``, an x-z
    view (each box as the x-extent of its footprint by its height).

    Raises:
        ImportError: matplotlib is not installed (the message says how to install it).
    """
    try:
        from matplotlib.figure import Figure
        from matplotlib.patches import Polygon, Rectangle
    except ImportError as exc:
        raise ImportError(
            "--plot needs matplotlib, which geo3d does not install by default: "
            "pip install matplotlib (or pip install 'geo3d[bench]')"
        ) from exc
    palette = [
        "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
        "#bcbd22", "#7f7f7f",
    ]  # fmt: skip

    def colour(k: int) -> str:
        return palette[k % len(palette)]

    xyz = pos.cpu().numpy()
    cls = result["point_class"].numpy()
    views = [("top view", 0, 1)] + ([("side view", 0, 2)] if side_view else [])
    span = xyz.max(0) - xyz.min(0) + 1e-6
    height = min(9.0, max(3.0, 6.0 * float(span[1] / span[0]) + 1.0))  # follow the room's top-view aspect
    fig = Figure(figsize=(7 * len(views), height), layout="constrained")
    for v, (name, a, b) in enumerate(views):
        ax = fig.add_subplot(1, len(views), v + 1)
        point_colours = ["#c8c8c8" if k < 0 else colour(int(k)) for k in cls]
        ax.scatter(xyz[:, a], xyz[:, b], s=1.0, c=point_colours, linewidths=0, rasterized=True)
        for box, score, label in zip(result["boxes"], result["scores"], result["labels"], strict=True):
            k = int(label)
            text = f"{class_names[k] if k < len(class_names) else k} {float(score):.2f}"
            if b == 1:
                corners = _footprint(box).numpy()
                ax.add_patch(Polygon(corners, closed=True, fill=False, ec=colour(k), lw=1.5))
                ax.plot(  # heading: from the centre to the middle of the +x face
                    [float(box[0]), (corners[1, 0] + corners[2, 0]) / 2],
                    [float(box[1]), (corners[1, 1] + corners[2, 1]) / 2],
                    color=colour(k),
                    lw=1.0,
                )
                ax.text(
                    corners[:, 0].min(), corners[:, 1].max(), text, color=colour(k), fontsize=7, va="bottom"
                )
            else:
                xs = _footprint(box)[:, 0]
                z0 = float(box[2] - box[5] / 2)
                x0, width = float(xs.min()), float(xs.max() - xs.min())
                ax.add_patch(Rectangle((x0, z0), width, float(box[5]), fill=False, ec=colour(k), lw=1.5))
                ax.text(x0, z0 + float(box[5]), text, color=colour(k), fontsize=7, va="bottom")
        for k in sorted({int(c) for c in cls if c >= 0}):  # legend: the classes the points got
            name_k = class_names[k] if k < len(class_names) else str(k)
            ax.scatter([], [], s=12, c=colour(k), label=name_k)
        if v == 0 and (cls >= 0).any():
            ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, markerscale=1.5)
        ax.set_aspect("equal")
        ax.set_xlabel("x (m)")
        ax.set_ylabel("y (m)" if b == 1 else "z (m)")
        ax.set_title(f"{title} {name}: {len(result['boxes'])} boxes".strip())
    path = Path(path)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return path


def calibrate_score_threshold(
    model: nn.Module,
    scenes: Sequence[Data],
    iou: float = 0.25,
    nms_iou: float = 0.25,
    duplicate_fraction: float | None = DUPLICATE_FRACTION,
    seed: int = 0,
) -> tuple[float, Tensor, Tensor]:
    """The score threshold of highest F1 (class-aware matching at ``iou``, :func:`match_by_score`) on
    validation ``scenes``, run through :func:`detect` exactly as ``geo3d detect`` runs a scan.

    Args:
        scenes: ``Data`` with ``pos [N, 3]``, ``boxes [M, 7]`` and ``box_class [M]`` (Rooms scenes).

    Returns:
        ``(threshold, thresholds [T], f1 [T])``: the best threshold (the lowest of equal F1s),
        and the curve it came from (thresholds 0.05, 0.10, ..., 0.95).
    """
    from geo3d.metrics.detection import f1_by_threshold, match_by_score

    num_points = int(model.geo3d_checkpoint["config"]["num_points"])
    scores, hits, num_gt = [], [], 0
    for scene in scenes:
        points, _ = fit_points(scene, num_points, seed)
        res = detect(model, points, nms_iou, 0.0, duplicate_fraction, seed)
        scores.append(res["scores"])
        hits.append(
            match_by_score(res["boxes"], res["scores"], res["labels"], scene.boxes, scene.box_class, iou)
        )
        num_gt += len(scene.boxes)
    thresholds = torch.arange(1, 20, dtype=torch.float64) * 0.05
    f1 = f1_by_threshold(scores, hits, num_gt, thresholds)
    return float(thresholds[int(f1.argmax())]), thresholds, f1
