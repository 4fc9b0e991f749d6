// cudasim engine: blocks of fibers, barriers, warp exchanges, launch checks (see
// cuda_runtime_api.h for what is and is not modelled).
//
// A launch hands its blocks to `workers` OS threads (1 by default); each runs one block
// at a time. A block's GPU threads are fibers with their own stacks on that OS thread; a
// scheduler loop switches to the next runnable fiber (run queue in a seeded random or a
// fixed order) and the fiber switches back when it blocks at a barrier, yields at an
// atomic, exits or faults. Faults (misuse of barriers and shuffles, deadlock, shared
// memory overruns) abandon the block and fail the launch with the first fault's message.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <exception>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "cuda_runtime_api.h"
#include "cudasim.h"

// CUDASIM_FAST_SWITCH: the hand-written x86-64 switch; elsewhere (or with
// -DCUDASIM_UCONTEXT, to test that path on x86-64) POSIX ucontext, slower but portable.
#if defined(__x86_64__) && !defined(CUDASIM_UCONTEXT)
#define CUDASIM_FAST_SWITCH 1
#endif

#if defined(CUDASIM_FAST_SWITCH)
// cudasim_switch(&save, next): push the callee-saved registers and the FPU control words
// on this stack, store the stack pointer in *save, load `next` and pop the same from it.
// cudasim_fiber_start: a new fiber's first return address; calls r12(rbx), never returns.
extern "C" void cudasim_switch(void** save, void* next);
extern "C" void cudasim_fiber_start();
#else
#include <ucontext.h>
#endif

