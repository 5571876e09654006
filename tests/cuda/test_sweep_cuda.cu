// The CUDA backend (share/zotorch/cuda_kernels.cu, linked through zotorch::cuda) against the CPU
// sweep, bit for bit, on the hardware: every dtype, both distributions, linear and adaptive plans,
// stochastic rounding, a 300-tensor mixed list, table reuse, streams and graph capture.
// Without a CUDA device each test says "SKIPPED: no CUDA device" and returns; on a machine with an
// NVIDIA driver whose CUDA does not start each fails with CUDA's error (tests/cuda_presence.h).
#include "cuda_presence.h"
#include "sweep_cases.h"

#include <zotorch/detail/cuda_table.cuh>
#include <zotorch/detail/dispatch.h>
#include <zotorch/noise.h>

#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <catch2/catch.hpp>

#include <string>
#include <vector>

namespace {

using namespace zotorch_test;
using zotorch::detail::CudaTableCache;

std::string describe(const SweepPlan& plan) {
  return std::string(zotorch::to_string(plan.distribution)) + (plan.adaptive ? " adaptive" : " linear") +
         (plan.stochastic_rounding ? " stochastic-rounding" : "") + ", " + std::to_string(plan.num_terms) + " terms";
}

const at::TensorOptions kCuda = at::TensorOptions().device(at::kCUDA);

/// A list on the CPU and the same values on the GPU.
struct TwinLists {
  std::vector<ParamSpec> specs;
  std::vector<at::Tensor> cpu, cuda;
  ParamTable cpu_table, cuda_table;

  TwinLists(std::vector<ParamSpec> specs_in, uint64_t seed) : specs(std::move(specs_in)) {
    for (size_t i = 0; i < specs.size(); ++i) {
      const at::Tensor values = make_values(specs[i], seed + i);
      cpu.push_back(place(values, specs[i], at::TensorOptions()));
      cuda.push_back(place(values, specs[i], kCuda));
    }
    cpu_table = make_table(cpu, specs);
    cuda_table = make_table(cuda, specs);
  }

  void sweep(const SweepPlan& plan) {
    zotorch::detail::cpu_sweep(cpu_table, plan);
    zotorch::detail::apply_sweep(cuda_table, plan);
  }

  void require_equal(const std::string& what) const {
    for (size_t i = 0; i < specs.size(); ++i) {
      INFO(what << "; tensor " << i << " of " << specs.size() << ": " << specs[i].numel << " x " << specs[i].dtype
                << (specs[i].misaligned ? " (misaligned)" : ""));
      REQUIRE(first_difference(cpu[i], cuda[i]).empty());
    }
  }

  uint64_t builds() const {
    const auto* cache = static_cast<const CudaTableCache*>(cuda_table.cuda_cache.get());
    return cache == nullptr ? 0 : cache->builds;
  }
};

/// A pool stream ordered after all work queued so far on the current stream (what
/// torch.cuda.Stream.wait_stream does): the parameters it sweeps were written there.
c10::cuda::CUDAStream side_stream_after_current() {
  const c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool();
  at::cuda::CUDAEvent written;
  written.record(c10::cuda::getCurrentCUDAStream());
  written.block(side);
  return side;
}

const at::ScalarType kDtypes[] = {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16};
const Distribution kDistributions[] = {Distribution::Rademacher, Distribution::Gaussian};

}  // namespace

TEST_CASE("Linking zotorch::cuda registers the CUDA kernels when the program loads", "[cuda]") {
  // Needs no device: this is what a static library that drops cuda_kernels.cu's object breaks.
  REQUIRE(zotorch::detail::cuda_kernels_available());
  const auto registered = zotorch::detail::cuda_backend().sweep;
  zotorch::register_cuda_kernels();
  CHECK(zotorch::detail::cuda_backend().sweep == registered);
}

TEST_CASE("CUDA sweep equals the CPU sweep bitwise on single tensors of every dtype", "[cuda]") {
  ZOTORCH_REQUIRE_CUDA();
  uint64_t seed = 21;
  for (const at::ScalarType dtype : kDtypes) {
    const bool half = dtype == at::kHalf || dtype == at::kBFloat16;
    for (const Distribution dist : kDistributions) {
      for (const bool adaptive : {false, true}) {
        for (const bool rounding : {false, true}) {
          if (rounding && !half) continue;
          // 3'000'001 elements: more tiles than resident warps, so warps stride over several.
          for (const int64_t numel : {int64_t{1}, int64_t{3}, int64_t{129}, int64_t{4097}, int64_t{3000001}}) {
            for (const bool misaligned : {false, true}) {
              ++seed;
              TwinLists lists({{numel, dtype, 0, misaligned}}, seed);
              const SweepPlan plan = make_plan(dist, adaptive, rounding, 9, 1, seed);
              lists.sweep(plan);
              lists.require_equal(describe(plan));
            }
          }
        }
      }
    }
  }
}

