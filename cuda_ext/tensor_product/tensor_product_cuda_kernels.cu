// CUDA tensor product and fused tensor-product convolution, forward and backward: the
// maths of tensor_product_core.h (row_forward, row_backward), one warp per row.
//
// Layout on the device. Node features, outputs and gradients stay in e3nn's layout
// (per irrep block [mul][2l+1]); a warp stages its rows in its work space and lane c
// handles channels c, c + 32, ... Lanes then read a block with a stride of 2l+1
// elements, which is odd, so 32 lanes hit 32 distinct shared-memory banks (and for
// doubles, the 16 lanes of each half-warp distinct bank pairs): no transposition needed,
// and rows go in and out with coalesced copies.
//
// Determinism. Every element of a warp's accumulators (the output row, the in1 gradient
// row) and of the rows it updates in global memory (in2 gradient, per-row or per-unit
// weight gradient) has one owner: the lane of its channel (or of its in2 component), and
// one warp owns the row. Contributions arrive in program order: paths, then v, then k,
// as on the CPU; sums across channels use a fixed xor-butterfly of warp shuffles (every
// lane gets the same bits). No atomics. Shared weights: each unit (a fixed block of
// items, fixed by the sizes only) is done by one warp into its own [nw] buffer, and
// reduce_units_kernel sums the units in index order.
#include "tensor_product/tensor_product_cuda.h"
#include "common/cuda_compat.h"

