// CUDA radius graph: torch glue around the kernels of radius_graph_cuda_kernels.cu.
// Compiled only in CUDA builds (setup.py drops *_cuda.cpp otherwise). The
// kernels' file has another base name because setuptools gives x.cpp and x.cu
// the same object file, and one would silently replace the other.
//
// Two host syncs: the bounding boxes (plans are made on the host with the
// same plan_graph() as the CPU op) and the edge count (to allocate the output).
#include <torch/extension.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "common/cuda_binding.h"
#include "common/float_dispatch.h"
#include "radius_graph/radius_graph_checks.h"
#include "radius_graph/radius_graph_cuda.h"

namespace geo3d {
namespace {

// Plans travel as raw bytes: GraphPlan is plain data with one layout for g++ and nvcc.
at::Tensor plans_to_device(const std::vector<GraphPlan>& plans, const at::Device& device) {
  at::Tensor host = at::empty({static_cast<int64_t>(plans.size() * sizeof(GraphPlan))}, at::kByte);
  std::memcpy(host.data_ptr(), plans.data(), host.numel());
  return host.to(device);
}

const GraphPlan* as_plans(const at::Tensor& t) { return reinterpret_cast<const GraphPlan*>(t.data_ptr()); }

template <typename real>
std::tuple<at::Tensor, at::Tensor> radius_graph_cuda_impl(const at::Tensor& pos_in, const at::Tensor& ptr_in,
                                                          const at::Tensor& cell_in, const at::Tensor& pbc_in,
                                                          double cutoff, bool loop, int64_t bins_per_cutoff) {
  const at::Tensor pos = pos_in.contiguous(), ptr = ptr_in.contiguous();
  const at::Tensor cell = cell_in.contiguous(), pbc = pbc_in.contiguous();
  const int64_t N = pos.size(0), B = ptr.size(0) - 1;
  const at::Device device = pos.device();
  const auto i64 = pos.options().dtype(at::kLong), i32 = pos.options().dtype(at::kInt);
  const auto f64 = pos.options().dtype(at::kDouble);
  if (N == 0) return {at::empty({2, 0}, i64), at::empty({0, 3}, i64)};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  // Cell frames first: wrapping needs Hinv, binning needs the bounding boxes too.
  std::vector<GraphPlan> plans(B);
  const double* c = cell.data_ptr<double>();
  const bool* pb = pbc.data_ptr<bool>();
  for (int64_t g = 0; g < B; ++g) set_cell_frame(plans[g], c, pb, g);
  const at::Tensor ptr_d = ptr.to(device);
  at::Tensor plans_d = plans_to_device(plans, device);
  const at::Tensor graph = at::empty({N}, i32), frac = at::empty({N, 3}, f64);
  const at::Tensor wrap = at::empty({N, 3}, i32), pos_w = at::empty({N, 3}, pos.options());
  C10_CUDA_CHECK(cuda::launch_wrap<real>(pos.data_ptr<real>(), N, ptr_d.data_ptr<int64_t>(), B, as_plans(plans_d),
                                         graph.data_ptr<int32_t>(), frac.data_ptr<double>(),
                                         wrap.data_ptr<int>(), pos_w.data_ptr<real>(), stream));
  const at::Tensor lo = at::empty({B, 3}, f64), hi = at::empty({B, 3}, f64);
  C10_CUDA_CHECK(cuda::launch_frac_bounds(frac.data_ptr<double>(), ptr_d.data_ptr<int64_t>(), B,
                                          lo.data_ptr<double>(), hi.data_ptr<double>(), stream));

  // Plan on the host, exactly as prepare_sorted() in radius_graph_cpu.cpp does (sync 1).
  const at::Tensor lo_h = lo.cpu(), hi_h = hi.cpu();
  const int64_t* pp = ptr.data_ptr<int64_t>();
  int64_t total_bins = 0;
  for (int64_t g = 0; g < B; ++g) {
    plan_graph(plans[g], lo_h.data_ptr<double>() + 3 * g, hi_h.data_ptr<double>() + 3 * g, cutoff,
               static_cast<int>(bins_per_cutoff), std::max<int64_t>(8, 2 * (pp[g + 1] - pp[g])));
    plans[g].bin_offset = total_bins;
    total_bins += static_cast<int64_t>(plans[g].n[0]) * plans[g].n[1] * plans[g].n[2];
  }
  plans_d = plans_to_device(plans, device);
  const at::Tensor bin3 = at::empty({N, 3}, i32), gbin = at::empty({N}, i64);
  C10_CUDA_CHECK(cuda::launch_bin(frac.data_ptr<double>(), graph.data_ptr<int32_t>(), N, as_plans(plans_d),
                                  bin3.data_ptr<int>(), gbin.data_ptr<int64_t>(), stream));

  // Stable sort: ties keep index order, like the CPU's counting sort, so bins
  // are scanned in the same order and edges come out in the same order.
  const auto sorted = gbin.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false);
  const at::Tensor& sorted_bin = std::get<0>(sorted);
  const at::Tensor& sorted_idx = std::get<1>(sorted);
  const at::Tensor bin_start = at::searchsorted(sorted_bin, at::arange(total_bins + 1, i64));
  const at::Tensor sorted_pos = pos_w.index_select(0, sorted_idx);

  cuda::NeighborArgs<real> args{as_plans(plans_d),
                                graph.data_ptr<int32_t>(),
                                wrap.data_ptr<int>(),
                                pos_w.data_ptr<real>(),
                                bin3.data_ptr<int>(),
                                sorted_idx.data_ptr<int64_t>(),
                                sorted_pos.data_ptr<real>(),
                                bin_start.data_ptr<int64_t>(),
                                N,
                                loop};
  const at::Tensor count = at::empty({N}, i64);
  C10_CUDA_CHECK(cuda::launch_count_neighbors<real>(args, count.data_ptr<int64_t>(), stream));
  const at::Tensor end = count.cumsum(0);
  const int64_t E = end[N - 1].item<int64_t>();  // sync 2
  const at::Tensor start = end - count;

  at::Tensor edge_index = at::empty({2, E}, i64), shifts = at::empty({E, 3}, i64);
  if (E > 0) {
    int64_t* src = edge_index.data_ptr<int64_t>();
    C10_CUDA_CHECK(cuda::launch_fill_edges<real>(args, start.data_ptr<int64_t>(), src, src + E,
                                                 shifts.data_ptr<int64_t>(), stream));
  }
  return {edge_index, shifts};
}

std::tuple<at::Tensor, at::Tensor> radius_graph_cuda(const at::Tensor& pos, const at::Tensor& ptr,
                                                     const at::Tensor& cell, const at::Tensor& pbc, double cutoff,
                                                     bool loop, int64_t bins_per_cutoff) {
  check_radius_graph_inputs(pos, ptr, cell, pbc, cutoff, bins_per_cutoff);
  TORCH_CHECK(on_kernel_device(pos), "geo3d::radius_graph (CUDA): pos must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(pos.device());  // allocations, stream and launches on pos's device
  return dispatch_float(pos.scalar_type(), [&](auto tag) {
    return radius_graph_cuda_impl<decltype(tag)>(pos, ptr, cell, pbc, cutoff, loop, bins_per_cutoff);
  });
}

}  // namespace
}  // namespace geo3d

GEO3D_CUDA_LIBRARY_IMPL(m) { m.impl("radius_graph", &geo3d::radius_graph_cuda); }
