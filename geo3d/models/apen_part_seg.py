"""APEN for part segmentation of single shapes (ShapeNetPart style, category given).

The paper's own setting (DFaust: body parts that move on their own), here on
``geo3d.data.Shapes`` / ``Articulated``: the backbone is :class:`geo3d.models.apen.APEN`
with one segmentation class per global part id; every block votes for the
centre of the point's own part (the paper's training signal), and the category
enters as a per-category bias on the part logits (the evaluation masks the
logits to the category's parts, as ShapeNetPart does, so the bias only ranks
them). Given the true partition the logits are invariant to an independent
rigid motion of every part (tests/test_apen_part_seg.py); with the predicted
partition, approximately (the paper's bound).

Training: the point-cloud segmentation task adds ``aux_loss`` (set by the forward
in training mode) to its cross-entropy: ``vote_weight`` x the sum over blocks of
the per-shape mean squared vote error, as :func:`geo3d.models.apen_loss.apen_loss`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor, nn

from geo3d.models.apen import APEN, APENBlocksConfig, _graph_inputs
from geo3d.models.apen_loss import apen_loss
from geo3d.models.config import ModelConfig, PositiveInt
from geo3d.ops.scatter import scatter


class APENPartSegConfig(APENBlocksConfig):
    """APEN's backbone keys (its ``num_classes`` is ``num_parts`` here) and the part-segmentation ones."""

    arch: ClassVar[str] = "apen_seg"
    metadata: ClassVar[tuple[str, ...]] = ("train_rotation", "num_points", "difficulty", "arch")

    num_categories: PositiveInt = 16
    num_parts: PositiveInt = 50
    vote_weight: float = Field(1.0, ge=0)


OWN_KEYS = ("num_categories", "num_parts", "vote_weight")


def part_centres(pos: Tensor, part: Tensor, batch: Tensor, num_parts: int) -> Tensor:
    """``[N, 3]``: the centroid of each point's part (part ids ``[N]`` are per shape; ``batch [N]``)."""
    key = batch * num_parts + part
    return scatter(pos, key, 0, int(key.max()) + 1 if len(key) else 0, "mean")[key]


class APENPartSegmentation(nn.Module):
    """Batch (``pos``, ``batch``, ``y`` category ``[B]``) -> part logits ``[N, num_parts]``.

    Args:
        config: ``num_categories``, ``num_parts``, ``vote_weight`` and any key of
            :class:`geo3d.models.apen.APENBlocksConfig` (``num_classes`` is ``num_parts``);
            unknown keys raise ``ValueError``.
    """

    Config: ClassVar[type[ModelConfig]] = APENPartSegConfig  # its config: keys, types, defaults

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        cfg = APENPartSegConfig.resolve(config)
        self.config = config
        self.num_parts, self.num_categories = int(cfg["num_parts"]), int(cfg["num_categories"])
        self.vote_weight = float(cfg["vote_weight"])
        backbone = {k: v for k, v in cfg.items() if k not in OWN_KEYS}
        self.apen = APEN({**backbone, "num_classes": self.num_parts})
        self.category_bias = nn.Embedding(self.num_categories, self.num_parts)
        nn.init.zeros_(self.category_bias.weight)
        self.aux_loss: Tensor | None = None

    def forward(
        self, data: Any, partition: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Part logits ``[N, num_parts]``; in training mode also sets ``aux_loss`` (needs ``data.part``).

        ``partition``/``generator``: as :meth:`geo3d.models.apen.APEN.forward`.
        """
        out = self.apen(data, partition=partition, generator=generator)
        _, batch, _ = _graph_inputs(data)
        category = data.y.reshape(-1)[batch]
        self.aux_loss = None
        if self.training:
            part = getattr(data, "part", None)
            if part is None:
                raise ValueError("apen_seg: training needs the true part ids 'part' [N] for the vote loss")
            centre = part_centres(data.pos.to(out["vote"].dtype), part, batch, self.num_parts)
            votes = apen_loss(out, centre, batch=batch)["vote_loss"]
            self.aux_loss = self.vote_weight * votes
        return out["seg_logits"] + self.category_bias(category)
