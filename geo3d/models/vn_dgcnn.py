"""VN-DGCNN (Deng et al., ICCV 2021): DGCNN built from vector neurons, rotation-invariant by construction.

Each point starts as one vector channel, its position relative to the cloud's
centroid. EdgeConv blocks act on k-nearest-neighbour graphs (the first on
positions with geo3d's ``knn_graph``, later ones dynamic, in feature space:
distances between the flattened vector features are invariant, so the graph is
too): per edge the two vector channels ``[x_j - x_i, x_i]`` go through a VN
block (linear, norm batch-norm, leaky ReLU) and are pooled over the neighbours
(VN max-pool by learned direction, or the mean). The blocks' outputs are
concatenated, lifted to ``emb`` channels, joined with their mean over the cloud,
made invariant by :class:`~geo3d.nn.vector_neurons.VNInvariant` (coordinates
in a learned per-point frame), max- and mean-pooled over points and classified
by an ordinary MLP.

Choices against the reference code (GitHub FlyingGiraffe/vnn,
``models/vn_dgcnn_cls.py``): the input is centred on its centroid, which makes
the model translation invariant too (the reference feeds raw, pre-centred
coordinates); widths are in vector channels and configurable (paper: k=20,
21-21-42-85 channels, emb 341, head 512-256; the defaults here are smaller, for
CPU training); three EdgeConv blocks by default instead of four. Inference is
invariant to rotations, translations and permutations up to float round-off
(and kNN ties, which generic clouds do not have).
"""

from __future__ import annotations

import itertools
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from geo3d.models.config import SHAPE_METADATA, ModelConfig, PositiveInt
from geo3d.nn.patch_relation import gather_neighbours
from geo3d.nn.vector_neurons import VNInvariant, VNLinearBNLeakyReLU, VNMaxPool, vn_mean_pool
from geo3d.ops.point_ops import knn_graph


class VNDGCNNConfig(ModelConfig):
    """VN-DGCNN: vector-neuron EdgeConvs (channels of 3-vectors), an invariant lift, the head."""

    arch: ClassVar[str] = "vn_dgcnn"
    metadata: ClassVar[tuple[str, ...]] = SHAPE_METADATA

    num_classes: PositiveInt = 16
    k: PositiveInt = 16
    widths: list[PositiveInt] = Field([21, 21, 42], min_length=1)  # vector channels per EdgeConv
    emb: PositiveInt = 85
    pooling: Literal["max", "mean"] = "max"  # over the k neighbours
    head: list[PositiveInt] = [256, 128]
    dropout: float = Field(0.5, ge=0, lt=1)


def dense_batch(data) -> tuple[Tensor, Tensor]:
    """``pos [B, P, 3]`` of a batch of equal-size clouds, and the flat ``batch [B*P]`` vector."""
    pos = data.pos
    batch = getattr(data, "batch", None)
    if batch is None:
        batch = pos.new_zeros(len(pos), dtype=torch.long)
    b = int(data.num_graphs) if hasattr(data, "num_graphs") else 1
    sizes = torch.bincount(batch, minlength=b)
    if b == 0 or bool((sizes != sizes[0]).any()):
        raise ValueError(f"clouds in a batch must have equal sizes, got {sizes.tolist()}")
    return pos.reshape(b, -1, 3), batch


class VNEdgeConv(nn.Module):
    """Edge features ``[x_j - x_i, x_i]`` -> VN block -> pool over neighbours: ``[B, P, C, 3] -> [B, P, C_out, 3]``."""

    def __init__(self, c_in: int, c_out: int, pooling: str) -> None:
        super().__init__()
        self.block = VNLinearBNLeakyReLU(2 * c_in, c_out)
        self.pool = VNMaxPool(c_out) if pooling == "max" else None

    def forward(self, x: Tensor, nbr: Tensor) -> Tensor:
        xj = gather_neighbours(x, nbr)  # [B, P, k, C, 3]
        xi = x.unsqueeze(2).expand_as(xj)
        h = self.block(torch.cat([xj - xi, xi], dim=-2))  # [B, P, k, C_out, 3]
        return self.pool(h, dim=2) if self.pool is not None else vn_mean_pool(h, dim=2)


class VNDGCNN(nn.Module):
    """Batch of equal-size clouds (``pos``, ``batch``) -> logits ``[B, num_classes]``, invariant under SE(3)."""

    Config: ClassVar[type[ModelConfig]] = VNDGCNNConfig  # its config: keys, types, defaults

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        cfg = VNDGCNNConfig.resolve(config)
        self.config, self.k = cfg, int(cfg["k"])
        widths = [1, *cfg["widths"]]
        self.convs = nn.ModuleList(VNEdgeConv(a, b, cfg["pooling"]) for a, b in itertools.pairwise(widths))
        emb = int(cfg["emb"])
        self.lift = VNLinearBNLeakyReLU(sum(cfg["widths"]), emb, share_nonlinearity=True)
        self.invariant = VNInvariant(2 * emb)
        layers: list[nn.Module] = []
        width = 2 * (2 * emb * 3)  # max and mean pool of the [2 emb, 3] invariants
        for w in cfg["head"]:
            layers += [nn.Linear(width, w, bias=False), nn.BatchNorm1d(w), nn.LeakyReLU(0.2)]
            layers.append(nn.Dropout(cfg["dropout"]))
            width = w
        layers.append(nn.Linear(width, cfg["num_classes"]))
        self.head = nn.Sequential(*layers)

    def forward(self, data) -> Tensor:
        pos, batch = dense_batch(data)
        b, p, _ = pos.shape
        k = min(self.k, p)
        x = (pos - pos.mean(dim=1, keepdim=True)).unsqueeze(-2)  # [B, P, 1, 3]
        # First graph on positions (geo3d's op; self included, as in DGCNN/VN-DGCNN's knn).
        edges = knn_graph(pos.reshape(-1, 3), k, batch=batch, loop=True, num_graphs=b)
        nbr = (edges[0] % p).reshape(b, p, k)
        outs = []
        for conv in self.convs:
            x = conv(x, nbr)  # [B, P, C, 3]
            outs.append(x)
            flat = x.reshape(b, p, -1)
            d = torch.cdist(flat, flat, compute_mode="donot_use_mm_for_euclid_dist")
            nbr = d.topk(k, dim=-1, largest=False).indices
        h = self.lift(torch.cat(outs, dim=-2))  # [B, P, E, 3]
        h = torch.cat([h, h.mean(dim=1, keepdim=True).expand_as(h)], dim=-2)
        inv, _ = self.invariant(h)  # [B, P, 2E, 3]
        inv = inv.reshape(b, p, -1)
        return self.head(torch.cat([inv.max(dim=1).values, inv.mean(dim=1)], dim=-1))
