// Argument checks of the tensor-product ops, one list for the CPU and the CUDA binding
// (tensor_product_cpu.cpp, tensor_product_cuda.cpp), and the one place that turns the plan
// tables of geo3d/o3/tp_plan.py into a host tp::Plan.
//
// The two bindings differ only in where they want the tensors (`Placement`): the CPU binding
// every tensor on the CPU, the CUDA binding every one on the device of the op's first input
// (which it checks itself, with the CUDA device guard, before these run).
#pragma once
#include <torch/extension.h>

#include <algorithm>
#include <limits>
#include <optional>

#include "tensor_product/tensor_product_core.h"

namespace geo3d {
namespace tp_tables {

constexpr int64_t kIntMax = std::numeric_limits<int>::max();

// std::nullopt: the CPU binding (tensors on the CPU); a device: the CUDA binding (tensors there).
using Placement = std::optional<at::Device>;

inline void check_dims_dtype(const at::Tensor& t, const char* op, const char* name, int64_t dim,
                             at::ScalarType dtype) {
  TORCH_CHECK(t.dim() == dim, op, ": '", name, "' must have ", dim, " dimensions, got shape ", t.sizes());
  TORCH_CHECK(t.scalar_type() == dtype, op, ": '", name, "' must be ", dtype, ", got ", t.scalar_type());
}

inline void check_placement(const at::Tensor& t, const char* op, const char* name, const Placement& device) {
  if (!device) {
    TORCH_CHECK(t.device().is_cpu(), op, ": '", name, "' must be on the CPU, got ", t.device());
  } else {
    TORCH_CHECK(t.device() == *device, op, ": '", name, "' must be on ", *device, " like the features, got ",
                t.device());
  }
}

// A feature tensor (or edge_index): dims, dtype, placement.
inline void check_tensor(const at::Tensor& t, const char* op, const char* name, int64_t dim, at::ScalarType dtype,
                         const Placement& device) {
  check_dims_dtype(t, op, name, dim, dtype);
  check_placement(t, op, name, device);
}

// A plan table: dims and dtype; on the CPU or on a CUDA device (copied to the host).
inline void check_table(const at::Tensor& t, const char* op, const char* name, int64_t dim, at::ScalarType dtype) {
  check_dims_dtype(t, op, name, dim, dtype);
  TORCH_CHECK(t.is_cpu() || t.is_cuda(), op, ": '", name, "' must be a CPU or CUDA tensor, got ", t.device());
}

inline void check_size(const at::Tensor& t, const char* op, const char* name, int64_t d, int64_t expected) {
  TORCH_CHECK(t.size(d) == expected, op, ": '", name, "' has size ", t.size(d), " in dimension ", d,
              ", expected ", expected, " (shape ", t.sizes(), ")");
}

inline void check_float_inputs(const char* op, const at::Tensor& x) {
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              ": float32 or float64 inputs, got ", x.scalar_type());
}

// tp_forward (grad == nullptr) and tp_backward: x1 [Z, dim1], x2 [Z, dim2] and grad [Z, dim_out],
// all of x1's float dtype.
inline void check_tp_inputs(const char* op, const at::Tensor& x1, const at::Tensor& x2, const at::Tensor* grad,
                            const Placement& device) {
  check_float_inputs(op, x1);
  const auto dtype = x1.scalar_type();
  check_tensor(x1, op, "x1", 2, dtype, device);
  check_tensor(x2, op, "x2", 2, dtype, device);
  if (grad != nullptr) check_tensor(*grad, op, "grad", 2, dtype, device);
  check_size(x2, op, "x2", 0, x1.size(0));
  if (grad != nullptr) check_size(*grad, op, "grad", 0, x1.size(0));
}

// edge_index [2, E] int64 with every node in [0, num_nodes) (one host sync for the range).
inline void check_edge_index(const char* op, const at::Tensor& edge_index, int64_t num_nodes, int64_t num_edges,
                             const Placement& device) {
  check_tensor(edge_index, op, "edge_index", 2, at::kLong, device);
  check_size(edge_index, op, "edge_index", 0, 2);
  check_size(edge_index, op, "edge_index", 1, num_edges);
  if (num_edges == 0) return;
  const auto [lo, hi] = at::aminmax(edge_index);
  const int64_t l = lo.item<int64_t>(), h = hi.item<int64_t>();
  TORCH_CHECK(l >= 0 && h < num_nodes, op, ": 'edge_index' holds node ", l < 0 ? l : h, ", outside [0, ",
              num_nodes, ")");
}

// tp_conv_forward (grad == nullptr) and tp_conv_backward: x [N, dim1], sh [E, dim2], grad
// [N, dim_out] of x's float dtype, edge_index [2, E] into the N nodes.
inline void check_conv_inputs(const char* op, const at::Tensor& x, const at::Tensor& sh, const at::Tensor& edge_index,
                              const at::Tensor* grad, const Placement& device) {
  check_float_inputs(op, x);
  const auto dtype = x.scalar_type();
  check_tensor(x, op, "x", 2, dtype, device);
  check_tensor(sh, op, "sh", 2, dtype, device);
  if (grad != nullptr) {
    check_tensor(*grad, op, "grad", 2, dtype, device);
    check_size(*grad, op, "grad", 0, x.size(0));
  }
  check_edge_index(op, edge_index, x.size(0), sh.size(0), device);
}

struct Weights {
  bool shared;
  int64_t stride;  // elements between rows (0 when shared)
};

// w: [weight_numel] (shared) or [rows, weight_numel] (one row per batch row / edge), of the
// features' dtype, at least the plan's weight_numel per row.
inline Weights check_weights(const char* op, const at::Tensor& w, int64_t rows, int64_t weight_numel,
                             at::ScalarType dtype, const Placement& device, const char* rows_name) {
  TORCH_CHECK(w.dim() == 1 || w.dim() == 2, op, ": 'w' must be [weight_numel] (shared) or [", rows_name,
              ", weight_numel], got shape ", w.sizes());
  TORCH_CHECK(w.scalar_type() == dtype, op, ": 'w' must be ", dtype, " like the features, got ", w.scalar_type());
  check_placement(w, op, "w", device);
  TORCH_CHECK(w.size(-1) >= weight_numel, op, ": 'w' has ", w.size(-1), " weights per row, the plan needs ",
              weight_numel);
  if (w.dim() == 2) check_size(w, op, "w", 0, rows);
  return {w.dim() == 1, w.dim() == 1 ? 0 : w.size(1)};
}

// The tables of geo3d/o3/tp_plan.py -> a host tp::Plan, checked: sizes that fit an int,
// non-negative fields, paths inside the feature rows, uvu paths with mul1 = mulo.
template <typename T>
tp::Plan<T> make_plan(const char* op, const at::Tensor& paths, const at::Tensor& cg_index, const at::Tensor& cg_value,
                      const at::Tensor& path_weight, int64_t dim1, int64_t dim2, int64_t dim_out) {
  check_table(paths, op, "paths", 2, at::kLong);
  check_size(paths, op, "paths", 1, tp::kNumPathFields);
  check_table(cg_index, op, "cg_index", 2, at::kLong);
  check_size(cg_index, op, "cg_index", 1, 3);
  check_table(cg_value, op, "cg_value", 1, at::kDouble);
  check_table(path_weight, op, "path_weight", 1, at::kDouble);
  check_size(path_weight, op, "path_weight", 0, paths.size(0));
  check_size(cg_index, op, "cg_index", 0, cg_value.size(0));
  TORCH_CHECK(dim1 <= kIntMax && dim2 <= kIntMax && dim_out >= 0 && dim_out <= kIntMax && cg_value.size(0) <= kIntMax,
              op, ": feature or table sizes beyond 2^31 - 1 are not supported");
  tp::Plan<T> plan;
  plan.dim1 = int(dim1);
  plan.dim2 = int(dim2);
  plan.dim_out = int(dim_out);
  const auto P = paths.cpu().contiguous();
  const auto I = cg_index.cpu().contiguous();
  const auto V = cg_value.cpu().contiguous();
  const auto W = path_weight.cpu().contiguous();
  const int64_t* pp = P.data_ptr<int64_t>();
  for (int64_t r = 0; r < P.size(0); ++r) {
    const int64_t* f = pp + r * tp::kNumPathFields;
    bool ok = true;
    for (int c = 0; c < tp::kNumPathFields; ++c)
      if (c != tp::kWOff) ok = ok && f[c] >= 0 && f[c] <= kIntMax / 8;
    TORCH_CHECK(ok, op, ": path ", r, " has a negative or huge entry; the plan tables are corrupt");
    tp::Path<T> p;
    p.mode = int(f[tp::kMode]);
    p.d1 = int(2 * f[tp::kL1] + 1);
    p.d2 = int(2 * f[tp::kL2] + 1);
    p.d3 = int(2 * f[tp::kL3] + 1);
    p.mul1 = int(f[tp::kMul1]);
    p.mul2 = int(f[tp::kMul2]);
    p.mulo = int(f[tp::kMulOut]);
    p.off1 = int(f[tp::kOff1]);
    p.off2 = int(f[tp::kOff2]);
    p.offo = int(f[tp::kOffOut]);
    p.woff = f[tp::kWOff];
    p.cg_start = int(f[tp::kCgStart]);
    p.cg_end = int(f[tp::kCgEnd]);
    p.pw = T(W.data_ptr<double>()[r]);
    TORCH_CHECK(p.off1 + int64_t(p.mul1) * p.d1 <= dim1 && p.off2 + int64_t(p.mul2) * p.d2 <= dim2 &&
                    p.offo + int64_t(p.mulo) * p.d3 <= dim_out && p.cg_end <= V.size(0) && p.cg_start <= p.cg_end,
                op, ": path ", r, " does not fit the input/output sizes; the plan tables are corrupt");
    TORCH_CHECK(p.mode == tp::kUVW || p.mode == tp::kUVU, op, ": path ", r, " has unknown mode ", p.mode);
    TORCH_CHECK(p.mode != tp::kUVU || p.mul1 == p.mulo, op, ": path ", r, " is 'uvu' with mul(in1) = ", p.mul1,
                " != mul(out) = ", p.mulo, "; the plan tables are corrupt");
    TORCH_CHECK(p.woff >= -1, op, ": path ", r, " has weight offset ", p.woff, "; the plan tables are corrupt");
    plan.max_mul = std::max({plan.max_mul, p.mul1, p.mulo});
    plan.max_d13 = std::max(plan.max_d13, p.d1 * p.d3);
    if (p.woff >= 0) {
      const int64_t n = p.mode == tp::kUVW ? int64_t(p.mul1) * p.mul2 * p.mulo : int64_t(p.mul1) * p.mul2;
      plan.weight_numel = std::max(plan.weight_numel, p.woff + n);
    }
    plan.paths.push_back(p);
  }
  const int64_t* ip = I.data_ptr<int64_t>();
  const double* vp = V.data_ptr<double>();
  for (int64_t n = 0; n < V.size(0); ++n)
    plan.cg.push_back({int(ip[3 * n]), int(ip[3 * n + 1]), int(ip[3 * n + 2]), T(vp[n])});
  return plan;
}

}  // namespace tp_tables
}  // namespace geo3d
