// CPU tensor product and fused tensor-product convolution (forward and backward), OpenMP.
//
// The maths of one row lives in tensor_product_core.h; this file checks the
// inputs, converts the plan tables, transposes node features to the channel-inner
// layout once, and distributes rows over threads. Every output element is written
// by exactly one thread in a fixed order, so results are deterministic and do not
// depend on the number of threads:
//  - the convolution forward walks receivers (edges grouped by receiver, in edge
//    order), its backward walks senders (edges grouped by sender) and writes the
//    per-edge gradients (sh, w) directly: no atomics, no [E, dim_out] messages;
//  - gradients of shared weights are summed per fixed block of rows, then the
//    blocks in order.
// Double backward is composed from these two kernels in Python (the TP is
// trilinear in x1, x2 and w; see geo3d/ops/tensor_product.py).
#include <torch/extension.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

// Fused multiply-adds for the tensor-product loops (the build turns contraction off for
// the radius graph, whose exactness across CPU and CUDA depends on it; nothing here does).
#pragma GCC optimize("fp-contract=fast")
#include "common/float_dispatch.h"
#include "tensor_product/tensor_product_checks.h"
#include "tensor_product/tensor_product_core.h"

namespace geo3d {
namespace {

using tp::Block;
using tp::Plan;
using tp::Scratch;

// Blocks of shared weight gradients: a fixed count, so the summation order never
// depends on the thread count.
constexpr int64_t kWeightBlocks = 16;

// Every tensor of the CPU binding on the CPU (see tensor_product_checks.h).
const tp_tables::Placement kOnCpu = std::nullopt;
using tp_tables::check_weights;
using tp_tables::make_plan;
using tp_tables::Weights;

// The plan with each uvu path of l1, l3 <= 3 on its compile-time unrolled kernel; the
// environment variable GEO3D_TP_GENERIC=1 keeps every path on the generic loops (the
// in-kernel reference the tests compare against, and the A/B of benchmarks).
template <typename T>
tp::Plan<T> cpu_plan(const char* op, const at::Tensor& paths, const at::Tensor& cg_index, const at::Tensor& cg_value,
                     const at::Tensor& path_weight, int64_t dim1, int64_t dim2, int64_t dim_out) {
  tp::Plan<T> plan = make_plan<T>(op, paths, cg_index, cg_value, path_weight, dim1, dim2, dim_out);
  const char* generic = std::getenv("GEO3D_TP_GENERIC");
  tp::select_unrolled(plan, generic == nullptr || std::string(generic) == "0" || std::string(generic).empty());
  return plan;
}

// The distinct irrep blocks of in1 and out that the paths touch.
template <typename T>
void plan_blocks(const Plan<T>& plan, std::vector<Block>& b1, std::vector<Block>& bo) {
  auto add = [](std::vector<Block>& v, Block b) {
    for (const Block& x : v)
      if (x.off == b.off) return;
    v.push_back(b);
  };
  for (const auto& p : plan.paths) {
    add(b1, {p.off1, p.mul1, p.d1});
    add(bo, {p.offo, p.mulo, p.d3});
  }
}

// x [n, dim] (e3nn layout) -> [n, dim] with the touched blocks in ir_mul layout.
template <typename T>
at::Tensor transpose_rows(const at::Tensor& x, const std::vector<Block>& blocks) {
  auto out = at::zeros_like(x);
  const int64_t n = x.size(0), dim = x.size(1);
  const T* src = x.data_ptr<T>();
  T* dst = out.data_ptr<T>();
#pragma omp parallel for schedule(static) if (n * dim > 65536)
  for (int64_t r = 0; r < n; ++r) tp::to_ir_mul(blocks, src + r * dim, dst + r * dim);
  return out;
}

// Counting sort of edges by one end: ptr [n + 1], perm [E] (stable: edge order kept within a node).
void group_edges(const int64_t* node, int64_t E, int64_t n, std::vector<int64_t>& ptr, std::vector<int64_t>& perm) {
  ptr.assign(n + 1, 0);
  for (int64_t e = 0; e < E; ++e) ptr[node[e] + 1]++;
  for (int64_t i = 0; i < n; ++i) ptr[i + 1] += ptr[i];
  std::vector<int64_t> fill(ptr.begin(), ptr.end() - 1);
  perm.resize(E);
  for (int64_t e = 0; e < E; ++e) perm[fill[node[e]]++] = e;
}

// Work units of a backward pass over `rows` rows: with shared weights, a fixed number of
// row blocks, each summing its weight gradient into its own buffer (reduced in block
// order afterwards, so the sum does not depend on the thread count); otherwise one row each.
template <typename T>
struct WeightGradUnits {
  bool shared;
  int64_t rows, blocks, nw;
  std::vector<T> partial;

