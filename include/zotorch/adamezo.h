// AdaMeZO (Cai, Chen, Zhu, ICML 2026): MeZO's two-point estimate with Adam-style moments rebuilt
// each step from a window of (key, g) scalars, never stored as tensors. docs/algorithms.md "AdaMeZO".
#pragma once

#include <zotorch/zo_optimizer.h>

#include <cmath>

namespace zotorch {

/// Options of zotorch::AdaMeZO: the released code's defaults (scale and stab included).
struct AdaMeZOOptions : public torch::optim::OptimizerCloneableOptions<AdaMeZOOptions> {
  AdaMeZOOptions(double lr = 1e-7) : lr_(lr) {}  // NOLINT: implicit from lr, as LibTorch's options
  TORCH_ARG(double, lr) = 1e-7;
  /// Perturbation scale ε.
  TORCH_ARG(double, eps) = 1e-3;
  /// h ≥ 2: the moments are rebuilt from the last h directions.
  TORCH_ARG(int64_t, window) = 10;
  TORCH_ARG(double, beta1) = 0.7;
  /// 0 selects the released code's momentum variant (v ← 1: step = scale·m/(1 + stab)).
  TORCH_ARG(double, beta2) = 0.9;
  /// Multiplier of m in the update (no (1−β) factors, no bias correction: both are lr rescales).
  TORCH_ARG(double, scale) = 100;
  /// Added to √v in the denominator.
  TORCH_ARG(double, stab) = 1e-5;
  /// Decoupled weight decay λ.
  TORCH_ARG(double, weight_decay) = 0;
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
    archive.write("window", c10::IValue(window()));
    archive.write("beta1", c10::IValue(beta1()));
    archive.write("beta2", c10::IValue(beta2()));
    archive.write("scale", c10::IValue(scale()));
    archive.write("stab", c10::IValue(stab()));
  }
  void serialize(torch::serialize::InputArchive& archive) override {
    detail::read_common_options(*this, archive);
    window(detail::read_field(archive, "window").toInt());
    beta1(detail::read_field(archive, "beta1").toDouble());
    beta2(detail::read_field(archive, "beta2").toDouble());
    scale(detail::read_field(archive, "scale").toDouble());
    stab(detail::read_field(archive, "stab").toDouble());
  }
  double get_lr() const override { return lr(); }
  void set_lr(const double lr) override { this->lr(lr); }
};

/// AdaMeZO's state: counters and the window of the last h (key, g) pairs — bytes, not tensors.
struct AdaMeZOParamState : public torch::optim::OptimizerCloneableParamState<AdaMeZOParamState> {
  TORCH_ARG(int64_t, step) = 0;
  TORCH_ARG(int64_t, forward_passes) = 0;
  TORCH_ARG(int64_t, skipped_steps) = 0;
  /// Updates applied so far (the first window + 1 are plain MeZO updates).
  TORCH_ARG(int64_t, updates) = 0;
  /// Keys of the last h steps, oldest first (uint64 stored bit for bit).
  TORCH_ARG(std::vector<int64_t>, window_keys);
  /// Their projected gradients g, oldest first.
  TORCH_ARG(std::vector<double>, window_gradients);

 public:
  void serialize(torch::serialize::OutputArchive& archive) const override {
    detail::write_common_state(*this, archive);
    archive.write("updates", c10::IValue(updates()));
    archive.write("window_keys", c10::IValue(window_keys()));
    archive.write("window_gradients", c10::IValue(window_gradients()));
  }
  void serialize(torch::serialize::InputArchive& archive) override {
    detail::read_common_state(*this, archive);
    updates(detail::read_field(archive, "updates").toInt());
    window_keys(detail::read_field(archive, "window_keys").toIntVector());
    window_gradients(detail::read_field(archive, "window_gradients").toDoubleVector());
  }
};

/// AdaMeZO: Adam-like adaptivity at MeZO's memory. Two forward passes and three sweeps per step;
/// the update sweep regenerates the window's h directions per element and forms m and v in registers.
class AdaMeZO : public ZerothOrderOptimizer<AdaMeZO, AdaMeZOOptions, AdaMeZOParamState> {
 public:
  static constexpr const char* kName = "zotorch::AdaMeZO";
  using ZerothOrderOptimizer::ZerothOrderOptimizer;

  static void check_options(const AdaMeZOOptions& o, size_t group) {
    detail::check_common_options(o, kName, group);
    TORCH_CHECK(o.window() >= 2 && o.window() <= detail::kMaxTerms, kName, ": window must be in [2, ", detail::kMaxTerms,
                "], got ", o.window(), " (param group ", group, ")",
                o.window() == 1 ? ". With window 1, v = g²z² and the step is scale·sign(g·z): sign-SGD, not Adam; the "
                                  "released AdaMeZO code runs plain MeZO for windows below 2: use zotorch::MeZO for that"
                                : "");
    TORCH_CHECK(o.beta1() >= 0 && o.beta1() < 1, kName, ": beta1 must be in [0, 1), got ", o.beta1(), " (param group ",
                group, ")");
    TORCH_CHECK(o.beta2() >= 0 && o.beta2() < 1, kName, ": beta2 must be in [0, 1), got ", o.beta2(), " (param group ",
                group, ")");
    TORCH_CHECK(std::isfinite(o.scale()) && o.scale() > 0, kName, ": scale must be a finite value > 0, got ", o.scale());
    TORCH_CHECK(std::isfinite(o.stab()) && o.stab() > 0, kName, ": stab must be a finite value > 0, got ", o.stab(),
                " (it keeps √v + stab away from zero)");
  }
  static void check_shared_options(const AdaMeZOOptions& first, const AdaMeZOOptions& o, size_t group) {
    require_shared("window", first.window(), o.window(), group);
    require_shared("beta1", first.beta1(), o.beta1(), group);
    require_shared("beta2", first.beta2(), o.beta2(), group);
    require_shared("scale", first.scale(), o.scale(), group);
    require_shared("stab", first.stab(), o.stab(), group);
  }
  Distribution distribution() const { return Distribution::Gaussian; }

