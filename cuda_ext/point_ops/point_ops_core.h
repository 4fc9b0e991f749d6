// k-nearest neighbours and farthest-point sampling: the per-thread logic of the CUDA
// kernels (point_ops_cuda_kernels.cu), torch-free and __host__ __device__, so that a
// host build of the same functions can be checked against the CPU op
// (tests/test_point_ops_cuda.py) on a machine without a GPU.
//
// Both ops must return exactly what point_ops_cpu.cpp returns, so every squared
// distance that decides anything is the CPU's: in double, from the coordinates
// converted to double, dx * dx + dy * dy + dz * dz with no fused multiply-add (mul_rn),
// and every order is the CPU's: kNN by (distance, index), FPS by (distance
// descending, index ascending). Graph-local indices are int (the binding refuses
// 2^31 points or more).
#pragma once
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "common/host_device.h"  // G3D_HD, mul_rn

namespace geo3d {
namespace pointops {

constexpr int kNoIndex = 0x7fffffff;  // index of an empty slot: after every real index

// Squared distance exactly as point_ops_cpu.cpp computes it (a point minus the query).
template <typename real>
G3D_HD double sq_dist(real px, real py, real pz, double qx, double qy, double qz) {
  const double dx = static_cast<double>(px) - qx, dy = static_cast<double>(py) - qy,
               dz = static_cast<double>(pz) - qz;
  return mul_rn(dx, dx) + mul_rn(dy, dy) + mul_rn(dz, dz);
}

// (distance, index) order of the kNN lists; sentinel slots are (inf, INT_MAX).
G3D_HD bool knn_before(double d, int j, double other_d, int other_j) {
  return d < other_d || (d == other_d && j < other_j);
}

// ---------------------------------------------------------------------------
// float32 prefilter. For float inputs the kNN kernel first computes the squared
// distance in float (df, three subtractions and two fmaf, which a GPU runs at twice the
// double rate or far more) and takes the exact double path only when df <= cutoff(thr),
// thr being the list's worst distance. cutoff() is chosen so that df > cutoff(thr)
// proves the exact distance D > thr, i.e. the point would be rejected anyway:
//   df <= D_true (1 + u)^5 + a   (u = 2^-24; a < 2^-122 covers flush-to-zero of
//                                 subnormal inputs and results under --use_fast_math)
//   D >= D_true (1 - 2^-51)      (the double computation)
// give D >= (df - a)(1 - 6u), so df > thr / (1 - 6u) + a suffices, and
// thr (1 + 2^-20) + 2^-120, rounded up to float, is above that. A df that overflowed
// to inf while cutoff is finite means D > FLT_MAX > thr, also a correct rejection.
G3D_HD float knn_float_cutoff(double thr) {
  const double t = mul_rn(thr, 1.0 + 0x1p-20) + 0x1p-120;  // inf stays inf
  float f = static_cast<float>(t);
  if (static_cast<double>(f) < t) f = nextafterf(f, INFINITY);
  return f;
}

G3D_HD float sq_dist_f(float px, float py, float pz, float qx, float qy, float qz) {
  const float dx = px - qx, dy = py - qy, dz = pz - qz;
  return fmaf(dz, dz, fmaf(dy, dy, dx * dx));  // explicit fmaf: same rounding on host and device
}

// ---------------------------------------------------------------------------
// Per-query top-k lists, sorted by (distance, index). Candidates are offered in
// ascending index order, so a candidate tied with the worst entry never enters: the
// earlier index stays, as in the CPU heap. worst_d/worst_j stay in registers; the
// scan only looks at them.

// K slots in registers (K a compile-time bucket >= the degree m; all loops unrolled so
// the arrays never leave registers). The top-m of the top-K is the top-m.
template <int K>
struct RegList {
  double d[K];
  int j[K];
  double worst_d;
  int worst_j;

