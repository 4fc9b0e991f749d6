"""3D object detection on the procedural ``Rooms`` (``votenet``, ``vn_detector``) for the shared trainer (task ``detection``).

It reads ``data.num_points`` (points a scene), ``data.num_scenes`` /
``data.val_scenes`` (capped by ``data.limit_train`` / ``data.limit_val`` when
set), ``data.occlusion``, ``data.train_rotation`` (``none``, ``z``: the whole
scene about the vertical, ``so3``: boxes re-fitted as in ``scene_so3``) and
``data.cache_dir``. The checkpoint's config records ``num_points`` (and
``occlusion`` when set) so that ``geo3d evaluate`` and ``geo3d detect`` build
inputs like the training ones.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset
from torch_geometric.data import Data

from geo3d.data.room_layout import CLASS_NAMES, NUM_CLASSES
from geo3d.data.rooms import Rooms
from geo3d.data.scene_protocols import apply_protocol
from geo3d.nn.heads.detection_loss import detection_loss
from geo3d.nn.heads.frame_detection import frame_detection_loss
from geo3d.train.config import ExperimentConfig
from geo3d.train.scene_eval import DetectionMeter, scene_metrics, split_boxes

# Detector architectures and their losses: VoteNet's world-frame headings, or (Vector-Neuron
# backbone) headings relative to each proposal's horizontal frame.
LOSSES = {"votenet": detection_loss, "vn_detector": frame_detection_loss}
ARCHS = tuple(LOSSES)
_AUGMENT = {"none": None, "z": "scene_z", "so3": "scene_so3"}


class SceneRotation:
    """Training augmentation: a fresh scene rotation (boxes moved with it) on every call."""

    def __init__(self, protocol: str, generator: torch.Generator) -> None:
        self.protocol, self.generator = protocol, generator

    def __call__(self, data: Data) -> Data:
        return apply_protocol(data, self.protocol, self.generator)


def class_mean_sizes(dataset: Dataset, num_classes: int = NUM_CLASSES) -> list[list[float]]:
    """Mean box size per class over ``dataset``; classes never seen get the mean of all boxes."""
    total = torch.zeros(num_classes, 3, dtype=torch.float64)
    count = torch.zeros(num_classes, dtype=torch.float64)
    for d in dataset:
        total.index_add_(0, d.box_class, d.boxes[:, 3:6].double())
        count += torch.bincount(d.box_class, minlength=num_classes)
    if not bool(count.any()):
        raise ValueError("class_mean_sizes: the dataset has no boxes")
    overall = total.sum(0) / count.sum()
    mean = torch.where(count[:, None] > 0, total / count.clamp(min=1)[:, None], overall)
    return mean.tolist()


class DetectionTask:
    """VoteNet's loss on ``Rooms``; validation mAP@0.25 / mAP@0.5 with :func:`eval_det`."""

    name = "detection"
    headline = "map@0.25"

    def __init__(self, cfg: ExperimentConfig) -> None:
        self.cfg = cfg
        self.arch = cfg.arch
        if self.arch not in ARCHS:
            raise ValueError(f"model.arch: {self.arch!r} is not a detector ({', '.join(ARCHS)})")
        check_scene_keys(cfg, self.arch)

    def datasets(self) -> tuple[Dataset, Dataset]:
        d = self.cfg.data  # a RoomsData: ExperimentConfig checks the task's data sets (TASKS)
        protocol = _AUGMENT[d.train_rotation]
        gen = self._augment_gen = torch.Generator().manual_seed(self.cfg.train.seed)
        augment = SceneRotation(protocol, gen) if protocol else None
        common = {
            "seed": self.cfg.train.seed,
            "num_points": d.num_points,
            "occlusion": d.occlusion,
            "walls": d.walls,
            "object_yaw": d.object_yaw,
            "cache_dir": d.cache_dir,
        }
        train = Rooms("train", num_scenes=_capped(d.num_scenes, d.limit_train), transform=augment, **common)
        val = Rooms("val", num_scenes=_capped(d.val_scenes, d.limit_val), **common)
        return train, val

    def set_epoch(self, epoch: int) -> None:
        """Restart the augmentation stream from (seed, epoch): a resumed epoch sees the same rotations."""
        if hasattr(self, "_augment_gen"):
            self._augment_gen.manual_seed(self.cfg.train.seed + 10_007 * (epoch + 1))

    def model_config(self, train_set: Dataset) -> dict[str, Any]:
        config = copy.deepcopy(self.cfg.model)
        config.setdefault("num_classes", NUM_CLASSES)
        config.setdefault("mean_sizes", class_mean_sizes(train_set, config["num_classes"]))
        config["num_points"] = self.cfg.data.num_points
        config["train_rotation"] = self.cfg.data.train_rotation
        config["class_names"] = list(CLASS_NAMES)
        config.update(scene_keys(self.cfg))
        return config

    def build_model(self, model_config: dict[str, Any]) -> nn.Module:
        from geo3d.registry import build_model

        return build_model(self.arch, model_config)

    def loss(self, model: nn.Module, batch: Any, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        out = model(batch)
        boxes, labels = split_boxes(batch)
        mean_sizes = getattr(model, "module", model).mean_sizes  # DDP wraps the model
        loss = LOSSES[self.arch]
        return loss(out, boxes, labels, mean_sizes, seed_instance=batch.instance[out["seed_index"]])

    def evaluate(self, model: nn.Module, val_set: Dataset) -> dict[str, float]:
        return detection_metrics(model, val_set)


def detection_metrics(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int = 8,
    nms_iou: float = 0.25,
    score_threshold: float = 0.05,
) -> dict[str, float]:
    """mAP and mean recall at IoU 0.25 and 0.5, and per-class AP (``ap@0.25/<class>``), over ``dataset``.

    Classes predicted but absent from the ground truth are left out of the
    means (see :func:`geo3d.metrics.detection.eval_det`).
    """
    meter = DetectionMeter(model, nms_iou=nms_iou, score_threshold=score_threshold)
    return scene_metrics(model, dataset, [meter], batch_size=batch_size)


def _capped(count: int, limit: int | None) -> int:
    return count if limit is None else min(count, limit)


def scene_keys(cfg: ExperimentConfig) -> dict[str, Any]:
    """The ``Rooms`` options of ``cfg.data`` that differ from their defaults, for the model config.

    Evaluation rebuilds the test scenes from a checkpoint's config, so a model trained on
    occluded or aligned scenes is tested on such scenes.
    """
    keys: dict[str, Any] = {}
    if cfg.data.occlusion:
        keys["occlusion"] = True
    if cfg.data.object_yaw != "random":
        keys["object_yaw"] = cfg.data.object_yaw
    return keys


def check_scene_keys(cfg: ExperimentConfig, arch: str) -> None:
    """Refuse, before training, scene options that ``arch``'s checkpoints cannot record."""
    for key in scene_keys(cfg):
        if key not in _recorded_keys(arch):
            raise ValueError(
                f"data.{key}: {arch!r} checkpoints cannot record it yet "
                f"(add {key!r} to the metadata of its config class, geo3d/models/{arch}.py)"
            )


def _recorded_keys(arch: str) -> tuple[str, ...]:
    """Config keys an architecture accepts without using them (its typed config's ``metadata``)."""
    from geo3d.registry import config_class

    return config_class(arch).metadata
