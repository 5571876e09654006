// The step engine all zeroth-order optimizers share (docs/design.md "zo_optimizer.h"): closure calls and
// forward-pass counting, the parameter table, the exception-safe perturbation scope, the step
// report, the non-finite policy and exception-safe save/load. Each method supplies only its pseudo-code.
#pragma once

#include <zotorch/detail/compat.h>
#include <zotorch/detail/dispatch.h>
#include <zotorch/noise.h>

#include <torch/nn/module.h>
#include <torch/nn/modules/dropout.h>
#include <torch/optim/optimizer.h>
#include <torch/optim/serialize.h>
#include <torch/ordered_dict.h>
#include <torch/serialize/archive.h>
#include <torch/utils.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <limits>
#include <memory>
#include <sstream>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

namespace zotorch {

/// What step() does when the closure returns NaN or ±inf.
enum class NonFinite : int64_t {
  Skip = 0,   ///< restore the parameters, count the step in skipped_steps() and go on
  Throw = 1,  ///< restore the parameters, leave the optimizer state unchanged and throw c10::Error
};

/// What happened in the last call of step(): enough to replay or audit it.
struct StepReport {
  /// Direction i of this step is zotorch::noise(key, tensor_id, i, ...), tensor_id = index of the
  /// parameter in the flattened param_groups order.
  uint64_t key = 0;
  int64_t step = 0;  ///< index of the step in the seed's stream (0 for the first)
  /// FZOO: l_0, l_1..l_N. MeZO/AdaMeZO: L+_1, L−_1, L+_2, L−_2, ...
  std::vector<double> losses;
  /// FZOO: c_i = (l_i − l_0)/(N·σ). MeZO/AdaMeZO: projected gradients g_k = (L+_k − L−_k)/(2ε).
  std::vector<double> coefficients;
  double loss = std::numeric_limits<double>::quiet_NaN();  ///< the value step() returned
  /// Each param group's lr and weight_decay in force during this step (a scheduler may change them after).
  std::vector<double> lr, weight_decay;
  bool skipped = false;      ///< the update was not applied (non-finite loss, or FZOO's σ guard)
  /// step() threw (the closure threw, or returned a non-finite loss under NonFinite::Throw): the
  /// parameters were restored within one rounding per sweep, the optimizer state is unchanged, and
  /// `losses` holds the losses the method had read when it stopped.
  bool aborted = false;
  int64_t forward_passes = 0;  ///< closure calls in this step (for an aborted step, the failing one included)
  /// 1 for the first step() call on this optimizer object, counting aborted calls; not saved in
  /// checkpoints. TrajectoryWriter uses it to notice a step it was not shown.
  int64_t call = 0;
  int64_t sweeps = 0;          ///< read-modify-write passes over all parameters in this step
  double seconds = 0;          ///< wall time of step()
  double closure_seconds = 0;  ///< wall time spent inside the closure (host clock)
};

namespace detail {
struct ReplayAccess;  // trajectory.h: replays recorded steps through the optimizer's own code

inline bool name_contains_any(const std::string& name, std::initializer_list<const char*> markers) {
  std::string lower(name);
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
  for (const char* marker : markers) {
    if (lower.find(marker) != std::string::npos) return true;
  }
  return false;
}
}  // namespace detail

/// MeZO's weight-decay exemption, exactly: names containing "bias", "layer_norm" or "layernorm"
/// (case-insensitive). Matches BERT/RoBERTa/OPT names (`...LayerNorm.weight`, `self_attn_layer_norm`)
/// and Llama's `input_layernorm` / `post_attention_layernorm`, but not Llama's final `model.norm.weight`:
/// use is_no_decay_name_or_norm for such models (docs/optimizers.md "Weight decay").
inline bool is_no_decay_name(const std::string& name) {
  return detail::name_contains_any(name, {"bias", "layer_norm", "layernorm"});
}

/// is_no_decay_name, plus every name containing "norm" (case-insensitive): for Llama-style models
/// whose RMSNorm gains are named `model.norm.weight`, `input_layernorm.weight`, ... RMSNorm gains
/// are scale parameters like LayerNorm's: decaying them toward 0 shrinks the activations.
inline bool is_no_decay_name_or_norm(const std::string& name) {
  return detail::name_contains_any(name, {"bias", "norm"});
}

/// Detects the case where a perturbed forward pass compares two different dropout masks: `model`
/// or one of its submodules is in training mode and is a Dropout, Dropout2d, Dropout3d,
/// AlphaDropout or FeatureAlphaDropout module with p > 0. Returns true, after one TORCH_WARN that
/// names those modules, if so. Zeroth-order steps need model->eval():
/// docs/optimizers.md "Eval mode". Dropout called functionally inside forward()
/// (torch::dropout(x, p, is_training())) cannot be detected.
inline bool warn_if_dropout_active(const torch::nn::Module& model) {
  std::vector<std::string> active;
  model.apply([&](const std::string& name, const torch::nn::Module& module) {
    if (!module.is_training()) return;
    double p = 0;
    if (const auto* d = dynamic_cast<const torch::nn::DropoutImpl*>(&module)) p = d->options.p();
    else if (const auto* d2 = dynamic_cast<const torch::nn::Dropout2dImpl*>(&module)) p = d2->options.p();
    else if (const auto* d3 = dynamic_cast<const torch::nn::Dropout3dImpl*>(&module)) p = d3->options.p();
    else if (const auto* a = dynamic_cast<const torch::nn::AlphaDropoutImpl*>(&module)) p = a->options.p();
    else if (const auto* f = dynamic_cast<const torch::nn::FeatureAlphaDropoutImpl*>(&module)) p = f->options.p();
    if (p > 0) active.push_back(name.empty() ? std::string("<root>") : name);
  });
  if (active.empty()) return false;
  std::ostringstream names;
  for (size_t i = 0; i < active.size() && i < 5; ++i) names << (i ? ", " : "") << active[i];
  if (active.size() > 5) names << ", ... (" << active.size() << " in all)";
  TORCH_WARN("zotorch: ", active.size(), " dropout module(s) with p > 0 are in training mode (", names.str(),
             "): each perturbed forward pass would draw another dropout mask, and the loss differences the "
             "optimizer uses would measure the masks, not the perturbation. Call model->eval() before training "
             "with a zeroth-order optimizer");
  return true;
}

/// Splits named parameters into a decay group (options as given) and a no-decay group (same
/// options, weight_decay 0), the LibTorch way of per-group weight decay. Empty groups are dropped.
template <class Options>
std::vector<torch::optim::OptimizerParamGroup> split_weight_decay(
    const torch::OrderedDict<std::string, at::Tensor>& named_parameters, const Options& options,
    const std::function<bool(const std::string&)>& no_decay = is_no_decay_name) {
  std::vector<at::Tensor> decay, exempt;
  for (const auto& item : named_parameters) {
    (no_decay(item.key()) ? exempt : decay).push_back(item.value());
  }
  std::vector<torch::optim::OptimizerParamGroup> groups;
  if (!decay.empty()) groups.emplace_back(decay, std::make_unique<Options>(options));
  if (!exempt.empty()) groups.emplace_back(exempt, std::make_unique<Options>(Options(options).weight_decay(0)));
  return groups;
}

namespace detail {

/// Raised inside a step when a loss is not finite; step() turns it into the NonFinite policy.
struct NonFiniteLoss {
  size_t forward_pass;
  double value;
};

/// One offset currently added to θ: alpha·z(step key, tensor_id, probe).
struct Offset {
  uint32_t probe;
  double alpha;
};

/// The constants of the adaptive (AdaMeZO) update of a final sweep.
struct AdaptiveUpdate {
  double scale;
  double stab;
};

/// Checks shared by all options; `owner` is the optimizer's name, `group` the param group index.
template <class Options>
void check_common_options(const Options& o, const char* owner, size_t group) {
  TORCH_CHECK(std::isfinite(o.lr()) && o.lr() >= 0, owner, ": lr must be a finite value >= 0, got ", o.lr(),
              " (param group ", group, ")");
  TORCH_CHECK(std::isfinite(o.eps()) && o.eps() > 0, owner, ": eps must be a finite value > 0, got ", o.eps(),
              " (param group ", group, "); typical values are 1e-3 for full fine-tuning, 1e-2 for LoRA");
  TORCH_CHECK(std::isfinite(o.weight_decay()) && o.weight_decay() >= 0, owner,
              ": weight_decay must be a finite value >= 0, got ", o.weight_decay(), " (param group ", group, ")");
  TORCH_CHECK(o.lr() * o.weight_decay() < 1, owner, ": lr * weight_decay must be < 1, got ", o.lr() * o.weight_decay(),
              " (param group ", group, ")");
}

/// Serialises the fields every options struct has; the method-specific ones follow in each class.
template <class Options>
void write_common_options(const Options& o, torch::serialize::OutputArchive& archive) {
  archive.write("lr", c10::IValue(o.lr()));
  archive.write("eps", c10::IValue(o.eps()));
  archive.write("weight_decay", c10::IValue(o.weight_decay()));
  archive.write("seed", c10::IValue(static_cast<int64_t>(o.seed())));
  archive.write("stochastic_rounding", c10::IValue(o.stochastic_rounding()));
  archive.write("on_nonfinite", c10::IValue(static_cast<int64_t>(o.on_nonfinite())));
  archive.write("include_frozen", c10::IValue(o.include_frozen()));
}

inline c10::IValue read_field(torch::serialize::InputArchive& archive, const char* name) {
  c10::IValue value;
  TORCH_CHECK(archive.try_read(name, value), "zotorch: checkpoint lacks the field '", name,
              "'; it was not written by a zotorch optimizer of this kind");
  return value;
}

template <class Options>
void read_common_options(Options& o, torch::serialize::InputArchive& archive) {
  o.lr(read_field(archive, "lr").toDouble());
  o.eps(read_field(archive, "eps").toDouble());
  o.weight_decay(read_field(archive, "weight_decay").toDouble());
  o.seed(static_cast<uint64_t>(read_field(archive, "seed").toInt()));
  o.stochastic_rounding(read_field(archive, "stochastic_rounding").toBool());
  const int64_t policy = read_field(archive, "on_nonfinite").toInt();
  TORCH_CHECK(policy == 0 || policy == 1, "zotorch: checkpoint has an unknown on_nonfinite value ", policy);
  o.on_nonfinite(static_cast<NonFinite>(policy));
  o.include_frozen(read_field(archive, "include_frozen").toBool());
}

/// The counters every optimizer's global state has.
template <class State>
void write_common_state(const State& s, torch::serialize::OutputArchive& archive) {
  archive.write("step", c10::IValue(s.step()));
  archive.write("forward_passes", c10::IValue(s.forward_passes()));
  archive.write("skipped_steps", c10::IValue(s.skipped_steps()));
}

template <class State>
void read_common_state(State& s, torch::serialize::InputArchive& archive) {
  s.step(read_field(archive, "step").toInt());
  s.forward_passes(read_field(archive, "forward_passes").toInt());
  s.skipped_steps(read_field(archive, "skipped_steps").toInt());
  TORCH_CHECK(s.step() >= 0 && s.forward_passes() >= 0 && s.skipped_steps() >= 0 && s.skipped_steps() <= s.step(),
              "zotorch: checkpoint has inconsistent counters (step ", s.step(), ", forward_passes ",
              s.forward_passes(), ", skipped_steps ", s.skipped_steps(), ")");
}

}  // namespace detail

/// Shared engine of the zeroth-order optimizers (CRTP). `Derived` implements
/// `void run_step(Step& step)` with the method's pseudo-code, `Distribution distribution() const`,
/// `static void check_options(const Options&, size_t group)`, `static void check_shared_options(const Options& first,
/// const Options& other, size_t group)`, `static constexpr const char* kName`, and optionally
/// `void commit(ParamState&, const Step&)` and `void check_state(const ParamState&) const`.
///
/// The optimizer keeps no tensor state: its whole state is a few counters (and, for AdaMeZO, a
/// window of scalars), stored like LBFGS's global state under the first parameter.
template <class Derived, class Options, class ParamState>
class ZerothOrderOptimizer : public torch::optim::Optimizer {
 public:
  using LossClosure = torch::optim::Optimizer::LossClosure;

