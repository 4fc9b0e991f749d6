// cudasim: the CUDA execution model on the host, so that geo3d's own .cu kernels
// run (and are tested) on a machine without a GPU.
//
// A sim build compiles the unchanged kernel files with g++ and this directory first on
// the include path, so `#include <cuda_runtime_api.h>` lands here. What it provides:
//  - the CUDA qualifiers (__global__, __device__, __shared__, __launch_bounds__ ...);
//    `__shared__` variables become `static thread_local`: one copy per OS thread, and an
//    OS thread runs one block at a time, so each block sees its own shared memory;
//  - threadIdx / blockIdx / blockDim / gridDim of the running thread;
//  - every GPU thread of a block as a fiber (its own stack) on one OS thread. A thread runs
//    until it reaches a barrier (__syncthreads, __syncwarp, a shuffle or a vote), then the
//    scheduler runs another; a barrier releases its threads only when every thread it names
//    has arrived. Threads are picked in a random order (seeded: reproducible), so a thread
//    routinely runs far ahead of its warp: missing barriers show up as wrong results, which
//    lockstep hardware often hides. Divergent __syncthreads, shuffles naming exited or
//    absent lanes, overlapping warp masks and deadlocks are reported as launch errors;
//  - warp shuffles and votes over 32 lanes, atomics (real atomics: blocks may run on
//    several OS threads at once), dynamic shared memory (poisoned with 0xff bytes, guarded
//    against overruns), and the launch checks of a real device (block and grid limits, the
//    48 KiB dynamic shared-memory default, the opt-in limit of an H100, the
//    cudaFuncSetAttribute opt-in);
//  - the host runtime calls the launch code uses (cudaGetLastError, device attributes ...).
// Kernels are launched with GEO3D_LAUNCH(grid, block, smem, stream, kernel)(args...),
// which is `kernel<<<grid, block, smem, stream>>>(args...)` under nvcc (cuda_compat.h).
//
// Not modelled: timing, memory coalescing, bank conflicts, register pressure and the
// __launch_bounds__ value, real warp scheduling (lockstep execution), the memory model
// between blocks beyond atomics, and out-of-bounds global memory (device memory is host
// memory here).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

#define GEO3D_CUDASIM_ACTIVE 1

// ----------------------------------------------------------------------------- qualifiers
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static thread_local
#define __constant__ static
#define __managed__

// ----------------------------------------------------------------------------- types
struct uint3 {
  unsigned int x, y, z;
};
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevice = 101,
  cudaErrorIllegalAddress = 700,
  cudaErrorLaunchOutOfResources = 701,
  cudaErrorLaunchFailure = 719,
};
typedef cudaError_t cudaError;

struct CUstream_st;
typedef CUstream_st* cudaStream_t;

enum cudaDeviceAttr {
  cudaDevAttrMaxThreadsPerBlock = 1,
  cudaDevAttrMaxSharedMemoryPerBlock = 8,
  cudaDevAttrWarpSize = 10,
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};
enum cudaFuncAttribute {
  cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
};
enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};

constexpr int warpSize = 32;

