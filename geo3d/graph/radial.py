"""Radial bases and cutoff envelopes for edge lengths (NequIP / MACE conventions)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class BesselBasis(nn.Module):
    r"""Bessel radial basis :math:`e_n(r) = \sqrt{2/r_c}\,\sin(n \pi r / r_c) / r`, n = 1..num_basis.

    Args:
        r_max: cutoff :math:`r_c`.
        num_basis: number of functions.
        trainable: learn the frequencies (initialised at :math:`n\pi/r_c`), as NequIP allows.

    Shapes:
        ``[E]`` lengths -> ``[E, num_basis]``. Lengths must be > 0.
    """

    def __init__(self, r_max: float, num_basis: int = 8, trainable: bool = False) -> None:
        super().__init__()
        if r_max <= 0 or num_basis < 1:
            raise ValueError(f"BesselBasis: need r_max > 0 and num_basis >= 1, got {r_max}, {num_basis}")
        self.r_max = float(r_max)
        # Frequencies are n * pi / r_max. Without training they are recomputed in the
        # input's dtype, so a float64 model is exact to float64 round-off.
        n = torch.arange(1, num_basis + 1, dtype=torch.float64)
        if trainable:
            self.freqs = nn.Parameter((n * math.pi / r_max).to(torch.get_default_dtype()))
        else:
            self.register_buffer("n", n.to(torch.get_default_dtype()))
            self.freqs = None
        self.prefactor = math.sqrt(2.0 / r_max)

    def forward(self, r: Tensor) -> Tensor:
        r = r.unsqueeze(-1)
        freqs = (
            self.freqs.to(r.dtype) if self.freqs is not None else self.n.to(r.dtype) * (math.pi / self.r_max)
        )
        return self.prefactor * torch.sin(freqs * r) / r

    def extra_repr(self) -> str:
        trainable = self.freqs is not None
        num = self.freqs.numel() if trainable else self.n.numel()
        return f"r_max={self.r_max}, num_basis={num}, trainable={trainable}"


class PolynomialCutoff(nn.Module):
    r"""Smooth polynomial envelope of NequIP (Klicpera et al.), exactly 0 for r >= r_max.

    .. math:: f(x) = 1 - \frac{(p+1)(p+2)}{2} x^p + p(p+2) x^{p+1} - \frac{p(p+1)}{2} x^{p+2},\quad x = r / r_{max}

    Its value and first two derivatives vanish at the cutoff, so energies and
    forces are smooth when atoms cross it.

    Shapes:
        ``[E]`` -> ``[E]``.
    """

    def __init__(self, r_max: float, p: int = 6) -> None:
        super().__init__()
        if r_max <= 0 or p < 2:
            raise ValueError(f"PolynomialCutoff: need r_max > 0 and p >= 2, got {r_max}, {p}")
        self.r_max = float(r_max)
        self.p = int(p)

    def forward(self, r: Tensor) -> Tensor:
        p = self.p
        x = r / self.r_max
        env = (
            1.0
            - (p + 1.0) * (p + 2.0) / 2.0 * x.pow(p)
            + p * (p + 2.0) * x.pow(p + 1)
            - p * (p + 1.0) / 2.0 * x.pow(p + 2)
        )
        return env * (x < 1.0).to(r.dtype)

    def extra_repr(self) -> str:
        return f"r_max={self.r_max}, p={self.p}"


class RadialEmbedding(nn.Module):
    """Bessel basis times the polynomial envelope: ``[E]`` lengths -> ``[E, num_basis]``."""

    def __init__(self, r_max: float, num_basis: int = 8, p: int = 6, trainable: bool = False) -> None:
        super().__init__()
        self.basis = BesselBasis(r_max, num_basis, trainable)
        self.cutoff = PolynomialCutoff(r_max, p)

    def forward(self, r: Tensor) -> Tensor:
        return self.basis(r) * self.cutoff(r).unsqueeze(-1)
