// Behaviour all three optimizers share through zo_optimizer.h: counting, exception safety,
// the non-finite policy, resume, schedulers, param groups and the errors for bad input.
#include "cuda_presence.h"
#include "optimizer_support.h"

#include <catch2/catch.hpp>

#include <sstream>
#include <stdexcept>

using namespace zotorch_test;

namespace {

/// Tolerance after perturbations were undone: one float32 rounding (half an ulp) per sweep of the
/// largest intermediate value |θ| + 2ε·max|z| (Gaussian |z| < 6 by construction).
bool restored(const std::vector<torch::Tensor>& now, const std::vector<torch::Tensor>& before, double eps, bool exact,
              int sweeps = 3) {
  if (exact) return bitwise_equal(now, before);
  for (size_t i = 0; i < now.size(); ++i) {
    auto bound = (before[i].abs() + 2 * eps * 6.0) * (sweeps * std::ldexp(1.0, -24));
    if (((now[i] - before[i]).abs() > bound).any().item<bool>()) return false;
  }
  return true;
}

}  // namespace

TEMPLATE_TEST_CASE("optimizers count forward passes and sweeps per step", "[optimizer]", zotorch::FZOO, zotorch::MeZO,
                   zotorch::AdaMeZO) {
  Quadratic problem(torch::kFloat, 1);
  TestType opt(problem.params, Make<TestType>::options(1e-3, 1e-3, 7));
  for (int s = 0; s < 5; ++s) {  // past AdaMeZO's warm-up (window 2 → 3 plain steps)
    opt.step(std::ref(problem));
    CHECK(opt.last_step().forward_passes == Make<TestType>::kForwardPasses);
    CHECK(opt.last_step().sweeps == Make<TestType>::kSweeps);
  }
  CHECK(problem.calls == 5 * Make<TestType>::kForwardPasses);
  CHECK(opt.forward_passes() == problem.calls);
  CHECK(opt.steps() == 5);
  CHECK(opt.skipped_steps() == 0);
}

TEMPLATE_TEST_CASE("optimizers restore parameters when the closure throws at any call", "[optimizer][safety]",
                   zotorch::FZOO, zotorch::MeZO, zotorch::AdaMeZO) {
  const double eps = std::ldexp(1.0, -10);
  const bool exact = restore_ulps<TestType>() == 0;
  for (int64_t position = 1; position <= Make<TestType>::kForwardPasses; ++position) {
    DYNAMIC_SECTION("closure throws at call " << position) {
      Quadratic problem(torch::kFloat, 2);
      Quadratic reference(torch::kFloat, 2);
      // Warm-up steps with lr 0 keep the values on the grid (so FZOO's ±2^-10 offsets stay exact)
      // and bring AdaMeZO to its windowed update.
      TestType opt(problem.params, Make<TestType>::options(0.0, eps, 3));
      TestType clean(reference.params, Make<TestType>::options(0.0, eps, 3));
      for (int s = 0; s < 4; ++s) {
        opt.step(std::ref(problem));
        clean.step(std::ref(reference));
      }
      opt.param_groups()[0].options().set_lr(1e-3);
      clean.param_groups()[0].options().set_lr(1e-3);
      const auto before = snapshot(problem.params);
      const int64_t steps = opt.steps(), passes = opt.forward_passes();
      int64_t call = 0;
      auto failing = [&] {
        if (++call == position) throw std::runtime_error("data loader failed");
        return problem();
      };
      CHECK_THROWS_WITH(opt.step(failing), Catch::Contains("data loader failed"));
      CHECK(restored(problem.params, before, eps, exact));
      CHECK(opt.steps() == steps);
      CHECK(opt.forward_passes() == passes);
      if (exact) {
        // A retry continues the run as if the failure never happened.
        opt.step(std::ref(problem));
        clean.step(std::ref(reference));
        CHECK(bitwise_equal(problem.params, reference.params));
      }
    }
  }
}

