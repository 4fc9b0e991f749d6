// CUDA kNN graph and farthest-point sampling (point_ops_cuda_kernels.cu), behind
// torch-free launchers.
//
// The binding (point_ops_cuda.cpp) checks the inputs, plans on the host with
// plan_knn() / plan_fps_graphs() (point_ops_core.h; the batch's ptr is
// a CPU tensor, so sizes and the output size are known without a device sync), copies
// the plan to the device, allocates the outputs and scratch, and calls these on its
// current stream. They only run kernels and return the first CUDA error; no exceptions.
// All arrays are device pointers, contiguous; pos is [N, 3].
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "point_ops/point_ops_core.h"

namespace geo3d {
namespace cuda {

// kNN. blocks [num_blocks] and threads from plan_knn(). Writes edge_index [2, E]:
// src = row 0 (neighbour j), dst = row 1 (centre i). scratch: E doubles when
// knn_register_slots(max_degree) == 0, else unused (may be null).
template <typename real>
cudaError_t launch_knn(const real* pos, const pointops::KnnBlock* blocks, int64_t num_blocks, int threads,
                       int64_t max_degree, bool loop, int64_t* src, int64_t* dst, double* scratch,
                       cudaStream_t stream);

// FPS. graphs [num_graphs] from plan_fps_graphs(); out [sum m]; scratch: N doubles
// (distances of graphs too large for shared memory).
template <typename real>
cudaError_t launch_fps(const real* pos, const pointops::FpsGraph* graphs, int64_t num_graphs, int64_t max_points,
                       int64_t* out, double* scratch, cudaStream_t stream);

}  // namespace cuda
}  // namespace geo3d
