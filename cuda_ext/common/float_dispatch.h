// The one dtype switch of geo3d's bindings (CPU and CUDA): every op takes float32 or float64
// features, checked by the op's argument checks before this runs.
#pragma once
#include <c10/core/ScalarType.h>

namespace geo3d {

// Returns f(double{}) for float64, else f(float{}). A function, not AT_DISPATCH: OpenMP
// pragmas cannot sit in a macro's arguments.
template <typename F>
decltype(auto) dispatch_float(c10::ScalarType dtype, F&& f) {
  if (dtype == c10::kDouble) return f(double{});
  return f(float{});
}

}  // namespace geo3d
