// What the torch-free cores (<op>/<op>_core.h) share between host and device code: the
// __host__ __device__ marker and a product that never fuses into an FMA.
#pragma once

#if defined(__CUDACC__)
#define G3D_HD __host__ __device__ inline
#else
#define G3D_HD inline
#endif

namespace geo3d {

// A product that rounds on the device exactly as on the host. nvcc fuses
// a * b + c into one FMA by default (and under --use_fast_math); a fused sum
// can put a point in another bin or flip a distance test at the cutoff, and the
// CUDA radius graph and kNN must return exactly the CPU backend's edges, in the
// same order. __dmul_rn / __fmul_rn are never fused.
G3D_HD double mul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
G3D_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

}  // namespace geo3d
