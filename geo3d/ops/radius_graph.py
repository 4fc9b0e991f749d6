"""Radius graph: every pair (j, i) closer than ``r``, periodic or not, batched.

Contract (DESIGN.md): ``edge_index[0]`` is the neighbour j (message sender),
``edge_index[1]`` the centre i (receiver), and the integer ``shifts`` follow
ASE's convention ``vec = pos[j] - pos[i] + shifts @ cell``. Edges come sorted
by centre i. Periodic axes may have cutoffs larger than the cell: every image
within ``r`` is listed. Points outside a periodic cell are fine (they are
wrapped internally and the shifts refer to the positions as given).
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

from geo3d.ops._native import native, select_backend
from geo3d.ops._native import ops as native_ops

ENV_VAR = "GEO3D_RADIUS_GRAPH_BACKEND"
# Bins per cutoff length in the cell list; 2 (bins of r/2) checks ~40% fewer
# pairs than 1. Measured with benchmarks/radius_graph.py on one thread: 2 is
# 20-27% faster than 1 on fcc Cu (5 Å, 500 to 7k atoms, even at 100k), 1 is
# 10-25% faster than 2 on random points with ~30 neighbours; 3 is slower than
# 2 on both.
BINS_PER_CUTOFF = 2


def radius_graph(
    pos: Tensor,
    r: float,
    batch: Tensor | None = None,
    cell: Tensor | None = None,
    pbc: Tensor | bool | list[bool] | None = None,
    loop: bool = False,
    max_num_neighbors: int | None = None,
    backend: str | None = None,
    num_graphs: int | None = None,
) -> tuple[Tensor, Tensor]:
    """All pairs within distance ``r`` (strictly less), with periodic images.

    Args:
        pos: ``[N, 3]`` float32/float64 positions.
        r: cutoff radius (> 0).
        batch: ``[N]`` graph index of each point, sorted (PyG's ``batch``); None = one graph.
        cell: ``[3, 3]`` or ``[B, 3, 3]``, rows are the cell vectors. None = no cell.
        pbc: periodicity per axis: a bool, ``[3]`` or ``[B, 3]``. Defaults to all
            True when a cell is given and all False otherwise. Cell vectors of
            non-periodic axes are ignored (they may be zero).
        loop: include the pair (i, i) with zero shift.
        max_num_neighbors: raise if any centre has more neighbours than this
            (nothing is ever dropped silently).
        backend: ``reference``, ``cpu`` or ``cuda``; default from
            ``$GEO3D_RADIUS_GRAPH_BACKEND`` or the fastest available.
        num_graphs: number of graphs B (default: from ``cell`` or ``batch``);
            lets trailing empty graphs exist.

    Returns:
        ``edge_index [2, E]`` int64 (row 0 = j, row 1 = i, sorted by i) and
        ``shifts [E, 3]`` int64. Where no axis is periodic the native backends
        return the all-zero shifts as a broadcast view of one row (no memory for
        them); ``shifts.clone()`` before writing into it.

    Raises:
        ValueError: NaN/inf positions, a non-positive cutoff, a batch that does
            not match ``pos`` or is unsorted, a malformed or singular cell, or
            more neighbours than ``max_num_neighbors``.
    """
    pos, ptr, cell64, pbc_t = _canonical_inputs(pos, r, batch, cell, pbc, num_graphs)
    name = select_backend(pos.device, backend, ENV_VAR)
    if pos.shape[0] == 0:
        edge_index = torch.empty(2, 0, dtype=torch.long, device=pos.device)
        shifts = torch.empty(0, 3, dtype=torch.long, device=pos.device)
    elif name == "reference":
        edge_index, shifts = radius_graph_reference(pos, ptr, cell64, pbc_t, float(r), loop)
    else:
        if native() is None:  # pragma: no cover - select_backend already refused
            raise RuntimeError("geo3d._C is not loaded")
        edge_index, shifts = native_ops(name).radius_graph(
            pos.detach(), ptr, cell64, pbc_t, float(r), bool(loop), BINS_PER_CUTOFF
        )
    if max_num_neighbors is not None:
        _check_max_neighbors(edge_index, pos.shape[0], max_num_neighbors, r)
    return edge_index, shifts


def _check_max_neighbors(edge_index: Tensor, n: int, max_num_neighbors: int, r: float) -> None:
    if edge_index.shape[1] == 0:
        return
    counts = torch.bincount(edge_index[1], minlength=n)
    worst = int(counts.max())
    if worst > max_num_neighbors:
        node = int(counts.argmax())
        raise ValueError(
            f"radius_graph: point {node} has {worst} neighbours within r={r}, more than "
            f"max_num_neighbors={max_num_neighbors}; geo3d never drops edges: raise the limit or lower r"
        )


def _canonical_inputs(
    pos: Tensor,
    r: float,
    batch: Tensor | None,
    cell: Tensor | None,
    pbc: Tensor | bool | list[bool] | None,
    num_graphs: int | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Validate and turn the arguments into (pos, ptr [B+1], cell [B,3,3] f64, pbc [B,3]) on CPU."""
    if not isinstance(pos, Tensor) or pos.dim() != 2 or pos.shape[1] != 3:
        shape = tuple(pos.shape) if isinstance(pos, Tensor) else type(pos).__name__
        raise ValueError(f"radius_graph: pos must be a [N, 3] tensor, got {shape}")
    if pos.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"radius_graph: pos must be float32 or float64, got {pos.dtype}")
    if not (isinstance(r, (int, float)) and math.isfinite(r) and r > 0):
        raise ValueError(f"radius_graph: cutoff r must be a positive finite number, got {r!r}")
    n = pos.shape[0]
    if n and not bool(torch.isfinite(pos).all()):
        bad = int((~torch.isfinite(pos)).any(dim=1).nonzero()[0])
        raise ValueError(f"radius_graph: pos has NaN or inf values (first at point {bad})")

    cell_b = None
    if cell is not None:
        cell_b = torch.as_tensor(cell).detach().to("cpu", torch.float64)
        if cell_b.shape == (3, 3):
            cell_b = cell_b[None]
        if cell_b.dim() != 3 or cell_b.shape[1:] != (3, 3):
            raise ValueError(f"radius_graph: cell must be [3, 3] or [B, 3, 3], got {tuple(cell_b.shape)}")
        if not bool(torch.isfinite(cell_b).all()):
            raise ValueError("radius_graph: cell has NaN or inf values")

    if batch is None:
        counts = torch.tensor([n], dtype=torch.long)
    else:
        if batch.shape != (n,):
            raise ValueError(f"radius_graph: batch must be [N]=[{n}], got {tuple(batch.shape)}")
        if batch.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"radius_graph: batch must be an integer tensor, got {batch.dtype}")
        b_cpu = batch.detach().to("cpu", torch.long)
        if n and (int(b_cpu.min()) < 0 or bool((b_cpu[1:] < b_cpu[:-1]).any())):
            raise ValueError("radius_graph: batch must be non-negative and sorted (as PyG's Batch makes it)")
        nb = int(b_cpu.max()) + 1 if n else 0
        if num_graphs is None and cell_b is not None and cell_b.shape[0] > 1:
            num_graphs = cell_b.shape[0]
        num = max(nb, 1) if num_graphs is None else num_graphs
        if num < nb:
            raise ValueError(f"radius_graph: num_graphs={num} but batch has index {nb - 1}")
        counts = torch.bincount(b_cpu, minlength=num)
    num = counts.shape[0]
    ptr = torch.zeros(num + 1, dtype=torch.long)
    torch.cumsum(counts, 0, out=ptr[1:])

    if pbc is None:
        pbc_t = torch.full((num, 3), cell_b is not None, dtype=torch.bool)
    else:
        pbc_t = torch.as_tensor(pbc, dtype=torch.bool).detach().cpu()
        if pbc_t.dim() == 0:
            pbc_t = pbc_t.expand(3)
        if pbc_t.shape == (3,):
            pbc_t = pbc_t.expand(num, 3)
        if pbc_t.shape != (num, 3):
            raise ValueError(
                f"radius_graph: pbc must be a bool, [3] or [B={num}, 3], got {tuple(pbc_t.shape)}"
            )
        pbc_t = pbc_t.contiguous()
    if cell_b is None:
        if bool(pbc_t.any()):
            raise ValueError("radius_graph: pbc is set but no cell was given")
        cell_b = torch.zeros(num, 3, 3, dtype=torch.float64)
    elif cell_b.shape[0] == 1 and num > 1:
        cell_b = cell_b.expand(num, 3, 3)
    elif cell_b.shape[0] != num:
        raise ValueError(f"radius_graph: cell has {cell_b.shape[0]} entries but there are {num} graphs")
    if num > 1 and not bool(pbc_t.any()):
        # No periodic axis anywhere: every binning frame is the identity (as complete_cell gives).
        binning_cell = torch.eye(3, dtype=torch.float64).expand(num, 3, 3).contiguous()
    elif num > 1 and bool(pbc_t.all()):
        # Fully periodic batch: the cells are the binning frames; check them all at once
        # (complete_cell's test, batched) instead of one small torch call per graph.
        norms = cell_b.norm(dim=2)
        gram_det = torch.linalg.det(cell_b @ cell_b.transpose(1, 2))
        bad = (norms <= 0).any(dim=1) | (gram_det <= 1e-12 * norms.prod(dim=1) ** 2)
        if bool(bad.any()):
            g = int(bad.nonzero()[0])
            complete_cell(cell_b[g], pbc_t[g], g)  # raises, naming the graph
        binning_cell = cell_b.contiguous()
    else:
        binning_cell = torch.stack([complete_cell(cell_b[g], pbc_t[g], g) for g in range(num)])
    return pos, ptr, binning_cell, pbc_t


