// Argument checks of geo3d::radius_graph, one list for the CPU and the CUDA binding (the CUDA
// binding adds only where pos lives).
#pragma once
#include <torch/extension.h>

#include <cmath>
#include <cstdint>
#include <limits>

#include "radius_graph/radius_graph_core.h"

namespace geo3d {

// pos [N, 3] float32/float64 with N < 2^31 (any device); ptr a CPU int64 [B + 1] from 0 to N,
// sorted; cell CPU float64 [B, 3, 3]; pbc CPU bool [B, 3]; 0 < cutoff < inf; 1 <= bins_per_cutoff <= 8.
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
  TORCH_CHECK(pos.size(0) < std::numeric_limits<int32_t>::max(), "geo3d::radius_graph: more than 2^31 points");
  TORCH_CHECK(pos.scalar_type() == at::kFloat || pos.scalar_type() == at::kDouble,
              "geo3d::radius_graph: pos must be float32 or float64, got ", pos.scalar_type());
}

// Graph g's frame in `plan` (H, pbc, Hinv) from the checked cell and pbc (contiguous CPU data);
// a singular cell is refused here.
inline void set_cell_frame(GraphPlan& plan, const double* cell, const bool* pbc, int64_t g) {
  for (int k = 0; k < 9; ++k) plan.H[k] = cell[9 * g + k];
  for (int k = 0; k < 3; ++k) plan.pbc[k] = pbc[3 * g + k] ? 1 : 0;
  TORCH_CHECK(inv3(plan.H, plan.Hinv), "geo3d::radius_graph: cell of graph ", g, " is singular");
}

}  // namespace geo3d
