// CUDA tensor product and fused tensor-product convolution (tensor_product_cuda_kernels.cu),
// behind torch-free launchers.
//
// The maths is that of tensor_product_core.h, row for row. The binding
// (tensor_product_cuda.cpp) builds a host tp::Plan from the tables of
// geo3d/o3/tp_plan.py, turns it into the device tables below (make_tables, pack_tables:
// one byte blob, copied to the device in one go), builds the edge CSR on the device,
// allocates and zeroes the outputs, and calls the launchers on its current stream.
// The launchers only run kernels and return cudaGetLastError(); no exceptions.
//
// Work: one warp per work item (a row of the plain TP, a receiver of the convolution
// forward, a sender of its backward), channels across lanes. Each warp has its own
// work space (shared memory, or a global buffer where a row is too large for it):
// the item's in1 row, in2 row, output/gradient rows, the contracted CG block S and
// two channel vectors. Every output element is written by one lane of one warp in a
// fixed order, so results do not depend on scheduling: no atomics anywhere.
#pragma once
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "tensor_product/tensor_product_core.h"

namespace geo3d {
namespace cuda {
namespace tpc {

// Mode codes of the path table (geo3d::tp::Mode).
constexpr int kUVW = tp::kUVW;
constexpr int kUVU = tp::kUVU;

// One path, device form (plain data: one layout for g++ and nvcc).
template <typename T>
struct Path {
  int mode, d1, d2, d3, mul1, mul2, mulo, off1, off2, offo;
  int cell_off;  // this path's d1*d3 + 1 offsets start at cell_ptr[cell_off]
  int j_off;     // this path's d2 + 1 offsets start at j_ptr[j_off]
  int64_t woff;  // -1: no weight
  T pw;
};

// A Clebsch-Gordan entry in one of the two orders below.
template <typename T>
struct CG {
  int idx;  // cell table: j; j table: cell i * d3 + k
  T c;
};

// Device tables. The CG entries of each path come twice, stably re-sorted:
//  - by cell (i, k): the entries of cell n of path p are
//    cell_cg[cell_ptr[p.cell_off + n] .. cell_ptr[p.cell_off + n + 1]) (idx = j), so a
//    lane computes S[n] alone, in the CPU's order (entries sorted by (i, j, k));
//  - by j: the entries of j are j_cg[j_ptr[p.j_off + j] .. j_ptr[p.j_off + j + 1])
//    (idx = cell), so a lane computes the in2 gradient of component j alone.
template <typename T>
struct Tables {
  const Path<T>* paths;
  const int* cell_ptr;
  const CG<T>* cell_cg;
  const int* j_ptr;
  const CG<T>* j_cg;
  int num_paths;
  int dim1, dim2, dim_out;
  int max_mul1;  // >= 1
  int max_d13;   // >= 1
};

// The same tables on the host.
template <typename T>
struct HostTables {
  std::vector<Path<T>> paths;
  std::vector<int> cell_ptr, j_ptr;
  std::vector<CG<T>> cell_cg, j_cg;
  int dim1 = 0, dim2 = 0, dim_out = 0, max_mul1 = 1, max_d13 = 1;
};

// Host plan -> device tables. Returns "" or what is wrong with the plan (a CG index out
// of its path's range, or tables too large for 32-bit offsets).
template <typename T>
inline std::string make_tables(const tp::Plan<T>& plan, HostTables<T>& out) {
  out = HostTables<T>();
  out.dim1 = plan.dim1;
  out.dim2 = plan.dim2;
  out.dim_out = plan.dim_out;
  const int64_t nnz_all = static_cast<int64_t>(plan.cg.size());
  int64_t cells_total = 0;
  for (const tp::Path<T>& p : plan.paths) cells_total += int64_t(p.d1) * p.d3 + p.d2 + 2;
  if (nnz_all * 2 + cells_total >= int64_t(1) << 30) return "the Clebsch-Gordan tables are too large";
  for (size_t r = 0; r < plan.paths.size(); ++r) {
    const tp::Path<T>& p = plan.paths[r];
    if (p.cg_start < 0 || p.cg_end < p.cg_start || p.cg_end > nnz_all)
      return "path " + std::to_string(r) + " has a CG range outside the CG table";
    Path<T> d;
    d.mode = p.mode;
    d.d1 = p.d1;
    d.d2 = p.d2;
    d.d3 = p.d3;
    d.mul1 = p.mul1;
    d.mul2 = p.mul2;
    d.mulo = p.mulo;
    d.off1 = p.off1;
    d.off2 = p.off2;
    d.offo = p.offo;
    d.woff = p.woff;
    d.pw = p.pw;
    const int ncell = p.d1 * p.d3;
    for (int n = p.cg_start; n < p.cg_end; ++n) {
      const tp::CG<T>& e = plan.cg[n];
      if (e.i < 0 || e.i >= p.d1 || e.j < 0 || e.j >= p.d2 || e.k < 0 || e.k >= p.d3)
        return "CG entry " + std::to_string(n) + " (" + std::to_string(e.i) + ", " + std::to_string(e.j) + ", " +
               std::to_string(e.k) + ") of path " + std::to_string(r) + " is outside its [" +
               std::to_string(p.d1) + ", " + std::to_string(p.d2) + ", " + std::to_string(p.d3) + "] block";
    }
    // Counting sorts (stable: entries keep their table order within a cell / a j).
    d.cell_off = static_cast<int>(out.cell_ptr.size());
    {
      std::vector<int> count(ncell + 1, 0);
      for (int n = p.cg_start; n < p.cg_end; ++n) count[plan.cg[n].i * p.d3 + plan.cg[n].k + 1]++;
      const int base = static_cast<int>(out.cell_cg.size());
      for (int c = 0; c < ncell; ++c) count[c + 1] += count[c];
      for (int c = 0; c <= ncell; ++c) out.cell_ptr.push_back(base + count[c]);
      out.cell_cg.resize(base + (p.cg_end - p.cg_start));
      for (int n = p.cg_start; n < p.cg_end; ++n) {
        const tp::CG<T>& e = plan.cg[n];
        out.cell_cg[base + count[e.i * p.d3 + e.k]++] = {e.j, e.c};
      }
    }
    d.j_off = static_cast<int>(out.j_ptr.size());
    {
      std::vector<int> count(p.d2 + 1, 0);
      for (int n = p.cg_start; n < p.cg_end; ++n) count[plan.cg[n].j + 1]++;
      const int base = static_cast<int>(out.j_cg.size());
      for (int j = 0; j < p.d2; ++j) count[j + 1] += count[j];
      for (int j = 0; j <= p.d2; ++j) out.j_ptr.push_back(base + count[j]);
      out.j_cg.resize(base + (p.cg_end - p.cg_start));
      for (int n = p.cg_start; n < p.cg_end; ++n) {
        const tp::CG<T>& e = plan.cg[n];
        out.j_cg[base + count[e.j]++] = {e.i * p.d3 + e.k, e.c};
      }
    }
    out.max_mul1 = std::max(out.max_mul1, p.mul1);
    out.max_d13 = std::max(out.max_d13, ncell);
    out.paths.push_back(d);
  }
  return "";
}

// Byte offsets of the sections of the packed tables (each 16-byte aligned).
struct BlobLayout {
  size_t paths = 0, cell_ptr = 0, cell_cg = 0, j_ptr = 0, j_cg = 0, bytes = 0;
};

template <typename T>
inline BlobLayout pack_tables(const HostTables<T>& h, std::vector<unsigned char>& blob) {
  BlobLayout L;
  size_t at = 0;
  auto section = [&at](size_t n) {
    const size_t start = at;
    at = (at + n + 15) / 16 * 16;
    return start;
  };
  L.paths = section(h.paths.size() * sizeof(Path<T>));
  L.cell_ptr = section(h.cell_ptr.size() * sizeof(int));
  L.cell_cg = section(h.cell_cg.size() * sizeof(CG<T>));
  L.j_ptr = section(h.j_ptr.size() * sizeof(int));
  L.j_cg = section(h.j_cg.size() * sizeof(CG<T>));
  L.bytes = std::max<size_t>(at, 16);
  blob.assign(L.bytes, 0);
  if (!h.paths.empty()) std::memcpy(blob.data() + L.paths, h.paths.data(), h.paths.size() * sizeof(Path<T>));
  if (!h.cell_ptr.empty()) std::memcpy(blob.data() + L.cell_ptr, h.cell_ptr.data(), h.cell_ptr.size() * sizeof(int));
  if (!h.cell_cg.empty()) std::memcpy(blob.data() + L.cell_cg, h.cell_cg.data(), h.cell_cg.size() * sizeof(CG<T>));
  if (!h.j_ptr.empty()) std::memcpy(blob.data() + L.j_ptr, h.j_ptr.data(), h.j_ptr.size() * sizeof(int));
  if (!h.j_cg.empty()) std::memcpy(blob.data() + L.j_cg, h.j_cg.data(), h.j_cg.size() * sizeof(CG<T>));
  return L;
}

// Tables pointing into a copy of the blob at `base` (device memory, 16-byte aligned).
template <typename T>
inline Tables<T> tables_at(const HostTables<T>& h, const BlobLayout& L, const void* base) {
  const unsigned char* b = static_cast<const unsigned char*>(base);
  Tables<T> t;
  t.paths = reinterpret_cast<const Path<T>*>(b + L.paths);
  t.cell_ptr = reinterpret_cast<const int*>(b + L.cell_ptr);
  t.cell_cg = reinterpret_cast<const CG<T>*>(b + L.cell_cg);
  t.j_ptr = reinterpret_cast<const int*>(b + L.j_ptr);
  t.j_cg = reinterpret_cast<const CG<T>*>(b + L.j_cg);
  t.num_paths = static_cast<int>(h.paths.size());
  t.dim1 = h.dim1;
  t.dim2 = h.dim2;
  t.dim_out = h.dim_out;
  t.max_mul1 = h.max_mul1;
  t.max_d13 = h.max_d13;
  return t;
}

// Rows of a forward pass. Work item z (< items) sums the TP of its edges into out[z]:
//  - plain TP (ptr == nullptr): one edge, e = z, in1 row z;
//  - convolution: edges perm[ptr[z] .. ptr[z + 1]) (receiver z), in1 row node[e] (sender).
// in2 row e, weights w + e * w_stride (w_stride = 0: shared). All device pointers, contiguous.
template <typename T>
struct ForwardArgs {
  const T* x1;  // [*, dim1]
  const T* x2;  // [E or Z, dim2]
  const T* w;
  int64_t w_stride;
  T* out;  // [items, dim_out], every row written
  int64_t items;
  const int64_t* ptr;   // [items + 1] or nullptr
  const int64_t* perm;  // [E]
  const int64_t* node;  // [E]
};

// Rows of a backward pass. Work item z: in1 row z, gradient gx1[z] (every row written);
//  - plain TP (ptr == nullptr): one edge, e = z, output-gradient row z;
//  - convolution: edges perm[ptr[z] .. ptr[z + 1]) (sender z), output-gradient row node[e].
// gx2 row e (accumulated into: zeroed by the caller). Weight gradients of edge e, in unit
// u = the item block holding z, go to gw + u * gw_unit_stride + e * gw_edge_stride
// (accumulated into, zeroed by the caller): per-row weights use (0, nw) and units =
// items; shared weights use a [units, nw] partial buffer, (nw, 0), and a fixed number of
// units, each a contiguous block of items done by one warp in order, then reduce_units.
template <typename T>
struct BackwardArgs {
  const T* x1;
  const T* x2;
  const T* w;
  int64_t w_stride;
  const T* grad;  // [*, dim_out]
  T* gx1;         // [items, dim1]
  T* gx2;         // [E or Z, dim2]
  T* gw;          // may be nullptr when no path is weighted
  int64_t gw_unit_stride, gw_edge_stride;
  int64_t items, units;
  const int64_t* ptr;
  const int64_t* perm;
  const int64_t* node;
};

// How a pass is launched: warps per block and blocks, each warp's work space in shared
// memory, or (rows too large for it) in a global buffer of workspace_elems the caller
// allocates. A function of the sizes and of the device's shared-memory limit only.
struct LaunchShape {
  int warps_per_block = 1;
  unsigned int blocks = 0;
  size_t smem_bytes = 0;
  int64_t warp_elems = 0;       // work-space elements (T) of one warp
  int64_t workspace_elems = 0;  // 0: work spaces in shared memory
};

// Number of units for shared-weight gradients: depends on (items, nw) only, never on the
// device, so results are reproducible across GPUs.
int64_t weight_grad_units(int64_t items, int64_t nw);

template <typename T>
cudaError_t forward_shape(const Tables<T>& t, int64_t items, LaunchShape* shape);
template <typename T>
cudaError_t backward_shape(const Tables<T>& t, int64_t units, LaunchShape* shape);

// `workspace`: shape.workspace_elems elements, or nullptr when that is 0.
template <typename T>
cudaError_t launch_forward(const Tables<T>& t, const ForwardArgs<T>& args, const LaunchShape& shape, T* workspace,
                           cudaStream_t stream);
template <typename T>
cudaError_t launch_backward(const Tables<T>& t, const BackwardArgs<T>& args, const LaunchShape& shape,
                            T* workspace, cudaStream_t stream);

// gw[q] = sum over b = 0 .. units-1, in order, of partial[b * nw + q].
template <typename T>
cudaError_t launch_reduce_units(const T* partial, int64_t units, int64_t nw, T* gw, cudaStream_t stream);

}  // namespace tpc
}  // namespace cuda
}  // namespace geo3d
