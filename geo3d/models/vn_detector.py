"""A Vector-Neuron detector: VN PointNet++ features with a frame-relative VoteNet head (arch ``vn_detector``).

The backbone is PointNet++ (:mod:`geo3d.models.votenet`: FPS centres, ball
grouping, max-pool, one feature-propagation step back to the seeds) built
from Vector-Neuron layers (Deng et al., ICCV 2021; :mod:`geo3d.nn.vector_neurons`):
every feature is a list of 3D vectors ``[C, 3]`` and every layer commutes with
rotations. Per group the input vectors are the neighbours' offsets ``r_j`` from
the centre (scaled by the radius), their mean ``r̄`` and ``r_j x r̄`` (one
vector per edge alone would keep every channel parallel to ``r_j``), followed
by the neighbours' vector features from the level below. At the seeds:

- the **vote** is ``seed_pos + o`` with ``o`` one vector channel of a VN map:
  equivariant, trained toward the object centre by VoteNet's vote loss;
- the **feature** is invariant: the seed's vectors in a learned equivariant
  frame (:class:`~geo3d.nn.vector_neurons.VNInvariant`), flattened, through an MLP;
- the head's per-proposal heading frame is the principal axis of the grouped seeds
  (``heading_frame: pca``, the default), or with ``heading_frame: learned`` their
  mean **axis**: a second vector channel of the vote map trained toward the object's
  yaw (modulo a half turn) by :func:`~geo3d.nn.heads.frame_detection.frame_axis_loss`.
  Measured at the same budget (12 epochs of 400 Rooms scenes), the axes barely
  learned (loss 1.0 -> 0.83, chance 1.0) and validation mAP@0.25 was lower (0.22
  against 0.32 at epoch 10), so PCA stays the default.

The head is :class:`~geo3d.nn.heads.frame_detection.FrameVoteHead` (it needs
exactly invariant features and equivariant votes), trained with
:func:`~geo3d.nn.heads.frame_detection.frame_detection_loss`.

What is exact (float round-off and FPS/kNN ties aside): under any rotation in
SO(3) and translation of a scene, seed features are invariant and seed votes
move with the scene (the FPS and grouping only see distances, and FPS starts
from the point farthest from the centroid); the boxes follow rotations about
the vertical (headings come from horizontal frames; boxes are upright). Under
per-object motions nothing is exact: the receptive fields of seeds near an
object's border cover the floor and neighbours. Reflections are not claimed
(``r_j x r̄`` is a pseudovector).

Against VN-PointNet/VN-DGCNN (GitHub FlyingGiraffe/vnn): those classify whole
shapes and take ``[x_j - x_i, x_i]`` with ``x_i`` relative to the cloud's
centroid; a scene backbone must be local and translation invariant, hence the
offsets from each group's centre, and PointNet++'s hierarchy instead of a
dynamic graph (a kNN in feature space over a 20k-point scene is quadratic).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn
from typing_extensions import Self

from geo3d.models.config import FrameDetectionHeadConfig, ModelConfig, PositiveInt
from geo3d.models.votenet import abstraction_levels, ball_group, check_levels, interpolate, scene_ptr
from geo3d.nn.heads.detection import VoteHeadSpec
from geo3d.nn.heads.frame_detection import FrameVoteHead
from geo3d.nn.heads.point_grouping import PointMLP
from geo3d.nn.vector_neurons import VNInvariant, VNLinear, VNLinearBNLeakyReLU, VNMaxPool

EDGE_VECTORS = 3  # per grouped point: r_j, mean r, r_j x mean r
# Flat, evenly sampled surfaces (the floor) give near-zero mean offsets and cross products; the paper's
# VN batch norm scales every vector to BN(|x|) and blew their gradients up to ~1e5 (measured at the
# first steps); the RMS norm keeps lengths relative.
NORM = "rms"


class VNDetectorConfig(FrameDetectionHeadConfig):
    """The VN backbone's levels (vector channels) and the frame-relative head's keys."""

    arch: ClassVar[str] = "vn_detector"

    sa_points: list[PositiveInt] = Field([1024, 256, 128], min_length=1)
    sa_radius: list[Annotated[float, Field(gt=0)]] = [0.2, 0.4, 0.8]
    sa_k: list[PositiveInt] = [16, 16, 16]
    sa_widths: list[list[PositiveInt]] = [[16, 32], [32, 64], [64, 64]]  # vector channels (3 floats each)
    fp_widths: list[PositiveInt] = [64]  # [] -> the seeds are the last level's centres
    feat_width: PositiveInt = 128  # invariant seed feature

    @model_validator(mode="after")
    def _levels_and_seeds_agree(self) -> Self:
        check_levels(self)
        seeds = self.sa_points[-2] if self.fp_widths else self.sa_points[-1]
        for key in ("num_proposals", "eval_proposals"):
            value = getattr(self, key)
            if value is not None and value > seeds:
                raise ValueError(f"'{key}' ({value}) exceeds the {seeds} seeds a scene")
        return self


def vn_mlp(c_in: int, widths: list[int]) -> nn.Sequential:
    """VN blocks (linear, RMS norm, leaky ReLU) of the given widths: ``[..., c_in, 3] -> [..., widths[-1], 3]``."""
    layers = []
    for w in widths:
        layers.append(VNLinearBNLeakyReLU(c_in, w, norm=NORM))
        c_in = w
    return nn.Sequential(*layers)


class VNSetAbstraction(nn.Module):
    """One VN PointNet++ level: ``m`` FPS centres, ``k`` nearest within ``radius``, VN MLP, VN max-pool.

    ``forward(pos [N, 3], feat [N, C, 3] | None, ptr)`` -> centre indices ``[B, m]``,
    features ``[B, m, C', 3]``.
    """

    def __init__(self, m: int, radius: float, k: int, c_in: int, widths: list[int]) -> None:
        super().__init__()
        self.m, self.radius, self.k = int(m), float(radius), int(k)
        self.mlp = vn_mlp(EDGE_VECTORS + c_in, list(widths))
        self.out_channels = int(widths[-1])
        self.pool = VNMaxPool(self.out_channels)

    def forward(self, pos: Tensor, feat: Tensor | None, ptr: Tensor) -> tuple[Tensor, Tensor]:
        centres, nbr = ball_group(pos, ptr, self.m, self.k, self.radius)
        rel = (pos[nbr] - pos[centres][:, :, None]) / self.radius  # [B, m, k, 3]
        mean = rel.mean(dim=2, keepdim=True).expand_as(rel)
        h = torch.stack([rel, mean, torch.linalg.cross(rel, mean, dim=-1)], dim=-2)  # [B, m, k, 3, 3]
        if feat is not None:
            h = torch.cat([h, feat[nbr]], dim=-2)
        return centres, self.pool(self.mlp(h), dim=2)


class VNFeaturePropagation(nn.Module):
    """Coarse VN features interpolated to fine points (distance weights), joined with the skip, VN MLP."""

    def __init__(self, c_coarse: int, c_fine: int, widths: list[int]) -> None:
        super().__init__()
        self.mlp = vn_mlp(c_coarse + c_fine, list(widths))
        self.out_channels = int(widths[-1])

    def forward(self, fine_pos: Tensor, fine_feat: Tensor, coarse_pos: Tensor, coarse_feat: Tensor) -> Tensor:
        """``[B, F, 3]``, ``[B, F, C_f, 3]``, ``[B, M, 3]``, ``[B, M, C_c, 3]`` -> ``[B, F, C', 3]``."""
        return self.mlp(torch.cat([interpolate(fine_pos, coarse_pos, coarse_feat), fine_feat], dim=-2))


class VNDetector(nn.Module):
    """VN PointNet++ backbone -> (invariant seed features, equivariant seed votes) -> :class:`FrameVoteHead`.

    ``forward(data)`` takes a PyG ``Batch`` (``pos [N, 3]``, ``batch [N]``
    sorted; scenes may differ in size but each needs ``sa_points[0]`` points) and
    returns the head's outputs (``vote_pos``, ``center``, ``heading_frame``,
    ``objectness_logits``, ...) plus ``seed_index [B, S]``; ``decode`` gives boxes.
    """

    Config: ClassVar[type[ModelConfig]] = VNDetectorConfig  # its config: keys, types, defaults

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        cfg = VNDetectorConfig.resolve(config)
        self.config = cfg
        self.levels = nn.ModuleList()
        c = 0
        for m, r, k, w in zip(cfg["sa_points"], cfg["sa_radius"], cfg["sa_k"], cfg["sa_widths"], strict=True):
            self.levels.append(VNSetAbstraction(m, r, k, c, list(w)))
            c = self.levels[-1].out_channels
        self.fp = None
        if cfg["fp_widths"]:
            self.fp = VNFeaturePropagation(c, self.levels[-2].out_channels, list(cfg["fp_widths"]))
            c = self.fp.out_channels
        if c < 4:
            raise ValueError(f"vn_detector config: the seeds need at least 4 vector channels, got {c}")
        # channel 0: the vote offset; channel 1 (learned frame): the seed's axis
        self.learned_frame = cfg["heading_frame"] == "learned"
        self.vote = nn.Sequential(VNLinearBNLeakyReLU(c, c, norm=NORM), VNLinear(c, 1 + self.learned_frame))
        self.invariant = VNInvariant(c, norm=NORM)
        self.feat = PointMLP(3 * c, [int(cfg["feat_width"])])
        self.head = FrameVoteHead(int(cfg["feat_width"]), VoteHeadSpec.from_config(cfg))

    @property
    def mean_sizes(self) -> Tensor:
        return self.head.mean_sizes

    def seeds(self, data: Any) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor]:
        """``seed_pos [B, S, 3]``, invariant ``seed_feat [B, S, F]``, equivariant ``seed_vote [B, S, 3]``
        and ``seed_axis [B, S, 3]`` (None with the PCA frame), ``seed_index [B, S]`` (into ``data.pos``)."""
        levels = abstraction_levels(self.levels, data.pos, None, scene_ptr(data))
        if self.fp is None:
            pos, h, index = levels[-1]
        else:
            (pos, fine, index), (coarse_pos, coarse, _) = levels[-2], levels[-1]
            h = self.fp(pos, fine, coarse_pos, coarse)  # [B, S, C, 3]
        v = self.vote(h)  # [B, S, 1 or 2, 3]
        axis = v[..., 1, :] if self.learned_frame else None
        inv, _ = self.invariant(h)  # [B, S, C, 3]
        return pos, self.feat(inv.flatten(-2)), pos + v[..., 0, :], axis, index

    def forward(self, data: Any) -> dict[str, Tensor]:
        pos, feat, vote, axis, index = self.seeds(data)
        return {**self.head(pos, feat, vote, axis), "seed_index": index}

    def decode(self, outputs: dict[str, Tensor], **kwargs: Any) -> list[dict[str, Tensor]]:
        """Boxes per scene (:meth:`~geo3d.nn.heads.detection.VoteGroupingHead.decode`)."""
        return self.head.decode(outputs, **kwargs)
