// Schemas of geo3d's native ops. Each backend file registers its own kernels
// with TORCH_LIBRARY_IMPL; autograd and fake (meta) rules live in Python
// (geo3d/ops), so the ops work with torch.compile and torch.library.opcheck.
#include <torch/extension.h>

TORCH_LIBRARY(geo3d, m) {
  // pos [N, 3] float; ptr [B + 1] int64 (CPU); cell [B, 3, 3] float64 (CPU,
  // non-periodic axes completed); pbc [B, 3] bool (CPU).
  // Returns edge_index [2, E] int64 (row 0 = neighbour j, row 1 = centre i,
  // sorted by i) and shifts [E, 3] int64 with vec = pos[j] - pos[i] + shifts @ cell.
  m.def(
      "radius_graph(Tensor pos, Tensor ptr, Tensor cell, Tensor pbc, float cutoff, bool loop, "
      "int bins_per_cutoff) -> (Tensor, Tensor)");
}

// The extension is imported as a Python module only to run the registrations above.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.attr("with_cuda") =
#ifdef GEO3D_WITH_CUDA
      true;
#else
      false;
#endif
}
