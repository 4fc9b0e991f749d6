"""APEN's partitions of a point cloud: seeding, EM of an isotropic Gaussian mixture, hard assignment.

Centres live in per-cloud slots ``mu [B, K, 3]`` with ``mask [B, K]``; all in
float64. Layers of :class:`geo3d.models.apen.APEN` (each block re-partitions its
input by EM on the previous block's votes), kept apart from the network.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from geo3d.ops.hashing import keyed_uniform
from geo3d.ops.point_ops import knn_graph
from geo3d.ops.scatter import scatter


def compact_parts(batch: Tensor, slot: Tensor, num_slots: int) -> tuple[Tensor, Tensor]:
    """Consecutive part ids ``[N]`` (grouped by cloud) and the cloud of each part ``[P]``."""
    key = batch * num_slots + slot
    uniq, part = torch.unique(key, sorted=True, return_inverse=True)
    return part, uniq // num_slots


def _sq_dist(y: Tensor, batch: Tensor, mu: Tensor) -> Tensor:
    """``[N, K]`` squared distance of every point to its own cloud's K centres."""
    return ((y[:, None, :] - mu[batch]) ** 2).sum(-1)


def _cloud_argmax(value: Tensor, batch: Tensor, num_graphs: int) -> tuple[Tensor, Tensor]:
    """Per cloud: the largest value ``[B]`` (0 for an empty cloud) and the first index holding it."""
    best = scatter(value, batch, 0, num_graphs, "max")
    idx = torch.arange(value.shape[0], device=value.device)
    first = scatter(torch.where(value == best[batch], idx, value.shape[0]), batch, 0, num_graphs, "min")
    return best, first


def _add_centre(mu: Tensor, mask: Tensor, ok: Tensor, point: Tensor) -> None:
    """In place: ``point [B, 3]`` into the first free slot of each cloud where ``ok``."""
    clouds = ok.nonzero()[:, 0]
    slot = mask.sum(1)[clouds]
    mu[clouds, slot] = point[clouds]
    mask[clouds, slot] = True


