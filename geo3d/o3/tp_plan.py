"""Tensor-product plans: e3nn-style instructions checked once and turned into kernel tables.

A plan is a pure function of (irreps, instructions, normalisation): every backend
(reference, cpu, cuda) reads the same tables, and the weight layout is e3nn's
flat one (instruction order, each path's ``path_shape`` flattened row-major), so a
weight tensor moves between geo3d and ``e3nn.o3.TensorProduct`` unchanged. The
Clebsch-Gordan coefficients are e3nn's ``wigner_3j``; the path weights follow
e3nn's formula (``irrep_normalization`` x ``path_normalization``, input/output
variances, the user's ``path_weight``) and are checked against e3nn in the tests.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from e3nn import o3

# The table layout belongs to the kernels (ops); this module fills the tables.
from geo3d.ops.tp_tables import (
    MODE_CODE,
    NUM_PATH_FIELDS,
    dense_wigner_3j,
)

MODES = ("uvw", "uvu", "uvv", "uuw", "uuu", "uvuv")
# The kernels run two modes. The others are the same contraction with a structured weight:
# ``uvv``, ``uuw`` and ``uvuv`` are ``uvw`` paths and ``uuu`` a ``uvu`` path whose kernel
# weights are gathered from the user's (or are constant 0/1), see ``TPPlan.kernel_weight_index``.
# Correct to round-off through every derivative, but they cost what the general mode costs.
KERNEL_MODE = {"uvw": "uvw", "uvu": "uvu", "uvv": "uvw", "uuw": "uvw", "uvuv": "uvw", "uuu": "uvu"}
IRREP_NORMALIZATIONS = ("component", "norm", "none")
PATH_NORMALIZATIONS = ("element", "path", "none")


@dataclass(frozen=True)
class Instruction:
    """One checked path ``in1[i_in1] x in2[i_in2] -> out[i_out]``.

    ``path_weight`` is the final coefficient the kernels multiply by (e3nn's
    normalisation times the user's weight); ``path_shape`` is the shape of this
    path's block of the flat weight vector (empty when ``has_weight`` is False).
    """

    i_in1: int
    i_in2: int
    i_out: int
    mode: str
    has_weight: bool
    path_weight: float
    path_shape: tuple[int, ...]


def _path_shape(mode: str, mul1: int, mul2: int, mul_out: int) -> tuple[int, ...]:
    # e3nn's shape of a path's weight block, per mode.
    return {
        "uvw": (mul1, mul2, mul_out),
        "uvu": (mul1, mul2),
        "uvv": (mul1, mul2),
        "uuw": (mul1, mul_out),
        "uuu": (mul1,),
        "uvuv": (mul1, mul2),
    }[mode]


def _num_elements(mode: str, mul1: int, mul2: int) -> int:
    # e3nn: the number of terms summed into one output component, per mode.
    return {"uvw": mul1 * mul2, "uvu": mul2, "uvv": mul1, "uuw": mul1, "uuu": 1, "uvuv": 1}[mode]


def _kernel_weight_index(
    mode: str, mul1: int, mul2: int, mul_out: int, base: int | None, one: int, zero: int
):
    """Where each kernel weight of a path comes from: ``[*kernel path shape]`` int64.

    Entries index the user's flat weight extended by two constants (``one``, ``zero``);
    ``base`` is the path's offset in the user's weight (None: unweighted, every
    non-zero kernel weight is the constant 1).
    """
    shape = _path_shape(mode, mul1, mul2, mul_out)
    user = (
        torch.arange(math.prod(shape)).reshape(shape) + base
        if base is not None
        else torch.full(shape, one, dtype=torch.int64)
    )
    u = torch.arange(mul1)
    if mode in ("uvw", "uvu"):
        return user
    if mode == "uuu":  # uvu kernel: w[u, v] = user[u] if u == v
        idx = torch.full((mul1, mul2), zero, dtype=torch.int64)
        idx[u, u] = user
        return idx
    idx = torch.full((mul1, mul2, mul_out), zero, dtype=torch.int64)
    v = torch.arange(mul2)
    if mode == "uvv":  # w[u, v, w] = user[u, v] if v == w
        idx[:, v, v] = user
    elif mode == "uuw":  # w[u, v, w] = user[u, w] if u == v
        idx[u, u, :] = user
    else:  # uvuv: w[u, v, w] = user[u, v] if w == u * mul2 + v
        uu, vv = torch.meshgrid(u, v, indexing="ij")
        idx[uu, vv, uu * mul2 + vv] = user
    return idx


class TPPlan:
    """Checked instructions, path weights, weight layout and sparse CG tables.

    Args:
        irreps_in1, irreps_in2, irreps_out: anything ``e3nn.o3.Irreps`` accepts.
        instructions: ``(i_in1, i_in2, i_out, mode, has_weight[, path_weight])``.
        irrep_normalization: ``"component"`` (e3nn default), ``"norm"`` or ``"none"``.
        path_normalization: ``"element"`` (e3nn default), ``"path"`` or ``"none"``.
        in1_var, in2_var, out_var: per-irrep variances (default 1), as in e3nn.

    Raises:
        ValueError: an instruction with an index out of range, a parity or triangle
            violation, an unsupported mode, or a zero multiplicity where the mode
            needs matching multiplicities; the message names the instruction.
    """

    def __init__(
        self,
        irreps_in1: o3.Irreps | str,
        irreps_in2: o3.Irreps | str,
        irreps_out: o3.Irreps | str,
        instructions: Sequence[tuple],
        irrep_normalization: str = "component",
        path_normalization: str = "element",
        in1_var: Sequence[float] | None = None,
        in2_var: Sequence[float] | None = None,
        out_var: Sequence[float] | None = None,
    ) -> None:
        self.irreps_in1 = o3.Irreps(irreps_in1)
        self.irreps_in2 = o3.Irreps(irreps_in2)
        self.irreps_out = o3.Irreps(irreps_out)
        if irrep_normalization not in IRREP_NORMALIZATIONS:
            raise ValueError(
                f"irrep_normalization={irrep_normalization!r}: choose one of {', '.join(IRREP_NORMALIZATIONS)}"
            )
        if path_normalization not in PATH_NORMALIZATIONS:
            raise ValueError(
                f"path_normalization={path_normalization!r}: choose one of {', '.join(PATH_NORMALIZATIONS)}"
            )
        self.irrep_normalization = irrep_normalization
        self.path_normalization = path_normalization
        var1 = _variances(in1_var, self.irreps_in1, "in1_var")
        var2 = _variances(in2_var, self.irreps_in2, "in2_var")
        var_out = _variances(out_var, self.irreps_out, "out_var")

        raw = [self._check(k, ins) for k, ins in enumerate(instructions)]
        self.instructions: tuple[Instruction, ...] = tuple(
            self._normalised(ins, raw, var1, var2, var_out) for ins in raw
        )
        self.weight_numel = sum(math.prod(i.path_shape) for i in self.instructions if i.has_weight)

    # -- construction -------------------------------------------------------------------
    def _check(self, k: int, ins: tuple) -> tuple:
        if len(ins) not in (5, 6):
            raise ValueError(
                f"instruction {k} {ins!r}: expected (i_in1, i_in2, i_out, mode, has_weight[, path_weight])"
            )
        i1, i2, io, mode, has_weight = ins[:5]
        weight = float(ins[5]) if len(ins) == 6 else 1.0
        for name, idx, irreps in (
            ("i_in1", i1, self.irreps_in1),
            ("i_in2", i2, self.irreps_in2),
            ("i_out", io, self.irreps_out),
        ):
            if not isinstance(idx, int) or not 0 <= idx < len(irreps):
                raise ValueError(f"instruction {k} {ins!r}: {name}={idx!r} is not an index into {irreps}")
        if mode not in MODES:
            raise ValueError(
                f"instruction {k} {ins!r}: mode {mode!r} is not supported (geo3d kernels: {', '.join(MODES)})"
            )
        if mode == "uvw" and not has_weight:
            raise ValueError(f"instruction {k} {ins!r}: mode 'uvw' needs has_weight=True (as in e3nn)")
        (mul1, ir1), (_, ir2), (mul_out, ir_out) = (
            self.irreps_in1[i1],
            self.irreps_in2[i2],
            self.irreps_out[io],
        )
        if ir1.p * ir2.p != ir_out.p:
            raise ValueError(f"instruction {k}: {ir1} x {ir2} -> {ir_out} breaks parity")
        if not abs(ir1.l - ir2.l) <= ir_out.l <= ir1.l + ir2.l:
            raise ValueError(f"instruction {k}: {ir1} x {ir2} -> {ir_out} breaks the triangle rule")
        mul2 = self.irreps_in2[i2].mul
        need = {
            "uvu": (mul1 == mul_out, "mul(in1)=mul(out)"),
            "uvv": (mul2 == mul_out, "mul(in2)=mul(out)"),
            "uuw": (
                mul1 == mul2 and (has_weight or mul_out == 1),
                "mul(in1)=mul(in2) (and mul(out)=1 unweighted)",
            ),
            "uuu": (mul1 == mul2 == mul_out, "mul(in1)=mul(in2)=mul(out)"),
            "uvuv": (mul1 * mul2 == mul_out, "mul(in1)*mul(in2)=mul(out)"),
        }
        if mode in need and not need[mode][0]:
            raise ValueError(
                f"instruction {k}: mode {mode!r} needs {need[mode][1]}, got "
                f"{mul1}x{ir1} x {mul2}x{ir2} -> {mul_out}x{ir_out}"
            )
        return (i1, i2, io, mode, bool(has_weight), weight)

    def _normalised(self, ins, raw, var1, var2, var_out) -> Instruction:
        i1, i2, io, mode, has_weight, weight = ins
        mul1, ir1 = self.irreps_in1[i1]
        mul2, ir2 = self.irreps_in2[i2]
        mul_out, ir_out = self.irreps_out[io]
        alpha = {"component": ir_out.dim, "norm": ir1.dim * ir2.dim, "none": 1}[self.irrep_normalization]
        if self.path_normalization == "element":
            x = sum(
                var1[r[0]]
                * var2[r[1]]
                * _num_elements(r[3], self.irreps_in1[r[0]].mul, self.irreps_in2[r[1]].mul)
                for r in raw
                if r[2] == io
            )
        elif self.path_normalization == "path":
            x = var1[i1] * var2[i2] * _num_elements(mode, mul1, mul2)
            x *= sum(1 for r in raw if r[2] == io)
        else:
            x = 1
        if x > 0:
            alpha /= x
        alpha *= var_out[io] * weight
        shape = _path_shape(mode, mul1, mul2, mul_out) if has_weight else ()
        return Instruction(i1, i2, io, mode, has_weight, math.sqrt(alpha), shape)

    # -- what the kernels read -----------------------------------------------------------
    @functools.cached_property
    def tables(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(paths [P, 13] int64, cg_index [nnz, 3] int64, cg_value [nnz] float64, path_weight [P] float64)``.

        ``cg_index`` rows are ``(i, j, k)`` with ``C[i, j, k] != 0`` for the path's
        ``wigner_3j(l1, l2, l3)``; paths with ``has_weight=False`` have ``W_OFF = -1``.
        """
        s1, s2, so = self.irreps_in1.slices(), self.irreps_in2.slices(), self.irreps_out.slices()
        rows, idx, val, pw = [], [], [], []
        w_off = 0
        for ins, kernel_shape in zip(self.instructions, self._kernel_shapes, strict=True):
            (mul1, ir1), (mul2, ir2), (mul_out, ir3) = (
                self.irreps_in1[ins.i_in1],
                self.irreps_in2[ins.i_in2],
                self.irreps_out[ins.i_out],
            )
            i, j, k, v = sparse_wigner_3j(ir1.l, ir2.l, ir3.l)
            start = sum(len(x) for x in idx)
            idx.append(torch.stack([i, j, k], dim=1))
            val.append(v)
            rows.append(
                [
                    MODE_CODE[KERNEL_MODE[ins.mode]],
                    ir1.l,
                    ir2.l,
                    ir3.l,
                    mul1,
                    mul2,
                    mul_out,
                    s1[ins.i_in1].start,
                    s2[ins.i_in2].start,
                    so[ins.i_out].start,
                    w_off if kernel_shape else -1,
                    start,
                    start + len(v),
                ]
            )
            pw.append(ins.path_weight)
            w_off += math.prod(kernel_shape) if kernel_shape else 0
        paths = torch.tensor(rows, dtype=torch.int64).reshape(-1, NUM_PATH_FIELDS)
        cg_index = torch.cat(idx) if idx else torch.zeros(0, 3, dtype=torch.int64)
        cg_value = torch.cat(val) if val else torch.zeros(0, dtype=torch.float64)
        return paths, cg_index, cg_value, torch.tensor(pw, dtype=torch.float64)

    @functools.cached_property
    def _kernel_shapes(self) -> list[tuple[int, ...]]:
        # A path's block of the kernels' weight: () when the kernel reads no weight (an
        # unweighted uvu path); paths of the other modes always read one (their structure).
        out = []
        for ins in self.instructions:
            mul1, mul2, mul_out = (
                self.irreps_in1[ins.i_in1].mul,
                self.irreps_in2[ins.i_in2].mul,
                self.irreps_out[ins.i_out].mul,
            )
            kmode = KERNEL_MODE[ins.mode]
            weighted = ins.has_weight or kmode != ins.mode
            out.append(_path_shape(kmode, mul1, mul2, mul_out) if weighted else ())
        return out

    @functools.cached_property
    def kernel_weight_numel(self) -> int:
        """Length of the weight the kernels read (``weight_numel`` unless modes other than uvw/uvu are used)."""
        return sum(math.prod(shape) for shape in self._kernel_shapes if shape)

    @functools.cached_property
    def kernel_weight_index(self) -> torch.Tensor | None:
        """``[kernel_weight_numel]`` int64 into ``cat([weight, 1, 0], -1)``; None when it is the identity.

        The kernels' weight is ``kernel_weights(weight, index)``: a gather, so it is
        differentiable to every order and ``weight``'s gradient is the sum over the
        kernel weights it feeds.
        """
        if all(KERNEL_MODE[ins.mode] == ins.mode for ins in self.instructions):
            return None
        one, zero = self.weight_numel, self.weight_numel + 1
        parts, off = [], 0
        for ins, kernel_shape in zip(self.instructions, self._kernel_shapes, strict=True):
            if not kernel_shape:
                continue
            mul1, mul2, mul_out = (
                self.irreps_in1[ins.i_in1].mul,
                self.irreps_in2[ins.i_in2].mul,
                self.irreps_out[ins.i_out].mul,
            )
            base = off if ins.has_weight else None
            parts.append(_kernel_weight_index(ins.mode, mul1, mul2, mul_out, base, one, zero).reshape(-1))
            off += math.prod(ins.path_shape) if ins.has_weight else 0
        return torch.cat(parts)

    def weight_views(self, weight: torch.Tensor) -> list[torch.Tensor | None]:
        """Per instruction, its block of ``weight [..., weight_numel]`` shaped ``[..., *path_shape]``."""
        out, off = [], 0
        for ins in self.instructions:
            if not ins.has_weight:
                out.append(None)
                continue
            n = math.prod(ins.path_shape)
            out.append(weight[..., off : off + n].reshape(*weight.shape[:-1], *ins.path_shape))
            off += n
        return out

    def __repr__(self) -> str:
        return (
            f"TPPlan({self.irreps_in1} x {self.irreps_in2} -> {self.irreps_out}, "
            f"{len(self.instructions)} paths, weight_numel={self.weight_numel})"
        )


def _variances(var: Sequence[float] | None, irreps: o3.Irreps, name: str) -> list[float]:
    if var is None:
        return [1.0] * len(irreps)
    var = [float(v) for v in var]
    if len(var) != len(irreps):
        raise ValueError(f"{name} has {len(var)} entries, {irreps} has {len(irreps)} irreps")
    return var


@functools.cache
def sparse_wigner_3j(
    l1: int, l2: int, l3: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Non-zeros of ``wigner_3j(l1, l2, l3)``: ``(i, j, k, value)``, sorted by (i, j, k)."""
    c = dense_wigner_3j(l1, l2, l3)
    nz = (c.abs() > 1e-14).nonzero()
    i, j, k = nz.unbind(1)
    return i, j, k, c[i, j, k]


def kernel_weights(weight: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """The kernels' weight ``[..., kernel_weight_numel]`` from the user's ``[..., weight_numel]``."""
    if index is None:
        return weight
    lead = weight.shape[:-1]
    constants = torch.tensor([1.0, 0.0], dtype=weight.dtype, device=weight.device).expand(*lead, 2)
    return torch.cat([weight, constants], dim=-1)[..., index]
