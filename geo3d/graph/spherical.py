"""Real spherical harmonics of edge vectors, through e3nn (its conventions, not re-derived)."""

from __future__ import annotations

from e3nn import o3
from torch import Tensor, nn


class SphericalHarmonics(nn.Module):
    """e3nn's real spherical harmonics ``Y^0..Y^lmax`` of normalised edge vectors.

    Args:
        lmax: highest degree.
        normalization: ``component`` (e3nn's default, ``|Y^l|^2 = 2l + 1``),
            ``norm`` or ``integral``.

    Shapes:
        ``[E, 3]`` -> ``[E, (lmax + 1)^2]`` with irreps ``1x0e + 1x1o + 1x2e + ...``.
    """

    def __init__(self, lmax: int, normalization: str = "component") -> None:
        super().__init__()
        self.irreps_out = o3.Irreps.spherical_harmonics(lmax)
        self.sh = o3.SphericalHarmonics(self.irreps_out, normalize=True, normalization=normalization)

    def forward(self, vec: Tensor) -> Tensor:
        return self.sh(vec)