 private:
  friend class ZerothOrderOptimizer;

  void run_step(Step& step) {
    const AdaMeZOOptions& o = options_of(0);
    const double eps = o.eps();
    // MeZO's estimate: L+ = L(θ + εz), L− = L(θ − εz), g = (L+ − L−) / (2ε).
    step.sweep_to({{0, +eps}});
    step.evaluate();
    step.sweep_to({{0, -eps}});
    step.evaluate();
    const std::vector<double>& losses = step.losses();
    const double g = (losses[0] - losses[1]) / (2 * eps);
    step.report().coefficients.push_back(g);
    step.set_result(at::stack(step.loss_tensors()).mean(), (losses[0] + losses[1]) / 2);

    const AdaMeZOParamState& state = global_state();
    if (state.updates() < o.window() + 1) {
      // Warm-up: the first h + 1 updates are plain MeZO updates θ ← θ + εz − η(g·z + λθ).
      step.sweep_to({}, {{step.key(), 0, 0, -g, 0, 0}}, /*decay=*/true);
      return;
    }
    if (o.beta2() == 0) {
      // β2 = 0 is the released code's momentum variant: v ← 1, so the step scale·m/(1 + stab) is
      // linear in the window's directions (docs/optimizers.md "AdaMeZO").
      const double factor = o.scale() / (1 + o.stab());
      std::vector<detail::SweepTerm> momentum{{step.key(), 0, 0, -factor * g, 0, 0}};
      const auto& keys = state.window_keys();
      const auto& gradients = state.window_gradients();
      double beta1_power = 1;
      for (size_t back = 1; back < static_cast<size_t>(o.window()) && back <= keys.size(); ++back) {
        beta1_power *= o.beta1();
        momentum.push_back({static_cast<uint64_t>(keys[keys.size() - back]), 0, 0,
                            -factor * beta1_power * gradients[gradients.size() - back], 0, 0});
      }
      step.sweep_to({}, momentum, /*decay=*/true);
      return;
    }
    // m = Σ_k β1^k g_{t−k} z_{t−k},  v = Σ_k β2^k g_{t−k}² z_{t−k}²,  k = 0..h−1 (k = 0 is this step),
    // θ ← θ + εz_t − η(scale·m / (√v + stab) + λθ): restore and update in one sweep.
    std::vector<detail::SweepTerm> window{{step.key(), 0, 0, 0, g, g * g}};
    const auto& keys = state.window_keys();
    const auto& gradients = state.window_gradients();
    double beta1_power = 1, beta2_power = 1;
    for (size_t back = 1; back < static_cast<size_t>(o.window()) && back <= keys.size(); ++back) {
      beta1_power *= o.beta1();
      beta2_power *= o.beta2();
      const double past_g = gradients[gradients.size() - back];
      window.push_back({static_cast<uint64_t>(keys[keys.size() - back]), 0, 0, 0, beta1_power * past_g,
                        beta2_power * past_g * past_g});
    }
    const detail::AdaptiveUpdate adaptive{o.scale(), o.stab()};
    step.sweep_to({}, window, /*decay=*/true, &adaptive);
  }

  /// Appends this step's (key, g) to the window, keeping the last h.
  void commit(AdaMeZOParamState& state, const Step& step) {
    auto keys = state.window_keys();
    auto gradients = state.window_gradients();
    keys.push_back(static_cast<int64_t>(step.key()));
    gradients.push_back(step.report().coefficients.front());
    const size_t h = static_cast<size_t>(options_of(0).window());
    while (keys.size() > h) {
      keys.erase(keys.begin());
      gradients.erase(gradients.begin());
    }
    state.window_keys(keys);
    state.window_gradients(gradients);
    state.updates(state.updates() + 1);
  }

  void check_state(const AdaMeZOParamState& state) const {
    TORCH_CHECK(state.window_keys().size() == state.window_gradients().size() &&
                    state.window_keys().size() <= static_cast<size_t>(detail::kMaxTerms) && state.updates() >= 0 &&
                    state.updates() <= state.step(),
                kName, ": checkpoint has an inconsistent window (", state.window_keys().size(), " keys, ",
                state.window_gradients().size(), " gradients, ", state.updates(), " updates)");
    for (double g : state.window_gradients()) {
      TORCH_CHECK(std::isfinite(g), kName, ": checkpoint window holds a non-finite gradient ", g);
    }
  }
};

}  // namespace zotorch
