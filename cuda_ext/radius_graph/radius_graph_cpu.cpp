// CPU radius graph: cell lists, O(N), OpenMP.
//
// Same plans, bins and arithmetic as the shared core (radius_graph_core.h), so
// the edge set, and its order, is the one `visit_neighbors` gives; this file
// only organises the work differently, for speed:
//  - the preparation (wrap, bin, counting sort) reads the positions in their
//    own precision (no float64 copy), and is parallel for large graphs;
//  - centres are visited in bin-sorted order, so consecutive centres share
//    their neighbour bins in cache; sorted positions are split by axis;
//  - the 2m+1 neighbour bins along the last axis are contiguous in sorted
//    order: a centre scans (2m+1)^2 contiguous runs, not (2m+1)^3 bins;
//  - the scan is branch-free (every candidate written, hits advance the end)
//    into per-chunk int32 buffers (neighbour, image index); a gather pass then
//    writes the int64 output front to back in the original order of the
//    centres (the output is sorted by centre i), so the large output is
//    written once, sequentially, and nothing is stored per edge in between but
//    4 (open) or 8 (periodic) bytes.
#include <torch/extension.h>

#include <algorithm>
#include <cstdlib>
#include <exception>
#include <limits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "common/float_dispatch.h"
#include "common/host_output.h"
#include "radius_graph/radius_graph_checks.h"
#include "radius_graph/radius_graph_core.h"

namespace geo3d {
namespace {

// Below this many points the op runs on one thread: every fork/join of an
// OpenMP team costs microseconds on an idle machine but up to a scheduler time
// slice (milliseconds) when other processes keep the cores busy.
constexpr int64_t kSerialBelow = 8192;
// The preparation (O(N), a few ns a point) is parallel only above this many
// points, so smaller graphs pay for two forks (scan and gather) instead of five.
constexpr int64_t kParallelPrepAbove = 1 << 17;

// Wrapped, bin-sorted points of a whole batch.
template <typename real>
struct SortedPoints {
  std::vector<GraphPlan> plans;     // [B]
  std::vector<int64_t> ptr;         // [B + 1]
  std::vector<int64_t> bin_start;   // [total_bins + 1]
  std::vector<int32_t> idx;         // [N] original index of each sorted point
  std::vector<real> x, y, z;        // [N] wrapped positions, sorted
  std::vector<int32_t> wrap;        // [3N] wrap of each point, original order (zero on open axes)
  std::vector<int32_t> img_min;     // [3B] smallest image shift a graph's scan can use, per axis
  std::vector<int32_t> img_n;       // [3B] number of image shifts per axis
  std::vector<int64_t> img_offset;  // [B + 1] first entry of a graph's images in `images`
  std::vector<int32_t> images;      // [3 * total images] the shift of each image index
  bool any_pbc = false;
};

template <typename real>
SortedPoints<real> prepare_sorted(const real* p, int64_t N, const at::Tensor& ptr_t, const at::Tensor& cell_t,
                                  const at::Tensor& pbc_t, double cutoff, int64_t bins_per_cutoff,
                                  int threads) {
  const at::Tensor cell = cell_t.contiguous(), pbc = pbc_t.contiguous();
  const int64_t B = ptr_t.size(0) - 1;
  const double* c = cell.data_ptr<double>();
  const bool* pb = pbc.data_ptr<bool>();
  SortedPoints<real> out;
  out.ptr.assign(ptr_t.data_ptr<int64_t>(), ptr_t.data_ptr<int64_t>() + B + 1);
  out.plans.resize(B);
  std::vector<double> frac(3 * static_cast<size_t>(N));
  out.wrap.resize(3 * static_cast<size_t>(N));
  int32_t* wrap = out.wrap.data();
  std::vector<int64_t> gbin(N);
  int64_t total_bins = 0;
  for (int64_t g = 0; g < B; ++g) {
    GraphPlan& plan = out.plans[g];
    set_cell_frame(plan, c, pb, g);
    out.any_pbc = out.any_pbc || plan.pbc[0] || plan.pbc[1] || plan.pbc[2];
    const int64_t begin = out.ptr[g], end = out.ptr[g + 1];
    const int nt = (end - begin) < kParallelPrepAbove ? 1 : threads;
    double lo[3], hi[3];
    for (int k = 0; k < 3; ++k) {
      lo[k] = std::numeric_limits<double>::infinity();
      hi[k] = -std::numeric_limits<double>::infinity();
    }
    // Fractional coordinates, wrapped on periodic axes (as the CUDA wrap kernel does).
#pragma omp parallel num_threads(nt)
    {
      double tlo[3], thi[3];
      for (int k = 0; k < 3; ++k) {
        tlo[k] = std::numeric_limits<double>::infinity();
        thi[k] = -std::numeric_limits<double>::infinity();
      }
#pragma omp for schedule(static)
      for (int64_t i = begin; i < end; ++i) {
        const double pd[3] = {static_cast<double>(p[3 * i]), static_cast<double>(p[3 * i + 1]),
                              static_cast<double>(p[3 * i + 2])};
        double* f = &frac[3 * i];
        to_frac(plan.Hinv, pd, f);
        for (int k = 0; k < 3; ++k) {
          if (plan.pbc[k]) {
            double w = -std::floor(f[k]);
            f[k] += w;
            if (f[k] >= 1.0) {  // rounding: f = -1e-17 gives 1.0 after the shift
              f[k] -= 1.0;
              w -= 1.0;
            }
            wrap[3 * i + k] = static_cast<int32_t>(w);
          } else {
            wrap[3 * i + k] = 0;
            tlo[k] = std::min(tlo[k], f[k]);
            thi[k] = std::max(thi[k], f[k]);
          }
        }
      }
#pragma omp critical
      for (int k = 0; k < 3; ++k) {
        lo[k] = std::min(lo[k], tlo[k]);
        hi[k] = std::max(hi[k], thi[k]);
      }
    }
    if (end == begin) {
      for (int k = 0; k < 3; ++k) lo[k] = hi[k] = 0.0;
    }
    const int64_t n_g = end - begin;
    plan_graph(plan, lo, hi, cutoff, static_cast<int>(bins_per_cutoff), std::max<int64_t>(8, 2 * n_g));
    plan.bin_offset = total_bins;
    total_bins += static_cast<int64_t>(plan.n[0]) * plan.n[1] * plan.n[2];
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t i = begin; i < end; ++i) {
      int b[3];
      bin_of(plan, &frac[3 * i], b);
      gbin[i] = plan.bin_offset + (static_cast<int64_t>(b[0]) * plan.n[1] + b[1]) * plan.n[2] + b[2];
    }
  }
  std::vector<double>().swap(frac);

