"""CUDA backend of the tensor-product ops (cuda_ext/tensor_product/tensor_product_cuda*.{cpp,cu}).

Needs a GPU and the CUDA build of ``geo3d._C``; skipped otherwise. The raw ops
(``torch.ops.geo3d.tp_*``) must match the cpu backend's for any path set (shared
``uvw`` included, which the Python wrappers send to GEMMs), both dtypes, per-row and
shared weights, channel counts above a warp, rows too large for shared memory, and
must be bitwise reproducible from run to run.
"""

from __future__ import annotations

import pytest
import torch
from e3nn import o3
from helpers import random_tp_plan

from geo3d.o3 import TPPlan
from geo3d.ops import backend_status

CUDA_OK, CUDA_WHY = backend_status()["cuda"]
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not CUDA_OK, reason=f"cuda backend not available: {CUDA_WHY}"),
]
TOL = {torch.float64: 1e-11, torch.float32: 2e-5}


def _plan(seed: int, max_mul: int = 40, lmax: int = 3) -> TPPlan:
    return random_tp_plan(seed, max_mul, lmax)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.cpu() - b).abs().max() / b.abs().max().clamp_min(1e-30)).item() if b.numel() else 0.0


def _check(got, want, dtype, what):
    assert len(got) == len(want)
    for name, (a, b) in enumerate(zip(got, want, strict=True)):
        assert a.device.type == "cuda" and a.dtype == b.dtype and a.shape == b.shape, f"{what}[{name}]"
        assert _rel_err(a, b) < TOL[dtype], f"{what}[{name}]: {_rel_err(a, b):.2e}"


def _tables(plan: TPPlan, device: str):
    return [t.to(device) for t in plan.tables]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("seed", range(3))
def test_tp_ops_match_cpu(dtype, shared, seed):
    plan = _plan(seed)
    gen = torch.Generator().manual_seed(seed)
    z = 37
    x1 = torch.randn(z, plan.irreps_in1.dim, generator=gen, dtype=dtype)
    x2 = torch.randn(z, plan.irreps_in2.dim, generator=gen, dtype=dtype)
    shape = (plan.weight_numel,) if shared else (z, plan.weight_numel + 3)  # a row stride above weight_numel
    w = torch.randn(*shape, generator=gen, dtype=dtype)
    g = torch.randn(z, plan.irreps_out.dim, generator=gen, dtype=dtype)
    dim_out = plan.irreps_out.dim
    for tables_on in ("cpu", "cuda"):  # tables may come on either device
        t = _tables(plan, tables_on)
        want = torch.ops.geo3d.tp_forward(x1, x2, w, *plan.tables, dim_out)
        got = torch.ops.geo3d.tp_forward(x1.cuda(), x2.cuda(), w.cuda(), *t, dim_out)
        _check([got], [want], dtype, "tp_forward")
        want = torch.ops.geo3d.tp_backward(x1, x2, w, g, *plan.tables)
        got = torch.ops.geo3d.tp_backward(x1.cuda(), x2.cuda(), w.cuda(), g.cuda(), *t)
        _check(got, want, dtype, "tp_backward")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shared", [False, True])