namespace cudasim {
namespace {

// ----------------------------------------------------------------------------- settings
Settings g_settings;
std::mutex g_mutex;  // settings, kernel attributes, statistics
std::map<const void*, int> g_max_dynamic_smem;
Stats g_stats;
std::atomic<uint64_t> g_launch_counter{0};

constexpr size_t kDefaultDynamicSmem = 48 * 1024;
constexpr size_t kCanaryBytes = 256;
constexpr unsigned char kCanary = 0xa5;
constexpr unsigned char kPoison = 0xff;  // NaN in every float width, -1 in every integer

// ----------------------------------------------------------------------------- context switch
#if defined(CUDASIM_FAST_SWITCH)
asm(R"(
  .text
  .globl cudasim_switch
  .hidden cudasim_switch
  .type cudasim_switch, @function
cudasim_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size cudasim_switch, .-cudasim_switch

  .globl cudasim_fiber_start
  .hidden cudasim_fiber_start
  .type cudasim_fiber_start, @function
cudasim_fiber_start:
  movq %rbx, %rdi
  callq *%r12
  ud2
  .size cudasim_fiber_start, .-cudasim_fiber_start
)");
#endif

// ----------------------------------------------------------------------------- structures
enum class St : uint8_t { Runnable, WaitBlock, WaitWarp, Done, Faulted };

struct Fiber;
struct Block;
struct Worker;

struct Fiber {
  ThreadView view;
  int linear = 0, lane = 0, warp = 0;
  St state = St::Runnable;
  void* sp = nullptr;
#if !defined(CUDASIM_FAST_SWITCH)
  ucontext_t uc;
#endif
  Block* block = nullptr;
  unsigned char* stack = nullptr;
};

// One open warp barrier: the lanes named by `mask` that have arrived.
struct WarpEpisode {
  unsigned mask = 0, arrived = 0;
  int kind = 0;  // 0 __syncwarp, 1 exchange (shuffle / vote)
  const char* file = nullptr;
  int line = 0;
};

struct WarpState {
  unsigned exists = 0, exited = 0;
  std::vector<WarpEpisode> open;
  uint64_t slot[32] = {};
};

struct Block {
  Worker* worker = nullptr;
  uint3 idx{0, 0, 0};
  std::vector<Fiber> fibers;
  std::vector<WarpState> warps;
  int live = 0, bar_arrived = 0;
  const char* bar_file = nullptr;
  int bar_line = 0;
  int bar_first = 0;
  std::deque<int> runq;
  std::mt19937_64 rng;
  Policy policy = Policy::Random;
  unsigned char* dyn = nullptr;
  std::string fault;
  uint64_t barriers = 0, switches = 0;
};

struct StackPool {
  size_t bytes = 0;
  std::vector<unsigned char*> stacks;  // each: a guard page, then `bytes` of stack
  unsigned char* get(size_t i, size_t want) {
    if (want != bytes) release();
    bytes = want;
    while (stacks.size() <= i) {
      const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
      void* m = mmap(nullptr, bytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1,
                     0);
      if (m == MAP_FAILED) return nullptr;
      mprotect(m, page, PROT_NONE);  // a fiber that overflows its stack faults instead of corrupting
      stacks.push_back(static_cast<unsigned char*>(m) + page);
    }
    return stacks[i];
  }
  void release() {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    for (unsigned char* s : stacks) munmap(s - page, bytes + page);
    stacks.clear();
  }
  ~StackPool() { release(); }
};

struct Worker {
  void* sched_sp = nullptr;
#if !defined(CUDASIM_FAST_SWITCH)
  ucontext_t sched_uc;
#endif
  Fiber* cur = nullptr;
  Block* block = nullptr;
  void (*entry)(void*) = nullptr;
  void* ctx = nullptr;
  std::vector<unsigned char> dyn;  // dynamic shared memory (+ canary)
};

thread_local Worker* tl_worker = nullptr;
thread_local StackPool tl_stacks;  // reused by the launches of this OS thread
thread_local cudaError_t tl_last_error = cudaSuccess;
thread_local std::string tl_detail;

// ----------------------------------------------------------------------------- fibers
Fiber& self() {
  if (tl_worker == nullptr || tl_worker->cur == nullptr) {
    std::fprintf(stderr, "cudasim: a device built-in was used outside a kernel\n");
    std::abort();
  }
  return *tl_worker->cur;
}

void to_scheduler(Fiber& f) {
  Worker* w = f.block->worker;
  f.block->switches++;
#if defined(CUDASIM_FAST_SWITCH)
  cudasim_switch(&f.sp, w->sched_sp);
#else
  swapcontext(&f.uc, &w->sched_uc);
#endif
}

void run_fiber(Worker* w, Fiber& f) {
  w->cur = &f;
#if defined(CUDASIM_FAST_SWITCH)
  cudasim_switch(&w->sched_sp, f.sp);
#else
  swapcontext(&w->sched_uc, &f.uc);
#endif
  w->cur = nullptr;
}

std::string where(const Fiber& f) {
  return "thread (" + std::to_string(f.view.thread_idx.x) + "," + std::to_string(f.view.thread_idx.y) + "," +
         std::to_string(f.view.thread_idx.z) + ") of block (" + std::to_string(f.view.block_idx.x) + "," +
         std::to_string(f.view.block_idx.y) + "," + std::to_string(f.view.block_idx.z) + ")";
}

std::string site(const char* file, int line) {
  if (file == nullptr) return "?";
  const char* base = std::strrchr(file, '/');
  return std::string(base ? base + 1 : file) + ":" + std::to_string(line);
}

// The calling fiber stops for good; the block is abandoned with this message.
[[noreturn]] void fault(Fiber& f, const std::string& msg) {
  if (f.block->fault.empty()) f.block->fault = msg + " [" + where(f) + "]";
  f.state = St::Faulted;
  to_scheduler(f);
  std::abort();  // never resumed
}

// Puts the fibers `ids` on the run queue in the block's scheduling order.
void make_runnable(Block& b, std::vector<int>& ids) {
  if (b.policy == Policy::Random) std::shuffle(ids.begin(), ids.end(), b.rng);
  if (b.policy == Policy::Reverse) std::reverse(ids.begin(), ids.end());
  for (int id : ids) {
    b.fibers[id].state = St::Runnable;
    b.runq.push_back(id);
  }
}

void release_block_barrier(Block& b) {
  if (b.bar_arrived == 0 || b.bar_arrived < b.live) return;
  std::vector<int> ids;
  for (Fiber& f : b.fibers)
    if (f.state == St::WaitBlock) ids.push_back(f.linear);
  b.bar_arrived = 0;
  b.bar_file = nullptr;
  b.barriers++;
  make_runnable(b, ids);
}

void fiber_exit(Fiber& f) {
  Block& b = *f.block;
  f.state = St::Done;
  b.live--;
  WarpState& w = b.warps[f.warp];
  const unsigned bit = 1u << f.lane;
  w.exited |= bit;
  for (const WarpEpisode& e : w.open)
    if (e.mask & bit)
      fault(f, "lane " + std::to_string(f.lane) + " exited while other lanes wait for it at the warp barrier of " +
                   site(e.file, e.line));
  release_block_barrier(b);
  to_scheduler(f);
  std::abort();
}

// A fiber's first (and only) frame: the kernel, then the exit.
void fiber_main(void* p) {
  Fiber* f = static_cast<Fiber*>(p);
  Worker* w = f->block->worker;
  try {
    w->entry(w->ctx);
  } catch (const std::exception& e) {
    fault(*f, std::string("C++ exception in a kernel: ") + e.what());
  } catch (...) {
    fault(*f, "C++ exception in a kernel");
  }
  fiber_exit(*f);
}

#if !defined(CUDASIM_FAST_SWITCH)
void fiber_trampoline(unsigned hi, unsigned lo) {
  fiber_main(reinterpret_cast<Fiber*>((static_cast<uintptr_t>(hi) << 32) | lo));
}
#endif

bool prepare_stack(Fiber& f, size_t i, size_t bytes) {
  unsigned char* base = tl_stacks.get(i, bytes);
  if (base == nullptr) return false;
  f.stack = base;
#if defined(CUDASIM_FAST_SWITCH)
  // Initial frame, popped by cudasim_switch: control words, r15 .. rbp, return address.
  // cudasim_fiber_start then runs with rsp 16-byte aligned, as the call in it needs.
  uintptr_t top = (reinterpret_cast<uintptr_t>(base) + bytes) & ~uintptr_t(15);
  uint64_t* sp = reinterpret_cast<uint64_t*>(top);
  *--sp = reinterpret_cast<uint64_t>(&cudasim_fiber_start);
  *--sp = 0;                                               // rbp
  *--sp = reinterpret_cast<uint64_t>(&f);                  // rbx: the fiber
  *--sp = reinterpret_cast<uint64_t>(&fiber_main);  // r12: the entry
  *--sp = 0;                                               // r13
  *--sp = 0;                                               // r14
  *--sp = 0;                                               // r15
  uint32_t mxcsr = 0;
  uint16_t fpucw = 0;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpucw));
  --sp;
  std::memcpy(reinterpret_cast<unsigned char*>(sp), &mxcsr, 4);
  std::memcpy(reinterpret_cast<unsigned char*>(sp) + 4, &fpucw, 2);
  f.sp = sp;
#else
  getcontext(&f.uc);
  f.uc.uc_stack.ss_sp = base;
  f.uc.uc_stack.ss_size = bytes;
  f.uc.uc_link = nullptr;
  const uintptr_t p = reinterpret_cast<uintptr_t>(&f);
  makecontext(&f.uc, reinterpret_cast<void (*)()>(&fiber_trampoline), 2, static_cast<unsigned>(p >> 32),
              static_cast<unsigned>(p & 0xffffffffu));
#endif
  return true;
}