TEST_CASE("CUDA sweep equals the CPU sweep bitwise on a 300-tensor mixed list", "[cuda]") {
  ZOTORCH_REQUIRE_CUDA();
  uint64_t seed = 600;
  for (const Distribution dist : kDistributions) {
    for (const bool adaptive : {false, true}) {
      for (const bool rounding : {false, true}) {
        for (const int terms : {1, 9, 64}) {
          ++seed;
          TwinLists lists(long_list(), seed);
          const SweepPlan plan = make_plan(dist, adaptive, rounding, terms, 3, seed);
          lists.sweep(plan);
          lists.require_equal(describe(plan));
          CHECK(lists.builds() == 1);
        }
      }
    }
  }
}

TEST_CASE("CUDA sweep reuses its device table and rebuilds it when a data pointer changes", "[cuda]") {
  ZOTORCH_REQUIRE_CUDA();
  TwinLists lists(long_list(), 77);
  const SweepPlan plan = make_plan(Distribution::Rademacher, false, true, 3, 3, 78);
  lists.sweep(plan);
  lists.sweep(plan);
  CHECK(lists.builds() == 1);
  lists.require_equal("two sweeps on one table");

  // Same tensor object, new storage: what param.set_data() or a model->to() round trip does.
  const size_t moved = 5;
  const at::Tensor fresh = make_values(lists.specs[moved], 4242);
  lists.cpu[moved].set_data(fresh.clone());
  lists.cuda[moved].set_data(fresh.to(at::kCUDA));
  lists.sweep(plan);
  CHECK(lists.builds() == 2);
  lists.require_equal("after set_data");
  lists.sweep(plan);
  CHECK(lists.builds() == 2);
  lists.require_equal("after set_data, reused");
}

TEST_CASE("CUDA sweep runs on the current stream even when it is not the default one", "[cuda]") {
  ZOTORCH_REQUIRE_CUDA();
  TwinLists lists(long_list(), 88);
  const SweepPlan plan = make_plan(Distribution::Gaussian, false, true, 2, 3, 89);
  lists.sweep(plan);  // builds the table on the default stream
  const c10::cuda::CUDAStream side = side_stream_after_current();
  {
    const c10::cuda::CUDAStreamGuard guard(side);
    lists.sweep(plan);  // first use of the table on another stream
    lists.sweep(plan);
  }
  side.synchronize();
  lists.require_equal("three sweeps, two on a side stream");
  CHECK(lists.builds() == 1);
}

TEST_CASE("CUDA sweep is capturable in a CUDA graph: no host sync or allocation and the current stream", "[cuda]") {
  ZOTORCH_REQUIRE_CUDA();
  TwinLists lists(long_list(), 99);
  const SweepPlan plan = make_plan(Distribution::Rademacher, true, true, 9, 3, 100);
  const c10::cuda::CUDAStream side = side_stream_after_current();  // after the values' upload
  const c10::cuda::CUDAStreamGuard guard(side);
  lists.sweep(plan);  // builds the table; capture needs a warm table
  side.synchronize();

  // Global mode: any host synchronisation, allocation or launch on another stream fails the capture.
  cudaGraph_t graph = nullptr;
  C10_CUDA_CHECK(cudaStreamBeginCapture(side.stream(), cudaStreamCaptureModeGlobal));
  zotorch::detail::apply_sweep(lists.cuda_table, plan);
  C10_CUDA_CHECK(cudaStreamEndCapture(side.stream(), &graph));
  size_t nodes = 0;
  C10_CUDA_CHECK(cudaGraphGetNodes(graph, nullptr, &nodes));
  CHECK(nodes == 4);  // one launch per storage type present
  lists.require_equal("capture does not run the sweep");

  cudaGraphExec_t exec = nullptr;
  C10_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  C10_CUDA_CHECK(cudaGraphLaunch(exec, side.stream()));
  C10_CUDA_CHECK(cudaGraphLaunch(exec, side.stream()));
  side.synchronize();
  zotorch::detail::cpu_sweep(lists.cpu_table, plan);
  zotorch::detail::cpu_sweep(lists.cpu_table, plan);
  lists.require_equal("two graph launches");
  C10_CUDA_CHECK(cudaGraphExecDestroy(exec));
  C10_CUDA_CHECK(cudaGraphDestroy(graph));
}

