"""VoteNet-style 3D detection head (Qi et al., ICCV 2019, https://arxiv.org/abs/1904.09664).

The head sees only seeds: positions ``seed_pos [B, S, 3]`` and features
``seed_feat [B, S, C]`` picked by any backbone (PointNet++, DGCNN, Vector
Neurons, APEN). Each seed votes for its object's centre (an offset and a
feature residual); farthest-point sampling of the votes picks ``P`` proposal
centres; the votes within ``vote_radius`` of each (at most ``vote_k``, nearest
first) go through a shared MLP and a max-pool; a per-proposal MLP then gives
objectness, a centre residual, a heading bin + residual, a size class (the
class mean sizes) + residual, and class logits (the coding:
:mod:`geo3d.nn.heads.box_coding`). :mod:`geo3d.nn.heads.detection_loss` is
VoteNet's loss, :meth:`DetectionHead.decode` turns outputs into boxes with 3D
NMS on the yaw-aware IoU. Only relative coordinates enter the features, so votes, centres and boxes move
with a translation of the seeds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geo3d.nn.heads.box_coding import check_mean_sizes, most_likely_boxes, split_box_parameters
from geo3d.nn.heads.point_grouping import PointMLP, canonical_fps, gather_points, group_nearest
from geo3d.ops.boxes import nms_3d

# ------------------------------------------------------------------ box coding


# ------------------------------------------------------------------ layers


@dataclass(frozen=True)
class VoteHeadSpec:
    """The sizes of a vote-and-group head (:class:`DetectionHead`, its frame-relative twin).

    ``num_classes`` object (and size) classes ``NC``; ``mean_sizes [NC, 3]`` mean box size per
    class (a buffer); ``num_heading_bins`` ``NH``; ``num_proposals`` ``P`` votes sampled as
    proposal centres in training and ``eval_proposals`` in eval mode (None: ``num_proposals``;
    :func:`proposal_count`); ``vote_radius``, ``vote_k``: the vote grouping; ``width``: hidden
    width of the aggregation and proposal MLPs. Defaults are those of
    :class:`geo3d.models.config.DetectionHeadConfig`.
    """

    num_classes: int
    mean_sizes: Tensor | Sequence[Sequence[float]]
    num_heading_bins: int = 12
    num_proposals: int = 64
    vote_radius: float = 0.3
    vote_k: int = 32
    width: int = 128
    eval_proposals: int | None = None

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> VoteHeadSpec:
        """From a resolved model config with the head keys (``head_width`` is ``width``)."""
        keys = ("num_classes", "mean_sizes", "num_heading_bins", "num_proposals", "vote_radius", "vote_k")
        return cls(**{k: cfg[k] for k in keys}, width=cfg["head_width"], eval_proposals=cfg["eval_proposals"])


def proposal_count(head: nn.Module, num_seeds: int) -> int:
    """Proposals ``P`` a head samples from ``num_seeds`` votes: ``num_proposals`` in training,
    ``eval_proposals`` in eval mode.

    The head's weights do not depend on ``P`` (one shared MLP per proposal), so a
    head trained with few proposals can test with more: each object is then
    covered by more candidates, NMS keeps the best, and which vote FPS happens to
    pick for an object matters less (measured on ``apen-rooms``: benchmarks/RESULTS.md).

    Raises:
        ValueError: fewer seeds than proposals.
    """
    p = head.num_proposals if head.training else head.eval_proposals
    if num_seeds < p:
        mode = "num_proposals" if head.training else "eval_proposals"
        raise ValueError(f"{num_seeds} seeds a scene, fewer than {mode}={p}")
    return p


def group_proposals(
    head: nn.Module, vote_pos: Tensor, proposal_idx: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """The proposal stage both vote heads share: proposal centres and the votes grouped around them.

    Centres are ``proposal_idx [B, P]`` (indices into each scene's votes) when given, else
    :func:`proposal_count` votes picked by canonical FPS over the votes; each centre then
    groups its ``head.vote_k`` nearest votes within ``head.vote_radius``.

    Returns:
        ``agg_pos [B, P, 3]`` (the centres' votes) and ``nbr [B, P, k]`` (vote indices).
    """
    b, s, _ = vote_pos.shape
    if proposal_idx is None:
        ptr = torch.arange(b + 1) * s
        centre_idx = canonical_fps(vote_pos.reshape(b * s, 3), ptr, proposal_count(head, s))
        centre_idx = centre_idx - ptr[:-1, None].to(centre_idx.device)  # [B, P] within each scene
    else:
        if proposal_idx.dim() != 2 or proposal_idx.shape[0] != b:
            raise ValueError(f"proposal_idx must be [B={b}, P], got {tuple(proposal_idx.shape)}")
        centre_idx = proposal_idx.to(vote_pos.device).long()
    agg_pos = gather_points(vote_pos, centre_idx)  # [B, P, 3]
    return agg_pos, group_nearest(agg_pos, vote_pos, head.vote_k, head.vote_radius)


class VoteGroupingHead(nn.Module):
    """What VoteNet-style heads share: the box coding sizes, the proposal counts and the vote grouping
    that :func:`group_proposals` reads (``num_proposals``, ``eval_proposals``, ``vote_radius``,
    ``vote_k``), and the ``mean_sizes [NC, 3]`` buffer. Subclasses add the layers."""

    heading_span = ""  # how the heading bins cover the circle, for repr

    def __init__(self, spec: VoteHeadSpec) -> None:
        super().__init__()
        self.num_classes, self.num_heading_bins = int(spec.num_classes), int(spec.num_heading_bins)
        self.num_proposals = int(spec.num_proposals)
        self.eval_proposals = self.num_proposals if spec.eval_proposals is None else int(spec.eval_proposals)
        self.vote_radius, self.vote_k = float(spec.vote_radius), int(spec.vote_k)
        self.register_buffer("mean_sizes", check_mean_sizes(spec.mean_sizes, spec.num_classes))

    def extra_repr(self) -> str:
        return (
            f"classes={self.num_classes}, heading_bins={self.num_heading_bins}{self.heading_span}, "
            f"proposals={self.num_proposals} (eval {self.eval_proposals}), vote_radius={self.vote_radius}, "
            f"vote_k={self.vote_k}"
        )

    def boxes(self, outputs: dict[str, Tensor]) -> Tensor:
        """World-frame boxes ``[B, P, 7]`` of every proposal; each head reads its own heading coding."""
        raise NotImplementedError

    @torch.no_grad()
    def decode(
        self,
        outputs: dict[str, Tensor],
        nms_iou: float = 0.25,
        score_threshold: float = 0.05,
        per_class_nms: bool = True,
    ) -> list[dict[str, Tensor]]:
        """Head outputs -> one dict per scene (``boxes [K, 7]``, ``scores [K]``, ``labels [K]``):
        :meth:`boxes`, then :func:`select_detections` (score threshold, NMS)."""
        return select_detections(self.boxes(outputs), outputs, nms_iou, score_threshold, per_class_nms)


class DetectionHead(VoteGroupingHead):
    """Seeds -> votes -> proposals with box parameters (VoteNet's voting and proposal modules).

    Args:
        in_channels: seed feature width ``C``.
        spec: the sizes (:class:`VoteHeadSpec`).

    Shapes:
        forward(seed_pos ``[B, S, 3]``, seed_feat ``[B, S, C]``) -> dict with
        ``seed_pos``, ``vote_pos [B, S, 3]``, ``aggregated_pos [B, P, 3]``,
        ``objectness_logits [B, P, 2]``, ``center [B, P, 3]``, ``heading_logits
        [B, P, NH]``, ``heading_residuals [B, P, NH]``, ``size_logits [B, P, NC]``,
        ``size_residuals [B, P, NC, 3]``, ``sem_logits [B, P, NC]`` (residuals
        normalised as in :func:`encode_boxes`).
    """

    def __init__(self, in_channels: int, spec: VoteHeadSpec) -> None:
        super().__init__(spec)
        width = int(spec.width)
        self.vote_mlp = PointMLP(in_channels, [in_channels, in_channels])
        self.vote_out = nn.Linear(in_channels, 3 + in_channels)  # offset + feature residual
        self.aggregate = PointMLP(3 + in_channels, [width, width, width])
        self.proposal_mlp = PointMLP(width, [width, width])
        nh, nc = self.num_heading_bins, self.num_classes
        self.proposal_out = nn.Linear(width, 2 + 3 + 2 * nh + 4 * nc + nc)

    def forward(self, seed_pos: Tensor, seed_feat: Tensor) -> dict[str, Tensor]:
        b, s, _ = seed_pos.shape
        if seed_feat.shape[:2] != (b, s):
            raise ValueError(
                f"seed_feat {tuple(seed_feat.shape)} does not match seed_pos {tuple(seed_pos.shape)}"
            )
        vote = self.vote_out(self.vote_mlp(seed_feat))
        vote_pos = seed_pos + vote[..., :3]
        vote_feat = F.normalize(seed_feat + vote[..., 3:], dim=-1)  # VoteNet L2-normalises vote features

        agg_pos, nbr = group_proposals(self, vote_pos)  # [B, P, 3], [B, P, k]
        rel = (gather_points(vote_pos, nbr) - agg_pos[:, :, None]) / self.vote_radius
        h = self.aggregate(torch.cat([rel, gather_points(vote_feat, nbr)], dim=-1)).max(dim=2).values

        out = self.proposal_out(self.proposal_mlp(h))  # [B, P, 5 + 2NH + 5NC]
        return {
            "seed_pos": seed_pos,
            "vote_pos": vote_pos,
            "aggregated_pos": agg_pos,
            "objectness_logits": out[..., 0:2],
            "center": agg_pos + out[..., 2:5],
            **split_box_parameters(out[..., 5:], self.num_heading_bins, self.num_classes),
        }

    def boxes(self, outputs: dict[str, Tensor]) -> Tensor:
        """World-frame boxes ``[B, P, 7]`` of every proposal (the most likely bins and classes)."""
        return most_likely_boxes(outputs, self.mean_sizes)


@torch.no_grad()
def decode_detections(
    outputs: dict[str, Tensor],
    mean_sizes: Tensor,
    nms_iou: float = 0.25,
    score_threshold: float = 0.05,
    per_class_nms: bool = True,
) -> list[dict[str, Tensor]]:
    """Head outputs -> one dict per scene: ``boxes [K, 7]``, ``scores [K]``, ``labels [K]``.

    Each proposal takes its most likely heading bin, size class and class; its
    score is P(object) x P(class) (VoteNet's per-class score for the chosen
    class). Proposals scoring at most ``score_threshold`` are dropped, the rest
    go through greedy 3D NMS on the yaw-aware IoU (only boxes of the same class
    suppress each other when ``per_class_nms``), by decreasing score.
    """
    boxes = most_likely_boxes(outputs, mean_sizes)  # [B, P, 7]
    return select_detections(boxes, outputs, nms_iou, score_threshold, per_class_nms)


def select_detections(
    boxes: Tensor,
    outputs: dict[str, Tensor],
    nms_iou: float,
    score_threshold: float,
    per_class_nms: bool,
) -> list[dict[str, Tensor]]:
    """Score ``boxes [B, P, 7]`` by P(object) x P(class), threshold, 3D NMS: one dict per scene."""
    sem = outputs["sem_logits"].softmax(-1).max(-1)
    scores = outputs["objectness_logits"].softmax(-1)[..., 1] * sem.values
    result = []
    for b in range(len(boxes)):
        keep = (scores[b] > score_threshold).nonzero()[:, 0]
        bx, sc, lb = boxes[b, keep], scores[b, keep], sem.indices[b, keep]
        k = nms_3d(bx, sc, nms_iou, lb if per_class_nms else None)
        result.append({"boxes": bx[k], "scores": sc[k], "labels": lb[k]})
    return result


# ------------------------------------------------------------------ loss
