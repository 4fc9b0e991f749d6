"""VoteNet (Qi et al., ICCV 2019): a PointNet++ backbone feeding geo3d's detection head.

The backbone is a small single-scale PointNet++ (Qi et al., NeurIPS 2017):
set-abstraction levels (farthest-point sampling of centres, the ``k`` nearest
points within a radius through :func:`geo3d.ops.point_ops.knn_graph`, a shared
MLP on ``[(p_j - p_c) / r, f_j]``, max-pool), then optionally one
feature-propagation step (inverse-distance interpolation from the last level
back to the one before, VoteNet's seeds). Features see only relative
coordinates (and normals if asked), so the seeds' features are translation
invariant and the boxes translate with the scene. Sampling starts from the
point farthest from the centroid, so the output does not depend on point order.

The head needs only ``(seed_pos, seed_feat)``: any module with ``forward(data)
-> Seeds`` and an ``out_channels`` attribute can replace the backbone (pass it
as ``backbone=`` or add a builder to :data:`BACKBONES`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal, NamedTuple, get_args

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn
from typing_extensions import Self

from geo3d.models.config import DetectionHeadConfig, ModelConfig, PositiveInt
from geo3d.nn.heads.detection import DetectionHead, VoteHeadSpec
from geo3d.nn.heads.point_grouping import PointMLP, canonical_fps, gather_points
from geo3d.ops.point_ops import knn_graph


class Seeds(NamedTuple):
    """What a backbone hands the head: ``pos [B, S, 3]``, ``feat [B, S, C]``, ``index [B, S]``.

    ``index`` points into the input's flat ``pos [N, 3]`` (for per-seed labels).
    """

    pos: Tensor
    feat: Tensor
    index: Tensor


def scene_ptr(data: Any) -> Tensor:
    """``[B + 1]`` offsets of the scenes of a PyG batch (``batch`` sorted), on the CPU."""
    n = data.pos.shape[0]
    batch = getattr(data, "batch", None)
    if batch is None:
        return torch.tensor([0, n])
    counts = torch.bincount(batch.detach().cpu(), minlength=int(getattr(data, "num_graphs", 1)))
    return torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])


def ball_group(pos: Tensor, ptr: Tensor, m: int, k: int, radius: float) -> tuple[Tensor, Tensor]:
    """PointNet++ grouping: ``m`` FPS centres per scene and their ``k`` nearest points within ``radius``.

    Args:
        pos: ``[N, 3]`` points of ``B`` scenes at ``ptr`` (``[B + 1]`` offsets).

    Returns:
        ``centres [B, m]`` and ``nbr [B, m, k]``, indices into ``pos``; neighbours
        nearest first (the centre itself first), those beyond ``radius`` replaced by
        the centre (PointNet++'s ball-query padding, harmless under a max-pool).
    """
    centres = canonical_fps(pos, ptr, m)  # [B, m] into pos
    sizes = ptr[1:] - ptr[:-1]
    if int(sizes.min()) < k:
        raise ValueError(f"set abstraction: k={k} neighbours but a scene has {int(sizes.min())} points")
    batch = torch.repeat_interleave(torch.arange(len(sizes), device=pos.device), sizes.to(pos.device))
    edges = knn_graph(pos, k, batch=batch, loop=True, num_graphs=len(sizes))
    nbr = edges[0].reshape(len(pos), k)[centres]  # [B, m, k]
    d2 = ((pos[nbr] - pos[centres][:, :, None]).detach() ** 2).sum(-1)
    return centres, torch.where(d2 <= radius**2, nbr, nbr[..., :1])


class SetAbstraction(nn.Module):
    """One PointNet++ level: ``m`` FPS centres, ``k`` nearest within ``radius``, MLP, max-pool."""

    def __init__(self, m: int, radius: float, k: int, c_in: int, widths: list[int]) -> None:
        super().__init__()
        self.m, self.radius, self.k = int(m), float(radius), int(k)
        self.mlp = PointMLP(3 + c_in, widths)
        self.out_channels = self.mlp.out_channels

    def forward(self, pos: Tensor, feat: Tensor | None, ptr: Tensor) -> tuple[Tensor, Tensor]:
        """``pos [N, 3]``, ``feat [N, C]`` of scenes at ``ptr`` -> centre indices ``[B, m]``, features ``[B, m, C']``."""
        centres, nbr = ball_group(pos, ptr, self.m, self.k, self.radius)
        h = (pos[nbr] - pos[centres][:, :, None]) / self.radius
        if feat is not None:
            h = torch.cat([h, feat[nbr]], dim=-1)
        return centres, self.mlp(h).max(dim=2).values


def interpolate(fine_pos: Tensor, coarse_pos: Tensor, coarse_feat: Tensor) -> Tensor:
    """Inverse-distance interpolation from the 3 nearest coarse points (PointNet++'s feature propagation).

    ``fine_pos [B, F, 3]``, ``coarse_pos [B, M, 3]``, ``coarse_feat [B, M, ...]`` ->
    ``[B, F, ...]``. The weights depend on distances only, so interpolated
    vector features rotate with the points.
    """
    d2 = ((fine_pos.detach()[:, :, None] - coarse_pos.detach()[:, None]) ** 2).sum(-1)  # [B, F, M]
    d2, idx = torch.topk(d2, min(3, coarse_pos.shape[1]), dim=-1, largest=False)
    w = 1.0 / (d2.sqrt() + 1e-8)
    w = w / w.sum(-1, keepdim=True)
    b, m = coarse_feat.shape[:2]
    flat = gather_points(coarse_feat.reshape(b, m, -1), idx)  # [B, F, 3, prod(...)]
    out = (flat * w[..., None]).sum(2)
    return out.reshape(*out.shape[:2], *coarse_feat.shape[2:])


def abstraction_levels(
    levels: nn.ModuleList, pos: Tensor, feat: Tensor | None, ptr: Tensor
) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Run set-abstraction levels in turn, each on the previous level's centres.

    Args:
        levels: modules with ``forward(pos [N, 3], feat [N, ...] | None, ptr) -> (centres [B, m], feat [B, m, ...])``.
        pos, feat, ptr: the input points of ``B`` scenes at offsets ``ptr``.

    Returns:
        per level ``(pos [B, m, 3], feat [B, m, ...], index [B, m])``, ``index`` into the input ``pos``.
    """
    out: list[tuple[Tensor, Tensor, Tensor]] = []
    for sa in levels:
        centres, feat_b = sa(pos, feat, ptr)
        b, m = centres.shape
        index = centres if not out else out[-1][2].reshape(-1)[centres]
        pos, feat, ptr = pos[centres.reshape(-1)], feat_b.flatten(0, 1), torch.arange(b + 1) * m
        out.append((pos.reshape(b, m, 3), feat_b, index))
    return out


class FeaturePropagation(nn.Module):
    """Inverse-distance interpolation (3 nearest) from coarse to fine points, concat skip, MLP."""

    def __init__(self, c_coarse: int, c_fine: int, widths: list[int]) -> None:
        super().__init__()
        self.mlp = PointMLP(c_coarse + c_fine, widths)
        self.out_channels = self.mlp.out_channels

    def forward(self, fine_pos: Tensor, fine_feat: Tensor, coarse_pos: Tensor, coarse_feat: Tensor) -> Tensor:
        """``[B, F, 3]``, ``[B, F, C_f]``, ``[B, M, 3]``, ``[B, M, C_c]`` -> ``[B, F, C']``."""
        return self.mlp(torch.cat([interpolate(fine_pos, coarse_pos, coarse_feat), fine_feat], dim=-1))


class PointNet2Backbone(nn.Module):
    """Set-abstraction levels (+ one feature propagation) -> :class:`Seeds`."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.use_normals = bool(cfg["use_normals"])
        c = 3 if self.use_normals else 0
        self.levels = nn.ModuleList()
        for m, r, k, w in zip(cfg["sa_points"], cfg["sa_radius"], cfg["sa_k"], cfg["sa_widths"], strict=True):
            self.levels.append(SetAbstraction(m, r, k, c, list(w)))
            c = self.levels[-1].out_channels
        self.fp = None
        if cfg["fp_widths"]:
            c_fine = self.levels[-2].out_channels
            self.fp = FeaturePropagation(c, c_fine, list(cfg["fp_widths"]))
            c = self.fp.out_channels
        self.out_channels = c

    def forward(self, data: Any) -> Seeds:
        pos, ptr = data.pos, scene_ptr(data)
        feat = data.normal if self.use_normals else None
        levels = abstraction_levels(self.levels, pos, feat, ptr)
        if self.fp is None:
            return Seeds(*levels[-1])
        (fine_pos, fine_feat, fine_index), (coarse_pos, coarse_feat, _) = levels[-2], levels[-1]
        return Seeds(fine_pos, self.fp(fine_pos, fine_feat, coarse_pos, coarse_feat), fine_index)


BACKBONES: dict[str, Callable[[dict[str, Any]], nn.Module]] = {"pointnet2": PointNet2Backbone}


class VoteNetConfig(DetectionHeadConfig):
    """VoteNet's keys: the PointNet++ backbone's levels and the detection head's."""

    arch: ClassVar[str] = "votenet"
    # score_threshold: calibrated on validation scenes (geo3d.apps.detect.calibrate_score_threshold),
    # read by geo3d detect.
    metadata: ClassVar[tuple[str, ...]] = (
        "arch",
        "num_points",
        "train_rotation",
        "class_names",
        "object_yaw",
        "score_threshold",
    )

    backbone: Literal["pointnet2"] = "pointnet2"  # a key of BACKBONES
    use_normals: bool = False
    sa_points: list[PositiveInt] = Field([1024, 512, 256], min_length=1)
    sa_radius: list[Annotated[float, Field(gt=0)]] = [0.2, 0.4, 0.8]
    sa_k: list[PositiveInt] = [32, 32, 16]
    sa_widths: list[list[PositiveInt]] = [[64, 64, 128], [128, 128, 256], [128, 128, 256]]
    fp_widths: list[PositiveInt] = [256, 256]  # [] -> the seeds are the last level's centres
    num_proposals: PositiveInt = 128
    vote_k: PositiveInt = 16

    @model_validator(mode="after")
    def _levels_agree(self) -> Self:
        check_levels(self)
        return self


assert get_args(VoteNetConfig.model_fields["backbone"].annotation) == tuple(BACKBONES)


def check_levels(cfg: Any) -> None:
    """The set-abstraction lists of a PointNet++-style config agree: one entry per level, fewer points
    each level, two levels at least for feature propagation; raises ``ValueError`` naming the key."""
    n = len(cfg.sa_points)
    for key in ("sa_radius", "sa_k", "sa_widths"):
        if len(getattr(cfg, key)) != n:
            raise ValueError(f"'{key}' has {len(getattr(cfg, key))} levels but 'sa_points' has {n}")
    if any(not w for w in cfg.sa_widths):
        raise ValueError(f"every level of 'sa_widths' needs a width, got {cfg.sa_widths}")
    if cfg.fp_widths and n < 2:
        raise ValueError("'fp_widths' needs at least 2 set-abstraction levels")
    if any(b > a for a, b in itertools.pairwise(cfg.sa_points)):
        raise ValueError(f"'sa_points' must not increase, got {cfg.sa_points}")


class VoteNet(nn.Module):
    """Backbone + :class:`~geo3d.nn.heads.detection.DetectionHead`.

    ``forward(data)`` takes a PyG ``Batch`` (``pos [N, 3]``, ``batch [N]``,
    ``normal`` if ``use_normals``; scenes may differ in size but each needs at
    least ``sa_points[0]`` points) and returns the head's outputs plus
    ``seed_index [B, S]`` (input point of each seed). ``decode`` gives boxes.
    """

    Config: ClassVar[type[ModelConfig]] = VoteNetConfig  # its config: keys, types, defaults

    def __init__(self, config: dict[str, Any], backbone: nn.Module | None = None) -> None:
        super().__init__()
        cfg = VoteNetConfig.resolve(config)
        self.config = cfg
        self.backbone = backbone if backbone is not None else BACKBONES[cfg["backbone"]](cfg)
        self.head = DetectionHead(self.backbone.out_channels, VoteHeadSpec.from_config(cfg))

    @property
    def mean_sizes(self) -> Tensor:
        return self.head.mean_sizes

    def forward(self, data: Any) -> dict[str, Tensor]:
        seeds = self.backbone(data)
        out = self.head(seeds.pos, seeds.feat)
        out["seed_index"] = seeds.index
        return out

    def decode(self, outputs: dict[str, Tensor], **kwargs: Any) -> list[dict[str, Tensor]]:
        """Boxes per scene (see :meth:`geo3d.nn.heads.detection.VoteGroupingHead.decode`)."""
        return self.head.decode(outputs, **kwargs)
