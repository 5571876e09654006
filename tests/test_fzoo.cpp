// FZOO reproduced from scratch: losses, σ, coefficients and the update recomputed from
// zotorch::noise; the σ guard; invariance of the step to the loss scale.
#include "optimizer_support.h"

#include <catch2/catch.hpp>

using namespace zotorch_test;

TEST_CASE("FZOO's step equals the normalised one-sided formula recomputed from zotorch::noise", "[fzoo][formula]") {
  for (const auto dtype : {torch::kFloat, torch::kDouble, torch::kBFloat16}) {
    DYNAMIC_SECTION("dtype " << dtype) {
      const double lr = 1e-2, eps = std::ldexp(1.0, -6), weight_decay = 0.05;
      const int64_t n = 6;
      Quadratic problem(dtype, 11, /*grid_bits=*/7);
      const auto theta0 = snapshot(problem.params);
      zotorch::FZOO opt(problem.params, zotorch::FZOOOptions(lr)
                                            .eps(eps)
                                            .num_perturbations(n)
                                            .weight_decay(weight_decay)
                                            .seed(123)
                                            .stochastic_rounding(false));
      const double returned = opt.step(std::ref(problem)).item<double>();
      const auto& report = opt.last_step();
      CHECK(report.forward_passes == n + 1);
      CHECK(report.sweeps == n + 1);

      // On the 2^-7 grid, θ0 ± 2^-6 is exact in every dtype here: the perturbed losses are known exactly.
      auto u = [&](size_t tensor, int64_t probe) {
        return zotorch::noise(report.key, static_cast<int64_t>(tensor), probe, theta0[tensor].sizes(),
                              zotorch::Distribution::Rademacher, torch::TensorOptions().dtype(torch::kDouble));
      };
      std::vector<double> l{problem.loss_at(theta0).item<double>()};
      for (int64_t i = 1; i <= n; ++i) {
        std::vector<torch::Tensor> perturbed;
        for (size_t t = 0; t < theta0.size(); ++t) perturbed.push_back(theta0[t].to(torch::kDouble) + eps * u(t, i - 1));
        l.push_back(problem.loss_at(perturbed).item<double>());
      }
      REQUIRE(report.losses == l);
      CHECK(returned == l[0]);
      double mean = 0, var = 0;
      for (int64_t i = 1; i <= n; ++i) mean += l[i] / n;
      for (int64_t i = 1; i <= n; ++i) var += (l[i] - mean) * (l[i] - mean) / n;
      const double sigma = std::sqrt(var);
      for (int64_t i = 1; i <= n; ++i) CHECK(report.coefficients.at(i - 1) == Approx((l[i] - l[0]) / (n * sigma)).epsilon(1e-12));

      for (size_t t = 0; t < theta0.size(); ++t) {
        auto expected = theta0[t].to(torch::kDouble) * (1 - lr * weight_decay);
        for (int64_t i = 1; i <= n; ++i) expected -= lr * report.coefficients[i - 1] * u(t, i - 1);
        const double tolerance = dtype == torch::kBFloat16 ? std::ldexp(1.0, -7) : dtype == torch::kFloat ? 1e-6 : 1e-14;
        CHECK(torch::allclose(problem.params[t].to(torch::kDouble), expected, 0, tolerance));
      }
    }
  }
}

TEST_CASE("FZOO skips a step when the losses do not vary, restoring θ exactly", "[fzoo][guard]") {
  Quadratic problem(torch::kFloat, 2);
  const auto before = snapshot(problem.params);
  zotorch::FZOO opt(problem.params, zotorch::FZOOOptions(1e-2).eps(std::ldexp(1.0, -10)));
  const auto loss = opt.step([] { return torch::full({}, 4.0); });
  CHECK(loss.item<double>() == 4.0);
  CHECK(opt.last_step().skipped);
  CHECK(opt.skipped_steps() == 1);
  CHECK(bitwise_equal(problem.params, before));
  // The next step draws new directions and updates as usual.
  opt.step(std::ref(problem));
  CHECK_FALSE(opt.last_step().skipped);
  CHECK(opt.last_step().key != zotorch::step_key(0, 0));
  CHECK_FALSE(bitwise_equal(problem.params, before));
}

TEST_CASE("FZOO's step does not depend on the scale of the loss", "[fzoo]") {
  Quadratic small(torch::kDouble, 6), large(torch::kDouble, 6);
  zotorch::FZOO a(small.params, zotorch::FZOOOptions(1e-2).eps(1e-3));
  zotorch::FZOO b(large.params, zotorch::FZOOOptions(1e-2).eps(1e-3));
  for (int s = 0; s < 5; ++s) {
    a.step(std::ref(small));
    b.step([&] { return large() * 1000.0; });
  }
  for (size_t i = 0; i < small.params.size(); ++i) CHECK(torch::allclose(small.params[i], large.params[i], 0, 1e-12));
}