  // Stable counting sort by global bin.
  out.bin_start.assign(total_bins + 1, 0);
  int64_t* bs = out.bin_start.data();
  for (int64_t i = 0; i < N; ++i) ++bs[gbin[i] + 1];
  for (int64_t b = 0; b < total_bins; ++b) bs[b + 1] += bs[b];
  out.idx.resize(N);
  {
    std::vector<int64_t> fill(out.bin_start.begin(), out.bin_start.end() - 1);
    for (int64_t i = 0; i < N; ++i) out.idx[fill[gbin[i]]++] = static_cast<int32_t>(i);
  }
  std::vector<int64_t>().swap(gbin);

  // Wrapped positions in the input precision (same arithmetic as the core's
  // callers: the wrap offset in float64, added in float64, then rounded).
  out.x.resize(N);
  out.y.resize(N);
  out.z.resize(N);
  std::vector<int64_t> k_start(B + 1);  // first sorted point of each graph
  for (int64_t g = 0; g < B; ++g) k_start[g] = out.bin_start[out.plans[g].bin_offset];
  k_start[B] = N;
  const int nt = N < kParallelPrepAbove ? 1 : threads;
#pragma omp parallel num_threads(nt)
  {
    int t = 0, n_t = 1;
#ifdef _OPENMP
    t = omp_get_thread_num();
    n_t = omp_get_num_threads();
#endif
    const int64_t k_lo = N * t / n_t, k_hi = N * (t + 1) / n_t;
    int64_t g = std::upper_bound(k_start.begin(), k_start.end(), k_lo) - k_start.begin() - 1;
    for (int64_t k = k_lo; k < k_hi; ++k) {
      while (k >= k_start[g + 1]) ++g;
      const GraphPlan& plan = out.plans[g];
      const int64_t i = out.idx[k];
      const int32_t* w = &out.wrap[3 * i];
      real q[3];
      for (int a = 0; a < 3; ++a) {
        const double off = w[0] * plan.H[a] + w[1] * plan.H[3 + a] + w[2] * plan.H[6 + a];
        q[a] = static_cast<real>(static_cast<double>(p[3 * i + a]) + off);
      }
      out.x[k] = q[0];
      out.y[k] = q[1];
      out.z[k] = q[2];
    }
  }

