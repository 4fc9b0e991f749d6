// CUDA radius graph: one thread per point or centre, cell lists from
// radius_graph_core.h. Every floating-point step mirrors prepare_sorted() and
// the scan of radius_graph_cpu.cpp operation for operation (products through mul_rn, so
// nvcc fuses nothing), which makes bins, wraps and distance tests bit-identical
// to the CPU op, and with them the edge list and its order.
#include <cmath>

#include "radius_graph/radius_graph_cuda.h"
#include "common/cuda_compat.h"

namespace geo3d {
namespace cuda {
namespace {

constexpr int kThreads = 256;

unsigned int blocks_for(int64_t n) { return static_cast<unsigned int>((n + kThreads - 1) / kThreads); }

__device__ int64_t thread_index() { return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; }

template <typename real>
__global__ void wrap_kernel(const real* __restrict__ pos, int64_t n, const int64_t* __restrict__ ptr,
                            int64_t num_graphs, const GraphPlan* __restrict__ plans, int32_t* __restrict__ graph,
                            double* __restrict__ frac, int* __restrict__ wrap, real* __restrict__ pos_w) {
  const int64_t i = thread_index();
  if (i >= n) return;
  // Graph of point i: the last g with ptr[g] <= i. Empty graphs share their
  // ptr value with the next one, so this skips them.
  int64_t lo = 0, hi = num_graphs;  // invariant: ptr[lo] <= i < ptr[hi]
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (ptr[mid] <= i) lo = mid;
    else hi = mid;
  }
  graph[i] = static_cast<int32_t>(lo);
  const GraphPlan& g = plans[lo];
  const double p[3] = {static_cast<double>(pos[3 * i]), static_cast<double>(pos[3 * i + 1]),
                       static_cast<double>(pos[3 * i + 2])};
  double f[3];
  to_frac(g.Hinv, p, f);
  double w[3] = {0.0, 0.0, 0.0};
  for (int k = 0; k < 3; ++k) {
    if (!g.pbc[k]) continue;
    w[k] = -std::floor(f[k]);
    f[k] += w[k];
    if (f[k] >= 1.0) {  // rounding: f = -1e-17 gives 1.0 after the shift
      f[k] -= 1.0;
      w[k] -= 1.0;
    }
  }
  // Through int, as the CPU stores the wrap (keeps even the sign of a zero).
  const double w0 = static_cast<int>(w[0]), w1 = static_cast<int>(w[1]), w2 = static_cast<int>(w[2]);
  for (int k = 0; k < 3; ++k) {
    frac[3 * i + k] = f[k];
    wrap[3 * i + k] = static_cast<int>(w[k]);
    const double off = mul_rn(w0, g.H[k]) + mul_rn(w1, g.H[3 + k]) + mul_rn(w2, g.H[6 + k]);
    pos_w[3 * i + k] = static_cast<real>(p[k] + off);
  }
}

// One block per graph: a graph's points are contiguous, and min/max do not
// depend on the reduction order, so lo/hi equal the CPU's sequential ones.
__global__ void frac_bounds_kernel(const double* __restrict__ frac, const int64_t* __restrict__ ptr,
                                   double* __restrict__ lo, double* __restrict__ hi) {
  __shared__ double s_lo[3][kThreads], s_hi[3][kThreads];
  const int64_t g = blockIdx.x, begin = ptr[g], end = ptr[g + 1];
  double l[3], h[3];
  for (int k = 0; k < 3; ++k) {
    l[k] = INFINITY;
    h[k] = -INFINITY;
  }
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    for (int k = 0; k < 3; ++k) {
      l[k] = fmin(l[k], frac[3 * i + k]);
      h[k] = fmax(h[k], frac[3 * i + k]);
    }
  }
  for (int k = 0; k < 3; ++k) {
    s_lo[k][threadIdx.x] = l[k];
    s_hi[k][threadIdx.x] = h[k];
  }
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) {
      for (int k = 0; k < 3; ++k) {
        s_lo[k][threadIdx.x] = fmin(s_lo[k][threadIdx.x], s_lo[k][threadIdx.x + stride]);
        s_hi[k][threadIdx.x] = fmax(s_hi[k][threadIdx.x], s_hi[k][threadIdx.x + stride]);
      }
    }
    __syncthreads();
  }
  if (threadIdx.x < 3) {
    const int k = threadIdx.x;
    const bool empty = end == begin;  // the CPU plans empty graphs over [0, 0]
    lo[3 * g + k] = empty ? 0.0 : s_lo[k][0];
    hi[3 * g + k] = empty ? 0.0 : s_hi[k][0];
  }
}

__global__ void bin_kernel(const double* __restrict__ frac, const int32_t* __restrict__ graph, int64_t n,
                           const GraphPlan* __restrict__ plans, int* __restrict__ bin3, int64_t* __restrict__ gbin) {
  const int64_t i = thread_index();
  if (i >= n) return;
  const GraphPlan& g = plans[graph[i]];
  int b[3];
  bin_of(g, frac + 3 * i, b);
  for (int k = 0; k < 3; ++k) bin3[3 * i + k] = b[k];
  gbin[i] = g.bin_offset + (static_cast<int64_t>(b[0]) * g.n[1] + b[1]) * g.n[2] + b[2];
}

