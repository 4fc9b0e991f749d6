// Host-side preparation of the radius graph shared by the CPU and CUDA bindings:
// argument checks, per-graph plans, wrapping and the bin sort.
#pragma once
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "geo3d/radius_graph_core.h"

namespace geo3d {

inline void check_radius_graph_inputs(const at::Tensor& pos, const at::Tensor& ptr, const at::Tensor& cell,
                                      const at::Tensor& pbc, double cutoff, int64_t bins_per_cutoff) {
  TORCH_CHECK(pos.dim() == 2 && pos.size(1) == 3, "geo3d::radius_graph: pos must be [N, 3], got ",
              pos.sizes());
  TORCH_CHECK(ptr.dim() == 1 && ptr.size(0) >= 1 && ptr.scalar_type() == at::kLong && ptr.is_cpu(),
              "geo3d::radius_graph: ptr must be a CPU int64 [B + 1] tensor");
  const int64_t B = ptr.size(0) - 1;
  TORCH_CHECK(cell.dim() == 3 && cell.size(0) == B && cell.size(1) == 3 && cell.size(2) == 3 &&
                  cell.scalar_type() == at::kDouble && cell.is_cpu(),
              "geo3d::radius_graph: cell must be a CPU float64 [B, 3, 3] tensor, got ", cell.sizes());
  TORCH_CHECK(pbc.dim() == 2 && pbc.size(0) == B && pbc.size(1) == 3 && pbc.scalar_type() == at::kBool &&
                  pbc.is_cpu(),
              "geo3d::radius_graph: pbc must be a CPU bool [B, 3] tensor");
  TORCH_CHECK(cutoff > 0 && std::isfinite(cutoff), "geo3d::radius_graph: cutoff must be positive, got ", cutoff);
  TORCH_CHECK(bins_per_cutoff >= 1 && bins_per_cutoff <= 8, "geo3d::radius_graph: bins_per_cutoff in [1, 8]");
  const int64_t* pp = ptr.data_ptr<int64_t>();
  TORCH_CHECK(pp[0] == 0 && pp[B] == pos.size(0), "geo3d::radius_graph: ptr must run from 0 to N");
  for (int64_t g = 0; g < B; ++g) TORCH_CHECK(pp[g + 1] >= pp[g], "geo3d::radius_graph: ptr must be sorted");
}

// Everything the neighbour visit needs, for a whole batch, in original point order
// unless said otherwise.
struct BatchBins {
  std::vector<int64_t> ptr;         // [B + 1]
  std::vector<GraphPlan> plans;     // [B]
  std::vector<int32_t> graph;       // [N] graph of each point
  std::vector<int> wrap;            // [N, 3] integer cell vectors added to wrap a point into the cell
  std::vector<int> bin3;            // [N, 3] bin coordinates
  std::vector<int64_t> sorted_idx;  // [N] points sorted by global bin (stable)
  std::vector<int64_t> bin_start;   // [total_bins + 1]
};

// pos: CPU float64 [N, 3]. Wraps periodic axes, plans and bins every graph,
// and counting-sorts the points by bin. O(N + bins).
inline BatchBins prepare_bins(const at::Tensor& pos, const at::Tensor& ptr_t, const at::Tensor& cell_t,
                              const at::Tensor& pbc_t, double cutoff, int64_t bins_per_cutoff) {
  const at::Tensor cell = cell_t.contiguous(), pbc = pbc_t.contiguous(), posc = pos.contiguous();
  const int64_t B = ptr_t.size(0) - 1, N = posc.size(0);
  const double* p = posc.data_ptr<double>();
  const double* c = cell.data_ptr<double>();
  const bool* pb = pbc.data_ptr<bool>();
  BatchBins out;
  out.ptr.assign(ptr_t.data_ptr<int64_t>(), ptr_t.data_ptr<int64_t>() + B + 1);
  out.plans.resize(B);
  out.graph.resize(N);
  out.wrap.assign(3 * N, 0);
  out.bin3.resize(3 * N);
  std::vector<double> frac(3 * N);
  std::vector<int64_t> gbin(N);
  int64_t total_bins = 0;
  for (int64_t g = 0; g < B; ++g) {
    GraphPlan& plan = out.plans[g];
    for (int k = 0; k < 9; ++k) plan.H[k] = c[9 * g + k];
    for (int k = 0; k < 3; ++k) plan.pbc[k] = pb[3 * g + k] ? 1 : 0;
    TORCH_CHECK(inv3(plan.H, plan.Hinv), "geo3d::radius_graph: cell of graph ", g, " is singular");
    const int64_t begin = out.ptr[g], end = out.ptr[g + 1];
    double lo[3] = {0, 0, 0}, hi[3] = {0, 0, 0};
    for (int k = 0; k < 3; ++k) {
      lo[k] = std::numeric_limits<double>::infinity();
      hi[k] = -std::numeric_limits<double>::infinity();
    }
    for (int64_t i = begin; i < end; ++i) {
      out.graph[i] = static_cast<int32_t>(g);
      double* f = &frac[3 * i];
      to_frac(plan.Hinv, p + 3 * i, f);
      for (int k = 0; k < 3; ++k) {
        if (plan.pbc[k]) {
          double w = -std::floor(f[k]);
          f[k] += w;
          if (f[k] >= 1.0) {  // rounding: f = -1e-17 gives 1.0 after the shift
            f[k] -= 1.0;
            w -= 1.0;
          }
          out.wrap[3 * i + k] = static_cast<int>(w);
        } else {
          lo[k] = std::min(lo[k], f[k]);
          hi[k] = std::max(hi[k], f[k]);
        }
      }
    }
    if (end == begin) {
      for (int k = 0; k < 3; ++k) lo[k] = hi[k] = 0.0;
    }
    const int64_t n_g = end - begin;
    plan_graph(plan, lo, hi, cutoff, static_cast<int>(bins_per_cutoff), std::max<int64_t>(8, 2 * n_g));
    plan.bin_offset = total_bins;
    total_bins += static_cast<int64_t>(plan.n[0]) * plan.n[1] * plan.n[2];
    for (int64_t i = begin; i < end; ++i) {
      int* b = &out.bin3[3 * i];
      bin_of(plan, &frac[3 * i], b);
      gbin[i] = plan.bin_offset + (static_cast<int64_t>(b[0]) * plan.n[1] + b[1]) * plan.n[2] + b[2];
    }
  }
  // Counting sort by global bin.
  out.bin_start.assign(total_bins + 1, 0);
  for (int64_t i = 0; i < N; ++i) ++out.bin_start[gbin[i] + 1];
  for (int64_t b = 0; b < total_bins; ++b) out.bin_start[b + 1] += out.bin_start[b];
  out.sorted_idx.resize(N);
  std::vector<int64_t> fill(out.bin_start.begin(), out.bin_start.end() - 1);
  for (int64_t i = 0; i < N; ++i) out.sorted_idx[fill[gbin[i]]++] = i;
  return out;
}

}  // namespace geo3d
