// Cell-list radius graph: the part shared by the CPU (OpenMP) and CUDA code.
//
// Plain C++ with no torch headers, so nvcc compiles it anywhere. Every graph
// of a batch is binned in its own fractional frame: periodic axes are wrapped
// into [0, 1), non-periodic axes are binned over the graph's bounding box. A
// bin's perpendicular width is w_k and a point scans m_k = ceil(r / w_k) bins
// either side, so cutoffs larger than the cell still see every image.
//
// Convention (ASE's): vec = pos[j] - pos[i] + shift @ H, H rows = cell vectors.
#pragma once
#include <cmath>
#include <cstdint>

#include "common/host_device.h"  // G3D_HD, mul_rn

namespace geo3d {

// Per-graph binning plan, filled on the host by plan_graph().
struct GraphPlan {
  double H[9];      // cell rows; non-periodic axes hold an orthonormal completion
  double Hinv[9];   // inverse of H (frac = pos @ Hinv)
  int pbc[3];
  int n[3];         // bins per axis
  int m[3];         // bins scanned either side
  double lo[3];     // fractional origin of bin 0
  double binw[3];   // fractional width of one bin
  int64_t bin_offset;  // index of this graph's first bin in the batch-wide bin array
  double r2;        // cutoff squared
};

G3D_HD double det3(const double* a) {
  return a[0] * (a[4] * a[8] - a[5] * a[7]) - a[1] * (a[3] * a[8] - a[5] * a[6]) +
         a[2] * (a[3] * a[7] - a[4] * a[6]);
}

// Inverse of a 3x3 row-major matrix; returns false when singular.
G3D_HD bool inv3(const double* a, double* out) {
  const double d = det3(a);
  if (!(std::fabs(d) > 0.0)) return false;
  const double id = 1.0 / d;
  out[0] = (a[4] * a[8] - a[5] * a[7]) * id;
  out[1] = (a[2] * a[7] - a[1] * a[8]) * id;
  out[2] = (a[1] * a[5] - a[2] * a[4]) * id;
  out[3] = (a[5] * a[6] - a[3] * a[8]) * id;
  out[4] = (a[0] * a[8] - a[2] * a[6]) * id;
  out[5] = (a[2] * a[3] - a[0] * a[5]) * id;
  out[6] = (a[3] * a[7] - a[4] * a[6]) * id;
  out[7] = (a[1] * a[6] - a[0] * a[7]) * id;
  out[8] = (a[0] * a[4] - a[1] * a[3]) * id;
  return true;
}

// Fractional coordinates of one point: f = p @ Hinv.
G3D_HD void to_frac(const double* Hinv, const double* p, double* f) {
  for (int k = 0; k < 3; ++k)
    f[k] = mul_rn(p[0], Hinv[k]) + mul_rn(p[1], Hinv[3 + k]) + mul_rn(p[2], Hinv[6 + k]);
}

// Host-side: choose bins for one graph. frac_lo/frac_hi are the bounding box of
// the graph's fractional coordinates (used on non-periodic axes only).
// `bins_per_cutoff` > 1 makes bins narrower than the cutoff (more, emptier
// bins, fewer wasted distance checks); `max_bins` caps the grid's size.
inline void plan_graph(GraphPlan& g, const double* frac_lo, const double* frac_hi, double cutoff,
                       int bins_per_cutoff, int64_t max_bins) {
  g.r2 = cutoff * cutoff;
  double height[3];
  for (int k = 0; k < 3; ++k) {
    // Perpendicular height of the cell along axis k is 1 / |column k of Hinv|.
    const double c0 = g.Hinv[k], c1 = g.Hinv[3 + k], c2 = g.Hinv[6 + k];
    height[k] = 1.0 / std::sqrt(c0 * c0 + c1 * c1 + c2 * c2);
  }
  double extent[3];  // fractional extent binned along each axis
  for (int k = 0; k < 3; ++k) {
    if (g.pbc[k]) {
      g.lo[k] = 0.0;
      extent[k] = 1.0;
    } else {
      g.lo[k] = frac_lo[k];
      extent[k] = frac_hi[k] - frac_lo[k];
    }
    const double length = extent[k] * height[k];
    double nb = std::floor(length * bins_per_cutoff / cutoff);
    if (!(nb >= 1.0)) nb = 1.0;
    if (nb > 1e6) nb = 1e6;
    g.n[k] = static_cast<int>(nb);
  }
  // Cap the grid: sparse clouds in big boxes would otherwise allocate empty bins.
  while (static_cast<int64_t>(g.n[0]) * g.n[1] * g.n[2] > max_bins) {
    int k = 0;
    if (g.n[1] > g.n[k]) k = 1;
    if (g.n[2] > g.n[k]) k = 2;
    g.n[k] = (g.n[k] + 1) / 2;
  }
  for (int k = 0; k < 3; ++k) {
    g.binw[k] = extent[k] > 0.0 ? extent[k] / g.n[k] : 1.0;
    const double width = g.binw[k] * height[k];  // perpendicular width of one bin
    int m = static_cast<int>(std::ceil(cutoff / width));
    if (m < 1) m = 1;
    // A non-periodic axis never needs to look past its own grid.
    if (!g.pbc[k] && m > g.n[k]) m = g.n[k];
    g.m[k] = m;
  }
}

// Bin coordinates of a (wrapped) fractional position.
G3D_HD void bin_of(const GraphPlan& g, const double* f, int* b) {
  for (int k = 0; k < 3; ++k) {
    int v = static_cast<int>(std::floor((f[k] - g.lo[k]) / g.binw[k]));
    if (v < 0) v = 0;
    if (v >= g.n[k]) v = g.n[k] - 1;
    b[k] = v;
  }
}

G3D_HD int floor_div(int a, int n) {
  int q = a / n;
  if ((a % n != 0) && ((a < 0) != (n < 0))) --q;
  return q;
}

// Bin b + d along axis k: wraps into [0, n) on a periodic axis (image shift in
// `shift`); returns false when it falls off a non-periodic grid.
G3D_HD bool neighbor_bin(const GraphPlan& g, int k, int b, int d, int& bin, int& shift) {
  bin = b + d;
  shift = 0;
  if (g.pbc[k]) {
    shift = floor_div(bin, g.n[k]);
    bin -= shift * g.n[k];
    return true;
  }
  return bin >= 0 && bin < g.n[k];
}

// Visit every neighbour (j, shift) of centre i within the cutoff.
//   pos_w      [N, 3] wrapped positions (original order)
//   bin3       [N, 3] bin coordinates (original order)
//   sorted_idx [N]    point indices sorted by global bin
//   sorted_pos [N, 3] pos_w in that order
//   bin_start  [B_total + 1] start of each bin in sorted order
// The callback gets (j, s0, s1, s2) with s the shift between the wrapped points;
// the caller adds wrap[j] - wrap[i] to express it for the user's positions.
template <typename real, typename Index, typename F>
G3D_HD void visit_neighbors(const GraphPlan& g, int64_t i, const real* pos_w, const int* bin3,
                            const Index* sorted_idx, const real* sorted_pos,
                            const int64_t* bin_start, bool loop, F&& emit) {
  const real pi0 = pos_w[3 * i], pi1 = pos_w[3 * i + 1], pi2 = pos_w[3 * i + 2];
  const real r2 = static_cast<real>(g.r2);
  const int b0 = bin3[3 * i], b1 = bin3[3 * i + 1], b2 = bin3[3 * i + 2];
  for (int d0 = -g.m[0]; d0 <= g.m[0]; ++d0) {
    int c0, s0;
    if (!neighbor_bin(g, 0, b0, d0, c0, s0)) continue;
    for (int d1 = -g.m[1]; d1 <= g.m[1]; ++d1) {
      int c1, s1;
      if (!neighbor_bin(g, 1, b1, d1, c1, s1)) continue;
      for (int d2 = -g.m[2]; d2 <= g.m[2]; ++d2) {
        int c2, s2;
        if (!neighbor_bin(g, 2, b2, d2, c2, s2)) continue;
        // Offset of the image: shift @ H.
        const double t0 = s0, t1 = s1, t2 = s2;
        const real o0 = static_cast<real>(mul_rn(t0, g.H[0]) + mul_rn(t1, g.H[3]) + mul_rn(t2, g.H[6]));
        const real o1 = static_cast<real>(mul_rn(t0, g.H[1]) + mul_rn(t1, g.H[4]) + mul_rn(t2, g.H[7]));
        const real o2 = static_cast<real>(mul_rn(t0, g.H[2]) + mul_rn(t1, g.H[5]) + mul_rn(t2, g.H[8]));
        const bool zero_shift = (s0 == 0) && (s1 == 0) && (s2 == 0);
        const int64_t bin = g.bin_offset + (static_cast<int64_t>(c0) * g.n[1] + c1) * g.n[2] + c2;
        const int64_t end = bin_start[bin + 1];
        for (int64_t k = bin_start[bin]; k < end; ++k) {
          const real v0 = sorted_pos[3 * k] + o0 - pi0;
          const real v1 = sorted_pos[3 * k + 1] + o1 - pi1;
          const real v2 = sorted_pos[3 * k + 2] + o2 - pi2;
          const real dd = mul_rn(v0, v0) + mul_rn(v1, v1) + mul_rn(v2, v2);
          if (dd < r2) {
            const int64_t j = static_cast<int64_t>(sorted_idx[k]);
            if (!loop && zero_shift && j == i) continue;
            emit(j, s0, s1, s2);
          }
        }
      }
    }
  }
}

}  // namespace geo3d