// ----------------------------------------------------------------------------- warp barriers
void warp_barrier(Fiber& f, const char* file, int line, unsigned mask, int kind) {
  Block& b = *f.block;
  WarpState& w = b.warps[f.warp];
  const unsigned bit = 1u << f.lane;
  const char* what = kind == 0 ? "__syncwarp" : "a warp shuffle or vote";
  if (!(mask & bit))
    fault(f, std::string(what) + " at " + site(file, line) + " with a mask that does not name the calling lane");
  if (mask & ~w.exists)
    fault(f, std::string(what) + " at " + site(file, line) + " names lanes that do not exist (a block of " +
                 std::to_string(b.fibers.size()) + " threads)");
  if (mask & w.exited)
    fault(f, std::string(what) + " at " + site(file, line) + " names lanes that have exited");
  WarpEpisode* ep = nullptr;
  for (WarpEpisode& e : w.open) {
    if (e.mask == mask) {
      ep = &e;
    } else if (e.mask & mask) {
      fault(f, std::string(what) + " at " + site(file, line) + " with mask " + std::to_string(mask) +
                   " overlaps the open barrier of " + site(e.file, e.line) + " with mask " + std::to_string(e.mask));
    }
  }
  if (ep == nullptr) {
    w.open.push_back(WarpEpisode{mask, 0, kind, file, line});
    ep = &w.open.back();
  } else if (ep->kind != kind) {
    fault(f, std::string(what) + " at " + site(file, line) + " meets lanes waiting at " + site(ep->file, ep->line) +
                 " for another kind of warp operation");
  }
  ep->arrived |= bit;
  f.state = St::WaitWarp;
  if (ep->arrived == ep->mask) {
    std::vector<int> ids;
    for (int l = 0; l < 32; ++l)
      if (mask & (1u << l)) ids.push_back(f.warp * 32 + l);
    w.open.erase(w.open.begin() + (ep - w.open.data()));
    b.barriers++;
    make_runnable(b, ids);
  }
  to_scheduler(f);
}