TEST_CASE("CUDA sweep inside graph capture refuses a table build and a table not yet used on the capturing stream",
          "[cuda]") {
  ZOTORCH_REQUIRE_CUDA();
  TwinLists lists(long_list(), 111);
  const SweepPlan plan = make_plan(Distribution::Rademacher, false, false, 2, 3, 112);
  const c10::cuda::CUDAStream side = side_stream_after_current();
  const c10::cuda::CUDAStreamGuard guard(side);
  // Captures one sweep on `side`; returns the error's message, "" when it was captured.
  const auto capture_sweep = [&] {
    std::string message;
    cudaGraph_t graph = nullptr;
    C10_CUDA_CHECK(cudaStreamBeginCapture(side.stream(), cudaStreamCaptureModeGlobal));
    try {
      zotorch::detail::apply_sweep(lists.cuda_table, plan);
    } catch (const c10::Error& e) {
      message = e.what();
    }
    // The refusal comes before any CUDA call, so the capture is still valid and ends cleanly.
    C10_CUDA_CHECK(cudaStreamEndCapture(side.stream(), &graph));
    if (graph != nullptr) C10_CUDA_CHECK(cudaGraphDestroy(graph));
    return message;
  };
  CHECK_THAT(capture_sweep(), Catch::Contains("device table must be built first"));
  CHECK(lists.builds() == 0);

  {  // Warm the table on the default stream: the side stream has not waited for its upload.
    const c10::cuda::CUDAStreamGuard on_default(c10::cuda::getDefaultCUDAStream());
    lists.sweep(plan);
  }
  at::cuda::CUDAEvent swept;
  swept.record(c10::cuda::getDefaultCUDAStream());
  swept.block(side);
  CHECK_THAT(capture_sweep(), Catch::Contains("uploaded on another stream"));

  lists.sweep(plan);  // outside capture: orders `side` after the upload
  CHECK(capture_sweep().empty());
  CHECK(lists.builds() == 1);
  side.synchronize();
  lists.require_equal("two sweeps, captures not launched");  // the CPU side swept twice as well
}

TEST_CASE("zotorch::noise with CUDA options equals the CPU noise bitwise", "[cuda]") {
  ZOTORCH_REQUIRE_CUDA();
  for (const at::ScalarType dtype : kDtypes) {
    for (const Distribution dist : kDistributions) {
      for (const int64_t numel : {int64_t{1}, int64_t{127}, int64_t{4099}, int64_t{100003}}) {
        const uint64_t key = zotorch::step_key(2024, static_cast<uint64_t>(numel));
        const at::Tensor cpu = zotorch::noise(key, 17, 3, {numel}, dist, at::TensorOptions().dtype(dtype));
        const at::Tensor cuda = zotorch::noise(key, 17, 3, {numel}, dist, kCuda.dtype(dtype));
        INFO(zotorch::to_string(dist) << " " << dtype << " x " << numel);
        CHECK(cuda.device().is_cuda());
        REQUIRE(first_difference(cpu, cuda).empty());
      }
    }
  }
}

TEST_CASE("CUDA parameters without registered kernels give an error naming zotorch::cuda", "[cuda]") {
  ZOTORCH_REQUIRE_CUDA();
  TwinLists lists({{10, at::kFloat, 0, false}}, 5);
  const SweepPlan plan = make_plan(Distribution::Rademacher, false, false, 1, 1, 6);
  auto& backend = zotorch::detail::cuda_backend();
  const auto registered = backend.sweep;
  REQUIRE(registered != nullptr);  // the static registrar of cuda_kernels.cu ran
  backend.sweep = nullptr;
  CHECK_THROWS_WITH(zotorch::detail::apply_sweep(lists.cuda_table, plan), Catch::Contains("zotorch::cuda"));
  zotorch::register_cuda_kernels();
  CHECK(backend.sweep == registered);
  lists.sweep(plan);
  lists.require_equal("after explicit registration");
}

TEST_CASE("CUDA sweep runs on the parameters' device, not the current one", "[cuda]") {
  ZOTORCH_REQUIRE_CUDA();
  // The one skip scripts/gpu-check.sh accepts on a GPU machine, when it has a single GPU.
  if (c10::cuda::device_count() < 2) ZOTORCH_SKIP_TEST("needs two CUDA devices");
  std::vector<ParamSpec> specs = long_list();
  specs.resize(20);
  std::vector<at::Tensor> cpu, cuda;
  for (size_t i = 0; i < specs.size(); ++i) {
    const at::Tensor values = make_values(specs[i], 300 + i);
    cpu.push_back(place(values, specs[i], at::TensorOptions()));
    cuda.push_back(place(values, specs[i], kCuda.device(at::Device(at::kCUDA, 1))));
  }
  const SweepPlan plan = make_plan(Distribution::Gaussian, false, true, 4, 3, 301);
  zotorch::detail::cpu_sweep(make_table(cpu, specs), plan);
  {
    const c10::cuda::CUDAGuard on_device_0(0);
    zotorch::detail::apply_sweep(make_table(cuda, specs), plan);
  }
  for (size_t i = 0; i < specs.size(); ++i) REQUIRE(first_difference(cpu[i], cuda[i]).empty());
}
