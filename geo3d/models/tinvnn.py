"""TinvNN: transformation-invariant initial coordinates by modified MDS, then a PointNet classifier.

The invariant representation (Zhang et al., "TinvNN"): double-centre the squared
distance matrix, ``B = -1/2 J D J`` (``J`` the centring matrix), and take its top
three eigenpairs, ``Y = U_3 sqrt(Lambda_3)``. ``B`` is the Gram matrix of the
centred points, so ``Y`` equals the centred points in the eigenbasis of their
3x3 covariance: we compute it that way, in O(N) (not the O(N^2) distance matrix)
and in float64. ``Y`` is unchanged by rotations, reflections, translations and
point permutations up to each axis' sign; the signs are fixed deterministically
by making every axis' third moment ``sum_i y_ia^3`` positive.

Degenerate cases (documented, flagged, not hidden): when two eigenvalues are
(nearly) equal, e.g. a sphere or a cylinder's cross-section, the axes inside that
eigenspace are arbitrary; when a third moment is (nearly) zero, e.g. a shape
symmetric under a reflection, that axis' sign is arbitrary. For such shapes the
point set is itself (nearly) symmetric under the ambiguity, so the output moves
little, but it is not exactly invariant. ``mds_coordinates`` returns a per-cloud
``degenerate`` flag (relative eigen-gap < ``1e-3`` or |skew| < ``1e-3``).

Backbone: PointNet (shared per-point MLP 64-128-256 with batch norm, max pool
per cloud, MLP 256-128-classes with dropout 0.5). Input per point: the three MDS
coordinates, plus the normals expressed in the same frame when ``use_normals``.
Choices not fixed by the paper: the sign rule (third moment), the O(N) route, the
backbone widths.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor, nn

from geo3d.models.config import SHAPE_METADATA, ModelConfig, PositiveInt
from geo3d.ops.scatter import scatter


class _PointNetConfig(ModelConfig):
    # Recorded in the checkpoint's config by the shape tasks, not used by the network.
    metadata: ClassVar[tuple[str, ...]] = SHAPE_METADATA

    use_normals: bool = False
    widths: list[PositiveInt] = Field([64, 128, 256], min_length=1)  # the shared per-point MLP
    head: PositiveInt = 128
    dropout: float = Field(0.5, ge=0, lt=1)


class TinvNNConfig(_PointNetConfig):
    """TinvNN classifier: the per-point MLP on the MDS coordinates, max-pool, the head."""

    arch: ClassVar[str] = "tinvnn"

    num_classes: PositiveInt = 16


class TinvNNSegConfig(_PointNetConfig):
    """TinvNN part segmentation (ShapeNetPart style: the object category is an input)."""

    arch: ClassVar[str] = "tinvnn_seg"

    num_categories: PositiveInt = 16
    num_parts: PositiveInt = 50
    dropout: float = Field(0.3, ge=0, lt=1)


def mds_coordinates(
    pos: Tensor, batch: Tensor, num_graphs: int, normal: Tensor | None = None, tol: float = 1e-3
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Invariant coordinates ``[N, 3]`` (and normals in the same frame), and ``degenerate [B]`` flags."""
    p = pos.double()
    centre = scatter(p, batch, 0, num_graphs, "mean")
    x = p - centre[batch]
    cov = scatter(x.unsqueeze(2) * x.unsqueeze(1), batch, 0, num_graphs, "sum")  # [B, 3, 3]
    evals, evecs = torch.linalg.eigh(cov)  # ascending
    evals, evecs = evals.flip(-1), evecs.flip(-1)  # largest first
    y = torch.einsum("ni,nij->nj", x, evecs[batch])
    skew = scatter(y**3, batch, 0, num_graphs, "sum")  # [B, 3]
    sign = torch.where(skew < 0, -1.0, 1.0).to(y.dtype)
    y = y * sign[batch]
    scale = scatter(y.abs() ** 3, batch, 0, num_graphs, "sum").clamp_min(1e-300)
    gaps = (evals[:, :-1] - evals[:, 1:]) / evals[:, :1].clamp_min(1e-300)
    degenerate = (gaps < tol).any(1) | ((skew.abs() / scale) < tol).any(1)
    n_out = None
    if normal is not None:
        n_out = (torch.einsum("ni,nij->nj", normal.double(), evecs[batch]) * sign[batch]).to(pos.dtype)
    return y.to(pos.dtype), n_out, degenerate


