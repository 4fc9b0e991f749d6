// CUDA k-nearest-neighbour graph and farthest-point sampling. The per-thread logic is
// in point_ops_core.h (shared with a host build that the tests check against
// the CPU op); this file adds what only a GPU has: tiles in shared memory, barriers,
// warp shuffles, launches.
//
// kNN: brute force within each graph, one thread per query. A block takes up to 128
// consecutive queries of one graph; it walks the graph's points in tiles of 256,
// staged in shared memory, and each thread scans the tile in index order against its
// own query. Every lane of a warp reads the same candidate at the same time, so shared
// memory serves it as one broadcast: the candidate traffic is amortised over the warp,
// and no cross-thread merge is needed because each thread owns a whole query. The list
// is a per-thread sorted top-K in registers (K = 8, 16 or 32, unrolled; a bucket at
// least the degree) or, for larger degrees, a sorted list in global memory (distances
// in scratch, indices in the output row); the scan only compares against the worst
// entry, kept in registers. For float input a float distance with a proven error
// bound rejects almost every candidate before the exact double distance is taken.
// Why brute force and not the CPU's grid: O(n^2) per graph, but no data-dependent
// structure (no bounding box, sort or ring walk, no host sync) and every lane busy;
// an H100 should scan the 10^10 pairs of a 10^5-point cloud in a few ms (an estimate:
// never measured). That covers the point-cloud models here; a grid like the CPU's is
// the next step for larger clouds, and a heap for large k (the global-memory list
// inserts in O(k)).
//
// FPS: one block per graph (the torch_cluster / PointNet++ design). The graph's
// distances and coordinates live in shared memory when they fit (the device's opt-in
// limit: ~11k float32 or ~7k float64 points on an H100), otherwise distances in global
// scratch and coordinates read from global memory (L2). Each step: every thread updates its strided
// points and keeps its farthest (lowest index on ties), a warp-shuffle reduction and a
// second one over the warps' winners pick the block's, thread 0 writes it. The
// reduction compares (distance desc, index asc), a total order, so the result is the
// CPU's whatever the tree.
//
// Exactness: the double squared distances use mul_rn (no FMA contraction, which nvcc
// would otherwise apply), so they equal the CPU's bit for bit; the tests check the PTX.
#include <algorithm>
#include <type_traits>

#include "point_ops/point_ops_cuda.h"
#include "common/cuda_compat.h"

