// MeZO reproduced from scratch: the step recomputed with plain ATen ops on directions
// materialised by zotorch::noise, per dtype, and stochastic rounding checked in expectation.
#include "optimizer_support.h"

#include <catch2/catch.hpp>

using namespace zotorch_test;

namespace {

/// One sweep's arithmetic in the accumulation type: round(keep·x + coefficient·z) to the parameter dtype.
torch::Tensor sweep_like_kernel(const torch::Tensor& x, const torch::Tensor& z, double coefficient, double keep,
                                torch::Dtype acc) {
  const auto acc_scalar = [&](double v) { return acc == torch::kFloat ? static_cast<double>(static_cast<float>(v)) : v; };
  auto xa = x.to(acc);
  auto scaled_x = keep == 1.0 ? xa : xa.mul(acc_scalar(keep));
  return scaled_x.add(z.mul(acc_scalar(coefficient))).to(x.scalar_type());
}

}  // namespace

TEST_CASE("MeZO's step equals the SPSA formula recomputed from zotorch::noise", "[mezo][formula]") {
  for (const auto dtype : {torch::kFloat, torch::kDouble, torch::kBFloat16}) {
    DYNAMIC_SECTION("dtype " << dtype) {
      const auto acc = dtype == torch::kDouble ? torch::kDouble : torch::kFloat;
      const double lr = 1e-2, eps = 1e-3, weight_decay = 0.1;
      Quadratic problem(dtype, 31);
      const auto theta0 = snapshot(problem.params);
      zotorch::MeZO opt(problem.params,
                        zotorch::MeZOOptions(lr).eps(eps).weight_decay(weight_decay).seed(77).stochastic_rounding(false));
      const double returned = opt.step(std::ref(problem)).item<double>();
      const zotorch::StepReport& report = opt.last_step();
      CHECK(report.key == zotorch::step_key(77, 0));

      std::vector<torch::Tensor> z, plus, minus, expected;
      for (size_t i = 0; i < theta0.size(); ++i) {
        z.push_back(zotorch::noise(report.key, static_cast<int64_t>(i), 0, theta0[i].sizes(), zotorch::Distribution::Gaussian,
                                   torch::TensorOptions().dtype(acc)));
        plus.push_back(sweep_like_kernel(theta0[i], z[i], +eps, 1.0, acc));  // 1. θ + εz
        // 2. θ − εz in one sweep that rounds the restore −εz first, then adds −εz (docs/numerics.md
        // "Fused transitions"): the bits of a restore sweep followed by a perturb sweep.
        minus.push_back(sweep_like_kernel(sweep_like_kernel(plus[i], z[i], -eps, 1.0, acc), z[i], -eps, 1.0, acc));
      }
      const double loss_plus = problem.loss_at(plus).item<double>();
      const double loss_minus = problem.loss_at(minus).item<double>();
      REQUIRE(report.losses.size() == 2);
      CHECK(report.losses[0] == loss_plus);
      CHECK(report.losses[1] == loss_minus);
      const double g = (loss_plus - loss_minus) / (2 * eps);  // 3. projected gradient
      CHECK(report.coefficients.at(0) == g);
      CHECK(returned == Approx((loss_plus + loss_minus) / 2).epsilon(1e-12));
      for (size_t i = 0; i < theta0.size(); ++i) {
        // 4. θ ← θ + εz − η(g·z + λθ) in one sweep: θ' = round(θ− + εz) first, then keep·θ' − ηg·z
        // with keep = 1 − ηλ.
        const double keep = 1.0 - lr * weight_decay;
        const auto restored = sweep_like_kernel(minus[i], z[i], eps, 1.0, acc);
        expected.push_back(sweep_like_kernel(restored, z[i], lr * -g, keep, acc));
      }
      CHECK(bitwise_equal(problem.params, expected));
    }
  }
}