def complete_cell(cell: Tensor, pbc: Tensor, graph: int = 0) -> Tensor:
    """The frame the cell list bins in: periodic rows kept, the others an orthonormal completion.

    Args:
        cell: ``[3, 3]`` float64, rows are cell vectors.
        pbc: ``[3]`` bool.

    Raises:
        ValueError: the periodic cell vectors are zero or linearly dependent.
    """
    periodic = [k for k in range(3) if bool(pbc[k])]
    out = torch.eye(3, dtype=torch.float64)
    if not periodic:
        return out
    vecs = cell[periodic]
    norms = vecs.norm(dim=1)
    # Volume spanned by the periodic vectors relative to their lengths: 0 for dependent vectors.
    gram_det = float(torch.linalg.det(vecs @ vecs.T)) if len(periodic) > 1 else 1.0
    if bool((norms <= 0).any()) or gram_det <= 1e-12 * float(norms.prod()) ** 2:
        raise ValueError(
            f"radius_graph: cell of graph {graph} is singular along its periodic axes "
            f"(pbc={pbc.tolist()}, cell={cell.tolist()})"
        )
    if len(periodic) == 3:
        # Nothing to complete. (LAPACK's QR, even of a 3x3, can start a thread
        # team: milliseconds on a busy machine, more than the whole graph of a
        # small periodic system.)
        return cell.clone()
    # Orthonormal complement of the periodic vectors from a full QR.
    q, _ = torch.linalg.qr(vecs.T, mode="complete")
    free = q[:, len(periodic) :].T
    k_free = 0
    for k in range(3):
        if k in periodic:
            out[k] = cell[k]
        else:
            out[k] = free[k_free]
            k_free += 1
    return out


