"""VoteNet's detection loss (vote, objectness, centre, heading, size and class terms) for both vote heads."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from geo3d.nn.heads.box_coding import encode_boxes
from geo3d.ops.boxes import points_in_boxes

NEAR_THRESHOLD = 0.3  # a proposal within this of a GT centre is positive (VoteNet)


FAR_THRESHOLD = 0.6  # ... beyond this negative; in between, ignored


OBJECTNESS_WEIGHTS = (0.2, 0.8)  # CE weights of negatives / positives (VoteNet)


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