  ZerothOrderOptimizer(const std::vector<torch::optim::OptimizerParamGroup>& param_groups, const Options& defaults)
      : Optimizer(param_groups, std::make_unique<Options>(defaults)) {
    // LibTorch 2.9+ replaces the options of a group by the defaults unless the optimizer is one of
    // its own; keep what the user gave each group, as torch::optim::Adam does.
    for (size_t g = 0; g < param_groups.size() && g < param_groups_.size(); ++g) {
      if (!param_groups[g].has_options()) continue;
      TORCH_CHECK(dynamic_cast<const Options*>(&param_groups[g].options()) != nullptr, Derived::kName, ": param group ",
                  g, " carries the options of another optimizer; give it ", Derived::kName, "Options");
      param_groups_[g].set_options(param_groups[g].options().clone());
    }
    Derived::check_options(defaults, 0);
    check_all_options();
    refresh_table();
    global_state();
  }

  ZerothOrderOptimizer(std::vector<at::Tensor> params, const Options& defaults)
      : ZerothOrderOptimizer(std::vector<torch::optim::OptimizerParamGroup>{torch::optim::OptimizerParamGroup(std::move(params))},
                             defaults) {}

  /// Runs one step: calls `closure` (one forward pass returning a scalar loss) as many times as
  /// the method needs, under torch::NoGradGuard, and applies the update in place.
  /// If the closure throws, the parameters are restored and the optimizer state is unchanged.
  torch::Tensor step(LossClosure closure) override {
    TORCH_CHECK(closure != nullptr, Derived::kName,
                "::step needs a closure that runs one forward pass and returns the loss, e.g. "
                "opt.step([&] { return torch::mse_loss(model->forward(x), y); })");
    const auto started = std::chrono::steady_clock::now();
    check_all_options();
    refresh_table();
    torch::NoGradGuard no_grad;
    ParamState& state = global_state();
    state_before_last_step_ = state;
    Step step(*this, closure, state.step());
    step.report_.call = ++calls_;
    // An aborted step is reported too: its perturbation and restore sweeps moved θ by rounding,
    // and a trajectory must repeat them to stay bit-exact (docs/trajectory.md "Aborted steps").
    auto report_aborted = [&] {
      step.report_.aborted = true;
      step.report_.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
      last_step_ = step.report_;
    };
    try {
      static_cast<Derived&>(*this).run_step(step);
    } catch (const detail::NonFiniteLoss& bad) {
      step.restore();
      if (options_of(0).on_nonfinite() == NonFinite::Throw) {
        report_aborted();
        TORCH_CHECK(false, Derived::kName, ": the closure returned a non-finite loss (", bad.value, ") at forward pass ",
                    bad.forward_pass, " of step ", state.step(),
                    "; the parameters were restored. Use on_nonfinite(zotorch::NonFinite::Skip) to skip such steps");
      }
      step.skip();
    } catch (...) {
      step.restore();
      report_aborted();
      throw;
    }
    // Commit: only now does the optimizer state change.
    state.step(state.step() + 1);
    state.forward_passes(state.forward_passes() + step.report_.forward_passes);
    if (step.report_.skipped) {
      state.skipped_steps(state.skipped_steps() + 1);
    } else {
      static_cast<Derived&>(*this).commit(state, step);
    }
    // Only the swept tensors changed; frozen ones keep their version.
    for (const auto& entry : table_.entries) entry.tensor.unsafeGetTensorImpl()->bump_version();
    step.report_.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    last_step_ = std::move(step.report_);
    return step.result_.defined() ? step.result_ : torch::tensor(last_step_.loss, torch::kDouble);
  }