// ----------------------------------------------------------------------------- blocks
std::string describe_deadlock(const Block& b) {
  std::string msg = "deadlock: no thread can run;";
  int shown = 0;
  for (const Fiber& f : b.fibers) {
    if (f.state != St::WaitBlock && f.state != St::WaitWarp) continue;
    if (shown++ == 4) {
      msg += " ...";
      break;
    }
    msg += " " + where(f) + (f.state == St::WaitBlock ? " waits at __syncthreads (" + site(b.bar_file, b.bar_line) + ")"
                                                        : " waits at a warp barrier") + ";";
  }
  if (b.bar_arrived > 0)
    msg += " " + std::to_string(b.bar_arrived) + " of " + std::to_string(b.live) +
           " live threads reached __syncthreads";
  return msg;
}

// Runs one block to completion; returns "" or its fault.
std::string run_block(Worker* w, const LaunchConfig& cfg, uint3 idx, uint64_t seed, const Settings& s) {
  const unsigned nthreads = cfg.block.x * cfg.block.y * cfg.block.z;
  Block b;
  b.worker = w;
  b.idx = idx;
  b.policy = s.policy;
  b.rng.seed(seed);
  b.fibers.resize(nthreads);
  b.warps.resize((nthreads + 31) / 32);
  b.live = static_cast<int>(nthreads);
  // Dynamic shared memory: poisoned, a canary behind it.
  w->dyn.assign(cfg.smem + kCanaryBytes + 64, kPoison);
  unsigned char* dyn = w->dyn.data();
  dyn += (64 - reinterpret_cast<uintptr_t>(dyn) % 64) % 64;
  std::memset(dyn + cfg.smem, kCanary, kCanaryBytes);
  b.dyn = dyn;
  w->block = &b;
  std::vector<int> ids(nthreads);
  for (unsigned t = 0; t < nthreads; ++t) {
    Fiber& f = b.fibers[t];
    f.block = &b;
    f.linear = static_cast<int>(t);
    f.lane = static_cast<int>(t % 32);
    f.warp = static_cast<int>(t / 32);
    f.view.thread_idx = {t % cfg.block.x, (t / cfg.block.x) % cfg.block.y, t / (cfg.block.x * cfg.block.y)};
    f.view.block_idx = idx;
    f.view.block_dim = cfg.block;
    f.view.grid_dim = cfg.grid;
    b.warps[f.warp].exists |= 1u << f.lane;
    if (!prepare_stack(f, t, s.stack_bytes)) return "could not map fiber stacks";
    ids[t] = static_cast<int>(t);
  }
  make_runnable(b, ids);
  while (!b.runq.empty() && b.fault.empty()) {
    const int id = b.runq.front();
    b.runq.pop_front();
    if (b.fibers[id].state != St::Runnable) continue;
    run_fiber(w, b.fibers[id]);
  }
  w->block = nullptr;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    g_stats.blocks++;
    g_stats.threads += nthreads;
    g_stats.barriers += b.barriers;
    g_stats.switches += b.switches;
  }
  if (!b.fault.empty()) return b.fault;
  if (b.live > 0) return describe_deadlock(b);
  for (size_t i = 0; i < kCanaryBytes; ++i)
    if (dyn[cfg.smem + i] != kCanary)
      return "block (" + std::to_string(idx.x) + "," + std::to_string(idx.y) + "," + std::to_string(idx.z) +
             ") wrote past its " + std::to_string(cfg.smem) + " bytes of dynamic shared memory";
  return "";
}

