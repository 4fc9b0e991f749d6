"""Tensor-product ops: ``tensor_product`` and the fused ``tensor_product_conv``, with autograd to any order.

Both ops are ``torch.library.custom_op``s over a plan's tables (``TPPlan.tables``)
with fake (meta) kernels, so they run under ``torch.compile(fullgraph=True)`` and
pass ``torch.library.opcheck``. Backends: ``reference`` (plain torch,
:mod:`geo3d.ops.tp_reference`, the oracle), ``cpu`` (cuda_ext/tensor_product/tensor_product_cpu.cpp); picked per call as for every
geo3d op (``backend=`` > ``$GEO3D_TP_BACKEND`` > fastest available).

Derivatives. The tensor product is trilinear in ``(x1, x2, w)``, so with
``F = TP`` and ``B = (dF/dx1, dF/dx2, dF/dw)^T g`` (the backward op):
the backward of ``F`` is one call of ``B``; the backward of ``B`` (double
backward, used when training on forces) is three calls of ``F`` and three of
``B`` with one input swapped for its incoming gradient; ``B`` is itself
differentiable, so every order is available. The same holds for the
convolution, which is a sum of tensor products over edges. A path without
weights is bilinear in ``(x1, x2)`` and constant in ``w``: the double-backward
terms that differentiate ``dF/dw`` run with those paths' weights set to zero.
"""

from __future__ import annotations

import torch
from torch import Tensor

from geo3d.ops._native import ops as native_ops
from geo3d.ops._native import select_backend
from geo3d.ops.tp_reference import (
    tensor_product_backward_reference,
    tensor_product_conv_backward_reference,
    tensor_product_conv_reference,
    tensor_product_reference,
)
from geo3d.ops.tp_shared_weights import shared_uvw_backward, shared_uvw_forward
from geo3d.ops.tp_tables import MODE, MODE_CODE, W_OFF

ENV_VAR = "GEO3D_TP_BACKEND"
_UVW = MODE_CODE["uvw"]


def _backend(x: Tensor, backend: str) -> str:
    return select_backend(x.device, backend or None, ENV_VAR)


