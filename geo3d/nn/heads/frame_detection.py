"""VoteNet's proposal module for equivariant backbones: given votes, frame-relative headings.

:class:`FrameVoteHead` takes seeds with *invariant* features and *equivariant*
votes (a backbone that predicts where each seed's object centre lies, e.g.
APEN's per-part votes or a Vector-Neuron vector channel) and keeps the boxes
moving with the objects. It follows VoteNet's proposal module
(:mod:`geo3d.nn.heads.detection`: FPS over the votes, grouping, shared MLP,
max-pool, per-proposal objectness / centre / heading / size / class, 3D NMS)
with three changes:

1. **Votes come from the backbone.** The head does not learn a vote offset from
   invariant features (an invariant feature cannot say in which direction the
   centre lies).
2. **Proposal features are invariant.** Per grouped vote the aggregation MLP
   sees the invariant seed feature, the vote's distance to the proposal centre
   and the seed's offset from the proposal centre expressed in the proposal's
   horizontal frame (``|u_x|, |u_y|, u_x u_y, u_z``: invariant to the frame's
   sign ambiguity), never world coordinates. The box centre is a softmax-weighted
   mean of the grouped votes (weights from the invariant features), an affine
   combination of equivariant points, so it moves with them.
3. **Headings are relative to a per-proposal frame**, an angle ``phi`` defined
   modulo a half turn that turns with the object about the vertical. With
   ``seed_axis`` (an equivariant vector per seed, trained toward its object's
   yaw by :func:`frame_axis_loss`) it is the mean orientation of the grouped
   seeds' axes (doubled-angle average of their horizontal parts: the axis
   ``v`` and ``-v`` agree). Without it, the major horizontal principal axis of
   the grouped seeds (``atan2(2 c_xy, c_xx - c_yy) / 2`` of their xy covariance
   about the proposal centre); measured on Rooms, a dozen seeds' PCA axis is
   spread over all headings relative to the box (even with only the object's own
   seeds), so the heading classifier stays near chance. The head predicts the
   heading relative to ``phi``, modulo a half turn (``num_heading_bins`` bins
   over ``[0, pi)``), and decoding returns ``yaw = phi + relative``. A yaw box
   is the same box after a half turn, so boxes and IoU lose nothing; the
   front/back of an object is not predicted.

Exactness: a rotation about the vertical plus a translation of the seeds and
their votes (same seeds, no FPS ties) moves the box centres with them, keeps
sizes, scores and classes, and turns the yaws (modulo a half turn). The frame is
undefined for near-isotropic footprints (round tables, lamps), where the yaw
does not turn with the object; it is horizontal, so headings are equivariant to
rotations about z only (boxes are upright in any case). Per-object motions are
approximate: FPS over all of a scene's votes and the grouping radius can mix
objects.

:func:`frame_detection_loss` is VoteNet's loss with the heading terms taken
relative to the frame; :meth:`FrameVoteHead.decode` turns outputs into boxes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geo3d.nn.heads.box_coding import (
    angle_to_class,
    most_likely_boxes,
    split_box_parameters,
)
from geo3d.nn.heads.detection import VoteGroupingHead, VoteHeadSpec, group_proposals
from geo3d.nn.heads.detection_loss import NEAR_THRESHOLD, detection_loss
from geo3d.nn.heads.point_grouping import PointMLP, gather_points

GEOMETRY = 5  # per grouped vote: distance to the proposal centre, |u_x|, |u_y|, u_x u_y, u_z
AXIS_WEIGHT = 10.0  # of frame_axis_loss in frame_detection_loss: as the vote term (10 x L1 metres)


def horizontal_frame(points: Tensor, centre: Tensor, weight: Tensor) -> Tensor:
    """Angle ``[...]`` of the major horizontal principal axis of weighted points about ``centre``.

    ``points [..., k, 3]``, ``centre [..., 3]``, ``weight [..., k]`` (0/1). The
    angle is ``atan2(2 c_xy, c_xx - c_yy) / 2`` of the xy second moments, in
    ``(-pi/2, pi/2]``: it turns with the points about z and is defined modulo pi.
    With ``centre = 0`` and axis vectors as ``points`` it is their mean orientation,
    each axis weighted by its squared horizontal length.
    """
    d = (points - centre[..., None, :])[..., :2].detach()
    w = weight.to(d.dtype)
    cxx, cyy = (w * d[..., 0] ** 2).sum(-1), (w * d[..., 1] ** 2).sum(-1)
    cxy = (w * d[..., 0] * d[..., 1]).sum(-1)
    return 0.5 * torch.atan2(2 * cxy, cxx - cyy)


def _wrap(angle: Tensor) -> Tensor:
    """Angles to ``[-pi, pi)``."""
    return torch.remainder(angle + math.pi, 2 * math.pi) - math.pi


class FrameVoteHead(VoteGroupingHead):
    """VoteNet's proposal module on equivariant votes, with headings relative to a per-proposal frame.

    Args:
        in_channels: seed feature width ``C`` (invariant features).
        spec: the sizes (:class:`~geo3d.nn.heads.detection.VoteHeadSpec`); the ``NH`` heading
            bins cover the relative heading over ``[0, pi)``.

    Shapes:
        forward(seed_pos ``[B, S, 3]``, seed_feat ``[B, S, C]``, seed_vote ``[B, S, 3]``,
        seed_axis ``[B, S, 3]`` or None) -> dict with the keys of
        :class:`~geo3d.nn.heads.detection.DetectionHead` (``vote_pos`` is ``seed_vote``;
        ``heading_*`` are relative) plus ``heading_frame [B, P]`` (radians) and, when
        given, ``seed_axis``.
    """

    heading_span = " (half turn)"

    def __init__(self, in_channels: int, spec: VoteHeadSpec) -> None:
        super().__init__(spec)
        width = int(spec.width)
        self.feat_mlp = PointMLP(in_channels, [in_channels])  # VoteNet's vote feature residual
        self.feat_out = nn.Linear(in_channels, in_channels)
        self.aggregate = PointMLP(GEOMETRY + in_channels, [width, width, width])
        self.centre_logit = nn.Linear(2 * width, 1)  # weight of each grouped vote in the box centre
        self.proposal_mlp = PointMLP(width, [width, width])
        nh, nc = self.num_heading_bins, self.num_classes
        self.proposal_out = nn.Linear(width, 2 + 2 * nh + 4 * nc + nc)

    def forward(
        self,
        seed_pos: Tensor,
        seed_feat: Tensor,
        seed_vote: Tensor,
        seed_axis: Tensor | None = None,
        proposal_idx: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """See the class docstring; ``proposal_idx [B, P]`` (indices into the seeds of each scene)
        replaces the FPS over the votes when given (e.g. one proposal per backbone part)."""
        b, s, _ = seed_pos.shape
        if (
            seed_feat.shape[:2] != (b, s)
            or seed_vote.shape != seed_pos.shape
            or (seed_axis is not None and seed_axis.shape != seed_pos.shape)
        ):
            shapes = {"seed_feat": seed_feat, "seed_vote": seed_vote, "seed_axis": seed_axis}
            given = ", ".join(f"{k} {tuple(v.shape)}" for k, v in shapes.items() if v is not None)
            raise ValueError(f"{given} do not match seed_pos {tuple(seed_pos.shape)}")
        vote_feat = F.normalize(seed_feat + self.feat_out(self.feat_mlp(seed_feat)), dim=-1)

        agg_pos, nbr = group_proposals(self, seed_vote, proposal_idx)  # [B, P, 3], [B, P, k]
        votes = gather_points(seed_vote, nbr)  # [B, P, k, 3]
        points = gather_points(seed_pos, nbr)
        # group_nearest pads beyond the radius with the nearest vote (the centre itself): count it once
        k = nbr.shape[-1]
        valid = (nbr != nbr[..., :1]) | (torch.arange(k, device=nbr.device) == 0)

        if seed_axis is None:
            phi = horizontal_frame(points, agg_pos, valid)  # [B, P]
        else:
            phi = horizontal_frame(gather_points(seed_axis, nbr), torch.zeros_like(agg_pos), valid)
        c, sn = torch.cos(phi)[..., None], torch.sin(phi)[..., None]
        off = points - agg_pos[:, :, None]
        ux, uy = c * off[..., 0] + sn * off[..., 1], -sn * off[..., 0] + c * off[..., 1]
        dist = (votes - agg_pos[:, :, None]).norm(dim=-1) / self.vote_radius
        geo = torch.stack([dist, ux.abs(), uy.abs(), ux * uy, off[..., 2]], dim=-1)
        h = self.aggregate(torch.cat([geo, gather_points(vote_feat, nbr)], dim=-1))  # [B, P, k, W]
        pooled = h.max(dim=2).values  # [B, P, W]

        logit = self.centre_logit(torch.cat([h, pooled[:, :, None].expand_as(h)], dim=-1))[..., 0]
        weight = torch.softmax(logit.masked_fill(~valid, -math.inf), dim=-1)  # [B, P, k]
        centre = (weight[..., None] * votes).sum(2)

        out = self.proposal_out(self.proposal_mlp(pooled))  # [B, P, 2 + 2NH + 5NC]
        axis = {} if seed_axis is None else {"seed_axis": seed_axis}
        return {
            **axis,
            "seed_pos": seed_pos,
            "vote_pos": seed_vote,
            "aggregated_pos": agg_pos,
            "objectness_logits": out[..., 0:2],
            "center": centre,
            "heading_frame": phi,
            **split_box_parameters(out[..., 2:], self.num_heading_bins, self.num_classes),
        }

    def boxes(self, outputs: dict[str, Tensor]) -> Tensor:
        """World-frame boxes ``[B, P, 7]``: the heading bins read relative to each proposal's frame."""
        return frame_boxes(outputs, self.mean_sizes)


