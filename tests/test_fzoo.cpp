// FZOO reproduced from scratch: losses, σ, coefficients and the update recomputed from
// zotorch::noise; the σ guard; invariance of the step to the loss scale.
#include "optimizer_support.h"

#include <catch2/catch.hpp>

using namespace zotorch_test;

TEST_CASE("FZOO's step equals the normalised one-sided formula recomputed from zotorch::noise, within 1e-14 in float64, 1e-6 in float32 and half an ulp in bfloat16", "[fzoo][formula]") {
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
        if (dtype != torch::kBFloat16) {
          CHECK(torch::allclose(problem.params[t].to(torch::kDouble), expected, 0, dtype == torch::kFloat ? 1e-6 : 1e-14));
          continue;
        }
        // bfloat16 without stochastic rounding: the update is computed in float32 and rounded to
        // nearest once (docs/numerics.md "Rounding back to 16 bits"), so each element lies within
        // half a bfloat16 ulp (8 significant bits) of the exact value, plus float32's own rounding
        // (2^-20 relative). The same bound applied to an update of half the size must fail on
        // some element by a margin, so that this test would catch an update halved.
        const auto actual = problem.params[t].to(torch::kDouble).contiguous();
        const auto exact = expected.contiguous();
        const auto start = theta0[t].to(torch::kDouble).contiguous();
        double worst = 0, worst_if_halved = 0;  // in units of the per-element bound
        for (int64_t k = 0; k < exact.numel(); ++k) {
          const double x = exact.data_ptr<double>()[k];
          const double half_ulp = x == 0 ? 0 : std::ldexp(1.0, std::ilogb(x) - 8);
          const double bound = std::max(half_ulp + std::abs(x) * std::ldexp(1.0, -20), 1e-300);
          const double halved = start.data_ptr<double>()[k] + (x - start.data_ptr<double>()[k]) / 2;
          worst = std::max(worst, std::abs(actual.data_ptr<double>()[k] - x) / bound);
          worst_if_halved = std::max(worst_if_halved, std::abs(halved - x) / bound);
        }
        INFO("tensor " << t << ": error " << worst << " bounds, a halved update would be " << worst_if_halved << " bounds away");
        CHECK(worst <= 1.0);
        CHECK(worst_if_halved > 2.0);  // rounding a halved update moves it by at most one bound
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
