"""Point-cloud classification (TinvNN on the procedural ``Shapes``) for the shared trainer."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset
from torch_geometric.loader import DataLoader

from geo3d.data.shapes import CLASS_NAMES, Shapes
from geo3d.data.transforms import Compose, RandomRotate, RandomScaleJitter
from geo3d.train.config import ExperimentConfig

ARCHS = ("tinvnn", "dgcnn")


class PointCloudClassificationTask:
    """Cross-entropy on shape labels; validation accuracy under SO(3) rotations of the val split.

    ``model.arch`` picks the network: ``tinvnn`` (default) or ``dgcnn``.
    """

    name = "pointcloud-classification"
    headline = "accuracy"

    def __init__(self, cfg: ExperimentConfig) -> None:
        self.cfg = cfg
        self.arch = cfg.model.get("arch", "tinvnn")
        if self.arch not in ARCHS:
            raise ValueError(
                f"model.arch: {self.arch!r} is not a point-cloud classifier ({', '.join(ARCHS)})"
            )

    def datasets(self) -> tuple[Dataset, Dataset]:
        d = self.cfg.data
        if d.dataset != "shapes":
            raise ValueError(
                "data.dataset: the point-cloud task reads 'shapes' (ModelNet40 / ShapeNetPart: not yet)"
            )
        gen = torch.Generator().manual_seed(self.cfg.train.seed)
        augment = Compose([RandomScaleJitter(generator=gen), RandomRotate(d.train_rotation, gen)])
        train = Shapes("train", d.per_class, d.num_points, seed=self.cfg.train.seed, transform=augment)
        val = Shapes(
            "val",
            max(1, d.per_class // 5),
            d.num_points,
            seed=self.cfg.train.seed,
            transform=RandomRotate("so3", torch.Generator().manual_seed(1)),
        )
        return train, val

    def model_config(self, train_set: Dataset) -> dict[str, Any]:
        config = copy.deepcopy(self.cfg.model)
        config.setdefault("num_classes", len(CLASS_NAMES))
        config["train_rotation"] = self.cfg.data.train_rotation
        config["num_points"] = self.cfg.data.num_points
        return config

    def build_model(self, model_config: dict[str, Any]) -> nn.Module:
        from geo3d.models.registry import build_model

        return build_model(self.arch, model_config)

    def loss(self, model: nn.Module, batch: Any, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        logits = model(batch)
        loss = nn.functional.cross_entropy(logits, batch.y)
        return loss, {"acc": float((logits.argmax(1) == batch.y).float().mean())}

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
