// Long-run reliability: a NaN storm (30% of forward passes poisoned for 2,000 steps) and
// perturb/restore drift with lr = 0. docs/reliability.md reports the measured figures.
#include "optimizer_support.h"

#include <catch2/catch.hpp>

#include <random>

using namespace zotorch_test;

namespace {

struct LeastSquares {
  torch::Tensor x, y, w, b;
  LeastSquares() {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(99);
    x = torch::randn({128, 20}, gen) / std::sqrt(20.0);
    y = x.mm(torch::randn({20, 1}, gen));
    w = torch::zeros({20, 1}, torch::requires_grad());
    b = torch::zeros({1}, torch::requires_grad());
  }
  torch::Tensor operator()() const { return torch::mse_loss(x.mm(w) + b, y); }
};

template <class Optimizer, class Options>
void nan_storm(const Options& options, int64_t steps, double poison_rate) {
  LeastSquares clean_problem;
  Optimizer clean({clean_problem.w, clean_problem.b}, options);
  for (int64_t s = 0; s < steps; ++s) clean.step(std::cref(clean_problem));
  const double clean_loss = clean_problem().template item<double>();
  const int64_t clean_passes = clean.forward_passes();

  LeastSquares stormy;
  Optimizer opt({stormy.w, stormy.b}, options);
  std::mt19937_64 rng(2026);
  std::bernoulli_distribution poisoned(poison_rate);
  int64_t poisoned_steps = 0;
  bool this_step_poisoned = false;
  // NaN, +inf and -inf, all three (docs/reliability.md "NaN storm" says ±inf): one draw per
  // poisoned pass, bit 0 for NaN or an infinity and bit 1 for its sign.
  int64_t nans = 0, plus_infs = 0, minus_infs = 0;
  auto closure = [&] {
    auto loss = stormy();
    if (poisoned(rng)) {
      this_step_poisoned = true;
      const uint64_t bits = rng();
      const float inf = std::numeric_limits<float>::infinity();
      const float value = (bits & 1) ? std::numeric_limits<float>::quiet_NaN() : (bits & 2) ? inf : -inf;
      ++(std::isnan(value) ? nans : value > 0 ? plus_infs : minus_infs);
      return torch::full({}, value);
    }
    return loss;
  };
  // Run until the loss reaches the clean run's final loss, within ten times its forward passes.
  int64_t guard_skips = 0;
  while (opt.forward_passes() < 10 * clean_passes && stormy().template item<double>() > clean_loss * 1.1) {
    this_step_poisoned = false;
    opt.step(closure);
    const zotorch::StepReport& report = opt.last_step();
    poisoned_steps += this_step_poisoned ? 1 : 0;
    if (this_step_poisoned) REQUIRE(report.skipped);
    if (report.skipped && !this_step_poisoned) {  // FZOO's σ guard on equal losses: all losses finite
      for (double loss : report.losses) REQUIRE(std::isfinite(loss));
      ++guard_skips;
    }
    REQUIRE(torch::isfinite(stormy.w).all().item<bool>());
    REQUIRE(torch::isfinite(stormy.b).all().item<bool>());
    REQUIRE(opt.skipped_steps() == poisoned_steps + guard_skips);  // counted exactly
  }
  // Printed on every run: docs/reliability.md quotes these figures.
  WARN(poisoned_steps << " poisoned steps, " << guard_skips << " σ-guard skips, " << opt.forward_passes()
                      << " forward passes against the clean run's " << clean_passes);
  CHECK(stormy().template item<double>() <= clean_loss * 1.1);
  CHECK(poisoned_steps > 0);
  INFO(nans << " NaN, " << plus_infs << " +inf, " << minus_infs << " -inf losses returned");
  CHECK(nans > 0);
  CHECK(plus_infs > 0);
  CHECK(minus_infs > 0);
}

}  // namespace

TEST_CASE("a NaN storm on 30% of forward passes never reaches the parameters", "[reliability]") {
  SECTION("MeZO") { nan_storm<zotorch::MeZO>(zotorch::MeZOOptions(0.1).eps(1e-3), 2000, 0.3); }
  SECTION("AdaMeZO") { nan_storm<zotorch::AdaMeZO>(zotorch::AdaMeZOOptions(3e-4).eps(1e-3), 2000, 0.3); }
  SECTION("FZOO") { nan_storm<zotorch::FZOO>(zotorch::FZOOOptions(3e-2).eps(1e-3).num_perturbations(4), 2000, 0.3); }
}

TEST_CASE("perturb and restore with lr 0 leave float32 values exactly where they were", "[reliability][drift]") {
  // Rademacher directions with ε a power of two on values whose perturbation does not round.
  Quadratic problem(torch::kFloat, 77);
  const auto before = snapshot(problem.params);
  const double eps = std::ldexp(1.0, -10);
  zotorch::FZOO fzoo(problem.params, zotorch::FZOOOptions(0.0).eps(eps));
  zotorch::MeZO mezo(problem.params, zotorch::MeZOOptions(0.0).eps(eps).distribution(zotorch::Distribution::Rademacher));
  // The 10,000 steps of the drift figure in docs/reliability.md.
  for (int s = 0; s < 10000; ++s) {
    fzoo.step(std::ref(problem));
    mezo.step(std::ref(problem));
  }
  CHECK(bitwise_equal(problem.params, before));
}

TEST_CASE("Gaussian perturb and restore with lr 0 drift by fewer than 300 ulps over 1,000 steps", "[reliability][drift]") {
  // Values in [0.5, 1) on a 2^-12 grid, so that an ulp is the same for the value and its perturbations.
  auto theta = grid_values({4096}, 78).abs().mul_(0.5).add_(0.5).requires_grad_(true);
  const auto before = theta.detach().clone();
  zotorch::MeZO opt({theta}, zotorch::MeZOOptions(0.0).eps(1e-3));
  for (int s = 0; s < 1000; ++s) opt.step([&] { return theta.sum(); });
  // The rounding errors of 3,000 sweeps form a random walk: the bound is one ulp per 10 sweeps.
  const int64_t drift = max_ulps({theta}, {before});
  INFO("max drift " << drift << " ulps after 1000 MeZO steps (3000 sweeps)");
  CHECK(drift > 0);
  CHECK(drift < 3000 / 10);
}
