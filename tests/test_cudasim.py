"""The CUDA kernels on the host simulator (cuda_ext/cudasim): the simulator itself, then the
tensor-product kernels (tensor_product_cuda_kernels.cu) and their launch code.

geo3d._cudasim is the unchanged ``.cu`` files and ``*_cuda.cpp`` bindings compiled with g++
against the simulator's CUDA runtime: GPU threads are fibers that run to their next
barrier in a seeded random order, so a thread routinely runs ahead of its warp and a
missing barrier or a race shows up as a wrong result. The radius graph, kNN and FPS
kernels run on it through the backend-parametrised tests of test_radius_graph.py and
test_point_ops.py and in test_cudasim_graph.py; the TP kernels also run through every
test of test_tensor_product.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from e3nn import o3
from helpers import random_tp_plan

from geo3d.o3 import TPPlan
from geo3d.ops import backend_status
from geo3d.ops.tp_reference import (
    tensor_product_backward_reference,
    tensor_product_conv_backward_reference,
    tensor_product_conv_reference,
    tensor_product_reference,
)

SIM_OK, SIM_WHY = backend_status()["cudasim"]
pytestmark = [pytest.mark.cudasim, pytest.mark.skipif(not SIM_OK, reason=SIM_WHY)]
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}  # test_tensor_product.py's


@pytest.fixture(autouse=True)
def _fresh_simulator(sim):
    """Every test starts on the default simulated device (conftest's ``sim``)."""


def _ops():
    return torch.ops.geo3d_cudasim


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    if b.numel() == 0:
        return 0.0
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def _close(got, want, dtype, what):
    got = got if isinstance(got, tuple | list) else [got]
    want = want if isinstance(want, tuple | list) else [want]
    assert len(got) == len(want), what
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        assert a.shape == b.shape and a.dtype == b.dtype, (
            f"{what}[{i}]: {a.shape} {a.dtype} vs {b.shape} {b.dtype}"
        )
        assert _rel_err(a, b) < TOL[dtype], f"{what}[{i}]: {_rel_err(a, b):.2e}"


# ----------------------------------------------------------------------------- the simulator


def test_cudasim_is_built_wherever_the_cpu_backend_is():
    # Both come from `make install`; a missing simulator would silently skip the kernels' tests.
    assert SIM_OK or not backend_status()["cpu"][0], SIM_WHY


@pytest.mark.parametrize("seed", range(3))
def test_a_barrier_orders_shared_memory_and_its_absence_is_caught(sim, seed):
    sim.configure(seed=seed)
    x = torch.arange(300, dtype=torch.float32)
    want = torch.cat([x[:128].flip(0), x[128:256].flip(0)])
    assert torch.equal(sim.selftest_reverse(x, True)[:256], want)
    # Without __syncthreads a thread reads tile slots that later threads have not written yet.
    assert not torch.equal(sim.selftest_reverse(x, False)[:256], want)


def test_warp_shuffles_and_votes_match_their_definitions(sim):
    x = torch.randint(-5, 6, (128,), dtype=torch.int32, generator=torch.Generator().manual_seed(0))
    x[32:64] = torch.randint(1, 4, (32,), dtype=torch.int32)  # a warp where all() holds
    out = sim.selftest_warp_ops(x, 64).numpy()
    v = x.numpy().astype(np.int64).reshape(-1, 32)
    lane = np.arange(32)
    for w in range(v.shape[0]):
        o = out[32 * w : 32 * w + 32]
        assert (o[:, 0] == v[w].sum()).all(), "xor butterfly sum"
        assert (o[:, 1] == v[w][np.where(lane + 1 < 32, lane + 1, lane)]).all(), "shfl_down"
        assert (o[:, 2] == v[w][np.where(lane >= 3, lane - 3, lane)]).all(), "shfl_up"
        assert (o[:, 3] == v[w][5]).all(), "shfl (broadcast)"
        ballot = sum(1 << int(i) for i in lane if v[w][i] > 0)
        assert (o[:, 4] == ballot).all(), "ballot"
        assert (o[:, 5] == int((v[w] > 0).any())).all() and (o[:, 6] == int((v[w] > 0).all())).all()
        assert (o[:, 7] == v[w][lane ^ 1]).all(), "shfl_xor in segments of 8"
    assert out[32:64, 6].all()


def test_atomics_are_atomic_across_concurrent_blocks(sim):
    sim.configure(workers=2)  # blocks on two OS threads at once
    blocks, threads = 48, 256
    n = blocks * threads
    assert sim.selftest_atomics(blocks, threads) == (n, n * (n - 1) / 2, n - 1)


@pytest.mark.parametrize(
    ("misuse", "match"),
    [
        ("divergent_syncthreads", "divergent __syncthreads"),
        ("exited_lane_shuffle", "exited"),
        ("deadlock", "deadlock"),
        ("block_too_large", "outside the device's limits"),
        ("empty_grid", r"grid \(0,1,1\)"),
    ],
)
def test_misuse_of_the_execution_model_fails_the_launch(sim, misuse, match):
    with pytest.raises(RuntimeError, match=match):
        sim.selftest_misuse(misuse)


def test_dynamic_shared_memory_limits_guard_and_poison(sim):
    assert math.isnan(sim.selftest_shared_memory(1024, 0, 10, False))  # never written: poisoned
    assert sim.selftest_shared_memory(1024, 1024, 10, False) == 0.0
    with pytest.raises(RuntimeError, match="wrote past its 1024 bytes"):
        sim.selftest_shared_memory(1024, 1025, 0, False)
    with pytest.raises(RuntimeError, match="may use 49152"):  # above 48 KiB needs the opt-in
        sim.selftest_shared_memory(60_000, 1, 0, False)
    assert sim.selftest_shared_memory(60_000, 60_000, 0, True) == 0.0
    with pytest.raises(RuntimeError, match="opt-in limit"):
        sim.selftest_shared_memory(300_000, 1, 0, True)
    with pytest.raises(RuntimeError, match="schedule must be"):
        sim.configure(schedule="sideways")


# ----------------------------------------------------------------------------- tensor product


def _tp_inputs(plan: TPPlan, z: int, dtype, shared: bool, seed: int, stride: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x1 = torch.randn(z, plan.irreps_in1.dim, generator=gen, dtype=dtype)
    x2 = torch.randn(z, plan.irreps_in2.dim, generator=gen, dtype=dtype)
    shape = (plan.weight_numel,) if shared else (z, plan.weight_numel + stride)
    w = torch.randn(*shape, generator=gen, dtype=dtype)
    g = torch.randn(z, plan.irreps_out.dim, generator=gen, dtype=dtype)
    return x1, x2, w, g


def _check_tp(plan: TPPlan, x1, x2, w, g, dtype, what):
    paths, _, _, path_weight = plan.tables
    dim_out = plan.irreps_out.dim
    got = _ops().tp_forward(x1, x2, w, *plan.tables, dim_out)
    _close(
        got,
        tensor_product_reference(x1, x2, w[..., : plan.weight_numel], paths, path_weight, dim_out),
        dtype,
        what,
    )
    got_b = _ops().tp_backward(x1, x2, w, g, *plan.tables)
    want = tensor_product_backward_reference(x1, x2, w[..., : plan.weight_numel], g, paths, path_weight)
    _close(got_b[:2], want[:2], dtype, what + " backward")
    _close(got_b[2][..., : plan.weight_numel], want[2], dtype, what + " weight gradient")
    return got, got_b


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("seed", range(3))
def test_tp_kernels_match_the_reference(dtype, shared, seed):
    """Random plans: uvu and uvw (shared uvw too, which the Python wrapper sends to GEMMs),
    unweighted paths, channel counts 1, 3, 33 and 40 (lane loops below and above a warp),
    per-row weights with a row stride above weight_numel; 37 rows = 10 blocks of 4 warps."""
    plan = random_tp_plan(seed, max_mul=40, lmax=2)
    x1, x2, w, g = _tp_inputs(plan, 37, dtype, shared, seed, stride=3)
    _check_tp(plan, x1, x2, w, g, dtype, f"plan {seed}")


def test_tp_every_l1_l2_l3_family():
    """Every (l1, l2, l3) with l <= 3 as uvu (the families the CPU kernel unrolls) and as uvw."""
    irreps = o3.Irreps("3x0e+3x1o+3x2e+3x3o")
    for mode in ("uvu", "uvw"):
        ins = [
            (a, b, c, mode, True, 1.0)
            for a, (_, r1) in enumerate(irreps)
            for b, (_, r2) in enumerate(irreps)
            for c, (_, ro) in enumerate(irreps)
            if ro in r1 * r2
        ]
        assert {(irreps[a].ir.l, irreps[c].ir.l) for a, _, c, *_ in ins} == {
            (p, q) for p in range(4) for q in range(4)
        }
        plan = TPPlan(irreps, irreps, irreps, ins)
        x1, x2, w, g = _tp_inputs(plan, 5, torch.float64, False, 0)
        _check_tp(plan, x1, x2, w, g, torch.float64, mode)


def _conv_case(plan: TPPlan, n: int, e: int, dtype, shared: bool, seed: int):
    gen = torch.Generator().manual_seed(seed)
    ei = torch.randint(0, n - 2, (2, e), generator=gen)  # nodes n-2, n-1: no edges at all
    ei[:, -4:] = ei[:, :4]  # repeated edges
    x = torch.randn(n, plan.irreps_in1.dim, generator=gen, dtype=dtype)
    sh = torch.randn(e, plan.irreps_in2.dim, generator=gen, dtype=dtype)
    w = torch.randn(*((plan.weight_numel,) if shared else (e, plan.weight_numel)), generator=gen, dtype=dtype)
    g = torch.randn(n, plan.irreps_out.dim, generator=gen, dtype=dtype)
    return x, sh, w, ei, g


def _check_conv(plan, x, sh, w, ei, g, dtype, what):
    paths, _, _, path_weight = plan.tables
    dim_out = plan.irreps_out.dim
    got = _ops().tp_conv_forward(x, sh, w, ei, *plan.tables, dim_out)
    _close(got, tensor_product_conv_reference(x, sh, w, ei, paths, path_weight, dim_out), dtype, what)
    got_b = _ops().tp_conv_backward(x, sh, w, ei, g, *plan.tables)
    want_b = tensor_product_conv_backward_reference(x, sh, w, ei, g, paths, path_weight)
    _close(got_b, want_b, dtype, what + " backward")
    return got, got_b


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shared", [False, True])
def test_conv_kernels_match_the_reference(dtype, shared):
    """Receivers and senders straddle block boundaries (23 nodes: 6 blocks of 4 warps), two
    nodes have no edges, some edges repeat."""
    plan = random_tp_plan(7, max_mul=33, lmax=2)
    x, sh, w, ei, g = _conv_case(plan, 23, 70, dtype, shared, 1)
    got, _ = _check_conv(plan, x, sh, w, ei, g, dtype, "conv")
    assert torch.all(got[-2:] == 0)


def test_results_do_not_depend_on_the_schedule(sim):
    """Every output element has one writer in a fixed order: bitwise the same under any
    schedule (random seeds, index order and its reverse, blocks on two OS threads)."""
    plan = random_tp_plan(4, max_mul=33, lmax=2)
    x, sh, w, ei, g = _conv_case(plan, 15, 40, torch.float32, True, 2)
    runs = []
    for kw in (
        dict(seed=0),
        dict(seed=1),
        dict(schedule="forward"),
        dict(schedule="reverse"),
        dict(workers=2),
    ):
        sim.configure(**kw)
        runs.append(
            (
                _ops().tp_conv_forward(x, sh, w, ei, *plan.tables, plan.irreps_out.dim),
                *_ops().tp_conv_backward(x, sh, w, ei, g, *plan.tables),
            )
        )
    for run in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0], run, strict=True))


