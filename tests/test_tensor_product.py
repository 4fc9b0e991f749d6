"""TensorProduct / TensorProductConv against e3nn, the reference, finite differences and symmetry."""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch
from e3nn import o3
from helpers import KERNEL_BACKEND_NAMES, KERNEL_BACKENDS_HERE, NATIVE_BACKENDS_HERE

from geo3d.nn import (
    ChannelWiseTensorProduct,
    ChannelWiseTensorProductConv,
    FullyConnectedTensorProduct,
    TensorProduct,
    TensorProductConv,
)
from geo3d.o3 import TPPlan
from geo3d.ops.tensor_product import tensor_product, tensor_product_conv

BACKENDS = ["reference", *KERNEL_BACKENDS_HERE]
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def random_irreps(rng: random.Random, lmax: int, max_mul: int, n: int) -> o3.Irreps:
    return o3.Irreps(
        [(rng.randint(1, max_mul), (rng.randint(0, lmax), rng.choice((1, -1)))) for _ in range(n)]
    ).simplify()


def random_problem(seed: int, lmax: int = 3, max_mul: int = 64):
    """Random irreps and instructions: every allowed path, each uvw or uvu, some unweighted."""
    rng = random.Random(seed)
    while True:
        i1 = random_irreps(rng, lmax, max_mul, 3)
        i2 = random_irreps(rng, lmax, 4 if seed % 2 else 1, 2)
        out = random_irreps(rng, lmax, max_mul, 3)
        ins = []
        for a, (m1, r1) in enumerate(i1):
            for b, (_, r2) in enumerate(i2):
                for c, (mo, ro) in enumerate(out):
                    if ro in r1 * r2:
                        mode = "uvu" if m1 == mo and rng.random() < 0.6 else "uvw"
                        weighted = mode == "uvw" or rng.random() < 0.8  # e3nn: uvw is always weighted
                        ins.append((a, b, c, mode, weighted, rng.uniform(0.5, 2.0)))
        if ins:
            return i1, i2, out, ins


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def e3nn_tp(i1, i2, out, ins, shared: bool, dtype, **kw):
    # Built under the target default dtype: e3nn stores its Wigner 3j buffers in the
    # default dtype, and a float32-built module moved to float64 keeps float32 CGs (~1e-8).
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return o3.TensorProduct(i1, i2, out, ins, shared_weights=shared, internal_weights=False, **kw)
    finally:
        torch.set_default_dtype(default)


def compare_all_orders(ours, theirs, inputs, dtype) -> None:
    """Forward, gradients of all inputs, and the gradient of a function of the first gradients."""
    tol = TOL[dtype]
    a = [t.clone().requires_grad_() for t in inputs]
    b = [t.clone().requires_grad_() for t in inputs]
    ya, yb = ours(*a), theirs(*b)
    assert rel_err(ya, yb) < tol, f"forward: {rel_err(ya, yb):.2e}"
    g = torch.randn_like(yb)
    ga = torch.autograd.grad(ya, a, g, create_graph=True)
    gb = torch.autograd.grad(yb, b, g, create_graph=True)
    for name, x, y in zip(("x1", "x2", "w"), ga, gb, strict=True):
        assert rel_err(x, y) < tol, f"grad {name}: {rel_err(x, y):.2e}"
    # A function of the first gradients mixes every second-order term.
    probes = [torch.randn_like(x) for x in gb]
    sa = sum((p * x).sum() + (x**2).sum() for p, x in zip(probes, ga, strict=True))
    sb = sum((p * x).sum() + (x**2).sum() for p, x in zip(probes, gb, strict=True))
    da = torch.autograd.grad(sa, a)
    db = torch.autograd.grad(sb, b)
    for name, x, y in zip(("x1", "x2", "w"), da, db, strict=True):
        assert rel_err(x, y) < tol, f"double backward {name}: {rel_err(x, y):.2e}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("seed", range(4))
