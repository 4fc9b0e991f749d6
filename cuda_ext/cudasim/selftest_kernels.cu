// Kernels that test the simulator itself (built only into geo3d._cudasim): each one uses
// one device feature the way a real kernel does, or misuses it the way a bug would, and
// tests/test_cudasim.py checks the simulator answers as a GPU (or a CUDA checker) would.
#include <cuda_runtime_api.h>

#include <string>

#include "common/cuda_compat.h"
#include "selftest.h"

namespace cudasim {
namespace selftest {
namespace {

constexpr int kTile = 128;

// Each block reverses its tile through shared memory; `barrier` = 0 drops the barrier
// between the writes and the reads (a race: threads read slots others have not written).
__global__ void reverse_kernel(const float* in, float* out, int n, int barrier) {
  __shared__ float tile[kTile];
  const int i = blockIdx.x * kTile + threadIdx.x;
  tile[threadIdx.x] = i < n ? in[i] : 0.0f;
  if (barrier) __syncthreads();
  if (i < n) out[i] = tile[kTile - 1 - threadIdx.x];
}

// Per lane (out: 8 values): xor-butterfly sum, shfl_down by 1, shfl_up by 3, lane 5's
// value, ballot(x > 0), any(x > 0), all(x > 0), shfl_xor 1 in segments of 8.
__global__ void warp_kernel(const int* in, long long* out) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  const int x = in[t];
  int s = x;
  for (int m = 16; m > 0; m >>= 1) s += __shfl_xor_sync(0xffffffffu, s, m);
  long long* o = out + 8 * static_cast<long long>(t);
  o[0] = s;
  o[1] = __shfl_down_sync(0xffffffffu, x, 1);
  o[2] = __shfl_up_sync(0xffffffffu, x, 3);
  o[3] = __shfl_sync(0xffffffffu, x, 5);
  o[4] = static_cast<long long>(__ballot_sync(0xffffffffu, x > 0));
  o[5] = __any_sync(0xffffffffu, x > 0);
  o[6] = __all_sync(0xffffffffu, x > 0);
  o[7] = __shfl_xor_sync(0xffffffffu, x, 1, 8);
}

// Every thread adds 1 to counter[0], its index to counter[1] (as a double in sum[0]) and
// takes the max of its index into counter[2].
__global__ void atomic_kernel(unsigned long long* counter, double* sum, int* maxi) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  atomicAdd(counter, 1ull);
  atomicAdd(sum, static_cast<double>(t));
  atomicMax(maxi, t);
}

__global__ void divergent_kernel(int* out) {
  if (threadIdx.x < 16) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}

__global__ void exited_lane_kernel(int* out) {
  if (threadIdx.x >= 16) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, static_cast<int>(threadIdx.x), 1);
}

__global__ void deadlock_kernel(int* out) {
  if (threadIdx.x == 0) {
    __syncwarp();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}

// Writes `bytes` bytes of its dynamic shared memory (more than it asked for: an overrun),
// then copies what thread 0 reads at `read_at` (never written: the poison) to out.
__global__ void smem_kernel(int bytes, int read_at, float* out) {
  GEO3D_DYNAMIC_SHARED(unsigned char, smem);
  if (threadIdx.x == 0) {
    for (int b = 0; b < bytes; ++b) smem[b] = 0;
    out[0] = reinterpret_cast<float*>(smem)[read_at];
  }
}

}  // namespace

cudaError_t reverse(const float* in, float* out, int n, bool barrier) {
  const unsigned blocks = static_cast<unsigned>((n + kTile - 1) / kTile);
  GEO3D_LAUNCH(blocks, kTile, 0, nullptr, reverse_kernel)(in, out, n, barrier ? 1 : 0);
  return cudaGetLastError();
}

cudaError_t warp_ops(const int* in, long long* out, int n, int threads_per_block) {
  GEO3D_LAUNCH(static_cast<unsigned>(n / threads_per_block), threads_per_block, 0, nullptr, warp_kernel)(in, out);
  return cudaGetLastError();
}

cudaError_t atomics(unsigned long long* counter, double* sum, int* maxi, int blocks, int threads) {
  GEO3D_LAUNCH(blocks, threads, 0, nullptr, atomic_kernel)(counter, sum, maxi);
  return cudaGetLastError();
}

cudaError_t misuse(const char* what, int* out) {
  const std::string w(what);
  if (w == "divergent_syncthreads") GEO3D_LAUNCH(1, 64, 0, nullptr, divergent_kernel)(out);
  else if (w == "exited_lane_shuffle") GEO3D_LAUNCH(1, 32, 0, nullptr, exited_lane_kernel)(out);
  else if (w == "deadlock") GEO3D_LAUNCH(1, 64, 0, nullptr, deadlock_kernel)(out);
  else if (w == "block_too_large") GEO3D_LAUNCH(1, 2048, 0, nullptr, divergent_kernel)(out);
  else if (w == "empty_grid") GEO3D_LAUNCH(0, 32, 0, nullptr, divergent_kernel)(out);
  else return cudaErrorInvalidValue;
  return cudaGetLastError();
}

cudaError_t shared_memory(int smem_bytes, int write_bytes, int read_at, bool opt_in, float* out) {
  if (opt_in) {
    const cudaError_t err =
        cudaFuncSetAttribute(smem_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes);
    if (err != cudaSuccess) return err;
  }
  GEO3D_LAUNCH(1, 32, static_cast<size_t>(smem_bytes), nullptr, smem_kernel)(write_bytes, read_at, out);
  return cudaGetLastError();
}

}  // namespace selftest
}  // namespace cudasim
