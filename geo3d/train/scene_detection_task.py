"""Detection and semantic segmentation of ``Rooms`` with one APEN model (task ``scene_detection_segmentation``).

Same scenes, splits, augmentation and recorded config as the detection task
(``data.num_points``, ``num_scenes``, ``val_scenes``, ``train_rotation``,
``occlusion``). The loss adds three terms, weighted by model-config keys that
the task takes out before building the model:

``det_weight * detection + vote_weight * sum_blocks vote + seg_weight * CE``

- detection: VoteNet's loss with the frame-relative heading
  (:func:`~geo3d.nn.heads.frame_detection.frame_detection_loss`), seeds labelled by
  their point's instance;
- vote: APEN's per-block squared vote error toward each object point's box
  centre (background points cast no vote), as in the scene segmentation task;
- CE: cross-entropy of ``seg_logits`` over the semantic labels (0 background,
  k + 1 class k).

Validation: mAP@0.25 (the headline, selects ``best.pt``), mAP@0.5 and mIoU.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from geo3d.models.apen_loss import apen_loss
from geo3d.nn.heads.frame_detection import frame_detection_loss
from geo3d.train.config import ExperimentConfig
from geo3d.train.detection_task import DetectionTask
from geo3d.train.scene_eval import (
    SEMANTIC_NAMES,
    DetectionMeter,
    SegmentationMeter,
    scene_metrics,
    split_boxes,
)
from geo3d.train.scene_segmentation_task import object_centres

ARCHS = ("apen_detector",)
LOSS_WEIGHTS = {"det_weight": 1.0, "vote_weight": 1.0, "seg_weight": 1.0}


class SceneDetectionSegmentationTask(DetectionTask):
    """Detection loss + APEN's vote and segmentation losses on ``Rooms``; headline mAP@0.25, also mIoU."""

    name = "scene-detection-segmentation"
    headline = "map@0.25"

    def __init__(self, cfg: ExperimentConfig) -> None:
        self.cfg = cfg
        self.arch = cfg.arch
        if self.arch not in ARCHS:
            raise ValueError(f"model.arch: {self.arch!r} is not a detector-segmenter ({', '.join(ARCHS)})")
        self.weights = {}
        for key, default in LOSS_WEIGHTS.items():
            value = cfg.model.get(key, default)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"model.{key}: a loss weight must be a number >= 0, got {value!r}")
            self.weights[key] = float(value)

    def model_config(self, train_set: Dataset) -> dict[str, Any]:
        config = super().model_config(train_set)
        for key in LOSS_WEIGHTS:
            config.pop(key, None)
        return config

    def loss(self, model: nn.Module, batch: Any, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        out = model(batch, generator=generator)
        boxes, labels = split_boxes(batch)
        mean_sizes = getattr(model, "module", model).mean_sizes  # DDP wraps the model
        seed_instance = batch.instance[out["seed_index"]]
        det, parts = frame_detection_loss(out, boxes, labels, mean_sizes, seed_instance=seed_instance)
        centre, is_object = object_centres(batch)
        apen = apen_loss(out, centre, labels=batch.semantic, batch=batch.batch, vote_mask=is_object)
        w = self.weights
        total = (
            w["det_weight"] * det + w["vote_weight"] * apen["vote_loss"] + w["seg_weight"] * apen["seg_loss"]
        )
        acc = float((out["seg_logits"].argmax(-1) == batch.semantic).float().mean())
        logs = {
            "det": float(det.detach()),
            "apen_vote": float(apen["vote_loss"].detach()),
            "ce": float(apen["seg_loss"].detach()),
            "acc": acc,
        }
        keys = ("objectness", "center", "heading_cls", "size_cls", "sem_cls", "axis")  # axis: learned frames
        logs.update({k: parts[k] for k in keys if k in parts})
        return total, logs

    def evaluate(self, model: nn.Module, val_set: Dataset) -> dict[str, float]:
        meters = [DetectionMeter(model), SegmentationMeter(model, SEMANTIC_NAMES)]
        return scene_metrics(model, val_set, meters, batch_size=4)
