"""APEN's training loss (:func:`apen_loss`): every block's vote error plus a weighted cross-entropy.

As the published code's ``loss_seg.py`` (per-cloud means, squared error by default); the model is
:class:`geo3d.models.apen.APEN`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from geo3d.ops.scatter import scatter


def apen_loss(
    out: dict[str, Any],
    centre: Tensor,
    labels: Tensor | None = None,
    batch: Tensor | None = None,
    seg_weight: float = 0.1,
    vote_loss: str = "l2",
    vote_mask: Tensor | None = None,
) -> dict[str, Tensor]:
    """APEN's training loss: every block's vote error plus weighted cross-entropy.

    ``loss = sum_blocks mean_clouds mean_points err(vote_i, centre_i) + seg_weight * CE``,
    with ``err`` the squared (``l2``, the code's config) or absolute (``l1``)
    error summed over xyz; the per-cloud mean follows the code.

    Args:
        out: :meth:`APEN.forward`'s output.
        centre: ``[N, 3]`` ground-truth centre of each point's part or instance.
        labels: ``[N]`` segmentation labels (None: no CE term).
        batch: ``[N]`` cloud of each point (None: one cloud).
        seg_weight: CE weight (0.1 in the code).
        vote_mask: ``[N]`` bool, points whose vote counts (e.g. not the floor).

    Returns:
        ``loss``, ``vote_loss``, ``seg_loss`` (scalars) and ``vote_losses [blocks]``.
    """
    if vote_loss not in ("l1", "l2"):
        raise ValueError(f"apen_loss: vote_loss must be 'l1' or 'l2', got {vote_loss!r}")
    votes = out["votes"]
    n = centre.shape[0]
    if batch is None:
        batch = torch.zeros(n, dtype=torch.long, device=centre.device)
    weight = torch.ones(n, dtype=centre.dtype, device=centre.device)
    if vote_mask is not None:
        weight = vote_mask.to(centre.dtype)
    num_graphs = int(batch.max()) + 1 if n else 1
    per_cloud = scatter(weight, batch, 0, num_graphs, "sum")
    has = per_cloud > 0
    terms = []
    for vote in votes:
        delta = vote - centre
        err = (delta**2).sum(-1) if vote_loss == "l2" else delta.abs().sum(-1)
        cloud = scatter(err * weight, batch, 0, num_graphs, "sum")[has] / per_cloud[has]
        terms.append(cloud.mean() if len(cloud) else err.sum() * 0)
    vote_losses = torch.stack(terms)
    seg = vote_losses.new_zeros(())
    if labels is not None:
        seg = nn.functional.cross_entropy(out["seg_logits"], labels.long())
    total = vote_losses.sum() + seg_weight * seg
    return {"loss": total, "vote_loss": vote_losses.sum(), "seg_loss": seg, "vote_losses": vote_losses}
