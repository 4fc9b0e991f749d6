"""``geo3d detect``: 3D boxes in a user's scan with a trained detector, as JSON and an optional picture.

The scan (any file :func:`geo3d.data.scan_files.read_point_cloud` reads) is
brought to the point count the detector was trained on (``num_points`` in its
checkpoint's config): a larger scan is subsampled uniformly at random without
replacement (the training scenes are area-uniform samples, so this keeps their
density), a smaller one is padded by repeating randomly chosen points
(duplicates add nothing to the max-pooled features). Coordinates are used as
given: metres, z up, as in training; the detector sees only relative
positions, so where the origin lies does not matter.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch_geometric.data import Batch, Data

from geo3d.files import atomic_write
from geo3d.metrics.detection import points_in_boxes


def fit_points(scan: Data, num_points: int, generator: torch.Generator) -> tuple[Data, str]:
    """``scan`` with exactly ``num_points`` points, and a sentence saying what was done.

    Args:
        scan: ``pos [N, 3]`` and optional ``normal [N, 3]``.
        num_points: the detector's training point count.
        generator: draws the subsample / the repeated points.
    """
    n = scan.pos.shape[0]
    if n == num_points:
        idx, note = torch.arange(n), f"{n} points, as the model was trained"
    elif n > num_points:
        idx = torch.randperm(n, generator=generator)[:num_points]
        note = f"{n} points, subsampled uniformly to the model's {num_points}"
    else:
        extra = torch.randint(n, (num_points - n,), generator=generator)
        idx = torch.cat([torch.arange(n), extra])
        note = f"{n} points, padded to the model's {num_points} by repeating random points"
        if n < num_points // 2:
            note += " (much sparser than training: expect fewer, less accurate boxes)"
    out = Data(pos=scan.pos[idx].float())
    if getattr(scan, "normal", None) is not None:
        out.normal = scan.normal[idx].float()
    return out, note


def _wrap(yaw: Tensor) -> Tensor:
    return torch.remainder(yaw + math.pi, 2 * math.pi) - math.pi


@torch.no_grad()
def detect(
    model: nn.Module, points: Data, nms_iou: float = 0.25, score_threshold: float = 0.5
) -> dict[str, Tensor]:
    """Run a detector on one scene ``pos [N, 3]``; ``boxes [K, 7]`` (yaw in ``[-pi, pi)``), ``scores``, ``labels``.

    Also ``point_class [N]``: the class of each point, from the model's
    ``seg_logits`` when it has a segmentation head (0 = background, k + 1 =
    class k, shifted to -1 / k here), else the class of the highest-scoring box
    that contains the point (-1: none).
    """
    if not hasattr(model, "decode"):
        raise ValueError("this model has no detection head (no decode)")
    device = next(iter(model.parameters()), torch.empty(0)).device
    batch = Batch.from_data_list([points]).to(device)
    out = model(batch)
    res = model.decode(out, nms_iou=nms_iou, score_threshold=score_threshold)[0]
    boxes = res["boxes"].cpu().clone()
    boxes[:, 6] = _wrap(boxes[:, 6])
    scores, labels = res["scores"].cpu(), res["labels"].cpu()
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