// Thread t takes centre sorted_idx[t]: neighbouring threads then hold centres
// of the same bin and scan the same bins (coherent loops, shared cache lines).
// Outputs are indexed by the centre, so this does not change them.
template <typename real>
__global__ void count_kernel(NeighborArgs<real> a, int64_t* __restrict__ count) {
  const int64_t t = thread_index();
  if (t >= a.n) return;
  const int64_t i = a.sorted_idx[t];
  int64_t c = 0;
  visit_neighbors<real, int64_t>(a.plans[a.graph[i]], i, a.pos_w, a.bin3, a.sorted_idx, a.sorted_pos,
                                 a.bin_start, a.loop, [&](int64_t, int, int, int) { ++c; });
  count[i] = c;
}

template <typename real>
__global__ void fill_kernel(NeighborArgs<real> a, const int64_t* __restrict__ start, int64_t* __restrict__ src,
                            int64_t* __restrict__ dst, int64_t* __restrict__ shifts) {
  const int64_t t = thread_index();
  if (t >= a.n) return;
  const int64_t i = a.sorted_idx[t];
  const int wi0 = a.wrap[3 * i], wi1 = a.wrap[3 * i + 1], wi2 = a.wrap[3 * i + 2];
  int64_t e = start[i];
  visit_neighbors<real, int64_t>(a.plans[a.graph[i]], i, a.pos_w, a.bin3, a.sorted_idx, a.sorted_pos,
                                 a.bin_start, a.loop, [&](int64_t j, int s0, int s1, int s2) {
                                   // Shift between wrapped points -> shift between the points as given.
                                   const int* wj = a.wrap + 3 * j;
                                   src[e] = j;
                                   dst[e] = i;
                                   shifts[3 * e] = s0 + wj[0] - wi0;
                                   shifts[3 * e + 1] = s1 + wj[1] - wi1;
                                   shifts[3 * e + 2] = s2 + wj[2] - wi2;
                                   ++e;
                                 });
}

}  // namespace

template <typename real>
cudaError_t launch_wrap(const real* pos, int64_t n, const int64_t* ptr, int64_t num_graphs,
                        const GraphPlan* plans, int32_t* graph, double* frac, int* wrap, real* pos_w,
                        cudaStream_t stream) {
  if (n > 0)
    GEO3D_LAUNCH(blocks_for(n), kThreads, 0, stream, wrap_kernel<real>)(pos, n, ptr, num_graphs, plans, graph, frac,
                                                                        wrap, pos_w);
  return cudaGetLastError();
}

cudaError_t launch_frac_bounds(const double* frac, const int64_t* ptr, int64_t num_graphs, double* lo,
                               double* hi, cudaStream_t stream) {
  if (num_graphs > 0)
    GEO3D_LAUNCH(static_cast<unsigned int>(num_graphs), kThreads, 0, stream, frac_bounds_kernel)(frac, ptr, lo, hi);
  return cudaGetLastError();
}

cudaError_t launch_bin(const double* frac, const int32_t* graph, int64_t n, const GraphPlan* plans, int* bin3,
                       int64_t* gbin, cudaStream_t stream) {
  if (n > 0) GEO3D_LAUNCH(blocks_for(n), kThreads, 0, stream, bin_kernel)(frac, graph, n, plans, bin3, gbin);
  return cudaGetLastError();
}

template <typename real>
cudaError_t launch_count_neighbors(const NeighborArgs<real>& args, int64_t* count, cudaStream_t stream) {
  if (args.n > 0) GEO3D_LAUNCH(blocks_for(args.n), kThreads, 0, stream, count_kernel<real>)(args, count);
  return cudaGetLastError();
}

template <typename real>
cudaError_t launch_fill_edges(const NeighborArgs<real>& args, const int64_t* start, int64_t* src, int64_t* dst,
                              int64_t* shifts, cudaStream_t stream) {
  if (args.n > 0)
    GEO3D_LAUNCH(blocks_for(args.n), kThreads, 0, stream, fill_kernel<real>)(args, start, src, dst, shifts);
  return cudaGetLastError();
}

// The binding (a g++ translation unit) links against these instantiations.
#define GEO3D_INSTANTIATE(real)                                                                               \
  template cudaError_t launch_wrap<real>(const real*, int64_t, const int64_t*, int64_t, const GraphPlan*,       \
                                         int32_t*, double*, int*, real*, cudaStream_t);                         \
  template cudaError_t launch_count_neighbors<real>(const NeighborArgs<real>&, int64_t*, cudaStream_t);         \
  template cudaError_t launch_fill_edges<real>(const NeighborArgs<real>&, const int64_t*, int64_t*, int64_t*, \
                                               int64_t*, cudaStream_t);
GEO3D_INSTANTIATE(float)
GEO3D_INSTANTIATE(double)
#undef GEO3D_INSTANTIATE

}  // namespace cuda
}  // namespace geo3d