  // Every image shift a graph's scan can see, indexed: on a periodic axis the
  // scan reaches bins -m .. n - 1 + m, i.e. shifts floor(-m / n) .. floor((n - 1 + m) / n).
  out.img_min.resize(3 * B);
  out.img_n.resize(3 * B);
  out.img_offset.assign(B + 1, 0);
  for (int64_t g = 0; g < B; ++g) {
    const GraphPlan& plan = out.plans[g];
    int64_t count = 1;
    for (int a = 0; a < 3; ++a) {
      int lo = 0, n = 1;
      if (plan.pbc[a]) {
        lo = floor_div(-plan.m[a], plan.n[a]);
        n = floor_div(plan.n[a] - 1 + plan.m[a], plan.n[a]) - lo + 1;
      }
      out.img_min[3 * g + a] = lo;
      out.img_n[3 * g + a] = n;
      count *= n;
      TORCH_CHECK(count < (int64_t{1} << 31), "geo3d::radius_graph: cutoff too large for the cell of graph ",
                  g);
    }
    out.img_offset[g + 1] = out.img_offset[g] + count;
  }
  TORCH_CHECK(out.img_offset[B] < (int64_t{1} << 31), "geo3d::radius_graph: too many periodic images");
  out.images.resize(3 * out.img_offset[B]);
  for (int64_t g = 0; g < B; ++g) {
    const int32_t* lo = &out.img_min[3 * g];
    const int32_t* n = &out.img_n[3 * g];
    int64_t e = out.img_offset[g];
    for (int s0 = 0; s0 < n[0]; ++s0)
      for (int s1 = 0; s1 < n[1]; ++s1)
        for (int s2 = 0; s2 < n[2]; ++s2, ++e) {
          out.images[3 * e] = lo[0] + s0;
          out.images[3 * e + 1] = lo[1] + s1;
          out.images[3 * e + 2] = lo[2] + s2;
        }
  }
  return out;
}

// One contiguous run of sorted points in the neighbourhood of a bin, with the
// image shift it is seen through.
template <typename real>
struct Run {
  int64_t begin, end;
  real o0, o1, o2;  // shift @ H in the input precision
  int32_t image;    // index of the shift in SortedPoints::images
  bool zero_shift;
};

// The runs of bin (b0, b1, b2) of graph g, in visit_neighbors' visiting order:
// d0, then d1, then d2 ascending; along the last axis the bins of one image
// form one run. Returns the number of candidate points.
template <typename real>
int64_t runs_of_bin(const SortedPoints<real>& sp, int64_t gi, int b0, int b1, int b2,
                    std::vector<Run<real>>& runs) {
  const GraphPlan& g = sp.plans[gi];
  const int64_t* bin_start = sp.bin_start.data();
  const int32_t* img_min = &sp.img_min[3 * gi];
  const int32_t* img_n = &sp.img_n[3 * gi];
  const int64_t img_base = sp.img_offset[gi];
  int64_t candidates = 0;
  runs.clear();
  for (int d0 = -g.m[0]; d0 <= g.m[0]; ++d0) {
    int c0, s0;
    if (!neighbor_bin(g, 0, b0, d0, c0, s0)) continue;
    for (int d1 = -g.m[1]; d1 <= g.m[1]; ++d1) {
      int c1, s1;
      if (!neighbor_bin(g, 1, b1, d1, c1, s1)) continue;
      const int64_t row = g.bin_offset + (static_cast<int64_t>(c0) * g.n[1] + c1) * g.n[2];
      const int lo2 = b2 - g.m[2], hi2 = b2 + g.m[2];
      int s_first = 0, s_last = 0;
      if (g.pbc[2]) {
        s_first = floor_div(lo2, g.n[2]);
        s_last = floor_div(hi2, g.n[2]);
      }
      for (int s2 = s_first; s2 <= s_last; ++s2) {
        int a, b;  // bins a..b of this row, seen through image s2
        if (g.pbc[2]) {
          a = std::max(lo2, s2 * g.n[2]) - s2 * g.n[2];
          b = std::min(hi2, s2 * g.n[2] + g.n[2] - 1) - s2 * g.n[2];
        } else {
          a = std::max(lo2, 0);
          b = std::min(hi2, g.n[2] - 1);
        }
        const int64_t begin = bin_start[row + a], end = bin_start[row + b + 1];
        if (begin == end) continue;
        Run<real> r;
        r.begin = begin;
        r.end = end;
        r.o0 = static_cast<real>(s0 * g.H[0] + s1 * g.H[3] + s2 * g.H[6]);
        r.o1 = static_cast<real>(s0 * g.H[1] + s1 * g.H[4] + s2 * g.H[7]);
        r.o2 = static_cast<real>(s0 * g.H[2] + s1 * g.H[5] + s2 * g.H[8]);
        r.image = static_cast<int32_t>(
            img_base + (static_cast<int64_t>(s0 - img_min[0]) * img_n[1] + (s1 - img_min[1])) * img_n[2] +
            (s2 - img_min[2]));
        r.zero_shift = (s0 == 0) && (s1 == 0) && (s2 == 0);
        runs.push_back(r);
        candidates += end - begin;
      }
    }
  }
  return candidates;
}

// A growable int32 array that does not initialise what it allocates.
class Int32Buffer {
 public:
  Int32Buffer() = default;
  Int32Buffer(const Int32Buffer&) = delete;
  Int32Buffer& operator=(const Int32Buffer&) = delete;
  ~Int32Buffer() { std::free(data_); }
  int32_t* data() const { return data_; }
  void reserve(int64_t n) {
    if (n <= cap_) return;
    const int64_t cap = std::max<int64_t>(n, std::max<int64_t>(1024, cap_ + cap_ / 2));
    void* p = std::realloc(data_, static_cast<size_t>(cap) * sizeof(int32_t));
    TORCH_CHECK(p != nullptr, "geo3d::radius_graph: out of memory (", cap * 4, " bytes)");
    data_ = static_cast<int32_t*>(p);
    cap_ = cap;
  }