def test_matches_e3nn_float64(backend, shared, seed):
    i1, i2, out, ins = random_problem(seed)
    dtype = torch.float64
    ours = TensorProduct(i1, i2, out, ins, shared_weights=shared, internal_weights=False, backend=backend)
    theirs = e3nn_tp(i1, i2, out, ins, shared, dtype)
    assert ours.weight_numel == theirs.weight_numel
    z = 5
    w = torch.randn(theirs.weight_numel) if shared else torch.randn(z, theirs.weight_numel)
    inputs = [torch.randn(z, i1.dim, dtype=dtype), torch.randn(z, i2.dim, dtype=dtype), w.to(dtype)]
    compare_all_orders(ours, theirs, inputs, dtype)


def other_modes_problem(seed: int):
    """Every mode e3nn's kernels and ours share (uvw, uvu, uvv, uuw, uuu, uvuv), weighted or not."""
    rng = random.Random(seed)
    m = rng.randint(2, 5)
    i1 = o3.Irreps(f"{m}x0e+{m}x1o+{m}x2e")
    i2 = o3.Irreps(f"{m}x0e+{m}x1o")
    out = o3.Irreps(f"{m}x0e+{m}x1o+{m}x2e+{m * m}x1e+1x1o+{m}x1e")
    ins = [
        (0, 1, 1, "uvv", True),
        (1, 1, 0, "uvv", False),
        (2, 1, 1, "uuw", True),
        (1, 0, 4, "uuw", False),  # unweighted uuw sums u into one output
        (1, 1, 5, "uuu", True),  # a cross product per channel
        (2, 0, 2, "uuu", False),
        (1, 1, 3, "uvuv", True),
        (0, 0, 0, "uvu", True),
        (2, 1, 1, "uvw", True),
    ]
    return i1, i2, out, [(*t, rng.uniform(0.5, 2.0)) for t in ins]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("seed", range(2))
def test_other_modes_match_e3nn_through_double_backward(backend, shared, seed):
    i1, i2, out, ins = other_modes_problem(seed)
    dtype = torch.float64
    ours = TensorProduct(i1, i2, out, ins, shared_weights=shared, internal_weights=False, backend=backend)
    theirs = e3nn_tp(i1, i2, out, ins, shared, dtype)
    assert ours.weight_numel == theirs.weight_numel
    for a, b in zip(ours.instructions, theirs.instructions, strict=True):
        assert math.isclose(a.path_weight, b.path_weight, rel_tol=1e-14)
    z = 4
    w = torch.randn(theirs.weight_numel) if shared else torch.randn(z, theirs.weight_numel)
    inputs = [torch.randn(z, i1.dim, dtype=dtype), torch.randn(z, i2.dim, dtype=dtype), w.to(dtype)]
    compare_all_orders(ours, theirs, inputs, dtype)


def test_other_modes_without_weights_and_in_the_conv():
    i1, i2, out, ins = other_modes_problem(3)
    unweighted = [(a, b, c, mode, False) for a, b, c, mode, _, _ in ins if mode not in ("uvw", "uuw")]
    ours = TensorProduct(i1, i2, out, unweighted, backend="reference")
    theirs = e3nn_tp(i1, i2, out, unweighted, True, torch.float32)
    assert ours.weight_numel == theirs.weight_numel == 0
    x1, x2 = torch.randn(3, i1.dim), torch.randn(3, i2.dim)
    assert rel_err(ours(x1, x2), theirs(x1, x2)) < 1e-5
    conv = TensorProductConv(
        i1, i2, out, ins, shared_weights=False, backend=(NATIVE_BACKENDS_HERE or ["reference"])[-1]
    )
    x, sh = torch.randn(5, i1.dim), torch.randn(7, i2.dim)
    w = torch.randn(7, conv.weight_numel)
    edge_index = torch.tensor([[0, 1, 2, 3, 4, 0, 2], [1, 1, 0, 4, 4, 3, 3]])
    tp = e3nn_tp(i1, i2, out, ins, False, torch.float32)
    want = torch.zeros(5, out.dim).index_add_(0, edge_index[1], tp(x[edge_index[0]], sh, w))
    assert rel_err(conv(x, sh, w, edge_index), want) < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("low", [torch.float16, torch.bfloat16])