def frame_boxes(outputs: dict[str, Tensor], mean_sizes: Tensor) -> Tensor:
    """World-frame boxes ``[B, P, 7]`` (yaw in ``[-pi, pi)``) from :class:`FrameVoteHead` outputs."""
    boxes = most_likely_boxes(outputs, mean_sizes)
    relative = boxes[..., 6] / 2  # the bins cover a half turn: angle_to_class of twice the angle
    return torch.cat([boxes[..., :6], _wrap(outputs["heading_frame"] + relative)[..., None]], dim=-1)


def frame_heading_loss(outputs: dict[str, Tensor], gt_boxes: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Heading CE and smooth-L1 residual of the frame-relative heading over positive proposals.

    As VoteNet's heading terms (:func:`~geo3d.nn.heads.detection_loss.detection_loss`):
    each proposal takes the GT box nearest its aggregated vote, positive within
    ``NEAR_THRESHOLD``; the target is ``(yaw_gt - heading_frame) mod pi``, binned
    over a half turn.
    """
    nh = outputs["heading_logits"].shape[-1]
    ce, reg, count = [], [], 0
    for i, gt in enumerate(gt_boxes):
        if len(gt) == 0:
            continue
        gt = gt.to(outputs["center"])
        d2 = ((outputs["aggregated_pos"][i, :, None] - gt[None, :, :3]) ** 2).sum(-1)  # [P, M]
        dist, assign = d2.min(-1)
        pos = dist.sqrt() < NEAR_THRESHOLD
        if not bool(pos.any()):
            continue
        relative = torch.remainder(gt[assign[pos], 6] - outputs["heading_frame"][i, pos], math.pi)
        cls, res = angle_to_class(2 * relative, nh)
        logits = outputs["heading_logits"][i, pos]
        ce.append(F.cross_entropy(logits, cls, reduction="sum"))
        pred = torch.gather(outputs["heading_residuals"][i, pos], -1, cls[:, None])[:, 0]
        reg.append(F.smooth_l1_loss(pred, res, reduction="sum"))
        count += int(pos.sum())
    if count == 0:
        zero = outputs["heading_logits"].sum() * 0
        return zero, zero
    return torch.stack(ce).sum() / count, torch.stack(reg).sum() / count


def frame_axis_loss(seed_axis: Tensor, seed_instance: Tensor, gt_boxes: Sequence[Tensor]) -> Tensor:
    """Mean of ``1 - cos 2(theta - yaw)`` over object seeds: their axes against their boxes' yaws.

    ``seed_axis [B, S, 3]`` (horizontal angle ``theta``; its length does not
    matter), ``seed_instance [B, S]`` (index into ``gt_boxes[b]``, -1 background).
    Doubled angles: the axis is defined modulo a half turn, as are box yaws.
    """
    losses = []
    for i, gt in enumerate(gt_boxes):
        member = seed_instance[i] >= 0
        if len(gt) == 0 or not bool(member.any()):
            continue
        v = seed_axis[i, member, :2]
        yaw = gt.to(v)[seed_instance[i, member].long(), 6]
        sq = v.pow(2).sum(-1) + 1e-12
        cos2, sin2 = (v[:, 0] ** 2 - v[:, 1] ** 2) / sq, 2 * v[:, 0] * v[:, 1] / sq
        losses.append(1 - cos2 * torch.cos(2 * yaw) - sin2 * torch.sin(2 * yaw))
    if not losses:
        return seed_axis.sum() * 0
    return torch.cat(losses).mean()


def frame_detection_loss(
    outputs: dict[str, Tensor],
    gt_boxes: Sequence[Tensor],
    gt_labels: Sequence[Tensor],
    mean_sizes: Tensor,
    seed_instance: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """VoteNet's loss (:func:`~geo3d.nn.heads.detection_loss.detection_loss`) with the frame-relative heading terms.

    The world-frame heading terms of ``detection_loss`` are computed on constant
    zero logits (no gradient) and swapped for :func:`frame_heading_loss`, with
    the same weights (``10 * (0.1 heading_cls + heading_reg)``). With a learned
    frame (``seed_axis`` in the outputs, and ``seed_instance`` given) the total adds
    ``AXIS_WEIGHT *`` :func:`frame_axis_loss` (part ``axis``).
    """
    neutral = dict(outputs)
    neutral["heading_logits"] = torch.zeros_like(outputs["heading_logits"]).detach()
    neutral["heading_residuals"] = torch.zeros_like(outputs["heading_residuals"]).detach()
    total, parts = detection_loss(neutral, gt_boxes, gt_labels, mean_sizes, seed_instance=seed_instance)
    heading_cls, heading_reg = frame_heading_loss(outputs, gt_boxes)
    total = total - 10 * (0.1 * parts["heading_cls"] + parts["heading_reg"])
    total = total + 10 * (0.1 * heading_cls + heading_reg)
    parts["heading_cls"], parts["heading_reg"] = float(heading_cls.detach()), float(heading_reg.detach())
    if "seed_axis" in outputs and seed_instance is not None:
        axis = frame_axis_loss(outputs["seed_axis"], seed_instance.to(outputs["seed_axis"].device), gt_boxes)
        total = total + AXIS_WEIGHT * axis
        parts["axis"] = float(axis.detach())
    return total, parts
