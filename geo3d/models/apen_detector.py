"""APEN features with two heads: semantic segmentation and VoteNet-style 3D detection (arch ``apen_detector``).

The APEN backbone (:class:`~geo3d.models.apen.APEN`, its config nested under
``backbone``) gives every point an invariant feature, semantic logits
(``1 + num_classes``: background + the object classes) and, from its last
block, an equivariant vote for the centre of the point's object. The detection
head (:class:`FrameVoteHead`) follows VoteNet's proposal module
(:mod:`geo3d.nn.heads.detection`: FPS over the votes, grouping, shared MLP,
max-pool, per-proposal objectness / centre / heading / size / class, 3D NMS)
with three changes that keep its outputs moving with the objects:

1. **Votes are APEN's.** The head does not learn a vote offset from invariant
   features (an invariant feature cannot say in which direction the centre
   lies); the vote of a seed is APEN's last-block vote, which is equivariant and
   trained toward the object centre. The seeds are all points
   (``num_seeds: null``) or an FPS subsample (``num_seeds: S``, APEN's
   :meth:`~geo3d.models.apen.APEN.seeds`).
2. **Proposal features are invariant.** Per grouped vote the aggregation MLP
   sees the invariant seed feature, the vote's distance to the proposal centre
   and the seed's offset from the proposal centre expressed in the proposal's
   horizontal frame (``|u_x|, |u_y|, u_x u_y, u_z``: invariant to the frame's
   sign ambiguity), never world coordinates. The box centre is a softmax-weighted
   mean of the grouped votes (weights from the invariant features), an affine
   combination of equivariant points, so it moves with them.
3. **Headings are relative to a per-proposal frame.** The frame is the major
   horizontal principal axis of the grouped seeds (the points whose votes make
   up the proposal): ``phi = atan2(2 c_xy, c_xx - c_yy) / 2`` of their xy
   covariance about the proposal centre. It turns with the object about the
   vertical, and is defined modulo a half turn (the sign ambiguity of a PCA
   axis). The head predicts the heading relative to it, modulo a half turn
   (``num_heading_bins`` bins over ``[0, pi)``), and ``decode`` returns
   ``yaw = phi + relative``. A yaw box is the same box after a half turn, so
   boxes and IoU lose nothing; the front/back of an object is not predicted.

What is exact and what is not (float round-off aside):

- Given the partition (``forward(data, partition=ids)``, e.g. the true
  objects): a rigid motion of each part moves every point's vote (hence every
  seed's vote with ``num_seeds: null``) with its part and leaves features,
  seed features and ``seg_logits`` unchanged (APEN's guarantee; parts with a
  degenerate PCA spectrum excepted). With ``num_seeds: S`` the seeds are a
  global FPS, which changes when objects move independently.
- A global rigid motion about the vertical (rotation about z + any
  translation) with the same random draws (``generator``): partitions, FPS of
  the seeds and of the proposals, grouping and frames follow the motion, so box
  centres move with the scene, sizes, scores and classes stay, yaws turn with
  it (modulo a half turn). Exact also with predicted partitions.
- Per-object motions with boxes: *not exact*. Proposals are an FPS over all
  votes of the scene, and which vote FPS picks depends on where the objects lie
  relative to each other; grouping takes the votes within ``vote_radius`` and
  may mix in another object's stray votes. A proposal whose group stays inside
  one object is equivariant to that object's motion (centre, frame, features);
  the set of proposals only approximately.
- Frames: the heading frame is undefined for near-isotropic footprints (round
  tables, lamps, square-ish cabinets); there the predicted yaw does not turn
  with the object. The frame is horizontal, so headings are equivariant to
  rotations about z only (boxes are upright in any case).
- With predicted partitions APEN is only approximately piecewise equivariant
  (see :mod:`geo3d.models.apen`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geo3d.models.apen import APEN
from geo3d.models.apen import check_config as check_apen_config
from geo3d.models.registry import register_architecture
from geo3d.nn.heads.detection import (
    NEAR_THRESHOLD,
    PointMLP,
    angle_to_class,
    canonical_fps,
    check_mean_sizes,
    check_proposal_counts,
    detection_loss,
    gather_points,
    group_nearest,
    most_likely_boxes,
    proposal_count,
    select_detections,
    split_box_parameters,
)

DEFAULTS: dict[str, Any] = {
    "backbone": {},  # APEN config (geo3d.models.apen.DEFAULTS); num_classes defaults to 1 + num_classes
    "num_classes": 8,  # object classes (also the size classes); segmentation adds background
    "mean_sizes": None,  # [num_classes, 3]; None: unit boxes (the task fills in the training set's means)
    "num_heading_bins": 12,  # bins of the frame-relative heading over a half turn
    "num_seeds": None,  # None: every point is a seed (exact per part); S: FPS subsample of S points
    "num_proposals": 64,
    "eval_proposals": None,  # proposals in eval mode (None: num_proposals); the weights do not depend on it
    "vote_radius": 0.3,
    "vote_k": 32,
    "head_width": 128,
}
# Recorded in the checkpoint's config by the training task, not used by the network.
METADATA = ("arch", "num_points", "train_rotation", "class_names", "occlusion")
GEOMETRY = 5  # per grouped vote: distance to the proposal centre, |u_x|, |u_y|, u_x u_y, u_z


def check_config(config: dict[str, Any]) -> dict[str, Any]:
    """Defaults filled in and every key checked; raises ``ValueError`` naming the bad key."""
    cfg = {**DEFAULTS, **{k: v for k, v in config.items() if k not in METADATA}}
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"apen_detector config: unknown keys {unknown} (known: {sorted(DEFAULTS)})")
    if not isinstance(cfg["backbone"], dict):
        raise ValueError(
            f"apen_detector config: 'backbone' must be a mapping of APEN keys, got {cfg['backbone']!r}"
        )
    check_proposal_counts("apen_detector", cfg)
    for key in ("num_classes", "num_heading_bins", "vote_k", "head_width"):
        if not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] < 1:
            raise ValueError(f"apen_detector config: '{key}' must be an integer >= 1, got {cfg[key]!r}")
    seeds = cfg["num_seeds"]
    if seeds is not None and (not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1):
        raise ValueError(f"apen_detector config: 'num_seeds' must be null or an integer >= 1, got {seeds!r}")
    for key in ("num_proposals", "eval_proposals"):
        if seeds is not None and cfg[key] is not None and seeds < cfg[key]:
            raise ValueError(f"apen_detector config: '{key}' ({cfg[key]}) exceeds 'num_seeds' ({seeds})")
    if not (isinstance(cfg["vote_radius"], (int, float)) and cfg["vote_radius"] > 0):
        raise ValueError(f"apen_detector config: 'vote_radius' must be > 0, got {cfg['vote_radius']!r}")
    if cfg["mean_sizes"] is None:
        cfg["mean_sizes"] = [[1.0, 1.0, 1.0]] * cfg["num_classes"]
    sizes = torch.as_tensor(cfg["mean_sizes"], dtype=torch.float64)
    if sizes.shape != (cfg["num_classes"], 3) or not bool((sizes > 0).all()):
        raise ValueError(
            f"apen_detector config: 'mean_sizes' must be [num_classes={cfg['num_classes']}, 3] positive "
            f"sizes, got shape {tuple(sizes.shape)}"
        )
    backbone = {"num_classes": 1 + cfg["num_classes"], **cfg["backbone"]}
    try:
        cfg["backbone"] = check_apen_config(backbone)
    except ValueError as exc:
        raise ValueError(f"apen_detector config: 'backbone': {exc}") from exc
    return cfg


def horizontal_frame(points: Tensor, centre: Tensor, weight: Tensor) -> Tensor:
    """Angle ``[...]`` of the major horizontal principal axis of weighted points about ``centre``.

    ``points [..., k, 3]``, ``centre [..., 3]``, ``weight [..., k]`` (0/1). The
    angle is ``atan2(2 c_xy, c_xx - c_yy) / 2`` of the xy second moments, in
    ``(-pi/2, pi/2]``: it turns with the points about z and is defined modulo pi.
    """
    d = (points - centre[..., None, :])[..., :2].detach()
    w = weight.to(d.dtype)
    cxx, cyy = (w * d[..., 0] ** 2).sum(-1), (w * d[..., 1] ** 2).sum(-1)
    cxy = (w * d[..., 0] * d[..., 1]).sum(-1)
    return 0.5 * torch.atan2(2 * cxy, cxx - cyy)


def _wrap(angle: Tensor) -> Tensor:
    """Angles to ``[-pi, pi)``."""
    return torch.remainder(angle + math.pi, 2 * math.pi) - math.pi


class FrameVoteHead(nn.Module):
    """VoteNet's proposal module on equivariant votes, with headings relative to a per-proposal frame.

    Args:
        in_channels: seed feature width ``C`` (invariant features).
        num_classes: object classes ``NC`` (also the size classes).
        mean_sizes: ``[NC, 3]`` mean box size per class (a buffer).
        num_heading_bins: ``NH`` bins of the relative heading over ``[0, pi)`` (default 12).
        num_proposals: ``P`` votes sampled as proposal centres (default 64).
        vote_radius, vote_k: grouping of the votes (default 0.3, 32).
        width: hidden width of the aggregation and proposal MLPs (default 128).
        eval_proposals: ``P`` in eval mode (default: ``num_proposals``; see
            :func:`~geo3d.nn.heads.detection.proposal_count`).

    Shapes:
        forward(seed_pos ``[B, S, 3]``, seed_feat ``[B, S, C]``, seed_vote ``[B, S, 3]``) -> dict
        with the keys of :class:`~geo3d.nn.heads.detection.DetectionHead` (``vote_pos`` is
        ``seed_vote``; ``heading_*`` are relative) plus ``heading_frame [B, P]`` (radians).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        mean_sizes: Tensor | Sequence[Sequence[float]],
        num_heading_bins: int = 12,
        num_proposals: int = 64,
        vote_radius: float = 0.3,
        vote_k: int = 32,
        width: int = 128,
        eval_proposals: int | None = None,
    ) -> None:
        super().__init__()
        mean = check_mean_sizes(mean_sizes, num_classes)
        self.num_classes, self.num_heading_bins = int(num_classes), int(num_heading_bins)
        self.num_proposals, self.vote_radius, self.vote_k = (
            int(num_proposals),
            float(vote_radius),
            int(vote_k),
        )
        self.eval_proposals = self.num_proposals if eval_proposals is None else int(eval_proposals)
        self.register_buffer("mean_sizes", mean)
        self.feat_mlp = PointMLP(in_channels, [in_channels])  # VoteNet's vote feature residual
        self.feat_out = nn.Linear(in_channels, in_channels)
        self.aggregate = PointMLP(GEOMETRY + in_channels, [width, width, width])
        self.centre_logit = nn.Linear(2 * width, 1)  # weight of each grouped vote in the box centre
        self.proposal_mlp = PointMLP(width, [width, width])
        nh, nc = self.num_heading_bins, self.num_classes
        self.proposal_out = nn.Linear(width, 2 + 2 * nh + 4 * nc + nc)

    def extra_repr(self) -> str:
        return (
            f"classes={self.num_classes}, heading_bins={self.num_heading_bins} (half turn), "
            f"proposals={self.num_proposals} (eval {self.eval_proposals}), vote_radius={self.vote_radius}, "
            f"vote_k={self.vote_k}"
        )

    def forward(self, seed_pos: Tensor, seed_feat: Tensor, seed_vote: Tensor) -> dict[str, Tensor]:
        b, s, _ = seed_pos.shape
        if seed_feat.shape[:2] != (b, s) or seed_vote.shape != seed_pos.shape:
            raise ValueError(
                f"seed_feat {tuple(seed_feat.shape)} / seed_vote {tuple(seed_vote.shape)} do not match "
                f"seed_pos {tuple(seed_pos.shape)}"
            )
        p = proposal_count(self, s)
        vote_feat = F.normalize(seed_feat + self.feat_out(self.feat_mlp(seed_feat)), dim=-1)

        ptr = torch.arange(b + 1) * s
        centre_idx = canonical_fps(seed_vote.reshape(b * s, 3), ptr, p)
        centre_idx = centre_idx - ptr[:-1, None].to(centre_idx.device)  # [B, P] within each scene
        agg_pos = gather_points(seed_vote, centre_idx)  # [B, P, 3]
        nbr = group_nearest(agg_pos, seed_vote, self.vote_k, self.vote_radius)  # [B, P, k]
        votes = gather_points(seed_vote, nbr)  # [B, P, k, 3]
        points = gather_points(seed_pos, nbr)
        # group_nearest pads beyond the radius with the nearest vote (the centre itself): count it once
        k = nbr.shape[-1]
        valid = (nbr != nbr[..., :1]) | (torch.arange(k, device=nbr.device) == 0)

        phi = horizontal_frame(points, agg_pos, valid)  # [B, P]
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
        return {
            "seed_pos": seed_pos,
            "vote_pos": seed_vote,
            "aggregated_pos": agg_pos,
            "objectness_logits": out[..., 0:2],
            "center": centre,
            "heading_frame": phi,
            **split_box_parameters(out[..., 2:], self.num_heading_bins, self.num_classes),
        }


