// Launchers of selftest_kernels.cu (pointers are host memory standing in for the device's).
#pragma once
#include <cuda_runtime_api.h>

#include <string>

namespace cudasim {
namespace selftest {
cudaError_t reverse(const float* in, float* out, int n, bool barrier);
cudaError_t warp_ops(const int* in, long long* out, int n, int threads_per_block);
cudaError_t atomics(unsigned long long* counter, double* sum, int* maxi, int blocks, int threads);
// what: divergent_syncthreads, exited_lane_shuffle, deadlock, block_too_large, empty_grid.
cudaError_t misuse(const char* what, int* out);
cudaError_t shared_memory(int smem_bytes, int write_bytes, int read_at, bool opt_in, float* out);
}  // namespace selftest
}  // namespace cudasim