std::string check_config(const LaunchConfig& c, const Settings& s) {
  const uint64_t threads = uint64_t(c.block.x) * c.block.y * c.block.z;
  if (threads == 0 || threads > 1024 || c.block.x > 1024 || c.block.y > 1024 || c.block.z > 64)
    return "block (" + std::to_string(c.block.x) + "," + std::to_string(c.block.y) + "," +
           std::to_string(c.block.z) + ") is outside the device's limits (1 to 1024 threads)";
  if (c.grid.x == 0 || c.grid.y == 0 || c.grid.z == 0 || c.grid.x > 2147483647u || c.grid.y > 65535 ||
      c.grid.z > 65535)
    return "grid (" + std::to_string(c.grid.x) + "," + std::to_string(c.grid.y) + "," + std::to_string(c.grid.z) +
           ") is outside the device's limits";
  size_t allowed = kDefaultDynamicSmem;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    auto it = g_max_dynamic_smem.find(c.kernel);
    if (it != g_max_dynamic_smem.end()) allowed = std::max<size_t>(allowed, static_cast<size_t>(it->second));
  }
  allowed = std::min(allowed, s.smem_optin);
  if (c.smem > allowed)
    return std::to_string(c.smem) + " bytes of dynamic shared memory, the kernel may use " +
           std::to_string(allowed) + " (48 KiB unless cudaFuncSetAttribute raised it; device limit " +
           std::to_string(s.smem_optin) + ")";
  return "";
}

}  // namespace

// ----------------------------------------------------------------------------- device side
const ThreadView& current() { return self().view; }

void syncthreads(const char* file, int line) {
  Fiber& f = self();
  Block& b = *f.block;
  if (b.bar_arrived == 0) {
    b.bar_file = file;
    b.bar_line = line;
    b.bar_first = f.linear;
  } else if (b.bar_file != file || b.bar_line != line) {
    fault(f, "divergent __syncthreads: this thread is at " + site(file, line) + ", thread " +
                 std::to_string(b.bar_first) + " of the block waits at " + site(b.bar_file, b.bar_line));
  }
  b.bar_arrived++;
  f.state = St::WaitBlock;
  release_block_barrier(b);
  to_scheduler(f);
}

void syncwarp(const char* file, int line, unsigned mask) { warp_barrier(self(), file, line, mask, 0); }

