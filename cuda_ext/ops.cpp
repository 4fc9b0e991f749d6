// Schemas of geo3d's native ops. Each backend file registers its own kernels
// with TORCH_LIBRARY_IMPL; autograd and fake (meta) rules live in Python
// (geo3d/ops), so the ops work with torch.compile and torch.library.opcheck.
#include <torch/extension.h>

#include "common/op_schemas.h"

TORCH_LIBRARY(geo3d, m) { geo3d::define_ops(m); }

// The extension is imported as a Python module only to run the registrations above.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.attr("with_cuda") =
#ifdef GEO3D_WITH_CUDA
      true;
#else
      false;
#endif
}