  /// Receives the stacked losses of a step's forward passes (1-D, on the losses' device, in the
  /// order of StepReport::losses) before the method reads them, and may change them in place or
  /// assign a tensor of the same shape. zotorch::DataParallel uses it to average the losses over a
  /// process group; any other use must also be deterministic, since the update follows from it.
  using LossReducer = std::function<void(at::Tensor& losses)>;

  /// Sets (or, with nullptr, removes) the loss reducer; it is called once per batch of new losses
  /// the method reads: twice per FZOO step (l_0, then l_1..l_N), once per MeZO/AdaMeZO step.
  void set_loss_reducer(LossReducer reducer) { loss_reducer_ = std::move(reducer); }
  /// The loss reducer in use (empty when none).
  const LossReducer& loss_reducer() const { return loss_reducer_; }

  /// The report of the most recent step() (empty before the first), aborted steps included.
  const StepReport& last_step() const { return last_step_; }
  /// The optimizer state as it was when the most recent step() began (default before the first):
  /// where a trajectory that starts with that step starts from.
  const ParamState& state_before_last_step() const { return state_before_last_step_; }
  /// Closure calls of all completed or skipped steps.
  int64_t forward_passes() const { return global_state().forward_passes(); }
  /// Steps whose update was not applied (non-finite loss, σ guard).
  int64_t skipped_steps() const { return global_state().skipped_steps(); }
  /// Steps taken so far, the position in the seed's direction stream.
  int64_t steps() const { return global_state().step(); }

