// AdaMeZO reproduced from scratch: MeZO warm-up, then moments rebuilt from the window of
// (key, g) pairs with directions from zotorch::noise, per the released code's update.
#include "optimizer_support.h"

#include <catch2/catch.hpp>

using namespace zotorch_test;

TEST_CASE("AdaMeZO's first window + 1 steps are MeZO's steps", "[adamezo]") {
  const int64_t window = 3;
  Quadratic ada(torch::kFloat, 17), mezo(torch::kFloat, 17);
  zotorch::AdaMeZO a(ada.params, zotorch::AdaMeZOOptions(1e-3).eps(1e-3).window(window).seed(4));
  zotorch::MeZO m(mezo.params, zotorch::MeZOOptions(1e-3).eps(1e-3).seed(4));
  for (int64_t s = 0; s < window + 1; ++s) {
    a.step(std::ref(ada));
    m.step(std::ref(mezo));
    CHECK(bitwise_equal(ada.params, mezo.params));
  }
  a.step(std::ref(ada));
  m.step(std::ref(mezo));
  CHECK_FALSE(bitwise_equal(ada.params, mezo.params));
  CHECK(a.last_step().sweeps == 3);
}

TEST_CASE("AdaMeZO's windowed step equals the moment formula recomputed from zotorch::noise", "[adamezo][formula]") {
  for (const auto dtype : {torch::kFloat, torch::kDouble}) {
    DYNAMIC_SECTION("dtype " << dtype) {
      const int64_t window = 4;
      const double lr = 1e-4, eps = 1e-3, beta1 = 0.7, beta2 = 0.9, scale = 100, stab = 1e-5, weight_decay = 0.01;
      Quadratic problem(dtype, 23);
      zotorch::AdaMeZO opt(problem.params, zotorch::AdaMeZOOptions(lr)
                                               .eps(eps)
                                               .window(window)
                                               .beta1(beta1)
                                               .beta2(beta2)
                                               .weight_decay(weight_decay)
                                               .seed(8));
      std::vector<uint64_t> keys;
      std::vector<double> gradients;
      for (int64_t s = 0; s < window + 3; ++s) {
        const auto before = snapshot(problem.params);
        opt.step(std::ref(problem));
        keys.push_back(opt.last_step().key);
        gradients.push_back(opt.last_step().coefficients.at(0));
        if (s < window + 1) continue;  // warm-up
        for (size_t t = 0; t < before.size(); ++t) {
          auto m = torch::zeros(before[t].sizes(), torch::kDouble), v = torch::zeros(before[t].sizes(), torch::kDouble);
          for (int64_t k = 0; k < window; ++k) {
            const size_t back = keys.size() - 1 - static_cast<size_t>(k);
            auto z = zotorch::noise(keys[back], static_cast<int64_t>(t), 0, before[t].sizes(), zotorch::Distribution::Gaussian,
                                    torch::TensorOptions().dtype(torch::kDouble));
            m += std::pow(beta1, k) * gradients[back] * z;
            v += std::pow(beta2, k) * gradients[back] * gradients[back] * z * z;
          }
          const auto theta = before[t].to(torch::kDouble);
          const auto expected = theta - lr * (scale * m / (v.sqrt() + stab) + weight_decay * theta);
          const double tolerance = dtype == torch::kFloat ? 2e-6 : 1e-12;
          INFO("max deviation " << (problem.params[t].to(torch::kDouble) - expected).abs().max().item<double>());
          CHECK(torch::allclose(problem.params[t].to(torch::kDouble), expected, 0, tolerance));
        }
      }
    }
  }
}

TEST_CASE("AdaMeZO keeps only scalars: its state is the window of (key, g) pairs", "[adamezo]") {
  Quadratic problem(torch::kFloat, 1);
  zotorch::AdaMeZO opt(problem.params, zotorch::AdaMeZOOptions(1e-4).window(5));
  for (int s = 0; s < 9; ++s) opt.step(std::ref(problem));
  REQUIRE(opt.state().size() == 1);
  const auto& state = static_cast<const zotorch::AdaMeZOParamState&>(*opt.state().begin()->second);
  CHECK(state.window_keys().size() == 5);
  CHECK(state.window_gradients().size() == 5);
  CHECK(static_cast<uint64_t>(state.window_keys().back()) == opt.last_step().key);
  CHECK(state.updates() == 9);
}

TEST_CASE("AdaMeZO with beta2 = 0 is the released code's momentum variant: θ − lr·scale·m/(1 + stab)", "[adamezo][formula]") {
  const int64_t window = 3;
  const double lr = 1e-4, eps = 1e-3, beta1 = 0.7, scale = 100, stab = 1e-5;
  Quadratic problem(torch::kDouble, 29);
  zotorch::AdaMeZO opt(problem.params,
                       zotorch::AdaMeZOOptions(lr).eps(eps).window(window).beta1(beta1).beta2(0).seed(12));
  std::vector<uint64_t> keys;
  std::vector<double> gradients;
  for (int64_t s = 0; s < window + 3; ++s) {
    const auto before = snapshot(problem.params);
    opt.step(std::ref(problem));
    keys.push_back(opt.last_step().key);
    gradients.push_back(opt.last_step().coefficients.at(0));
    if (s < window + 1) continue;  // warm-up
    for (size_t t = 0; t < before.size(); ++t) {
      auto m = torch::zeros(before[t].sizes(), torch::kDouble);
      for (int64_t k = 0; k < window; ++k) {
        const size_t back = keys.size() - 1 - static_cast<size_t>(k);
        m += std::pow(beta1, k) * gradients[back] *
             zotorch::noise(keys[back], static_cast<int64_t>(t), 0, before[t].sizes(), zotorch::Distribution::Gaussian,
                            torch::TensorOptions().dtype(torch::kDouble));
      }
      const auto expected = before[t] - lr * scale * m / (1 + stab);
      INFO("max deviation " << (problem.params[t].detach() - expected).abs().max().item<double>());
      CHECK(torch::allclose(problem.params[t].detach(), expected, 0, 1e-12));
    }
  }
}

TEST_CASE("AdaMeZO refuses window 1, saying it would be sign-SGD and pointing to MeZO", "[adamezo][errors]") {
  auto p = torch::zeros({4}, torch::requires_grad());
  CHECK_THROWS_WITH(zotorch::AdaMeZO({p}, zotorch::AdaMeZOOptions(1e-3).window(1)),
                    Catch::Contains("window must be in [2, 64], got 1") && Catch::Contains("sign-SGD") &&
                        Catch::Contains("zotorch::MeZO"));
  CHECK_NOTHROW(zotorch::AdaMeZO({p}, zotorch::AdaMeZOOptions(1e-3).window(2)));
}
