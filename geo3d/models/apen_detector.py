"""APEN features with two heads: semantic segmentation and VoteNet-style 3D detection (arch ``apen_detector``).

The APEN backbone (:class:`~geo3d.models.apen.APEN`, its config nested under
``backbone``) gives every point an invariant feature, semantic logits
(``1 + num_classes``: background + the object classes) and, from its last
block, an equivariant vote for the centre of the point's object. The detection
head is :class:`~geo3d.nn.heads.frame_detection.FrameVoteHead` (VoteNet's
proposal module on equivariant votes, invariant proposal features and headings
relative to each proposal's horizontal frame): its votes are APEN's last-block
votes, trained toward the object centre. The seeds are all points
(``num_seeds: null``) or an FPS subsample (``num_seeds: S``, APEN's
:meth:`~geo3d.models.apen.APEN.seeds`).

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

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from geo3d.models.apen import APEN
from geo3d.models.apen import check_config as check_apen_config
from geo3d.nn.heads.box_coding import fill_mean_sizes
from geo3d.nn.heads.detection import check_proposal_counts, head_kwargs
from geo3d.nn.heads.frame_detection import (
    DETECTOR_METADATA,
    FrameVoteHead,
    check_heading_frame,
    decode_frame_detections,
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
    # per-proposal heading frame: "pca" (the grouped seeds' principal axis; what apen-rooms shipped with)
    # or "learned" (the mean of the seeds' axes: APEN's first passed-on vector of its last block,
    # trained toward the box yaw by frame_axis_loss)
    "heading_frame": "pca",
    # proposal centres in eval mode: "fps" (FPS over the votes, eval_proposals of them; what apen-rooms
    # trained with) or "parts" (one per part of APEN's last partition: the seed whose vote is nearest the
    # part's mean vote; needs num_seeds null; apen-rooms ships with it since issue 21). Training: FPS.
    "proposals": "fps",
}
# Recorded in the checkpoint's config by the training task, not used by the network.
METADATA = DETECTOR_METADATA


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
    check_heading_frame("apen_detector", cfg)
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
    if cfg["proposals"] not in ("fps", "parts"):
        raise ValueError(
            f"apen_detector config: 'proposals' must be 'fps' or 'parts', got {cfg['proposals']!r}"
        )
    if cfg["proposals"] == "parts" and seeds is not None:
        raise ValueError(
            "apen_detector config: 'proposals: parts' needs 'num_seeds: null' (every point a seed)"
        )
    fill_mean_sizes("apen_detector", cfg)
    backbone = {"num_classes": 1 + cfg["num_classes"], **cfg["backbone"]}
    try:
        cfg["backbone"] = check_apen_config(backbone)
    except ValueError as exc:
        raise ValueError(f"apen_detector config: 'backbone': {exc}") from exc
    if cfg["heading_frame"] == "learned" and cfg["backbone"]["vec_channels"][-1] < 1:
        raise ValueError(
            "apen_detector config: 'heading_frame: learned' needs a vector the last APEN block passes on "
            f"(backbone vec_channels[-1] >= 1, got {cfg['backbone']['vec_channels']})"
        )
    return cfg


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
        self.head = FrameVoteHead(self.backbone.feat_dim, **head_kwargs(cfg))

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
            **({} if out["axis"] is None else {"seed_axis": out["axis"].reshape(b, n, 3)}),
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
        axis = seeds.get("seed_axis") if self.config["heading_frame"] == "learned" else None
        proposal_idx = None
        if self.config["proposals"] == "parts" and not self.training:
            proposal_idx = part_proposals(
                out["vote"], out["partition"], out["part_batch"], seeds["seed_pos"].shape[1]
            )
        det = self.head(seeds["seed_pos"], seeds["seed_feat"], seeds["seed_vote"], axis, proposal_idx)
        return {**out, **det, "seed_index": seeds["seed_idx"]}

    def decode(self, outputs: dict[str, Tensor], **kwargs: Any) -> list[dict[str, Tensor]]:
        """Boxes per scene (see :func:`decode_frame_detections`): ``boxes [K, 7]``, ``scores``, ``labels``."""
        return decode_frame_detections(outputs, self.head.mean_sizes, **kwargs)


def part_proposals(vote: Tensor, part: Tensor, part_batch: Tensor, points_per_scene: int) -> Tensor:
    """One proposal per part: the point whose vote is nearest its part's mean vote (ties: lower index).

    Args:
        vote: ``[N, 3]`` APEN's last-block votes; part: ``[N]`` part ids (compact, every part non-empty);
        part_batch: ``[P]`` scene of each part; points_per_scene: ``n`` (scenes of equal size, in order).

    Returns:
        ``[B, P_max]`` indices into each scene's points; scenes with fewer parts repeat their first
        proposal (identical proposals give identical boxes, which NMS removes).
    """
    num_parts = len(part_batch)
    counts = torch.bincount(part, minlength=num_parts).clamp(min=1)
    mean = torch.zeros(num_parts, 3, dtype=vote.dtype, device=vote.device).index_add_(0, part, vote)
    mean = mean / counts[:, None]
    d = ((vote - mean[part]) ** 2).sum(-1)
    by_d = torch.sort(d, stable=True).indices
    by_part = by_d[torch.sort(part[by_d], stable=True).indices]  # grouped by part, nearest first
    starts = torch.cumsum(counts, 0) - counts
    rep = by_part[starts]  # [P] global point index of each part's proposal
    num_graphs = int(part_batch.max()) + 1 if num_parts else 0
    per_scene = torch.bincount(part_batch, minlength=num_graphs)
    width = int(per_scene.max()) if num_parts else 1
    first = torch.cumsum(per_scene, 0) - per_scene
    slot = torch.arange(num_parts, device=vote.device) - first[part_batch]
    local = rep - part_batch * points_per_scene
    out = local[first].reshape(-1, 1).repeat(1, width)  # padding: the scene's first proposal
    out[part_batch, slot] = local
    return out
