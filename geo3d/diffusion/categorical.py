r"""Categorical (D3PM) diffusion with a marginal prior.

Forward: :math:`q(x_t \mid x_0) = \bar\alpha_t x_0 + (1 - \bar\alpha_t) m`, with
``m`` the training set's marginal distribution of the variable (atom types,
charges or bond types). A reverse step from t to any earlier s < t uses
:math:`\alpha_{t|s} = \bar\alpha_t / \bar\alpha_s`, so one formula serves the
500-step ancestral sampler and strided (fewer-step) samplers.
"""

from __future__ import annotations

import torch
from torch import Tensor


def sample_categorical(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One draw per row of ``[M, K]`` probabilities -> ``[M]`` indices."""
    if probs.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=probs.device)
    return torch.multinomial(probs.clamp_min(0), 1, generator=generator).squeeze(-1)


def noised_probs(x0: Tensor, alpha_bar: Tensor, prior: Tensor) -> Tensor:
    """``q(x_t | x_0)``: ``x0 [M]`` class indices, ``alpha_bar [M]`` -> ``[M, K]``."""
    k = prior.shape[0]
    onehot = torch.nn.functional.one_hot(x0, k).to(prior.dtype)
    a = alpha_bar.to(prior.dtype).unsqueeze(-1)
    return a * onehot + (1 - a) * prior


def posterior_probs(
    x_t: Tensor, p_x0: Tensor, alpha_bar_t: Tensor, alpha_bar_s: Tensor, prior: Tensor
) -> Tensor:
    r"""``p(x_s | x_t) = sum_k q(x_s | x_t, x_0 = k) p(x_0 = k)`` for s < t.

    Args:
        x_t: ``[M]`` current classes.
        p_x0: ``[M, K]`` predicted distribution of the clean class.
        alpha_bar_t, alpha_bar_s: ``[M]`` (or scalars) schedule values at t and s.
        prior: ``[K]`` marginal prior ``m``.

    Returns:
        ``[M, K]`` probabilities of ``x_s``.
    """
    k = prior.shape[0]
    dtype = p_x0.dtype
    prior = prior.to(dtype)
    a_t = torch.as_tensor(alpha_bar_t, dtype=dtype, device=p_x0.device).expand(x_t.shape[0]).unsqueeze(-1)
    a_s = torch.as_tensor(alpha_bar_s, dtype=dtype, device=p_x0.device).expand(x_t.shape[0]).unsqueeze(-1)
    a_ts = a_t / a_s  # alpha_{t|s}
    onehot_t = torch.nn.functional.one_hot(x_t, k).to(dtype)
    # q(x_t | x_s) as a function of x_s: [M, K(x_s)]
    left = a_ts * onehot_t + (1 - a_ts) * prior[x_t].unsqueeze(-1)
    # q(x_s | x_0 = k): [M, K(x0), K(x_s)]
    eye = torch.eye(k, dtype=dtype, device=p_x0.device)
    right = a_s.unsqueeze(-1) * eye + (1 - a_s.unsqueeze(-1)) * prior
    joint = left.unsqueeze(1) * right  # [M, K(x0), K(x_s)]
    joint = joint / joint.sum(-1, keepdim=True).clamp_min(1e-30)
    return (p_x0.unsqueeze(-1) * joint).sum(1)
