"""``TensorProduct`` and the fused ``TensorProductConv``: e3nn's semantics on geo3d's kernels.

Instructions, normalisation and the flat weight layout are e3nn's (see
``geo3d.o3.TPPlan``), so a weight vector moves between ``e3nn.o3.TensorProduct``
and these modules unchanged. The plan is built once in ``__init__``; ``forward``
touches only tensors and ints, so the modules compile with ``fullgraph=True``.

Example, a NequIP-style convolution::

    conv = ChannelWiseTensorProductConv("32x0e+32x1o", "0e+1o+2e", "32x0e+32x1o+32x2e")
    edge_index, shifts = radius_graph(pos, 4.0)
    vec = pos[edge_index[0]] - pos[edge_index[1]]
    sh = o3.spherical_harmonics("0e+1o+2e", vec, normalize=True)
    out = conv(x, sh, radial_mlp(vec.norm(dim=1)), edge_index)   # [N, conv.irreps_out.dim]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from e3nn import o3
from torch import Tensor, nn

from geo3d.o3.instructions import channelwise_instructions, fully_connected_instructions
from geo3d.o3.tp_plan import TPPlan, kernel_weights
from geo3d.ops.tensor_product import tensor_product, tensor_product_conv


class _TensorProductBase(nn.Module):
    def __init__(
        self,
        irreps_in1: o3.Irreps | str,
        irreps_in2: o3.Irreps | str,
        irreps_out: o3.Irreps | str,
        instructions: Sequence[tuple],
        shared_weights: bool | None = None,
        internal_weights: bool | None = None,
        irrep_normalization: str = "component",
        path_normalization: str = "element",
        in1_var: Sequence[float] | None = None,
        in2_var: Sequence[float] | None = None,
        out_var: Sequence[float] | None = None,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        self.plan = TPPlan(
            irreps_in1,
            irreps_in2,
            irreps_out,
            instructions,
            irrep_normalization=irrep_normalization,
            path_normalization=path_normalization,
            in1_var=in1_var,
            in2_var=in2_var,
            out_var=out_var,
        )
        self.irreps_in1, self.irreps_in2, self.irreps_out = (
            self.plan.irreps_in1,
            self.plan.irreps_in2,
            self.plan.irreps_out,
        )
        self.instructions = self.plan.instructions
        # e3nn's defaults: shared unless told otherwise; internal iff shared and weighted.
        if shared_weights is False and internal_weights is None:
            internal_weights = False
        self.shared_weights = True if shared_weights is None else shared_weights
        self.weight_numel = self.plan.weight_numel
        if internal_weights is None:
            internal_weights = self.shared_weights and self.weight_numel > 0
        if internal_weights and not self.shared_weights:
            raise ValueError("internal_weights=True needs shared_weights=True (as in e3nn)")
        self.internal_weights = internal_weights
        self.dim_in1, self.dim_in2, self.dim_out = (
            self.irreps_in1.dim,
            self.irreps_in2.dim,
            self.irreps_out.dim,
        )
        self.backend = backend or ""
        paths, cg_index, cg_value, path_weight = self.plan.tables
        # Derived from the config, so not in the state_dict; float64 whatever the module dtype.
        self.register_buffer("paths", paths, persistent=False)
        self.register_buffer("cg_index", cg_index, persistent=False)
        self.register_buffer("cg_value", cg_value, persistent=False)
        self.register_buffer("path_weight", path_weight, persistent=False)
        self.weight = nn.Parameter(torch.randn(self.weight_numel)) if internal_weights else None
        index = self.plan.kernel_weight_index  # None unless modes beyond uvw/uvu are used
        self.register_buffer("weight_index", index, persistent=False)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        # .to(float32) must not round the CG table: the kernels read it in float64.
        _, _, cg_value, path_weight = self.plan.tables
        self.cg_value = cg_value.to(self.paths.device)
        self.path_weight = path_weight.to(self.paths.device)
        return self

    def _weights(self, weight: Tensor | None, rows: int, like: Tensor, rows_name: str) -> Tensor:
        """The kernels' weight: the user's (checked), mapped through ``weight_index`` where needed."""
        return kernel_weights(self._user_weights(weight, rows, like, rows_name), self.weight_index)

    def _user_weights(self, weight: Tensor | None, rows: int, like: Tensor, rows_name: str) -> Tensor:
        if self.weight_numel == 0:
            return like.new_zeros(0)
        if self.internal_weights:
            if weight is not None:
                raise ValueError(f"{type(self).__name__} has internal weights; do not pass `weight`")
            return self.weight
        if weight is None:
            raise ValueError(
                f"{type(self).__name__} has no internal weights: pass weight "
                f"[{'' if self.shared_weights else rows_name + ', '}{self.weight_numel}]"
            )
        expected = (self.weight_numel,) if self.shared_weights else (rows, self.weight_numel)
        if tuple(weight.shape) != expected:
            raise ValueError(f"weight has shape {tuple(weight.shape)}, expected {expected}")
        return weight

    @staticmethod
    def _upcast(*tensors: Tensor | None) -> tuple[torch.dtype | None, list[Tensor | None]]:
        """float16/bfloat16 operands run (and accumulate) in float32; returns the dtype to cast back to."""
        low = [t.dtype for t in tensors if t is not None and t.dtype in (torch.float16, torch.bfloat16)]
        if not low:
            return None, list(tensors)
        return low[0], [t.float() if t is not None and t.is_floating_point() else t for t in tensors]

    def _check(self, name: str, t: Tensor, dim: int, irreps: o3.Irreps) -> None:
        if t.shape[-1] != dim:
            raise ValueError(f"{name} has {t.shape[-1]} features per row, {irreps} needs {dim}")

    def extra_repr(self) -> str:
        return (
            f"{self.irreps_in1} x {self.irreps_in2} -> {self.irreps_out}, {len(self.instructions)} paths, "
            f"weight_numel={self.weight_numel}, shared_weights={self.shared_weights}, "
            f"internal_weights={self.internal_weights}"
        )


class TensorProduct(_TensorProductBase):
    """e3nn's ``TensorProduct`` on geo3d's kernels.

    Modes ``uvw`` and ``uvu`` run as they are; ``uvv``, ``uuw``, ``uuu`` and ``uvuv`` run as
    ``uvw``/``uvu`` paths with a structured (gathered) weight, so they cost what those cost.

    Args: as ``e3nn.o3.TensorProduct`` (irreps, instructions
    ``(i_in1, i_in2, i_out, mode, has_weight[, path_weight])``, ``shared_weights``,
    ``internal_weights``, normalisations, variances), plus ``backend``
    (``"reference"``/``"cpu"``/``"cuda"``; default: the fastest available).

    float16/bfloat16 inputs are computed and accumulated in float32; the output has the
    input's dtype.

    Shapes: x1 ``[..., irreps_in1.dim]``, x2 ``[..., irreps_in2.dim]`` (same leading
    shape), weight ``[weight_numel]`` (shared) or ``[..., weight_numel]``;
    returns ``[..., irreps_out.dim]``.
    """

    def forward(self, x1: Tensor, x2: Tensor, weight: Tensor | None = None) -> Tensor:
        self._check("x1", x1, self.dim_in1, self.irreps_in1)
        self._check("x2", x2, self.dim_in2, self.irreps_in2)
        if x1.shape[:-1] != x2.shape[:-1]:
            raise ValueError(
                f"x1 and x2 need the same leading shape, got {tuple(x1.shape)} and {tuple(x2.shape)}"
            )
        lead = x1.shape[:-1]
        low, (x1, x2, weight) = self._upcast(x1, x2, weight)
        a, b = x1.reshape(-1, self.dim_in1), x2.reshape(-1, self.dim_in2)
        if weight is not None and not self.shared_weights and weight.shape[:-1] == lead:
            weight = weight.reshape(a.shape[0], weight.shape[-1])  # (not -1: weight_numel may be 0)
        w = self._weights(weight, a.shape[0], a, "batch")
        w = w if low is None else w.float()  # internal weights of a module moved to bfloat16
        out = tensor_product(
            a, b, w, self.paths, self.cg_index, self.cg_value, self.path_weight, self.dim_out, self.backend
        )
        out = out.reshape(*lead, self.dim_out)
        return out if low is None else out.to(low)


class TensorProductConv(_TensorProductBase):
    """Fused message pass ``out[i] = sum_{e=(j->i)} TP(x[j], sh[e], w[e])``.

    Same constructor as :class:`TensorProduct`. ``edge_index[0]`` is the sender j,
    ``edge_index[1]`` the receiver i (PyG's default flow). Edges may come in any
    order: the kernels group them by receiver (forward) and by sender (backward)
    with a stable counting sort, so each node's sum runs in edge order and the
    result is deterministic; the ``[E, irreps_out.dim]`` messages are never stored.

    Shapes: x ``[N, irreps_in1.dim]``, sh ``[E, irreps_in2.dim]``, weight
    ``[E, weight_numel]`` (or ``[weight_numel]`` when shared), edge_index ``[2, E]``
    int64; returns ``[N, irreps_out.dim]``. Nodes without edges get zeros.
    """

    def forward(self, x: Tensor, sh: Tensor, weight: Tensor | None, edge_index: Tensor) -> Tensor:
        self._check("x", x, self.dim_in1, self.irreps_in1)
        self._check("sh", sh, self.dim_in2, self.irreps_in2)
        if x.dim() != 2 or sh.dim() != 2:
            raise ValueError(
                f"x must be [N, dim] and sh [E, dim], got {tuple(x.shape)} and {tuple(sh.shape)}"
            )
        low, (x, sh, weight) = self._upcast(x, sh, weight)
        w = self._weights(weight, sh.shape[0], x, "E")
        w = w if low is None else w.float()
        out = tensor_product_conv(
            x,
            sh,
            w,
            edge_index,
            self.paths,
            self.cg_index,
            self.cg_value,
            self.path_weight,
            self.dim_out,
            self.backend,
        )
        return out if low is None else out.to(low)


class FullyConnectedTensorProduct(TensorProduct):
    """Every allowed path, ``uvw``, weighted (e3nn's ``FullyConnectedTensorProduct``)."""

    def __init__(self, irreps_in1, irreps_in2, irreps_out, **kwargs) -> None:
        super().__init__(
            irreps_in1,
            irreps_in2,
            irreps_out,
            fully_connected_instructions(irreps_in1, irreps_in2, irreps_out),
            **kwargs,
        )


def _channelwise(irreps_in1, irreps_in2, irreps_out, kwargs):
    irreps, instructions = channelwise_instructions(irreps_in1, irreps_in2, irreps_out)
    kwargs.setdefault("shared_weights", False)
    kwargs.setdefault("internal_weights", False)
    return irreps, instructions, kwargs


class ChannelWiseTensorProduct(TensorProduct):
    """The NequIP/MACE convolution TP: ``uvu`` paths into the irreps of ``irreps_out``.

    As MACE's ``tp_out_irreps_with_instructions``: the output irreps are every
    product ``in1 x in2`` that appears in ``irreps_out``, sorted (read them from
    ``.irreps_out``); weights default to per-row (``shared_weights=False``), the
    output of a radial network.
    """

    def __init__(self, irreps_in1, irreps_in2, irreps_out, **kwargs) -> None:
        irreps, instructions, kwargs = _channelwise(irreps_in1, irreps_in2, irreps_out, kwargs)
        super().__init__(irreps_in1, irreps_in2, irreps, instructions, **kwargs)


class ChannelWiseTensorProductConv(TensorProductConv):
    """:class:`ChannelWiseTensorProduct` fused with the message pass (see :class:`TensorProductConv`)."""

    def __init__(self, irreps_in1, irreps_in2, irreps_out, **kwargs) -> None:
        irreps, instructions, kwargs = _channelwise(irreps_in1, irreps_in2, irreps_out, kwargs)
        super().__init__(irreps_in1, irreps_in2, irreps, instructions, **kwargs)