 private:
  int32_t* data_ = nullptr;
  int64_t cap_ = 0;
};

// The edges found by one chunk of bins, centre by centre in bin-sorted order.
struct ChunkHits {
  Int32Buffer j;      // neighbour (original index)
  Int32Buffer image;  // its image index (periodic batches only)
  int64_t size = 0;
};

// Scans the bins of one chunk: appends every centre's neighbours to `hits`
// and records, at the centre's original index, their number and position.
template <typename real, bool PBC>
void scan_chunk(const SortedPoints<real>& sp, int64_t bin_lo, int64_t bin_hi, bool loop, int64_t chunk,
                ChunkHits& hits, int64_t* count, int64_t* where, std::vector<Run<real>>& runs) {
  const int64_t B = static_cast<int64_t>(sp.plans.size());
  const real* X = sp.x.data();
  const real* Y = sp.y.data();
  const real* Z = sp.z.data();
  const int32_t* idx = sp.idx.data();
  int64_t g = 0;  // graphs own consecutive bin ranges
  while (g + 1 < B && sp.plans[g + 1].bin_offset <= bin_lo) ++g;
  for (int64_t bin = bin_lo; bin < bin_hi; ++bin) {
    const int64_t k0 = sp.bin_start[bin], k1 = sp.bin_start[bin + 1];
    if (k0 == k1) continue;
    while (g + 1 < B && sp.plans[g + 1].bin_offset <= bin) ++g;
    const GraphPlan& plan = sp.plans[g];
    const int64_t local = bin - plan.bin_offset;
    const int b2 = static_cast<int>(local % plan.n[2]);
    const int b1 = static_cast<int>((local / plan.n[2]) % plan.n[1]);
    const int b0 = static_cast<int>(local / (static_cast<int64_t>(plan.n[2]) * plan.n[1]));
    const int64_t candidates = runs_of_bin(sp, g, b0, b1, b2, runs);
    const real r2 = static_cast<real>(plan.r2);
    const Run<real>* rs = runs.data();
    const int64_t n_runs = static_cast<int64_t>(runs.size());
    for (int64_t k = k0; k < k1; ++k) {
      hits.j.reserve(hits.size + candidates);
      if (PBC) hits.image.reserve(hits.size + candidates);
      int32_t* hj = hits.j.data() + hits.size;
      int32_t* himg = PBC ? hits.image.data() + hits.size : nullptr;
      const real pi0 = X[k], pi1 = Y[k], pi2 = Z[k];
      int64_t nh = 0;
      // Branch-free: every candidate is written, only hits advance.
      for (int64_t ri = 0; ri < n_runs; ++ri) {
        const Run<real>& r = rs[ri];
        const int64_t self_q = (!loop && r.zero_shift) ? k : -1;
        for (int64_t q = r.begin; q < r.end; ++q) {
          const real v0 = X[q] + r.o0 - pi0;
          const real v1 = Y[q] + r.o1 - pi1;
          const real v2 = Z[q] + r.o2 - pi2;
          hj[nh] = static_cast<int32_t>(q);
          if (PBC) himg[nh] = r.image;
          nh += ((v0 * v0 + v1 * v1 + v2 * v2) < r2) & (q != self_q);
        }
      }
      for (int64_t h = 0; h < nh; ++h) hj[h] = idx[hj[h]];
      const int64_t i = idx[k];
      count[i] = nh;
      where[i] = (chunk << 40) | hits.size;
      hits.size += nh;
    }
  }
}

template <typename real>
std::tuple<at::Tensor, at::Tensor> radius_graph_cpu_impl(const at::Tensor& pos_in, const at::Tensor& ptr,
                                                         const at::Tensor& cell, const at::Tensor& pbc,
                                                         double cutoff, bool loop, int64_t bins_per_cutoff) {
  const at::Tensor pos = pos_in.contiguous();
  const int64_t N = pos.size(0);
  int threads = 1;
#ifdef _OPENMP
  threads = omp_get_max_threads();
#endif
  const int nt = N < kSerialBelow ? 1 : threads;
  const SortedPoints<real> sp =
      prepare_sorted<real>(pos.data_ptr<real>(), N, ptr, cell, pbc, cutoff, bins_per_cutoff, threads);
  const int64_t total_bins = static_cast<int64_t>(sp.bin_start.size()) - 1;

  // Chunks of consecutive bins holding about the same number of points; more
  // chunks than threads to balance uneven densities.
  const int64_t n_chunks = nt == 1 ? 1 : std::max<int64_t>(1, std::min<int64_t>(N, 32 * nt));
  TORCH_CHECK(n_chunks < (int64_t{1} << 23), "geo3d::radius_graph: too many chunks");
  std::vector<int64_t> chunk_bin(n_chunks + 1);
  chunk_bin[0] = 0;
  chunk_bin[n_chunks] = total_bins;
  for (int64_t ch = 1; ch < n_chunks; ++ch) {
    const int64_t target = N * ch / n_chunks;
    chunk_bin[ch] = std::upper_bound(sp.bin_start.begin(), sp.bin_start.end() - 1, target) -
                    sp.bin_start.begin() - 1;
    chunk_bin[ch] = std::max(chunk_bin[ch], chunk_bin[ch - 1]);
  }

  // Scan: every centre's neighbours, in bin-sorted order, into per-chunk buffers.
  std::vector<ChunkHits> hits(n_chunks);
  std::vector<int64_t> offset(N + 1, 0);
  std::vector<int64_t> where(N);
  const bool any_pbc = sp.any_pbc;
  std::exception_ptr error;  // an exception must not leave an OpenMP region
#pragma omp parallel num_threads(nt)
  {
    std::vector<Run<real>> runs;
#pragma omp for schedule(dynamic, 1)
    for (int64_t ch = 0; ch < n_chunks; ++ch) {
      try {
        if (any_pbc)
          scan_chunk<real, true>(sp, chunk_bin[ch], chunk_bin[ch + 1], loop, ch, hits[ch], offset.data() + 1,
                                 where.data(), runs);
        else
          scan_chunk<real, false>(sp, chunk_bin[ch], chunk_bin[ch + 1], loop, ch, hits[ch], offset.data() + 1,
                                  where.data(), runs);
      } catch (...) {
#pragma omp critical
        if (!error) error = std::current_exception();
      }
    }
  }
  if (error) std::rethrow_exception(error);
  for (int64_t i = 0; i < N; ++i) offset[i + 1] += offset[i];
  const int64_t E = offset[N];

  at::Tensor edge_index = empty_host_output({2, E}, at::kLong);
  // Without a periodic axis every shift is zero: a broadcast view of one zero row
  // instead of 24 bytes an edge (700 MiB at 1M points) that nobody needs to read.
  at::Tensor shifts =
      any_pbc ? empty_host_output({E, 3}, at::kLong) : at::zeros({1, 3}, at::kLong).expand({E, 3});
  int64_t* src = edge_index.data_ptr<int64_t>();
  int64_t* dst = src + E;
  int64_t* sh = any_pbc ? shifts.data_ptr<int64_t>() : nullptr;

  // Gather, in the original order of the centres: the output is written
  // front to back, each centre's edges copied from its chunk's buffer.
  const int64_t n_ranges = nt == 1 ? 1 : 16 * nt;
  constexpr int64_t kPrefetchAhead = 8;
  const int32_t* images = sp.images.data();
  const int32_t* wrap = sp.wrap.data();
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
  for (int64_t rg = 0; rg < n_ranges; ++rg) {
    const int64_t i_lo = N * rg / n_ranges, i_hi = N * (rg + 1) / n_ranges;
    for (int64_t i = i_lo; i < i_hi; ++i) {
      // Centres in original order read their hits from scattered places of buffers
      // much larger than the cache once N is ~1e5: fetch a few centres ahead.
      if (i + kPrefetchAhead < i_hi) {
        const int64_t wa = where[i + kPrefetchAhead];
        const int32_t* ahead = hits[wa >> 40].j.data() + (wa & ((int64_t{1} << 40) - 1));
        __builtin_prefetch(ahead);
        __builtin_prefetch(ahead + 16);
      }
      const int64_t e0 = offset[i], n = offset[i + 1] - e0;
      const ChunkHits& ch = hits[where[i] >> 40];
      const int64_t at = where[i] & ((int64_t{1} << 40) - 1);
      const int32_t* hj = ch.j.data() + at;
      for (int64_t h = 0; h < n; ++h) src[e0 + h] = hj[h];
      std::fill(dst + e0, dst + e0 + n, i);
      if (any_pbc) {
        int64_t* s = sh + 3 * e0;
        const int32_t* himg = ch.image.data() + at;
        const int32_t* wi = wrap + 3 * i;
        for (int64_t h = 0; h < n; ++h) {
          const int32_t* im = images + 3 * static_cast<int64_t>(himg[h]);
          const int32_t* wj = wrap + 3 * static_cast<int64_t>(hj[h]);
          s[3 * h] = static_cast<int64_t>(im[0]) + wj[0] - wi[0];
          s[3 * h + 1] = static_cast<int64_t>(im[1]) + wj[1] - wi[1];
          s[3 * h + 2] = static_cast<int64_t>(im[2]) + wj[2] - wi[2];
        }
      }
    }
  }
  return {edge_index, shifts};
}

std::tuple<at::Tensor, at::Tensor> radius_graph_cpu(const at::Tensor& pos, const at::Tensor& ptr,
                                                    const at::Tensor& cell, const at::Tensor& pbc,
                                                    double cutoff, bool loop, int64_t bins_per_cutoff) {
  check_radius_graph_inputs(pos, ptr, cell, pbc, cutoff, bins_per_cutoff);
  return dispatch_float(pos.scalar_type(), [&](auto tag) {
    return radius_graph_cpu_impl<decltype(tag)>(pos, ptr, cell, pbc, cutoff, loop, bins_per_cutoff);
  });
}

}  // namespace
}  // namespace geo3d

TORCH_LIBRARY_IMPL(geo3d, CPU, m) { m.impl("radius_graph", &geo3d::radius_graph_cpu); }
