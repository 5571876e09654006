// Convergence within a fixed forward-pass budget on two small real problems (least squares and
// logistic regression, 101 parameters), each method at the best lr of a small grid.
#include "optimizer_support.h"

#include <catch2/catch.hpp>

#include <iostream>

namespace {

constexpr int64_t kBudget = 3000;  // forward passes per run

struct Problem {
  torch::Tensor x, y;
  bool logistic;
  explicit Problem(bool is_logistic) : logistic(is_logistic) {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(2026);
    const int64_t d = 100;
    x = torch::randn({512, d}, gen) / std::sqrt(static_cast<double>(d));
    const auto w = torch::randn({d, 1}, gen);
    y = logistic ? (x.mm(w) > 0).to(torch::kFloat) : x.mm(w) + 0.1 * torch::randn({512, 1}, gen);
  }
  torch::Tensor loss(const torch::Tensor& w, const torch::Tensor& b) const {
    const auto out = x.mm(w) + b;
    return logistic ? torch::binary_cross_entropy_with_logits(out, y) : torch::mse_loss(out, y);
  }
};

/// Loss after each step, against the forward passes spent so far.
struct Curve {
  std::vector<std::pair<int64_t, double>> points;
  double initial = 0;
  double final_loss() const { return points.back().second; }
  /// Forward passes until the loss first fell to `target` (or -1).
  int64_t passes_to(double target) const {
    for (const auto& [passes, loss] : points) {
      if (loss <= target) return passes;
    }
    return -1;
  }
};

template <class Optimizer, class Options>
Curve run(const Problem& problem, const Options& options) {
  auto w = torch::zeros({100, 1}, torch::requires_grad());
  auto b = torch::zeros({1}, torch::requires_grad());
  Optimizer opt(std::vector<torch::Tensor>{w, b}, options);
  Curve curve;
  curve.initial = problem.loss(w, b).template item<double>();
  while (opt.forward_passes() < kBudget) {
    opt.step([&] { return problem.loss(w, b); });
    curve.points.emplace_back(opt.forward_passes(), problem.loss(w, b).template item<double>());
  }
  return curve;
}

template <class Optimizer, class Options>
Curve best_of(const Problem& problem, const std::vector<Options>& grid) {
  Curve best;
  for (const auto& options : grid) {
    Curve curve = run<Optimizer>(problem, options);
    if (best.points.empty() || curve.final_loss() < best.final_loss()) best = curve;
  }
  return best;
}

struct Outcome {
  Curve mezo, fzoo, adamezo;
};

Outcome compare(const Problem& problem) {
  Outcome out;
  out.mezo = best_of<zotorch::MeZO>(problem, std::vector<zotorch::MeZOOptions>{
                                                 zotorch::MeZOOptions(0.1), zotorch::MeZOOptions(0.2), zotorch::MeZOOptions(0.8)});
  out.fzoo = best_of<zotorch::FZOO>(problem, std::vector<zotorch::FZOOOptions>{
                                                 zotorch::FZOOOptions(0.03), zotorch::FZOOOptions(0.1), zotorch::FZOOOptions(0.3)});
  out.adamezo = best_of<zotorch::AdaMeZO>(
      problem, std::vector<zotorch::AdaMeZOOptions>{zotorch::AdaMeZOOptions(1e-4), zotorch::AdaMeZOOptions(3e-4),
                                                    zotorch::AdaMeZOOptions(1e-3)});
  const double target = out.mezo.final_loss();
  std::cout << (problem.logistic ? "logistic regression" : "least squares") << ": initial " << out.mezo.initial
            << ", final after " << kBudget << " forward passes: MeZO " << target << ", FZOO " << out.fzoo.final_loss()
            << ", AdaMeZO " << out.adamezo.final_loss() << "; forward passes to reach MeZO's final loss: FZOO "
            << out.fzoo.passes_to(target) << ", AdaMeZO " << out.adamezo.passes_to(target) << "\n";
  return out;
}

}  // namespace

TEST_CASE("all three optimizers fit least squares within a forward-pass budget", "[convergence]") {
  const Outcome out = compare(Problem(false));
  CHECK(out.mezo.final_loss() < 0.05 * out.mezo.initial);
  CHECK(out.fzoo.final_loss() < 0.05 * out.fzoo.initial);
  CHECK(out.adamezo.final_loss() < 0.05 * out.adamezo.initial);
}

TEST_CASE("FZOO reaches MeZO's logistic-regression loss in half of MeZO's forward passes", "[convergence]") {
  const Outcome out = compare(Problem(true));
  CHECK(out.mezo.final_loss() < 0.5 * out.mezo.initial);
  CHECK(out.adamezo.final_loss() < 0.5 * out.adamezo.initial);
  const int64_t fzoo_passes = out.fzoo.passes_to(out.mezo.final_loss());
  CHECK(fzoo_passes > 0);
  CHECK(fzoo_passes <= kBudget / 2);
}
