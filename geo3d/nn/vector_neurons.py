"""Vector-neuron layers: SO(3)-equivariant building blocks on lists of 3D vectors.

Deng et al., "Vector Neurons: A General Framework for SO(3)-Equivariant
Networks", ICCV 2021 (reference code: GitHub FlyingGiraffe/vnn).

Layout: a feature is ``C`` vectors per element, stored channels-then-xyz,
``[..., C, 3]``: any number of leading dims (batch, points, neighbours), then
the vector channels, then xyz. Positions ``[N, 3]`` are the ``C = 1`` case,
``pos.unsqueeze(-2)``. A rotation ``R`` acts on every vector, ``x -> x @ R.T``.

Every layer commutes with that action exactly, up to float round-off:
linear maps mix channels and never xyz; the nonlinearity, the norm and the
pooling decide through rotation-invariant inner products and norms. Invariant
features come from :class:`VNInvariant`, which expresses the features in a
learned equivariant frame. Improper rotations (reflections) commute with every
layer except ``VNInvariant(normalize_frame=True)``, whose cross product flips.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

EPS = 1e-6  # keeps divisions by vector norms finite at zero vectors (as the reference code does)


def _mix(weight: Tensor, x: Tensor) -> Tensor:
    """Channel mixing ``[O, C] x [..., C, 3] -> [..., O, 3]``."""
    return torch.matmul(weight, x)  # broadcast batched [O, C] @ [C, 3]


def _check(x: Tensor, channels: int, name: str) -> None:
    if x.dim() < 2 or x.shape[-1] != 3 or x.shape[-2] != channels:
        raise ValueError(f"{name}: expected features [..., {channels}, 3], got {tuple(x.shape)}")


class VNLinear(nn.Module):
    """Channel-mixing linear map ``[..., C_in, 3] -> [..., C_out, 3]``, no bias (a bias is not equivariant).

    Args:
        in_channels: input vector channels ``C_in``.
        out_channels: output vector channels ``C_out``.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)  # nn.Linear's default

    def forward(self, x: Tensor) -> Tensor:
        _check(x, self.in_channels, "VNLinear")
        return _mix(self.weight, x)

    def extra_repr(self) -> str:
        return f"{self.in_channels} -> {self.out_channels}"


class VNLeakyReLU(nn.Module):
    """Leaky ReLU along a learned direction: ``[..., C, 3] -> [..., C, 3]``.

    For each channel a direction ``d = W x`` is predicted (one shared direction
    when ``share_nonlinearity``); where ``<x, d> < 0`` the component of ``x``
    along ``d`` is removed, and the result is blended with ``x`` by
    ``negative_slope``:
    ``out = s x + (1 - s) (x if <x,d> >= 0 else x - <x,d>/|d|^2 d)``.

    Args:
        channels: vector channels ``C``.
        share_nonlinearity: one direction for all channels instead of one each.
        negative_slope: ``s``; 0 gives the plain vector ReLU.
    """

    def __init__(self, channels: int, share_nonlinearity: bool = False, negative_slope: float = 0.2) -> None:
        super().__init__()
        self.channels, self.negative_slope = channels, negative_slope
        self.map_to_dir = VNLinear(channels, 1 if share_nonlinearity else channels)

    def forward(self, x: Tensor) -> Tensor:
        _check(x, self.channels, "VNLeakyReLU")
        d = self.map_to_dir(x)  # [..., C or 1, 3]
        dot = (x * d).sum(-1, keepdim=True)
        # s x + (1 - s) relu(x) = x - (1 - s) min(<x,d>, 0) / |d|^2 d: one pass over the features
        # instead of a where and two scaled copies (this layer dominates VN networks' time on CPU).
        coef = dot.clamp(max=0.0) * ((1.0 - self.negative_slope) / ((d * d).sum(-1, keepdim=True) + EPS))
        return x - coef * d

    def extra_repr(self) -> str:
        return f"{self.channels}, negative_slope={self.negative_slope}"


class VNBatchNorm(nn.Module):
    """Batch norm of the vector norms: ``x -> x / |x| * BN(|x|)``, ``[..., C, 3] -> [..., C, 3]``.

    Statistics are taken per channel over every leading dim (elements of the
    batch, points, neighbours). Norms are invariant, so the rescaling is
    equivariant in training and in eval mode alike.
    """

    def __init__(self, channels: int, momentum: float = 0.1) -> None:
        super().__init__()
        self.channels = channels
        self.bn = nn.BatchNorm1d(channels, momentum=momentum)

    def forward(self, x: Tensor) -> Tensor:
        _check(x, self.channels, "VNBatchNorm")
        norm = torch.linalg.vector_norm(x, dim=-1) + EPS  # [..., C]
        scaled = self.bn(norm.reshape(-1, self.channels)).reshape(norm.shape)
        return x * (scaled / norm).unsqueeze(-1)


