"""The plain-torch oracle of the tensor-product ops (``backend="reference"``).

One dense Wigner-3j contraction per path of a plan's table (``TPPlan.tables``), in the
input dtype: slow and obviously right. Every native kernel (CPU C++, CUDA, the cudasim
build) is tested against these four functions, and the custom ops in
:mod:`geo3d.ops.tensor_product` call them for ``backend="reference"``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from geo3d.ops.tp_tables import (
    L1,
    L2,
    L3,
    MODE,
    MODE_CODE,
    MUL1,
    MUL2,
    MUL_OUT,
    OFF1,
    OFF2,
    OFF_OUT,
    W_OFF,
    dense_wigner_3j,
)

_UVW = MODE_CODE["uvw"]


class _RefPath(NamedTuple):
    eq: str  # einsum "a,b,c,w->out" of the path
    a: Tensor  # [Z, mul1, 2l1+1] block of x1
    b: Tensor  # [Z, mul2, 2l2+1] block of x2
    c: Tensor  # Wigner 3j [2l1+1, 2l2+1, 2l3+1]
    w: Tensor  # the path's weights (ones when unweighted)
    pw: float
    s1: slice  # the blocks' columns in x1, x2, out and w
    s2: slice
    so: slice
    sw: slice | None


def _len(s: slice) -> int:
    return s.stop - s.start


def _reference_paths(x1: Tensor, x2: Tensor, w: Tensor, paths: Tensor, path_weight: Tensor) -> list[_RefPath]:
    """One einsum per path; an unweighted path gets weights of ones, so all paths are the same product."""
    z = x1.shape[0]
    zz = "z" if w.dim() == 2 else ""
    out = []
    for row, pw in zip(paths.tolist(), path_weight.tolist(), strict=True):
        l1, l2, l3 = row[L1], row[L2], row[L3]
        mul1, mul2, mulo = row[MUL1], row[MUL2], row[MUL_OUT]
        d1, d2, d3 = 2 * l1 + 1, 2 * l2 + 1, 2 * l3 + 1
        s1 = slice(row[OFF1], row[OFF1] + mul1 * d1)
        s2 = slice(row[OFF2], row[OFF2] + mul2 * d2)
        uvw = row[MODE] == _UVW
        shape = (mul1, mul2, mulo) if uvw else (mul1, mul2)
        if row[W_OFF] >= 0:
            sw = slice(row[W_OFF], row[W_OFF] + math.prod(shape))
            wp, ws = w[..., sw].reshape(*w.shape[:-1], *shape), zz
        else:
            sw, wp, ws = None, x1.new_ones(shape), ""
        out.append(
            _RefPath(
                f"zui,zvj,ijk,{ws}uvw->zwk" if uvw else f"zui,zvj,ijk,{ws}uv->zuk",
                x1[:, s1].reshape(z, mul1, d1),
                x2[:, s2].reshape(z, mul2, d2),
                dense_wigner_3j(l1, l2, l3).to(x1.device, x1.dtype),
                wp,
                pw,
                s1,
                s2,
                slice(row[OFF_OUT], row[OFF_OUT] + mulo * d3),
                sw,
            )
        )
    return out


def tensor_product_reference(
    x1: Tensor, x2: Tensor, w: Tensor, paths: Tensor, path_weight: Tensor, dim_out: int
) -> Tensor:
    """Plain-torch TP, one einsum per path with e3nn's dense Wigner 3j: ``[Z, dim_out]``.

    Shapes: x1 ``[Z, irreps_in1.dim]``, x2 ``[Z, irreps_in2.dim]``, w ``[weight_numel]``
    (shared) or ``[Z, weight_numel]``.
    """
    out = x1.new_zeros(x1.shape[0], dim_out)
    for p in _reference_paths(x1, x2, w, paths, path_weight):
        out[:, p.so] += p.pw * torch.einsum(p.eq, p.a, p.b, p.c, p.w).reshape(x1.shape[0], _len(p.so))
    return out


def tensor_product_backward_reference(
    x1: Tensor, x2: Tensor, w: Tensor, grad: Tensor, paths: Tensor, path_weight: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of ``<grad, TP(x1, x2, w)>``: each path's einsum with the output and one operand swapped."""
    gx1, gx2, gw = torch.zeros_like(x1), torch.zeros_like(x2), torch.zeros_like(w)
    z = x1.shape[0]
    for p in _reference_paths(x1, x2, w, paths, path_weight):
        lhs, so = p.eq.split("->")
        sa, sb, sc, sw = lhs.split(",")
        g = grad[:, p.so].reshape(z, _len(p.so) // p.c.shape[2], p.c.shape[2])
        ga = torch.einsum(f"{so},{sb},{sc},{sw}->{sa}", g, p.b, p.c, p.w)
        gx1[:, p.s1] += p.pw * ga.reshape(z, _len(p.s1))
        gb = torch.einsum(f"{so},{sa},{sc},{sw}->{sb}", g, p.a, p.c, p.w)
        gx2[:, p.s2] += p.pw * gb.reshape(z, _len(p.s2))
        if p.sw is not None:
            gwp = p.pw * torch.einsum(f"{so},{sa},{sb},{sc}->{sw}", g, p.a, p.b, p.c)
            gw[..., p.sw] += gwp.reshape(*w.shape[:-1], _len(p.sw))
    return gx1, gx2, gw


def tensor_product_conv_reference(
    x: Tensor, sh: Tensor, w: Tensor, edge_index: Tensor, paths: Tensor, path_weight: Tensor, dim_out: int
) -> Tensor:
    """Gather senders, TP per edge, ``index_add`` onto receivers: ``[N, dim_out]``."""
    messages = tensor_product_reference(x[edge_index[0]], sh, w, paths, path_weight, dim_out)
    return x.new_zeros(x.shape[0], dim_out).index_add_(0, edge_index[1], messages)


def tensor_product_conv_backward_reference(
    x: Tensor, sh: Tensor, w: Tensor, edge_index: Tensor, grad: Tensor, paths: Tensor, path_weight: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-edge gradients of the reference TP, the sender's part summed with ``index_add``."""
    gxe, gsh, gw = tensor_product_backward_reference(
        x[edge_index[0]], sh, w, grad[edge_index[1]], paths, path_weight
    )
    return torch.zeros_like(x).index_add_(0, edge_index[0], gxe), gsh, gw
