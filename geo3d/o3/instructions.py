"""Instruction lists of the two common tensor-product layouts, in e3nn's format
``(i_in1, i_in2, i_out, mode, has_weight[, path_weight])``, for :class:`geo3d.o3.TPPlan`."""

from __future__ import annotations

from e3nn import o3


def fully_connected_instructions(
    irreps_in1: o3.Irreps | str, irreps_in2: o3.Irreps | str, irreps_out: o3.Irreps | str
) -> list[tuple]:
    """e3nn's ``FullyConnectedTensorProduct`` instructions: every allowed path, ``uvw``, weighted."""
    irreps_in1, irreps_in2, irreps_out = o3.Irreps(irreps_in1), o3.Irreps(irreps_in2), o3.Irreps(irreps_out)
    return [
        (i1, i2, io, "uvw", True, 1.0)
        for i1, (_, ir1) in enumerate(irreps_in1)
        for i2, (_, ir2) in enumerate(irreps_in2)
        for io, (_, ir_out) in enumerate(irreps_out)
        if ir_out in ir1 * ir2
    ]


def channelwise_instructions(
    irreps_in1: o3.Irreps | str, irreps_in2: o3.Irreps | str, irreps_out: o3.Irreps | str
) -> tuple[o3.Irreps, list[tuple]]:
    """MACE's ``tp_out_irreps_with_instructions``: ``uvu`` paths into the requested output irreps.

    Every ``in1 x in2`` product whose irrep appears in ``irreps_out`` becomes an
    output block of multiplicity ``mul(in1)`` (``uvu`` sums over ``v``); the blocks are sorted by
    irrep (as MACE does) and the instructions re-indexed. Returns ``(irreps_out, instructions)``.
    """
    irreps_in1, irreps_in2 = o3.Irreps(irreps_in1), o3.Irreps(irreps_in2)
    wanted = {ir for _, ir in o3.Irreps(irreps_out)}
    blocks, raw = [], []
    for i1, (mul1, ir1) in enumerate(irreps_in1):
        for i2, (_, ir2) in enumerate(irreps_in2):
            for ir_out in ir1 * ir2:
                if ir_out in wanted:
                    raw.append((i1, i2, len(blocks), "uvu", True))
                    blocks.append((mul1, ir_out))
    irreps, permutation, _ = o3.Irreps(blocks).sort()
    return irreps, [(i1, i2, permutation[io], mode, w) for i1, i2, io, mode, w in raw]
