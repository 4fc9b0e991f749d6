"""PaRot's siamese disentanglement: a patch -> an invariant feature and an equivariant frame.

Zhang et al., "PaRot: Patch-Wise Rotation-Invariant Network via Feature
Disentanglement and Pose Restoration", AAAI 2023 (code: GitHub
dingxin-zhang/PaRot, ``models/model_cls.py``, ``models/model_util.py``).

A patch is ``[M, K, 3]``: M patches of K points, each relative to its centre.
An encoder maps it to an invariant feature ``[M, D]`` and two unit direction
vectors ``[M, 2, 3]`` that should rotate with the patch. :class:`SiameseDisentangle`
trains that behaviour as the paper does: in training it feeds each patch under
two random rotations ``R1, R2``, maps the predicted directions back to the
patch's own pose (``R^T d``), and returns the losses

- direction consistency ``mse(R1^T d1, R2^T d2)`` (the code's ``get_dir_loss``,
  ``mse(d1, R1 R2^T d2)``, is the same number: rotations keep squared distances),
- orthogonality ``mean((d1_a . d1_b)^2)`` of the two directions (``get_orth_loss``),
- invariant-feature consistency ``mse(f1, f2)`` (weight 0 in the code's defaults).

Downstream it passes on view 1's invariant feature and back-rotated
directions, as the code does; at inference the patch is encoded once, as it is.

Two encoders share one interface (``forward(patches) -> (inv, dirs)``):
:class:`PointNetDisentangler` is the paper's (a PointNet whose invariance and
equivariance are learned, not exact), :class:`VNDisentangler` is built from
vector neurons and is exactly invariant/equivariant, which makes the whole
PaRot model invariant by construction (then the siamese pair is redundant and
only the orthogonality loss is computed).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geo3d.nn.patch_relation import apply_flat, mlp
from geo3d.nn.vector_neurons import VNInvariant, VNLinear, VNLinearBNLeakyReLU, VNMaxPool


def random_rotations(
    n: int, generator: torch.Generator | None = None, dtype=torch.float32, device=None
) -> Tensor:
    """``[n, 3, 3]`` rotations, uniform on SO(3) (normalised Gaussian quaternions)."""
    q = torch.randn(n, 4, generator=generator, dtype=torch.float64)
    w, x, y, z = F.normalize(q, dim=1).unbind(1)
    rot = torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=1,
    )  # fmt: skip
    return rot.reshape(n, 3, 3).to(dtype=dtype, device=device)


def patch_frame(dirs: Tensor) -> Tensor:
    """Frame rows ``[d_a, d_b, unit(d_a x d_b)]``: ``[..., 2, 3] -> [..., 3, 3]``.

    As in the reference code, ``d_b`` is not orthogonalised (the orthogonality
    loss pushes it there); the frame rotates with the directions, ``F R^T``.
    """
    da, db = dirs[..., 0, :], dirs[..., 1, :]
    return torch.stack([da, db, F.normalize(torch.linalg.cross(da, db, dim=-1), dim=-1)], dim=-2)


class PointNetDisentangler(nn.Module):
    """The paper's encoder: ``patches [M, K, 3] -> (inv [M, dim], dirs [M, 2, 3])``, equivariance learned.

    Per point a shared MLP ``3 -> 64 -> dim -> dim``, max over the patch; the
    invariant branch is two ``dim -> dim`` layers; each of the two direction
    branches is ``dim -> 64 -> 32 -> 3``, normalised to unit length.
    """

    equivariant = False

    def __init__(self, dim: int = 128) -> None:
        super().__init__()
        self.point_mlp = mlp([3, 64, dim, dim], nn.ReLU())
        self.inv = mlp([dim, dim, dim], nn.ReLU())
        self.dir_a = nn.Sequential(mlp([dim, 64, 32], nn.ReLU()), nn.Linear(32, 3, bias=False))
        self.dir_b = nn.Sequential(mlp([dim, 64, 32], nn.ReLU()), nn.Linear(32, 3, bias=False))

    def forward(self, patches: Tensor) -> tuple[Tensor, Tensor]:
        h = apply_flat(self.point_mlp, patches).max(dim=1).values  # [M, dim]
        dirs = torch.stack([self.dir_a(h), self.dir_b(h)], dim=1)  # [M, 2, 3]
        return self.inv(h), F.normalize(dirs, dim=-1)


class VNDisentangler(nn.Module):
    """A vector-neuron encoder, exactly invariant/equivariant: ``[M, K, 3] -> ([M, dim], [M, 2, 3])``.

    Each point gets three vector channels, ``[p, m, p x m]`` with ``m`` the
    patch's mean point (one channel ``p`` alone would keep every feature
    parallel to ``p``); two VN blocks, VN max-pool over the patch, a third VN
    block. Directions: a ``VNLinear`` to two channels, normalised. Invariant
    feature: the pooled channels in their own learned frame
    (:class:`VNInvariant`), flattened, through ``Linear + BN + ReLU``.
    """

    equivariant = True

    def __init__(self, dim: int = 128, channels: int = 32) -> None:
        super().__init__()
        self.point_blocks = nn.Sequential(
            VNLinearBNLeakyReLU(3, channels // 2), VNLinearBNLeakyReLU(channels // 2, channels)
        )
        self.pool = VNMaxPool(channels)
        self.patch_block = VNLinearBNLeakyReLU(channels, channels)
        self.to_dirs = VNLinear(channels, 2)
        self.invariant = VNInvariant(channels)
        self.inv = mlp([3 * channels, dim], nn.ReLU())

    def forward(self, patches: Tensor) -> tuple[Tensor, Tensor]:
        m = patches.mean(dim=1, keepdim=True).expand_as(patches)
        x = torch.stack([patches, m, torch.linalg.cross(patches, m, dim=-1)], dim=-2)  # [M, K, 3, 3]
        h = self.patch_block(self.pool(self.point_blocks(x), dim=1))  # [M, C, 3]
        inv, _ = self.invariant(h)  # [M, C, 3]
        return self.inv(inv.flatten(1)), F.normalize(self.to_dirs(h), dim=-1)


class SiameseDisentangle(nn.Module):
    """Siamese training of an encoder: ``patches [M, K, 3] -> (inv [M, D], dirs [M, 2, 3], losses)``.

    ``dirs`` are in the patch's own (input) pose. ``losses`` holds ``dir``,
    ``orth`` and ``feat`` (scalars) in training and is empty in eval mode.
    Rotations are drawn from torch's global generator (seeded by the trainer),
    like dropout.
    """

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, patches: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        if not self.training:
            inv, dirs = self.encoder(patches)
            return inv, dirs, {}
        if getattr(self.encoder, "equivariant", False):
            inv, dirs = self.encoder(patches)  # a second view would give the same answer
            return inv, dirs, {"orth": _orthogonality(dirs)}
        r1, r2 = (random_rotations(len(patches), dtype=patches.dtype, device=patches.device) for _ in "12")
        inv1, d1 = self.encoder(torch.einsum("mkj,mij->mki", patches, r1))  # p -> R p
        inv2, d2 = self.encoder(torch.einsum("mkj,mij->mki", patches, r2))
        d1_back = torch.einsum("mnj,mji->mni", d1, r1)  # d -> R^T d
        d2_back = torch.einsum("mnj,mji->mni", d2, r2)
        losses = {
            "dir": F.mse_loss(d1_back, d2_back),
            "orth": _orthogonality(d1),
            "feat": F.mse_loss(inv1, inv2),
        }
        return inv1, d1_back, losses


def _orthogonality(dirs: Tensor) -> Tensor:
    return ((dirs[:, 0] * dirs[:, 1]).sum(-1) ** 2).mean()
