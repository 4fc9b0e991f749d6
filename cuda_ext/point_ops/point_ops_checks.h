// Argument checks shared by the CPU and CUDA bindings of geo3d::knn_graph and geo3d::fps.
#pragma once
#include <torch/extension.h>

#include <cstdint>

namespace geo3d {

// pos [N, 3] float32/float64 (any device); ptr a CPU int64 [B + 1] from 0 to N, non-decreasing.
inline void check_points(const char* op, const at::Tensor& pos, const at::Tensor& ptr) {
  TORCH_CHECK(pos.dim() == 2 && pos.size(1) == 3, op, ": 'pos' must be [N, 3], got ", pos.sizes());
  TORCH_CHECK(pos.scalar_type() == at::kFloat || pos.scalar_type() == at::kDouble, op,
              ": 'pos' must be float32 or float64, got ", pos.scalar_type());
  TORCH_CHECK(ptr.dim() == 1 && ptr.size(0) >= 1 && ptr.scalar_type() == at::kLong && ptr.is_cpu(), op,
              ": 'ptr' must be a CPU int64 [B + 1] tensor");
  const int64_t* pp = ptr.data_ptr<int64_t>();
  const int64_t B = ptr.size(0) - 1;
  TORCH_CHECK(pp[0] == 0 && pp[B] == pos.size(0), op, ": 'ptr' must run from 0 to N = ", pos.size(0));
  for (int64_t b = 0; b < B; ++b) TORCH_CHECK(pp[b + 1] >= pp[b], op, ": 'ptr' must be non-decreasing");
}

inline void check_knn_args(const at::Tensor& pos, const at::Tensor& ptr, int64_t k) {
  check_points("geo3d::knn_graph", pos, ptr);
  TORCH_CHECK(k >= 1, "geo3d::knn_graph: k must be >= 1, got ", k);
}

// counts, start: CPU int64 [B]; 0 <= counts[b] <= n_b, start[b] inside a non-empty graph.
inline void check_fps_args(const at::Tensor& pos, const at::Tensor& ptr, const at::Tensor& counts,
                           const at::Tensor& start) {
  check_points("geo3d::fps", pos, ptr);
  const int64_t B = ptr.size(0) - 1;
  TORCH_CHECK(counts.dim() == 1 && counts.size(0) == B && counts.scalar_type() == at::kLong && counts.is_cpu(),
              "geo3d::fps: 'counts' must be a CPU int64 [B] tensor");
  TORCH_CHECK(start.dim() == 1 && start.size(0) == B && start.scalar_type() == at::kLong && start.is_cpu(),
              "geo3d::fps: 'start' must be a CPU int64 [B] tensor");
  const int64_t *pp = ptr.data_ptr<int64_t>(), *pc = counts.data_ptr<int64_t>(), *ps = start.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = pp[b + 1] - pp[b];
    TORCH_CHECK(pc[b] >= 0 && pc[b] <= n, "geo3d::fps: graph ", b, " asks for ", pc[b], " of ", n, " points");
    TORCH_CHECK(n == 0 || (ps[b] >= 0 && ps[b] < n), "geo3d::fps: start ", ps[b], " outside graph ", b);
  }
}

}  // namespace geo3d
