// CUDA kernels of the radius graph (radius_graph_cuda_kernels.cu), behind
// torch-free launchers.
//
// The torch binding (radius_graph_cuda.cpp) owns allocation, the stable sort,
// the scan and the host syncs; these launchers only run kernels on `stream` and
// return cudaGetLastError(). All arrays are device pointers, contiguous, in the
// layouts of visit_neighbors() (radius_graph_core.h). Pipeline:
//   1. launch_wrap          graph id, fractional coords (wrapped), wrap, wrapped positions
//   2. launch_frac_bounds   per-graph bounding box in fractional coords -> host plan_graph()
//   3. launch_bin           bin of every point, with the full plans
//   (binding: stable sort by global bin, bin_start, sorted positions)
//   4. launch_count_neighbors   (binding: scan, sync for the edge count)
//   5. launch_fill_edges
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "radius_graph/radius_graph_core.h"

namespace geo3d {
namespace cuda {

// Inputs of the neighbour visit (steps 4 and 5).
template <typename real>
struct NeighborArgs {
  const GraphPlan* plans;     // [B] complete plans
  const int32_t* graph;       // [N] graph of each point
  const int* wrap;            // [N, 3] integer cell vectors added to wrap each point
  const real* pos_w;          // [N, 3] wrapped positions, original order
  const int* bin3;            // [N, 3] bin coordinates
  const int64_t* sorted_idx;  // [N] points sorted by global bin (stable)
  const real* sorted_pos;     // [N, 3] pos_w in sorted order
  const int64_t* bin_start;   // [total_bins + 1]
  int64_t n;
  bool loop;
};

// Step 1. `plans` needs only H, Hinv and pbc here. Writes graph [N], frac [N, 3]
// (periodic axes wrapped into [0, 1)), wrap [N, 3] and pos_w [N, 3].
template <typename real>
cudaError_t launch_wrap(const real* pos, int64_t n, const int64_t* ptr, int64_t num_graphs,
                        const GraphPlan* plans, int32_t* graph, double* frac, int* wrap, real* pos_w,
                        cudaStream_t stream);

// Step 2. lo/hi [B, 3]: min/max of frac over each graph (0 for empty graphs).
cudaError_t launch_frac_bounds(const double* frac, const int64_t* ptr, int64_t num_graphs, double* lo,
                               double* hi, cudaStream_t stream);

// Step 3. bin3 [N, 3] and the batch-wide bin index gbin [N].
cudaError_t launch_bin(const double* frac, const int32_t* graph, int64_t n, const GraphPlan* plans, int* bin3,
                       int64_t* gbin, cudaStream_t stream);

// Step 4. count [N]: neighbours of each centre.
template <typename real>
cudaError_t launch_count_neighbors(const NeighborArgs<real>& args, int64_t* count, cudaStream_t stream);

// Step 5. Centre i writes its edges at start[i] (exclusive scan of count), in
// visit order: the same edges, in the same order, as the CPU op. src/dst are
// the two rows of edge_index [2, E], shifts is [E, 3].
template <typename real>
cudaError_t launch_fill_edges(const NeighborArgs<real>& args, const int64_t* start, int64_t* src, int64_t* dst,
                              int64_t* shifts, cudaStream_t stream);

}  // namespace cuda
}  // namespace geo3d
