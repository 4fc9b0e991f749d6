// cudasim stand-in for c10::cuda::CUDAGuard: one simulated device, nothing to switch.
#pragma once
#include <c10/core/Device.h>
#include <cuda_runtime_api.h>

namespace c10 {
namespace cuda {
struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
  explicit CUDAGuard(c10::DeviceIndex) {}
};
}  // namespace cuda
}  // namespace c10
