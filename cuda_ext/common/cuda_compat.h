// What geo3d's kernel files (*.cu) say instead of CUDA's launch and dynamic-shared-memory
// syntax, so that the same files also build for the host simulator (cudasim/, where
// cuda_runtime_api.h defines both macros and these definitions are skipped):
//   GEO3D_LAUNCH(grid, block, smem, stream, kernel)(args...)  ==  kernel<<<grid, block, smem, stream>>>(args...)
//   GEO3D_DYNAMIC_SHARED(T, name);                            ==  extern __shared__ T name[];  (16-byte aligned)
// The kernel comes last because a template-id such as knn_kernel<real, 8> holds a comma.
#pragma once
#include <cuda_runtime_api.h>

#ifndef GEO3D_CUDASIM_ACTIVE
#define GEO3D_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<grid, block, smem, stream>>>
#define GEO3D_DYNAMIC_SHARED(type, name) extern __shared__ __align__(16) type name[]
#endif