TEST_CASE("n-SPSA MeZO averages num_samples directions in one update sweep", "[mezo][formula]") {
  const double lr = 1e-2, eps = std::ldexp(1.0, -10);
  const int64_t n = 3;
  Quadratic problem(torch::kDouble, 40);
  const auto theta0 = snapshot(problem.params);
  zotorch::MeZO opt(problem.params, zotorch::MeZOOptions(lr).eps(eps).num_samples(n).seed(5));
  opt.step(std::ref(problem));
  const auto& report = opt.last_step();
  CHECK(report.forward_passes == 2 * n);
  CHECK(report.sweeps == 2 * n + 1);
  REQUIRE(report.coefficients.size() == static_cast<size_t>(n));
  for (int64_t k = 0; k < n; ++k) {
    std::vector<torch::Tensor> plus, minus;
    for (size_t i = 0; i < theta0.size(); ++i) {
      auto z = zotorch::noise(report.key, static_cast<int64_t>(i), k, theta0[i].sizes(), zotorch::Distribution::Gaussian,
                              torch::TensorOptions().dtype(torch::kDouble));
      plus.push_back(theta0[i] + eps * z);
      minus.push_back(theta0[i] - eps * z);
    }
    const double g = (problem.loss_at(plus).item<double>() - problem.loss_at(minus).item<double>()) / (2 * eps);
    CHECK(report.coefficients[k] == Approx(g).epsilon(1e-9));
  }
  for (size_t i = 0; i < theta0.size(); ++i) {
    auto expected = theta0[i].clone();
    for (int64_t k = 0; k < n; ++k) {
      expected -= lr * report.coefficients[k] / n *
                  zotorch::noise(report.key, static_cast<int64_t>(i), k, theta0[i].sizes(), zotorch::Distribution::Gaussian,
                                 torch::TensorOptions().dtype(torch::kDouble));
    }
    CHECK(torch::allclose(problem.params[i], expected, 0, 1e-14));
  }
}

TEST_CASE("stochastic rounding keeps sub-ulp MeZO updates of 16-bit parameters in expectation", "[mezo][rounding]") {
  // With L(θ) = Σ z·θ / n along the step's own Rademacher direction z, g = 1 and the exact update is
  // −lr·z: a tenth of an ulp. Round-to-nearest loses it; stochastic rounding keeps it on average.
  for (const auto dtype : {torch::kBFloat16, torch::kHalf}) {
    const int64_t n = 1 << 17;
    const double ulp = dtype == torch::kBFloat16 ? std::ldexp(1.0, -8) : std::ldexp(1.0, -11);  // in [0.5, 1)
    const double lr = 0.1 * ulp;
    const uint64_t seed = 3;
    const auto z = zotorch::noise(zotorch::step_key(seed, 0), 0, 0, {n}, zotorch::Distribution::Rademacher,
                                  torch::TensorOptions().dtype(torch::kDouble));
    for (const bool stochastic : {false, true}) {
      DYNAMIC_SECTION(torch::toString(dtype) << (stochastic ? " stochastic" : " nearest")) {
        auto theta = (torch::arange(n, torch::kDouble).remainder(64) / 128 + 0.5).to(dtype).requires_grad_(true);
        const auto theta0 = theta.detach().to(torch::kDouble);
        zotorch::MeZO opt({theta}, zotorch::MeZOOptions(lr)
                                       .eps(std::ldexp(1.0, -6))  // a multiple of the ulp: perturbations are exact
                                       .seed(seed)
                                       .distribution(zotorch::Distribution::Rademacher)
                                       .stochastic_rounding(stochastic));
        opt.step([&] { return (theta.to(torch::kDouble) * z).sum() / n; });
        REQUIRE(opt.last_step().coefficients.at(0) == Approx(1.0).epsilon(1e-9));
        // Mean applied update along z, in units of the exact one (−lr·z): 1 if unbiased, 0 if lost.
        const double kept = ((theta.to(torch::kDouble) - theta0) * z).mean().item<double>() / -lr;
        if (stochastic) {
          CHECK(kept == Approx(1.0).margin(0.08));
        } else {
          CHECK(std::abs(kept) < 1e-12);
        }
      }
    }
  }
}
