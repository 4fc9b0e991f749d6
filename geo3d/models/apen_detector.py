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

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn
from typing_extensions import Self

from geo3d.models.apen import APEN, APENConfig
from geo3d.models.config import FrameDetectionHeadConfig, ModelConfig, PositiveInt
from geo3d.nn.heads.detection import VoteHeadSpec
from geo3d.nn.heads.frame_detection import FrameVoteHead


class APENDetectorConfig(FrameDetectionHeadConfig):
    """APEN backbone (nested, :class:`~geo3d.models.apen.APENConfig`) + frame-relative head keys."""

    arch: ClassVar[str] = "apen_detector"

    # object classes (also the size classes); segmentation adds background, so the backbone's
    # num_classes defaults to 1 + num_classes
    num_classes: PositiveInt = 8
    backbone: APENConfig = Field(default_factory=dict)
    # None: every point is a seed (exact per part); S: FPS subsample of S points
    num_seeds: PositiveInt | None = None
    # proposal centres in eval mode: "fps" (FPS over the votes, eval_proposals of them; what apen-rooms
    # trained with) or "parts" (one per part of APEN's last partition: the seed whose vote is nearest the
    # part's mean vote; needs num_seeds null; apen-rooms ships with it since issue 21). Training: FPS.
    proposals: Literal["fps", "parts"] = "fps"

    @model_validator(mode="before")
    @classmethod
    def _backbone_classes(cls, data: Any) -> Any:
        # the nested APEN config: its own metadata keys dropped, num_classes = background + objects
        if isinstance(data, dict) and isinstance(data.get("backbone", {}), dict):
            backbone = {k: v for k, v in data.get("backbone", {}).items() if k not in APENConfig.metadata}
            classes = data.get("num_classes", 8)
            default = {"num_classes": 1 + classes} if isinstance(classes, int) else {}
            data = {**data, "backbone": {**default, **backbone}}
        return data

    @model_validator(mode="after")
    def _seeds_fit(self) -> Self:
        for key in ("num_proposals", "eval_proposals"):
            value = getattr(self, key)
            if self.num_seeds is not None and value is not None and self.num_seeds < value:
                raise ValueError(f"'{key}' ({value}) exceeds 'num_seeds' ({self.num_seeds})")
        if self.proposals == "parts" and self.num_seeds is not None:
            raise ValueError("'proposals: parts' needs 'num_seeds: null' (every point a seed)")
        if self.heading_frame == "learned" and self.backbone.vec_channels[-1] < 1:
            raise ValueError(
                "'heading_frame: learned' needs a vector the last APEN block passes on "
                f"(backbone vec_channels[-1] >= 1, got {self.backbone.vec_channels})"
            )
        return self


class APENDetector(nn.Module):
    """APEN backbone + its segmentation head + :class:`FrameVoteHead` on APEN's seeds.

    Args:
        config: keys of :class:`APENDetectorConfig`; the APEN config nested under ``backbone``;
            unknown keys raise ``ValueError``.

    Shapes:
        input: a PyG ``Batch`` with ``pos [N, 3]`` and ``batch [N]`` (sorted);
        with ``num_seeds: null`` every scene needs the same number of points.
        output: see :meth:`forward`.
    """

    Config: ClassVar[type[ModelConfig]] = APENDetectorConfig  # its config: keys, types, defaults

    # A trained segmentation APEN (e.g. ``apen-rooms-seg``) can seed the backbone (train.init_from).
    warm_start_parts: ClassVar[dict[str, str]] = {"apen": "backbone"}

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        cfg = APENDetectorConfig.resolve(config)
        self.config = cfg
        self.num_seeds = cfg["num_seeds"]
        self.backbone = APEN(cfg["backbone"])
        self.head = FrameVoteHead(self.backbone.feat_dim, VoteHeadSpec.from_config(cfg))

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
        """Boxes per scene (see :meth:`~geo3d.nn.heads.detection.VoteGroupingHead.decode`): ``boxes [K, 7]``, ``scores``, ``labels``."""
        return self.head.decode(outputs, **kwargs)


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
