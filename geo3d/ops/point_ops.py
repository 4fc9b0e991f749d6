"""Point-cloud graph ops: k-nearest-neighbour graphs and farthest-point sampling, batched.

Same conventions and backend rules as the radius graph (``reference`` brute
force, ``cpu``, ``cuda`` for CUDA tensors; ``cpu`` and ``cuda`` return identical
indices in identical order; ``$GEO3D_POINT_OPS_BACKEND`` or ``backend=`` forces one):
``edge_index[0]`` is the neighbour j, ``edge_index[1]`` the centre i; batches
are PyG's sorted ``batch`` vectors. Nothing is silently truncated: a graph with
fewer than ``k + 1`` points gives each of its points every other point.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from geo3d.ops._native import native, select_backend
from geo3d.ops._native import ops as native_ops

ENV_VAR = "GEO3D_POINT_OPS_BACKEND"


def _ptr(pos: Tensor, batch: Tensor | None, num_graphs: int | None, op: str) -> Tensor:
    if not isinstance(pos, Tensor) or pos.dim() != 2 or pos.shape[1] != 3:
        raise ValueError(f"{op}: pos must be a [N, 3] tensor, got {tuple(getattr(pos, 'shape', ()))}")
    if pos.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"{op}: pos must be float32 or float64, got {pos.dtype}")
    n = pos.shape[0]
    if n and not bool(torch.isfinite(pos).all()):
        bad = int((~torch.isfinite(pos)).any(dim=1).nonzero()[0])
        raise ValueError(f"{op}: pos has NaN or inf values (first at point {bad})")
    if batch is None:
        return torch.tensor([0, n], dtype=torch.long)
    if batch.shape != (n,):
        raise ValueError(f"{op}: batch must be [N]=[{n}], got {tuple(batch.shape)}")
    b = batch.detach().to("cpu", torch.long)
    if n and (int(b.min()) < 0 or bool((b[1:] < b[:-1]).any())):
        raise ValueError(f"{op}: batch must be non-negative and sorted (as PyG's Batch makes it)")
    nb = max(int(b.max()) + 1 if n else 0, num_graphs or 0)
    return torch.cat([torch.zeros(1, dtype=torch.long), torch.bincount(b, minlength=nb).cumsum(0)])


def knn_graph(
    pos: Tensor,
    k: int,
    batch: Tensor | None = None,
    loop: bool = False,
    backend: str | None = None,
    num_graphs: int | None = None,
) -> Tensor:
    """The ``k`` nearest points of every point, within its own graph.

    Args:
        pos: ``[N, 3]`` float32/float64.
        k: neighbours per point (>= 1); a graph with fewer points gives all of them.
        batch: ``[N]`` sorted graph index, or None for one graph.
        loop: count each point as its own neighbour (at distance 0).

    Returns:
        ``edge_index [2, E]`` int64, row 0 the neighbour j, row 1 the centre i;
        edges grouped by centre (ascending), each centre's nearest first (ties: lower index).

    Raises:
        ValueError: NaN/inf positions, ``k < 1``, or a malformed ``batch``.
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"knn_graph: k must be a positive integer, got {k!r}")
    ptr = _ptr(pos, batch, num_graphs, "knn_graph")
    name = select_backend(pos.device, backend, ENV_VAR)
    if name == "reference":
        return knn_graph_reference(pos, ptr, k, loop)
    return native_ops(name).knn_graph(pos.detach(), ptr, k, bool(loop))


def knn_graph_reference(pos: Tensor, ptr: Tensor, k: int, loop: bool) -> Tensor:
    """Brute force per graph: all squared distances in float64, sorted by (distance, index)."""
    src, dst = [], []
    for b in range(len(ptr) - 1):
        lo, hi = int(ptr[b]), int(ptr[b + 1])
        p = pos[lo:hi].detach().double()
        n = hi - lo
        m = min(k, n if loop else n - 1)
        if m <= 0:
            continue
        d = ((p[None, :, :] - p[:, None, :]) ** 2).sum(-1)  # [centre, neighbour]
        if not loop:
            d.fill_diagonal_(math.inf)
        # Stable sort by distance over ascending indices = order by (distance, index).
        order = torch.sort(d, dim=1, stable=True).indices[:, :m]
        src.append(order.reshape(-1) + lo)
        dst.append(torch.arange(lo, hi, device=pos.device).repeat_interleave(m))
    if not src:
        return torch.empty(2, 0, dtype=torch.long, device=pos.device)
    return torch.stack([torch.cat(src), torch.cat(dst)]).to(pos.device)


