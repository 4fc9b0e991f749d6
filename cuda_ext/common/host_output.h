// Large host-side outputs (edge lists of millions of pairs) backed by transparent huge pages.
//
// An op like radius_graph writes its output once, front to back, into memory that
// was never touched. For outputs of tens to hundreds of MiB glibc serves every call
// with a fresh mmap, and faulting that in 4 KiB page by page costs about 1 us a page
// on a VM: for a 100k-point graph (109 MiB) that is more than half the op's time.
// Asking for 2 MiB pages (madvise, the usual kernel THP setting) cuts the number
// of faults 512-fold. The kernel still zero-fills every fresh page (~10% of the op at
// 100k points), so the last few freed mappings are kept and handed to the next call
// of a similar size, as glibc does for small blocks: repeated calls (MD, training)
// then touch no new memory at all. Small outputs, non-Linux systems, or a kernel that
// refuses all fall back to at::empty. The tensor is an ordinary CPU tensor (not
// resizable, as any from_blob tensor).
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <cstdint>
#include <mutex>

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace geo3d {

#ifdef __linux__
namespace host_output_detail {

constexpr size_t kHugePage = size_t{2} << 20;
constexpr size_t kHugeAbove = 8 * kHugePage;      // below this glibc usually recycles memory anyway
constexpr size_t kKeepAtMost = size_t{1} << 30;   // freed mappings larger than this go back at once

struct Mapping {
  void* base = nullptr;
  size_t length = 0;
};

// A few freed mappings waiting for reuse (a graph call returns up to two large outputs).
struct Cache {
  std::mutex mutex;
  std::array<Mapping, 4> slots;
};

inline Cache& cache() {
  static Cache* c = new Cache();  // never destroyed: deleters may run during static destruction
  return *c;
}

inline Mapping take(size_t length) {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  for (Mapping& m : c.slots) {
    if (m.base != nullptr && m.length >= length && m.length <= 2 * length) {
      Mapping out = m;
      m = Mapping{};
      return out;
    }
  }
  return Mapping{};
}

inline void give_back(Mapping m) {
  if (m.length <= kKeepAtMost) {
    Cache& c = cache();
    std::lock_guard<std::mutex> lock(c.mutex);
    for (Mapping& slot : c.slots) {
      if (slot.base == nullptr) {
        slot = m;
        return;
      }
    }
  }
  munmap(m.base, m.length);
}

}  // namespace host_output_detail
#endif

inline at::Tensor empty_host_output(at::IntArrayRef sizes, at::ScalarType dtype) {
  int64_t numel = 1;
  for (const int64_t s : sizes) numel *= s;
  const size_t bytes = static_cast<size_t>(numel) * c10::elementSize(dtype);
#ifdef __linux__
  namespace d = host_output_detail;
  if (bytes >= d::kHugeAbove) {
    // One extra huge page so that the used range can start on a 2 MiB boundary.
    const size_t length = (bytes + d::kHugePage - 1) / d::kHugePage * d::kHugePage + d::kHugePage;
    d::Mapping m = d::take(length);
    if (m.base == nullptr) {
      void* base = mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (base != MAP_FAILED) {
        m = d::Mapping{base, length};
        const uintptr_t start = (reinterpret_cast<uintptr_t>(base) + d::kHugePage - 1) & ~(uintptr_t{d::kHugePage} - 1);
        madvise(reinterpret_cast<void*>(start), length - (start - reinterpret_cast<uintptr_t>(base)),
                MADV_HUGEPAGE);  // a hint: may fail
      }
    }
    if (m.base != nullptr) {
      const uintptr_t start =
          (reinterpret_cast<uintptr_t>(m.base) + d::kHugePage - 1) & ~(uintptr_t{d::kHugePage} - 1);
      return at::from_blob(
          reinterpret_cast<void*>(start), sizes, [m](void*) { d::give_back(m); }, at::TensorOptions().dtype(dtype));
    }
  }
#endif
  return at::empty(sizes, dtype);
}

}  // namespace geo3d