def radius_graph_reference(
    pos: Tensor, ptr: Tensor, cell: Tensor, pbc: Tensor, r: float, loop: bool
) -> tuple[Tensor, Tensor]:
    """Brute force over all pairs and all images that can be within ``r``: the oracle.

    Same arguments as the native op (``cell`` already completed by
    :func:`complete_cell`). O(N^2 * images) time, computed in float64.
    """
    device = pos.device
    edges, shifts_out = [], []
    for g in range(ptr.shape[0] - 1):
        start, end = int(ptr[g]), int(ptr[g + 1])
        if end == start:
            continue
        p = pos[start:end].detach().to("cpu", torch.float64)
        h = cell[g]
        periodic = pbc[g]
        frac = p @ torch.linalg.inv(h)
        wrap = torch.where(periodic, -torch.floor(frac), torch.zeros_like(frac))
        pw = p + wrap @ h
        heights = 1.0 / torch.linalg.inv(h).norm(dim=0)
        reach = [math.ceil(r / float(heights[k])) + 1 if bool(periodic[k]) else 0 for k in range(3)]
        idx = torch.arange(end - start)
        for s in itertools.product(*[range(-m, m + 1) for m in reach]):
            s_t = torch.tensor(s, dtype=torch.float64)
            vec = pw[None, :, :] + s_t @ h - pw[:, None, :]  # [i, j, 3]
            close = (vec * vec).sum(-1) < r * r
            if not loop and s == (0, 0, 0):
                close &= idx[:, None] != idx[None, :]
            i, j = close.nonzero(as_tuple=True)
            edges.append(torch.stack([j, i]) + start)
            shifts_out.append(s_t.long()[None, :] + wrap[j].long() - wrap[i].long())
    if not edges:
        return (
            torch.empty(2, 0, dtype=torch.long, device=device),
            torch.empty(0, 3, dtype=torch.long, device=device),
        )
    edge_index = torch.cat(edges, dim=1)
    shifts = torch.cat(shifts_out, dim=0)
    order = _lexsort(edge_index[1], edge_index[0], shifts)
    return edge_index[:, order].to(device), shifts[order].to(device)


def _lexsort(i: Tensor, j: Tensor, shifts: Tensor) -> Tensor:
    """Permutation sorting edges by (i, j, shift) with the first key most significant."""
    order = torch.arange(i.shape[0])
    for key in [shifts[:, 2], shifts[:, 1], shifts[:, 0], j, i]:
        order = order[torch.sort(key[order], stable=True).indices]
    return order


def canonical_order(edge_index: Tensor, shifts: Tensor) -> tuple[Tensor, Tensor]:
    """Edges sorted by (i, j, shift): lets lists from different backends be compared exactly."""
    order = _lexsort(edge_index[1].cpu(), edge_index[0].cpu(), shifts.cpu())
    return edge_index[:, order.to(edge_index.device)], shifts[order.to(shifts.device)]


if native() is not None:

    @torch.library.register_fake("geo3d::radius_graph")
    def _radius_graph_fake(pos, ptr, cell, pbc, cutoff, loop, bins_per_cutoff):
        num_edges = torch.library.get_ctx().new_dynamic_size()
        return (
            pos.new_empty((2, num_edges), dtype=torch.long),
            pos.new_empty((num_edges, 3), dtype=torch.long),
        )
