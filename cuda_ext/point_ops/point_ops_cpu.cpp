// CPU k-nearest-neighbour graphs and farthest-point sampling, batched, OpenMP.
//
// kNN: per graph, a uniform grid with about two points per cell (over the axes the
// cloud actually spans); each query visits Chebyshev rings of cells around its own
// and keeps the k best in a bounded max-heap, stopping once the k-th distance is
// below the distance to any unvisited ring. Memory is O(N + N k); the output per
// centre is sorted by (distance, index), so the graph is deterministic.
// FPS: the classic O(N M) update of each point's distance to the chosen set; the
// next point is the farthest, the lowest index on ties; graphs in parallel, and
// large single graphs split each update over threads.
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "common/float_dispatch.h"
#include "point_ops/point_ops_checks.h"

namespace geo3d {
namespace {

// A single large cloud splits each FPS update over threads only above this size:
// every sample forks and joins the team, which costs microseconds on an idle
// machine but up to a scheduler time slice when other processes hold the cores.
constexpr int64_t kParallelFpsAbove = int64_t(1) << 18;

struct Grid {
  double lo[3], h;
  int64_t n[3];
  std::vector<int64_t> start;  // [cells + 1]
  std::vector<int64_t> idx;    // points (graph-local indices) sorted by cell

  int64_t cell_of(double x, int a) const {
    int64_t c = static_cast<int64_t>(std::floor((x - lo[a]) / h));
    return std::min(std::max<int64_t>(c, 0), n[a] - 1);
  }
  int64_t flat(int64_t x, int64_t y, int64_t z) const { return (x * n[1] + y) * n[2] + z; }
};

template <typename T>
Grid build_grid(const T* p, int64_t count) {
  Grid g;
  double hi[3];
  for (int a = 0; a < 3; ++a) {
    g.lo[a] = std::numeric_limits<double>::infinity();
    hi[a] = -std::numeric_limits<double>::infinity();
  }
  for (int64_t i = 0; i < count; ++i)
    for (int a = 0; a < 3; ++a) {
      g.lo[a] = std::min(g.lo[a], double(p[3 * i + a]));
      hi[a] = std::max(hi[a], double(p[3 * i + a]));
    }
  // Cell edge from the volume of the axes the cloud spans, ~2 points per cell.
  double extent[3], vol = 1.0;
  int dims = 0;
  double longest = 0.0;
  for (int a = 0; a < 3; ++a) {
    extent[a] = hi[a] - g.lo[a];
    longest = std::max(longest, extent[a]);
  }
  for (int a = 0; a < 3; ++a)
    if (extent[a] > 1e-9 * std::max(longest, 1e-300)) {
      vol *= extent[a];
      ++dims;
    }
  double h = dims == 0 ? 1.0 : std::pow(vol / std::max<double>(count / 2.0, 1.0), 1.0 / dims);
  if (!(h > 0) || !std::isfinite(h)) h = std::max(longest, 1.0);
  // Cap the cell count (a very elongated cloud) at ~4 cells per point.
  for (;;) {
    double cells = 1.0;
    for (int a = 0; a < 3; ++a) cells *= std::floor(extent[a] / h) + 1.0;
    if (cells <= 4.0 * std::max<int64_t>(count, 1) + 64) break;
    h *= 1.5;
  }
  g.h = h;
  for (int a = 0; a < 3; ++a) g.n[a] = static_cast<int64_t>(std::floor(extent[a] / h)) + 1;
  const int64_t cells = g.n[0] * g.n[1] * g.n[2];
  std::vector<int64_t> cell(count);
  g.start.assign(cells + 1, 0);
  for (int64_t i = 0; i < count; ++i) {
    cell[i] = g.flat(g.cell_of(p[3 * i], 0), g.cell_of(p[3 * i + 1], 1), g.cell_of(p[3 * i + 2], 2));
    g.start[cell[i] + 1]++;
  }
  for (int64_t c = 0; c < cells; ++c) g.start[c + 1] += g.start[c];
  std::vector<int64_t> fill(g.start.begin(), g.start.end() - 1);
  g.idx.resize(count);
  for (int64_t i = 0; i < count; ++i) g.idx[fill[cell[i]]++] = i;
  return g;
}

// (squared distance, index): the heap orders by distance, then index, so ties are deterministic.
using Cand = std::pair<double, int64_t>;

template <typename T>
void knn_query(const Grid& g, const T* p, int64_t q, int64_t k, bool loop, std::vector<Cand>& heap) {
  heap.clear();
  const double x = p[3 * q], y = p[3 * q + 1], z = p[3 * q + 2];
  const int64_t c[3] = {g.cell_of(x, 0), g.cell_of(y, 1), g.cell_of(z, 2)};
  const int64_t max_ring = std::max({g.n[0], g.n[1], g.n[2]});
  auto visit = [&](int64_t cx, int64_t cy, int64_t cz) {
    if (cx < 0 || cy < 0 || cz < 0 || cx >= g.n[0] || cy >= g.n[1] || cz >= g.n[2]) return;
    const int64_t f = g.flat(cx, cy, cz);
    for (int64_t s = g.start[f]; s < g.start[f + 1]; ++s) {
      const int64_t j = g.idx[s];
      if (j == q && !loop) continue;
      const double dx = double(p[3 * j]) - x, dy = double(p[3 * j + 1]) - y, dz = double(p[3 * j + 2]) - z;
      const Cand cand{dx * dx + dy * dy + dz * dz, j};
      if (int64_t(heap.size()) < k) {
        heap.push_back(cand);
        std::push_heap(heap.begin(), heap.end());
      } else if (cand < heap.front()) {
        std::pop_heap(heap.begin(), heap.end());
        heap.back() = cand;
        std::push_heap(heap.begin(), heap.end());
      }
    }
  };
  for (int64_t r = 0; r <= max_ring; ++r) {
    for (int64_t dx = -r; dx <= r; ++dx)
      for (int64_t dy = -r; dy <= r; ++dy) {
        if (std::abs(dx) == r || std::abs(dy) == r) {
          for (int64_t dz = -r; dz <= r; ++dz) visit(c[0] + dx, c[1] + dy, c[2] + dz);
        } else {
          visit(c[0] + dx, c[1] + dy, c[2] - r);
          if (r > 0) visit(c[0] + dx, c[1] + dy, c[2] + r);
        }
      }
    // Every point outside rings 0..r is at least r * h away.
    const double bound = double(r) * g.h;
    if (int64_t(heap.size()) == k && heap.front().first <= bound * bound) break;
  }
  std::sort_heap(heap.begin(), heap.end());
}

template <typename T>
at::Tensor knn_impl(const at::Tensor& pos, const at::Tensor& ptr, int64_t k, bool loop) {
  const int64_t N = pos.size(0), B = ptr.size(0) - 1;
  const int64_t* pp = ptr.data_ptr<int64_t>();
  const T* p = pos.data_ptr<T>();
  // Neighbours of each point: min(k, points available in its graph).
  std::vector<int64_t> offset(N + 1, 0);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = pp[b + 1] - pp[b];
    const int64_t m = std::min<int64_t>(k, loop ? n : n - 1);
    for (int64_t i = pp[b]; i < pp[b + 1]; ++i) offset[i + 1] = std::max<int64_t>(m, 0);
  }
  for (int64_t i = 0; i < N; ++i) offset[i + 1] += offset[i];
  auto out = at::empty({2, offset[N]}, pos.options().dtype(at::kLong));
  int64_t* src = out.data_ptr<int64_t>();
  int64_t* dst = src + offset[N];
  for (int64_t b = 0; b < B; ++b) {
    const int64_t base = pp[b], n = pp[b + 1] - pp[b];
    if (n == 0 || offset[base + n] == offset[base]) continue;
    const Grid g = build_grid(p + 3 * base, n);
    const int64_t m = offset[base + 1] - offset[base];
#pragma omp parallel if (n > 2048)
    {
      std::vector<Cand> heap;
      heap.reserve(m);
#pragma omp for schedule(dynamic, 256)
      for (int64_t q = 0; q < n; ++q) {
        knn_query(g, p + 3 * base, q, m, loop, heap);
        const int64_t o = offset[base + q];
        for (int64_t t = 0; t < m; ++t) {
          src[o + t] = base + heap[t].second;
          dst[o + t] = base + q;
        }
      }
    }
  }
  return out;
}

// [2, E] int64: row 0 the neighbour j, row 1 the centre i; for each centre, its
// min(k, n - 1 (n with loop)) nearest points of its own graph, nearest first.
at::Tensor knn_graph_cpu(const at::Tensor& pos_, const at::Tensor& ptr, int64_t k, bool loop) {
  check_knn_args(pos_, ptr, k);
  const auto pos = pos_.contiguous();
  return dispatch_float(pos.scalar_type(), [&](auto tag) { return knn_impl<decltype(tag)>(pos, ptr, k, loop); });
}

template <typename T>
void fps_graph(const T* p, int64_t n, int64_t m, int64_t first, int64_t base, int64_t* out, bool parallel) {
  std::vector<double> dist(n, std::numeric_limits<double>::infinity());
  int64_t last = first;
  out[0] = base + first;
  for (int64_t s = 1; s < m; ++s) {
    const double x = p[3 * last], y = p[3 * last + 1], z = p[3 * last + 2];
    double best = -1.0;
    int64_t arg = 0;
#pragma omp parallel if (parallel)
    {
      double tb = -1.0;
      int64_t ta = 0;
#pragma omp for schedule(static) nowait
      for (int64_t i = 0; i < n; ++i) {
        const double dx = double(p[3 * i]) - x, dy = double(p[3 * i + 1]) - y, dz = double(p[3 * i + 2]) - z;
        const double d = std::min(dist[i], dx * dx + dy * dy + dz * dz);
        dist[i] = d;
        if (d > tb) {  // strictly greater: the lowest index wins within a thread's ascending range
          tb = d;
          ta = i;
        }
      }
#pragma omp critical
      if (tb > best || (tb == best && ta < arg)) {
        best = tb;
        arg = ta;
      }
    }
    out[s] = base + arg;
    last = arg;
  }
}

// Indices [sum_b m_b] of the sampled points, graph by graph in selection order;
// m_b = ceil(ratio * n_b) (at least 1 for a non-empty graph), start[b] the first pick.
at::Tensor fps_cpu(const at::Tensor& pos_, const at::Tensor& ptr, const at::Tensor& counts, const at::Tensor& start) {
  check_fps_args(pos_, ptr, counts, start);
  const int64_t B = ptr.size(0) - 1;
  const auto pos = pos_.contiguous();
  const int64_t *pp = ptr.data_ptr<int64_t>(), *pc = counts.data_ptr<int64_t>(), *ps = start.data_ptr<int64_t>();
  std::vector<int64_t> offset(B + 1, 0);
  for (int64_t b = 0; b < B; ++b) offset[b + 1] = offset[b] + pc[b];
  auto out = at::empty({offset[B]}, pos.options().dtype(at::kLong));
  int64_t* po = out.data_ptr<int64_t>();
  const bool many = B > 1;
  dispatch_float(pos.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const T* p = pos.data_ptr<T>();
#pragma omp parallel for schedule(dynamic, 1) if (many)
    for (int64_t b = 0; b < B; ++b) {
      const int64_t n = pp[b + 1] - pp[b];
      if (pc[b] == 0) continue;
      fps_graph(p + 3 * pp[b], n, pc[b], ps[b], pp[b], po + offset[b], !many && n > kParallelFpsAbove);
    }
  });
  return out;
}

}  // namespace
}  // namespace geo3d

TORCH_LIBRARY_IMPL(geo3d, CPU, m) {
  m.impl("knn_graph", &geo3d::knn_graph_cpu);
  m.impl("fps", &geo3d::fps_cpu);
}