  /// Writes the optimizer's state and the parameter layout it applies to (count, shapes, dtypes
  /// and which tensor_ids are trained), which load() checks: directions depend on tensor_id.
  void save(torch::serialize::OutputArchive& archive) const override {
    torch::optim::serialize<ParamState, Options>(archive, *this);
    write_layout(archive, layout(options_of(0).include_frozen()));
  }

  /// Loads a checkpoint written by save(). A damaged or foreign checkpoint throws and leaves this
  /// optimizer exactly as it was: the archive is read into a scratch optimizer first. A checkpoint
  /// saved over another parameter layout (count, shapes, dtypes, trained tensors) is refused.
  void load(torch::serialize::InputArchive& archive) override {
    // The parameter list first: LibTorch's reader below would only report a group size.
    const Layout saved = read_layout(archive);
    check_layout(saved, layout(options_of(0).include_frozen()), /*trained=*/false);
    std::vector<torch::optim::OptimizerParamGroup> groups;
    for (const auto& group : param_groups_) groups.emplace_back(group.params(), group.options().clone());
    Derived scratch(groups, static_cast<const Options&>(*defaults_));
    scratch.state_.clear();
    torch::optim::serialize<ParamState, Options>(archive, scratch);
    for (size_t g = 0; g < scratch.param_groups_.size(); ++g) {
      Derived::check_options(scratch.options_of(g), g);
    }
    check_layout(saved, layout(scratch.options_of(0).include_frozen()), /*trained=*/true);
    const auto key = detail::state_key(first_param());
    auto found = scratch.state_.find(key);
    TORCH_CHECK(found != scratch.state_.end() && found->second != nullptr, Derived::kName,
                ": checkpoint holds no optimizer state for these parameters; was it saved by a ", Derived::kName,
                " over the same parameter list?");
    auto* loaded = dynamic_cast<ParamState*>(found->second.get());
    TORCH_CHECK(loaded != nullptr, Derived::kName, ": checkpoint state has the wrong type");
    static_cast<const Derived&>(scratch).check_state(*loaded);
    // Nothing can fail from here on.
    state_.clear();
    state_[key] = std::move(found->second);
    for (size_t g = 0; g < param_groups_.size(); ++g) {
      param_groups_[g].set_options(scratch.param_groups_[g].options().clone());
    }
    last_step_ = StepReport{};
  }

 protected:
  /// The per-step context the method's pseudo-code runs against. It calls the closure, keeps the
  /// losses, and tracks which offsets are currently added to θ so that any exit can undo them.
  class Step {
   public:
    /// The key of this step's directions.
    uint64_t key() const { return report_.key; }
    int64_t index() const { return report_.step; }
    const StepReport& report() const { return report_; }
    StepReport& report() { return report_; }

    /// One forward pass. The loss is kept on its device until losses() is called, so a CUDA step
    /// synchronises once, not once per forward pass.
    void evaluate() {
      const auto started = std::chrono::steady_clock::now();
      ++report_.forward_passes;
      at::Tensor loss = closure_();
      report_.closure_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
      TORCH_CHECK(loss.defined(), Derived::kName, ": the closure returned an undefined tensor; return the loss");
      TORCH_CHECK(loss.numel() == 1, Derived::kName, ": the closure must return a scalar loss, got shape ", loss.sizes(),
                  "; reduce it, e.g. with .mean()");
      TORCH_CHECK(at::isFloatingType(loss.scalar_type()), Derived::kName,
                  ": the closure must return a floating-point loss, got ", loss.scalar_type());
      pending_.push_back(loss.detach().reshape({}));
    }

