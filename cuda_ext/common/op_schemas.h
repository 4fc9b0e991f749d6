// Schemas of geo3d's native ops, one list for torch.ops.geo3d (ops.cpp) and for the CUDA
// simulator's torch.ops.geo3d_cudasim (cudasim/module.cpp), so the two cannot drift.
#pragma once
#include <torch/library.h>

namespace geo3d {

inline void define_ops(torch::Library& m) {
  // pos [N, 3] float; ptr [B + 1] int64 (CPU); cell [B, 3, 3] float64 (CPU,
  // non-periodic axes completed); pbc [B, 3] bool (CPU).
  // Returns edge_index [2, E] int64 (row 0 = neighbour j, row 1 = centre i,
  // sorted by i) and shifts [E, 3] int64 with vec = pos[j] - pos[i] + shifts @ cell.
  m.def(
      "radius_graph(Tensor pos, Tensor ptr, Tensor cell, Tensor pbc, float cutoff, bool loop, "
      "int bins_per_cutoff) -> (Tensor, Tensor)");
  // Point-cloud ops. knn_graph: [2, E] (row 0 neighbour j, row 1 centre i), each
  // centre's min(k, available) nearest points of its own graph, nearest first.
  // fps: counts[b] indices of graph b in farthest-point order from start[b].
  m.def("knn_graph(Tensor pos, Tensor ptr, int k, bool loop) -> Tensor");
  m.def("fps(Tensor pos, Tensor ptr, Tensor counts, Tensor start) -> Tensor");
  // Tensor product kernels over the tables of geo3d/o3/tp_plan.py (paths [P, 13] int64,
  // cg_index [nnz, 3] int64, cg_value [nnz] float64, path_weight [P] float64). Features in
  // e3nn's layout; w is [weight_numel] (shared) or one row per batch row / edge.
  // Autograd (double backward included) is composed in geo3d/ops/tensor_product.py.
  m.def(
      "tp_forward(Tensor x1, Tensor x2, Tensor w, Tensor paths, Tensor cg_index, Tensor cg_value, "
      "Tensor path_weight, int dim_out) -> Tensor");
  m.def(
      "tp_backward(Tensor x1, Tensor x2, Tensor w, Tensor grad, Tensor paths, Tensor cg_index, "
      "Tensor cg_value, Tensor path_weight) -> (Tensor, Tensor, Tensor)");
  // Fused convolution: out[i] = sum over e = (j -> i) of TP(x[j], sh[e], w[e]), with
  // edge_index[0] = j (sender), edge_index[1] = i (receiver); any edge order.
  m.def(
      "tp_conv_forward(Tensor x, Tensor sh, Tensor w, Tensor edge_index, Tensor paths, Tensor cg_index, "
      "Tensor cg_value, Tensor path_weight, int dim_out) -> Tensor");
  m.def(
      "tp_conv_backward(Tensor x, Tensor sh, Tensor w, Tensor edge_index, Tensor grad, Tensor paths, "
      "Tensor cg_index, Tensor cg_value, Tensor path_weight) -> (Tensor, Tensor, Tensor)");
}

}  // namespace geo3d
