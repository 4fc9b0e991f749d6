// cudasim's host-side controls: the simulated device and how blocks are scheduled.
#pragma once
#include <cstddef>
#include <cstdint>

namespace cudasim {

// Random: threads (and blocks) picked in a seeded random order; Forward / Reverse: in
// index order or its reverse (each a valid schedule of a real GPU).
enum class Policy { Random, Forward, Reverse };

struct Settings {
  int workers = 1;                  // OS threads that run blocks concurrently
  uint64_t seed = 0;                // of the Random policy (results must not depend on it)
  Policy policy = Policy::Random;
  size_t smem_optin = 232448;       // an H100's opt-in dynamic shared memory per block (227 KiB)
  int multiprocessors = 132;        // an H100 SXM's
  size_t stack_bytes = 256 * 1024;  // of each GPU thread's fiber
};

struct Stats {
  uint64_t launches = 0, blocks = 0, threads = 0, barriers = 0, switches = 0;
};

Settings settings();
void configure(const Settings& s);  // also forgets every kernel's shared-memory opt-in
Stats stats();

}  // namespace cudasim
