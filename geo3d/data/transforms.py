"""Point-cloud augmentations on PyG ``Data`` (``pos``, optional ``normal``), seeded by a torch Generator."""

from __future__ import annotations

import torch
from torch_geometric.data import Data


def random_rotation(kind: str, generator: torch.Generator | None = None, dtype=torch.float32) -> torch.Tensor:
    """A ``[3, 3]`` rotation: ``"none"`` (identity), ``"z"`` (about the vertical axis) or ``"so3"`` (uniform)."""
    if kind == "none":
        return torch.eye(3, dtype=dtype)
    if kind == "z":
        a = torch.rand((), generator=generator, dtype=torch.float64) * 2 * torch.pi
        c, s = torch.cos(a), torch.sin(a)
        return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=dtype)
    if kind == "so3":
        q, r = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=torch.float64))
        q = q * torch.sign(torch.diagonal(r))  # Haar-uniform
        if torch.det(q) < 0:
            q[:, 0] = -q[:, 0]
        return q.to(dtype)
    raise ValueError(f"rotation must be none, z or so3, got {kind!r}")


class RandomRotate:
    """Rotate ``pos`` (and ``normal``) by a fresh random rotation of ``kind`` on every call."""

    def __init__(self, kind: str, generator: torch.Generator | None = None) -> None:
        random_rotation(kind)  # validate early
        self.kind, self.generator = kind, generator

    def __call__(self, data: Data) -> Data:
        rot = random_rotation(self.kind, self.generator, data.pos.dtype)
        data = data.clone()
        data.pos = data.pos @ rot.T
        if getattr(data, "normal", None) is not None:
            data.normal = data.normal @ rot.T
        return data


class RandomScaleJitter:
    """Anisotropic scale in ``[lo, hi]`` per axis and Gaussian jitter (``sigma``, clipped at ``clip``)."""

    def __init__(
        self, lo: float = 0.8, hi: float = 1.25, sigma: float = 0.01, clip: float = 0.05, generator=None
    ):
        self.lo, self.hi, self.sigma, self.clip, self.generator = lo, hi, sigma, clip, generator

    def __call__(self, data: Data) -> Data:
        data = data.clone()
        scale = self.lo + (self.hi - self.lo) * torch.rand(3, generator=self.generator, dtype=data.pos.dtype)
        noise = (
            torch.randn(data.pos.shape, generator=self.generator, dtype=data.pos.dtype) * self.sigma
        ).clamp(-self.clip, self.clip)
        data.pos = data.pos * scale + noise
        return data


class Compose:
    def __init__(self, transforms) -> None:
        self.transforms = list(transforms)

    def __call__(self, data: Data) -> Data:
        for t in self.transforms:
            data = t(data)
        return data