def test_empty_inputs_and_no_paths():
    plan = random_tp_plan(3, max_mul=8, lmax=1)
    dim_out = plan.irreps_out.dim
    x = torch.randn(6, plan.irreps_in1.dim, dtype=torch.float64)
    sh = torch.randn(0, plan.irreps_in2.dim, dtype=torch.float64)
    w = torch.randn(0, plan.weight_numel, dtype=torch.float64)
    none = torch.zeros(2, 0, dtype=torch.long)
    y = _ops().tp_conv_forward(x, sh, w, none, *plan.tables, dim_out)
    assert y.shape == (6, dim_out) and torch.all(y == 0)
    gx, gsh, gw = _ops().tp_conv_backward(
        x, sh, w, none, torch.randn(6, dim_out, dtype=torch.float64), *plan.tables
    )
    assert torch.all(gx == 0) and gsh.shape == (0, plan.irreps_in2.dim) and gw.shape == w.shape
    assert _ops().tp_forward(x[:0], sh, w, *plan.tables, dim_out).shape == (0, dim_out)
    paths, cg_index, cg_value, path_weight = plan.tables
    x2 = torch.randn(6, plan.irreps_in2.dim, dtype=torch.float64)
    y = _ops().tp_forward(
        x,
        x2,
        torch.randn(6, plan.weight_numel, dtype=torch.float64),
        paths[:0],
        cg_index,
        cg_value,
        path_weight[:0],
        dim_out,
    )
    assert torch.all(y == 0)


