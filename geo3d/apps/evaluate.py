"""`geo3d evaluate` on the procedural Shapes set: a classifier's accuracy or a segmenter's part mIoU
under test-time rotations (and, for part segmenters, on articulated shapes)."""

from __future__ import annotations

import torch
from torch import nn

from geo3d.checkpoint import CheckpointError
from geo3d.data.articulated import Articulated
from geo3d.data.shapes import Shapes
from geo3d.data.transforms import RandomRotate
from geo3d.registry import KINDS, require_kind
from geo3d.train.pointcloud_task import classification_metrics, segmentation_metrics


def evaluate_on_shapes(
    net: nn.Module, rotations: list[str], per_class: int, seed: int, articulated: bool
) -> tuple[dict[str, dict[str, float]], str]:
    """Metrics of a loaded Shapes model per ``"TRAIN/TEST"`` rotation key, and the Shapes variant
    (``difficulty``) it was tested on (the one it was trained on).

    With ``articulated``, part segmenters of the standard variant are also tested on Articulated
    shapes (every part turned about its joint: piecewise, not global, motion), keys ``...+articulated``.

    Raises:
        ValueError: not a Shapes classifier or segmenter, or an unknown rotation.
    """
    config = net.geo3d_checkpoint["config"]
    try:
        arch = require_kind(net, "shape-classifier", "shape-segmenter")
    except CheckpointError as exc:
        raise ValueError(f"{exc} (scene models are scored on Rooms)") from exc
    metric_fn = segmentation_metrics if KINDS[arch] == "shape-segmenter" else classification_metrics
    train_rot = config.get("train_rotation", "?")
    # the Shapes variant it was trained on (recorded in the model config; older checkpoints: the
    # run's data config if they still carry it, else standard)
    experiment = net.geo3d_checkpoint.get("extra", {}).get("train_state", {}).get("experiment", {})
    difficulty = config.get("difficulty", experiment.get("data", {}).get("difficulty", "standard"))
    num_points = int(config.get("num_points", 1024))
    results = {}
    for rot in rotations:
        transform = RandomRotate(rot, torch.Generator().manual_seed(seed))
        test = Shapes("test", per_class, num_points, transform=transform, difficulty=difficulty)
        results[f"{train_rot}/{rot}"] = metric_fn(net, test)
        if KINDS[arch] == "shape-segmenter" and articulated and difficulty == "standard":
            moved = Articulated("test", per_class, num_points, transform=transform)
            results[f"{train_rot}/{rot}+articulated"] = metric_fn(net, moved)
    return results, difficulty