    /// The losses of all forward passes so far, as doubles. Throws NonFiniteLoss if one is not finite.
    /// With a loss reducer set, the new losses pass through it first (once per call that has new
    /// losses: FZOO calls this after l_0 and after l_N, MeZO/AdaMeZO once), and the reduced values are what the method,
    /// the non-finite check, loss_tensors() and step()'s result see.
    const std::vector<double>& losses() {
      if (!pending_.empty()) {
        at::Tensor stacked = at::stack(pending_);
        if (owner_.loss_reducer_) {
          // Data parallelism (distributed.h): every rank continues from the same reduced losses, so
          // every rank takes the same decisions and applies the same update.
          const auto count = static_cast<int64_t>(pending_.size());
          owner_.loss_reducer_(stacked);
          TORCH_CHECK(stacked.defined() && stacked.dim() == 1 && stacked.size(0) == count &&
                          at::isFloatingType(stacked.scalar_type()),
                      Derived::kName, ": the loss reducer must leave a 1-D floating-point tensor of ", count,
                      " losses, got ", stacked.defined() ? stacked.sizes() : at::IntArrayRef{},
                      "; reduce the values in place or assign a tensor of the same shape");
          for (int64_t i = 0; i < count; ++i) pending_[static_cast<size_t>(i)] = stacked[i];
        }
        const at::Tensor values = stacked.to(at::kDouble).cpu();
        const double* data = values.data_ptr<double>();
        for (int64_t i = 0; i < values.numel(); ++i) report_.losses.push_back(data[i]);
        for (auto& loss : pending_) kept_.push_back(std::move(loss));
        pending_.clear();
      }
      for (size_t i = 0; i < report_.losses.size(); ++i) {
        if (!std::isfinite(report_.losses[i])) throw detail::NonFiniteLoss{i + 1, report_.losses[i]};
      }
      return report_.losses;
    }

    /// The loss tensors of the forward passes read by losses(), as the closure returned them (detached)
    /// or as the loss reducer left them.
    const std::vector<at::Tensor>& loss_tensors() const { return kept_; }

    /// One sweep that moves θ from its current offsets to `target` (all under this step's key),
    /// and adds the update `update` on the way; `decay` applies each group's weight decay.
    void sweep_to(std::vector<detail::Offset> target, const std::vector<detail::SweepTerm>& update = {},
                  bool decay = false, const detail::AdaptiveUpdate* adaptive = nullptr) {
      detail::SweepPlan plan;
      plan.distribution = distribution_;
      auto add_or_merge = [&](const detail::SweepTerm& term) {
        for (int k = 0; k < plan.num_terms; ++k) {
          detail::SweepTerm& existing = plan.terms[k];
          if (existing.key == term.key && existing.probe == term.probe) {
            existing.alpha += term.alpha;
            existing.beta += term.beta;
            existing.m_weight += term.m_weight;
            existing.v_weight += term.v_weight;
            existing.restore += term.restore;
            return;
          }
        }
        plan.add_term(term);
      };
      // Offsets to add and the update in the order a sweep from the restored θ takes them, then the
      // offsets to remove as restore terms, rounded first (sweep.h; docs/numerics.md "Fused transitions").
      for (const auto& next : target) add_or_merge({report_.key, next.probe, next.alpha, 0, 0, 0});
      for (const auto& term : update) add_or_merge(term);
      for (const auto& now : applied_) add_or_merge({report_.key, now.probe, 0, 0, 0, 0, -now.alpha});
      if (adaptive != nullptr) {
        plan.adaptive = true;
        plan.adaptive_scale = adaptive->scale;
        plan.adaptive_stab = adaptive->stab;
      }
      const auto& groups = owner_.param_groups_;
      TORCH_CHECK(static_cast<int>(groups.size()) <= detail::kMaxGroups, Derived::kName, ": at most ",
                  detail::kMaxGroups, " param groups are supported, got ", groups.size());
      plan.num_groups = static_cast<int32_t>(groups.size());
      for (size_t g = 0; g < groups.size(); ++g) {
        const Options& o = owner_.options_of(g);
        plan.groups[g].lr = o.lr();
        plan.groups[g].keep = decay ? 1.0 - o.lr() * o.weight_decay() : 1.0;
      }
      plan.stochastic_rounding = owner_.options_of(0).stochastic_rounding();
      plan.rounding_key = detail::splitmix64(report_.key ^ (0xD1B54A32D192ED03ull * static_cast<uint64_t>(report_.sweeps + 1)));
      // Drop terms that cancelled out, so a pure restore costs no more Philox than needed.
      int kept = 0;
      for (int k = 0; k < plan.num_terms; ++k) {
        const auto& t = plan.terms[k];
        if (t.alpha != 0 || t.beta != 0 || t.m_weight != 0 || t.v_weight != 0 || t.restore != 0) plan.terms[kept++] = t;
      }
      plan.num_terms = kept;
      if (plan.num_terms > 0 || decay) {
        if (owner_.apply_sweeps_) detail::apply_sweep(owner_.table_, plan);
        ++report_.sweeps;
      }
      applied_ = std::move(target);
    }

    /// Removes every offset currently applied: θ returns to its value at the start of the step
    /// (bit-exactly where the arithmetic is exact, else within one rounding per sweep).
    void restore() {
      if (!applied_.empty()) sweep_to({});
    }

    /// Marks the step as skipped: no update, θ already restored.
    void skip() {
      restore();
      report_.skipped = true;
    }

    /// What step() returns.
    void set_result(at::Tensor result, double value) {
      result_ = std::move(result);
      report_.loss = value;
    }

   private:
    friend class ZerothOrderOptimizer;
    Step(ZerothOrderOptimizer& owner, const LossClosure& closure, int64_t index)
        : owner_(owner), closure_(closure), distribution_(static_cast<Derived&>(owner).distribution()) {
      report_.step = index;
      report_.key = step_key(owner.options_of(0).seed(), static_cast<uint64_t>(index));
      for (size_t g = 0; g < owner.param_groups_.size(); ++g) {
        report_.lr.push_back(owner.options_of(g).lr());
        report_.weight_decay.push_back(owner.options_of(g).weight_decay());
      }
    }

