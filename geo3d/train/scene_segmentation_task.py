"""Semantic segmentation of ``Rooms`` scenes with APEN (task ``scene_segmentation``).

Same scenes, splits and augmentation as the detection task (``data.num_points``,
``num_scenes``, ``val_scenes``, ``train_rotation``); the targets are the
per-point semantic labels (0 background, k + 1 furniture class k) and, for
APEN's votes, the centre of each point's object (its ground-truth box centre;
background points cast no vote). Validation: semantic mIoU
(:class:`~geo3d.train.scene_eval.SegmentationMeter`).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from geo3d.data.room_layout import NUM_CLASSES
from geo3d.models.apen_loss import apen_loss
from geo3d.train.config import ExperimentConfig
from geo3d.train.detection_task import DetectionTask, check_scene_keys, scene_keys
from geo3d.train.scene_eval import SEMANTIC_NAMES, SegmentationMeter, scene_metrics

ARCHS = ("apen",)


def object_centres(batch: Any) -> tuple[Tensor, Tensor]:
    """Each point's object centre ``[N, 3]`` (its box's; the point itself for background) and the
    mask ``[N]`` of object points, for a PyG batch of ``Rooms`` scenes (``instance`` is per scene)."""
    counts = batch.num_objects.reshape(-1)
    first_box = torch.cumsum(counts, 0) - counts  # index of each scene's first box in batch.boxes
    scene = batch.batch if getattr(batch, "batch", None) is not None else torch.zeros_like(batch.instance)
    is_object = batch.instance >= 0
    box = (batch.instance + first_box[scene]).clamp(min=0)
    centre = torch.where(is_object[:, None], batch.boxes[box, :3].to(batch.pos.dtype), batch.pos)
    return centre, is_object


class SceneSegmentationTask(DetectionTask):
    """APEN's loss (every block's vote error + ``seg_weight`` x cross-entropy) on ``Rooms``; headline mIoU."""

    name = "scene-segmentation"
    headline = "miou"

    def __init__(self, cfg: ExperimentConfig) -> None:
        self.cfg = cfg
        self.arch = cfg.arch
        if self.arch not in ARCHS:
            raise ValueError(f"model.arch: {self.arch!r} is not a scene segmenter ({', '.join(ARCHS)})")
        check_scene_keys(cfg, self.arch)

    def model_config(self, train_set: Dataset) -> dict[str, Any]:
        config = copy.deepcopy(self.cfg.model)
        config.pop("seg_weight", None)
        config.setdefault("num_classes", 1 + NUM_CLASSES)
        config["num_points"] = self.cfg.data.num_points
        config["train_rotation"] = self.cfg.data.train_rotation
        config.update(scene_keys(self.cfg))
        return config

    def build_model(self, model_config: dict[str, Any]) -> nn.Module:
        from geo3d.registry import build_model

        return build_model(self.arch, model_config)

    def loss(self, model: nn.Module, batch: Any, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        out = model(batch, generator=generator)
        centre, is_object = object_centres(batch)
        terms = apen_loss(
            out,
            centre,
            labels=batch.semantic,
            batch=batch.batch,
            seg_weight=float(self.cfg.model.get("seg_weight", 0.1)),
            vote_mask=is_object,
        )
        acc = float((out["seg_logits"].argmax(-1) == batch.semantic).float().mean())
        return terms["loss"], {
            "vote": float(terms["vote_loss"].detach()),
            "ce": float(terms["seg_loss"].detach()),
            "acc": acc,
        }

    def evaluate(self, model: nn.Module, val_set: Dataset) -> dict[str, float]:
        return scene_metrics(model, val_set, [SegmentationMeter(model, SEMANTIC_NAMES)], batch_size=4)
