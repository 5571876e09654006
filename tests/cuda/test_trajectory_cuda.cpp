// A trajectory recorded on a CUDA device (docs/reliability.md "Trajectories"): replayed on the device
// it gives the trained parameters bit for bit, and replayed on the CPU from CPU copies of the
// starting weights it gives the same bits, because FZOO's Rademacher sweeps are bit-identical on
// both backends (tests/cuda/test_sweep_cuda.cu) and replay feeds both the recorded losses. Values
// without NaN: a NaN element keeps other bits on a GPU (docs/cuda.md).
// Without a CUDA device the test says "SKIPPED: ..." and returns (tests/cuda_presence.h).
#include "cuda_presence.h"
#include "optimizer_support.h"

#include <zotorch/trajectory.h>

#include <catch2/catch.hpp>

#include <filesystem>
#include <string>
#include <vector>

#include <unistd.h>

namespace {

/// The parameters on the CPU: four off-grid tensors (each perturbation rounds), one of them frozen.
std::vector<torch::Tensor> cuda_trajectory_start(torch::Dtype dtype) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(41);
  std::vector<torch::Tensor> out;
  for (const auto& shape : std::vector<std::vector<int64_t>>{{33, 7}, {65}, {5, 3}, {1000}}) {
    out.push_back(torch::randn(shape, gen, torch::kFloat).to(dtype));
  }
  return out;
}

std::vector<torch::Tensor> cuda_trajectory_on(const std::vector<torch::Tensor>& tensors, torch::Device device) {
  std::vector<torch::Tensor> out;
  for (const auto& t : tensors) out.push_back(t.to(device).clone());
  return out;
}

std::vector<torch::Tensor> cuda_trajectory_cpu(const std::vector<torch::Tensor>& tensors) {
  return cuda_trajectory_on(tensors, torch::kCPU);
}

}  // namespace

TEST_CASE("an FZOO trajectory recorded on CUDA replays bit for bit on CUDA, and on the CPU from CPU copies of the "
          "start, in float32 and bfloat16",
          "[trajectory][cuda]") {
  ZOTORCH_REQUIRE_CUDA();
  for (const torch::Dtype dtype : {torch::kFloat, torch::kBFloat16}) {
    INFO("dtype " << c10::toString(dtype));
    const std::string log = (std::filesystem::temp_directory_path() /
                             ("zotorch_trajectory_cuda_" + std::to_string(::getpid()) + "_" + c10::toString(dtype) + ".ztraj"))
                                .string();
    std::filesystem::remove(log);
    const auto start = cuda_trajectory_start(dtype);
    auto params = cuda_trajectory_on(start, torch::kCUDA);
    for (size_t i = 0; i + 1 < params.size(); ++i) params[i].requires_grad_(true);  // the last one stays frozen

    // Two groups, weight decay on the first; stochastic rounding (the default) for bfloat16.
    const auto options = zotorch::FZOOOptions(1e-2).eps(1e-2).num_perturbations(4).seed(5);
    std::vector<torch::optim::OptimizerParamGroup> groups;
    groups.emplace_back(std::vector<torch::Tensor>{params[0], params[1]},
                        std::make_unique<zotorch::FZOOOptions>(zotorch::FZOOOptions(options).weight_decay(0.05)));
    groups.emplace_back(std::vector<torch::Tensor>{params[2], params[3]},
                        std::make_unique<zotorch::FZOOOptions>(options));
    zotorch::FZOO opt(groups, options);
    {
      zotorch::TrajectoryWriter writer(log);
      for (int s = 0; s < 6; ++s) {
        opt.step([&] {
          auto total = torch::zeros({}, torch::TensorOptions().dtype(torch::kDouble).device(torch::kCUDA));
          for (const auto& p : params) total = total + (p.to(torch::kDouble) - 0.25).pow(2).sum();
          return total.to(torch::kFloat);
        });
        writer.append(opt);
      }
    }
    const auto trained = cuda_trajectory_cpu(params);
    REQUIRE_FALSE(zotorch_test::bitwise_equal(trained, start));
    CHECK(opt.skipped_steps() == 0);

    // (a) On the device the log was recorded on.
    auto on_cuda = cuda_trajectory_on(start, torch::kCUDA);
    zotorch::replay(log, on_cuda);
    CHECK(zotorch_test::bitwise_equal(cuda_trajectory_cpu(on_cuda), trained));

    // (b) On the CPU, from CPU copies of the start.
    auto on_cpu = cuda_trajectory_cpu(start);
    zotorch::replay(log, on_cpu);
    CHECK(zotorch_test::bitwise_equal(on_cpu, trained));
    std::filesystem::remove(log);
  }
}
