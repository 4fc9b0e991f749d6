// CUDA tensor product and fused tensor-product convolution: torch glue around the
// kernels of tensor_product_cuda_kernels.cu. Compiled only in CUDA builds (setup.py
// drops *_cuda.cpp otherwise); the kernels' file has another base name because
// setuptools gives x.cpp and x.cu the same object file.
//
// Same ops, checks and maths as tensor_product_cpu.cpp, and the same determinism
// rules: the convolution forward walks receivers, its backward walks senders (edges
// grouped on the device by a stable sort, so edge order is kept within a node), every
// output element has one writer, no atomics; shared-weight gradients are summed per
// fixed unit of rows, then the units in order. The plan tables (CPU or CUDA tensors)
// are checked and converted on the host and copied to the device on every call
// (nothing is cached). Host syncs: the table copies, and the edge_index range check.
#include <torch/extension.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "common/cuda_binding.h"
#include "common/float_dispatch.h"
#include "tensor_product/tensor_product_checks.h"
#include "tensor_product/tensor_product_core.h"
#include "tensor_product/tensor_product_cuda.h"

namespace geo3d {
namespace {

namespace tpc = cuda::tpc;
using tp_tables::check_weights;
using tp_tables::make_plan;
using tp_tables::Weights;

// The plan's device tables; `blob` keeps them alive (the caching allocator orders its
// reuse after the kernels of this stream).
template <typename T>
struct DeviceTables {
  tpc::HostTables<T> host;
  at::Tensor blob;
  tpc::Tables<T> view;
};

template <typename T>
DeviceTables<T> upload_tables(const char* op, const tp::Plan<T>& plan, const at::Device& device) {
  DeviceTables<T> d;
  const std::string err = tpc::make_tables(plan, d.host);
  TORCH_CHECK(err.empty(), op, ": ", err, "; the plan tables are corrupt");
  std::vector<unsigned char> bytes;
  const tpc::BlobLayout layout = tpc::pack_tables(d.host, bytes);
  at::Tensor host = at::empty({static_cast<int64_t>(bytes.size())}, at::kByte);
  std::memcpy(host.data_ptr(), bytes.data(), bytes.size());
  d.blob = host.to(device);
  d.view = tpc::tables_at(d.host, layout, d.blob.data_ptr());
  return d;
}

// Edges grouped by one end, on the device: ptr [n + 1], perm [E]. The sort is stable, so
// a node's edges keep their order (as the CPU's counting sort keeps it).
std::pair<at::Tensor, at::Tensor> group_edges(const at::Tensor& node, int64_t n) {
  const auto sorted = node.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false);
  const at::Tensor ptr = at::searchsorted(std::get<0>(sorted), at::arange(n + 1, node.options()));
  return {ptr.contiguous(), std::get<1>(sorted).contiguous()};
}

// The op's first input (x1 or x): a float dtype, on the kernels' device; the other tensors
// must then be on that device too (tp_tables::check_*_inputs).
void check_first_input(const char* op, const at::Tensor& x) {
  tp_tables::check_float_inputs(op, x);
  TORCH_CHECK(on_kernel_device(x), op, " (CUDA): inputs must be CUDA tensors, got ", x.device());
}

// Forward pass over `items` work items (see tpc::ForwardArgs).
template <typename T>
void run_forward(const DeviceTables<T>& tables, tpc::ForwardArgs<T> args, const at::TensorOptions& options) {
  tpc::LaunchShape shape;
  C10_CUDA_CHECK(tpc::forward_shape<T>(tables.view, args.items, &shape));
  at::Tensor workspace;
  if (shape.workspace_elems > 0) workspace = at::empty({shape.workspace_elems}, options);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  C10_CUDA_CHECK(tpc::launch_forward<T>(tables.view, args, shape,
                                        workspace.defined() ? workspace.data_ptr<T>() : nullptr, stream));
}

// Backward pass; with shared weights, through per-unit buffers reduced into gw in order.
template <typename T>
void run_backward(const DeviceTables<T>& tables, tpc::BackwardArgs<T> args, bool shared, int64_t nw, at::Tensor& gw,
                  const at::TensorOptions& options) {
  at::Tensor partial;
  if (nw == 0) {
    args.gw = nullptr;
    args.gw_unit_stride = args.gw_edge_stride = 0;
    args.units = args.items;
  } else if (shared) {
    args.units = tpc::weight_grad_units(args.items, nw);
    partial = at::zeros({args.units, nw}, options);
    args.gw = partial.data_ptr<T>();
    args.gw_unit_stride = nw;
    args.gw_edge_stride = 0;
  } else {
    args.units = args.items;
    args.gw = gw.data_ptr<T>();
    args.gw_unit_stride = 0;
    args.gw_edge_stride = nw;
  }
  tpc::LaunchShape shape;
  C10_CUDA_CHECK(tpc::backward_shape<T>(tables.view, args.units, &shape));
  at::Tensor workspace;
  if (shape.workspace_elems > 0) workspace = at::empty({shape.workspace_elems}, options);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  C10_CUDA_CHECK(tpc::launch_backward<T>(tables.view, args, shape,
                                         workspace.defined() ? workspace.data_ptr<T>() : nullptr, stream));
  if (partial.defined())
    C10_CUDA_CHECK(tpc::launch_reduce_units<T>(partial.data_ptr<T>(), args.units, nw, gw.data_ptr<T>(), stream));
}

// --------------------------------------------------------------------------- plain TP
template <typename T>
at::Tensor tp_forward_impl(const char* op, const at::Tensor& x1_, const at::Tensor& x2_, const at::Tensor& w_,
                           const at::Tensor& paths, const at::Tensor& cg_index, const at::Tensor& cg_value,
                           const at::Tensor& path_weight, int64_t dim_out) {
  const int64_t Z = x1_.size(0);
  const auto plan = make_plan<T>(op, paths, cg_index, cg_value, path_weight, x1_.size(1), x2_.size(1), dim_out);
  const Weights wi = check_weights(op, w_, Z, plan.weight_numel, x1_.scalar_type(), x1_.device(), "batch");
  auto out = at::zeros({Z, dim_out}, x1_.options());
  if (Z == 0 || plan.paths.empty()) return out;
  const auto x1 = x1_.contiguous(), x2 = x2_.contiguous(), w = w_.contiguous();
  const DeviceTables<T> tables = upload_tables<T>(op, plan, x1.device());
  tpc::ForwardArgs<T> args{x1.data_ptr<T>(), x2.data_ptr<T>(), w.data_ptr<T>(), wi.stride, out.data_ptr<T>(), Z,
                           nullptr,          nullptr,          nullptr};
  run_forward<T>(tables, args, x1.options());
  return out;
}

at::Tensor tp_forward_cuda(const at::Tensor& x1, const at::Tensor& x2, const at::Tensor& w, const at::Tensor& paths,
                           const at::Tensor& cg_index, const at::Tensor& cg_value, const at::Tensor& path_weight,
                           int64_t dim_out) {
  const char* op = "geo3d::tp_forward";
  check_first_input(op, x1);
  tp_tables::check_tp_inputs(op, x1, x2, nullptr, x1.device());
  const c10::cuda::CUDAGuard guard(x1.device());  // allocations, stream and launches on x1's device
  return dispatch_float(x1.scalar_type(), [&](auto tag) {
    return tp_forward_impl<decltype(tag)>(op, x1, x2, w, paths, cg_index, cg_value, path_weight, dim_out);
  });
}

template <typename T>
std::tuple<at::Tensor, at::Tensor, at::Tensor> tp_backward_impl(const char* op, const at::Tensor& x1_,
                                                                const at::Tensor& x2_, const at::Tensor& w_,
                                                                const at::Tensor& grad_, const at::Tensor& paths,
                                                                const at::Tensor& cg_index,
                                                                const at::Tensor& cg_value,
                                                                const at::Tensor& path_weight) {
  const int64_t Z = x1_.size(0);
  const int64_t dim_out = grad_.size(1);
  const auto plan = make_plan<T>(op, paths, cg_index, cg_value, path_weight, x1_.size(1), x2_.size(1), dim_out);
  const Weights wi = check_weights(op, w_, Z, plan.weight_numel, x1_.scalar_type(), x1_.device(), "batch");
  auto gx1 = at::zeros_like(x1_, at::MemoryFormat::Contiguous);
  auto gx2 = at::zeros_like(x2_, at::MemoryFormat::Contiguous);
  auto gw = at::zeros_like(w_, at::MemoryFormat::Contiguous);
  if (Z == 0 || plan.paths.empty()) return {gx1, gx2, gw};
  const auto x1 = x1_.contiguous(), x2 = x2_.contiguous(), w = w_.contiguous(), g = grad_.contiguous();
  const DeviceTables<T> tables = upload_tables<T>(op, plan, x1.device());
  tpc::BackwardArgs<T> args{};
  args.x1 = x1.data_ptr<T>();
  args.x2 = x2.data_ptr<T>();
  args.w = w.data_ptr<T>();
  args.w_stride = wi.stride;
  args.grad = g.data_ptr<T>();
  args.gx1 = gx1.data_ptr<T>();
  args.gx2 = gx2.data_ptr<T>();
  args.items = Z;
  args.ptr = args.perm = args.node = nullptr;
  run_backward<T>(tables, args, wi.shared, w.size(-1), gw, x1.options());
  return {gx1, gx2, gw};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> tp_backward_cuda(const at::Tensor& x1, const at::Tensor& x2,
                                                                const at::Tensor& w, const at::Tensor& grad,
                                                                const at::Tensor& paths, const at::Tensor& cg_index,
                                                                const at::Tensor& cg_value,
                                                                const at::Tensor& path_weight) {
  const char* op = "geo3d::tp_backward";
  check_first_input(op, x1);
  tp_tables::check_tp_inputs(op, x1, x2, &grad, x1.device());
  const c10::cuda::CUDAGuard guard(x1.device());
  return dispatch_float(x1.scalar_type(), [&](auto tag) {
    return tp_backward_impl<decltype(tag)>(op, x1, x2, w, grad, paths, cg_index, cg_value, path_weight);
  });
}

// --------------------------------------------------------------------------- fused convolution
// out[i] = sum over edges e = (j -> i) of TP(x[j], sh[e], w[e]); edge_index[0] = j, [1] = i.
template <typename T>
at::Tensor tp_conv_forward_impl(const char* op, const at::Tensor& x_, const at::Tensor& sh_, const at::Tensor& w_,
                                const at::Tensor& edge_index, const at::Tensor& paths, const at::Tensor& cg_index,
                                const at::Tensor& cg_value, const at::Tensor& path_weight, int64_t dim_out) {
  const int64_t N = x_.size(0), E = sh_.size(0);
  const auto plan = make_plan<T>(op, paths, cg_index, cg_value, path_weight, x_.size(1), sh_.size(1), dim_out);
  const Weights wi = check_weights(op, w_, E, plan.weight_numel, x_.scalar_type(), x_.device(), "E");
  auto out = at::zeros({N, dim_out}, x_.options());
  if (N == 0 || E == 0 || plan.paths.empty()) return out;
  const auto x = x_.contiguous(), sh = sh_.contiguous(), w = w_.contiguous(), ei = edge_index.contiguous();
  const auto [ptr, perm] = group_edges(ei[1], N);  // by receiver
  const DeviceTables<T> tables = upload_tables<T>(op, plan, x.device());
  tpc::ForwardArgs<T> args{x.data_ptr<T>(),        sh.data_ptr<T>(),         w.data_ptr<T>(),
                           wi.stride,              out.data_ptr<T>(),        N,
                           ptr.data_ptr<int64_t>(), perm.data_ptr<int64_t>(), ei.data_ptr<int64_t>()};
  run_forward<T>(tables, args, x.options());
  return out;
}

at::Tensor tp_conv_forward_cuda(const at::Tensor& x, const at::Tensor& sh, const at::Tensor& w,
                                const at::Tensor& edge_index, const at::Tensor& paths, const at::Tensor& cg_index,
                                const at::Tensor& cg_value, const at::Tensor& path_weight, int64_t dim_out) {
  const char* op = "geo3d::tp_conv_forward";
  check_first_input(op, x);
  const c10::cuda::CUDAGuard guard(x.device());  // before the edge_index range check runs on it
  tp_tables::check_conv_inputs(op, x, sh, edge_index, nullptr, x.device());
  return dispatch_float(x.scalar_type(), [&](auto tag) {
    return tp_conv_forward_impl<decltype(tag)>(op, x, sh, w, edge_index, paths, cg_index, cg_value, path_weight,
                                               dim_out);
  });
}

template <typename T>
std::tuple<at::Tensor, at::Tensor, at::Tensor> tp_conv_backward_impl(
    const char* op, const at::Tensor& x_, const at::Tensor& sh_, const at::Tensor& w_, const at::Tensor& edge_index,
    const at::Tensor& grad_, const at::Tensor& paths, const at::Tensor& cg_index, const at::Tensor& cg_value,
    const at::Tensor& path_weight) {
  const int64_t N = x_.size(0), E = sh_.size(0);
  const int64_t dim_out = grad_.size(1);
  const auto plan = make_plan<T>(op, paths, cg_index, cg_value, path_weight, x_.size(1), sh_.size(1), dim_out);
  const Weights wi = check_weights(op, w_, E, plan.weight_numel, x_.scalar_type(), x_.device(), "E");
  auto gx = at::zeros_like(x_, at::MemoryFormat::Contiguous);
  auto gsh = at::zeros_like(sh_, at::MemoryFormat::Contiguous);
  auto gw = at::zeros_like(w_, at::MemoryFormat::Contiguous);
  if (N == 0 || E == 0 || plan.paths.empty()) return {gx, gsh, gw};
  const auto x = x_.contiguous(), sh = sh_.contiguous(), w = w_.contiguous(), g = grad_.contiguous();
  const auto ei = edge_index.contiguous();
  const auto [ptr, perm] = group_edges(ei[0], N);  // by sender
  const DeviceTables<T> tables = upload_tables<T>(op, plan, x.device());
  tpc::BackwardArgs<T> args{};
  args.x1 = x.data_ptr<T>();
  args.x2 = sh.data_ptr<T>();
  args.w = w.data_ptr<T>();
  args.w_stride = wi.stride;
  args.grad = g.data_ptr<T>();
  args.gx1 = gx.data_ptr<T>();
  args.gx2 = gsh.data_ptr<T>();
  args.items = N;
  args.ptr = ptr.data_ptr<int64_t>();
  args.perm = perm.data_ptr<int64_t>();
  args.node = ei.data_ptr<int64_t>() + E;  // receiver of each edge: its output-gradient row
  run_backward<T>(tables, args, wi.shared, w.size(-1), gw, x.options());
  return {gx, gsh, gw};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> tp_conv_backward_cuda(
    const at::Tensor& x, const at::Tensor& sh, const at::Tensor& w, const at::Tensor& edge_index,
    const at::Tensor& grad, const at::Tensor& paths, const at::Tensor& cg_index, const at::Tensor& cg_value,
    const at::Tensor& path_weight) {
  const char* op = "geo3d::tp_conv_backward";
  check_first_input(op, x);
  const c10::cuda::CUDAGuard guard(x.device());
  tp_tables::check_conv_inputs(op, x, sh, edge_index, &grad, x.device());
  return dispatch_float(x.scalar_type(), [&](auto tag) {
    return tp_conv_backward_impl<decltype(tag)>(op, x, sh, w, edge_index, grad, paths, cg_index, cg_value,
                                                path_weight);
  });
}

}  // namespace
}  // namespace geo3d

GEO3D_CUDA_LIBRARY_IMPL(m) {
  m.impl("tp_forward", &geo3d::tp_forward_cuda);
  m.impl("tp_backward", &geo3d::tp_backward_cuda);
  m.impl("tp_conv_forward", &geo3d::tp_conv_forward_cuda);
  m.impl("tp_conv_backward", &geo3d::tp_conv_backward_cuda);
}