  G3D_HD void init() {
#pragma unroll
    for (int s = 0; s < K; ++s) {
      d[s] = INFINITY;
      j[s] = kNoIndex;
    }
    worst_d = INFINITY;
    worst_j = kNoIndex;
  }
  // Precondition: knn_before(dd, jj, worst_d, worst_j).
  G3D_HD void insert(double dd, int jj) {
    bool placed = false;
#pragma unroll
    for (int s = K - 1; s > 0; --s) {
      if (!placed) {
        if (knn_before(dd, jj, d[s - 1], j[s - 1])) {
          d[s] = d[s - 1];
          j[s] = j[s - 1];
        } else {
          d[s] = dd;
          j[s] = jj;
          placed = true;
        }
      }
    }
    if (!placed) {
      d[0] = dd;
      j[0] = jj;
    }
    worst_d = d[K - 1];
    worst_j = j[K - 1];
  }
  // The first m entries (m <= K) as global indices base + j.
  G3D_HD void write(int64_t* src, int64_t* dst, int64_t m, int64_t base, int64_t centre) const {
#pragma unroll
    for (int s = 0; s < K; ++s)
      if (s < m) {
        src[s] = base + j[s];
        dst[s] = centre;
      }
  }
};

// Exactly m slots in global memory, for degrees above the register buckets: distances
// in a scratch array, indices in the output row itself (graph-local until write()).
struct MemList {
  double* d;
  int64_t* j;
  int m;
  double worst_d;
  int worst_j;