namespace geo3d {
namespace cuda {
namespace {

using pointops::FpsBest;
using pointops::FpsGraph;
using pointops::KnnBlock;
using pointops::kKnnTile;

constexpr int kWarp = 32;
constexpr unsigned int kFullMask = 0xffffffffu;
constexpr int kFpsMaxThreads = 1024;
constexpr int kDefaultSmem = 48 * 1024;  // dynamic shared memory without opting in
constexpr int kFpsStaticSmem = 1024;      // the reduction's arrays, with room to spare

// K = 0: a MemList in global memory; otherwise a RegList<K>.
template <typename real, int K>
__global__ void __launch_bounds__(pointops::kKnnMaxThreads)
    knn_kernel(const real* __restrict__ pos, const KnnBlock* __restrict__ blocks, bool loop,
               int64_t* __restrict__ src, int64_t* __restrict__ dst, double* __restrict__ scratch) {
  __shared__ real tx[kKnnTile], ty[kKnnTile], tz[kKnnTile];
  const KnnBlock blk = blocks[blockIdx.x];
  const real* p = pos + 3 * blk.base;
  const int n = static_cast<int>(blk.n);
  const int q = static_cast<int>(blk.q0) + static_cast<int>(threadIdx.x);
  const bool active = q < n;  // the graph's last block may have idle threads; they still stage tiles
  const int qs = active ? q : 0;
  const real qx = p[3 * qs], qy = p[3 * qs + 1], qz = p[3 * qs + 2];
  const int64_t e0 = blk.edge_base + static_cast<int64_t>(qs) * blk.m;

  using List = std::conditional_t<K == 0, pointops::MemList, pointops::RegList<(K > 0 ? K : 1)>>;
  List list;
  if constexpr (K == 0) {
    if (active) list.init(scratch + e0, src + e0, blk.m);
  } else {
    list.init();
  }
  float cut = INFINITY;
  for (int t0 = 0; t0 < n; t0 += kKnnTile) {
    const int count = min(kKnnTile, n - t0);
    __syncthreads();  // everyone is done with the previous tile
    for (int t = threadIdx.x; t < count; t += blockDim.x) {
      const real* c = p + 3 * static_cast<int64_t>(t0 + t);
      tx[t] = c[0];
      ty[t] = c[1];
      tz[t] = c[2];
    }
    __syncthreads();
    if (active) pointops::knn_scan_tile<real>(list, cut, tx, ty, tz, count, t0, qx, qy, qz, q, loop);
  }
  if (active) list.write(src + e0, dst + e0, blk.m, blk.base, blk.base + q);
}

// Lane 0 gets the warp's farthest point.
__device__ FpsBest warp_farthest(FpsBest b) {
#pragma unroll
  for (int off = kWarp / 2; off > 0; off /= 2) {
    const FpsBest o{__shfl_down_sync(kFullMask, b.d, off), __shfl_down_sync(kFullMask, b.i, off)};
    b = pointops::fps_pick(b, o);
  }
  return b;
}

template <typename real>
__global__ void __launch_bounds__(kFpsMaxThreads)
    fps_kernel(const real* __restrict__ pos, const FpsGraph* __restrict__ graphs, int64_t smem_points,
               int64_t* __restrict__ out, double* __restrict__ scratch) {
  GEO3D_DYNAMIC_SHARED(double, smem);  // [n] distances, then [n, 3] coordinates
  __shared__ double warp_d[kWarp];
  __shared__ int warp_i[kWarp];
  __shared__ int chosen;
  const FpsGraph g = graphs[blockIdx.x];
  const int n = static_cast<int>(g.n);
  const real* p = pos + 3 * g.base;
  double* dist = scratch + g.base;
  if (g.n <= smem_points) {  // uniform over the block
    dist = smem;
    real* sp = reinterpret_cast<real*>(smem + n);
    for (int i = threadIdx.x; i < 3 * n; i += blockDim.x) sp[i] = p[i];
    p = sp;
  }
  for (int i = threadIdx.x; i < n; i += blockDim.x) dist[i] = INFINITY;
  if (threadIdx.x == 0) out[g.out] = g.base + g.start;
  __syncthreads();

  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, warps = blockDim.x / kWarp;
  int last = static_cast<int>(g.start);
  for (int64_t s = 1; s < g.m; ++s) {
    const double lx = p[3 * last], ly = p[3 * last + 1], lz = p[3 * last + 2];
    FpsBest best = pointops::fps_update(dist, p, n, static_cast<int>(threadIdx.x), blockDim.x, lx, ly, lz);
    best = warp_farthest(best);
    if (lane == 0) {
      warp_d[warp] = best.d;
      warp_i[warp] = best.i;
    }
    __syncthreads();
    if (warp == 0) {
      best = lane < warps ? FpsBest{warp_d[lane], warp_i[lane]} : FpsBest{-1.0, pointops::kNoIndex};
      best = warp_farthest(best);
      if (lane == 0) {
        chosen = best.i;
        out[g.out + s] = g.base + best.i;
      }
    }
    __syncthreads();  // `chosen` is read below; warp_d is rewritten only after the next barrier
    last = chosen;
  }
}

// More threads shorten a step's scan but lengthen its barriers and reduction.
int fps_threads(int64_t max_points) {
  if (max_points > 16384) return 1024;
  if (max_points > 2048) return 512;
  return 256;
}

}  // namespace

template <typename real>
cudaError_t launch_knn(const real* pos, const KnnBlock* blocks, int64_t num_blocks, int threads,
                       int64_t max_degree, bool loop, int64_t* src, int64_t* dst, double* scratch,
                       cudaStream_t stream) {
  if (num_blocks > 0) {
    const dim3 grid(static_cast<unsigned int>(num_blocks));
    switch (pointops::knn_register_slots(max_degree)) {
      case 8:
        GEO3D_LAUNCH(grid, threads, 0, stream, knn_kernel<real, 8>)(pos, blocks, loop, src, dst, scratch);
        break;
      case 16:
        GEO3D_LAUNCH(grid, threads, 0, stream, knn_kernel<real, 16>)(pos, blocks, loop, src, dst, scratch);
        break;
      case 32:
        GEO3D_LAUNCH(grid, threads, 0, stream, knn_kernel<real, 32>)(pos, blocks, loop, src, dst, scratch);
        break;
      default:
        GEO3D_LAUNCH(grid, threads, 0, stream, knn_kernel<real, 0>)(pos, blocks, loop, src, dst, scratch);
    }
  }
  return cudaGetLastError();
}

template <typename real>
cudaError_t launch_fps(const real* pos, const FpsGraph* graphs, int64_t num_graphs, int64_t max_points,
                       int64_t* out, double* scratch, cudaStream_t stream) {
  if (num_graphs > 0) {
    int device = 0, optin = 0;
    cudaError_t err = cudaGetDevice(&device);
    if (err == cudaSuccess) err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
    if (err != cudaSuccess) return err;
    const int64_t per_point = sizeof(double) + 3 * sizeof(real);
    const int64_t fit = std::max<int64_t>(0, (optin - kFpsStaticSmem) / per_point);
    const int64_t smem_points = std::min(max_points, fit);
    const size_t bytes = static_cast<size_t>(smem_points * per_point);
    if (bytes > kDefaultSmem) {
      err = cudaFuncSetAttribute(fps_kernel<real>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 static_cast<int>(bytes));
      if (err != cudaSuccess) return err;
    }
    GEO3D_LAUNCH(static_cast<unsigned int>(num_graphs), fps_threads(max_points), bytes, stream, fps_kernel<real>)(
        pos, graphs, smem_points, out, scratch);
  }
  return cudaGetLastError();
}

// The binding (a g++ translation unit) links against these instantiations.
#define GEO3D_INSTANTIATE(real)                                                                                 \
  template cudaError_t launch_knn<real>(const real*, const KnnBlock*, int64_t, int, int64_t, bool, int64_t*,  \
                                        int64_t*, double*, cudaStream_t);                                     \
  template cudaError_t launch_fps<real>(const real*, const FpsGraph*, int64_t, int64_t, int64_t*, double*,    \
                                        cudaStream_t);
GEO3D_INSTANTIATE(float)
GEO3D_INSTANTIATE(double)
#undef GEO3D_INSTANTIATE

}  // namespace cuda
}  // namespace geo3d