TEST_CASE("a Rademacher MeZO step aborted at each call restores parameters bit for bit", "[optimizer][safety]") {
  const double eps = std::ldexp(1.0, -10);
  for (int position = 1; position <= 2; ++position) {
    Quadratic problem(torch::kFloat, 5);
    zotorch::MeZO opt(problem.params, zotorch::MeZOOptions(1e-3).eps(eps).distribution(zotorch::Distribution::Rademacher));
    const auto before = snapshot(problem.params);
    int call = 0;
    CHECK_THROWS(opt.step([&] {
      if (++call == position) throw std::runtime_error("boom");
      return problem();
    }));
    CHECK(bitwise_equal(problem.params, before));
  }
}

TEMPLATE_TEST_CASE("optimizers skip a step whose loss is not finite, or throw on request", "[optimizer][safety]",
                   zotorch::FZOO, zotorch::MeZO, zotorch::AdaMeZO) {
  const double eps = std::ldexp(1.0, -10);
  const bool exact = restore_ulps<TestType>() == 0;
  for (const double bad : {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity()}) {
    Quadratic problem(torch::kFloat, 4);
    TestType opt(problem.params, Make<TestType>::options(1e-3, eps, 1));
    const auto before = snapshot(problem.params);
    int64_t call = 0;
    auto poisoned = [&] {
      auto loss = problem();
      return ++call == 2 ? torch::full({}, bad, torch::kDouble) : loss;
    };
    opt.step(poisoned);
    CHECK(opt.last_step().skipped);
    CHECK(opt.skipped_steps() == 1);
    CHECK(opt.steps() == 1);
    CHECK(restored(problem.params, before, eps, exact));

    auto options = Make<TestType>::options(1e-3, eps, 1);
    options.on_nonfinite(zotorch::NonFinite::Throw);
    TestType strict(problem.params, options);
    call = 0;
    const auto before_strict = snapshot(problem.params);
    CHECK_THROWS_WITH(strict.step(poisoned), Catch::Contains("non-finite loss") && Catch::Contains("restored"));
    CHECK(strict.steps() == 0);
    CHECK(strict.skipped_steps() == 0);
    CHECK(restored(problem.params, before_strict, eps, exact));
  }
}

TEMPLATE_TEST_CASE("optimizers resume bit-identically from a checkpoint", "[optimizer][serialize]", zotorch::FZOO,
                   zotorch::MeZO, zotorch::AdaMeZO) {
  const int steps = 8;
  Quadratic straight(torch::kFloat, 9);
  TestType full(straight.params, Make<TestType>::options(1e-3, 1e-3, 11));
  for (int s = 0; s < steps; ++s) full.step(std::ref(straight));

  Quadratic first_half(torch::kFloat, 9);
  std::stringstream checkpoint;
  std::vector<torch::Tensor> halfway;
  {
    TestType opt(first_half.params, Make<TestType>::options(1e-3, 1e-3, 11));
    for (int s = 0; s < steps / 2; ++s) opt.step(std::ref(first_half));
    torch::save(opt, checkpoint);
    halfway = snapshot(first_half.params);
  }
  // A fresh optimizer over a fresh copy of the model, built with other options: load restores them.
  Quadratic second_half(torch::kFloat, 9);
  {
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < halfway.size(); ++i) second_half.params[i].copy_(halfway[i]);
  }
  TestType resumed(second_half.params, Make<TestType>::options(0.5, 0.25, 999));
  torch::load(resumed, checkpoint);
  CHECK(resumed.steps() == steps / 2);
  CHECK(resumed.forward_passes() == steps / 2 * Make<TestType>::kForwardPasses);
  for (int s = 0; s < steps / 2; ++s) resumed.step(std::ref(second_half));
  CHECK(bitwise_equal(second_half.params, straight.params));
  CHECK(resumed.forward_passes() == full.forward_passes());
}