namespace geo3d {
namespace cuda {
namespace tpc {
namespace {

constexpr int kWarpSize = 32;
constexpr unsigned int kFullMask = 0xffffffffu;
constexpr int kWarpsPerBlock = 4;
constexpr unsigned int kMaxBlocks = 1u << 20;              // grid-stride beyond this
constexpr int64_t kMaxWorkspaceBytes = int64_t(256) << 20;  // global work spaces (huge rows only)
constexpr int64_t kMaxUnits = 2048;                         // shared-weight gradient units
constexpr int64_t kMaxPartialElems = int64_t(1) << 24;      // their buffers, in elements
constexpr int kReduceThreads = 256;

// Elements of one warp's work space.
inline int64_t forward_warp_elems(int dim1, int dim2, int dim_out, int max_d13, int max_mul1) {
  return int64_t(dim1) + dim2 + dim_out + max_d13 + max_mul1;
}
inline int64_t backward_warp_elems(int dim1, int dim2, int dim_out, int max_d13, int max_mul1) {
  return 2 * int64_t(dim1) + dim2 + dim_out + 2 * int64_t(max_d13) + 2 * int64_t(max_mul1);
}

// Sum over the warp, the same value in every lane (an xor butterfly: each step adds the
// same two numbers in both lanes of a pair, so the lanes never diverge bitwise).
template <typename T>
__device__ __forceinline__ T warp_sum(T x) {
#pragma unroll
  for (int m = kWarpSize / 2; m > 0; m >>= 1) x += __shfl_xor_sync(kFullMask, x, m);
  return x;
}

template <typename T>
__device__ __forceinline__ void warp_copy(T* dst, const T* __restrict__ src, int n, int lane) {
  for (int c = lane; c < n; c += kWarpSize) dst[c] = src[c];
}

template <typename T>
__device__ __forceinline__ void warp_zero(T* dst, int n, int lane) {
  for (int c = lane; c < n; c += kWarpSize) dst[c] = T(0);
}

// S[i * d3 + k] = sum over the path's C[i, j, k] != 0 of C x2v[j] (contract_cg of the
// core). Lane n computes cell n (its entries are contiguous in the cell-sorted table, in
// the CPU's order). Starts and ends with a warp barrier: S is shared by the warp.
template <typename T>
__device__ __forceinline__ void contract_cg(const Tables<T>& tb, const Path<T>& p, const T* x2v, T* S, int lane) {
  __syncwarp();  // every lane is done with the previous S (and a)
  const int ncell = p.d1 * p.d3;
  const int* cp = tb.cell_ptr + p.cell_off;
  for (int n = lane; n < ncell; n += kWarpSize) {
    T s = T(0);
    for (int q = cp[n]; q < cp[n + 1]; ++q) {
      const CG<T> e = tb.cell_cg[q];
      s += e.c * x2v[e.idx];
    }
    S[n] = s;
  }
  __syncwarp();
}

// t_k[u] = sum_i S[i][k] x1[u][i] for one channel u (x1u = its d1 components). S is the
// same in every lane, so the zero test never splits the warp.
template <typename T>
__device__ __forceinline__ T contract_x1(const Path<T>& p, const T* S, int k, const T* x1u) {
  T t = T(0);
  for (int i = 0; i < p.d1; ++i) {
    const T s = S[i * p.d3 + k];
    if (s != T(0)) t += s * x1u[i];
  }
  return t;
}

// acc (e3nn layout, this warp's) += TP(x1s, x2s, w) of one row (row_forward of the core).
template <typename T>
__device__ void row_forward(const Tables<T>& tb, const T* x1s, const T* x2s, const T* __restrict__ w, T* acc,
                            T* S, T* tbuf, int lane) {
  for (int pi = 0; pi < tb.num_paths; ++pi) {
    const Path<T> p = tb.paths[pi];
    const T* x1 = x1s + p.off1;
    T* out = acc + p.offo;
    const bool weighted = p.woff >= 0;
    for (int v = 0; v < p.mul2; ++v) {
      contract_cg(tb, p, x2s + p.off2 + v * p.d2, S, lane);
      if (p.mode == kUVU) {
        // out[u][k] += pw w[u, v] t_k[u]: lane-owned channels.
        for (int u = lane; u < p.mul1; u += kWarpSize) {
          const T* x1u = x1 + u * p.d1;
          T* ou = out + u * p.d3;
          const T c = weighted ? p.pw * w[p.woff + int64_t(u) * p.mul2 + v] : p.pw;
          for (int k = 0; k < p.d3; ++k) ou[k] += c * contract_x1(p, S, k, x1u);
        }
      } else if (weighted) {
        // out[q][k] += sum_u (pw t_k[u]) w[u, v, q]: t through the warp's buffer, lanes over q.
        const int64_t wstep = int64_t(p.mul2) * p.mulo;
        const T* wv = w + p.woff + int64_t(v) * p.mulo;
        for (int k = 0; k < p.d3; ++k) {
          __syncwarp();  // tbuf free
          for (int u = lane; u < p.mul1; u += kWarpSize) tbuf[u] = p.pw * contract_x1(p, S, k, x1 + u * p.d1);
          __syncwarp();
          for (int q = lane; q < p.mulo; q += kWarpSize) {
            const T* wq = wv + q;
            T o = out[q * p.d3 + k];
            for (int u = 0; u < p.mul1; ++u) o += tbuf[u] * wq[u * wstep];
            out[q * p.d3 + k] = o;
          }
        }
      } else {
        // Unweighted uvw (tp_plan never makes one): out[q][k] += pw sum_u t_k[u].
        for (int k = 0; k < p.d3; ++k) {
          T part = T(0);
          for (int u = lane; u < p.mul1; u += kWarpSize) part += contract_x1(p, S, k, x1 + u * p.d1);
          const T c = warp_sum(part);
          for (int q = lane; q < p.mulo; q += kWarpSize) out[q * p.d3 + k] += p.pw * c;
        }
      }
    }
  }
}

// Gradients of <g, TP(x1, x2, w)> for one row (row_backward of the core): gx1s (this
// warp's accumulator, e3nn layout) +=, gx2 (global row, this warp's) +=, gw (global
// row or unit buffer, this warp's; nullptr: no weight gradient) +=.
template <typename T>
__device__ void row_backward(const Tables<T>& tb, const T* x1s, const T* x2s, const T* __restrict__ w,
                             const T* gs, T* gx1s, T* __restrict__ gx2, T* __restrict__ gw, T* S, T* a, T* tbuf,
                             T* hbuf, int lane) {
  for (int pi = 0; pi < tb.num_paths; ++pi) {
    const Path<T> p = tb.paths[pi];
    const T* x1 = x1s + p.off1;
    const T* g = gs + p.offo;
    T* gx1 = gx1s + p.off1;
    const bool weighted = p.woff >= 0;
    const bool need_t = gw != nullptr && weighted;
    for (int v = 0; v < p.mul2; ++v) {
      contract_cg(tb, p, x2s + p.off2 + v * p.d2, S, lane);
      for (int k = 0; k < p.d3; ++k) {
        const T* gk = g + k;  // channel c of component k at gk[c * d3]
        // hbuf[u] = h_k[u] = d <g_k, out_k> / d t_k[u]; lane-owned like the channels.
        if (p.mode == kUVU) {
          for (int u = lane; u < p.mul1; u += kWarpSize) {
            const T gku = gk[u * p.d3];
            if (weighted) {
              const int64_t wi = p.woff + int64_t(u) * p.mul2 + v;
              hbuf[u] = p.pw * w[wi] * gku;
              if (need_t) gw[wi] += p.pw * gku * contract_x1(p, S, k, x1 + u * p.d1);
            } else {
              hbuf[u] = p.pw * gku;
            }
          }
        } else if (weighted) {
          const int64_t wstep = int64_t(p.mul2) * p.mulo;
          for (int u = lane; u < p.mul1; u += kWarpSize) {
            const T* wr = w + p.woff + (int64_t(u) * p.mul2 + v) * p.mulo;
            T dot = T(0);
            for (int q = 0; q < p.mulo; ++q) dot += wr[q] * gk[q * p.d3];
            hbuf[u] = p.pw * dot;
          }
          if (need_t) {
            // gw[u, v, q] += (pw t_k[u]) g_k[q]: t through the warp's buffer, lanes over q.
            __syncwarp();  // tbuf free
            for (int u = lane; u < p.mul1; u += kWarpSize) tbuf[u] = p.pw * contract_x1(p, S, k, x1 + u * p.d1);
            __syncwarp();
            T* gwv = gw + p.woff + int64_t(v) * p.mulo;
            for (int q = lane; q < p.mulo; q += kWarpSize) {
              const T gkq = gk[q * p.d3];
              T* gwq = gwv + q;
              for (int u = 0; u < p.mul1; ++u) gwq[u * wstep] += tbuf[u] * gkq;
            }
          }
        } else {
          T part = T(0);
          for (int q = lane; q < p.mulo; q += kWarpSize) part += gk[q * p.d3];
          const T c = warp_sum(part);
          for (int u = lane; u < p.mul1; u += kWarpSize) hbuf[u] = p.pw * c;
        }
        for (int i = 0; i < p.d1; ++i) {
          const T sik = S[i * p.d3 + k];
          if (gx2 != nullptr) {
            // a[i][k] = sum_u x1[u][i] h_k[u]
            T part = T(0);
            for (int u = lane; u < p.mul1; u += kWarpSize) part += x1[u * p.d1 + i] * hbuf[u];
            const T dot = warp_sum(part);
            if (lane == 0) a[i * p.d3 + k] = dot;
          }
          if (sik != T(0))
            for (int u = lane; u < p.mul1; u += kWarpSize) gx1[u * p.d1 + i] += sik * hbuf[u];
        }
      }
      if (gx2 != nullptr) {
        // gx2[v, j] += sum over C[i, j, k] != 0 of C a[i][k]: lane j, entries in the CPU's order.
        __syncwarp();  // a complete
        const int* jp = tb.j_ptr + p.j_off;
        T* gv = gx2 + p.off2 + v * p.d2;
        for (int j = lane; j < p.d2; j += kWarpSize) {
          T s = gv[j];
          for (int q = jp[j]; q < jp[j + 1]; ++q) {
            const CG<T> e = tb.j_cg[q];
            s += e.c * a[e.idx];
          }
          gv[j] = s;
        }
      }
    }
  }
}

// This warp's work space: its slice of the dynamic shared memory, or of the global
// workspace when the launcher put the work spaces there.
template <typename T>
__device__ __forceinline__ T* warp_space(unsigned char* smem, T* workspace, int64_t warp_elems) {
  const int warp_in_block = threadIdx.x / kWarpSize;
  if (workspace != nullptr)
    return workspace + (int64_t(blockIdx.x) * (blockDim.x / kWarpSize) + warp_in_block) * warp_elems;
  return reinterpret_cast<T*>(smem) + warp_in_block * warp_elems;
}

// One warp per work item (row or receiver), grid-stride. Writes every row of out.
template <typename T>
__global__ void __launch_bounds__(kWarpsPerBlock* kWarpSize)
    forward_kernel(const Tables<T> tb, const ForwardArgs<T> args, const int64_t warp_elems, T* workspace) {
  GEO3D_DYNAMIC_SHARED(unsigned char, smem_raw);
  const int lane = threadIdx.x % kWarpSize;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / kWarpSize);
  T* const x1s = warp_space<T>(smem_raw, workspace, warp_elems);
  T* const x2s = x1s + tb.dim1;
  T* const acc = x2s + tb.dim2;
  T* const S = acc + tb.dim_out;
  T* const tbuf = S + tb.max_d13;
  for (int64_t z = int64_t(blockIdx.x) * (blockDim.x / kWarpSize) + threadIdx.x / kWarpSize; z < args.items;
       z += warps) {
    __syncwarp();  // the previous item's rows are written out
    warp_zero(acc, tb.dim_out, lane);
    const bool conv = args.ptr != nullptr;
    const int64_t begin = conv ? args.ptr[z] : z, end = conv ? args.ptr[z + 1] : z + 1;
    for (int64_t n = begin; n < end; ++n) {
      const int64_t e = conv ? args.perm[n] : n;
      const int64_t j = conv ? args.node[e] : z;
      __syncwarp();  // every lane is done with the previous edge's rows; acc zeroed
      warp_copy(x1s, args.x1 + j * tb.dim1, tb.dim1, lane);
      warp_copy(x2s, args.x2 + e * tb.dim2, tb.dim2, lane);
      __syncwarp();
      row_forward(tb, x1s, x2s, args.w + e * args.w_stride, acc, S, tbuf, lane);
    }
    __syncwarp();
    T* o = args.out + z * tb.dim_out;
    for (int c = lane; c < tb.dim_out; c += kWarpSize) o[c] = acc[c];
  }
}

// One warp per unit (a block of items: rows or senders), grid-stride; items of a unit in
// order. Writes every row of gx1; accumulates into gx2 and the weight gradients.
template <typename T>
__global__ void __launch_bounds__(kWarpsPerBlock* kWarpSize)
    backward_kernel(const Tables<T> tb, const BackwardArgs<T> args, const int64_t warp_elems, T* workspace) {
  GEO3D_DYNAMIC_SHARED(unsigned char, smem_raw);
  const int lane = threadIdx.x % kWarpSize;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / kWarpSize);
  T* const x1s = warp_space<T>(smem_raw, workspace, warp_elems);
  T* const x2s = x1s + tb.dim1;
  T* const gs = x2s + tb.dim2;
  T* const gx1s = gs + tb.dim_out;
  T* const S = gx1s + tb.dim1;
  T* const a = S + tb.max_d13;
  T* const tbuf = a + tb.max_d13;
  T* const hbuf = tbuf + tb.max_mul1;
  const bool conv = args.ptr != nullptr;
  for (int64_t unit = int64_t(blockIdx.x) * (blockDim.x / kWarpSize) + threadIdx.x / kWarpSize;
       unit < args.units; unit += warps) {
    const bool one = args.units == args.items;
    const int64_t first = one ? unit : unit * args.items / args.units;
    const int64_t last = one ? unit + 1 : (unit + 1) * args.items / args.units;
    T* const gw_unit = args.gw != nullptr ? args.gw + unit * args.gw_unit_stride : nullptr;
    for (int64_t z = first; z < last; ++z) {
      __syncwarp();  // the previous item's rows are written out
      warp_copy(x1s, args.x1 + z * tb.dim1, tb.dim1, lane);
      warp_zero(gx1s, tb.dim1, lane);
      const int64_t begin = conv ? args.ptr[z] : z, end = conv ? args.ptr[z + 1] : z + 1;
      for (int64_t n = begin; n < end; ++n) {
        const int64_t e = conv ? args.perm[n] : n;
        const int64_t r = conv ? args.node[e] : z;
        __syncwarp();  // every lane is done with the previous edge's rows; x1s, gx1s ready
        warp_copy(x2s, args.x2 + e * tb.dim2, tb.dim2, lane);
        warp_copy(gs, args.grad + r * tb.dim_out, tb.dim_out, lane);
        __syncwarp();
        row_backward(tb, x1s, x2s, args.w + e * args.w_stride, gs, gx1s, args.gx2 + e * tb.dim2,
                     gw_unit != nullptr ? gw_unit + e * args.gw_edge_stride : nullptr, S, a, tbuf, hbuf, lane);
      }
      __syncwarp();
      T* o = args.gx1 + z * tb.dim1;
      for (int c = lane; c < tb.dim1; c += kWarpSize) o[c] = gx1s[c];
    }
  }
}

// gw[q] = sum of the units' partial gradients, in unit order.
template <typename T>
__global__ void reduce_units_kernel(const T* __restrict__ partial, int64_t units, int64_t nw, T* __restrict__ gw) {
  const int64_t q = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (q >= nw) return;
  T s = T(0);
  for (int64_t b = 0; b < units; ++b) s += partial[b * nw + q];
  gw[q] = s;
}

template <typename T>
cudaError_t make_shape(int64_t warp_elems, int64_t items, LaunchShape* shape) {
  *shape = LaunchShape();
  int device = 0, optin = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (err != cudaSuccess) return err;
  const int64_t warp_bytes = std::max<int64_t>(warp_elems, 1) * int64_t(sizeof(T));
  shape->warp_elems = warp_elems;
  int wpb = kWarpsPerBlock;
  while (wpb > 1 && wpb * warp_bytes > optin) wpb /= 2;
  const int64_t want = (std::max<int64_t>(items, 1) + wpb - 1) / wpb;
  if (wpb * warp_bytes <= optin) {
    shape->warps_per_block = wpb;
    shape->smem_bytes = static_cast<size_t>(wpb * warp_bytes);
    shape->blocks = static_cast<unsigned int>(std::min<int64_t>(want, kMaxBlocks));
  } else {
    // A row does not fit in shared memory: work spaces in a global buffer, fewer warps.
    shape->warps_per_block = kWarpsPerBlock;
    const int64_t max_blocks = std::max<int64_t>(1, kMaxWorkspaceBytes / (kWarpsPerBlock * warp_bytes));
    const int64_t blocks = std::min<int64_t>((std::max<int64_t>(items, 1) + kWarpsPerBlock - 1) / kWarpsPerBlock,
                                             std::min<int64_t>(max_blocks, kMaxBlocks));
    shape->blocks = static_cast<unsigned int>(blocks);
    shape->workspace_elems = blocks * kWarpsPerBlock * warp_elems;
  }
  return cudaSuccess;
}

template <typename Kernel>
cudaError_t allow_smem(Kernel kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
}

}  // namespace

int64_t weight_grad_units(int64_t items, int64_t nw) {
  if (items <= 0) return 0;
  int64_t units = std::min<int64_t>(items, kMaxUnits);
  if (nw > 0) units = std::min<int64_t>(units, std::max<int64_t>(1, kMaxPartialElems / nw));
  return units;
}

template <typename T>
cudaError_t forward_shape(const Tables<T>& t, int64_t items, LaunchShape* shape) {
  return make_shape<T>(forward_warp_elems(t.dim1, t.dim2, t.dim_out, t.max_d13, t.max_mul1), items, shape);
}

template <typename T>
cudaError_t backward_shape(const Tables<T>& t, int64_t units, LaunchShape* shape) {
  return make_shape<T>(backward_warp_elems(t.dim1, t.dim2, t.dim_out, t.max_d13, t.max_mul1), units, shape);
}

template <typename T>
cudaError_t launch_forward(const Tables<T>& t, const ForwardArgs<T>& args, const LaunchShape& shape, T* workspace,
                           cudaStream_t stream) {
  if (args.items <= 0) return cudaSuccess;
  if (shape.blocks == 0 || (shape.workspace_elems > 0 && workspace == nullptr)) return cudaErrorInvalidValue;
  const cudaError_t err = allow_smem(forward_kernel<T>, shape.smem_bytes);
  if (err != cudaSuccess) return err;
  GEO3D_LAUNCH(shape.blocks, shape.warps_per_block * kWarpSize, shape.smem_bytes, stream, forward_kernel<T>)(
      t, args, shape.warp_elems, shape.workspace_elems > 0 ? workspace : nullptr);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_backward(const Tables<T>& t, const BackwardArgs<T>& args, const LaunchShape& shape,
                            T* workspace, cudaStream_t stream) {
  if (args.units <= 0 || args.items <= 0) return cudaSuccess;
  if (shape.blocks == 0 || (shape.workspace_elems > 0 && workspace == nullptr)) return cudaErrorInvalidValue;
  const cudaError_t err = allow_smem(backward_kernel<T>, shape.smem_bytes);
  if (err != cudaSuccess) return err;
  GEO3D_LAUNCH(shape.blocks, shape.warps_per_block * kWarpSize, shape.smem_bytes, stream, backward_kernel<T>)(
      t, args, shape.warp_elems, shape.workspace_elems > 0 ? workspace : nullptr);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_reduce_units(const T* partial, int64_t units, int64_t nw, T* gw, cudaStream_t stream) {
  if (nw <= 0) return cudaSuccess;
  const int64_t blocks = (nw + kReduceThreads - 1) / kReduceThreads;
  GEO3D_LAUNCH(static_cast<unsigned int>(blocks), kReduceThreads, 0, stream, reduce_units_kernel<T>)(partial, units,
                                                                                                    nw, gw);
  return cudaGetLastError();
}

// The binding (a g++ translation unit) links against these instantiations.
#define GEO3D_INSTANTIATE(T)                                                                                       \
  template cudaError_t forward_shape<T>(const Tables<T>&, int64_t, LaunchShape*);                                  \
  template cudaError_t backward_shape<T>(const Tables<T>&, int64_t, LaunchShape*);                                 \
  template cudaError_t launch_forward<T>(const Tables<T>&, const ForwardArgs<T>&, const LaunchShape&, T*,          \
                                         cudaStream_t);                                                            \
  template cudaError_t launch_backward<T>(const Tables<T>&, const BackwardArgs<T>&, const LaunchShape&, T*,        \
                                          cudaStream_t);                                                           \
  template cudaError_t launch_reduce_units<T>(const T*, int64_t, int64_t, T*, cudaStream_t);                       \
  template std::string make_tables<T>(const tp::Plan<T>&, HostTables<T>&);                                         \
  template BlobLayout pack_tables<T>(const HostTables<T>&, std::vector<unsigned char>&);                           \
  template Tables<T> tables_at<T>(const HostTables<T>&, const BlobLayout&, const void*);
GEO3D_INSTANTIATE(float)
GEO3D_INSTANTIATE(double)
#undef GEO3D_INSTANTIATE

}  // namespace tpc
}  // namespace cuda
}  // namespace geo3d
