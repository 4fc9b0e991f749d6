"""Noise schedules on discrete time t = 0 (clean) .. T (pure prior)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def cosine_alpha_bar(timesteps: int, nu: float = 1.0, s: float = 0.008, min_step: float = 1e-3) -> Tensor:
    r"""Clipped cosine schedule :math:`\bar\alpha_t`, t = 0..T, float64 ``[T + 1]``.

    :math:`f(t) = \cos^2\big(\tfrac{\pi}{2}\,\tfrac{(t/T)^{\nu} + s}{1 + s}\big)`,
    :math:`\bar\alpha_t = \prod_{k \le t} \alpha_k` with per-step ratios
    :math:`\alpha_k = f(k)/f(k-1)` clipped to ``[min_step, 1]`` (EDM's clipping,
    which keeps the last steps from collapsing to exactly zero). ``nu = 1`` is
    the cosine schedule of Nichol & Dhariwal; ``nu != 1`` the adaptive,
    per-modality schedule of MiDi/EQGAT-diff (``nu > 1`` keeps a modality clean longer).
    """
    if timesteps < 1:
        raise ValueError(f"timesteps must be >= 1, got {timesteps}")
    t = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos(0.5 * math.pi * (t.pow(nu) + s) / (1 + s)) ** 2
    ratios = (f[1:] / f[:-1]).clamp(min_step, 1.0)
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(ratios, 0)])


def snr_weight(alpha_bar: Tensor, low: float = 0.05, high: float = 1.5) -> Tensor:
    """EQGAT-diff's loss weighting ``clip(SNR(t), low, high)``, ``SNR = abar / (1 - abar)``."""
    return (alpha_bar / (1 - alpha_bar).clamp_min(1e-12)).clamp(low, high)


def sample_timesteps(
    num: int,
    timesteps: int,
    beta: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Training times t in 1..T, int64 ``[num]``: the noise level t/T drawn from Beta(1, ``beta``).

    ``beta = 1`` is the uniform draw of DDPM and EQGAT-diff (the same random stream as
    ``torch.randint``, so old runs reproduce); ``beta > 1`` spends more of training near the
    clean end (density ``beta (1 - s)^(beta - 1)``; ``beta = 2`` is SemlaFlow's Beta(2, 1)
    time draw in the flow convention), where the last sampling steps fix bond lengths.
    Drawn by inverting the CDF ``1 - (1 - s)^beta`` so that ``generator`` is honoured.
    """
    if beta <= 0:
        raise ValueError(f"timestep beta must be > 0, got {beta}")
    if beta == 1.0:
        return torch.randint(1, timesteps + 1, (num,), device=device, generator=generator)
    u = torch.rand(num, device=device, generator=generator, dtype=torch.float64)
    s = 1 - (1 - u).pow(1.0 / beta)
    return (s * timesteps).ceil().long().clamp_(1, timesteps)
