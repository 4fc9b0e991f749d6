// Shared by the torch bindings of the CUDA kernels (*_cuda.cpp). In the normal CUDA build
// they register under the CUDA dispatch key of torch.ops.geo3d; in the simulator build
// (GEO3D_CUDASIM, see cudasim/) the same bindings register under the CPU key of
// torch.ops.geo3d_cudasim and take CPU tensors as "device" memory, so the launch code is
// tested along with the kernels.
#pragma once
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

namespace geo3d {

// Whether `t` lives where the kernels run (a CUDA device; the host under the simulator).
inline bool on_kernel_device(const at::Tensor& t) {
#ifdef GEO3D_CUDASIM
  return t.is_cpu();
#else
  return t.is_cuda();
#endif
}

}  // namespace geo3d

#ifdef GEO3D_CUDASIM
#define GEO3D_CUDA_LIBRARY_IMPL(m) TORCH_LIBRARY_IMPL(geo3d_cudasim, CPU, m)
#else
#define GEO3D_CUDA_LIBRARY_IMPL(m) TORCH_LIBRARY_IMPL(geo3d, CUDA, m)
#endif
