// Whether a test that needs a CUDA device can run here, and if not, why
// (docs/cuda.md "How it is tested"). c10 reports 0 devices both on a machine without a GPU and on
// one whose CUDA fails to start (a driver older than the runtime, a device in a bad state), so the
// device count alone would let a broken GPU machine report every CUDA test as skipped, i.e. passed.
// Here a machine with an NVIDIA driver (/dev/nvidiactl or /dev/nvidia<N>) whose CUDA does not
// start fails the test with CUDA's error; only a machine without one skips.
#pragma once

#include "skip.h"

#include <zotorch/detail/cuda_registry.h>

#include <ATen/Context.h>
#include <torch/cuda.h>

#include <catch2/catch.hpp>

#include <cstdint>
#include <exception>
#include <filesystem>
#include <string>

namespace zotorch_test {

enum class CudaOutcome { Run, Skip, Fail };

struct CudaVerdict {
  CudaOutcome outcome;
  std::string reason;  // empty for Run; for Skip, what follows "SKIPPED: "
};

/// The decision alone, a pure function so that every branch is tested on any machine
/// (tests/test_cuda_presence.cpp). `init_error` is what initialising CUDA threw, empty if nothing.
inline CudaVerdict cuda_verdict(bool driver_present, int64_t device_count, const std::string& init_error,
                                bool kernels_linked) {
  const bool cuda_works = device_count > 0 && init_error.empty();
  if (!cuda_works && (driver_present || device_count > 0)) {
    std::string why = "an NVIDIA driver is present";
    if (!driver_present) why = "CUDA reports " + std::to_string(device_count) + " device(s)";
    why += " but CUDA is not usable: ";
    why += init_error.empty() ? std::string("it reports 0 devices") : "its initialisation failed: " + init_error;
    return {CudaOutcome::Fail, why};
  }
  if (!cuda_works) {
    return {CudaOutcome::Skip, "no CUDA device" + (init_error.empty() ? std::string() : " (" + init_error + ")")};
  }
  if (!kernels_linked) {
    return {CudaOutcome::Skip, "no zotorch CUDA kernels linked (build with ZOTORCH_CUDA=ON to run this test)"};
  }
  return {CudaOutcome::Run, ""};
}

/// Whether the NVIDIA kernel driver is loaded: its control device or a GPU's device node exists.
inline bool nvidia_driver_present() {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::exists("/dev/nvidiactl", ec)) return true;
  for (const auto& entry : fs::directory_iterator("/dev", ec)) {
    const std::string name = entry.path().filename().string();
    if (name.size() > 6 && name.compare(0, 6, "nvidia") == 0 && name[6] >= '0' && name[6] <= '9') return true;
  }
  return false;
}

/// The first line of an exception's message: c10 appends a C++ backtrace after it.
inline std::string first_line(const char* what) {
  const std::string all(what);
  return all.substr(0, all.find('\n'));
}

/// This machine's verdict: the driver, c10's device count, what initialising CUDA throws, and
/// whether this program registered zotorch's CUDA kernels (share/zotorch/cuda_kernels.cu).
inline CudaVerdict probe_cuda() {
  const auto count = static_cast<int64_t>(torch::cuda::device_count());
  std::string init_error;
  try {
    at::globalContext().lazyInitDevice(at::kCUDA);
  } catch (const std::exception& e) {
    init_error = first_line(e.what());
    if (init_error.empty()) init_error = "an exception without a message";
  }
  return cuda_verdict(nvidia_driver_present(), count, init_error, zotorch::detail::cuda_kernels_available());
}

}  // namespace zotorch_test

/// First statement of a test that needs a CUDA device and zotorch's kernels: fails on a machine
/// whose GPU is unusable, skips (reported as skipped by ctest) where there is none.
#define ZOTORCH_REQUIRE_CUDA()                                                          \
  do {                                                                                  \
    const ::zotorch_test::CudaVerdict zotorch_cuda_verdict = ::zotorch_test::probe_cuda(); \
    if (zotorch_cuda_verdict.outcome == ::zotorch_test::CudaOutcome::Fail) {            \
      FAIL(zotorch_cuda_verdict.reason);                                                \
    }                                                                                   \
    if (zotorch_cuda_verdict.outcome == ::zotorch_test::CudaOutcome::Skip) {            \
      ZOTORCH_SKIP_TEST(zotorch_cuda_verdict.reason);                                   \
    }                                                                                   \
  } while (false)