def fps(
    pos: Tensor,
    batch: Tensor | None = None,
    ratio: float = 0.5,
    random_start: bool = False,
    generator: torch.Generator | None = None,
    backend: str | None = None,
    num_graphs: int | None = None,
    *,
    num: int | Tensor | None = None,
    start: Tensor | None = None,
) -> Tensor:
    """Farthest-point sampling: ``ceil(ratio * n_b)`` points of each graph b (or ``num``).

    Starts at each graph's first point, at ``start[b]`` when given, or at a random
    one with ``random_start`` (drawn from ``generator``); then repeatedly takes the
    point farthest from those already taken (ties: the lower index).

    Args:
        num: points per graph, an int or ``[B]`` int64 (replaces ``ratio``).
        start: ``[B]`` int64 index of each graph's first pick, counted within the graph.

    Returns:
        ``[sum_b m_b]`` int64 indices into ``pos``, graph by graph, in selection order.

    Raises:
        ValueError: NaN/inf positions, ``ratio`` outside (0, 1], ``num`` above a graph's size,
            ``start`` outside its graph, or a malformed ``batch``.
    """
    if not (0.0 < ratio <= 1.0):
        raise ValueError(f"fps: ratio must be in (0, 1], got {ratio!r}")
    ptr = _ptr(pos, batch, num_graphs, "fps")
    sizes = ptr[1:] - ptr[:-1]
    if num is None:
        counts = torch.ceil(sizes.double() * ratio).long().clamp(max=sizes)
    else:
        counts = torch.as_tensor(num, dtype=torch.long).cpu().expand(len(sizes)).contiguous()
        if bool((counts < 0).any() | (counts > sizes).any()):
            raise ValueError(f"fps: num={counts.tolist()} points from graphs of {sizes.tolist()}")
    if start is not None:
        if random_start:
            raise ValueError("fps: give start or random_start, not both")
        start = start.detach().long().cpu().reshape(-1)
        if start.numel() != len(sizes) or bool(((start < 0) | (start >= sizes.clamp(min=1))).any()):
            raise ValueError(f"fps: start {start.tolist()} outside graphs of {sizes.tolist()} points")
    elif random_start:
        start = (torch.rand(len(sizes), generator=generator, dtype=torch.float64) * sizes).long()
        start = torch.minimum(start, (sizes - 1).clamp(min=0))
    else:
        start = torch.zeros(len(sizes), dtype=torch.long)
    name = select_backend(pos.device, backend, ENV_VAR)
    if name == "reference":
        return fps_reference(pos, ptr, counts, start)
    return native_ops(name).fps(pos.detach(), ptr, counts, start)


def fps_reference(pos: Tensor, ptr: Tensor, counts: Tensor, start: Tensor) -> Tensor:
    """The textbook loop in float64, graph by graph."""
    out = []
    for b in range(len(ptr) - 1):
        lo, hi, m = int(ptr[b]), int(ptr[b + 1]), int(counts[b])
        if m == 0:
            continue
        p = pos[lo:hi].detach().double()
        chosen = [int(start[b])]
        dist = torch.full((hi - lo,), math.inf, dtype=torch.float64, device=p.device)
        for _ in range(m - 1):
            dist = torch.minimum(dist, ((p - p[chosen[-1]]) ** 2).sum(-1))
            chosen.append(int(torch.argmax(dist)))  # argmax returns the first maximum
        out.append(torch.tensor(chosen, dtype=torch.long) + lo)
    if not out:
        return torch.empty(0, dtype=torch.long, device=pos.device)
    return torch.cat(out).to(pos.device)


if native() is not None:

    @torch.library.register_fake("geo3d::knn_graph")
    def _knn_graph_fake(pos, ptr, k, loop):
        return pos.new_empty((2, torch.library.get_ctx().new_dynamic_size()), dtype=torch.long)

    @torch.library.register_fake("geo3d::fps")
    def _fps_fake(pos, ptr, counts, start):
        return pos.new_empty((torch.library.get_ctx().new_dynamic_size(),), dtype=torch.long)