namespace cudasim {

// ----------------------------------------------------------------------------- engine
// The GPU thread running on this OS thread (valid inside a kernel only).
struct ThreadView {
  uint3 thread_idx, block_idx;
  dim3 block_dim, grid_dim;
};
const ThreadView& current();

void syncthreads(const char* file, int line);
void syncwarp(const char* file, int line, unsigned mask = 0xffffffffu);
// One warp-wide exchange: every lane in `mask` deposits `bits`, then gets the bits of
// lane `src_of_lane` (a function of its own lane) after all have arrived.
enum ShuffleMode { kShflIdx, kShflUp, kShflDown, kShflXor };
uint64_t shuffle(const char* file, int line, unsigned mask, uint64_t bits, ShuffleMode mode, int arg, int width);
unsigned ballot(const char* file, int line, unsigned mask, bool pred);
unsigned active_mask();
void maybe_yield();  // an atomic: let other threads run between read-modify-writes
unsigned char* dynamic_shared();

struct LaunchConfig {
  dim3 grid, block;
  size_t smem;
  cudaStream_t stream;
  const void* kernel;  // identity of the kernel (its cudaFuncSetAttribute opt-in)
  const char* name;
};
// Runs `entry(ctx)` as every thread of every block; returns the launch's error.
cudaError_t run_grid(const LaunchConfig& cfg, void (*entry)(void*), void* ctx);
void set_last_error(cudaError_t err);
const char* last_error_detail();
cudaError_t func_set_max_dynamic_smem(const void* kernel, int bytes);

template <typename... P>
struct Launcher {
  LaunchConfig cfg;
  void (*kernel)(P...);
  template <typename... A>
  void operator()(A&&... a) const {
    // Arguments are converted and copied once, as a launch copies them to the device;
    // every thread then gets its own copy, as from parameter memory.
    struct Ctx {
      void (*kernel)(P...);
      std::tuple<std::decay_t<P>...> args;
    } ctx{kernel, std::tuple<std::decay_t<P>...>(std::forward<A>(a)...)};
    auto entry = [](void* c) {
      Ctx* x = static_cast<Ctx*>(c);
      auto args = x->args;
      std::apply(x->kernel, args);
    };
    set_last_error(run_grid(cfg, entry, &ctx));
  }
};

template <typename... P>
Launcher<P...> launcher(dim3 grid, dim3 block, size_t smem, cudaStream_t stream, void (*kernel)(P...),
                        const char* name) {
  return Launcher<P...>{{grid, block, smem, stream, reinterpret_cast<const void*>(kernel), name}, kernel};
}

template <typename T>
uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffles move up to 8 bytes");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <typename T>
T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}

}  // namespace cudasim

#define GEO3D_LAUNCH(grid, block, smem, stream, ...) \
  ::cudasim::launcher(grid, block, smem, stream, &__VA_ARGS__, #__VA_ARGS__)
#define GEO3D_DYNAMIC_SHARED(type, name) type* const name = reinterpret_cast<type*>(::cudasim::dynamic_shared())

// ----------------------------------------------------------------------------- built-ins
#define threadIdx (::cudasim::current().thread_idx)
#define blockIdx (::cudasim::current().block_idx)
#define blockDim (::cudasim::current().block_dim)
#define gridDim (::cudasim::current().grid_dim)

#define __syncthreads() ::cudasim::syncthreads(__FILE__, __LINE__)
#define __syncwarp(...) ::cudasim::SyncWarpAt{__FILE__, __LINE__}(__VA_ARGS__)
#define __shfl_sync(...) ::cudasim::shfl_sync_(__FILE__, __LINE__, ::cudasim::kShflIdx, __VA_ARGS__)
#define __shfl_up_sync(...) ::cudasim::shfl_sync_(__FILE__, __LINE__, ::cudasim::kShflUp, __VA_ARGS__)
#define __shfl_down_sync(...) ::cudasim::shfl_sync_(__FILE__, __LINE__, ::cudasim::kShflDown, __VA_ARGS__)
#define __shfl_xor_sync(...) ::cudasim::shfl_sync_(__FILE__, __LINE__, ::cudasim::kShflXor, __VA_ARGS__)
#define __ballot_sync(mask, pred) ::cudasim::ballot(__FILE__, __LINE__, mask, (pred) != 0)
#define __any_sync(mask, pred) (::cudasim::ballot(__FILE__, __LINE__, mask, (pred) != 0) != 0u)
#define __all_sync(mask, pred) (::cudasim::ballot(__FILE__, __LINE__, mask, (pred) != 0) == (mask))
#define __activemask() ::cudasim::active_mask()

namespace cudasim {
// __syncwarp() and __syncwarp(mask) with the call site (no empty-__VA_ARGS__ tricks).
struct SyncWarpAt {
  const char* file;
  int line;
  void operator()(unsigned mask = 0xffffffffu) const { syncwarp(file, line, mask); }
};
template <typename T>
T shfl_sync_(const char* file, int line, ShuffleMode mode, unsigned mask, T var, int arg, int width = warpSize) {
  return from_bits<T>(shuffle(file, line, mask, to_bits(var), mode, arg, width));
}
}  // namespace cudasim

inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
template <typename T>
inline T __ldg(const T* p) {
  return *p;
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }

// CUDA's device min/max overloads (unqualified calls in kernels).
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline long min(long a, long b) { return a < b ? a : b; }
inline long max(long a, long b) { return a > b ? a : b; }
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }

// ----------------------------------------------------------------------------- atomics
// Real atomics (blocks of a launch may run on several OS threads); each one is also a
// point where the scheduler may switch threads, so read-modify-write races interleave.
namespace cudasim {
template <typename T>
T atomic_rmw(T* addr, T val, int op) {
  maybe_yield();
  T old = __atomic_load_n(addr, __ATOMIC_SEQ_CST);
  for (;;) {
    T next = old;
    switch (op) {
      case 0: next = old + val; break;
      case 1: next = old < val ? val : old; break;
      case 2: next = val < old ? val : old; break;
      case 3: next = val; break;
      case 4: next = old - val; break;
    }
    if (__atomic_compare_exchange_n(addr, &old, next, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) return old;
  }
}
template <typename T>
T atomic_rmw_float(T* addr, T val) {
  using U = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  maybe_yield();
  U* a = reinterpret_cast<U*>(addr);
  U old = __atomic_load_n(a, __ATOMIC_SEQ_CST);
  for (;;) {
    T o;
    std::memcpy(&o, &old, sizeof(T));
    const T n = o + val;
    U nb;
    std::memcpy(&nb, &n, sizeof(T));
    if (__atomic_compare_exchange_n(a, &old, nb, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) return o;
  }
}
}  // namespace cudasim

inline int atomicAdd(int* a, int v) { return cudasim::atomic_rmw(a, v, 0); }
inline unsigned atomicAdd(unsigned* a, unsigned v) { return cudasim::atomic_rmw(a, v, 0); }
inline unsigned long long atomicAdd(unsigned long long* a, unsigned long long v) {
  return cudasim::atomic_rmw(a, v, 0);
}
inline float atomicAdd(float* a, float v) { return cudasim::atomic_rmw_float(a, v); }
inline double atomicAdd(double* a, double v) { return cudasim::atomic_rmw_float(a, v); }
inline int atomicSub(int* a, int v) { return cudasim::atomic_rmw(a, v, 4); }
inline unsigned atomicSub(unsigned* a, unsigned v) { return cudasim::atomic_rmw(a, v, 4); }
inline int atomicMax(int* a, int v) { return cudasim::atomic_rmw(a, v, 1); }
inline unsigned atomicMax(unsigned* a, unsigned v) { return cudasim::atomic_rmw(a, v, 1); }
inline long long atomicMax(long long* a, long long v) { return cudasim::atomic_rmw(a, v, 1); }
inline int atomicMin(int* a, int v) { return cudasim::atomic_rmw(a, v, 2); }
inline unsigned atomicMin(unsigned* a, unsigned v) { return cudasim::atomic_rmw(a, v, 2); }
inline long long atomicMin(long long* a, long long v) { return cudasim::atomic_rmw(a, v, 2); }
inline int atomicExch(int* a, int v) { return cudasim::atomic_rmw(a, v, 3); }
inline unsigned atomicExch(unsigned* a, unsigned v) { return cudasim::atomic_rmw(a, v, 3); }
template <typename T>
inline T atomicCAS(T* a, T compare, T val) {
  static_assert(std::is_integral<T>::value, "atomicCAS on integers");
  cudasim::maybe_yield();
  __atomic_compare_exchange_n(a, &compare, val, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
  return compare;  // the old value either way
}

// ----------------------------------------------------------------------------- host runtime
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorString(cudaError_t err);
const char* cudaGetErrorName(cudaError_t err);
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDeviceCount(int* count);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaMalloc(void** ptr, size_t bytes);
cudaError_t cudaFree(void* ptr);
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream = nullptr);
cudaError_t cudaMemset(void* ptr, int value, size_t bytes);
cudaError_t cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t stream = nullptr);

template <typename Kernel>
cudaError_t cudaFuncSetAttribute(Kernel* kernel, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  return cudasim::func_set_max_dynamic_smem(reinterpret_cast<const void*>(kernel), value);
}
