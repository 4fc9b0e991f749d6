"""DGCNN (Wang et al., 2019), the non-invariant baseline of the point-cloud protocol.

EdgeConv blocks on a dynamic k-nearest-neighbour graph: the first on positions
(geo3d's ``knn_graph`` op), later ones in feature space (dense per-cloud
``cdist`` + ``topk``: the clouds have a fixed size, and the feature dimension is
not 3); edge features ``[x_i, x_j - x_i]`` -> MLP -> max over neighbours; the
blocks' outputs are concatenated, lifted to ``emb`` channels, max- and
mean-pooled, and classified. Not rotation invariant: trained with z or SO(3)
augmentation it shows how much a model loses under rotations it has not seen.
Sizes (paper: k=20, 64-64-128-256, emb 1024) are in the config; the defaults
are smaller for CPU training.

``input: mds`` feeds TinvNN's invariant coordinates (:func:`geo3d.models.tinvnn.mds_coordinates`)
instead of the raw positions: TinvNN with a DGCNN backbone (arch ``tinvnn_dgcnn``), invariant
to rotations, reflections, translations and permutations wherever the MDS frame is not degenerate.
The MDS map is an isometry of each cloud, so the first kNN graph is the same either way.
"""

from __future__ import annotations

import itertools
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from geo3d.models.config import SHAPE_METADATA, ModelConfig, PositiveInt
from geo3d.models.tinvnn import mds_coordinates
from geo3d.ops.point_ops import knn_graph


class DGCNNConfig(ModelConfig):
    """DGCNN: EdgeConv widths on a kNN graph rebuilt in feature space after each layer."""

    arch: ClassVar[str] = "dgcnn"
    metadata: ClassVar[tuple[str, ...]] = SHAPE_METADATA

    num_classes: PositiveInt = 16
    input: Literal["xyz", "mds"] = (
        "xyz"  # xyz: raw positions (not invariant); mds: TinvNN's invariant coordinates
    )
    k: PositiveInt = 16
    widths: list[PositiveInt] = Field([64, 64, 128], min_length=1)
    emb: PositiveInt = 256
    head: PositiveInt = 128
    dropout: float = Field(0.5, ge=0, lt=1)


class TinvNNDGCNNConfig(DGCNNConfig):
    """TinvNN's invariant coordinates through a DGCNN: ``input`` is always ``mds``."""

    arch: ClassVar[str] = "tinvnn_dgcnn"

    input: Literal["mds"] = "mds"  # use arch dgcnn for raw positions


class EdgeConv(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(2 * c_in, c_out, bias=False), nn.BatchNorm1d(c_out), nn.LeakyReLU(0.2)
        )

    def forward(self, x: Tensor, nbr: Tensor) -> Tensor:
        """x ``[B, P, C]``, nbr ``[B, P, k]`` neighbour indices within each cloud -> ``[B, P, c_out]``."""
        b, p, c = x.shape
        k = nbr.shape[-1]
        xj = torch.gather(x, 1, nbr.reshape(b, p * k, 1).expand(-1, -1, c)).reshape(b, p, k, c)
        xi = x.unsqueeze(2).expand(-1, -1, k, -1)
        h = self.mlp[0](torch.cat([xi, xj - xi], dim=-1))
        h = self.mlp[2](self.mlp[1](h.reshape(-1, h.shape[-1])).reshape(h.shape))
        return h.max(dim=2).values


class DGCNN(nn.Module):
    """Batch of equal-size clouds (``pos``, ``batch``) -> logits ``[B, num_classes]``."""

    Config: ClassVar[type[DGCNNConfig]] = DGCNNConfig

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        cfg = self.Config.resolve(config)
        self.config, self.k = cfg, int(cfg["k"])
        widths = [3, *cfg["widths"]]
        self.convs = nn.ModuleList(EdgeConv(a, b) for a, b in itertools.pairwise(widths))
        self.lift = nn.Sequential(
            nn.Linear(sum(cfg["widths"]), cfg["emb"], bias=False),
            nn.BatchNorm1d(cfg["emb"]),
            nn.LeakyReLU(0.2),
        )
        self.head = nn.Sequential(
            nn.Linear(2 * cfg["emb"], cfg["head"], bias=False),
            nn.BatchNorm1d(cfg["head"]),
            nn.LeakyReLU(0.2),
            nn.Dropout(cfg["dropout"]),
            nn.Linear(cfg["head"], cfg["num_classes"]),
        )

    def forward(self, data) -> Tensor:
        pos = data.pos
        b = int(data.num_graphs) if hasattr(data, "num_graphs") else 1
        if pos.shape[0] % b:
            raise ValueError("DGCNN needs clouds of equal size in a batch")
        p = pos.shape[0] // b
        k = min(self.k, p - 1)
        batch = (
            data.batch
            if getattr(data, "batch", None) is not None
            else pos.new_zeros(len(pos), dtype=torch.long)
        )
        if self.config["input"] == "mds":
            pos = mds_coordinates(pos, batch, b)[0]
        # First graph on positions with geo3d's op (nearest first; row 0 = neighbour).
        edges = knn_graph(pos, k, batch=batch)
        nbr = (edges[0] % p).reshape(b, p, k)
        x = pos.reshape(b, p, 3)
        outs = []
        for conv in self.convs:
            x = conv(x, nbr)
            outs.append(x)
            d = torch.cdist(x, x)
            d.diagonal(dim1=1, dim2=2).fill_(float("inf"))
            nbr = d.topk(k, dim=-1, largest=False).indices
        h = torch.cat(outs, dim=-1)
        h = self.lift[2](self.lift[1](self.lift[0](h).reshape(b * p, -1))).reshape(b, p, -1)
        return self.head(torch.cat([h.max(dim=1).values, h.mean(dim=1)], dim=-1))


class TinvNNDGCNN(DGCNN):
    """TinvNN's invariant coordinates through a DGCNN (the paper's second backbone); E(3)-invariant."""

    Config: ClassVar[type[DGCNNConfig]] = TinvNNDGCNNConfig
