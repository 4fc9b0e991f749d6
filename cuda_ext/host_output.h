// Large host-side outputs (edge lists of millions of pairs) backed by transparent huge pages.
//
// An op like radius_graph writes its output once, front to back, into memory that
// was never touched. For outputs of tens to hundreds of MiB glibc serves every call
// with a fresh mmap, and faulting that in 4 KiB page by page costs about 1 us a page
// on a VM: for a 100k-point graph (109 MiB) that is more than half the op's time.
// Asking for 2 MiB pages (madvise, the usual kernel THP setting) cuts the number
// of faults 512-fold. Small outputs, non-Linux systems, or a kernel that refuses
// all fall back to at::empty. Only the allocation differs: the tensor is an
// ordinary CPU tensor (not resizable, as any from_blob tensor).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace geo3d {

inline at::Tensor empty_host_output(at::IntArrayRef sizes, at::ScalarType dtype) {
  int64_t numel = 1;
  for (const int64_t s : sizes) numel *= s;
  const size_t bytes = static_cast<size_t>(numel) * c10::elementSize(dtype);
#ifdef __linux__
  constexpr size_t kHugePage = size_t{2} << 20;
  constexpr size_t kHugeAbove = 8 * kHugePage;  // below this glibc usually recycles memory anyway
  if (bytes >= kHugeAbove) {
    // Over-allocate one huge page so that the used range starts on a 2 MiB boundary.
    const size_t length = (bytes + kHugePage - 1) / kHugePage * kHugePage + kHugePage;
    void* base = mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base != MAP_FAILED) {
      const uintptr_t start = (reinterpret_cast<uintptr_t>(base) + kHugePage - 1) & ~(uintptr_t{kHugePage} - 1);
      void* data = reinterpret_cast<void*>(start);
      madvise(data, length - (start - reinterpret_cast<uintptr_t>(base)), MADV_HUGEPAGE);  // a hint: may fail
      return at::from_blob(
          data, sizes, [base, length](void*) { munmap(base, length); }, at::TensorOptions().dtype(dtype));
    }
  }
#endif
  return at::empty(sizes, dtype);
}

}  // namespace geo3d
