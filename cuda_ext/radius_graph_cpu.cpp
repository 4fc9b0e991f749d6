// CPU radius graph: cell lists, O(N), OpenMP over centres.
#include <torch/extension.h>

#include <algorithm>
#include <limits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "geo3d/radius_graph_core.h"
#include "radius_graph_common.h"

namespace geo3d {
namespace {

struct Edge {
  int32_t j;
  int32_t s[3];
};

template <typename real>
std::tuple<at::Tensor, at::Tensor> radius_graph_cpu_impl(const at::Tensor& pos_in, const at::Tensor& ptr,
                                                         const at::Tensor& cell, const at::Tensor& pbc,
                                                         double cutoff, bool loop, int64_t bins_per_cutoff) {
  const at::Tensor pos = pos_in.contiguous();
  const int64_t N = pos.size(0);
  const real* p = pos.data_ptr<real>();

  BatchBins bins = prepare_bins(pos.to(at::kDouble), ptr, cell, pbc, cutoff, bins_per_cutoff);
  const int64_t B = static_cast<int64_t>(bins.plans.size());

  // Wrapped positions in the input precision, original and bin-sorted order.
  std::vector<real> pos_w(3 * N), sorted_pos(3 * N);
  for (int64_t g = 0; g < B; ++g) {
    const GraphPlan& plan = bins.plans[g];
    for (int64_t i = bins.ptr[g]; i < bins.ptr[g + 1]; ++i) {
      for (int k = 0; k < 3; ++k) {
        const double off = bins.wrap[3 * i] * plan.H[k] + bins.wrap[3 * i + 1] * plan.H[3 + k] +
                           bins.wrap[3 * i + 2] * plan.H[6 + k];
        pos_w[3 * i + k] = static_cast<real>(static_cast<double>(p[3 * i + k]) + off);
      }
    }
  }
  for (int64_t k = 0; k < N; ++k) {
    const int64_t i = bins.sorted_idx[k];
    for (int c = 0; c < 3; ++c) sorted_pos[3 * k + c] = pos_w[3 * i + c];
  }

  // Chunks of consecutive centres, more chunks than threads to balance
  // uneven densities; concatenating them in order keeps edges sorted by centre.
  int threads = 1;
#ifdef _OPENMP
  threads = omp_get_max_threads();
#endif
  const int64_t n_chunks = std::max<int64_t>(1, std::min<int64_t>(N, 16 * threads));
  std::vector<std::vector<Edge>> chunk_edges(n_chunks);
  std::vector<int64_t> centre_count(N, 0);

#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t c = 0; c < n_chunks; ++c) {
    const int64_t begin = N * c / n_chunks, end = N * (c + 1) / n_chunks;
    std::vector<Edge>& out = chunk_edges[c];
    for (int64_t i = begin; i < end; ++i) {
      const GraphPlan& plan = bins.plans[bins.graph[i]];
      const int* wi = &bins.wrap[3 * i];
      const size_t before = out.size();
      visit_neighbors<real, int64_t>(plan, i, pos_w.data(), bins.bin3.data(), bins.sorted_idx.data(),
                                     sorted_pos.data(), bins.bin_start.data(), loop,
                                     [&](int64_t j, int s0, int s1, int s2) {
                                       const int* wj = &bins.wrap[3 * j];
                                       out.push_back(Edge{static_cast<int32_t>(j),
                                                          {s0 + wj[0] - wi[0], s1 + wj[1] - wi[1],
                                                           s2 + wj[2] - wi[2]}});
                                     });
      centre_count[i] = static_cast<int64_t>(out.size() - before);
    }
  }

  std::vector<int64_t> chunk_start(n_chunks + 1, 0);
  for (int64_t c = 0; c < n_chunks; ++c)
    chunk_start[c + 1] = chunk_start[c] + static_cast<int64_t>(chunk_edges[c].size());
  const int64_t E = chunk_start[n_chunks];

  at::Tensor edge_index = at::empty({2, E}, at::kLong);
  at::Tensor shifts = at::empty({E, 3}, at::kLong);
  int64_t* src = edge_index.data_ptr<int64_t>();
  int64_t* dst = src + E;
  int64_t* sh = shifts.data_ptr<int64_t>();

#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t c = 0; c < n_chunks; ++c) {
    const int64_t begin = N * c / n_chunks, end = N * (c + 1) / n_chunks;
    int64_t e = chunk_start[c];
    const std::vector<Edge>& in = chunk_edges[c];
    size_t k = 0;
    for (int64_t i = begin; i < end; ++i) {
      for (int64_t n = 0; n < centre_count[i]; ++n, ++k, ++e) {
        src[e] = in[k].j;
        dst[e] = i;
        sh[3 * e] = in[k].s[0];
        sh[3 * e + 1] = in[k].s[1];
        sh[3 * e + 2] = in[k].s[2];
      }
    }
    std::vector<Edge>().swap(chunk_edges[c]);  // free as we go: halves the peak memory
  }
  return {edge_index, shifts};
}

std::tuple<at::Tensor, at::Tensor> radius_graph_cpu(const at::Tensor& pos, const at::Tensor& ptr,
                                                    const at::Tensor& cell, const at::Tensor& pbc,
                                                    double cutoff, bool loop, int64_t bins_per_cutoff) {
  check_radius_graph_inputs(pos, ptr, cell, pbc, cutoff, bins_per_cutoff);
  TORCH_CHECK(pos.size(0) < std::numeric_limits<int32_t>::max(), "geo3d::radius_graph: more than 2^31 points");
  if (pos.scalar_type() == at::kDouble)
    return radius_graph_cpu_impl<double>(pos, ptr, cell, pbc, cutoff, loop, bins_per_cutoff);
  TORCH_CHECK(pos.scalar_type() == at::kFloat, "geo3d::radius_graph: pos must be float32 or float64, got ",
              pos.scalar_type());
  return radius_graph_cpu_impl<float>(pos, ptr, cell, pbc, cutoff, loop, bins_per_cutoff);
}

}  // namespace
}  // namespace geo3d

TORCH_LIBRARY_IMPL(geo3d, CPU, m) { m.impl("radius_graph", &geo3d::radius_graph_cpu); }