    ZerothOrderOptimizer& owner_;
    const LossClosure& closure_;
    Distribution distribution_;
    std::vector<detail::Offset> applied_;
    std::vector<at::Tensor> pending_, kept_;
    at::Tensor result_;
    StepReport report_;
  };

  /// Throws unless param group `group` has the same value of `field` as group 0.
  template <class T>
  static void require_shared(const char* field, const T& first, const T& other, size_t group) {
    TORCH_CHECK(first == other, Derived::kName, ": ", field, " must be the same in every param group (group 0 has ",
                first, ", group ", group, " has ", other, "); only lr and weight_decay may differ between groups");
  }

  /// Default hooks; methods with window state override them.
  void commit(ParamState&, const Step&) {}
  void check_state(const ParamState&) const {}

  const Options& options_of(size_t group) const { return static_cast<const Options&>(param_groups_.at(group).options()); }
  Options& options_of(size_t group) { return static_cast<Options&>(param_groups_.at(group).options()); }

  /// The optimizer's one state object, kept under the first tensor of the full parameter list
  /// (frozen or not), so that freezing or unfreezing tensors never moves it.
  ParamState& global_state() {
    const auto key = detail::state_key(first_param());
    auto& slot = state_[key];
    if (!slot) slot = std::make_unique<ParamState>();
    return static_cast<ParamState&>(*slot);
  }
  const ParamState& global_state() const {
    return const_cast<ZerothOrderOptimizer&>(*this).global_state();
  }

  /// The swept (trained) tensors, each with tensor_id = its index in the flattened param_groups
  /// list, frozen tensors included; rebuilt when the groups, a tensor or its requires_grad change.
  const detail::ParamTable& table() const { return table_; }

 private:
  void check_all_options() const {
    TORCH_CHECK(!param_groups_.empty(), Derived::kName, ": no parameters to optimise; pass model->parameters()");
    const Options& first = options_of(0);
    for (size_t g = 0; g < param_groups_.size(); ++g) {
      const Options& o = options_of(g);
      Derived::check_options(o, g);
      // One step perturbs all groups along one direction stream: only lr and weight_decay may differ.
      require_shared("eps", first.eps(), o.eps(), g);
      require_shared("seed", first.seed(), o.seed(), g);
      require_shared("stochastic_rounding", first.stochastic_rounding(), o.stochastic_rounding(), g);
      require_shared("on_nonfinite", static_cast<int64_t>(first.on_nonfinite()), static_cast<int64_t>(o.on_nonfinite()), g);
      require_shared("include_frozen", first.include_frozen(), o.include_frozen(), g);
      Derived::check_shared_options(first, o, g);
    }
  }

  /// What the fast path of refresh_table() compares: anything whose change needs the checks again
  /// (a partial model->to(...) swaps a tensor's data in place: same TensorImpl, other device).
  struct Signature {
    const c10::TensorImpl* impl = nullptr;
    int32_t group = 0;
    bool swept = false;
    c10::Device device = c10::Device(c10::kCPU);
    at::ScalarType dtype = at::kFloat;
    bool contiguous = false;
    int64_t numel = 0;
    const void* storage = nullptr;
    int64_t offset = 0;

    static Signature of(const at::Tensor& p, int32_t group, bool include_frozen) {
      Signature s;
      s.impl = p.unsafeGetTensorImpl();
      s.group = group;
      if (!p.defined()) return s;
      s.swept = include_frozen || p.requires_grad();
      s.device = p.device();
      s.dtype = p.scalar_type();
      s.contiguous = p.is_contiguous();
      s.numel = p.numel();
      if (p.has_storage()) {
        s.storage = p.storage().unsafeGetStorageImpl();
        s.offset = p.storage_offset();
      }
      return s;
    }
    bool operator==(const Signature& o) const {
      return impl == o.impl && group == o.group && swept == o.swept && device == o.device && dtype == o.dtype &&
             contiguous == o.contiguous && numel == o.numel && storage == o.storage && offset == o.offset;
    }
  };

  /// The first tensor of the flattened parameter list: the global state's key.
  const at::Tensor& first_param() const {
    const at::Tensor* first = nullptr;
    for (const auto& group : param_groups_) {
      if (first == nullptr && !group.params().empty()) first = &group.params().front();
    }
    TORCH_CHECK(first != nullptr, Derived::kName, ": no parameters to optimise; pass model->parameters()");
    return *first;
  }

