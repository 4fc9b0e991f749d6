"""Point-cloud classification (TinvNN on the procedural ``Shapes``) for the shared trainer."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset
from torch_geometric.loader import DataLoader

from geo3d.data.shapes import CLASS_NAMES, NUM_PARTS, PARTS, Shapes
from geo3d.data.transforms import Compose, RandomRotate, RandomScaleJitter
from geo3d.registry import architectures_of
from geo3d.train.config import ExperimentConfig

ARCHS = architectures_of("shape-classifier")
SEG_ARCHS = architectures_of("shape-segmenter")


def with_aux_loss(model: nn.Module, loss: torch.Tensor, parts: dict) -> tuple[torch.Tensor, dict]:
    """Add the auxiliary training loss a model exposes after its forward (PaRot's disentanglement)."""
    aux = getattr(getattr(model, "module", model), "aux_loss", None)  # unwrap DistributedDataParallel
    if aux is not None:
        loss = loss + aux
        parts["aux"] = float(aux.detach())
    return loss, parts


class PointCloudClassificationTask:
    """Cross-entropy on shape labels; validation accuracy under SO(3) rotations of the val split.

    ``model.arch`` picks the network: ``tinvnn`` (default), ``tinvnn_dgcnn``, ``dgcnn``, ``vn_dgcnn``
    or ``parot``;
    a model's ``aux_loss`` (set by its forward in training) is added to the cross-entropy.
    """

    name = "pointcloud-classification"
    headline = "accuracy"

    def __init__(self, cfg: ExperimentConfig) -> None:
        self.cfg = cfg
        self.arch = cfg.arch
        if self.arch not in ARCHS:
            raise ValueError(
                f"model.arch: {self.arch!r} is not a point-cloud classifier ({', '.join(ARCHS)})"
            )

    def datasets(self) -> tuple[Dataset, Dataset]:
        d = self.cfg.data  # a ShapesData: ExperimentConfig checks the task's data sets (TASKS)
        gen = self._augment_gen = torch.Generator().manual_seed(self.cfg.train.seed)
        augment = Compose([RandomScaleJitter(generator=gen), RandomRotate(d.train_rotation, gen)])
        train = Shapes(
            "train",
            d.per_class,
            d.num_points,
            seed=self.cfg.train.seed,
            transform=augment,
            difficulty=d.difficulty,
        )
        val = Shapes(
            "val",
            max(1, d.per_class // 5),
            d.num_points,
            seed=self.cfg.train.seed,
            transform=RandomRotate("so3", torch.Generator().manual_seed(1)),
            difficulty=d.difficulty,
        )
        return train, val

    def set_epoch(self, epoch: int) -> None:
        """Restart the augmentation stream from (seed, epoch): a resumed epoch sees the same rotations."""
        if hasattr(self, "_augment_gen"):
            self._augment_gen.manual_seed(self.cfg.train.seed + 10_007 * (epoch + 1))

    def model_config(self, train_set: Dataset) -> dict[str, Any]:
        config = copy.deepcopy(self.cfg.model)
        config.setdefault("num_classes", len(CLASS_NAMES))
        config["train_rotation"] = self.cfg.data.train_rotation
        config["num_points"] = self.cfg.data.num_points
        config["difficulty"] = self.cfg.data.difficulty  # evaluate rebuilds this Shapes variant
        return config

    def build_model(self, model_config: dict[str, Any]) -> nn.Module:
        from geo3d.registry import build_model

        return build_model(self.arch, model_config)

    def loss(self, model: nn.Module, batch: Any, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        logits = model(batch)
        loss = nn.functional.cross_entropy(logits, batch.y)
        return with_aux_loss(model, loss, {"acc": float((logits.argmax(1) == batch.y).float().mean())})

    def evaluate(self, model: nn.Module, val_set: Dataset) -> dict[str, float]:
        return classification_metrics(model, val_set)


@torch.no_grad()
def classification_metrics(model: nn.Module, dataset: Dataset, batch_size: int = 32) -> dict[str, float]:
    """Overall accuracy and mean per-class accuracy over ``dataset``."""
    was_training = model.training
    model.eval()
    preds, labels = [], []
    for batch in DataLoader(dataset, batch_size=batch_size):
        preds.append(model(batch).argmax(1))
        labels.append(batch.y)
    model.train(was_training)
    pred, y = torch.cat(preds), torch.cat(labels)
    per_class = [float((pred[y == c] == c).float().mean()) for c in y.unique().tolist()]
    return {
        "accuracy": float((pred == y).float().mean()),
        "mean_class_accuracy": sum(per_class) / len(per_class),
    }


class PointCloudSegmentationTask(PointCloudClassificationTask):
    """Part segmentation (ShapeNetPart style, category given) on the same Shapes splits; headline instance mIoU."""

    name = "pointcloud-segmentation"
    headline = "instance_miou"

    def __init__(self, cfg: ExperimentConfig) -> None:
        self.cfg = cfg
        self.arch = cfg.arch
        if self.arch not in SEG_ARCHS:
            raise ValueError(f"model.arch: {self.arch!r} is not a part segmenter ({', '.join(SEG_ARCHS)})")

    def model_config(self, train_set: Dataset) -> dict[str, Any]:
        config = super().model_config(train_set)
        config.pop("num_classes", None)
        config.setdefault("num_categories", len(CLASS_NAMES))
        config.setdefault("num_parts", NUM_PARTS)
        return config

    def loss(self, model: nn.Module, batch: Any, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        logits = model(batch)
        loss = nn.functional.cross_entropy(logits, batch.part)
        return with_aux_loss(model, loss, {"acc": float((logits.argmax(1) == batch.part).float().mean())})

    def evaluate(self, model: nn.Module, val_set: Dataset) -> dict[str, float]:
        return segmentation_metrics(model, val_set)


@torch.no_grad()
def segmentation_metrics(model: nn.Module, dataset: Dataset, batch_size: int = 32) -> dict[str, float]:
    """Instance and class mIoU with ShapeNetPart's convention.

    A point's prediction is the argmax over its category's parts only; a shape's
    IoU is the mean over its category's parts, where a part absent from both the
    prediction and the truth counts as 1. Instance mIoU averages shapes, class
    mIoU averages the per-category means.
    """
    was_training = model.training
    model.eval()
    per_shape: list[tuple[int, float]] = []
    allowed = torch.full((len(CLASS_NAMES), NUM_PARTS), float("-inf"))
    for c, name in enumerate(CLASS_NAMES):
        allowed[c, PARTS[name]] = 0.0
    for batch in DataLoader(dataset, batch_size=batch_size):
        logits = model(batch) + allowed[batch.y[batch.batch]]
        pred = logits.argmax(1)
        for g in range(batch.num_graphs):
            mask = batch.batch == g
            c = int(batch.y[g])
            p, t = pred[mask], batch.part[mask]
            ious = []
            for part in PARTS[CLASS_NAMES[c]]:
                inter = ((p == part) & (t == part)).sum().item()
                union = ((p == part) | (t == part)).sum().item()
                ious.append(1.0 if union == 0 else inter / union)
            per_shape.append((c, sum(ious) / len(ious)))
    model.train(was_training)
    by_class: dict[int, list[float]] = {}
    for c, iou in per_shape:
        by_class.setdefault(c, []).append(iou)
    return {
        "instance_miou": sum(iou for _, iou in per_shape) / len(per_shape),
        "class_miou": sum(sum(v) / len(v) for v in by_class.values()) / len(by_class),
    }