def _wide_plan(mul: int) -> TPPlan:
    i1 = o3.Irreps(f"{mul}x0e+{mul}x1o")
    i2 = o3.Irreps("0e+1o")
    ins, out = [], []
    for a, (_, r1) in enumerate(i1):
        for b, (_, r2) in enumerate(i2):
            for ro in r1 * r2:
                if ro.l <= 1:
                    ins.append((a, b, len(out), "uvu", True))
                    out.append((mul, ro))
    return TPPlan(i1, i2, o3.Irreps(out), ins)


@pytest.mark.parametrize(
    ("mul", "smem_optin", "path"),
    [
        (120, 232448, "4 warps in more than 48 KiB: the launch opts in (cudaFuncSetAttribute)"),
        (120, 49152, "2 warps per block: 4 do not fit the opt-in limit"),
        (400, 49152, "one warp's row exceeds shared memory: work spaces in global memory"),
    ],
)
def test_launch_shapes_for_large_rows(sim, mul, smem_optin, path):
    sim.configure(smem_optin=smem_optin)
    plan = _wide_plan(mul)
    x1, x2, w, g = _tp_inputs(plan, 9, torch.float64, False, 5)
    _check_tp(plan, x1, x2, w, g, torch.float64, path)
    x, sh, wc, ei, gc = _conv_case(plan, 9, 14, torch.float64, False, 6)
    _check_conv(plan, x, sh, wc, ei, gc, torch.float64, path + " (conv)")


def test_shared_weight_gradient_units():
    """Shared-weight gradients are summed per unit of items, then over units in order: more
    rows than the 2048 units (several rows a unit), and nw large enough that the partial
    buffer caps the units below 2048."""
    for irreps, rows in (("2x0e+2x1o", 2100), ("100x0e", 1700)):
        i = o3.Irreps(irreps)
        ins = [(a, 0, a, "uvw", True) for a in range(len(i))]
        plan = TPPlan(i, o3.Irreps("0e"), i, ins)
        x1, x2, w, g = _tp_inputs(plan, rows, torch.float64, True, 3)
        _check_tp(plan, x1, x2, w, g, torch.float64, f"{irreps} x {rows} rows")