  /// Re-evaluates which tensors are swept (requires_grad, or include_frozen) and that each is still
  /// sweepable on the table's device; a cheap comparison per tensor when nothing changed, else the
  /// full checks and a new table. Frozen tensors keep their tensor_id slot (docs/optimizers.md
  /// "Frozen parameters"), so a tensor's directions do not depend on what else is frozen.
  void refresh_table() {
    const bool include_frozen = options_of(0).include_frozen();
    size_t count = 0;
    bool same = !table_.entries.empty();
    for (size_t g = 0; g < param_groups_.size() && same; ++g) {
      for (const auto& p : param_groups_[g].params()) {
        same = p.defined() && count < signature_.size() &&
               signature_[count] == Signature::of(p, static_cast<int32_t>(g), include_frozen);
        if (!same) break;
        ++count;
      }
    }
    if (same && count == signature_.size()) return;
    detail::ParamTable fresh;
    std::vector<Signature> signature;
    std::unordered_set<const void*> seen;
    size_t index = 0;
    for (size_t g = 0; g < param_groups_.size(); ++g) {
      for (const auto& p : param_groups_[g].params()) {
        TORCH_CHECK(p.defined(), Derived::kName, ": parameter ", index, " is an undefined tensor");
        TORCH_CHECK(seen.insert(p.unsafeGetTensorImpl()).second, Derived::kName, ": parameter ", index,
                    " appears twice in the param groups; pass each tensor once");
        signature.push_back(Signature::of(p, static_cast<int32_t>(g), include_frozen));
        if (signature.back().swept) {
          if (!fresh.entries.empty()) {
            // All swept tensors share one device (one sweep, one backend).
            const auto& first = fresh.entries.front();
            TORCH_CHECK(p.device() == first.tensor.device(), Derived::kName, ": parameter ", index, " is on ",
                        p.device(), " but parameter ", first.tensor_id, " is on ", first.tensor.device(),
                        "; move the whole model to one device (model->to(device)), then step");
          }
          detail::check_sweepable(p, Derived::kName, index);
          fresh.entries.push_back({p, static_cast<uint32_t>(index), static_cast<int32_t>(g)});
        }
        ++index;
      }
    }
    TORCH_CHECK(index > 0, Derived::kName, ": no parameters to optimise; pass model->parameters()");
    TORCH_CHECK(index <= size_t{0xFFFFFFFF}, Derived::kName, ": too many parameters");
    TORCH_CHECK(!fresh.entries.empty(), Derived::kName, ": none of the ", index,
                " parameters is trainable: all have requires_grad() == false, and frozen parameters are neither "
                "perturbed nor updated. Call requires_grad_(true) on the tensors to train (module parameters have it "
                "by default), or pass include_frozen(true) in the options to train every tensor");
    check_no_overlap(signature);
    // Keep the global state under the first tensor of the (possibly changed) full list.
    if (!table_.entries.empty() && state_owner_.defined()) {
      const auto old_key = detail::state_key(state_owner_);
      const auto new_key = detail::state_key(first_param());
      if (old_key != new_key) {
        auto found = state_.find(old_key);
        if (found != state_.end()) {
          auto moved = std::move(found->second);
          state_.erase(found);
          state_[new_key] = std::move(moved);
        }
      }
    }
    state_owner_ = first_param();
    table_ = std::move(fresh);
    signature_ = std::move(signature);
  }