class VNBatchRMSNorm(nn.Module):
    """Per-channel scaling by the batch's RMS vector norm: ``x -> gamma x / sqrt(mean |x|^2 + eps)``.

    ``[..., C, 3] -> [..., C, 3]``; statistics per channel over every leading dim
    (running averages in eval mode, like batch norm). Unlike :class:`VNBatchNorm`,
    which maps every norm to ``BN(|x|)`` and so blows short vectors up to unit
    length (with gradients ``~ 1 / |x|``: offsets on flat, evenly sampled
    surfaces such as a floor are near zero), this keeps each vector's length
    relative to the others, so short vectors stay short and gradients bounded.
    """

    def __init__(self, channels: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.channels, self.momentum, self.eps = channels, momentum, eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.register_buffer("running_sq", torch.ones(channels))

    def forward(self, x: Tensor) -> Tensor:
        _check(x, self.channels, "VNBatchRMSNorm")
        if self.training:
            sq = (x * x).sum(-1).reshape(-1, self.channels).mean(0)  # [C]
            with torch.no_grad():
                self.running_sq.lerp_(sq, self.momentum)
        else:
            sq = self.running_sq
        return x * (self.weight / torch.sqrt(sq + self.eps)).unsqueeze(-1)


NORMS = {"batch": VNBatchNorm, "rms": VNBatchRMSNorm}


class VNLinearBNLeakyReLU(nn.Sequential):
    """The usual VN block, ``VNLinear -> VNBatchNorm -> VNLeakyReLU``: ``[..., C_in, 3] -> [..., C_out, 3]``.

    ``norm``: ``"batch"`` (the paper's :class:`VNBatchNorm`), ``"rms"``
    (:class:`VNBatchRMSNorm`, for inputs with near-zero vectors) or ``None`` (no norm).

    (The reference code predicts the nonlinearity's direction from the block's
    input; here it comes from the normalised output, as a plain composition of
    the three layers. Both are equivariant.)
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        share_nonlinearity: bool = False,
        negative_slope: float = 0.2,
        norm: str | None = "batch",
    ) -> None:
        if norm is not None and norm not in NORMS:
            raise ValueError(
                f"VNLinearBNLeakyReLU: norm must be one of {sorted(NORMS)} or None, got {norm!r}"
            )
        layers: list[nn.Module] = [VNLinear(in_channels, out_channels)]
        if norm is not None:
            layers.append(NORMS[norm](out_channels))
        layers.append(VNLeakyReLU(out_channels, share_nonlinearity, negative_slope))
        super().__init__(*layers)


class VNMaxPool(nn.Module):
    """Max pooling by a learned direction: per channel, the vector with the largest ``<x, W x>``.

    ``forward(x, dim)`` pools over the leading dim ``dim`` of ``x [..., C, 3]``
    (default: the last one before the channels), returning ``x`` without it.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.map_to_dir = VNLinear(channels, channels)

    def forward(self, x: Tensor, dim: int = -3) -> Tensor:
        _check(x, self.channels, "VNMaxPool")
        dim = dim % x.dim()
        if dim >= x.dim() - 2:
            raise ValueError(f"VNMaxPool: dim must be a leading dim of [..., C, 3], got {dim}")
        score = (x * self.map_to_dir(x)).sum(-1)  # [..., C], invariant
        idx = score.argmax(dim=dim, keepdim=True).unsqueeze(-1)  # [.., 1, .., C, 1]
        shape = list(x.shape)
        shape[dim] = 1
        return torch.gather(x, dim, idx.expand(shape)).squeeze(dim)


def vn_mean_pool(x: Tensor, dim: int = -3) -> Tensor:
    """Mean over the leading dim ``dim`` of ``x [..., C, 3]`` (linear, hence equivariant)."""
    if dim % x.dim() >= x.dim() - 2:
        raise ValueError(f"vn_mean_pool: dim must be a leading dim of [..., C, 3], got {dim}")
    return x.mean(dim=dim)


class VNInvariant(nn.Module):
    """Invariant features: the input expressed in a learned equivariant frame (the paper's VNStdFeature).

    Two VN blocks (``C -> C/2 -> C/4``) and a ``VNLinear`` predict three vectors
    per element, the rows of a frame ``Z [..., 3, 3]`` that rotates with the
    input (``Z(x R^T) = Z(x) R^T``). The invariant is ``x Z^T [..., C, 3]``,
    the three coordinates of every channel in that frame:
    ``(x R^T)(Z R^T)^T = x Z^T``.

    Args:
        channels: vector channels ``C`` of the input (>= 4).
        normalize_frame: predict two vectors and complete them to a proper
            orthonormal frame (Gram-Schmidt, then the cross product); otherwise
            the three predicted vectors are used as they are.
        norm: the blocks' norm (see :class:`VNLinearBNLeakyReLU`).

    Returns:
        ``(invariant [..., C, 3], frame [..., 3, 3])``.
    """

    def __init__(
        self,
        channels: int,
        normalize_frame: bool = False,
        share_nonlinearity: bool = False,
        negative_slope: float = 0.2,
        norm: str | None = "batch",
    ) -> None:
        super().__init__()
        if channels < 4:
            raise ValueError(f"VNInvariant needs at least 4 channels, got {channels}")
        self.channels, self.normalize_frame = channels, normalize_frame
        self.vn1 = VNLinearBNLeakyReLU(channels, channels // 2, share_nonlinearity, negative_slope, norm=norm)
        self.vn2 = VNLinearBNLeakyReLU(
            channels // 2, channels // 4, share_nonlinearity, negative_slope, norm=norm
        )
        self.to_frame = VNLinear(channels // 4, 2 if normalize_frame else 3)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        _check(x, self.channels, "VNInvariant")
        z = self.to_frame(self.vn2(self.vn1(x)))  # [..., 2 or 3, 3]
        if self.normalize_frame:
            u1 = F.normalize(z[..., 0, :], dim=-1, eps=EPS)
            u2 = F.normalize(z[..., 1, :] - (z[..., 1, :] * u1).sum(-1, keepdim=True) * u1, dim=-1, eps=EPS)
            z = torch.stack([u1, u2, torch.linalg.cross(u1, u2, dim=-1)], dim=-2)
        return torch.einsum("...cd,...kd->...ck", x, z), z