TEMPLATE_TEST_CASE("a damaged checkpoint is refused and leaves the optimizer unchanged", "[optimizer][serialize]",
                   zotorch::FZOO, zotorch::MeZO, zotorch::AdaMeZO) {
  Quadratic problem(torch::kFloat, 12);
  TestType opt(problem.params, Make<TestType>::options(1e-3, 1e-3, 5));
  for (int s = 0; s < 4; ++s) opt.step(std::ref(problem));
  std::stringstream good;
  torch::save(opt, good);
  const std::string bytes = good.str();

  Quadratic reference(torch::kFloat, 12);
  TestType clean(reference.params, Make<TestType>::options(1e-3, 1e-3, 5));
  for (int s = 0; s < 4; ++s) clean.step(std::ref(reference));

  for (const size_t keep : {size_t{0}, size_t{16}, bytes.size() / 2, bytes.size() - 7}) {
    std::stringstream truncated(bytes.substr(0, keep));
    CHECK_THROWS(torch::load(opt, truncated));
    CHECK(opt.steps() == 4);
  }
  // Still the same run.
  opt.step(std::ref(problem));
  clean.step(std::ref(reference));
  CHECK(bitwise_equal(problem.params, reference.params));
}

TEMPLATE_TEST_CASE("a LibTorch scheduler changes the step size through the options' lr", "[optimizer]", zotorch::FZOO,
                   zotorch::MeZO, zotorch::AdaMeZO) {
  Quadratic problem(torch::kFloat, 3);
  TestType opt(problem.params, Make<TestType>::options(1e-2, 1e-3, 1));
  auto sgd_param = torch::zeros({1}, torch::requires_grad());
  torch::optim::SGD sgd({sgd_param}, torch::optim::SGDOptions(1e-2));
  torch::optim::StepLR scheduler(opt, /*step_size=*/2, /*gamma=*/0.5);
  torch::optim::StepLR sgd_scheduler(sgd, /*step_size=*/2, /*gamma=*/0.5);
  for (int s = 0; s < 7; ++s) {
    opt.step(std::ref(problem));
    scheduler.step();
    sgd_scheduler.step();
    CHECK(opt.param_groups()[0].options().get_lr() == sgd.param_groups()[0].options().get_lr());
  }
  CHECK(opt.param_groups()[0].options().get_lr() < 1e-2 / 4);

  // lr = 0 in a group leaves that group's parameters where they were.
  Quadratic frozen(torch::kFloat, 3);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(std::vector<torch::Tensor>{frozen.params[0]}, std::make_unique<decltype(Make<TestType>::options(0, 0, 0))>(Make<TestType>::options(1e-2, std::ldexp(1.0, -10), 1)));
  groups.emplace_back(std::vector<torch::Tensor>{frozen.params[1], frozen.params[2]},
                      std::make_unique<decltype(Make<TestType>::options(0, 0, 0))>(Make<TestType>::options(0.0, std::ldexp(1.0, -10), 1)));
  TestType grouped(groups, Make<TestType>::options(1e-2, std::ldexp(1.0, -10), 1));
  const auto before = snapshot(frozen.params);
  for (int s = 0; s < 3; ++s) grouped.step(std::ref(frozen));
  CHECK_FALSE(torch::equal(frozen.params[0], before[0]));
  const double eps = std::ldexp(1.0, -10);
  CHECK(restored({frozen.params[1], frozen.params[2]}, {before[1], before[2]}, eps, restore_ulps<TestType>() == 0,
                 3 * Make<TestType>::kSweeps));
}