uint64_t shuffle(const char* file, int line, unsigned mask, uint64_t bits, ShuffleMode mode, int arg, int width) {
  Fiber& f = self();
  if (width <= 0 || width > 32 || (width & (width - 1)) != 0)
    fault(f, "warp shuffle at " + site(file, line) + " with width " + std::to_string(width) +
                 " (a power of two up to 32)");
  WarpState& w = f.block->warps[f.warp];
  w.slot[f.lane] = bits;
  warp_barrier(f, file, line, mask, 1);
  const int seg = f.lane / width * width, in = f.lane % width;
  int src = f.lane;
  switch (mode) {
    case kShflIdx: src = seg + ((arg % width) + width) % width; break;
    case kShflUp: src = in >= arg ? f.lane - arg : f.lane; break;
    case kShflDown: src = in + arg < width ? f.lane + arg : f.lane; break;
    case kShflXor: src = (f.lane ^ arg) < seg + width ? (f.lane ^ arg) : f.lane; break;
  }
  if (!(mask & (1u << src)))
    fault(f, "warp shuffle at " + site(file, line) + ": lane " + std::to_string(f.lane) + " reads lane " +
                 std::to_string(src) + ", which is not in the mask (its value is undefined)");
  const uint64_t out = w.slot[src];
  warp_barrier(f, file, line, mask, 1);  // nobody overwrites a slot before every lane has read
  return out;
}

unsigned ballot(const char* file, int line, unsigned mask, bool pred) {
  Fiber& f = self();
  WarpState& w = f.block->warps[f.warp];
  w.slot[f.lane] = pred ? 1 : 0;
  warp_barrier(f, file, line, mask, 1);
  unsigned out = 0;
  for (int l = 0; l < 32; ++l)
    if ((mask & (1u << l)) && w.slot[l]) out |= 1u << l;
  warp_barrier(f, file, line, mask, 1);
  return out;
}

unsigned active_mask() {
  Fiber& f = self();
  const WarpState& w = f.block->warps[f.warp];
  return w.exists & ~w.exited;
}

void maybe_yield() {
  if (tl_worker == nullptr || tl_worker->cur == nullptr) return;
  Fiber& f = *tl_worker->cur;
  Block& b = *f.block;
  if (b.policy != Policy::Random || (b.rng() & 3) != 0) return;  // a switch at one atomic in four
  b.runq.push_back(f.linear);
  to_scheduler(f);
}

unsigned char* dynamic_shared() { return self().block->dyn; }

// ----------------------------------------------------------------------------- launches
cudaError_t run_grid(const LaunchConfig& cfg, void (*entry)(void*), void* ctx) {
  Settings s;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    s = g_settings;
  }
  const std::string bad = check_config(cfg, s);
  if (!bad.empty()) {
    tl_detail = std::string(cfg.name) + ": " + bad;
    return cfg.smem > 0 && bad.find("shared memory") != std::string::npos ? cudaErrorInvalidValue
                                                                           : cudaErrorInvalidConfiguration;
  }
  const uint64_t launch = g_launch_counter++;
  const uint64_t nblocks = uint64_t(cfg.grid.x) * cfg.grid.y * cfg.grid.z;
  std::vector<uint64_t> order(nblocks);
  for (uint64_t i = 0; i < nblocks; ++i) order[i] = i;
  std::mt19937_64 rng(s.seed * 0x9e3779b97f4a7c15ull + launch);
  if (s.policy == Policy::Random) std::shuffle(order.begin(), order.end(), rng);
  if (s.policy == Policy::Reverse) std::reverse(order.begin(), order.end());
  std::atomic<uint64_t> next{0};
  std::mutex fault_mutex;
  std::string first_fault;
  auto work = [&]() {
    Worker w;
    w.entry = entry;
    w.ctx = ctx;
    Worker* saved = tl_worker;
    tl_worker = &w;
    for (;;) {
      const uint64_t k = next++;
      if (k >= nblocks) break;
      {
        std::lock_guard<std::mutex> lock(fault_mutex);
        if (!first_fault.empty()) break;
      }
      const uint64_t i = order[k];
      const uint3 idx{static_cast<unsigned>(i % cfg.grid.x), static_cast<unsigned>(i / cfg.grid.x % cfg.grid.y),
                      static_cast<unsigned>(i / (uint64_t(cfg.grid.x) * cfg.grid.y))};
      const std::string f = run_block(&w, cfg, idx, s.seed * 0x2545f4914f6cdd1dull + launch * 1000003ull + i, s);
      if (!f.empty()) {
        std::lock_guard<std::mutex> lock(fault_mutex);
        if (first_fault.empty()) first_fault = f;
      }
    }
    tl_worker = saved;
  };
  const int workers = static_cast<int>(std::min<uint64_t>(std::max(1, s.workers), nblocks));
  if (workers <= 1) {
    work();
  } else {
    std::vector<std::thread> pool;
    for (int t = 0; t < workers; ++t) pool.emplace_back(work);
    for (std::thread& t : pool) t.join();
  }
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    g_stats.launches++;
  }
  if (!first_fault.empty()) {
    tl_detail = std::string(cfg.name) + ": " + first_fault;
    return cudaErrorLaunchFailure;
  }
  return cudaSuccess;
}