# --------------------------------------------------------------------------- shared-weight uvw
# A fully connected path with shared weights is a matrix product over the whole
# batch; a per-row loop would stream all of W for every row. The native backends
# send these paths to tp_shared_weights (BLAS, the weights meeting the operand of
# lowest m-dimension first) and the rest to their kernels.
def _split_gemm_paths(paths: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    gemm = (paths[:, MODE] == _UVW) & (paths[:, W_OFF] >= 0) & (w.dim() == 1)
    return ~gemm, gemm


def _check_conv_inputs(x: Tensor, sh: Tensor, edge_index: Tensor) -> None:
    if edge_index.dim() != 2 or edge_index.shape[0] != 2 or edge_index.shape[1] != sh.shape[0]:
        raise ValueError(
            f"edge_index must be [2, E] with E = sh.shape[0] = {sh.shape[0]}, got {tuple(edge_index.shape)}"
        )
    if edge_index.numel() and (edge_index.min() < 0 or edge_index.max() >= x.shape[0]):
        raise ValueError(f"edge_index holds nodes outside [0, {x.shape[0]}) (x has {x.shape[0]} rows)")


def _weighted_paths(tables: list[Tensor]) -> list[Tensor]:
    """The plan tables with every unweighted path's path weight set to 0 (no data-dependent shapes)."""
    paths, cg_index, cg_value, path_weight = tables
    return [paths, cg_index, cg_value, path_weight * (paths[:, W_OFF] >= 0).to(path_weight.dtype)]


def _double_backward(fwd, bwd, inputs, incoming, tables):
    """Backward of the backward op of F(a, b, c) = sum of paths (see the module docstring).

    ``fwd(a, b, c, tables)`` and ``bwd(a, b, c, tables)`` run the op and its
    backward on the given plan tables. A weighted path is trilinear in (a, b, c);
    an unweighted one is bilinear in (a, b) and constant in c (the kernels treat
    its weights as ones), so it has no part in dF/dc and the terms that
    differentiate dF/dc run on the weighted paths only.
    ``incoming`` are the gradients flowing into (dF/da, dF/db, dF/dc); ``None``
    where an output was not used (force training uses only dF/dx), and those
    terms are skipped: F and B run once per used output instead of three times.
    Returns gradients for (a, b, c, grad).
    """
    a, b, c = inputs
    da = db = dc = d_grad = None

    def add(x, y):
        return y if x is None else x + y

    ga, gb, gc = incoming
    if ga is not None:
        d_grad = add(d_grad, fwd(ga, b, c, tables))
        _, y_b, y_c = bwd(ga, b, c, tables)
        db, dc = add(db, y_b), add(dc, y_c)
    if gb is not None:
        d_grad = add(d_grad, fwd(a, gb, c, tables))
        y_a, _, y_c = bwd(a, gb, c, tables)
        da, dc = add(da, y_a), add(dc, y_c)
    if gc is not None:
        weighted = _weighted_paths(tables)
        d_grad = add(d_grad, fwd(a, b, gc, weighted))
        y_a, y_b, _ = bwd(a, b, gc, weighted)
        da, db = add(da, y_a), add(db, y_b)
    return da, db, dc, d_grad


# --------------------------------------------------------------------------- plain TP
@torch.library.custom_op("geo3d::tensor_product", mutates_args=())
def tensor_product(
    x1: Tensor,
    x2: Tensor,
    w: Tensor,
    paths: Tensor,
    cg_index: Tensor,
    cg_value: Tensor,
    path_weight: Tensor,
    dim_out: int,
    backend: str = "",
) -> Tensor:
    """``TP(x1, x2, w)`` row by row: ``[Z, dim_out]`` (tables from ``TPPlan.tables``)."""
    name = _backend(x1, backend)
    if name == "reference":
        return tensor_product_reference(x1, x2, w, paths, path_weight, dim_out)
    rows, gemm = _split_gemm_paths(paths, w)
    if bool(gemm.all()):
        out = x1.new_zeros(x1.shape[0], dim_out)
    else:
        out = native_ops(name).tp_forward(
            x1, x2, w, paths[rows], cg_index, cg_value, path_weight[rows], dim_out
        )
    if gemm.any():
        shared_uvw_forward(x1, x2, w, paths[gemm], path_weight[gemm], out)
    return out


@torch.library.custom_op("geo3d::tensor_product_backward", mutates_args=())
def tensor_product_backward(
    x1: Tensor,
    x2: Tensor,
    w: Tensor,
    grad: Tensor,
    paths: Tensor,
    cg_index: Tensor,
    cg_value: Tensor,
    path_weight: Tensor,
    backend: str = "",
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients ``(dx1, dx2, dw)`` of ``<grad, TP(x1, x2, w)>``."""
    name = _backend(x1, backend)
    if name == "reference":
        return tensor_product_backward_reference(x1, x2, w, grad, paths, path_weight)
    rows, gemm = _split_gemm_paths(paths, w)
    if bool(gemm.all()):
        return shared_uvw_backward(x1, x2, w, grad, paths, path_weight)
    gx1, gx2, gw = native_ops(name).tp_backward(
        x1, x2, w, grad, paths[rows], cg_index, cg_value, path_weight[rows]
    )
    if gemm.any():
        ga, gb, gc = shared_uvw_backward(x1, x2, w, grad, paths[gemm], path_weight[gemm])
        gx1, gx2, gw = gx1.add_(ga), gx2.add_(gb), gw.add_(gc)
    return gx1, gx2, gw


@tensor_product.register_fake
def _(x1, x2, w, paths, cg_index, cg_value, path_weight, dim_out, backend=""):
    return x1.new_empty(x1.shape[0], dim_out)


@tensor_product_backward.register_fake
def _(x1, x2, w, grad, paths, cg_index, cg_value, path_weight, backend=""):
    return torch.empty_like(x1), torch.empty_like(x2), torch.empty_like(w)


def _tp_setup(ctx, inputs, output) -> None:
    x1, x2, w, *tables, _dim_out, backend = inputs
    ctx.save_for_backward(x1, x2, w)
    ctx.tables, ctx.backend = tables, backend


def _tp_backward(ctx, grad):
    x1, x2, w = ctx.saved_tensors
    gx1, gx2, gw = tensor_product_backward(x1, x2, w, grad, *ctx.tables, ctx.backend)
    return gx1, gx2, gw, None, None, None, None, None, None


def _tpb_setup(ctx, inputs, output) -> None:
    x1, x2, w, grad, *tables, backend = inputs
    ctx.save_for_backward(x1, x2, w, grad)
    ctx.tables, ctx.backend = tables, backend
    ctx.set_materialize_grads(False)  # unused outputs stay None: their terms are skipped


def _tpb_backward(ctx, ggx1, ggx2, ggw):
    x1, x2, w, g = ctx.saved_tensors
    t, b = ctx.tables, ctx.backend

    def fwd(a, c, d, tables):
        return tensor_product(a, c, d, *tables, g.shape[1], b)

    def bwd(a, c, d, tables):
        return tensor_product_backward(a, c, d, g, *tables, b)

    dx1, dx2, dw, d_grad = _double_backward(fwd, bwd, (x1, x2, w), (ggx1, ggx2, ggw), t)
    return dx1, dx2, dw, d_grad, None, None, None, None, None


tensor_product.register_autograd(_tp_backward, setup_context=_tp_setup)
tensor_product_backward.register_autograd(_tpb_backward, setup_context=_tpb_setup)


# --------------------------------------------------------------------------- fused convolution
@torch.library.custom_op("geo3d::tensor_product_conv", mutates_args=())
def tensor_product_conv(
    x: Tensor,
    sh: Tensor,
    w: Tensor,
    edge_index: Tensor,
    paths: Tensor,
    cg_index: Tensor,
    cg_value: Tensor,
    path_weight: Tensor,
    dim_out: int,
    backend: str = "",
) -> Tensor:
    """``out[i] = sum_{e=(j->i)} TP(x[j], sh[e], w[e])``: ``[N, dim_out]``; any edge order, deterministic."""
    name = _backend(x, backend)
    if name == "reference":
        _check_conv_inputs(x, sh, edge_index)
        return tensor_product_conv_reference(x, sh, w, edge_index, paths, path_weight, dim_out)
    return native_ops(name).tp_conv_forward(
        x, sh, w, edge_index, paths, cg_index, cg_value, path_weight, dim_out
    )


@torch.library.custom_op("geo3d::tensor_product_conv_backward", mutates_args=())
def tensor_product_conv_backward(
    x: Tensor,
    sh: Tensor,
    w: Tensor,
    edge_index: Tensor,
    grad: Tensor,
    paths: Tensor,
    cg_index: Tensor,
    cg_value: Tensor,
    path_weight: Tensor,
    backend: str = "",
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients ``(dx, dsh, dw)`` of ``<grad, tensor_product_conv(x, sh, w)>``."""
    name = _backend(x, backend)
    if name == "reference":
        _check_conv_inputs(x, sh, edge_index)
        return tensor_product_conv_backward_reference(x, sh, w, edge_index, grad, paths, path_weight)
    return native_ops(name).tp_conv_backward(
        x, sh, w, edge_index, grad, paths, cg_index, cg_value, path_weight
    )


@tensor_product_conv.register_fake
def _(x, sh, w, edge_index, paths, cg_index, cg_value, path_weight, dim_out, backend=""):
    return x.new_empty(x.shape[0], dim_out)


@tensor_product_conv_backward.register_fake
def _(x, sh, w, edge_index, grad, paths, cg_index, cg_value, path_weight, backend=""):
    return torch.empty_like(x), torch.empty_like(sh), torch.empty_like(w)


def _conv_setup(ctx, inputs, output) -> None:
    x, sh, w, edge_index, *tables, _dim_out, backend = inputs
    ctx.save_for_backward(x, sh, w, edge_index)
    ctx.tables, ctx.backend = tables, backend


def _conv_backward(ctx, grad):
    x, sh, w, edge_index = ctx.saved_tensors
    gx, gsh, gw = tensor_product_conv_backward(x, sh, w, edge_index, grad, *ctx.tables, ctx.backend)
    return gx, gsh, gw, None, None, None, None, None, None, None


def _convb_setup(ctx, inputs, output) -> None:
    x, sh, w, edge_index, grad, *tables, backend = inputs
    ctx.save_for_backward(x, sh, w, edge_index, grad)
    ctx.tables, ctx.backend = tables, backend
    ctx.set_materialize_grads(False)


def _convb_backward(ctx, ggx, ggsh, ggw):
    x, sh, w, ei, g = ctx.saved_tensors
    t, b = ctx.tables, ctx.backend

    def fwd(a, c, d, tables):
        return tensor_product_conv(a, c, d, ei, *tables, g.shape[1], b)

    def bwd(a, c, d, tables):
        return tensor_product_conv_backward(a, c, d, ei, g, *tables, b)

    dx, dsh, dw, d_grad = _double_backward(fwd, bwd, (x, sh, w), (ggx, ggsh, ggw), t)
    return dx, dsh, dw, None, d_grad, None, None, None, None, None


tensor_product_conv.register_autograd(_conv_backward, setup_context=_conv_setup)
tensor_product_conv_backward.register_autograd(_convb_backward, setup_context=_convb_setup)
