"""PaRot's pose restoration: rotation-invariant relation codes between patch frames, and intra-scale aggregation.

The disentangled patch features are invariant and so have lost each patch's
pose. PaRot restores the *relative* pose with a 16-number code built only from
frames ``F`` (rows = the patch's directions, rotating as ``F R^T``) and
positions, so it is invariant too: ``(F_j R^T)(F_i R^T)^T = F_j F_i^T`` and
``(F R^T)(R u) = F u``.

- Between neighbouring patches i <- j (``intra_relation``, the code's
  ``get_graph_feature_three_dir``): ``F_j F_i^T`` (9), ``F_i u`` (3), ``F_j u``
  (3), ``|c_j - c_i|`` (1), with ``u`` the unit vector from centre i to centre j.
- Between a centre's local and global patch (``inter_relation``, the code's
  classifier input): ``F_l F_g^T`` (9), ``|c|`` (1), ``F_l u`` (3), ``F_g u``
  (3), with ``c`` the centre relative to the cloud's centroid and ``u = c/|c|``.

Shapes: ``B`` clouds, ``S`` patch centres, ``k`` neighbours per centre.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

RELATION_DIM = 16


def gather_neighbours(x: Tensor, nbr: Tensor) -> Tensor:
    """``x [B, P, ...]`` at ``nbr [B, Q, k]`` (indices into P) -> ``[B, Q, k, ...]``."""
    b, q, k = nbr.shape
    idx = nbr.reshape(b, q * k, *([1] * (x.dim() - 2))).expand(b, q * k, *x.shape[2:])
    return torch.gather(x, 1, idx).reshape(b, q, k, *x.shape[2:])


def nearest(query: Tensor, points: Tensor, k: int) -> Tensor:
    """Indices ``[B, Q, k]`` of the ``k`` nearest ``points [B, P, 3]`` of each ``query [B, Q, 3]``.

    Distances are computed directly, not through the Gram-matrix shortcut,
    whose cancellation error would make neighbour choice depend on the pose.
    """
    d = torch.cdist(query, points, compute_mode="donot_use_mm_for_euclid_dist")
    return d.topk(k, dim=-1, largest=False).indices


def intra_relation(frames: Tensor, centres: Tensor, nbr: Tensor) -> Tensor:
    """Relation codes ``[B, S, k, 16]`` of every centre i with its neighbours j = ``nbr[b, i]``.

    Args:
        frames: ``[B, S, 3, 3]`` patch frames (rows).
        centres: ``[B, S, 3]`` patch centres.
        nbr: ``[B, S, k]`` neighbour indices into S.
    """
    fi = frames.unsqueeze(2)  # [B, S, 1, 3, 3]
    fj = gather_neighbours(frames, nbr)  # [B, S, k, 3, 3]
    rel = gather_neighbours(centres, nbr) - centres.unsqueeze(2)  # [B, S, k, 3]
    u = F.normalize(rel, dim=-1).unsqueeze(-1)  # [B, S, k, 3, 1]
    rji = (fj @ fi.transpose(-1, -2)).flatten(-2)  # [B, S, k, 9]
    return torch.cat(
        [rji, (fi @ u).squeeze(-1), (fj @ u).squeeze(-1), rel.norm(dim=-1, keepdim=True)], dim=-1
    )


def inter_relation(local_frames: Tensor, global_frames: Tensor, centres: Tensor) -> Tensor:
    """Relation codes ``[B, S, 16]`` between each centre's local and global patch frames ``[B, S, 3, 3]``.

    ``centres [B, S, 3]`` must be relative to the cloud's centroid (that is what
    makes the code translation invariant).
    """
    u = F.normalize(centres, dim=-1).unsqueeze(-1)  # [B, S, 3, 1]
    r = (local_frames @ global_frames.transpose(-1, -2)).flatten(-2)  # [B, S, 9]
    return torch.cat(
        [
            r,
            centres.norm(dim=-1, keepdim=True),
            (local_frames @ u).squeeze(-1),
            (global_frames @ u).squeeze(-1),
        ],
        dim=-1,
    )


def mlp(widths: list[int], activation: nn.Module) -> nn.Sequential:
    """``Linear(bias=False) -> BatchNorm1d -> activation`` per step; apply with :func:`apply_flat`."""
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b, bias=False), nn.BatchNorm1d(b), activation]
    return nn.Sequential(*layers)


def apply_flat(module: nn.Module, x: Tensor) -> Tensor:
    """Apply a per-row module (BatchNorm1d inside) to ``x [..., C]``."""
    return module(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], -1)


class IntraPatchAggregation(nn.Module):
    """Edge convolution over neighbouring patches, guided by their relation code.

    Per edge i <- j: ``[f_j, f_j - f_i, embed(code_ij)]`` -> MLP -> max over j.
    ``forward(feat [B, S, C], code [B, S, k, 16], nbr [B, S, k]) -> [B, S, widths[-1]]``.

    Args:
        in_channels: ``C``, the invariant patch feature size.
        widths: the edge MLP (the paper: 128, 128, 128).
        pose_dim: the relation code's embedding (the paper: 32).
    """

    def __init__(self, in_channels: int, widths: list[int], pose_dim: int) -> None:
        super().__init__()
        self.embed = mlp([RELATION_DIM, pose_dim], nn.ReLU())
        self.edge_mlp = mlp([2 * in_channels + pose_dim, *widths], nn.ReLU())

    def forward(self, feat: Tensor, code: Tensor, nbr: Tensor) -> Tensor:
        fj = gather_neighbours(feat, nbr)  # [B, S, k, C]
        fi = feat.unsqueeze(2).expand_as(fj)
        h = torch.cat([fj, fj - fi, apply_flat(self.embed, code)], dim=-1)
        return apply_flat(self.edge_mlp, h).max(dim=2).values
