// geo3d._cudasim: geo3d's CUDA kernels and their launch code, built for the host simulator.
// Registers the bindings of ../*_cuda.cpp as torch.ops.geo3d_cudasim.* (CPU tensors stand
// in for device memory; same schemas as torch.ops.geo3d), and gives Python the
// simulator's settings, statistics and self-tests.
#include <torch/extension.h>

#include <string>

#include "common/op_schemas.h"
#include "c10/cuda/CUDAException.h"
#include "cudasim.h"
#include "selftest.h"

TORCH_LIBRARY(geo3d_cudasim, m) { geo3d::define_ops(m); }

namespace {

cudasim::Policy policy_of(const std::string& name) {
  if (name == "random") return cudasim::Policy::Random;
  if (name == "forward") return cudasim::Policy::Forward;
  if (name == "reverse") return cudasim::Policy::Reverse;
  TORCH_CHECK(false, "cudasim: schedule must be 'random', 'forward' or 'reverse', got '", name, "'");
}

const char* policy_name(cudasim::Policy p) {
  switch (p) {
    case cudasim::Policy::Random: return "random";
    case cudasim::Policy::Forward: return "forward";
    case cudasim::Policy::Reverse: return "reverse";
  }
  return "?";
}

void check(const at::Tensor& t, at::ScalarType dtype, const char* name) {
  TORCH_CHECK(t.is_cpu() && t.is_contiguous() && t.scalar_type() == dtype, "cudasim self-test: '", name,
              "' must be a contiguous CPU ", dtype, " tensor");
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "geo3d's CUDA kernels on the host simulator (cuda_ext/cudasim)";
  m.def(
      "configure",
      [](int workers, uint64_t seed, const std::string& schedule, int64_t smem_optin, int64_t stack_kib) {
        TORCH_CHECK(workers >= 1, "cudasim: workers must be >= 1, got ", workers);
        TORCH_CHECK(smem_optin >= 48 * 1024, "cudasim: smem_optin must be >= 49152 bytes, got ", smem_optin);
        TORCH_CHECK(stack_kib >= 16, "cudasim: stack_kib must be >= 16, got ", stack_kib);
        cudasim::Settings s;
        s.workers = workers;
        s.seed = seed;
        s.policy = policy_of(schedule);
        s.smem_optin = static_cast<size_t>(smem_optin);
        s.stack_bytes = static_cast<size_t>(stack_kib) * 1024;
        cudasim::configure(s);
      },
      py::arg("workers") = 1, py::arg("seed") = 0, py::arg("schedule") = "random",
      py::arg("smem_optin") = 232448, py::arg("stack_kib") = 256,
      "Set the simulated device: OS threads running blocks, the scheduling seed and order, the "
      "opt-in shared-memory limit per block (bytes), each GPU thread's stack (KiB).");
  m.def("settings", []() {
    const cudasim::Settings s = cudasim::settings();
    py::dict d;
    d["workers"] = s.workers;
    d["seed"] = s.seed;
    d["schedule"] = policy_name(s.policy);
    d["smem_optin"] = s.smem_optin;
    d["stack_kib"] = s.stack_bytes / 1024;
    return d;
  });
  m.def("stats", []() {
    const cudasim::Stats s = cudasim::stats();
    py::dict d;
    d["launches"] = s.launches;
    d["blocks"] = s.blocks;
    d["threads"] = s.threads;
    d["barriers"] = s.barriers;
    d["switches"] = s.switches;
    return d;
  });
  // Self-tests of the simulator (tests/test_cudasim.py).
  m.def("selftest_reverse", [](const at::Tensor& in, bool barrier) {
    check(in, at::kFloat, "in");
    at::Tensor out = at::full_like(in, -1.0);
    C10_CUDA_CHECK(cudasim::selftest::reverse(in.data_ptr<float>(), out.data_ptr<float>(),
                                              static_cast<int>(in.numel()), barrier));
    return out;
  });
  m.def("selftest_warp_ops", [](const at::Tensor& in, int threads_per_block) {
    check(in, at::kInt, "in");
    TORCH_CHECK(in.numel() % threads_per_block == 0, "cudasim self-test: whole blocks only");
    at::Tensor out = at::zeros({in.numel(), 8}, in.options().dtype(at::kLong));
    long long* o = reinterpret_cast<long long*>(out.data_ptr<int64_t>());
    C10_CUDA_CHECK(
        cudasim::selftest::warp_ops(in.data_ptr<int>(), o, static_cast<int>(in.numel()), threads_per_block));
    return out;
  });
  m.def("selftest_atomics", [](int blocks, int threads) {
    at::Tensor counter = at::zeros({1}, at::kLong), sum = at::zeros({1}, at::kDouble);
    at::Tensor maxi = at::full({1}, -1, at::kInt);
    C10_CUDA_CHECK(cudasim::selftest::atomics(reinterpret_cast<unsigned long long*>(counter.data_ptr<int64_t>()),
                                              sum.data_ptr<double>(), maxi.data_ptr<int>(), blocks, threads));
    return py::make_tuple(counter.item<int64_t>(), sum.item<double>(), maxi.item<int>());
  });
  m.def("selftest_misuse", [](const std::string& what) {
    at::Tensor out = at::zeros({2048}, at::kInt);
    C10_CUDA_CHECK(cudasim::selftest::misuse(what.c_str(), out.data_ptr<int>()));
  });
  m.def("selftest_shared_memory", [](int smem_bytes, int write_bytes, int read_at, bool opt_in) {
    at::Tensor out = at::zeros({1}, at::kFloat);
    C10_CUDA_CHECK(cudasim::selftest::shared_memory(smem_bytes, write_bytes, read_at, opt_in, out.data_ptr<float>()));
    return out.item<float>();
  });
}
