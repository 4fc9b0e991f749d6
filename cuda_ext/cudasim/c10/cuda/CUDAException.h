// cudasim stand-in for c10's C10_CUDA_CHECK: a failed runtime call or launch raises a
// c10::Error (RuntimeError in Python) with the simulator's reason.
#pragma once
#include <c10/util/Exception.h>
#include <cuda_runtime_api.h>

#define C10_CUDA_CHECK(EXPR)                                                                                   \
  do {                                                                                                         \
    const cudaError_t geo3d_sim_err_ = (EXPR);                                                                 \
    TORCH_CHECK(geo3d_sim_err_ == cudaSuccess, "CUDA error (cudasim): ", cudaGetErrorString(geo3d_sim_err_), \
                ": ", ::cudasim::last_error_detail());                                                         \
  } while (0)
