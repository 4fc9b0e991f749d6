// Argument checks shared by the CPU and CUDA bindings of geo3d::radius_graph.
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

}  // namespace geo3d
