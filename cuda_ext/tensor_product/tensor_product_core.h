// Torch-free core of the tensor-product kernels: one row of TP(x1, x2, w), forward and
// backward, over the plan tables built by geo3d/o3/tp_plan.py. Shared by the CPU
// kernels (tensor_product_cpu.cpp) and meant for a CUDA port that keeps the same maths.
//
// Layouts. Rows of x2 and w are in e3nn's layout (x2: per irrep block [mul][2l+1];
// w: per weighted path its path_shape, row-major). x1, the output and their gradients
// are used transposed per irrep block ("ir_mul": [2l+1][mul]) so that the innermost
// loops run over channels, contiguous, and vectorise.
//
// Per path and per v (channel of in2), with S[i][k] = sum_j C[i,j,k] x2[v,j] (the CG
// contracted with the small operand first, which exploits the sparsity of C):
//   t_k[u]  = sum_i S[i][k] x1[i][u]
//   uvu:  out[k][u] += pw w[u,v] t_k[u]
//   uvw:  out[k][w] += pw sum_u w[u,v,w] t_k[u]
// The backward reuses S and t: with h_k[u] = d out / d t_k[u] contracted with g,
//   gx1[i][u] += sum_k S[i][k] h_k[u];  gx2[v,j] += sum C[i,j,k] sum_u x1[i][u] h_k[u];
//   gw[u,v(,w)] += pw t_k[u] g[k][u or w].
#pragma once

#include <cstdint>
#include <vector>