void set_last_error(cudaError_t err) {
  if (err != cudaSuccess && tl_last_error == cudaSuccess) tl_last_error = err;
}

const char* last_error_detail() { return tl_detail.c_str(); }

cudaError_t func_set_max_dynamic_smem(const void* kernel, int bytes) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (bytes < 0 || static_cast<size_t>(bytes) > g_settings.smem_optin) {
    tl_detail = "cudaFuncSetAttribute: " + std::to_string(bytes) + " bytes exceeds the device's opt-in limit " +
                std::to_string(g_settings.smem_optin);
    return cudaErrorInvalidValue;
  }
  g_max_dynamic_smem[kernel] = bytes;
  return cudaSuccess;
}

Settings settings() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return g_settings;
}

void configure(const Settings& s) {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_settings = s;
  g_max_dynamic_smem.clear();  // a new device: kernels opt in again
}

Stats stats() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return g_stats;
}

}  // namespace cudasim

// ----------------------------------------------------------------------------- host runtime
cudaError_t cudaGetLastError() {
  const cudaError_t e = cudasim::tl_last_error;
  cudasim::tl_last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() { return cudasim::tl_last_error; }

const char* cudaGetErrorName(cudaError_t err) {
  switch (err) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorLaunchOutOfResources: return "cudaErrorLaunchOutOfResources";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
  }
  return "cudaErrorUnknown";
}
const char* cudaGetErrorString(cudaError_t err) {
  switch (err) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
  }
  return "unknown error";
}

cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : cudaErrorInvalidDevice; }
cudaError_t cudaGetDeviceCount(int* count) {
  *count = 1;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (device != 0) return cudaErrorInvalidDevice;
  const cudasim::Settings s = cudasim::settings();
  switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = 48 * 1024; return cudaSuccess;
    case cudaDevAttrWarpSize: *value = 32; return cudaSuccess;
    case cudaDevAttrMultiProcessorCount: *value = s.multiprocessors; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = static_cast<int>(s.smem_optin); return cudaSuccess;
  }
  return cudaErrorInvalidValue;
}
cudaError_t cudaDeviceSynchronize() { return cudasim::tl_last_error; }
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudasim::tl_last_error; }
cudaError_t cudaMalloc(void** ptr, size_t bytes) {
  *ptr = std::malloc(bytes == 0 ? 1 : bytes);
  return *ptr ? cudaSuccess : cudaErrorMemoryAllocation;
}
cudaError_t cudaFree(void* ptr) {
  std::free(ptr);
  return cudaSuccess;
}
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind) {
  if (bytes) std::memmove(dst, src, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t) {
  return cudaMemcpy(dst, src, bytes, kind);
}
cudaError_t cudaMemset(void* ptr, int value, size_t bytes) {
  if (bytes) std::memset(ptr, value, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t) { return cudaMemset(ptr, value, bytes); }
