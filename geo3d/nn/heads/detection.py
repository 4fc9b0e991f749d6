"""VoteNet-style 3D detection head (Qi et al., ICCV 2019, https://arxiv.org/abs/1904.09664).

The head sees only seeds: positions ``seed_pos [B, S, 3]`` and features
``seed_feat [B, S, C]`` picked by any backbone (PointNet++, DGCNN, Vector
Neurons, APEN). Each seed votes for its object's centre (an offset and a
feature residual); farthest-point sampling of the votes picks ``P`` proposal
centres; the votes within ``vote_radius`` of each (at most ``vote_k``, nearest
first) go through a shared MLP and a max-pool; a per-proposal MLP then gives
objectness, a centre residual, a heading bin + residual, a size class (the
class mean sizes) + residual, and class logits. :func:`detection_loss` is
VoteNet's loss, :meth:`DetectionHead.decode` turns outputs into boxes with 3D
NMS on the yaw-aware IoU.

Boxes are ``(cx, cy, cz, dx, dy, dz, yaw)`` as in :mod:`geo3d.metrics.detection`.
Heading bins: ``NH`` bins over ``[0, 2pi)`` centred at ``k 2pi/NH`` (bin 0 takes
yaws just below ``2pi`` too), residual normalised by ``pi/NH`` to ``[-1, 1)``.
Sizes: size class = semantic class, residual normalised by the class mean size.
Only relative coordinates enter the features, so votes, centres and boxes move
with a translation of the seeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geo3d.ops.boxes import nms_3d, points_in_boxes
from geo3d.ops.point_ops import fps

NEAR_THRESHOLD = 0.3  # a proposal within this of a GT centre is positive (VoteNet)
FAR_THRESHOLD = 0.6  # ... beyond this negative; in between, ignored
OBJECTNESS_WEIGHTS = (0.2, 0.8)  # CE weights of negatives / positives (VoteNet)


# ------------------------------------------------------------------ box coding


def angle_to_class(yaw: Tensor, num_bins: int) -> tuple[Tensor, Tensor]:
    """Yaw -> (bin ``[...]`` int64, residual normalised to ``[-1, 1)``), bins centred at ``k 2pi/NH``."""
    width = 2 * math.pi / num_bins
    shifted = torch.remainder(yaw + width / 2, 2 * math.pi)
    cls = torch.floor(shifted / width).long().clamp(0, num_bins - 1)
    residual = (shifted - cls * width - width / 2) / (width / 2)
    return cls, residual.clamp(-1.0, 1.0)  # the clamp only absorbs round-off at bin edges


def class_to_angle(cls: Tensor, residual: Tensor, num_bins: int) -> Tensor:
    """Inverse of :func:`angle_to_class`: yaw in ``[0, 2pi)``."""
    width = 2 * math.pi / num_bins
    return torch.remainder(cls * width + residual * (width / 2), 2 * math.pi)


def encode_boxes(
    boxes: Tensor, labels: Tensor, mean_sizes: Tensor, num_heading_bins: int
) -> dict[str, Tensor]:
    """Boxes ``[M, 7]`` and labels ``[M]`` in the head's parameterisation.

    Returns ``center [M, 3]``, ``heading_class [M]``, ``heading_residual [M]``
    (normalised), ``size_class [M]`` (= label) and ``size_residual [M, 3]``
    (normalised by the class mean size).
    """
    labels = labels.long()
    hcls, hres = angle_to_class(boxes[:, 6], num_heading_bins)
    mean = mean_sizes.to(boxes)[labels]
    return {
        "center": boxes[:, :3],
        "heading_class": hcls,
        "heading_residual": hres,
        "size_class": labels,
        "size_residual": (boxes[:, 3:6] - mean) / mean,
    }


def decode_boxes(
    center: Tensor,
    heading_class: Tensor,
    heading_residual: Tensor,
    size_class: Tensor,
    size_residual: Tensor,
    mean_sizes: Tensor,
    num_heading_bins: int,
) -> Tensor:
    """Inverse of :func:`encode_boxes`: ``center [..., 3]`` etc. -> boxes ``[..., 7]``."""
    mean = mean_sizes.to(center)[size_class]
    size = mean * (1 + size_residual)
    yaw = class_to_angle(heading_class, heading_residual, num_heading_bins)
    return torch.cat([center, size, yaw[..., None]], dim=-1)


# ------------------------------------------------------------------ layers


class PointMLP(nn.Module):
    """Shared MLP on the last axis, ``[..., c_in] -> [..., widths[-1]]``: Linear + BatchNorm + ReLU each."""

    def __init__(self, c_in: int, widths: Sequence[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for w in widths:
            layers += [nn.Linear(c_in, w, bias=False), nn.BatchNorm1d(w), nn.ReLU()]
            c_in = w
        self.layers = nn.Sequential(*layers)
        self.out_channels = c_in

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape[:-1]
        return self.layers(x.reshape(-1, x.shape[-1])).reshape(*shape, self.out_channels)


def canonical_fps(pos: Tensor, ptr: Tensor, m: int) -> Tensor:
    """Farthest-point sampling of ``m`` points per scene, independent of point order and translation.

    Starting :func:`~geo3d.ops.point_ops.fps` at the point farthest from the scene's
    centroid (not its first point) makes the choice a function of the point set (ties aside).

    Args:
        pos: ``[N, 3]`` points of ``B`` scenes, scene b at ``ptr[b]:ptr[b+1]``.
        ptr: ``[B + 1]`` int64 (CPU) scene offsets; every scene needs ``>= m`` points.

    Returns:
        ``[B, m]`` int64 indices into ``pos``, in selection order.
    """
    sizes = ptr[1:] - ptr[:-1]
    if len(sizes) == 0 or int(sizes.min()) < m:
        raise ValueError(f"farthest-point sampling of {m} points: a scene has only {sizes.tolist()} points")
    p = pos.detach()
    batch = torch.repeat_interleave(torch.arange(len(sizes), device=pos.device), sizes.to(pos.device))
    scenes = [p[int(ptr[b]) : int(ptr[b + 1])] for b in range(len(sizes))]
    start = torch.stack([((q - q.mean(0)) ** 2).sum(1).argmax() for q in scenes])
    return fps(p, batch, num_graphs=len(sizes), num=m, start=start).reshape(len(sizes), m)


def group_nearest(centres: Tensor, points: Tensor, k: int, radius: float) -> Tensor:
    """Ball query by distance order: the ``k`` nearest ``points`` of each centre, within ``radius``.

    Neighbours beyond ``radius`` are replaced by the nearest one (PointNet++'s
    ball query pads the same way), so a max-pool over them is unaffected.
    Distances are taken from coordinate differences (not ``cdist``'s matrix
    product) so that a translation leaves the choice unchanged.

    Args:
        centres: ``[B, P, 3]``; points: ``[B, S, 3]``.

    Returns:
        ``[B, P, k']`` indices into ``points``' second axis, ``k' = min(k, S)``.
    """
    d2 = ((centres.detach()[:, :, None, :] - points.detach()[:, None, :, :]) ** 2).sum(-1)  # [B, P, S]
    d2, idx = torch.topk(d2, min(k, points.shape[1]), dim=-1, largest=False, sorted=True)
    return torch.where(d2 <= radius**2, idx, idx[..., :1])


def gather_points(x: Tensor, idx: Tensor) -> Tensor:
    """``x [B, S, C]``, ``idx [B, ...]`` -> ``[B, ..., C]``."""
    b, c = x.shape[0], x.shape[-1]
    flat = idx.reshape(b, -1)
    return torch.gather(x, 1, flat[..., None].expand(-1, -1, c)).reshape(*idx.shape, c)


def check_proposal_counts(model: str, cfg: dict) -> None:
    """``num_proposals`` an integer >= 1, ``eval_proposals`` null or one; raises ``ValueError`` naming the key."""
    for key in ("num_proposals", "eval_proposals"):
        value = cfg[key]
        if value is None and key == "eval_proposals":
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{model} config: '{key}' must be an integer >= 1, got {value!r}")


def head_kwargs(cfg: dict) -> dict:
    """A detection head's arguments after ``in_channels`` from a model config with the usual keys
    (``num_classes``, ``mean_sizes``, ``num_heading_bins``, ``num_proposals``, ``eval_proposals``,
    ``vote_radius``, ``vote_k``, ``head_width``), for :class:`DetectionHead` and its frame-relative twin."""
    return {
        "num_classes": cfg["num_classes"],
        "mean_sizes": cfg["mean_sizes"],
        "num_heading_bins": cfg["num_heading_bins"],
        "num_proposals": cfg["num_proposals"],
        "vote_radius": cfg["vote_radius"],
        "vote_k": cfg["vote_k"],
        "width": cfg["head_width"],
        "eval_proposals": cfg["eval_proposals"],
    }


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


class DetectionHead(nn.Module):
    """Seeds -> votes -> proposals with box parameters (VoteNet's voting and proposal modules).

    Args:
        in_channels: seed feature width ``C``.
        num_classes: object classes ``NC`` (also the size classes).
        mean_sizes: ``[NC, 3]`` mean box size per class (a buffer).
        num_heading_bins: ``NH`` (default 12).
        num_proposals: ``P`` votes sampled as proposal centres (default 128).
        vote_radius, vote_k: vote grouping (default 0.3, 16).
        width: hidden width of the aggregation and proposal MLPs (default 128).
        eval_proposals: ``P`` in eval mode (default: ``num_proposals``); see
            :func:`proposal_count`.

    Shapes:
        forward(seed_pos ``[B, S, 3]``, seed_feat ``[B, S, C]``) -> dict with
        ``seed_pos``, ``vote_pos [B, S, 3]``, ``aggregated_pos [B, P, 3]``,
        ``objectness_logits [B, P, 2]``, ``center [B, P, 3]``, ``heading_logits
        [B, P, NH]``, ``heading_residuals [B, P, NH]``, ``size_logits [B, P, NC]``,
        ``size_residuals [B, P, NC, 3]``, ``sem_logits [B, P, NC]`` (residuals
        normalised as in :func:`encode_boxes`).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        mean_sizes: Tensor | Sequence[Sequence[float]],
        num_heading_bins: int = 12,
        num_proposals: int = 128,
        vote_radius: float = 0.3,
        vote_k: int = 16,
        width: int = 128,
        eval_proposals: int | None = None,
    ) -> None:
        super().__init__()
        mean = check_mean_sizes(mean_sizes, num_classes)
        self.num_classes, self.num_heading_bins, self.num_proposals = (
            num_classes,
            num_heading_bins,
            num_proposals,
        )
        self.eval_proposals = num_proposals if eval_proposals is None else int(eval_proposals)
        self.vote_radius, self.vote_k = float(vote_radius), int(vote_k)
        self.register_buffer("mean_sizes", mean)
        self.vote_mlp = PointMLP(in_channels, [in_channels, in_channels])
        self.vote_out = nn.Linear(in_channels, 3 + in_channels)  # offset + feature residual
        self.aggregate = PointMLP(3 + in_channels, [width, width, width])
        self.proposal_mlp = PointMLP(width, [width, width])
        nh, nc = num_heading_bins, num_classes
        self.proposal_out = nn.Linear(width, 2 + 3 + 2 * nh + 4 * nc + nc)

    def extra_repr(self) -> str:
        return (
            f"classes={self.num_classes}, heading_bins={self.num_heading_bins}, "
            f"proposals={self.num_proposals} (eval {self.eval_proposals}), vote_radius={self.vote_radius}, "
            f"vote_k={self.vote_k}"
        )

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

    @torch.no_grad()
    def decode(
        self,
        outputs: dict[str, Tensor],
        nms_iou: float = 0.25,
        score_threshold: float = 0.05,
        per_class_nms: bool = True,
    ) -> list[dict[str, Tensor]]:
        """Boxes per scene: see :func:`decode_detections` (with this head's mean sizes)."""
        return decode_detections(outputs, self.mean_sizes, nms_iou, score_threshold, per_class_nms)


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


def most_likely_boxes(outputs: dict[str, Tensor], mean_sizes: Tensor) -> Tensor:
    """Boxes ``[B, P, 7]`` from each proposal's most likely heading bin and size class (with residuals)."""
    nh = outputs["heading_logits"].shape[-1]
    hcls = outputs["heading_logits"].argmax(-1)
    hres = torch.gather(outputs["heading_residuals"], -1, hcls[..., None])[..., 0]
    scls = outputs["size_logits"].argmax(-1)
    idx = scls[..., None, None].expand(-1, -1, 1, 3)
    sres = torch.gather(outputs["size_residuals"], 2, idx)[:, :, 0]
    return decode_boxes(outputs["center"], hcls, hres, scls, sres, mean_sizes, nh)


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


def check_mean_sizes(mean_sizes: Tensor | Sequence[Sequence[float]], num_classes: int) -> Tensor:
    """``mean_sizes`` as a float32 ``[NC, 3]`` tensor of positive sizes, or a ValueError saying why not."""
    mean = torch.as_tensor(mean_sizes, dtype=torch.float32)
    if mean.shape != (num_classes, 3) or not bool((mean > 0).all()):
        raise ValueError(
            f"mean_sizes must be [num_classes={num_classes}, 3] and > 0, got {tuple(mean.shape)}"
        )
    return mean


def fill_mean_sizes(model: str, cfg: dict) -> None:
    """Unit boxes for ``cfg["mean_sizes"]`` when it is ``None`` (tasks fill in the training set's means),
    then the :func:`check_mean_sizes` check; raises ``ValueError`` naming the model and the key."""
    if cfg["mean_sizes"] is None:
        cfg["mean_sizes"] = [[1.0, 1.0, 1.0]] * int(cfg["num_classes"])
    try:
        check_mean_sizes(cfg["mean_sizes"], int(cfg["num_classes"]))
    except ValueError as exc:
        raise ValueError(f"{model} config: 'mean_sizes': {exc}") from exc


def split_box_parameters(out: Tensor, num_heading_bins: int, num_classes: int) -> dict[str, Tensor]:
    """The heading, size and class blocks of a proposal output ``out [B, P, 2NH + 5NC]`` by name."""
    nh, nc = num_heading_bins, num_classes
    o = 2 * nh
    return {
        "heading_logits": out[..., :nh],
        "heading_residuals": out[..., nh:o],
        "size_logits": out[..., o : o + nc],
        "size_residuals": out[..., o + nc : o + 4 * nc].reshape(*out.shape[:-1], nc, 3),
        "sem_logits": out[..., o + 4 * nc :],
    }


# ------------------------------------------------------------------ loss


def _pad_gt(
    gt_boxes: Sequence[Tensor], gt_labels: Sequence[Tensor], like: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-scene GT -> padded ``boxes [B, M, 7]``, ``labels [B, M]``, ``mask [B, M]`` (M >= 1)."""
    m = max([len(g) for g in gt_boxes] + [1])
    boxes = like.new_zeros(len(gt_boxes), m, 7)
    boxes[..., 3:6] = 1.0  # padding: a harmless unit box, always masked out
    labels = torch.zeros(len(gt_boxes), m, dtype=torch.long, device=like.device)
    mask = torch.zeros(len(gt_boxes), m, dtype=torch.bool, device=like.device)
    for b, (g, lab) in enumerate(zip(gt_boxes, gt_labels, strict=True)):
        if g.shape != (len(lab), 7):
            raise ValueError(
                f"gt_boxes[{b}] must be [M, 7] with M = len(gt_labels[{b}]), got {tuple(g.shape)}"
            )
        boxes[b, : len(g)] = g.to(like)
        labels[b, : len(g)] = lab.to(like.device).long()
        mask[b, : len(g)] = True
    return boxes, labels, mask


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` over ``mask`` (0 where empty); ``where`` keeps inf outside the mask out of the sum."""
    m = mask.to(x.dtype)
    return torch.where(mask, x, torch.zeros_like(x)).sum() / (m.sum() + 1e-6)


def detection_loss(
    outputs: dict[str, Tensor],
    gt_boxes: Sequence[Tensor],
    gt_labels: Sequence[Tensor],
    mean_sizes: Tensor,
    seed_instance: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """VoteNet's loss (``models/loss_helper.py``), with its thresholds and weights.

    ``10 * (vote + 0.5 objectness + box + 0.1 semantic)`` with ``box = centre +
    0.1 heading_cls + heading_reg + 0.1 size_cls + size_reg``:

    - vote: L1 distance of each object seed's vote to its object's GT centre,
      averaged over object seeds. ``seed_instance [B, S]`` gives the index of
      the seed's box in ``gt_boxes[b]`` (-1: background); without it a seed
      belongs to every box that contains it and takes the nearest one's centre
      (VoteNet's multiple GT votes).
    - objectness: proposals whose aggregated vote lies within 0.3 of a GT centre
      are positive, beyond 0.6 negative, in between ignored; CE weighted 0.2/0.8.
    - centre: Chamfer of squared distances (positive proposals to their nearest
      GT centre + every GT centre to its nearest proposal).
    - heading/size: CE on the nearest GT's bin / class, smooth-L1 (Huber,
      delta 1) on the normalised residual of that bin / class; semantic CE. All
      over positive proposals.

    Args:
        outputs: :class:`DetectionHead` outputs.
        gt_boxes: per scene ``[M_b, 7]``; gt_labels: per scene ``[M_b]``.
        mean_sizes: ``[NC, 3]``.
        seed_instance: optional ``[B, S]`` int64.

    Returns:
        ``(total, parts)``; parts are floats (each term, plus ``obj_acc`` and
        ``pos_ratio``) for logging.
    """
    nh = outputs["heading_logits"].shape[-1]
    center = outputs["center"]
    boxes, labels, gt_mask = _pad_gt(gt_boxes, gt_labels, center)
    b, m = labels.shape
    gt_center = boxes[..., :3]
    enc = encode_boxes(boxes.reshape(-1, 7), labels.reshape(-1), mean_sizes, nh)
    enc = {k: v.reshape(b, m, *v.shape[1:]) for k, v in enc.items()}

    # Vote loss: each object seed's vote against the GT centre(s) it may vote for.
    seed_pos, vote_pos = outputs["seed_pos"], outputs["vote_pos"]
    if seed_instance is None:
        member = torch.stack([points_in_boxes(seed_pos[i], boxes[i]) for i in range(b)]) & gt_mask[:, None]
    else:
        inst = seed_instance.to(seed_pos.device).long()
        member = (inst[..., None] == torch.arange(m, device=inst.device)) & gt_mask[:, None]
    vote_d = (vote_pos[:, :, None] - gt_center[:, None]).abs().sum(-1)  # [B, S, M]
    vote_d = torch.where(member, vote_d, torch.full_like(vote_d, math.inf)).min(-1).values
    vote_loss = _masked_mean(vote_d, member.any(-1))

    # Objectness by distance of the aggregated vote to the nearest GT centre.
    inf = torch.full((), math.inf, dtype=center.dtype, device=center.device)
    d_agg = ((outputs["aggregated_pos"][:, :, None] - gt_center[:, None]) ** 2).sum(-1)
    dist, assign = torch.where(gt_mask[:, None], d_agg, inf).min(-1)  # [B, P]
    dist = dist.sqrt()
    positive = dist < NEAR_THRESHOLD
    counted = positive | (dist > FAR_THRESHOLD)
    weights = torch.tensor(OBJECTNESS_WEIGHTS, dtype=center.dtype, device=center.device)
    obj_logits = outputs["objectness_logits"]
    obj_ce = F.cross_entropy(obj_logits.transpose(1, 2), positive.long(), weight=weights, reduction="none")
    obj_loss = _masked_mean(obj_ce, counted)

    # Centre: Chamfer of squared distances between predicted and GT centres.
    d_c = torch.where(gt_mask[:, None], ((center[:, :, None] - gt_center[:, None]) ** 2).sum(-1), inf)
    center_loss = _masked_mean(d_c.min(-1).values, positive) + _masked_mean(d_c.min(1).values, gt_mask)

    def assigned(t: Tensor) -> Tensor:  # GT quantity [B, M, ...] of each proposal's nearest GT -> [B, P, ...]
        idx = assign.reshape(b, -1, *([1] * (t.dim() - 2))).expand(-1, -1, *t.shape[2:])
        return torch.gather(t, 1, idx)

    def ce(logits: Tensor, target: Tensor) -> Tensor:
        return _masked_mean(F.cross_entropy(logits.transpose(1, 2), target, reduction="none"), positive)

    hcls, scls = assigned(enc["heading_class"]), assigned(enc["size_class"])
    hres = torch.gather(outputs["heading_residuals"], -1, hcls[..., None])[..., 0]
    heading_reg = _masked_mean(
        F.smooth_l1_loss(hres, assigned(enc["heading_residual"]), reduction="none"), positive
    )
    sres = torch.gather(outputs["size_residuals"], 2, scls[..., None, None].expand(-1, -1, 1, 3))[:, :, 0]
    size_reg_all = F.smooth_l1_loss(sres, assigned(enc["size_residual"]), reduction="none").mean(-1)
    parts_t = {
        "vote": vote_loss,
        "objectness": obj_loss,
        "center": center_loss,
        "heading_cls": ce(outputs["heading_logits"], hcls),
        "heading_reg": heading_reg,
        "size_cls": ce(outputs["size_logits"], scls),
        "size_reg": _masked_mean(size_reg_all, positive),
        "sem_cls": ce(outputs["sem_logits"], assigned(labels)),
    }
    box = (
        parts_t["center"]
        + 0.1 * parts_t["heading_cls"]
        + parts_t["heading_reg"]
        + 0.1 * parts_t["size_cls"]
        + parts_t["size_reg"]
    )
    total = 10 * (vote_loss + 0.5 * obj_loss + box + 0.1 * parts_t["sem_cls"])
    parts = {k: float(v.detach()) for k, v in parts_t.items()}
    obj_hit = (obj_logits.argmax(-1) == positive.long()).to(center.dtype)
    parts["obj_acc"] = float(_masked_mean(obj_hit, counted))
    parts["pos_ratio"] = float(positive.float().mean())
    return total, parts
