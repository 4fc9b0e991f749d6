"""Scene models (detectors, semantic segmenters) on ``Rooms`` under the scene protocols.

One pass over a split feeds every *meter* of a model: :class:`DetectionMeter`
(VoteNet's ``eval_det``: ``map@0.25``, ``map@0.5``, ...) and
:class:`SegmentationMeter` (``miou`` over the semantic labels). Which meters a
checkpoint gets is looked up by its architecture in :data:`SCENE_METERS`; a new
scene architecture (an APEN-backed detector, a model with both heads) joins
``geo3d evaluate --protocol all`` with one :func:`register_scene_meters` call.

:func:`evaluate_protocols` builds the ``Rooms`` test split once, as the
checkpoint's config says (``num_points``, ``occlusion``), and moves it under
each protocol of :mod:`geo3d.data.scene_protocols` with a fixed seed, so every
model is scored on identical scenes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from torch_geometric.loader import DataLoader

from geo3d.data.room_layout import CLASS_NAMES
from geo3d.data.rooms import Rooms
from geo3d.data.scene_protocols import PROTOCOLS, ProtocolSplit
from geo3d.metrics.detection import eval_det

SEMANTIC_NAMES = ("background", *CLASS_NAMES)  # Rooms' semantic labels: 0 background, k + 1 class k
TEST_SEED = 0  # the Rooms test split every scene model is scored on


class Meter(Protocol):
    """Accumulates one metric family over batches; ``result`` gives flat ``name -> float``."""

    def update(self, out: Any, batch: Any) -> None: ...
    def result(self) -> dict[str, float]: ...


def split_boxes(batch: Any) -> tuple[list[Tensor], list[Tensor]]:
    """A PyG batch of scenes -> per-scene GT boxes ``[M_b, 7]`` and labels ``[M_b]``."""
    counts = batch.num_objects.tolist()
    return list(torch.split(batch.boxes, counts)), list(torch.split(batch.box_class, counts))


class DetectionMeter:
    """Boxes from ``model.decode(out)`` against the batch's GT boxes; VoteNet's ``eval_det`` at the end.

    Args:
        model: has ``decode(outputs, nms_iou=..., score_threshold=...)`` returning per
            scene ``{boxes [K, 7], scores [K], labels [K]}`` (DDP-wrapped is fine).
        nms_iou, score_threshold: passed to ``decode`` (VoteNet evaluates at 0.25 / 0.05).
        class_names: names of the box labels (default ``Rooms.CLASS_NAMES``).
    """

    def __init__(
        self,
        model: nn.Module,
        nms_iou: float = 0.25,
        score_threshold: float = 0.05,
        class_names: Sequence[str] = CLASS_NAMES,
    ) -> None:
        self.decode = getattr(model, "module", model).decode  # DDP wraps the model
        self.nms_iou, self.score_threshold = nms_iou, score_threshold
        self.class_names = list(class_names)
        self.preds: list[dict[str, Tensor]] = []
        self.gts: list[dict[str, Tensor]] = []

    def update(self, out: Any, batch: Any) -> None:
        self.preds += self.decode(out, nms_iou=self.nms_iou, score_threshold=self.score_threshold)
        self.gts += [{"boxes": b, "labels": lab} for b, lab in zip(*split_boxes(batch), strict=True)]

    def result(self) -> dict[str, float]:
        """``map@T``, ``mar@T`` and ``ap@T/<class>`` for T in 0.25, 0.5."""
        res = eval_det(self.preds, self.gts, class_names=self.class_names)
        flat = {k: v for k, v in res.items() if k.startswith(("map@", "mar@"))}
        for key in ("ap@0.25", "ap@0.5"):
            flat.update({f"{key}/{name}": ap for name, ap in res[key].items()})
        return flat


class SegmentationMeter:
    """Per-point semantic mIoU, accumulated over every point of the split (ScanNet / S3DIS style).

    Per class ``IoU = TP / (TP + FP + FN)`` over all points; ``miou`` is the
    mean over the classes present in the ground truth (a class that is only
    predicted still costs its false positives through the true classes' FN).
    Logits are ``out["seg_logits"]`` (or ``out`` itself when it is a tensor),
    ``[N, C]`` with ``C = len(class_names)``; targets ``batch.semantic [N]``.
    """

    def __init__(self, model: nn.Module | None = None, class_names: Sequence[str] = SEMANTIC_NAMES) -> None:
        self.class_names = list(class_names)
        c = len(self.class_names)
        self.confusion = torch.zeros(c, c, dtype=torch.long)  # [true, predicted]

    def update(self, out: Any, batch: Any) -> None:
        logits = out["seg_logits"] if isinstance(out, dict) else out
        c = len(self.class_names)
        if logits.shape[-1] != c:
            raise ValueError(
                f"segmentation: the model predicts {logits.shape[-1]} classes, the scenes have {c} "
                f"({', '.join(self.class_names)})"
            )
        pred, true = logits.argmax(-1).cpu(), batch.semantic.cpu()
        self.confusion += torch.bincount(true * c + pred, minlength=c * c).reshape(c, c)

    def result(self) -> dict[str, float]:
        """``miou``, ``accuracy`` (overall, per point) and ``iou/<class>`` for the classes present."""
        tp = self.confusion.diag().double()
        gt, pr = self.confusion.sum(1).double(), self.confusion.sum(0).double()
        present = gt > 0
        if not bool(present.any()):
            raise ValueError("segmentation: the scenes have no labelled points")
        iou = tp / (gt + pr - tp).clamp(min=1)
        res = {"miou": float(iou[present].mean()), "accuracy": float(tp.sum() / gt.sum())}
        res.update({f"iou/{n}": float(iou[k]) for k, n in enumerate(self.class_names) if present[k]})
        return res


MeterFactory = Callable[[nn.Module], Meter]
SCENE_METERS: dict[str, tuple[MeterFactory, ...]] = {
    "votenet": (DetectionMeter,),
    "vn_detector": (DetectionMeter,),  # Vector-Neuron backbone + frame-relative head
    "apen": (SegmentationMeter,),  # APEN's seg_logits over Rooms' semantic labels
    "apen_detector": (DetectionMeter, SegmentationMeter),  # APEN with both heads (apen-rooms)
}


def register_scene_meters(arch: str, *factories: MeterFactory) -> None:
    """Score checkpoints of ``arch`` with these meters (e.g. both heads: ``DetectionMeter, SegmentationMeter``)."""
    if not factories:
        raise ValueError(f"register_scene_meters({arch!r}): give at least one meter")
    SCENE_METERS[arch] = tuple(factories)


@torch.no_grad()
def scene_metrics(
    model: nn.Module, dataset: Dataset, meters: Iterable[Meter], batch_size: int = 8
) -> dict[str, float]:
    """One pass of ``model`` (eval mode) over ``dataset``, feeding every meter; their results merged."""
    meters = list(meters)
    was_training = model.training
    model.eval()
    device = next(iter(model.parameters()), torch.empty(0)).device
    try:
        for batch in DataLoader(dataset, batch_size=batch_size):
            batch = batch.to(device)
            out = model(batch)
            for meter in meters:
                meter.update(out, batch)
    finally:
        model.train(was_training)
    merged: dict[str, float] = {}
    for meter in meters:
        merged.update(meter.result())
    return merged


def rooms_test_split(
    config: dict[str, Any],
    num_scenes: int,
    cache_dir: str | Path | None = None,
    object_yaw: str | None = None,
) -> Rooms:
    """The ``Rooms`` test split (seed :data:`TEST_SEED`) as a checkpoint's config says: points, occlusion,
    object yaws (``object_yaw`` overrides the config's: test a model on other scenes than it was trained on)."""
    if "num_points" not in config:
        raise ValueError("the checkpoint's config has no 'num_points': not trained on Rooms scenes")
    return Rooms(
        "test",
        num_scenes=num_scenes,
        seed=TEST_SEED,
        num_points=int(config["num_points"]),
        occlusion=bool(config.get("occlusion", False)),
        object_yaw=object_yaw or str(config.get("object_yaw", "random")),
        cache_dir=cache_dir,
    )


def evaluate_protocols(
    model: nn.Module,
    arch: str,
    protocols: Sequence[str] = PROTOCOLS,
    num_scenes: int = 100,
    seed: int = 0,
    batch_size: int = 8,
    cache_dir: str | Path | None = None,
    object_yaw: str | None = None,
) -> dict[str, dict[str, float]]:
    """``{protocol: metrics}`` of a scene model on the Rooms test split moved under each protocol.

    Args:
        model: a loaded scene model (``geo3d.load_model``), with ``geo3d_checkpoint``.
        arch: its architecture; picks the meters in :data:`SCENE_METERS`.
        protocols: names from :data:`~geo3d.data.scene_protocols.PROTOCOLS`.
        num_scenes: test scenes (the same scenes under every protocol).
        seed: seed of the protocols' rotations, and of any randomness in the model
            (APEN's sampled partitions), so a rerun gives the same numbers.
        object_yaw: the test scenes' object yaws, ``"random"`` or ``"aligned"``; default: as
            the model was trained (its config's ``object_yaw``).

    Raises:
        ValueError: an arch with no registered meters, an unknown protocol.
    """
    if arch not in SCENE_METERS:
        raise ValueError(f"{arch!r} is not a scene model (scene models: {', '.join(sorted(SCENE_METERS))})")
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        raise ValueError(f"unknown protocols {unknown}; choose from {', '.join(PROTOCOLS)} or 'all'")
    test = rooms_test_split(model.geo3d_checkpoint["config"], num_scenes, cache_dir, object_yaw)
    results = {}
    for protocol in protocols:
        with torch.random.fork_rng():  # the model's own randomness, seeded without leaking out
            torch.manual_seed(seed)
            meters = [factory(model) for factory in SCENE_METERS[arch]]
            results[protocol] = scene_metrics(
                model, ProtocolSplit(test, protocol, seed), meters, batch_size=batch_size
            )
    return results