TEST_CASE("bad options are refused with messages naming the option", "[optimizer][errors]") {
  auto p = torch::zeros({4}, torch::requires_grad());
  CHECK_THROWS_WITH(zotorch::FZOO({p}, zotorch::FZOOOptions(1e-3).eps(0)), Catch::Contains("eps must be"));
  CHECK_THROWS_WITH(zotorch::FZOO({p}, zotorch::FZOOOptions(-1)), Catch::Contains("lr must be"));
  CHECK_THROWS_WITH(zotorch::FZOO({p}, zotorch::FZOOOptions(1e-3).num_perturbations(1)),
                    Catch::Contains("num_perturbations must be"));
  CHECK_THROWS_WITH(zotorch::MeZO({p}, zotorch::MeZOOptions(1e-3).eps(-1e-3)), Catch::Contains("eps must be"));
  CHECK_THROWS_WITH(zotorch::MeZO({p}, zotorch::MeZOOptions(1e-3).num_samples(0)), Catch::Contains("num_samples"));
  CHECK_THROWS_WITH(zotorch::AdaMeZO({p}, zotorch::AdaMeZOOptions(1e-3).window(0)), Catch::Contains("window must be"));
  CHECK_THROWS_WITH(zotorch::AdaMeZO({p}, zotorch::AdaMeZOOptions(1e-3).beta1(1.0)), Catch::Contains("beta1 must be"));
  CHECK_THROWS_WITH(zotorch::AdaMeZO({p}, zotorch::AdaMeZOOptions(1e-3).beta2(-0.1)), Catch::Contains("beta2 must be"));
  CHECK_THROWS_WITH(zotorch::FZOO(std::vector<torch::Tensor>{}, zotorch::FZOOOptions()), Catch::Contains("no parameters"));

  // An option changed after construction is checked before anything is touched.
  zotorch::FZOO opt({p}, zotorch::FZOOOptions(1e-3));
  static_cast<zotorch::FZOOOptions&>(opt.param_groups()[0].options()).eps(0);
  CHECK_THROWS_WITH(opt.step([&] { return p.sum(); }), Catch::Contains("eps must be"));
  CHECK(torch::equal(p, torch::zeros({4})));
}

TEST_CASE("parameters that cannot be swept in place are refused, naming the parameter", "[optimizer][errors]") {
  // include_frozen: an integer tensor cannot require grad, and only swept tensors are checked.
  const auto all = zotorch::MeZOOptions().include_frozen(true);
  auto good = torch::zeros({4});
  CHECK_THROWS_WITH(zotorch::MeZO({good, torch::zeros({4}, torch::kInt)}, all),
                    Catch::Contains("parameter 1") && Catch::Contains("dtype"));
  CHECK_THROWS_WITH(zotorch::MeZO({good, torch::zeros({4, 4}).t()}, all),
                    Catch::Contains("parameter 1") && Catch::Contains("contiguous"));
  CHECK_THROWS_WITH(zotorch::MeZO({good, torch::zeros({4, 4}).to_sparse()}, all),
                    Catch::Contains("parameter 1") && Catch::Contains("layout"));
  CHECK_THROWS_WITH(zotorch::MeZO({good, torch::zeros({4}, torch::Device(torch::kMeta))}, all),
                    Catch::Contains("parameter 1"));
  CHECK_THROWS_WITH(zotorch::MeZO({good, good}, all), Catch::Contains("appears twice"));
  // A frozen tensor is never swept, so it may be of any dtype.
  CHECK_NOTHROW(zotorch::MeZO({torch::zeros({4}, torch::requires_grad()), torch::zeros({4}, torch::kInt)},
                              zotorch::MeZOOptions()));
}