  G3D_HD void init(double* dist, int64_t* idx, int64_t slots) {
    d = dist;
    j = idx;
    m = static_cast<int>(slots);
    for (int s = 0; s < m; ++s) {
      d[s] = INFINITY;
      j[s] = kNoIndex;
    }
    worst_d = INFINITY;
    worst_j = kNoIndex;
  }
  G3D_HD void insert(double dd, int jj) {
    int s = m - 1;
    while (s > 0 && knn_before(dd, jj, d[s - 1], static_cast<int>(j[s - 1]))) {
      d[s] = d[s - 1];
      j[s] = j[s - 1];
      --s;
    }
    d[s] = dd;
    j[s] = jj;
    worst_d = d[m - 1];
    worst_j = static_cast<int>(j[m - 1]);
  }
  // src is the row the list lives in.
  G3D_HD void write(int64_t* src, int64_t* dst, int64_t m_out, int64_t base, int64_t centre) const {
    for (int64_t s = 0; s < m_out; ++s) {
      src[s] = base + j[s];
      dst[s] = centre;
    }
  }
};

// One query scans one tile of candidates (structure of arrays, graph-local indices
// tile_start .. tile_start + count - 1), in index order. `cut` is the float prefilter
// cutoff of the list's worst distance (float inputs only), kept by the caller.
template <typename real, typename List>
G3D_HD void knn_scan_tile(List& list, float& cut, const real* tx, const real* ty, const real* tz, int count,
                          int tile_start, real qx, real qy, real qz, int self, bool loop) {
  const double qxd = qx, qyd = qy, qzd = qz;
  for (int t = 0; t < count; ++t) {
    if constexpr (std::is_same<real, float>::value) {
      if (sq_dist_f(tx[t], ty[t], tz[t], qx, qy, qz) > cut) continue;  // the common case
    }
    const int j = tile_start + t;
    if (j == self && !loop) continue;
    const double d = sq_dist(tx[t], ty[t], tz[t], qxd, qyd, qzd);
    if (knn_before(d, j, list.worst_d, list.worst_j)) {
      list.insert(d, j);
      if constexpr (std::is_same<real, float>::value) cut = knn_float_cutoff(list.worst_d);
    }
  }
}

// Register bucket for a largest degree m: 8, 16 or 32 slots, 0 for a MemList.
inline int knn_register_slots(int64_t max_degree) {
  if (max_degree <= 8) return 8;
  if (max_degree <= 16) return 16;
  if (max_degree <= 32) return 32;
  return 0;
}

// Neighbours of each point of an n-point graph, as the CPU op counts them.
inline int64_t knn_degree(int64_t n, int64_t k, bool loop) {
  const int64_t avail = loop ? n : n - 1;
  return avail < 1 ? 0 : (k < avail ? k : avail);
}

// One thread block of the kNN kernel: up to `threads` consecutive queries of one graph.
// Plain data, one layout for g++ and nvcc (copied to the device as bytes).
struct KnnBlock {
  int64_t base;       // first point of the graph
  int64_t n;          // points in the graph
  int64_t m;          // degree of its points
  int64_t edge_base;  // first edge of the graph: query q's edges start at edge_base + q m
  int64_t q0;         // first (graph-local) query of this block
};

constexpr int kKnnMaxThreads = 128;
constexpr int kKnnTile = 256;  // candidates staged in shared memory at a time

struct KnnPlan {
  std::vector<KnnBlock> blocks;  // graphs with no edges get none
  int threads = 32;              // queries per block: the largest such graph, rounded up to a warp, <= 128
  int64_t max_degree = 0;
  int64_t edges = 0;             // E
};

inline KnnPlan plan_knn(const int64_t* ptr, int64_t num_graphs, int64_t k, bool loop) {
  KnnPlan plan;
  int64_t max_points = 0;
  for (int64_t b = 0; b < num_graphs; ++b) {
    const int64_t n = ptr[b + 1] - ptr[b];
    if (knn_degree(n, k, loop) > 0 && n > max_points) max_points = n;
  }
  const int64_t rounded = (max_points + 31) / 32 * 32;
  plan.threads = static_cast<int>(rounded < 32 ? 32 : (rounded > kKnnMaxThreads ? kKnnMaxThreads : rounded));
  for (int64_t b = 0; b < num_graphs; ++b) {
    const int64_t n = ptr[b + 1] - ptr[b], m = knn_degree(n, k, loop);
    if (m == 0) continue;
    for (int64_t q0 = 0; q0 < n; q0 += plan.threads) plan.blocks.push_back({ptr[b], n, m, plan.edges, q0});
    plan.edges += n * m;
    if (m > plan.max_degree) plan.max_degree = m;
  }
  return plan;
}

// ---------------------------------------------------------------------------
// FPS. A step updates every point's distance to the chosen set and picks the
// farthest point, the lowest index among equals (the CPU op's and torch.argmax's rule).

struct FpsBest {
  double d;
  int i;
};

G3D_HD FpsBest fps_pick(FpsBest a, FpsBest b) {
  return (b.d > a.d || (b.d == a.d && b.i < a.i)) ? b : a;  // a total order: any reduction tree agrees
}

// A thread's share of one step: points first, first + stride, ... (ascending).
template <typename real>
G3D_HD FpsBest fps_update(double* dist, const real* p, int n, int first, int stride, double lx, double ly,
                          double lz) {
  FpsBest best{-1.0, kNoIndex};
  for (int i = first; i < n; i += stride) {
    const double s = sq_dist(p[3 * i], p[3 * i + 1], p[3 * i + 2], lx, ly, lz);
    const double d = s < dist[i] ? s : dist[i];  // std::min(dist[i], s), as the CPU
    dist[i] = d;
    if (d > best.d) best = {d, i};  // strict: the lowest index wins within the thread
  }
  return best;
}

// One graph of an FPS launch (plain data, copied to the device as bytes).
struct FpsGraph {
  int64_t base;   // first point
  int64_t n;      // points
  int64_t m;      // points to pick (0 < m <= n)
  int64_t start;  // graph-local first pick
  int64_t out;    // where its picks start in the output
};

// Graphs with m > 0; counts/start already validated (point_ops_checks.h).
inline int64_t plan_fps_graphs(const int64_t* ptr, const int64_t* counts, const int64_t* start,
                               int64_t num_graphs, std::vector<FpsGraph>& graphs, int64_t* max_points) {
  graphs.clear();
  int64_t out = 0;
  *max_points = 0;
  for (int64_t b = 0; b < num_graphs; ++b) {
    const int64_t n = ptr[b + 1] - ptr[b];
    if (counts[b] > 0) {
      graphs.push_back({ptr[b], n, counts[b], start[b], out});
      if (n > *max_points) *max_points = n;
    }
    out += counts[b];
  }
  return out;
}

}  // namespace pointops
}  // namespace geo3d