def test_conv_ops_match_cpu_and_are_reproducible(dtype, shared):
    plan = _plan(7, max_mul=48, lmax=2)
    gen = torch.Generator().manual_seed(1)
    n, e = 50, 400
    ei = torch.randint(0, n - 2, (2, e), generator=gen)  # nodes n-2, n-1: no edges
    ei[:, -5:] = ei[:, :5]  # repeated edges
    x = torch.randn(n, plan.irreps_in1.dim, generator=gen, dtype=dtype)
    sh = torch.randn(e, plan.irreps_in2.dim, generator=gen, dtype=dtype)
    w = torch.randn(*((plan.weight_numel,) if shared else (e, plan.weight_numel)), generator=gen, dtype=dtype)
    g = torch.randn(n, plan.irreps_out.dim, generator=gen, dtype=dtype)
    dim_out = plan.irreps_out.dim
    cuda = [t.cuda() for t in (x, sh, w, ei, g)]
    want = torch.ops.geo3d.tp_conv_forward(x, sh, w, ei, *plan.tables, dim_out)
    got = torch.ops.geo3d.tp_conv_forward(*cuda[:4], *plan.tables, dim_out)
    _check([got], [want], dtype, "tp_conv_forward")
    assert torch.all(got[n - 2 :] == 0)
    want_b = torch.ops.geo3d.tp_conv_backward(x, sh, w, ei, g, *plan.tables)
    got_b = torch.ops.geo3d.tp_conv_backward(*cuda, *plan.tables)
    _check(got_b, want_b, dtype, "tp_conv_backward")
    again = torch.ops.geo3d.tp_conv_forward(*cuda[:4], *plan.tables, dim_out)
    again_b = torch.ops.geo3d.tp_conv_backward(*cuda, *plan.tables)
    assert torch.equal(got, again) and all(torch.equal(a, b) for a, b in zip(got_b, again_b, strict=True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rows_larger_than_shared_memory(dtype):
    # ~50k elements of work space per row: beyond any GPU's shared memory per block,
    # so the kernels run on their global work-space fallback.
    i1 = o3.Irreps("512x0e+512x1o+512x2e+512x3o")
    i2 = o3.Irreps("0e+1o+2e+3o")
    ins, out = [], []
    for a, (mul, r1) in enumerate(i1):
        for b, (_, r2) in enumerate(i2):
            for ro in r1 * r2:
                ins.append((a, b, len(out), "uvu", True))
                out.append((mul, ro))
    plan = TPPlan(i1, i2, o3.Irreps(out), ins)
    gen = torch.Generator().manual_seed(2)
    z = 3
    x1 = torch.randn(z, i1.dim, generator=gen, dtype=dtype)
    x2 = torch.randn(z, i2.dim, generator=gen, dtype=dtype)
    w = torch.randn(z, plan.weight_numel, generator=gen, dtype=dtype)
    g = torch.randn(z, plan.irreps_out.dim, generator=gen, dtype=dtype)
    want = torch.ops.geo3d.tp_forward(x1, x2, w, *plan.tables, plan.irreps_out.dim)
    got = torch.ops.geo3d.tp_forward(x1.cuda(), x2.cuda(), w.cuda(), *plan.tables, plan.irreps_out.dim)
    _check([got], [want], dtype, "tp_forward")
    want = torch.ops.geo3d.tp_backward(x1, x2, w, g, *plan.tables)
    got = torch.ops.geo3d.tp_backward(x1.cuda(), x2.cuda(), w.cuda(), g.cuda(), *plan.tables)
    _check(got, want, dtype, "tp_backward")


def test_side_stream_and_empty_inputs():
    plan = _plan(3)
    dim_out = plan.irreps_out.dim
    x = torch.randn(20, plan.irreps_in1.dim, dtype=torch.float64)
    sh = torch.randn(60, plan.irreps_in2.dim, dtype=torch.float64)
    w = torch.randn(60, plan.weight_numel, dtype=torch.float64)
    ei = torch.randint(0, 20, (2, 60))
    want = torch.ops.geo3d.tp_conv_forward(x, sh, w, ei, *plan.tables, dim_out)
    args = [t.cuda() for t in (x, sh, w, ei)]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        got = torch.ops.geo3d.tp_conv_forward(*args, *plan.tables, dim_out)
    stream.synchronize()
    _check([got], [want], torch.float64, "tp_conv_forward on a side stream")
    # No edges, no rows, no paths.
    none = torch.zeros(2, 0, dtype=torch.long, device="cuda")
    y = torch.ops.geo3d.tp_conv_forward(args[0], args[1][:0], args[2][:0], none, *plan.tables, dim_out)
    assert y.shape == (20, dim_out) and torch.all(y == 0)
    y = torch.ops.geo3d.tp_forward(args[0][:0], args[1][:0], args[2][:0], *plan.tables, dim_out)
    assert y.shape == (0, dim_out)
    paths, cg_index, cg_value, path_weight = plan.tables
    no_paths = (paths[:0], cg_index, cg_value, path_weight[:0])
    y = torch.ops.geo3d.tp_forward(args[0], args[1][:20], args[2][:20], *no_paths, dim_out)
    assert torch.all(y == 0)