def test_half_precision_runs_in_float32(backend, low):
    """float16/bfloat16 in, same dtype out, computed in float32: equal to the float32 result rounded."""
    i1, i2, out, ins = random_problem(1, lmax=2, max_mul=8)
    tp = TensorProduct(i1, i2, out, ins, shared_weights=False, backend=backend)
    conv = TensorProductConv(i1, i2, out, ins, shared_weights=False, backend=backend)
    x1, x2 = torch.randn(6, i1.dim).to(low), torch.randn(6, i2.dim).to(low)
    w = torch.randn(6, tp.weight_numel).to(low).requires_grad_()
    y = tp(x1, x2, w)
    assert y.dtype == low
    assert torch.equal(y, tp(x1.float(), x2.float(), w.float()).to(low))
    (gw,) = torch.autograd.grad(y.float().square().sum(), w)
    assert gw.dtype == low and torch.isfinite(gw).all()
    edge_index = torch.tensor([[0, 1, 2, 3, 4, 5], [1, 1, 0, 4, 4, 3]])
    y = conv(x1, x2, w, edge_index)
    assert y.dtype == low
    assert torch.equal(y, conv(x1.float(), x2.float(), w.float(), edge_index).to(low))


@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_e3nn_float32_and_l4(backend):
    i1, i2, out = o3.Irreps("4x0e+3x2e+2x4e"), o3.Irreps("0e+1o+4e"), o3.Irreps("3x0e+2x4e+2x3o")
    ins = [
        (a, b, c, "uvw", True)
        for a, (_, r1) in enumerate(i1)
        for b, (_, r2) in enumerate(i2)
        for c, (_, ro) in enumerate(out)
        if ro in r1 * r2
    ]
    for dtype in (torch.float32, torch.float64):
        ours = TensorProduct(i1, i2, out, ins, shared_weights=False, backend=backend).to(dtype)
        theirs = e3nn_tp(i1, i2, out, ins, False, dtype)
        z = 6
        inputs = [torch.randn(z, d, dtype=dtype) for d in (i1.dim, i2.dim, theirs.weight_numel)]
        compare_all_orders(ours, theirs, inputs, dtype)


@pytest.mark.parametrize("irrep_normalization", ["component", "norm", "none"])
@pytest.mark.parametrize("path_normalization", ["element", "path", "none"])
def test_path_weights_are_e3nns(irrep_normalization, path_normalization):
    i1, i2, out, ins = random_problem(7)
    kw = {"irrep_normalization": irrep_normalization, "path_normalization": path_normalization}
    var = {"in1_var": [0.5 + k for k in range(len(i1))], "out_var": [2.0] * len(out)}
    ours = TPPlan(i1, i2, out, ins, **kw, **var)
    theirs = o3.TensorProduct(i1, i2, out, ins, **kw, **var)
    for a, b in zip(ours.instructions, theirs.instructions, strict=True):
        assert math.isclose(a.path_weight, b.path_weight, rel_tol=1e-14)
        assert a.path_shape == (b.path_shape if b.has_weight else ())


def test_fully_connected_matches_e3nn_with_its_weights():
    irreps = o3.Irreps("8x0e+4x1o+2x2e")
    ours = FullyConnectedTensorProduct(irreps, irreps, irreps).double()
    torch.set_default_dtype(torch.float64)
    try:
        theirs = o3.FullyConnectedTensorProduct(irreps, irreps, irreps)
    finally:
        torch.set_default_dtype(torch.float32)
    assert ours.weight_numel == theirs.weight_numel
    ours.weight.data.copy_(theirs.weight.data)  # e3nn's flat layout moves unchanged
    x1, x2 = torch.randn(2, 10, irreps.dim, dtype=torch.float64)
    out = ours(x1.reshape(2, 5, -1), x2.reshape(2, 5, -1))  # leading dims are kept
    assert out.shape == (2, 5, irreps.dim)
    assert rel_err(out.reshape(10, -1), theirs(x1, x2)) < 1e-12


