"""Fully connected (``uvw``) tensor-product paths with shared weights, as matrix products.

With one weight tensor ``W [U, V, W]`` for all rows a path is a contraction of
five tensors, symmetric in its three "row operands" ``x1 [Z, U, d1]``,
``x2 [Z, V, d2]`` and the output (or its gradient) ``g [Z, W, d3]``:

    sum  W[u, v, w] x1[z, u, i] x2[z, v, j] g[z, w, k] C[i, j, k]

The forward and the two input gradients each produce one row operand from the
other two; the weight gradient sums over rows. Whatever is produced, the one
expensive step is a GEMM of ``Z * d * U * V * W`` multiply-adds where ``d`` is the
m-dimension (2l+1) of the operand that meets the weights: e3nn always uses the
output's (``d3``); here it is the smallest of ``d1, d2, d3`` (for
``32x0e+32x1o+32x2e`` fully connected: 21 instead of 35 summed over the 11 paths).
The rest are batched small products over ``Z`` (``Z * U * V * nnz(C)``).
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from geo3d.ops.tp_tables import L1, L2, L3, MUL1, MUL2, MUL_OUT, OFF1, OFF2, OFF_OUT, W_OFF, dense_wigner_3j


@functools.cache
def _cg(l1: int, l2: int, l3: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    return dense_wigner_3j(l1, l2, l3).to(device=device, dtype=dtype)


def _pair(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """``t[z, k, l, m] = sum_ij a[z, l, i] b[z, m, j] c[i, j, k]``: ``[Z, dk, L, M]``, contiguous.

    Laid out so that ``t.view(Z * dk, L * M)`` is the left operand of the weight GEMM
    without a copy; the only copy is of ``[Z, dk, L, dj]``, a fraction of ``t``.
    """
    z, big_l, di = a.shape
    big_m, dj = b.shape[1:]
    dk = c.shape[2]
    p = (a.reshape(z * big_l, di) @ c.reshape(di, dj * dk)).view(z, big_l, dj, dk)
    p = p.permute(0, 3, 1, 2).reshape(z, dk * big_l, dj)
    return torch.bmm(p, b.transpose(1, 2)).view(z, dk, big_l, big_m)


def _third(a: Tensor, b: Tensor, w: Tensor, c: Tensor) -> Tensor:
    """``r[z, n, k] = sum w[l, m, n] a[z, l, i] b[z, m, j] c[i, j, k]``: ``[Z, N, dk]``.

    Shapes: a ``[Z, L, di]``, b ``[Z, M, dj]``, w ``[L, M, N]``, c ``[di, dj, dk]``.
    The weights meet the operand with the smallest m-dimension (or, if the result's
    is smallest, the product of the two operands).
    """
    z, big_l, di = a.shape
    big_m, dj = b.shape[1:]
    big_n, dk = w.shape[2], c.shape[2]
    if dk <= min(di, dj):
        t = _pair(a, b, c).view(z * dk, big_l * big_m)
        return (t @ w.reshape(big_l * big_m, big_n)).view(z, dk, big_n).transpose(1, 2)
    if dj < di:  # the same contraction with the roles of a and b swapped
        return _third(b, a, w.transpose(0, 1), c.transpose(0, 1))
    y = a.transpose(1, 2).reshape(z * di, big_l) @ w.reshape(big_l, big_m * big_n)  # [Z*di, M*N]
    q = b.reshape(z * big_m, dj) @ c.transpose(0, 1).reshape(dj, di * dk)  # [Z*M, di*dk]
    q = q.view(z, big_m, di, dk).transpose(1, 2).reshape(z, di * big_m, dk)
    return torch.bmm(y.view(z, di * big_m, big_n).transpose(1, 2), q)


def _weight_grad(a: Tensor, b: Tensor, g: Tensor, c: Tensor) -> Tensor:
    """``dw[u, v, w] = sum_z a[z, u, i] b[z, v, j] g[z, w, k] c[i, j, k]``: ``[U, V, W]``.

    The operand with the smallest m-dimension meets the product of the other two.
    """
    z = a.shape[0]
    d = min(a.shape[2], b.shape[2], g.shape[2])
    if g.shape[2] == d:
        x, y, r, cc, back = a, b, g, c, (0, 1, 2)
    elif b.shape[2] == d:
        x, y, r, cc, back = a, g, b, c.transpose(1, 2), (0, 2, 1)
    else:
        x, y, r, cc, back = b, g, a, c.permute(1, 2, 0), (2, 0, 1)
    t = _pair(x, y, cc).view(z * d, x.shape[1] * y.shape[1])
    rr = r.transpose(1, 2).reshape(z * d, r.shape[1])
    dw = (t.T @ rr).view(x.shape[1], y.shape[1], r.shape[1])  # axes (x, y, r)
    return dw.permute(*back)  # to (u, v, w)


def _blocks(x1: Tensor, x2: Tensor, w: Tensor, row: list[int]):
    l1, l2, l3 = row[L1], row[L2], row[L3]
    u, v, wo = row[MUL1], row[MUL2], row[MUL_OUT]
    d1, d2, d3 = 2 * l1 + 1, 2 * l2 + 1, 2 * l3 + 1
    z = x1.shape[0]
    a = x1[:, row[OFF1] : row[OFF1] + u * d1].reshape(z, u, d1)
    b = x2[:, row[OFF2] : row[OFF2] + v * d2].reshape(z, v, d2)
    wp = w[row[W_OFF] : row[W_OFF] + u * v * wo].view(u, v, wo)
    so = slice(row[OFF_OUT], row[OFF_OUT] + wo * d3)
    return a, b, wp, _cg(l1, l2, l3, x1.dtype, x1.device), so, (wo, d3)


def shared_uvw_forward(
    x1: Tensor, x2: Tensor, w: Tensor, paths: Tensor, path_weight: Tensor, out: Tensor
) -> None:
    """Adds the paths' output to ``out [Z, dim_out]`` in place.

    ``paths``: rows of ``TPPlan.tables`` that are weighted ``uvw`` paths; ``w`` the
    flat shared weights ``[weight_numel]``.
    """
    z = x1.shape[0]
    for row, pw in zip(paths.tolist(), path_weight.tolist(), strict=True):
        a, b, wp, c, so, _ = _blocks(x1, x2, w, row)
        out[:, so] += _third(a, b, wp, c).reshape(z, -1).mul_(pw)


def shared_uvw_backward(
    x1: Tensor, x2: Tensor, w: Tensor, grad: Tensor, paths: Tensor, path_weight: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients ``(dx1, dx2, dw)`` of ``<grad, paths(x1, x2, w)>``, shapes of ``x1, x2, w``."""
    gx1, gx2, gw = torch.zeros_like(x1), torch.zeros_like(x2), torch.zeros_like(w)
    z = x1.shape[0]
    for row, pw in zip(paths.tolist(), path_weight.tolist(), strict=True):
        a, b, wp, c, so, (wo, d3) = _blocks(x1, x2, w, row)
        g = grad[:, so].reshape(z, wo, d3) * pw
        d1, d2 = a.shape[2], b.shape[2]
        if min(d1, d2) <= d3:
            # The input of smallest m-dimension, s, gets its gradient and the weight gradient from one
            # shared product of the other two operands: P[z, k, l, m] (k over s's m-dimension).
            if d1 <= d2:
                s_op, p, w_slm = a, _pair(b, g, c.permute(1, 2, 0)), wp  # w as [U | V, W]
            else:
                s_op, p, w_slm = b, _pair(a, g, c.permute(0, 2, 1)), wp.permute(1, 0, 2)  # [V | U, W]
            n_s, d_s = s_op.shape[1], s_op.shape[2]
            p = p.view(z * d_s, -1)
            grad_s = (p @ w_slm.reshape(n_s, -1).T).view(z, d_s, n_s).transpose(1, 2)
            dw = (s_op.transpose(1, 2).reshape(z * d_s, n_s).T @ p).view(w_slm.shape)
            if d1 <= d2:
                ga, gb = grad_s, _third(a, g, wp.permute(0, 2, 1), c.permute(0, 2, 1))
            else:
                ga, gb = _third(b, g, wp.permute(1, 2, 0), c.permute(1, 2, 0)), grad_s
                dw = dw.permute(1, 0, 2)
        else:
            # dx1: the third operand from (x2, g), weights [V, W, U], CG [j, k, i]; likewise dx2.
            ga = _third(b, g, wp.permute(1, 2, 0), c.permute(1, 2, 0))
            gb = _third(a, g, wp.permute(0, 2, 1), c.permute(0, 2, 1))
            dw = _weight_grad(a, b, g, c)
        gx1[:, row[OFF1] : row[OFF1] + a.shape[1] * a.shape[2]] += ga.reshape(z, -1)
        gx2[:, row[OFF2] : row[OFF2] + b.shape[1] * b.shape[2]] += gb.reshape(z, -1)
        gw[row[W_OFF] : row[W_OFF] + math.prod(wp.shape)] += dw.reshape(-1)
    return gx1, gx2, gw