def frame_boxes(outputs: dict[str, Tensor], mean_sizes: Tensor) -> Tensor:
    """World-frame boxes ``[B, P, 7]`` (yaw in ``[-pi, pi)``) from :class:`FrameVoteHead` outputs."""
    boxes = most_likely_boxes(outputs, mean_sizes)
    relative = boxes[..., 6] / 2  # the bins cover a half turn: angle_to_class of twice the angle
    return torch.cat([boxes[..., :6], _wrap(outputs["heading_frame"] + relative)[..., None]], dim=-1)


@torch.no_grad()
def decode_frame_detections(
    outputs: dict[str, Tensor],
    mean_sizes: Tensor,
    nms_iou: float = 0.25,
    score_threshold: float = 0.05,
    per_class_nms: bool = True,
) -> list[dict[str, Tensor]]:
    """Boxes per scene, as :func:`geo3d.nn.heads.detection.decode_detections` but with frame-relative headings."""
    return select_detections(
        frame_boxes(outputs, mean_sizes), outputs, nms_iou, score_threshold, per_class_nms
    )


def frame_heading_loss(outputs: dict[str, Tensor], gt_boxes: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Heading CE and smooth-L1 residual of the frame-relative heading over positive proposals.

    As VoteNet's heading terms (:func:`~geo3d.nn.heads.detection.detection_loss`):
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


def frame_detection_loss(
    outputs: dict[str, Tensor],
    gt_boxes: Sequence[Tensor],
    gt_labels: Sequence[Tensor],
    mean_sizes: Tensor,
    seed_instance: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """VoteNet's loss (:func:`~geo3d.nn.heads.detection.detection_loss`) with the frame-relative heading terms.

    The world-frame heading terms of ``detection_loss`` are computed on constant
    zero logits (no gradient) and swapped for :func:`frame_heading_loss`, with
    the same weights (``10 * (0.1 heading_cls + heading_reg)``).
    """
    neutral = dict(outputs)
    neutral["heading_logits"] = torch.zeros_like(outputs["heading_logits"]).detach()
    neutral["heading_residuals"] = torch.zeros_like(outputs["heading_residuals"]).detach()
    total, parts = detection_loss(neutral, gt_boxes, gt_labels, mean_sizes, seed_instance=seed_instance)
    heading_cls, heading_reg = frame_heading_loss(outputs, gt_boxes)
    total = total - 10 * (0.1 * parts["heading_cls"] + parts["heading_reg"])
    total = total + 10 * (0.1 * heading_cls + heading_reg)
    parts["heading_cls"], parts["heading_reg"] = float(heading_cls.detach()), float(heading_reg.detach())
    return total, parts


class APENDetector(nn.Module):
    """APEN backbone + its segmentation head + :class:`FrameVoteHead` on APEN's seeds.

    Args:
        config: keys of ``DEFAULTS``; the APEN config nested under ``backbone``;
            unknown keys raise ``ValueError``.

    Shapes:
        input: a PyG ``Batch`` with ``pos [N, 3]`` and ``batch [N]`` (sorted);
        with ``num_seeds: null`` every scene needs the same number of points.
        output: see :meth:`forward`.
    """

    # A trained segmentation APEN (e.g. ``apen-rooms-seg``) can seed the backbone (train.init_from).
    warm_start_parts: ClassVar[dict[str, str]] = {"apen": "backbone"}

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        cfg = check_config(config)
        self.config = cfg
        self.num_seeds = cfg["num_seeds"]
        self.backbone = APEN(cfg["backbone"])
        self.head = FrameVoteHead(
            self.backbone.feat_dim,
            cfg["num_classes"],
            cfg["mean_sizes"],
            num_heading_bins=cfg["num_heading_bins"],
            num_proposals=cfg["num_proposals"],
            vote_radius=cfg["vote_radius"],
            vote_k=cfg["vote_k"],
            width=cfg["head_width"],
            eval_proposals=cfg["eval_proposals"],
        )

    @property
    def mean_sizes(self) -> Tensor:
        return self.head.mean_sizes

    def extra_repr(self) -> str:
        return f"num_seeds={'all points' if self.num_seeds is None else self.num_seeds}"

    def _all_point_seeds(self, data: Any, out: dict[str, Any]) -> dict[str, Tensor]:
        pos = data.pos
        batch = getattr(data, "batch", None)
        if batch is None:
            batch = torch.zeros(len(pos), dtype=torch.long, device=pos.device)
        num_graphs = int(getattr(data, "num_graphs", int(batch.max()) + 1 if len(batch) else 1))
        sizes = torch.bincount(batch, minlength=num_graphs)
        if len(sizes) == 0 or bool((sizes != sizes[0]).any()) or bool((batch[1:] < batch[:-1]).any()):
            raise ValueError(
                "apen_detector: with num_seeds null every point is a seed, so the scenes of a batch need "
                f"the same number of points (sorted by scene); got {sizes.tolist()}"
            )
        b, n = num_graphs, int(sizes[0])
        return {
            "seed_idx": torch.arange(b * n, device=pos.device).reshape(b, n),
            "seed_pos": pos.reshape(b, n, 3),
            "seed_feat": out["feat"].reshape(b, n, -1),
            "seed_vote": out["vote"].reshape(b, n, 3),
        }

    def forward(
        self, data: Any, partition: Tensor | None = None, generator: torch.Generator | None = None
    ) -> dict[str, Any]:
        """APEN, then the detection head on its seeds.

        Args:
            data: PyG ``Batch`` (``pos``, ``batch``; ``normal`` if the backbone uses normals).
            partition: optional ``[N]`` part ids used by every APEN block (see :meth:`APEN.forward`).
            generator: APEN's random source (random initial parts, sampled assignments).

        Returns:
            one dict: APEN's outputs (``feat``, ``seg_logits [N, 1 + NC]``, ``votes``,
            ``vote``, ``partitions``, ...), the head's (``vote_pos``, ``center``,
            ``heading_frame``, ``objectness_logits``, ...; see :class:`FrameVoteHead`)
            and ``seed_index [B, S]`` (the input point of each seed).
        """
        out = self.backbone(data, partition=partition, generator=generator)
        if self.num_seeds is None:
            seeds = self._all_point_seeds(data, out)
        else:
            seeds = self.backbone.seeds(data, self.num_seeds, out=out)
        det = self.head(seeds["seed_pos"], seeds["seed_feat"], seeds["seed_vote"])
        return {**out, **det, "seed_index": seeds["seed_idx"]}

    def decode(self, outputs: dict[str, Tensor], **kwargs: Any) -> list[dict[str, Tensor]]:
        """Boxes per scene (see :func:`decode_frame_detections`): ``boxes [K, 7]``, ``scores``, ``labels``."""
        return decode_frame_detections(outputs, self.head.mean_sizes, **kwargs)


@register_architecture("apen_detector")
def build(config: dict[str, Any]) -> nn.Module:
    return APENDetector(config)
