// MeZO (Malladi et al., 2023): two-point SPSA with the seed trick, three sweeps per step.
// Reads top to bottom like docs/algorithms.md "MeZO"; the shared machinery is in zo_optimizer.h.
#pragma once

#include <zotorch/zo_optimizer.h>

namespace zotorch {

/// Options of zotorch::MeZO. Defaults are the paper's full fine-tuning values
/// (LoRA: lr 1e-4, eps 1e-2; prefix tuning: lr 1e-2, eps 1e-1).
struct MeZOOptions : public torch::optim::OptimizerCloneableOptions<MeZOOptions> {
  MeZOOptions(double lr = 1e-6) : lr_(lr) {}  // NOLINT: implicit from lr, as LibTorch's options
  TORCH_ARG(double, lr) = 1e-6;
  /// Perturbation scale ε.
  TORCH_ARG(double, eps) = 1e-3;
  /// Decoupled weight decay λ; use split_weight_decay() to exempt biases and norms.
  TORCH_ARG(double, weight_decay) = 0;
  /// n of n-SPSA: directions averaged per step (2n forward passes).
  TORCH_ARG(int64_t, num_samples) = 1;
  TORCH_ARG(Distribution, distribution) = Distribution::Gaussian;
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
    archive.write("num_samples", c10::IValue(num_samples()));
    archive.write("distribution", c10::IValue(static_cast<int64_t>(distribution())));
  }
  void serialize(torch::serialize::InputArchive& archive) override {
    detail::read_common_options(*this, archive);
    num_samples(detail::read_field(archive, "num_samples").toInt());
    const int64_t dist = detail::read_field(archive, "distribution").toInt();
    TORCH_CHECK(dist == 0 || dist == 1, "zotorch::MeZO: checkpoint has an unknown distribution ", dist);
    distribution(static_cast<Distribution>(dist));
  }
  double get_lr() const override { return lr(); }
  void set_lr(const double lr) override { this->lr(lr); }
};

/// MeZO's state: counters only. The directions are regenerated from (seed, step).
struct MeZOParamState : public torch::optim::OptimizerCloneableParamState<MeZOParamState> {
  TORCH_ARG(int64_t, step) = 0;
  TORCH_ARG(int64_t, forward_passes) = 0;
  TORCH_ARG(int64_t, skipped_steps) = 0;

 public:
  void serialize(torch::serialize::OutputArchive& archive) const override { detail::write_common_state(*this, archive); }
  void serialize(torch::serialize::InputArchive& archive) override { detail::read_common_state(*this, archive); }
};

/// MeZO: memory-efficient zeroth-order SGD. Two forward passes per step (2·num_samples),
/// three sweeps over the parameters, zero bytes of optimizer memory per parameter.
class MeZO : public ZerothOrderOptimizer<MeZO, MeZOOptions, MeZOParamState> {
 public:
  static constexpr const char* kName = "zotorch::MeZO";
  using ZerothOrderOptimizer::ZerothOrderOptimizer;

  static void check_options(const MeZOOptions& o, size_t group) {
    detail::check_common_options(o, kName, group);
    TORCH_CHECK(o.num_samples() >= 1 && o.num_samples() <= detail::kMaxTerms, kName, ": num_samples must be in [1, ",
                detail::kMaxTerms, "], got ", o.num_samples(), " (param group ", group, ")");
  }
  static void check_shared_options(const MeZOOptions& first, const MeZOOptions& o, size_t group) {
    require_shared("num_samples", first.num_samples(), o.num_samples(), group);
    require_shared("distribution", to_string(first.distribution()), to_string(o.distribution()), group);
  }
  Distribution distribution() const { return options_of(0).distribution(); }

 private:
  friend class ZerothOrderOptimizer;

  void run_step(Step& step) {
    const double eps = options_of(0).eps();
    const int64_t n = options_of(0).num_samples();
    // Steps 1-2 for each direction z_k (probe k): L+ = L(θ + εz_k), L− = L(θ − εz_k).
    // Moving from −εz_{k−1} to +εz_k is one sweep.
    for (int64_t k = 0; k < n; ++k) {
      const auto probe = static_cast<uint32_t>(k);
      step.sweep_to({{probe, +eps}});
      step.evaluate();
      step.sweep_to({{probe, -eps}});
      step.evaluate();
    }
    // Step 3: projected gradients g_k = (L+ − L−) / (2ε).
    const std::vector<double>& losses = step.losses();
    std::vector<detail::SweepTerm> update;
    double mean_loss = 0;
    for (int64_t k = 0; k < n; ++k) {
      const double g = (losses[2 * k] - losses[2 * k + 1]) / (2 * eps);
      step.report().coefficients.push_back(g);
      update.push_back({step.key(), static_cast<uint32_t>(k), 0, -g / static_cast<double>(n), 0, 0});
      mean_loss += (losses[2 * k] + losses[2 * k + 1]) / (2.0 * static_cast<double>(n));
    }
    // Step 4: θ ← θ + εz − η(g·z + λθ), the restore fused with the update in one sweep.
    step.sweep_to({}, update, /*decay=*/true);
    step.set_result(at::stack(step.loss_tensors()).mean(), mean_loss);
  }
};

}  // namespace zotorch
