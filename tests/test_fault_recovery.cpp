// Issue 7.5 on every device: a closure that throws at any of a step's forward passes leaves every
// optimizer's parameters and state exactly as they were, and a retry continues the run bit for bit
// like a run that never failed. CPU always; CUDA where a GPU exists (skipped visibly otherwise).
#include "cuda_presence.h"
#include "optimizer_support.h"

#include <catch2/catch.hpp>

#include <sstream>
#include <stdexcept>

using namespace zotorch_test;

namespace {

// Restores are bit-exact where no perturbation rounds: Rademacher directions with ε a power of two
// on float32 values of a coarse grid, and Gaussian directions (24-bit z) with ε = 2^-10 on float64
// values of a 2^-12 grid, where θ ± εz needs at most 53 bits unless |z| < 2^-19.
struct FzooCase {
  using Optimizer = zotorch::FZOO;
  static constexpr const char* name = "FZOO (Rademacher, float32)";
  static constexpr torch::Dtype dtype = torch::kFloat;
  static zotorch::FZOOOptions options(double lr, double eps) {
    return zotorch::FZOOOptions(lr).eps(eps).seed(21).num_perturbations(4);
  }
  static constexpr int64_t passes = 5;
};
struct MezoRademacherCase {
  using Optimizer = zotorch::MeZO;
  static constexpr const char* name = "MeZO (Rademacher, float32)";
  static constexpr torch::Dtype dtype = torch::kFloat;
  static zotorch::MeZOOptions options(double lr, double eps) {
    return zotorch::MeZOOptions(lr).eps(eps).seed(22).distribution(zotorch::Distribution::Rademacher);
  }
  static constexpr int64_t passes = 2;
};
struct MezoGaussianCase {
  using Optimizer = zotorch::MeZO;
  static constexpr const char* name = "MeZO (Gaussian, float64, 2 samples)";
  static constexpr torch::Dtype dtype = torch::kDouble;
  static zotorch::MeZOOptions options(double lr, double eps) {
    return zotorch::MeZOOptions(lr).eps(eps).seed(23).num_samples(2);
  }
  static constexpr int64_t passes = 4;
};
struct AdaMezoCase {
  using Optimizer = zotorch::AdaMeZO;
  static constexpr const char* name = "AdaMeZO (Gaussian, float64)";
  static constexpr torch::Dtype dtype = torch::kDouble;
  static zotorch::AdaMeZOOptions options(double lr, double eps) {
    return zotorch::AdaMeZOOptions(lr).eps(eps).seed(24).window(2);
  }
  static constexpr int64_t passes = 2;
};

std::string optimizer_state_bytes(const torch::optim::Optimizer& opt) {
  torch::serialize::OutputArchive archive;
  opt.save(archive);
  std::ostringstream out;
  archive.save_to(out);
  return out.str();
}

Quadratic on(torch::Device device, torch::Dtype dtype, int64_t seed) {
  Quadratic problem(dtype, seed);
  for (auto& p : problem.params) p = p.to(device);
  for (auto& t : problem.targets) t = t.to(device);
  return problem;
}

std::vector<torch::Tensor> on_cpu(const std::vector<torch::Tensor>& tensors) {
  std::vector<torch::Tensor> out;
  for (const auto& t : tensors) out.push_back(t.cpu());
  return out;
}

template <class Case>
void throw_at_every_call(torch::Device device) {
  using Optimizer = typename Case::Optimizer;
  const double eps = std::ldexp(1.0, -10);
  for (int64_t position = 1; position <= Case::passes; ++position) {
    INFO(Case::name << " on " << device << ", closure throws at forward pass " << position);
    Quadratic problem = on(device, Case::dtype, 40);
    Quadratic reference = on(device, Case::dtype, 40);
    // Warm-up with lr 0 keeps θ on its grid and fills AdaMeZO's window; then the real step size.
    Optimizer opt(problem.params, Case::options(0.0, eps));
    Optimizer clean(reference.params, Case::options(0.0, eps));
    for (int s = 0; s < 4; ++s) {
      opt.step(std::ref(problem));
      clean.step(std::ref(reference));
    }
    opt.param_groups()[0].options().set_lr(1e-3);
    clean.param_groups()[0].options().set_lr(1e-3);
    REQUIRE(bitwise_equal(on_cpu(problem.params), on_cpu(reference.params)));

    const auto before = on_cpu(problem.params);
    const std::string state_before = optimizer_state_bytes(opt);
    int64_t call = 0;
    auto failing = [&] {
      if (++call == position) throw std::runtime_error("data loader failed");
      return problem();
    };
    CHECK_THROWS_WITH(opt.step(failing), Catch::Contains("data loader failed"));
    CHECK(call == position);
    CHECK(bitwise_equal(on_cpu(problem.params), before));
    CHECK(optimizer_state_bytes(opt) == state_before);

    // The retry, and two steps after it, are the steps the clean run takes.
    for (int s = 0; s < 3; ++s) {
      opt.step(std::ref(problem));
      clean.step(std::ref(reference));
      CHECK(bitwise_equal(on_cpu(problem.params), on_cpu(reference.params)));
    }
    CHECK(opt.steps() == clean.steps());
    CHECK(opt.forward_passes() == clean.forward_passes());
    CHECK(opt.skipped_steps() == clean.skipped_steps());
  }
}

}  // namespace

TEMPLATE_TEST_CASE("a step that throws at any forward pass is undone exactly and a retry continues bit-identically on the CPU",
                   "[reliability][safety]", FzooCase, MezoRademacherCase, MezoGaussianCase, AdaMezoCase) {
  throw_at_every_call<TestType>(torch::kCPU);
}

TEMPLATE_TEST_CASE("a step that throws at any forward pass is undone exactly and a retry continues bit-identically on CUDA",
                   "[reliability][safety][cuda]", FzooCase, MezoRademacherCase, MezoGaussianCase, AdaMezoCase) {
  ZOTORCH_REQUIRE_CUDA();
  throw_at_every_call<TestType>(torch::Device(torch::kCUDA, 0));
}