TEMPLATE_TEST_CASE("a bad closure gets a clear error and the parameters back", "[optimizer][errors]", zotorch::FZOO,
                   zotorch::MeZO, zotorch::AdaMeZO) {
  const double eps = std::ldexp(1.0, -10);
  Quadratic problem(torch::kFloat, 8);
  TestType opt(problem.params, Make<TestType>::options(1e-3, eps, 1));
  const auto before = snapshot(problem.params);
  CHECK_THROWS_WITH(opt.step(nullptr), Catch::Contains("needs a closure"));
  CHECK_THROWS_WITH(opt.step([&] { return problem().expand({3}); }), Catch::Contains("scalar loss"));
  CHECK_THROWS_WITH(opt.step([&] { return problem().to(torch::kLong); }), Catch::Contains("floating-point"));
  CHECK_THROWS_WITH(opt.step([&] { return torch::Tensor(); }), Catch::Contains("undefined"));
  CHECK(restored(problem.params, before, eps, restore_ulps<TestType>() == 0));
  CHECK(opt.steps() == 0);

  // A loss that requires grad is accepted; no graph survives the step.
  auto weight = torch::ones({}, torch::requires_grad());
  auto loss = opt.step([&] {
    torch::AutoGradMode enable(true);
    return problem() * weight;
  });
  CHECK_FALSE(loss.requires_grad());
  CHECK(opt.steps() == 1);
}

TEST_CASE("split_weight_decay exempts biases and norms, or what a predicate says", "[optimizer]") {
  struct Block : torch::nn::Module {
    Block() {
      register_module("proj", torch::nn::Linear(4, 3));
      register_module("layer_norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({3})));
    }
  };
  auto model = std::make_shared<Block>();
  auto groups = zotorch::split_weight_decay(model->named_parameters(), zotorch::MeZOOptions(1e-3).weight_decay(0.1));
  REQUIRE(groups.size() == 2);
  CHECK(groups[0].params().size() == 1);  // the linear weight
  CHECK(static_cast<zotorch::MeZOOptions&>(groups[0].options()).weight_decay() == 0.1);
  CHECK(groups[1].params().size() == 3);  // linear bias, layer norm weight and bias
  CHECK(static_cast<zotorch::MeZOOptions&>(groups[1].options()).weight_decay() == 0);
  auto custom = zotorch::split_weight_decay(model->named_parameters(), zotorch::FZOOOptions(1e-3).weight_decay(0.1),
                                            [](const std::string& name) { return name.rfind("proj.", 0) == 0; });
  CHECK(custom[0].params().size() == 2);
  zotorch::MeZO opt(groups, zotorch::MeZOOptions(1e-3));
  CHECK(opt.param_groups().size() == 2);
}

TEST_CASE("per-step options must agree across param groups", "[optimizer][errors]") {
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(std::vector<torch::Tensor>{torch::zeros({2})}, std::make_unique<zotorch::FZOOOptions>(zotorch::FZOOOptions(1e-3).eps(1e-3)));
  groups.emplace_back(std::vector<torch::Tensor>{torch::zeros({2})}, std::make_unique<zotorch::FZOOOptions>(zotorch::FZOOOptions(1e-2).eps(1e-2)));
  CHECK_THROWS_WITH(zotorch::FZOO(groups, zotorch::FZOOOptions()), Catch::Contains("eps must be the same in every param group"));
}

TEST_CASE("FZOO's first 5 steps on a CUDA device equal the CPU's within rtol 1e-5 and atol 1e-6", "[optimizer][cuda]") {
  ZOTORCH_REQUIRE_CUDA();
  Quadratic cpu(torch::kFloat, 21);
  Quadratic gpu(torch::kFloat, 21);
  for (auto& p : gpu.params) p = p.cuda();
  for (auto& t : gpu.targets) t = t.cuda();
  zotorch::FZOO a(cpu.params, zotorch::FZOOOptions(1e-2).eps(std::ldexp(1.0, -10)));
  zotorch::FZOO b(gpu.params, zotorch::FZOOOptions(1e-2).eps(std::ldexp(1.0, -10)));
  for (int s = 0; s < 5; ++s) {
    a.step(std::ref(cpu));
    b.step(std::ref(gpu));
  }
  for (size_t i = 0; i < cpu.params.size(); ++i) CHECK(torch::allclose(cpu.params[i], gpu.params[i].cpu(), 1e-5, 1e-6));
}