def farthest_point_fill(
    y: Tensor, batch: Tensor, mu: Tensor, mask: Tensor, target: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Farthest-point seeds added to each cloud's centres until it has ``target`` of them.

    Continues from the centres already there; a cloud without any starts at its
    point farthest from its centroid (so the picks do not depend on the order of
    the points). Stops early in a cloud whose points all sit on a centre.

    Returns:
        new ``(mu [B, K, 3], mask [B, K])`` and ``idx [B, K]``: the point each
        slot filled here came from, -1 elsewhere.
    """
    num_graphs = mask.shape[0]
    mu, mask = mu.clone(), mask.clone()
    idx = torch.full(mask.shape, -1, dtype=torch.long, device=y.device)
    sizes = torch.bincount(batch, minlength=num_graphs)
    d = _sq_dist(y, batch, mu).masked_fill(~mask[batch], math.inf).amin(1)
    has = mask.any(1)
    if not bool(has.all()):  # until its first pick, a cloud ranks its points by distance to its centroid
        centroid = scatter(y, batch, 0, num_graphs, "mean")
        d = torch.where(has[batch], d, ((y - centroid[batch]) ** 2).sum(-1))
    for _ in range(target):
        count = mask.sum(1)
        best, first = _cloud_argmax(d, batch, num_graphs)
        empty = count == 0
        ok = (count < target) & ((best > 0) | (empty & (sizes > 0)))
        if not bool(ok.any()):
            break
        first = first.clamp(max=max(len(y) - 1, 0))
        clouds = ok.nonzero()[:, 0]
        idx[clouds, count[clouds]] = first[clouds]
        _add_centre(mu, mask, ok, y[first])
        dn = ((y - y[first][batch]) ** 2).sum(-1)
        d = torch.where(ok[batch], torch.where(empty[batch], dn, torch.minimum(d, dn)), d)
    return mu, mask, idx


def random_fill(
    y: Tensor,
    batch: Tensor,
    mu: Tensor,
    mask: Tensor,
    num: int,
    min_dist: float,
    generator: torch.Generator | None = None,
    priority: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Up to ``num`` random points per cloud added as centres, each farther than ``min_dist`` from all.

    Each pick is the point of highest priority among those far enough: fresh
    uniform draws from ``generator`` per pick, or the fixed ``priority [N]`` in
    ``(0, 1]`` (a function of the points themselves, e.g.
    :func:`geo3d.apps.detect.point_priority`, so the picks follow the points under a
    rotation or a reordering of the scan).
    """
    num_graphs, slots = mask.shape
    mu, mask = mu.clone(), mask.clone()
    d = _sq_dist(y, batch, mu).masked_fill(~mask[batch], math.inf).amin(1)
    if priority is not None and (
        priority.shape != (len(y),) or not bool(((priority > 0) & (priority <= 1)).all())
    ):
        raise ValueError(f"apen: point_priority must be [N]=[{len(y)}] values in (0, 1]")
    for _ in range(num):
        if priority is None:
            prio = 1.0 - torch.rand(len(y), generator=generator, dtype=y.dtype, device=y.device)  # (0, 1]
        else:
            prio = priority.to(y)
        prio = prio.masked_fill(d <= min_dist**2, -1.0)
        best, first = _cloud_argmax(prio, batch, num_graphs)
        ok = (best > 0) & (mask.sum(1) < slots)
        if not bool(ok.any()):
            break
        new = y[first.clamp(max=max(len(y) - 1, 0))]
        _add_centre(mu, mask, ok, new)
        d = torch.where(ok[batch], torch.minimum(d, ((y - new[batch]) ** 2).sum(-1)), d)
    return mu, mask


def part_centre_seeds(
    y: Tensor, part: Tensor, part_batch: Tensor, num_graphs: int, slots: int
) -> tuple[Tensor, Tensor]:
    """Slots ``mu [B, K, 3]``, ``mask [B, K]`` holding the mean of ``y`` over each part."""
    num_parts = part_batch.shape[0]
    centre = scatter(y, part, 0, num_parts, "mean")
    ids = torch.arange(num_parts, device=y.device)
    first = scatter(ids, part_batch, 0, num_graphs, "min")
    slot = ids - first[part_batch]
    mu = y.new_zeros(num_graphs, slots, 3)
    mask = torch.zeros(num_graphs, slots, dtype=torch.bool, device=y.device)
    mu[part_batch, slot] = centre
    mask[part_batch, slot] = True
    return mu, mask


def log_joint(y: Tensor, batch: Tensor, mu: Tensor, pi: Tensor, mask: Tensor, var: float) -> Tensor:
    """``[N, K]`` ``log pi_k + log N(y; mu_k, var I)`` up to a constant; ``-inf`` for empty slots."""
    log_pi = pi.clamp_min(1e-300).log().masked_fill(~mask, -math.inf)
    return -0.5 * _sq_dist(y, batch, mu) / var + log_pi[batch]


def merge_close_centres(
    mu: Tensor, pi: Tensor, mask: Tensor, var: float, thr: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Merge, closest pair first, centres of a cloud with ``|mu_k - mu_l| / sqrt(var) < thr``.

    The merged centre is the ``pi``-weighted mean and takes both weights.
    """
    mu, pi, mask = mu.clone(), pi.clone(), mask.clone()
    slots = mask.shape[1]
    off_diag = ~torch.eye(slots, dtype=torch.bool, device=mu.device)
    for _ in range(slots):
        d2 = ((mu[:, :, None] - mu[:, None]) ** 2).sum(-1) / var
        valid = mask[:, :, None] & mask[:, None, :] & off_diag
        low, flat = d2.masked_fill(~valid, math.inf).flatten(1).min(1)
        todo = (low < thr**2).nonzero()[:, 0]
        if len(todo) == 0:
            break
        keep, drop = flat[todo] // slots, flat[todo] % slots
        wk, wd = pi[todo, keep], pi[todo, drop]
        a = torch.where(wk + wd > 0, wk / (wk + wd).clamp_min(1e-300), torch.full_like(wk, 0.5))
        mu[todo, keep] = a[:, None] * mu[todo, keep] + (1 - a)[:, None] * mu[todo, drop]
        pi[todo, keep], pi[todo, drop] = wk + wd, 0.0
        mask[todo, drop] = False
    return mu, pi, mask


def gmm_em(
    y: Tensor,
    batch: Tensor,
    mu: Tensor,
    pi: Tensor,
    mask: Tensor,
    var: float,
    iters: int,
    merge_thr: float,
    prune_thr: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """``iters`` EM steps of an isotropic, fixed-variance Gaussian mixture, cloud by cloud.

    As in the APEN code: close centres are merged after step ``iters // 2`` and
    parts with ``pi <= prune_thr`` dropped after step ``iters // 2 + 4``.

    Args:
        y: ``[N, 3]`` points (votes), float64.
        batch: ``[N]`` cloud of each point.
        mu, pi, mask: ``[B, K, 3]``, ``[B, K]``, ``[B, K]`` initial centres, weights, used slots.

    Returns:
        ``(mu, pi, mask)`` after the last step.
    """
    num_graphs = mask.shape[0]
    sizes = torch.bincount(batch, minlength=num_graphs).to(y.dtype).clamp_min(1.0)
    merge_at, prune_at = iters // 2, min(iters, iters // 2 + 4)
    for step in range(1, iters + 1):
        r = torch.softmax(log_joint(y, batch, mu, pi, mask, var), dim=1)  # [N, K]
        nk = scatter(r, batch, 0, num_graphs, "sum")  # [B, K]
        sy = scatter(r[:, :, None] * y[:, None, :], batch, 0, num_graphs, "sum")
        mu = torch.where((nk > 0)[..., None], sy / nk.clamp_min(1e-300)[..., None], mu)
        pi = nk / sizes[:, None]
        if step == merge_at:
            mu, pi, mask = merge_close_centres(mu, pi, mask, var, merge_thr)
        if step == prune_at:
            mask = mask & (pi > prune_thr)
            pi = pi * mask
    return mu, pi, mask


def assign_parts(
    y: Tensor,
    batch: Tensor,
    mu: Tensor,
    pi: Tensor,
    mask: Tensor,
    var: float,
    sample: bool = False,
    generator: torch.Generator | None = None,
    noise_key: Tensor | None = None,
    salt: int = 0,
) -> Tensor:
    """Hard assignment ``[N]`` (slot per point): the posterior's argmax, or a Gumbel-max sample of it.

    The sample's uniforms come from ``generator`` in point order or, with ``noise_key [N]`` (int64,
    e.g. from ``point_priority``), from :func:`~geo3d.ops.hashing.keyed_uniform` of each point's key
    and ``salt``: then a reordered cloud gets the same assignment, point for point.
    """
    lj = log_joint(y, batch, mu, pi, mask, var)
    if sample:
        if noise_key is None:
            u = torch.rand(lj.shape, generator=generator, dtype=lj.dtype, device=lj.device)
        else:
            u = keyed_uniform(noise_key, salt, lj.shape[1]).to(lj)
        lj = lj - torch.log(-torch.log(u.clamp(1e-300, 1.0 - 1e-16)))
    return lj.argmax(1)


def knn_in_parts(pos: Tensor, part: Tensor, num_parts: int, k: int) -> Tensor:
    """``[N, k]`` indices of each point's k nearest points of its own part, itself first.

    A part with fewer than k points pads the list with the point itself.
    """
    n = pos.shape[0]
    order = torch.argsort(part, stable=True)
    edges = knn_graph(pos[order].detach(), k, batch=part[order], loop=True, num_graphs=num_parts)
    src, dst = edges[0], edges[1]  # grouped by centre (ascending), nearest first
    deg = torch.bincount(dst, minlength=n)
    rank = torch.arange(len(dst), device=pos.device) - (deg.cumsum(0) - deg)[dst]
    nbr_sorted = torch.arange(n, device=pos.device)[:, None].repeat(1, k)
    nbr_sorted[dst, rank] = src
    nbr = torch.empty_like(nbr_sorted)
    nbr[order] = order[nbr_sorted]
    return nbr
