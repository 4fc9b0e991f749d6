"""CUDA backend of knn_graph and fps (cuda_ext/point_ops/point_ops_cuda*.{h,cpp,cu}).

Contract: the ``cuda`` backend returns exactly the ``cpu`` backend's indices, in the
same order (ties included), for every batch, k, loop flag and dtype.

Without a GPU:
- the kernels' file must carry no double-precision FMA (its exact distances rest on that);
- host emulation: the kernels' per-thread logic (point_ops/point_ops_core.h: the kNN tile
  scan with its float prefilter and top-k lists, the FPS update and the pick used by the
  warp reductions) is compiled with g++ into a small library that replays the kernels'
  schedule (blocks and threads from the same plan, 256-point tiles, the shuffle-down
  reduction tree) and must reproduce the cpu op exactly.
With a GPU and the CUDA build of ``geo3d._C`` (``-m cuda``): the real ops against the cpu op.
"""

from __future__ import annotations

import ctypes
import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from helpers import batch_of, point_clouds

from geo3d.ops import backend_status
from geo3d.ops.point_ops import fps, knn_graph

ROOT = Path(__file__).resolve().parents[1]
CUDA_EXT = ROOT / "cuda_ext"
NVCC = shutil.which("nvcc")
CXX = shutil.which("g++") or shutil.which("c++")
CPU_OK = backend_status()["cpu"][0]
CUDA_OK, CUDA_WHY = backend_status()["cuda"]
needs_cpu_op = pytest.mark.skipif(not CPU_OK, reason="the cpu backend (geo3d._C) is the oracle here")
needs_cuda = pytest.mark.skipif(not CUDA_OK, reason=f"cuda backend not available: {CUDA_WHY}")


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
def test_point_ops_kernels_have_no_double_fma(tmp_path: Path):
    # The float prefilter uses fmaf on purpose; every double product must be mul.rn.
    ptx = tmp_path / "point_ops.ptx"
    cmd = [NVCC, "-std=c++17", "-O3", "--use_fast_math", "-arch=sm_80", "-I", str(CUDA_EXT)]
    cmd += ["-ptx", str(CUDA_EXT / "point_ops" / "point_ops_cuda_kernels.cu"), "-o", str(ptx)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    text = ptx.read_text()
    assert not re.findall(r"\bfma\.\S*f64", text), "double FMA in the point-op kernels"
    assert re.search(r"\bmul\.rn\.f64", text)


# ---------------------------------------------------------------------------
# Host emulation of the kernels.

EMULATION_SOURCE = r"""
#if defined(__SSE__)
#include <xmmintrin.h>
#endif

#include <vector>

#include "point_ops/point_ops_core.h"

using namespace geo3d::pointops;

namespace {

// One kNN thread block as the kernel runs it: each thread scans every tile in order.
template <typename real, typename List, typename Init>
void knn_block(const real* pos, const KnnBlock& blk, int threads, bool loop, int64_t* src, int64_t* dst,
               Init init) {
  const real* p = pos + 3 * blk.base;
  const int n = static_cast<int>(blk.n);
  std::vector<real> tx(kKnnTile), ty(kKnnTile), tz(kKnnTile);
  for (int tid = 0; tid < threads; ++tid) {
    const int q = static_cast<int>(blk.q0) + tid;
    if (q >= n) continue;
    const int64_t e0 = blk.edge_base + static_cast<int64_t>(q) * blk.m;
    List list;
    init(list, e0, blk.m);
    float cut = INFINITY;
    for (int t0 = 0; t0 < n; t0 += kKnnTile) {
      const int count = n - t0 < kKnnTile ? n - t0 : kKnnTile;
      for (int t = 0; t < count; ++t) {
        tx[t] = p[3 * (t0 + t)];
        ty[t] = p[3 * (t0 + t) + 1];
        tz[t] = p[3 * (t0 + t) + 2];
      }
      knn_scan_tile<real>(list, cut, tx.data(), ty.data(), tz.data(), count, t0, p[3 * q], p[3 * q + 1],
                          p[3 * q + 2], q, loop);
    }
    list.write(src + e0, dst + e0, blk.m, blk.base, blk.base + q);
  }
}

template <typename real, int K>
void knn_reg(const real* pos, const KnnPlan& plan, bool loop, int64_t* src, int64_t* dst) {
  for (const KnnBlock& blk : plan.blocks)
    knn_block<real, RegList<K>>(pos, blk, plan.threads, loop, src, dst,
                                [](RegList<K>& l, int64_t, int64_t) { l.init(); });
}

// slots: -1 the kernel's choice, else force a list (8/16/32 registers, 0 global memory).
template <typename real>
int knn(const real* pos, const int64_t* ptr, int64_t num_graphs, int64_t k, int loop, int slots, int64_t* out) {
  const KnnPlan plan = plan_knn(ptr, num_graphs, k, loop != 0);
  if (slots < 0) slots = knn_register_slots(plan.max_degree);
  if (slots != 0 && slots < plan.max_degree) return 1;
  int64_t* src = out;
  int64_t* dst = out + plan.edges;
  switch (slots) {
    case 8: knn_reg<real, 8>(pos, plan, loop != 0, src, dst); break;
    case 16: knn_reg<real, 16>(pos, plan, loop != 0, src, dst); break;
    case 32: knn_reg<real, 32>(pos, plan, loop != 0, src, dst); break;
    case 0: {
      std::vector<double> scratch(plan.edges);
      for (const KnnBlock& blk : plan.blocks)
        knn_block<real, MemList>(pos, blk, plan.threads, loop != 0, src, dst,
                                 [&](MemList& l, int64_t e0, int64_t m) { l.init(scratch.data() + e0, src + e0, m); });
      break;
    }
    default: return 2;
  }
  return 0;
}

// __shfl_down_sync tree of warp_farthest(): lane l combines with lane l + off (itself past 31).
FpsBest warp_farthest(std::vector<FpsBest> v) {
  for (int off = 16; off > 0; off /= 2) {
    std::vector<FpsBest> w = v;
    for (int l = 0; l < 32; ++l) w[l] = fps_pick(v[l], l + off < 32 ? v[l + off] : v[l]);
    v = w;
  }
  return v[0];
}

template <typename real>
void fps(const real* pos, const int64_t* ptr, const int64_t* counts, const int64_t* start, int64_t num_graphs,
         int threads, int64_t* out) {
  std::vector<FpsGraph> graphs;
  int64_t max_points = 0;
  plan_fps_graphs(ptr, counts, start, num_graphs, graphs, &max_points);
  const int warps = threads / 32;
  for (const FpsGraph& g : graphs) {
    const real* p = pos + 3 * g.base;
    const int n = static_cast<int>(g.n);
    std::vector<double> dist(n, INFINITY);
    out[g.out] = g.base + g.start;
    int last = static_cast<int>(g.start);
    for (int64_t s = 1; s < g.m; ++s) {
      const double lx = p[3 * last], ly = p[3 * last + 1], lz = p[3 * last + 2];
      std::vector<FpsBest> winners(32, FpsBest{-1.0, kNoIndex});
      for (int w = 0; w < warps; ++w) {
        std::vector<FpsBest> lanes(32);
        for (int l = 0; l < 32; ++l) lanes[l] = fps_update(dist.data(), p, n, 32 * w + l, threads, lx, ly, lz);
        winners[w] = warp_farthest(lanes);
      }
      last = warp_farthest(winners).i;
      out[g.out + s] = g.base + last;
    }
  }
}

}  // namespace

extern "C" {
int64_t emu_knn_edges(const int64_t* ptr, int64_t b, int64_t k, int loop) { return plan_knn(ptr, b, k, loop).edges; }
int emu_knn_f32(const float* pos, const int64_t* ptr, int64_t b, int64_t k, int loop, int slots, int64_t* out) {
  return knn<float>(pos, ptr, b, k, loop, slots, out);
}
int emu_knn_f64(const double* pos, const int64_t* ptr, int64_t b, int64_t k, int loop, int slots, int64_t* out) {
  return knn<double>(pos, ptr, b, k, loop, slots, out);
}
void emu_fps_f32(const float* pos, const int64_t* ptr, const int64_t* c, const int64_t* s, int64_t b, int t,
                 int64_t* out) {
  fps<float>(pos, ptr, c, s, b, t, out);
}
void emu_fps_f64(const double* pos, const int64_t* ptr, const int64_t* c, const int64_t* s, int64_t b, int t,
                 int64_t* out) {
  fps<double>(pos, ptr, c, s, b, t, out);
}
float emu_float_cutoff(double thr) { return knn_float_cutoff(thr); }

// Over all pairs (i, j) of candidates around query q: how often the prefilter would reject i
// (float distance above the cutoff of thr = D_j) although D_i <= D_j. `naive` counts the
// same for a cutoff of D_j merely rounded up to float (no margin), to show the data bites.
// ftz: the float distances with subnormals flushed (inputs and results), as --use_fast_math
// makes the GPU do; double arithmetic is never flushed on the GPU, nor here.
int64_t emu_prefilter_violations(const float* q, const float* pts, int n, int ftz, int64_t* naive) {
  std::vector<double> d(n);
  std::vector<float> df(n);
  for (int i = 0; i < n; ++i)
    d[i] = sq_dist(pts[3 * i], pts[3 * i + 1], pts[3 * i + 2], double(q[0]), double(q[1]), double(q[2]));
#if defined(__SSE__)
  const unsigned int csr = _mm_getcsr();
  if (ftz) _mm_setcsr(csr | 0x8040);  // FTZ | DAZ
#endif
  for (int i = 0; i < n; ++i) df[i] = sq_dist_f(pts[3 * i], pts[3 * i + 1], pts[3 * i + 2], q[0], q[1], q[2]);
#if defined(__SSE__)
  _mm_setcsr(csr);
#endif
  int64_t bad = 0;
  *naive = 0;
  for (int j = 0; j < n; ++j) {
    const float cut = knn_float_cutoff(d[j]);
    float up = static_cast<float>(d[j]);
    if (static_cast<double>(up) < d[j]) up = nextafterf(up, INFINITY);
    for (int i = 0; i < n; ++i) {
      if (d[i] > d[j]) continue;
      bad += df[i] > cut;
      *naive += df[i] > up;
    }
  }
  return bad;
}
}
"""


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    if CXX is None:
        pytest.skip("no C++ compiler")
    tmp = tmp_path_factory.mktemp("point_ops_emulation")
    src, lib = tmp / "emulation.cpp", tmp / "libemulation.so"
    src.write_text(EMULATION_SOURCE)
    # -ffp-contract=off as setup.py builds the CPU op: host products are not fused either.
    cmd = [CXX, "-std=c++17", "-O2", "-ffp-contract=off", "-Wall", "-Werror", "-Wno-unknown-pragmas"]
    cmd += ["-shared", "-fPIC", "-I", str(CUDA_EXT), str(src), "-o", str(lib)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    handle = ctypes.CDLL(str(lib))
    handle.emu_knn_edges.restype = ctypes.c_int64
    handle.emu_float_cutoff.restype = ctypes.c_float
    handle.emu_float_cutoff.argtypes = [ctypes.c_double]
    handle.emu_prefilter_violations.restype = ctypes.c_int64
    return handle


def _p(t: torch.Tensor) -> ctypes.c_void_p:
    assert t.is_contiguous()
    return ctypes.c_void_p(t.data_ptr())


def _ptr(sizes: list[int]) -> torch.Tensor:
    return torch.cat([torch.zeros(1, dtype=torch.long), torch.tensor(sizes, dtype=torch.long).cumsum(0)])


def emu_knn(lib, pos: torch.Tensor, sizes: list[int], k: int, loop: bool, slots: int = -1) -> torch.Tensor:
    ptr = _ptr(sizes)
    b = ctypes.c_int64(len(sizes))
    e = lib.emu_knn_edges(_p(ptr), b, ctypes.c_int64(k), int(loop))
    out = torch.full((2, e), -1, dtype=torch.long)
    fn = lib.emu_knn_f32 if pos.dtype == torch.float32 else lib.emu_knn_f64
    rc = fn(_p(pos), _p(ptr), b, ctypes.c_int64(k), int(loop), slots, _p(out))
    assert rc == 0, f"emulation refused slots={slots}"
    return out


def emu_fps(lib, pos, sizes, counts, start, threads: int) -> torch.Tensor:
    ptr = _ptr(sizes)
    out = torch.full((int(counts.sum()),), -1, dtype=torch.long)
    fn = lib.emu_fps_f32 if pos.dtype == torch.float32 else lib.emu_fps_f64
    fn(_p(pos), _p(ptr), _p(counts), _p(start), ctypes.c_int64(len(sizes)), threads, _p(out))
    return out


@needs_cpu_op
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("loop", [False, True])
def test_emulated_knn_kernel_matches_cpu_op(emu, dtype, loop):
    for name, pos, sizes in point_clouds(dtype):
        batch = batch_of(sizes)
        for k in (1, 5, 8, 16, 20, 32, 33, 60, 1000):
            want = knn_graph(pos, k, batch=batch, loop=loop, backend="cpu", num_graphs=len(sizes))
            got = emu_knn(emu, pos, sizes, k, loop)
            assert torch.equal(got, want), (name, k)


@needs_cpu_op
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_emulated_knn_every_list_kind_agrees(emu, dtype):
    # Register buckets wider than the degree and the global-memory list all give the cpu op's graph.
    for name, pos, sizes in point_clouds(dtype):
        batch = batch_of(sizes)
        for k in (3, 8):
            want = knn_graph(pos, k, batch=batch, backend="cpu", num_graphs=len(sizes))
            for slots in (8, 16, 32, 0):
                assert torch.equal(emu_knn(emu, pos, sizes, k, False, slots), want), (name, k, slots)


def test_float_cutoff_is_a_safe_bound(emu):
    # cutoff(thr) >= thr (1 + 2^-20) + 2^-120, a float, and inf where that exceeds float range.
    for thr in (
        0.0,
        1e-45,
        1e-38,
        3e-30,
        1.0,
        1.0 + 2**-30,
        123.456,
        3.0e38,
        3.4028234e38,
        1e300,
        float("inf"),
    ):
        cut = emu.emu_float_cutoff(thr)
        bound = thr * (1 + 2**-20) + 2**-120
        assert cut >= bound, thr
        assert cut == float("inf") or cut <= bound * (1 + 2**-22), thr  # and not much more


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="flush-to-zero set through SSE")
@pytest.mark.parametrize("ftz", [False, True])
@pytest.mark.parametrize("scale", [1e-40, 1e-30, 3e-20, 1e-19, 1e-3, 1.0, 1e17, 1e19])
def test_float_prefilter_never_rejects_a_closer_point(emu, scale, ftz):
    # A query inside a thin shell: all distances agree to ~1e-7, below float resolution.
    g = torch.Generator().manual_seed(13)
    q = (torch.tensor([0.3, 0.7, -0.2], dtype=torch.float64) * scale).float()
    shell = torch.randn(1500, 3, generator=g, dtype=torch.float64)
    shell = shell / shell.norm(dim=1, keepdim=True) * (1 + 1e-7 * torch.rand(1500, 1, generator=g))
    pts = (q.double() + scale * shell).float().contiguous()
    naive = ctypes.c_int64()
    bad = emu.emu_prefilter_violations(_p(q), _p(pts), len(pts), int(ftz), ctypes.byref(naive))
    assert bad == 0
    if 1e-3 <= scale <= 1e17:  # elsewhere float squares underflow or overflow: nothing to reorder
        assert naive.value > 0, "the data does not exercise the margin"


@needs_cpu_op
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_emulated_fps_kernel_matches_cpu_op(emu, dtype):
    g = torch.Generator().manual_seed(5)
    sizes = [300, 0, 1, 57, 1000, 64]
    pos = (torch.rand(sum(sizes), 3, generator=g, dtype=torch.float64) * 4).to(dtype)
    pos[-64:] = pos[-64]  # a graph of duplicates: every step ties at distance 0
    size_t = torch.tensor(sizes)
    for ratio in (0.1, 0.5, 1.0):
        counts = torch.ceil(size_t.double() * ratio).long().clamp(max=size_t)
        for seed in (None, 3):
            start = torch.zeros(len(sizes), dtype=torch.long)
            if seed is not None:
                start = (
                    torch.rand(len(sizes), generator=torch.Generator().manual_seed(seed)) * size_t
                ).long()
                start = torch.minimum(start, (size_t - 1).clamp(min=0))
            want = torch.ops.geo3d.fps(pos, _ptr(sizes), counts, start)
            for threads in (32, 256, 1024):
                assert torch.equal(emu_fps(emu, pos, sizes, counts, start, threads), want), (
                    ratio,
                    seed,
                    threads,
                )
    # And the public op on the lattice (ties everywhere) through the Python wrapper.
    lattice = (
        torch.stack(torch.meshgrid(*[torch.arange(6.0)] * 3, indexing="ij"), -1).reshape(-1, 3).to(dtype)
    )
    want = fps(lattice, ratio=0.5, backend="cpu")
    counts = torch.tensor([len(want)])
    assert torch.equal(emu_fps(emu, lattice, [216], counts, torch.zeros(1, dtype=torch.long), 256), want)


# ---------------------------------------------------------------------------
# On a GPU: cuda == cpu exactly.


def _knn_both(pos, k, batch=None, loop=False, num_graphs=None):
    got = knn_graph(
        pos.cuda(), k, batch=None if batch is None else batch.cuda(), loop=loop, num_graphs=num_graphs
    )
    assert got.device.type == "cuda" and got.dtype == torch.long
    want = knn_graph(pos, k, batch=batch, loop=loop, backend="cpu", num_graphs=num_graphs)
    assert torch.equal(got.cpu(), want)
    return got


@pytest.mark.cuda
@needs_cuda
@needs_cpu_op
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("loop", [False, True])
@pytest.mark.parametrize("k", [1, 8, 16, 20, 32, 40, 1000])  # every list kind; k above every cloud size
def test_cuda_knn_matches_cpu(dtype, loop, k):
    for _, pos, sizes in point_clouds(dtype):
        _knn_both(pos, k, batch_of(sizes), loop=loop, num_graphs=len(sizes))


@pytest.mark.cuda
@needs_cuda
@needs_cpu_op
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_knn_large_and_empty(dtype):
    g = torch.Generator().manual_seed(7)
    pos = torch.rand(20_000, 3, generator=g, dtype=torch.float64).to(dtype)
    ei = _knn_both(pos, 16)
    assert ei.shape == (2, 20_000 * 16)
    empty = torch.empty(0, 3, dtype=dtype)
    assert knn_graph(empty.cuda(), 4).shape == (2, 0)
    singles = torch.rand(5, 3, dtype=dtype)  # five 1-point graphs: no edges without loop
    assert knn_graph(singles.cuda(), 3, batch=torch.arange(5).cuda()).shape == (2, 0)
    _knn_both(singles, 3, torch.arange(5), loop=True)


@pytest.mark.cuda
@needs_cuda
@needs_cpu_op
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_fps_matches_cpu(dtype):
    g = torch.Generator().manual_seed(2)
    sizes = [300, 0, 1, 57, 1000, 20_000]  # the last does not fit in shared memory
    pos = (torch.rand(sum(sizes), 3, generator=g) * 4).to(dtype)
    batch = batch_of(sizes)
    for ratio in (0.01, 0.5, 1.0):
        for random_start in (False, True):
            kw = dict(ratio=ratio, random_start=random_start, num_graphs=len(sizes))
            got = fps(pos.cuda(), batch.cuda(), generator=torch.Generator().manual_seed(3), **kw)
            want = fps(pos, batch, generator=torch.Generator().manual_seed(3), backend="cpu", **kw)
            assert got.device.type == "cuda" and torch.equal(got.cpu(), want), (ratio, random_start)
    dup = torch.ones(30, 3, dtype=dtype)
    assert torch.equal(fps(dup.cuda(), ratio=0.5).cpu(), fps(dup, ratio=0.5, backend="cpu"))
    assert fps(torch.empty(0, 3, dtype=dtype).cuda()).shape == (0,)


@pytest.mark.cuda
@needs_cuda
@needs_cpu_op
def test_cuda_ops_on_side_stream_and_strided_input():
    pos = torch.rand(3000, 6, generator=torch.Generator().manual_seed(9))[:, ::2]  # not contiguous
    want_knn = knn_graph(pos, 10, backend="cpu")
    want_fps = fps(pos, ratio=0.1, backend="cpu")
    pos_cuda = pos.cuda()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        got_knn = knn_graph(pos_cuda, 10, backend="cuda")
        got_fps = fps(pos_cuda, ratio=0.1, backend="cuda")
    stream.synchronize()
    assert torch.equal(got_knn.cpu(), want_knn) and torch.equal(got_fps.cpu(), want_fps)


@pytest.mark.cuda
@needs_cuda
def test_cuda_op_refuses_a_device_ptr():
    pos = torch.rand(10, 3, device="cuda")
    with pytest.raises(RuntimeError, match="'ptr' must be a CPU int64"):
        torch.ops.geo3d.knn_graph(pos, torch.tensor([0, 10], device="cuda"), 3, False)