def test_channelwise_instructions_as_mace_builds_them():
    tp = ChannelWiseTensorProduct("32x0e+32x1o+32x2e", "0e+1o+2e", "32x0e+32x1o+32x2e")
    assert str(tp.irreps_out) == "32x0e+32x0e+32x0e+32x1o+32x1o+32x1o+32x1o+32x2e+32x2e+32x2e+32x2e"
    assert all(i.mode == "uvu" and i.has_weight for i in tp.instructions)
    assert not tp.shared_weights and not tp.internal_weights
    for ins in tp.instructions:  # each path lands on an output block of its own irrep
        l1, l2, lo = (tp.irreps_in1[ins.i_in1].ir, tp.irreps_in2[ins.i_in2].ir, tp.irreps_out[ins.i_out].ir)
        assert lo in l1 * l2
    assert len({i.i_out for i in tp.instructions}) == len(tp.instructions)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shared", [True, False])
def test_conv_matches_tp_and_index_add(backend, dtype, shared):
    i1, i2, out, ins = random_problem(3, lmax=2, max_mul=16)
    n, e = 9, 40
    conv = TensorProductConv(i1, i2, out, ins, shared_weights=shared, internal_weights=False, backend=backend)
    tp = TensorProduct(i1, i2, out, ins, shared_weights=shared, internal_weights=False, backend="reference")
    conv, tp = conv.to(dtype), tp.to(dtype)
    # Unsorted edges, a node with no edges at all (8), repeated edges.
    edge_index = torch.randint(0, n - 1, (2, e))
    edge_index[:, -1] = edge_index[:, 0]

    def via_tp(x, sh, w):
        msg = tp(x[edge_index[0]], sh, w)
        return x.new_zeros(n, out.dim).index_add(0, edge_index[1], msg)

    w = torch.randn(conv.weight_numel) if shared else torch.randn(e, conv.weight_numel)
    inputs = [torch.randn(n, i1.dim, dtype=dtype), torch.randn(e, i2.dim, dtype=dtype), w.to(dtype)]
    y = conv(*inputs, edge_index)
    assert torch.all(y[n - 1] == 0)
    compare_all_orders(lambda x, sh, w: conv(x, sh, w, edge_index), via_tp, inputs, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_double_backward_through_the_weight_gradient_with_unweighted_paths(backend):
    """An unweighted path is constant in w: second derivatives of dF/dw must not see it (they did:
    the double backward treated every path as trilinear, 5-17% off e3nn)."""
    i1, i2 = o3.Irreps("2x0e+2x1o"), o3.Irreps("1x0e+1x1o")
    ins = [(0, 0, 0, "uvu", False, 1.0), (0, 1, 1, "uvu", True, 1.0), (1, 0, 1, "uvu", True, 1.0)]
    ins.append((1, 1, 0, "uvu", False, 1.0))
    tp = TensorProduct(i1, i2, i1, ins, shared_weights=False, internal_weights=False, backend=backend)
    inputs = [torch.randn(3, d, dtype=torch.float64, requires_grad=True) for d in (i1.dim, i2.dim)]
    inputs.append(torch.randn(3, tp.weight_numel, dtype=torch.float64, requires_grad=True))
    assert torch.autograd.gradgradcheck(tp, inputs)
    compare_all_orders(tp, e3nn_tp(i1, i2, i1, ins, False, torch.float64), inputs, torch.float64)
    # No weighted path at all: a [Z, 0] weight is accepted (it raised in a reshape).
    none = TensorProduct(i1, i2, i1, [ins[0], ins[3]], shared_weights=False, internal_weights=False)
    assert none(inputs[0], inputs[1], torch.zeros(3, 0, dtype=torch.float64)).shape == (3, i1.dim)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("generic", ["0", "1"])
def test_uvu_conv_every_l1_l3_unrolled_and_generic(backend, generic, monkeypatch):
    """The CPU kernel's uvu paths of l1, l3 <= 3 run on compile-time unrolled loops; GEO3D_TP_GENERIC=1
    keeps them on the generic ones. Both against e3nn: every (l1, l3) pair, weighted and unweighted
    paths, two channels in in2 (w[u, v] strided by mul2), through double backward."""
    monkeypatch.setenv("GEO3D_TP_GENERIC", generic)
    i1 = o3.Irreps("5x0e+5x1o+5x2e+5x3o")
    i2 = o3.Irreps("2x0e+2x1o+2x2e+1x3o")
    ins = [
        (a, b, c, "uvu", (a + b + c) % 4 != 0, 1.0)
        for a, (_, r1) in enumerate(i1)
        for b, (_, r2) in enumerate(i2)
        for c, (_, ro) in enumerate(i1)
        if ro in r1 * r2
    ]
    assert {(i1[a].ir.l, i1[c].ir.l) for a, _, c, *_ in ins} == {(p, q) for p in range(4) for q in range(4)}
    dtype = torch.float64
    n, e = 6, 23
    conv = TensorProductConv(i1, i2, i1, ins, shared_weights=False, internal_weights=False, backend=backend)
    tp = e3nn_tp(i1, i2, i1, ins, False, dtype)
    edge_index = torch.randint(0, n, (2, e))

    def via_e3nn(x, sh, w):
        return x.new_zeros(n, i1.dim).index_add(0, edge_index[1], tp(x[edge_index[0]], sh, w))

    inputs = [torch.randn(n, i1.dim, dtype=dtype), torch.randn(e, i2.dim, dtype=dtype)]
    inputs.append(torch.randn(e, conv.weight_numel, dtype=dtype))
    compare_all_orders(lambda x, sh, w: conv(x, sh, w, edge_index), via_e3nn, inputs, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_conv_with_no_edges_and_order_independence(backend):
    conv = ChannelWiseTensorProductConv("4x0e+4x1o", "0e+1o", "4x0e+4x1o", backend=backend).double()
    x = torch.randn(5, conv.irreps_in1.dim, dtype=torch.float64, requires_grad=True)
    sh = torch.randn(0, 4, dtype=torch.float64)
    w = torch.randn(0, conv.weight_numel, dtype=torch.float64)
    y = conv(x, sh, w, torch.zeros(2, 0, dtype=torch.long))
    assert y.shape == (5, conv.irreps_out.dim) and torch.all(y == 0)
    (gx,) = torch.autograd.grad(y.sum(), x)
    assert torch.all(gx == 0)
    # Permuting the edges permutes nothing in the result (up to summation order).
    ei = torch.randint(0, 5, (2, 30))
    sh, w = torch.randn(30, 4, dtype=torch.float64), torch.randn(30, conv.weight_numel, dtype=torch.float64)
    perm = torch.randperm(30)
    a = conv(x, sh, w, ei)
    b = conv(x, sh[perm], w[perm], ei[:, perm])
    assert rel_err(a, b) < 1e-13


@pytest.fixture
def float64_default():
    """e3nn builds Wigner D (and 3j) matrices in the default dtype: float32 would cap accuracy at ~1e-7."""
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_equivariance_with_parity(backend, float64_default):
    i1, i2, out, ins = random_problem(5, lmax=3, max_mul=6)
    tp = TensorProduct(i1, i2, out, ins, backend=backend).double()
    x1, x2 = torch.randn(4, i1.dim, dtype=torch.float64), torch.randn(4, i2.dim, dtype=torch.float64)
    for inversion in (False, True):
        rot = o3.rand_matrix(dtype=torch.float64)
        if inversion:
            rot = -rot
        d1, d2, d_out = (irreps.D_from_matrix(rot) for irreps in (i1, i2, out))
        assert rel_err(tp(x1 @ d1.T, x2 @ d2.T), tp(x1, x2) @ d_out.T) < 1e-12


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_and_gradgradcheck(backend):
    i1, i2, out = o3.Irreps("2x0e+2x1o"), o3.Irreps("0e+1o+1e"), o3.Irreps("2x0e+2x1o+2x1e")
    ins = [
        (a, b, c, "uvu" if i1[a].mul == out[c].mul else "uvw", True)
        for a, (_, r1) in enumerate(i1)
        for b, (_, r2) in enumerate(i2)
        for c, (_, ro) in enumerate(out)
        if ro in r1 * r2
    ]
    tp = TensorProduct(i1, i2, out, ins, shared_weights=False, backend=backend).double()
    conv = TensorProductConv(i1, i2, out, ins, shared_weights=False, backend=backend).double()
    ei = torch.tensor([[0, 1, 2, 2], [1, 0, 0, 2]])
    args = [torch.randn(3, i1.dim), torch.randn(4, i2.dim), torch.randn(4, tp.weight_numel)]
    args = [a.double().requires_grad_() for a in args]
    assert torch.autograd.gradcheck(lambda a, b, c: tp(a[ei[0]], b, c), args)
    assert torch.autograd.gradgradcheck(lambda a, b, c: tp(a[ei[0]], b, c), args)
    assert torch.autograd.gradcheck(lambda a, b, c: conv(a, b, c, ei), args)
    assert torch.autograd.gradgradcheck(lambda a, b, c: conv(a, b, c, ei), args)


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    tp = ChannelWiseTensorProduct("3x0e+2x1o", "0e+1o", "3x0e+2x1o", backend=backend).double()
    tables = (tp.paths, tp.cg_index, tp.cg_value, tp.path_weight)
    x, sh = torch.randn(4, tp.dim_in1, dtype=torch.float64), torch.randn(6, tp.dim_in2, dtype=torch.float64)
    w = torch.randn(6, tp.weight_numel, dtype=torch.float64)
    ei = torch.tensor([[0, 1, 2, 3, 3, 0], [1, 0, 0, 2, 2, 3]])
    for t in (x, sh, w):
        t.requires_grad_()
    torch.library.opcheck(tensor_product, (x[ei[0]].detach(), sh, w, *tables, tp.dim_out, backend))
    torch.library.opcheck(tensor_product_conv, (x, sh, w, ei, *tables, tp.dim_out, backend))


def test_compiles_without_graph_breaks():
    conv = ChannelWiseTensorProductConv("4x0e+4x1o", "0e+1o+2e", "4x0e+4x1o+4x2e")
    x, sh = torch.randn(6, conv.dim_in1), torch.randn(10, conv.dim_in2)
    w, ei = torch.randn(10, conv.weight_numel), torch.randint(0, 6, (2, 10))

    def energy(x, sh, w):
        return conv(x, sh, w, ei).square().sum()

    compiled = torch.compile(energy, fullgraph=True, backend="aot_eager")
    xs = x.clone().requires_grad_()
    (g1,) = torch.autograd.grad(compiled(xs, sh, w), xs)
    xe = x.clone().requires_grad_()
    (g2,) = torch.autograd.grad(energy(xe, sh, w), xe)
    assert torch.allclose(g1, g2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "instruction, match",
    [
        ((0, 0, 1, "uvw", True), "breaks parity"),
        ((0, 0, 2, "uvw", True), "triangle rule"),
        ((0, 0, 1, "uvu<v", True), "mode 'uvu<v' is not supported"),
        ((1, 0, 1, "uuu", True), "mode 'uuu' needs mul\\(in1\\)=mul\\(in2\\)=mul\\(out\\)"),
        ((0, 0, 5, "uvw", True), "i_out=5 is not an index"),
        ((1, 0, 1, "uvu", True), "mul\\(in1\\)=mul\\(out\\)"),
        ((0, 0, 1, "uvw", False), "needs has_weight=True"),
    ],
)
def test_bad_instructions_are_named(instruction, match):
    with pytest.raises(ValueError, match=match):
        TPPlan("2x1o+3x0e", "1o", "2x0e+2x1o+1x3e", [instruction])


def test_bad_inputs_are_named():
    tp = ChannelWiseTensorProduct("2x0e+2x1o", "0e+1o", "2x0e+2x1o")
    with pytest.raises(ValueError, match="x1 has 7 features per row"):
        tp(torch.randn(3, 7), torch.randn(3, 4), torch.randn(3, tp.weight_numel))
    with pytest.raises(ValueError, match="pass weight"):
        tp(torch.randn(3, 8), torch.randn(3, 4))
    with pytest.raises(ValueError, match="weight has shape"):
        tp(torch.randn(3, 8), torch.randn(3, 4), torch.randn(2, tp.weight_numel))
    conv = ChannelWiseTensorProductConv("2x0e+2x1o", "0e+1o", "2x0e+2x1o")
    ei = torch.tensor([[0, 5], [1, 0]])
    for backend in ["reference", *KERNEL_BACKEND_NAMES]:  # the cudasim binding checks too
        conv.backend = backend
        with pytest.raises((ValueError, RuntimeError), match="outside \\[0, 3\\)"):
            conv(torch.randn(3, 8), torch.randn(2, 4), torch.randn(2, conv.weight_numel), ei)


def test_module_dtype_keeps_cg_in_float64():
    tp = ChannelWiseTensorProduct("2x0e+2x1o", "0e+1o", "2x0e+2x1o").float()
    assert tp.cg_value.dtype == torch.float64 and tp.path_weight.dtype == torch.float64
    assert "paths" not in tp.state_dict()


@pytest.mark.parametrize("dims", [*itertools.permutations((1, 3, 5)), (3, 3, 3), (1, 1, 1)])
def test_shared_weight_contractions_every_ordering(dims):
    """Each operand order of the shared-weight GEMM route equals the plain five-tensor einsum."""
    from geo3d.ops.tp_shared_weights import _third, _weight_grad

    g = torch.Generator().manual_seed(sum(dims))
    di, dj, dk = dims
    z, u, v, w = 7, 4, 5, 6
    a = torch.randn(z, u, di, generator=g, dtype=torch.float64)
    b = torch.randn(z, v, dj, generator=g, dtype=torch.float64)
    r = torch.randn(z, w, dk, generator=g, dtype=torch.float64)
    wt = torch.randn(u, v, w, generator=g, dtype=torch.float64)
    c = torch.randn(di, dj, dk, generator=g, dtype=torch.float64)
    want = torch.einsum("uvw,zui,zvj,ijk->zwk", wt, a, b, c)
    assert torch.allclose(_third(a, b, wt, c), want, rtol=1e-12, atol=1e-12)
    want_w = torch.einsum("zui,zvj,zwk,ijk->uvw", a, b, r, c)
    assert torch.allclose(_weight_grad(a, b, r, c), want_w, rtol=1e-12, atol=1e-12)


def test_path_table_layout_is_the_one_the_cpp_kernels_read():
    import re
    from pathlib import Path

    from geo3d.ops import tp_tables

    header = (Path(__file__).parents[1] / "cuda_ext/tensor_product/tensor_product_core.h").read_text()
    fields = re.search(r"enum PathField : int \{(.*?)\};", header, re.S).group(1)
    names = [f.strip().split("=")[0].strip() for f in fields.split(",") if f.strip()]
    python = ["MODE", "L1", "L2", "L3", "MUL1", "MUL2", "MUL_OUT", "OFF1", "OFF2", "OFF_OUT", "W_OFF"]
    python += ["CG_START", "CG_END"]
    assert names[:-1] == ["k" + "".join(p.title() for p in n.split("_")) for n in python]
    assert [getattr(tp_tables, n) for n in python] == list(range(len(python))) == list(range(len(names) - 1))
    assert names[-1] == "kNumPathFields" and tp_tables.NUM_PATH_FIELDS == len(python)
    modes = dict(re.findall(r"k(UV[WU]) = (\d+)", header))
    assert {k.lower(): int(v) for k, v in modes.items()} == tp_tables.MODE_CODE