namespace geo3d {
namespace tp {

// Columns of the path table (keep in sync with geo3d/ops/tp_tables.py; tests/test_tensor_product.py checks).
enum PathField : int {
  kMode = 0, kL1, kL2, kL3, kMul1, kMul2, kMulOut, kOff1, kOff2, kOffOut, kWOff, kCgStart, kCgEnd,
  kNumPathFields
};
enum Mode : int { kUVW = 0, kUVU = 1 };

template <typename T>
struct CG {
  int i, j, k;
  T c;
};

template <typename T>
struct Path {
  int mode, d1, d2, d3, mul1, mul2, mulo, off1, off2, offo;
  int64_t woff;  // -1: no weight
  int cg_start, cg_end;
  T pw;
};

template <typename T>
struct Plan;
template <typename T>
struct Scratch;
// Kernels of one path unrolled at compile time (uvu_forward / uvu_backward below).
template <typename T>
using UvuForward = void (*)(const Plan<T>&, const Path<T>&, const T*, const T*, const T*, T*, Scratch<T>&);
template <typename T>
using UvuBackward = void (*)(const Plan<T>&, const Path<T>&, const T*, const T*, const T*, const T*, T*, T*, T*,
                             Scratch<T>&);

template <typename T>
struct Plan {
  std::vector<Path<T>> paths;
  std::vector<CG<T>> cg;
  int dim1 = 0, dim2 = 0, dim_out = 0;
  int64_t weight_numel = 0;
  int max_mul = 1, max_d13 = 1;
  // Per path: its unrolled kernel, or null for the generic loops (select_unrolled; empty: all generic).
  std::vector<UvuForward<T>> forward;
  std::vector<UvuBackward<T>> backward;
};

// Largest irrep dimension (l = 3) of the paths unrolled at compile time (uvu_* below).
constexpr int kMaxUnrolledD = 7;

// Per-thread work space sized for a plan.
template <typename T>
struct Scratch {
  std::vector<T> S, t, h, a, wv, hk;
  explicit Scratch(const Plan<T>& p)
      : S(p.max_d13), t(p.max_mul), h(p.max_mul), a(p.max_d13), wv(p.max_mul), hk(kMaxUnrolledD * p.max_mul) {}
};

// S[i*d3 + k] = sum over the path's CG entries of c * x2v[j].
template <typename T>
inline void contract_cg(const Plan<T>& plan, const Path<T>& p, const T* x2v, T* S) {
  for (int n = 0; n < p.d1 * p.d3; ++n) S[n] = T(0);
  for (int n = p.cg_start; n < p.cg_end; ++n) {
    const CG<T>& e = plan.cg[n];
    S[e.i * p.d3 + e.k] += e.c * x2v[e.j];
  }
}

// t[u] = sum_i S[i][k] x1t[i][u] for one k.
template <typename T>
inline void contract_x1(const Path<T>& p, const T* S, int k, const T* x1t, T* t) {
  const int mul = p.mul1;
  for (int u = 0; u < mul; ++u) t[u] = T(0);
  for (int i = 0; i < p.d1; ++i) {
    const T s = S[i * p.d3 + k];
    if (s == T(0)) continue;
    const T* x = x1t + i * mul;
    for (int u = 0; u < mul; ++u) t[u] += s * x[u];
  }
}

// ---------------------------------------------------------------- uvu paths, unrolled
// The channel-wise (uvu) paths of NequIP/MACE convolutions with l1, l3 <= 3, with d1 and d3
// known at compile time: per v, one pass over the channels u computes every t_k[u] from the
// d1 values x1[i][u] held in registers and applies the weight, instead of d3 passes of
// contract_x1 through a t buffer. The loops over u vectorise (omp simd); the generic
// row_forward/row_backward code stays the reference (GEO3D_TP_GENERIC=1 selects it).

// wv[u] = pw * w[u, v] (or pw for a path without weights).
template <typename T>
inline void uvu_weights(const Path<T>& p, const T* w, int v, T* wv) {
  if (p.woff >= 0) {
    const T* src = w + p.woff + v;
    for (int u = 0; u < p.mul1; ++u) wv[u] = p.pw * src[int64_t(u) * p.mul2];
  } else {
    for (int u = 0; u < p.mul1; ++u) wv[u] = p.pw;
  }
}

// Per (path, v) of the unrolled kernels: s.wv, and S of in2's channel v copied into the
// caller's fixed-size Sr (a local array the compiler keeps apart from the outputs).
template <typename T, int D1, int D3>
inline void uvu_prepare(const Plan<T>& plan, const Path<T>& p, const T* x2, const T* w, int v, Scratch<T>& s,
                        T* Sr) {
  contract_cg(plan, p, x2 + p.off2 + v * p.d2, s.S.data());
  uvu_weights(p, w, v, s.wv.data());
  for (int n = 0; n < D1 * D3; ++n) Sr[n] = s.S[n];
}

template <typename T, int D1, int D3>
void uvu_forward(const Plan<T>& plan, const Path<T>& p, const T* x1, const T* x2, const T* w, T* out,
                 Scratch<T>& s) {
  const int mul = p.mul1;
  const T* wv = s.wv.data();
  for (int v = 0; v < p.mul2; ++v) {
    T Sr[D1 * D3];
    uvu_prepare<T, D1, D3>(plan, p, x2, w, v, s, Sr);
#pragma omp simd
    for (int u = 0; u < mul; ++u) {
      T xi[D1];
      for (int i = 0; i < D1; ++i) xi[i] = x1[i * mul + u];
      for (int k = 0; k < D3; ++k) {
        T t = T(0);
        for (int i = 0; i < D1; ++i) t += Sr[i * D3 + k] * xi[i];
        out[k * mul + u] += wv[u] * t;
      }
    }
  }
}

template <typename T, int D1, int D3>
void uvu_backward(const Plan<T>& plan, const Path<T>& p, const T* x1, const T* x2, const T* w, const T* g,
                  T* gx1, T* gx2, T* gw, Scratch<T>& s) {
  const int mul = p.mul1;
  const bool need_gw = gw != nullptr && p.woff >= 0;
  const T* wv = s.wv.data();
  T* gwv = s.t.data();  // d <g, out> / d w[u, v] / pw
  T* h = s.hk.data();   // h_k[u] = wv[u] g_k[u], [D3][mul]
  for (int v = 0; v < p.mul2; ++v) {
    T Sr[D1 * D3];
    uvu_prepare<T, D1, D3>(plan, p, x2, w, v, s, Sr);
#pragma omp simd
    for (int u = 0; u < mul; ++u) {
      T xi[D1], gk[D3];
      for (int i = 0; i < D1; ++i) xi[i] = x1[i * mul + u];
      for (int k = 0; k < D3; ++k) gk[k] = g[k * mul + u];
      T acc = T(0);
      for (int k = 0; k < D3; ++k) {
        T t = T(0);
        for (int i = 0; i < D1; ++i) t += Sr[i * D3 + k] * xi[i];
        acc += gk[k] * t;
        h[k * mul + u] = wv[u] * gk[k];
      }
      gwv[u] = acc;
      if (gx1 != nullptr) {
        for (int i = 0; i < D1; ++i) {
          T d = T(0);
          for (int k = 0; k < D3; ++k) d += Sr[i * D3 + k] * wv[u] * gk[k];
          gx1[i * mul + u] += d;
        }
      }
    }
    if (need_gw) {
      T* dst = gw + p.woff + v;
      for (int u = 0; u < mul; ++u) dst[int64_t(u) * p.mul2] += p.pw * gwv[u];
    }
    if (gx2 != nullptr) {
      T* a = s.a.data();
      for (int i = 0; i < D1; ++i)
        for (int k = 0; k < D3; ++k) {
          const T* xr = x1 + i * mul;
          const T* hr = h + k * mul;
          T dot = T(0);
#pragma omp simd reduction(+ : dot)
          for (int u = 0; u < mul; ++u) dot += xr[u] * hr[u];
          a[i * D3 + k] = dot;
        }
      T* gv = gx2 + p.off2 + v * p.d2;
      for (int n = p.cg_start; n < p.cg_end; ++n) {
        const CG<T>& e = plan.cg[n];
        gv[e.j] += e.c * a[e.i * D3 + e.k];
      }
    }
  }
}

// A path's unrolled forward and backward kernels, or null (not uvu, or l1 or l3 above 3).
template <typename T, int D1>
inline void unrolled_d3(int d3, UvuForward<T>& f, UvuBackward<T>& b) {
  switch (d3) {
    case 1: f = uvu_forward<T, D1, 1>; b = uvu_backward<T, D1, 1>; break;
    case 3: f = uvu_forward<T, D1, 3>; b = uvu_backward<T, D1, 3>; break;
    case 5: f = uvu_forward<T, D1, 5>; b = uvu_backward<T, D1, 5>; break;
    case 7: f = uvu_forward<T, D1, 7>; b = uvu_backward<T, D1, 7>; break;
    default: break;
  }
}
template <typename T>
inline void unrolled_for(const Path<T>& p, UvuForward<T>& f, UvuBackward<T>& b) {
  f = nullptr;
  b = nullptr;
  if (p.mode != kUVU) return;
  switch (p.d1) {
    case 1: unrolled_d3<T, 1>(p.d3, f, b); break;
    case 3: unrolled_d3<T, 3>(p.d3, f, b); break;
    case 5: unrolled_d3<T, 5>(p.d3, f, b); break;
    case 7: unrolled_d3<T, 7>(p.d3, f, b); break;
    default: break;
  }
}

// Picks each path's unrolled kernel (enable) or the generic loops for all (the reference).
template <typename T>
void select_unrolled(Plan<T>& plan, bool enable) {
  plan.forward.assign(plan.paths.size(), nullptr);
  plan.backward.assign(plan.paths.size(), nullptr);
  if (!enable) return;
  for (size_t n = 0; n < plan.paths.size(); ++n) unrolled_for(plan.paths[n], plan.forward[n], plan.backward[n]);
}

// acc (ir_mul) += TP(x1t (ir_mul), x2 (e3nn), w (e3nn flat, this row's or shared)).
template <typename T>
void row_forward(const Plan<T>& plan, const T* x1t, const T* x2, const T* w, T* acc, Scratch<T>& s) {
  for (size_t n = 0; n < plan.paths.size(); ++n) {
    const Path<T>& p = plan.paths[n];
    const T* x1 = x1t + p.off1;
    T* out = acc + p.offo;
    if (!plan.forward.empty() && plan.forward[n] != nullptr) {
      plan.forward[n](plan, p, x1, x2, w, out, s);
      continue;
    }
    for (int v = 0; v < p.mul2; ++v) {
      contract_cg(plan, p, x2 + p.off2 + v * p.d2, s.S.data());
      for (int k = 0; k < p.d3; ++k) {
        T* t = s.t.data();
        contract_x1(p, s.S.data(), k, x1, t);
        T* o = out + k * p.mulo;
        if (p.mode == kUVU) {
          if (p.woff >= 0) {
            const T* wv = w + p.woff + v;  // w[u, v] at u * mul2 + v
            for (int u = 0; u < p.mul1; ++u) o[u] += p.pw * wv[u * p.mul2] * t[u];
          } else {
            for (int u = 0; u < p.mul1; ++u) o[u] += p.pw * t[u];
          }
        } else if (p.woff >= 0) {
          for (int u = 0; u < p.mul1; ++u) {
            const T c = p.pw * t[u];
            const T* wr = w + p.woff + (int64_t(u) * p.mul2 + v) * p.mulo;
            for (int q = 0; q < p.mulo; ++q) o[q] += c * wr[q];
          }
        } else {
          T c = T(0);
          for (int u = 0; u < p.mul1; ++u) c += t[u];
          for (int q = 0; q < p.mulo; ++q) o[q] += p.pw * c;
        }
      }
    }
  }
}

// Gradients of <g, TP(x1, x2, w)> for one row: gx1t (ir_mul) += ..., gx2 (e3nn) += ...,
// gw (e3nn flat; the row's own or a shared accumulator) += ... Any of them may be null.
template <typename T>
void row_backward(const Plan<T>& plan, const T* x1t, const T* x2, const T* w, const T* gt, T* gx1t,
                  T* gx2, T* gw, Scratch<T>& s) {
  for (size_t n = 0; n < plan.paths.size(); ++n) {
    const Path<T>& p = plan.paths[n];
    const T* x1 = x1t + p.off1;
    const T* g = gt + p.offo;
    if (!plan.backward.empty() && plan.backward[n] != nullptr) {
      plan.backward[n](plan, p, x1, x2, w, g, gx1t == nullptr ? nullptr : gx1t + p.off1, gx2, gw, s);
      continue;
    }
    for (int v = 0; v < p.mul2; ++v) {
      T* S = s.S.data();
      contract_cg(plan, p, x2 + p.off2 + v * p.d2, S);
      T* a = s.a.data();
      for (int n = 0; n < p.d1 * p.d3; ++n) a[n] = T(0);
      for (int k = 0; k < p.d3; ++k) {
        const T* gk = g + k * p.mulo;
        T* t = s.t.data();
        T* h = s.h.data();
        const bool need_t = gw != nullptr && p.woff >= 0;
        if (need_t) contract_x1(p, S, k, x1, t);
        // h[u] = d <g_k, out_k> / d t[u]
        if (p.mode == kUVU) {
          if (p.woff >= 0) {
            const T* wv = w + p.woff + v;
            for (int u = 0; u < p.mul1; ++u) h[u] = p.pw * wv[u * p.mul2] * gk[u];
            if (need_t) {
              T* gwv = gw + p.woff + v;
              for (int u = 0; u < p.mul1; ++u) gwv[u * p.mul2] += p.pw * gk[u] * t[u];
            }
          } else {
            for (int u = 0; u < p.mul1; ++u) h[u] = p.pw * gk[u];
          }
        } else if (p.woff >= 0) {
          for (int u = 0; u < p.mul1; ++u) {
            const T* wr = w + p.woff + (int64_t(u) * p.mul2 + v) * p.mulo;
            T dot = T(0);
            for (int q = 0; q < p.mulo; ++q) dot += wr[q] * gk[q];
            h[u] = p.pw * dot;
          }
          if (need_t) {
            for (int u = 0; u < p.mul1; ++u) {
              const T c = p.pw * t[u];
              T* gwr = gw + p.woff + (int64_t(u) * p.mul2 + v) * p.mulo;
              for (int q = 0; q < p.mulo; ++q) gwr[q] += c * gk[q];
            }
          }
        } else {
          T c = T(0);
          for (int q = 0; q < p.mulo; ++q) c += gk[q];
          for (int u = 0; u < p.mul1; ++u) h[u] = p.pw * c;
        }
        for (int i = 0; i < p.d1; ++i) {
          const T sik = S[i * p.d3 + k];
          const T* x = x1 + i * p.mul1;
          if (gx2 != nullptr) {
            T dot = T(0);
            for (int u = 0; u < p.mul1; ++u) dot += x[u] * h[u];
            a[i * p.d3 + k] = dot;
          }
          if (gx1t != nullptr && sik != T(0)) {
            T* gx = gx1t + p.off1 + i * p.mul1;
            for (int u = 0; u < p.mul1; ++u) gx[u] += sik * h[u];
          }
        }
      }
      if (gx2 != nullptr) {
        T* gv = gx2 + p.off2 + v * p.d2;
        for (int n = p.cg_start; n < p.cg_end; ++n) {
          const CG<T>& e = plan.cg[n];
          gv[e.j] += e.c * a[e.i * p.d3 + e.k];
        }
      }
    }
  }
}

// e3nn layout (per block [mul][d]) <-> ir_mul (per block [d][mul]); blocks as (offset, mul, d).
struct Block {
  int off, mul, d;
};

template <typename T>
inline void to_ir_mul(const std::vector<Block>& blocks, const T* src, T* dst) {
  for (const Block& b : blocks)
    for (int u = 0; u < b.mul; ++u)
      for (int i = 0; i < b.d; ++i) dst[b.off + i * b.mul + u] = src[b.off + u * b.d + i];
}

template <typename T>
inline void from_ir_mul(const std::vector<Block>& blocks, const T* src, T* dst) {
  for (const Block& b : blocks)
    for (int i = 0; i < b.d; ++i)
      for (int u = 0; u < b.mul; ++u) dst[b.off + u * b.d + i] = src[b.off + i * b.mul + u];
}

}  // namespace tp
}  // namespace geo3d