class _InvariantPointNet(nn.Module):
    """Shared part of the TinvNN networks: config check, the per-point MLP on MDS coordinates."""

    def __init__(self, config: dict[str, Any], schema: type[ModelConfig]) -> None:
        super().__init__()
        cfg = schema.resolve(config)
        self.config = cfg
        self.use_normals = bool(cfg["use_normals"])
        layers, width = [], 6 if self.use_normals else 3
        for w in cfg["widths"]:
            layers += [nn.Linear(width, w), nn.BatchNorm1d(w), nn.ReLU()]
            width = w
        self.point_mlp = nn.Sequential(*layers)
        self.width = width

    def _head(self, width_in: int, num_out: int) -> nn.Sequential:
        cfg = self.config
        return nn.Sequential(
            nn.Linear(width_in, cfg["head"]),
            nn.BatchNorm1d(cfg["head"]),
            nn.ReLU(),
            nn.Dropout(cfg["dropout"]),
            nn.Linear(cfg["head"], num_out),
        )

    def local_features(self, data) -> tuple[Tensor, Tensor, int]:
        """Per-point features ``[N, widths[-1]]`` of the invariant coordinates, with ``batch`` and B."""
        pos = data.pos
        batch = getattr(data, "batch", None)
        if batch is None:
            batch = pos.new_zeros(len(pos), dtype=torch.long)
        num_graphs = int(data.num_graphs) if hasattr(data, "num_graphs") else 1
        normal = getattr(data, "normal", None) if self.use_normals else None
        if self.use_normals and normal is None:
            raise ValueError("this TinvNN was trained with normals: the batch needs a 'normal' [N, 3] field")
        y, n, _ = mds_coordinates(pos, batch, num_graphs, normal)
        return self.point_mlp(y if n is None else torch.cat([y, n], dim=1)), batch, num_graphs


class TinvNN(_InvariantPointNet):
    """Batch (``pos``, ``batch``, optional ``normal``) -> logits ``[B, num_classes]``, invariant under E(3)."""

    Config: ClassVar[type[ModelConfig]] = TinvNNConfig  # its config: keys, types, defaults

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config, TinvNNConfig)
        self.head = self._head(self.width, self.config["num_classes"])

    def forward(self, data) -> Tensor:
        h, batch, num_graphs = self.local_features(data)
        return self.head(scatter(h, batch, 0, num_graphs, "max"))


class TinvNNSegmentation(_InvariantPointNet):
    """Per-point part logits ``[N, num_parts]`` on TinvNN's invariant coordinates (ShapeNetPart style).

    PointNet segmentation: per-point features (the MDS coordinates, plus normals in
    the same frame when ``use_normals``) through the shared MLP; each point's last
    local feature is concatenated with the cloud's max-pooled feature and the
    object category (one-hot ``y``, as ShapeNetPart models take it), then a
    per-point MLP gives the part logits. Invariant like :class:`TinvNN`.
    """

    Config: ClassVar[type[ModelConfig]] = TinvNNSegConfig  # its config: keys, types, defaults

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config, TinvNNSegConfig)
        self.num_categories = int(self.config["num_categories"])
        self.head = self._head(2 * self.width + self.num_categories, self.config["num_parts"])

    def forward(self, data) -> Tensor:
        h, batch, num_graphs = self.local_features(data)
        pooled = scatter(h, batch, 0, num_graphs, "max")[batch]
        category = nn.functional.one_hot(data.y.reshape(-1), self.num_categories).to(h.dtype)[batch]
        return self.head(torch.cat([h, pooled, category], dim=1))
