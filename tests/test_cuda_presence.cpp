// The rule that decides whether a CUDA test runs, skips or fails (tests/cuda_presence.h), branch by
// branch: on a machine without a GPU only the "skip" branch would otherwise ever be taken.
#include "cuda_presence.h"

#include <catch2/catch.hpp>

using zotorch_test::cuda_verdict;
using zotorch_test::CudaOutcome;

TEST_CASE("a CUDA test runs only with a device, a clean CUDA initialisation and zotorch's kernels linked", "[cuda][presence]") {
  const auto v = cuda_verdict(true, 1, "", true);
  CHECK(v.outcome == CudaOutcome::Run);
  CHECK(v.reason.empty());
  // A device seen without /dev/nvidia* (e.g. a container exposing the GPU another way) is as good.
  CHECK(cuda_verdict(false, 2, "", true).outcome == CudaOutcome::Run);
}

TEST_CASE("a CUDA test fails, naming CUDA's error, where a driver is present but CUDA does not start", "[cuda][presence]") {
  SECTION("driver present, initialisation throws (e.g. a driver older than the runtime)") {
    const auto v = cuda_verdict(true, 0, "The NVIDIA driver on your system is too old", true);
    CHECK(v.outcome == CudaOutcome::Fail);
    CHECK_THAT(v.reason, Catch::Contains("driver is present") && Catch::Contains("too old"));
  }
  SECTION("driver present, 0 devices and no error") {
    const auto v = cuda_verdict(true, 0, "", true);
    CHECK(v.outcome == CudaOutcome::Fail);
    CHECK_THAT(v.reason, Catch::Contains("0 devices"));
  }
  SECTION("driver present, devices counted, initialisation throws") {
    CHECK(cuda_verdict(true, 1, "CUDA error: out of memory", true).outcome == CudaOutcome::Fail);
  }
  SECTION("no driver node but devices counted, initialisation throws") {
    const auto v = cuda_verdict(false, 1, "CUDA error: unknown error", true);
    CHECK(v.outcome == CudaOutcome::Fail);
    CHECK_THAT(v.reason, Catch::Contains("1 device(s)") && Catch::Contains("unknown error"));
  }
  SECTION("a broken GPU machine fails even when the kernels are not linked") {
    CHECK(cuda_verdict(true, 0, "boom", false).outcome == CudaOutcome::Fail);
  }
  // The reason must not read as a skip: ctest's SKIP_REGULAR_EXPRESSION would hide the failure.
  CHECK_THAT(cuda_verdict(true, 0, "x", true).reason, !Catch::Contains("SKIPPED"));
}

TEST_CASE("a CUDA test skips, saying why, only without a driver and a device, or without the kernels", "[cuda][presence]") {
  SECTION("no driver, no device, initialisation throws (a machine without a GPU)") {
    const auto v = cuda_verdict(false, 0, "Found no NVIDIA driver on your system", true);
    CHECK(v.outcome == CudaOutcome::Skip);
    CHECK_THAT(v.reason, Catch::StartsWith("no CUDA device") && Catch::Contains("Found no NVIDIA driver"));
  }
  SECTION("no driver, no device, no error") {
    const auto v = cuda_verdict(false, 0, "", false);
    CHECK(v.outcome == CudaOutcome::Skip);
    CHECK(v.reason == "no CUDA device");
  }
  SECTION("a usable device but no zotorch CUDA kernels in this program") {
    const auto v = cuda_verdict(true, 1, "", false);
    CHECK(v.outcome == CudaOutcome::Skip);
    CHECK_THAT(v.reason, Catch::StartsWith("no zotorch CUDA kernels linked"));
  }
}

TEST_CASE("this machine's CUDA verdict agrees with its driver and CUDA's device count", "[cuda][presence]") {
  const auto v = zotorch_test::probe_cuda();
  INFO("verdict " << static_cast<int>(v.outcome) << ": " << v.reason);
  if (zotorch_test::nvidia_driver_present()) {
    // A GPU machine: CUDA must work, so this test fails where every CUDA test would.
    CHECK(v.outcome != CudaOutcome::Fail);
    CHECK(torch::cuda::device_count() > 0);
  } else if (torch::cuda::device_count() == 0) {
    CHECK(v.outcome == CudaOutcome::Skip);
    CHECK_THAT(v.reason, Catch::StartsWith("no CUDA device"));
  } else {
    CHECK(v.outcome != CudaOutcome::Fail);
  }
}