  /// Refuses two tensors that share memory when one of them is swept: a sweep of one would move
  /// the other. Non-overlapping views of one storage (two halves of a buffer) are fine.
  void check_no_overlap(const std::vector<Signature>& signature) const {
    struct Span {
      const void* storage;
      int64_t begin, end;
      size_t index;
      bool swept;
    };
    std::vector<Span> spans;
    size_t index = 0;
    for (const auto& group : param_groups_) {
      for (const auto& p : group.params()) {
        const Signature& s = signature[index];
        if (s.storage != nullptr && p.numel() > 0 && p.device().type() != c10::kMeta) {
          // Element extent in the storage; exact for the contiguous swept tensors.
          int64_t last = p.storage_offset();
          for (int64_t d = 0; d < p.dim(); ++d) last += (p.size(d) - 1) * std::max<int64_t>(p.stride(d), 0);
          const int64_t size = static_cast<int64_t>(p.element_size());
          spans.push_back({s.storage, p.storage_offset() * size, (last + 1) * size, index, s.swept});
        }
        ++index;
      }
    }
    std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) {
      return a.storage != b.storage ? std::less<const void*>()(a.storage, b.storage) : a.begin < b.begin;
    });
    const Span* reach_all = nullptr;    // the span reaching furthest so far in this storage
    const Span* reach_swept = nullptr;  // the same among swept tensors
    for (const Span& span : spans) {
      if (reach_all != nullptr && reach_all->storage != span.storage) reach_all = reach_swept = nullptr;
      const Span* other = span.swept ? reach_all : reach_swept;
      if (other != nullptr && span.begin < other->end) {
        const size_t a = std::min(other->index, span.index), b = std::max(other->index, span.index);
        TORCH_CHECK(false, Derived::kName, ": parameters ", a, " and ", b,
                    " are views of overlapping memory (bytes [", other->begin, ", ", other->end, ") and [", span.begin,
                    ", ", span.end, ") of one storage); perturbing one would change the other. Pass each weight once "
                    "(a tied weight as one tensor), or make the views disjoint");
      }
      if (reach_all == nullptr || span.end > reach_all->end) reach_all = &span;
      if (span.swept && (reach_swept == nullptr || span.end > reach_swept->end)) reach_swept = &span;
    }
  }

  /// The parameter layout a checkpoint is valid for.
  struct Layout {
    std::vector<int64_t> dtypes, dims, sizes, trained;
  };

  Layout layout(bool include_frozen) const {
    Layout l;
    int64_t index = 0;
    for (const auto& group : param_groups_) {
      for (const auto& p : group.params()) {
        l.dtypes.push_back(p.defined() ? static_cast<int64_t>(p.scalar_type()) : -1);
        l.dims.push_back(p.defined() ? p.dim() : 0);
        if (p.defined()) l.sizes.insert(l.sizes.end(), p.sizes().begin(), p.sizes().end());
        if (p.defined() && (include_frozen || p.requires_grad())) l.trained.push_back(index);
        ++index;
      }
    }
    return l;
  }

  static void write_layout(torch::serialize::OutputArchive& archive, const Layout& l) {
    archive.write("zotorch_layout_version", c10::IValue(int64_t{1}));
    archive.write("zotorch_layout_dtypes", c10::IValue(l.dtypes));
    archive.write("zotorch_layout_dims", c10::IValue(l.dims));
    archive.write("zotorch_layout_sizes", c10::IValue(l.sizes));
    archive.write("zotorch_layout_trained", c10::IValue(l.trained));
  }

  static Layout read_layout(torch::serialize::InputArchive& archive) {
    c10::IValue version;
    TORCH_CHECK(archive.try_read("zotorch_layout_version", version), Derived::kName,
                ": the checkpoint records no parameter layout: it was written by an older zotorch (or is not an "
                "optimizer checkpoint). Such checkpoints are not loaded, since a different parameter list would "
                "silently change every direction; restart from the model weights, or save it again with this version");
    TORCH_CHECK(version.isInt() && version.toInt() == 1, Derived::kName, ": unknown checkpoint layout version ",
                version);
    auto list = [&](const char* name) {
      const c10::IValue v = detail::read_field(archive, name);
      TORCH_CHECK(v.isIntList(), Derived::kName, ": checkpoint field '", name, "' is not a list of integers");
      return v.toIntVector();
    };
    Layout l;
    l.dtypes = list("zotorch_layout_dtypes");
    l.dims = list("zotorch_layout_dims");
    l.sizes = list("zotorch_layout_sizes");
    l.trained = list("zotorch_layout_trained");
    int64_t total_dims = 0;
    for (int64_t d : l.dims) {
      TORCH_CHECK(d >= 0 && d <= 64, Derived::kName, ": checkpoint layout has a tensor of ", d, " dimensions");
      total_dims += d;
    }
    TORCH_CHECK(l.dtypes.size() == l.dims.size() && total_dims == static_cast<int64_t>(l.sizes.size()), Derived::kName,
                ": checkpoint layout is inconsistent (", l.dtypes.size(), " dtypes, ", l.dims.size(), " ranks, ",
                l.sizes.size(), " sizes)");
    return l;
  }

  static std::string describe(const Layout& l, size_t i, size_t first_size) {
    std::ostringstream out;
    out << (l.dtypes[i] < 0 ? std::string("undefined") : c10::toString(static_cast<at::ScalarType>(l.dtypes[i]))) << " [";
    for (int64_t d = 0; d < l.dims[i]; ++d) out << (d ? ", " : "") << l.sizes[first_size + static_cast<size_t>(d)];
    out << "]";
    return out.str();
  }

  static std::string id_list(const std::vector<int64_t>& ids) {
    std::ostringstream out;
    out << "{";
    for (size_t i = 0; i < ids.size() && i < 12; ++i) out << (i ? ", " : "") << ids[i];
    if (ids.size() > 12) out << ", ... (" << ids.size() << " in all)";
    out << "}";
    return out.str();
  }

  /// Throws unless `here` has the tensors of `saved` (count, shapes, dtypes) and, with `trained`,
  /// trains the same ones.
  void check_layout(const Layout& saved, const Layout& here, bool trained) const {
    TORCH_CHECK(saved.dtypes.size() == here.dtypes.size(), Derived::kName, ": the checkpoint was saved for ",
                saved.dtypes.size(), " parameters, this optimizer has ", here.dtypes.size(),
                "; build it over the same parameters in the same order (same model, same param groups) as the run that "
                "saved it: each tensor's directions depend on its index");
    size_t a = 0, b = 0;
    for (size_t i = 0; i < saved.dtypes.size(); ++i) {
      const bool same = saved.dtypes[i] == here.dtypes[i] && saved.dims[i] == here.dims[i] &&
                        std::equal(saved.sizes.begin() + static_cast<std::ptrdiff_t>(a),
                                   saved.sizes.begin() + static_cast<std::ptrdiff_t>(a + static_cast<size_t>(saved.dims[i])),
                                   here.sizes.begin() + static_cast<std::ptrdiff_t>(b));
      TORCH_CHECK(same, Derived::kName, ": parameter ", i, " is ", describe(saved, i, a), " in the checkpoint but ",
                  describe(here, i, b), " in this optimizer; build it over the same parameters in the same order as "
                  "the run that saved the checkpoint");
      a += static_cast<size_t>(saved.dims[i]);
      b += static_cast<size_t>(here.dims[i]);
    }
    TORCH_CHECK(!trained || saved.trained == here.trained, Derived::kName, ": the checkpoint trained the parameters ",
                id_list(saved.trained), " (indices in the parameter list), this optimizer would train ",
                id_list(here.trained),
                "; set requires_grad as it was when the checkpoint was saved (and the same include_frozen), load, "
                "then change it if you mean to");
  }

  friend struct detail::ReplayAccess;

  detail::ParamTable table_;
  std::vector<Signature> signature_;  ///< one per tensor of the full list, frozen ones included
  at::Tensor state_owner_;            ///< the tensor the global state is keyed under
  StepReport last_step_;
  ParamState state_before_last_step_;
  int64_t calls_ = 0;
  /// False only while a trajectory replay rebuilds the state of steps before its range: the
  /// method runs, the sweeps are counted but not applied.
  bool apply_sweeps_ = true;
  LossReducer loss_reducer_;
};

}  // namespace zotorch
