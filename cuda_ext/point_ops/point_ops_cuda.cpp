// CUDA kNN graph and farthest-point sampling: torch glue around the kernels of
// point_ops_cuda_kernels.cu. Compiled only in CUDA builds (setup.py drops *_cuda.cpp
// otherwise); the kernels' file has another base name because setuptools gives x.cpp
// and x.cu the same object file.
//
// Same schemas, checks and results as point_ops_cpu.cpp, bit for bit (edge order and
// ties included). ptr, counts and start are CPU tensors, so the plan and the output
// sizes are made on the host: no device-to-host sync, one small host-to-device copy.
#include <torch/extension.h>

#include <cstring>
#include <limits>
#include <vector>

#include "common/cuda_binding.h"
#include "common/float_dispatch.h"
#include "point_ops/point_ops_checks.h"
#include "point_ops/point_ops_cuda.h"

namespace geo3d {
namespace {

// Plain-data plans travel as raw bytes (one layout for g++ and nvcc).
template <typename T>
at::Tensor to_device(const std::vector<T>& items, const at::Device& device) {
  at::Tensor host = at::empty({static_cast<int64_t>(items.size() * sizeof(T))}, at::kByte);
  if (!items.empty()) std::memcpy(host.data_ptr(), items.data(), host.numel());
  return host.to(device);
}

void check_cuda_points(const char* op, const at::Tensor& pos) {
  TORCH_CHECK(on_kernel_device(pos), op, " (CUDA): 'pos' must be a CUDA tensor");
  TORCH_CHECK(pos.size(0) < std::numeric_limits<int32_t>::max(), op, ": more than 2^31 points");
}

at::Tensor knn_graph_cuda(const at::Tensor& pos_in, const at::Tensor& ptr, int64_t k, bool loop) {
  check_knn_args(pos_in, ptr, k);
  check_cuda_points("geo3d::knn_graph", pos_in);
  const c10::cuda::CUDAGuard guard(pos_in.device());
  const at::Tensor pos = pos_in.contiguous();
  const int64_t B = ptr.size(0) - 1;

  const pointops::KnnPlan plan = pointops::plan_knn(ptr.data_ptr<int64_t>(), B, k, loop);
  const int64_t E = plan.edges;
  at::Tensor out = at::empty({2, E}, pos.options().dtype(at::kLong));
  if (E == 0) return out;
  const at::Tensor blocks_d = to_device(plan.blocks, pos.device());
  const auto* blocks = reinterpret_cast<const pointops::KnnBlock*>(blocks_d.data_ptr());
  const int64_t num_blocks = static_cast<int64_t>(plan.blocks.size());
  at::Tensor scratch;  // distances of the global-memory lists only
  if (pointops::knn_register_slots(plan.max_degree) == 0) scratch = at::empty({E}, pos.options().dtype(at::kDouble));
  double* sp = scratch.defined() ? scratch.data_ptr<double>() : nullptr;
  int64_t* src = out.data_ptr<int64_t>();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  dispatch_float(pos.scalar_type(), [&](auto tag) {
    using real = decltype(tag);
    C10_CUDA_CHECK(cuda::launch_knn<real>(pos.data_ptr<real>(), blocks, num_blocks, plan.threads, plan.max_degree,
                                          loop, src, src + E, sp, stream));
  });
  return out;
}

at::Tensor fps_cuda(const at::Tensor& pos_in, const at::Tensor& ptr, const at::Tensor& counts,
                    const at::Tensor& start) {
  check_fps_args(pos_in, ptr, counts, start);
  check_cuda_points("geo3d::fps", pos_in);
  const c10::cuda::CUDAGuard guard(pos_in.device());
  const at::Tensor pos = pos_in.contiguous();
  const int64_t B = ptr.size(0) - 1;

  std::vector<pointops::FpsGraph> graphs;
  int64_t max_points = 0;
  const int64_t M = pointops::plan_fps_graphs(ptr.data_ptr<int64_t>(), counts.data_ptr<int64_t>(),
                                              start.data_ptr<int64_t>(), B, graphs, &max_points);
  at::Tensor out = at::empty({M}, pos.options().dtype(at::kLong));
  if (M == 0) return out;
  const at::Tensor graphs_d = to_device(graphs, pos.device());
  const auto* g = reinterpret_cast<const pointops::FpsGraph*>(graphs_d.data_ptr());
  const int64_t num_graphs = static_cast<int64_t>(graphs.size());
  const at::Tensor scratch = at::empty({pos.size(0)}, pos.options().dtype(at::kDouble));  // large graphs
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  dispatch_float(pos.scalar_type(), [&](auto tag) {
    using real = decltype(tag);
    C10_CUDA_CHECK(cuda::launch_fps<real>(pos.data_ptr<real>(), g, num_graphs, max_points, out.data_ptr<int64_t>(),
                                          scratch.data_ptr<double>(), stream));
  });
  return out;
}

}  // namespace
}  // namespace geo3d

GEO3D_CUDA_LIBRARY_IMPL(m) {
  m.impl("knn_graph", &geo3d::knn_graph_cuda);
  m.impl("fps", &geo3d::fps_cuda);
}
