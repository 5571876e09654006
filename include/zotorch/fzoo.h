// FZOO (Dang et al., ICLR 2026): N one-sided Rademacher probes per step, the step normalised by
// the standard deviation of their losses. Reads top to bottom like docs/algorithms.md "FZOO".
#pragma once

#include <zotorch/zo_optimizer.h>

#include <cmath>

namespace zotorch {

/// Options of zotorch::FZOO. Note: the update is not divided by ε, so this lr equals the
/// paper's η/ε; it is a step length, typically 10-100× MeZO's lr (docs/algorithms.md "FZOO").
struct FZOOOptions : public torch::optim::OptimizerCloneableOptions<FZOOOptions> {
  FZOOOptions(double lr = 1e-5) : lr_(lr) {}  // NOLINT: implicit from lr, as LibTorch's options
  TORCH_ARG(double, lr) = 1e-5;
  /// Perturbation scale ε.
  TORCH_ARG(double, eps) = 1e-3;
  /// Decoupled weight decay λ (off by default, as in the paper).
  TORCH_ARG(double, weight_decay) = 0;
  /// N: Rademacher directions per step (N + 1 forward passes).
  TORCH_ARG(int64_t, num_perturbations) = 8;
  /// The step is skipped when σ ≤ sigma_floor·|l_0| (flat loss: no direction information).
  TORCH_ARG(double, sigma_floor) = 1e-12;
  /// Seed of the direction stream; with the step counter it fixes every direction.
  TORCH_ARG(uint64_t, seed) = 0;
  /// Unbiased rounding of float16/bfloat16 parameters (no effect on float32/float64).
  TORCH_ARG(bool, stochastic_rounding) = true;
  TORCH_ARG(NonFinite, on_nonfinite) = NonFinite::Skip;
  /// Also perturb and update parameters with requires_grad() == false, which are frozen (skipped)
  /// by default (docs/optimizers.md "Frozen parameters").
  TORCH_ARG(bool, include_frozen) = false;

 public:
  void serialize(torch::serialize::OutputArchive& archive) const override {
    detail::write_common_options(*this, archive);
    archive.write("num_perturbations", c10::IValue(num_perturbations()));
    archive.write("sigma_floor", c10::IValue(sigma_floor()));
  }
  void serialize(torch::serialize::InputArchive& archive) override {
    detail::read_common_options(*this, archive);
    num_perturbations(detail::read_field(archive, "num_perturbations").toInt());
    sigma_floor(detail::read_field(archive, "sigma_floor").toDouble());
  }
  double get_lr() const override { return lr(); }
  void set_lr(const double lr) override { this->lr(lr); }
};

/// FZOO's state: counters only. The directions are regenerated from (seed, step).
struct FZOOParamState : public torch::optim::OptimizerCloneableParamState<FZOOParamState> {
  TORCH_ARG(int64_t, step) = 0;
  TORCH_ARG(int64_t, forward_passes) = 0;
  TORCH_ARG(int64_t, skipped_steps) = 0;

 public:
  void serialize(torch::serialize::OutputArchive& archive) const override { detail::write_common_state(*this, archive); }
  void serialize(torch::serialize::InputArchive& archive) override { detail::read_common_state(*this, archive); }
};

/// FZOO: fast zeroth-order optimizer. N + 1 forward passes and N + 1 sweeps per step (one forward
/// pass when l_0 is not finite), zero bytes
/// of optimizer memory per parameter; a normalised-SGD step whose length does not depend on the loss scale.
class FZOO : public ZerothOrderOptimizer<FZOO, FZOOOptions, FZOOParamState> {
 public:
  static constexpr const char* kName = "zotorch::FZOO";
  using ZerothOrderOptimizer::ZerothOrderOptimizer;

  static void check_options(const FZOOOptions& o, size_t group) {
    detail::check_common_options(o, kName, group);
    TORCH_CHECK(o.num_perturbations() >= 2 && o.num_perturbations() < detail::kMaxTerms, kName,
                ": num_perturbations must be in [2, ", detail::kMaxTerms - 1, "] (σ needs two losses), got ",
                o.num_perturbations(), " (param group ", group, ")");
    TORCH_CHECK(std::isfinite(o.sigma_floor()) && o.sigma_floor() >= 0, kName,
                ": sigma_floor must be a finite value >= 0, got ", o.sigma_floor(), " (param group ", group, ")");
  }
  static void check_shared_options(const FZOOOptions& first, const FZOOOptions& o, size_t group) {
    require_shared("num_perturbations", first.num_perturbations(), o.num_perturbations(), group);
    require_shared("sigma_floor", first.sigma_floor(), o.sigma_floor(), group);
  }
  Distribution distribution() const { return Distribution::Rademacher; }

 private:
  friend class ZerothOrderOptimizer;

  void run_step(Step& step) {
    const double eps = options_of(0).eps();
    const int64_t n = options_of(0).num_perturbations();
    // 1. l_0 = L(θ), unperturbed. A non-finite l_0 ends the step here, before the N probes
    // (losses() throws; with a loss reducer every rank sees the same reduced l_0 and stops too).
    step.evaluate();
    step.losses();
    // 2. for i = 1..N: θ ← θ + ε(u_i − u_{i−1}), one sweep per probe; l_i = L(θ). u_i is probe i−1.
    for (int64_t i = 1; i <= n; ++i) {
      step.sweep_to({{static_cast<uint32_t>(i - 1), eps}});
      step.evaluate();
    }
    const std::vector<double>& l = step.losses();
    step.set_result(step.loss_tensors().front(), l[0]);
    // 3. σ = population std of l_1..l_N (l_0 excluded, divide by N).
    double mean = 0;
    for (int64_t i = 1; i <= n; ++i) mean += l[i] / static_cast<double>(n);
    double variance = 0;
    for (int64_t i = 1; i <= n; ++i) variance += (l[i] - mean) * (l[i] - mean) / static_cast<double>(n);
    const double sigma = std::sqrt(variance);
    // σ guard: a flat (or broken) loss carries no direction; restore θ and count the skip.
    if (!(sigma > options_of(0).sigma_floor() * std::abs(l[0]))) {
      step.skip();
      return;
    }
    // 4. c_i = (l_i − l_0) / (N·σ).
    std::vector<detail::SweepTerm> update;
    for (int64_t i = 1; i <= n; ++i) {
      const double c = (l[i] - l[0]) / (static_cast<double>(n) * sigma);
      step.report().coefficients.push_back(c);
      update.push_back({step.key(), static_cast<uint32_t>(i - 1), 0, -c, 0, 0});
    }
    // 5. θ ← θ − εu_N − η Σ_i c_i u_i − ηλθ, one sweep computing all N signs in registers.
    step.sweep_to({}, update, /*decay=*/true);
  }
};

}  // namespace zotorch