  WeightGradUnits(bool shared_, int64_t rows_, int64_t nw_)
      : shared(shared_),
        rows(rows_),
        blocks(shared_ ? std::min<int64_t>(kWeightBlocks, std::max<int64_t>(rows_, 1)) : rows_),
        nw(nw_),
        partial(shared_ ? blocks * nw_ : 0, T(0)) {}
  int64_t count() const { return blocks; }
  int64_t first(int64_t unit) const { return shared ? unit * rows / blocks : unit; }
  int64_t last(int64_t unit) const { return shared ? (unit + 1) * rows / blocks : unit + 1; }
  // Where row `row` (or edge) of unit `unit` accumulates its weight gradient.
  T* grad(int64_t unit, int64_t row, T* per_row) { return shared ? partial.data() + unit * nw : per_row + row * nw; }
  void reduce_into(T* gw) const {
    for (int64_t b = 0; b < (shared ? blocks : 0); ++b)
      for (int64_t q = 0; q < nw; ++q) gw[q] += partial[b * nw + q];
  }
};

// --------------------------------------------------------------------------- plain TP
at::Tensor tp_forward_cpu(const at::Tensor& x1_, const at::Tensor& x2_, const at::Tensor& w_, const at::Tensor& paths,
                          const at::Tensor& cg_index, const at::Tensor& cg_value, const at::Tensor& path_weight,
                          int64_t dim_out) {
  const char* op = "geo3d::tp_forward";
  tp_tables::check_tp_inputs(op, x1_, x2_, nullptr, kOnCpu);
  const auto dtype = x1_.scalar_type();
  const int64_t Z = x1_.size(0);
  auto out = at::zeros({Z, dim_out}, x1_.options());
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    const auto plan = cpu_plan<T>(op, paths, cg_index, cg_value, path_weight, x1_.size(1), x2_.size(1), dim_out);
    const Weights wi = check_weights(op, w_, Z, plan.weight_numel, dtype, kOnCpu, "batch");
    const auto x1 = x1_.contiguous(), x2 = x2_.contiguous(), w = w_.contiguous();
    std::vector<Block> b1, bo;
    plan_blocks(plan, b1, bo);
    const int64_t d1 = x1.size(1), d2 = x2.size(1);
    const T *px1 = x1.data_ptr<T>(), *px2 = x2.data_ptr<T>(), *pw = w.data_ptr<T>();
    T* po = out.data_ptr<T>();
#pragma omp parallel if (Z > 32)
    {
      Scratch<T> s(plan);
      std::vector<T> x1t(d1), acc(dim_out);
#pragma omp for schedule(static)
      for (int64_t z = 0; z < Z; ++z) {
        tp::to_ir_mul(b1, px1 + z * d1, x1t.data());
        std::fill(acc.begin(), acc.end(), T(0));
        tp::row_forward(plan, x1t.data(), px2 + z * d2, pw + z * wi.stride, acc.data(), s);
        tp::from_ir_mul(bo, acc.data(), po + z * dim_out);
      }
    }
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> tp_backward_cpu(const at::Tensor& x1_, const at::Tensor& x2_,
                                                               const at::Tensor& w_, const at::Tensor& grad_,
                                                               const at::Tensor& paths, const at::Tensor& cg_index,
                                                               const at::Tensor& cg_value,
                                                               const at::Tensor& path_weight) {
  const char* op = "geo3d::tp_backward";
  tp_tables::check_tp_inputs(op, x1_, x2_, &grad_, kOnCpu);
  const auto dtype = x1_.scalar_type();
  const int64_t Z = x1_.size(0);
  auto gx1 = at::zeros_like(x1_, at::MemoryFormat::Contiguous);
  auto gx2 = at::zeros_like(x2_, at::MemoryFormat::Contiguous);
  auto gw = at::zeros_like(w_, at::MemoryFormat::Contiguous);
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    const int64_t dim_out = grad_.size(1);
    const auto plan = cpu_plan<T>(op, paths, cg_index, cg_value, path_weight, x1_.size(1), x2_.size(1), dim_out);
    const Weights wi = check_weights(op, w_, Z, plan.weight_numel, dtype, kOnCpu, "batch");
    const auto x1 = x1_.contiguous(), x2 = x2_.contiguous(), w = w_.contiguous(), g = grad_.contiguous();
    std::vector<Block> b1, bo;
    plan_blocks(plan, b1, bo);
    const int64_t d1 = x1.size(1), d2 = x2.size(1), nw = w.size(-1);
    const T *px1 = x1.data_ptr<T>(), *px2 = x2.data_ptr<T>(), *pw = w.data_ptr<T>(), *pg = g.data_ptr<T>();
    T *pgx1 = gx1.data_ptr<T>(), *pgx2 = gx2.data_ptr<T>(), *pgw = gw.data_ptr<T>();
    WeightGradUnits<T> units(wi.shared, Z, nw);
#pragma omp parallel if (Z > 32)
    {
      Scratch<T> s(plan);
      std::vector<T> x1t(d1), gt(dim_out), gx1t(d1);
#pragma omp for schedule(dynamic, 1)
      for (int64_t unit = 0; unit < units.count(); ++unit) {
        for (int64_t z = units.first(unit); z < units.last(unit); ++z) {
          tp::to_ir_mul(b1, px1 + z * d1, x1t.data());
          tp::to_ir_mul(bo, pg + z * dim_out, gt.data());
          std::fill(gx1t.begin(), gx1t.end(), T(0));
          T* gwz = units.grad(unit, z, pgw);
          tp::row_backward(plan, x1t.data(), px2 + z * d2, pw + z * wi.stride, gt.data(), gx1t.data(),
                           pgx2 + z * d2, gwz, s);
          tp::from_ir_mul(b1, gx1t.data(), pgx1 + z * d1);
        }
      }
    }
    units.reduce_into(pgw);
  });
  return {gx1, gx2, gw};
}

// --------------------------------------------------------------------------- fused convolution
// out[i] = sum over edges e = (j -> i) of TP(x[j], sh[e], w[e]); edge_index[0] = j, [1] = i.
at::Tensor tp_conv_forward_cpu(const at::Tensor& x_, const at::Tensor& sh_, const at::Tensor& w_,
                               const at::Tensor& edge_index, const at::Tensor& paths, const at::Tensor& cg_index,
                               const at::Tensor& cg_value, const at::Tensor& path_weight, int64_t dim_out) {
  const char* op = "geo3d::tp_conv_forward";
  tp_tables::check_conv_inputs(op, x_, sh_, edge_index, nullptr, kOnCpu);
  const auto dtype = x_.scalar_type();
  const int64_t N = x_.size(0), E = sh_.size(0);
  auto out = at::zeros({N, dim_out}, x_.options());
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    const auto plan = cpu_plan<T>(op, paths, cg_index, cg_value, path_weight, x_.size(1), sh_.size(1), dim_out);
    const Weights wi = check_weights(op, w_, E, plan.weight_numel, dtype, kOnCpu, "E");
    std::vector<Block> b1, bo;
    plan_blocks(plan, b1, bo);
    const at::Tensor xt = transpose_rows<T>(x_.contiguous(), b1);
    const auto sh = sh_.contiguous(), w = w_.contiguous(), ei = edge_index.contiguous();
    std::vector<int64_t> ptr, perm;
    group_edges(ei.data_ptr<int64_t>() + E, E, N, ptr, perm);
    const int64_t d1 = xt.size(1), d2 = sh.size(1);
    const int64_t* src = ei.data_ptr<int64_t>();
    const T *pxt = xt.data_ptr<T>(), *psh = sh.data_ptr<T>(), *pw = w.data_ptr<T>();
    T* po = out.data_ptr<T>();
#pragma omp parallel if (E > 64)
    {
      Scratch<T> s(plan);
      std::vector<T> acc(dim_out);
#pragma omp for schedule(dynamic, 16)
      for (int64_t i = 0; i < N; ++i) {
        if (ptr[i] == ptr[i + 1]) continue;
        std::fill(acc.begin(), acc.end(), T(0));
        for (int64_t n = ptr[i]; n < ptr[i + 1]; ++n) {
          const int64_t e = perm[n];
          tp::row_forward(plan, pxt + src[e] * d1, psh + e * d2, pw + e * wi.stride, acc.data(), s);
        }
        tp::from_ir_mul(bo, acc.data(), po + i * dim_out);
      }
    }
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> tp_conv_backward_cpu(
    const at::Tensor& x_, const at::Tensor& sh_, const at::Tensor& w_, const at::Tensor& edge_index,
    const at::Tensor& grad_, const at::Tensor& paths, const at::Tensor& cg_index, const at::Tensor& cg_value,
    const at::Tensor& path_weight) {
  const char* op = "geo3d::tp_conv_backward";
  tp_tables::check_conv_inputs(op, x_, sh_, edge_index, &grad_, kOnCpu);
  const auto dtype = x_.scalar_type();
  const int64_t N = x_.size(0), E = sh_.size(0);
  auto gx = at::zeros_like(x_, at::MemoryFormat::Contiguous);
  auto gsh = at::zeros_like(sh_, at::MemoryFormat::Contiguous);
  auto gw = at::zeros_like(w_, at::MemoryFormat::Contiguous);
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    const int64_t dim_out = grad_.size(1);
    const auto plan = cpu_plan<T>(op, paths, cg_index, cg_value, path_weight, x_.size(1), sh_.size(1), dim_out);
    const Weights wi = check_weights(op, w_, E, plan.weight_numel, dtype, kOnCpu, "E");
    std::vector<Block> b1, bo;
    plan_blocks(plan, b1, bo);
    const at::Tensor xt = transpose_rows<T>(x_.contiguous(), b1);
    const at::Tensor gt = transpose_rows<T>(grad_.contiguous(), bo);
    const auto sh = sh_.contiguous(), w = w_.contiguous(), ei = edge_index.contiguous();
    std::vector<int64_t> ptr, perm;
    group_edges(ei.data_ptr<int64_t>(), E, N, ptr, perm);  // by sender
    const int64_t d1 = xt.size(1), d2 = sh.size(1), nw = w.size(-1);
    const int64_t* dst = ei.data_ptr<int64_t>() + E;
    const T *pxt = xt.data_ptr<T>(), *pgt = gt.data_ptr<T>(), *psh = sh.data_ptr<T>(), *pw = w.data_ptr<T>();
    T *pgx = gx.data_ptr<T>(), *pgsh = gsh.data_ptr<T>(), *pgw = gw.data_ptr<T>();
    WeightGradUnits<T> units(wi.shared, N, nw);
#pragma omp parallel if (E > 64)
    {
      Scratch<T> s(plan);
      std::vector<T> gxt(d1);
#pragma omp for schedule(dynamic, 1)
      for (int64_t unit = 0; unit < units.count(); ++unit) {
        for (int64_t j = units.first(unit); j < units.last(unit); ++j) {
          if (ptr[j] == ptr[j + 1]) continue;
          std::fill(gxt.begin(), gxt.end(), T(0));
          for (int64_t n = ptr[j]; n < ptr[j + 1]; ++n) {
            const int64_t e = perm[n];
            T* gwe = units.grad(unit, e, pgw);
            tp::row_backward(plan, pxt + j * d1, psh + e * d2, pw + e * wi.stride, pgt + dst[e] * dim_out,
                             gxt.data(), pgsh + e * d2, gwe, s);
          }
          tp::from_ir_mul(b1, gxt.data(), pgx + j * d1);
        }
      }
    }
    units.reduce_into(pgw);
  });
  return {gx, gsh, gw};
}

}  // namespace
}  // namespace geo3d

TORCH_LIBRARY_IMPL(geo3d, CPU, m) {
  m.impl("tp_forward", &geo3d::tp_forward_cpu);
  m.impl("tp_backward", &geo3d::tp_backward_cpu);
  m.impl("tp_conv_forward", &geo3d::tp_conv_forward_cpu);
  m.impl("tp_conv_backward", &geo3d::tp_conv_backward_cpu);
}
