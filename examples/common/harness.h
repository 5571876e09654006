// The fine-tuning programs' shared training harness: the optimizer behind one interface (FZOO,
// MeZO, AdaMeZO or Adam), the seeded batch sampler, the loop with its progress lines, metrics.csv,
// the best-on-dev trained.safetensors, checkpoint.ckpt and --resume, the final test evaluation and
// summary.json. A program describes its model as a TrainingTask (what trains, a training loss of a
// batch, a dev and a test evaluation); finetune_classifier and finetune_lm both run on it.
// docs/examples.md "Outputs" describes the files.
#pragma once

#include "files.h"
#include "safetensors.h"

#include <zotorch/trajectory.h>
#include <zotorch/zotorch.h>

#include <torch/optim/adam.h>
#include <torch/serialize.h>

#ifdef ZOTORCH_EXAMPLES_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace zotorch::examples {

/// The process's peak resident set (getrusage), in bytes.
inline int64_t peak_rss_bytes() {
  struct rusage usage {};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<int64_t>(usage.ru_maxrss) * 1024;  // Linux reports KiB
}

/// Peak memory of a run: the CUDA caching allocator's peak on a GPU, else the peak resident set.
inline int64_t peak_bytes(const at::Device& device) {
#ifdef ZOTORCH_EXAMPLES_CUDA
  if (device.is_cuda()) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index() < 0 ? 0 : device.index());
    return stats.allocated_bytes[0].peak;
  }
#endif
  (void)device;
  return peak_rss_bytes();
}

inline std::string format_seconds(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  char buf[32];
  if (s < 60) std::snprintf(buf, sizeof buf, "%.0fs", s);
  else if (s < 3600) std::snprintf(buf, sizeof buf, "%dm%02ds", static_cast<int>(s) / 60, static_cast<int>(s) % 60);
  else std::snprintf(buf, sizeof buf, "%dh%02dm", static_cast<int>(s) / 3600, (static_cast<int>(s) % 3600) / 60);
  return buf;
}

/// metrics.csv and summary.json: the whole file or none of it, even after a crash.
inline void write_text_atomically(const std::filesystem::path& path, const std::string& text) {
  zotorch::write_file_atomically(path.string(), text);
}

/// "a,b,c" -> {a, b, c}, empty parts dropped.
inline std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream in(s);
  std::string part;
  while (std::getline(in, part, sep)) {
    if (!part.empty()) out.push_back(part);
  }
  return out;
}

/// Epoch-shuffled batches from a seeded generator: batch t is a pure function of (seed, t), so a
/// resumed run replays the generator to the checkpoint's step and sees the same batches.
class Sampler {
 public:
  Sampler(size_t n, size_t batch, uint64_t seed) : n_(n), batch_(std::min(batch, n)), rng_(seed), order_(n) {
    std::iota(order_.begin(), order_.end(), 0);
    pos_ = n_;  // shuffle before the first batch
  }
  std::vector<size_t> next() {
    if (pos_ + batch_ > n_) {
      std::shuffle(order_.begin(), order_.end(), rng_);
      pos_ = 0;
    }
    std::vector<size_t> out(order_.begin() + static_cast<std::ptrdiff_t>(pos_),
                            order_.begin() + static_cast<std::ptrdiff_t>(pos_ + batch_));
    pos_ += batch_;
    return out;
  }

 private:
  size_t n_, batch_;
  std::mt19937_64 rng_;
  std::vector<size_t> order_;
  size_t pos_;
};

/// Batches of `batch` indices of `lengths` in length order, for evaluation: little padding.
inline std::vector<std::vector<size_t>> length_sorted_batches(const std::vector<size_t>& lengths, int64_t batch) {
  std::vector<size_t> order(lengths.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return lengths[a] < lengths[b]; });
  std::vector<std::vector<size_t>> out;
  for (size_t start = 0; start < order.size(); start += static_cast<size_t>(batch)) {
    out.emplace_back(order.begin() + static_cast<std::ptrdiff_t>(start),
                     order.begin() + static_cast<std::ptrdiff_t>(std::min(order.size(), start + static_cast<size_t>(batch))));
  }
  return out;
}

/// What the optimizer needs: --optimizer, --lr, --eps and the per-method options.
struct TrainerOptions {
  std::string optimizer = "fzoo";
  double lr = 1e-3, eps = 1e-3, weight_decay = 0;
  int64_t num_perturbations = 8, window = 10;
  uint64_t seed = 0;
};

/// TrainerOptions from a program's parsed command line; the fine-tuning programs name these fields alike.
template <class Args>
TrainerOptions trainer_options(const Args& a) {
  TrainerOptions t;
  t.optimizer = a.optimizer;
  t.lr = a.lr;
  t.eps = a.eps;
  t.weight_decay = a.weight_decay;
  t.num_perturbations = a.num_perturbations;
  t.window = a.window;
  t.seed = static_cast<uint64_t>(a.seed);
  return t;
}

/// The optimizer behind a uniform interface: one step on a batch, and the forward passes so far.
struct Trainer {
  std::unique_ptr<torch::optim::Optimizer> opt;
  std::function<int64_t()> forward_passes;
  int64_t fp_per_step = 0;
  bool backprop = false;
  int64_t adam_steps = 0;  ///< Adam has no forward-pass counter: steps × 3
  std::string note;        ///< how forward passes are counted, for the log and summary.json
  /// Appends the optimizer's last step to a trajectory (docs/trajectory.md); empty for Adam.
  std::function<void(zotorch::TrajectoryWriter&)> append_step;
};

inline Trainer make_trainer(const TrainerOptions& a, const std::vector<at::Tensor>& params) {
  Trainer t;
  if (a.optimizer == "fzoo") {
    auto o = std::make_unique<zotorch::FZOO>(
        params, zotorch::FZOOOptions(a.lr).eps(a.eps).num_perturbations(a.num_perturbations).weight_decay(a.weight_decay).seed(a.seed));
    auto* raw = o.get();
    t.forward_passes = [raw] { return raw->forward_passes(); };
    t.append_step = [raw](zotorch::TrajectoryWriter& w) { w.append(*raw); };
    t.fp_per_step = a.num_perturbations + 1;
    t.opt = std::move(o);
  } else if (a.optimizer == "mezo") {
    auto o = std::make_unique<zotorch::MeZO>(params, zotorch::MeZOOptions(a.lr).eps(a.eps).weight_decay(a.weight_decay).seed(a.seed));
    auto* raw = o.get();
    t.forward_passes = [raw] { return raw->forward_passes(); };
    t.append_step = [raw](zotorch::TrajectoryWriter& w) { w.append(*raw); };
    t.fp_per_step = 2;
    t.opt = std::move(o);
  } else if (a.optimizer == "adamezo") {
    auto o = std::make_unique<zotorch::AdaMeZO>(
        params, zotorch::AdaMeZOOptions(a.lr).eps(a.eps).window(a.window).weight_decay(a.weight_decay).seed(a.seed));
    auto* raw = o.get();
    t.forward_passes = [raw] { return raw->forward_passes(); };
    t.append_step = [raw](zotorch::TrajectoryWriter& w) { w.append(*raw); };
    t.fp_per_step = 2;
    t.opt = std::move(o);
  } else {
    TORCH_CHECK(a.optimizer == "adam", "make_trainer: unknown optimizer '", a.optimizer, "'; use fzoo, mezo, adamezo or adam");
    t.opt = std::make_unique<torch::optim::Adam>(params, torch::optim::AdamOptions(a.lr).weight_decay(a.weight_decay));
    t.backprop = true;
    t.fp_per_step = 3;  // one forward + a backward of about two (docs/algorithms.md "Counting forward passes")
    auto* steps = &t.adam_steps;
    t.forward_passes = [steps] { return *steps * 3; };
  }
  std::ostringstream note;
  if (t.backprop) {
    note << "Adam counts 3 forward-pass equivalents per step (one forward + one backward of about two), as the FZOO paper does";
  } else {
    note << a.optimizer << " uses " << t.fp_per_step << " forward passes per step";
  }
  t.note = note.str();
  return t;
}

/// One evaluation of a data set: the selection metric (accuracy, perplexity, ...) and the mean loss.
struct Evaluation {
  double metric = std::nan("");
  double loss = std::nan("");
};

/// A program's model as the harness sees it.
struct TrainingTask {
  std::vector<at::Tensor> params;   ///< the trainable tensors (requires_grad true), in a fixed order
  std::vector<std::string> names;   ///< their names in trained.safetensors and the checkpoint
  size_t train_size = 0;            ///< training examples; the sampler draws indices below it
  /// Mean training loss (a float scalar) of the training examples `idx`; Adam backpropagates it.
  std::function<at::Tensor(const std::vector<size_t>& idx)> loss;
  /// Optional, after Adam's backward and before its step (e.g. gradients of merged LoRA weights).
  std::function<void()> after_backward;
  std::function<Evaluation()> evaluate_dev, evaluate_test;
  /// Optional: also evaluated once before training; summary.json then holds test_<metric>_before_training.
  std::function<Evaluation()> evaluate_test_before_training;
  std::string metric = "accuracy";  ///< column and key name: dev_<metric>, test_<metric>
  bool higher_is_better = true;
};

/// The loop's settings: budget, batch, evaluation interval, where to write and how to log.
struct LoopOptions {
  std::string program;             ///< in error messages and the checkpoint check
  std::string optimizer, mode;     ///< a resume must match these
  std::string out;
  int64_t budget = 0, batch = 16, seed = 0, eval_every = -1;
  bool resume = false;
  /// Record every step in this trajectory file (ZO methods); see run_training.
  std::string trajectory;
  at::Device device = at::kCPU;
  std::map<std::string, std::string> metadata;  ///< extra trained.safetensors metadata
  std::function<double()> elapsed;              ///< seconds since the program started
  std::function<void(const std::string&)> log;  ///< a progress line (quiet: nothing)
};

/// The LoopOptions of a program whose command line `a` has the fields both programs share
/// (optimizer, mode, out, budget, batch, seed, eval_every, resume, trajectory, model, lora_rank, lora_alpha):
/// the model, and with --mode lora the adapters' rank and alpha (the update is B·A·alpha/rank),
/// go into trained.safetensors' metadata; the program adds its own keys afterwards.
template <class Args>
LoopOptions loop_options(const Args& a, std::string program, at::Device device, std::function<double()> elapsed,
                         std::function<void(const std::string&)> log) {
  LoopOptions loop;
  loop.program = std::move(program);
  loop.optimizer = a.optimizer;
  loop.mode = a.mode;
  loop.out = a.out;
  loop.budget = a.budget;
  loop.batch = a.batch;
  loop.seed = a.seed;
  loop.eval_every = a.eval_every;
  loop.resume = a.resume;
  loop.trajectory = a.trajectory;
  loop.device = device;
  loop.metadata = {{"model", a.model}};
  if (a.mode == "lora") {
    loop.metadata["lora_rank"] = std::to_string(a.lora_rank);
    loop.metadata["lora_alpha"] = std::to_string(a.lora_alpha);
  }
  loop.elapsed = std::move(elapsed);
  loop.log = std::move(log);
  return loop;
}

/// What a run ends with; `summary` is summary.json's common part (the program adds its own keys).
struct LoopResult {
  Evaluation test, test_before_training;
  double best_dev = std::nan(""), initial_dev = std::nan("");
  int64_t best_forward_passes = 0, forward_passes = 0, steps = 0;
  double wall_seconds = 0;
  Json summary;
};

/// Trains `task` with `trainer` until the budget of forward passes is spent, evaluating dev every
/// `eval_every` forward passes and keeping the best-on-dev tensors; then evaluates test on them.
/// Writes metrics.csv, checkpoint.ckpt, trained.safetensors; summary.json is the program's to write
/// (write_summary) after adding its keys to LoopResult::summary.
///
/// With LoopOptions::trajectory, every step() is appended to that log (docs/trajectory.md), and the
/// trainable tensors are written as base.safetensors where the log begins and as final.safetensors
/// after the last step: replaying the log onto base.safetensors (examples/replay) gives
/// final.safetensors byte for byte. A run from scratch starts a new log; a resumed run continues it.
inline LoopResult run_training(const LoopOptions& a, TrainingTask& task, Trainer& trainer) {
  namespace fs = std::filesystem;
  auto& params = task.params;
  const auto& names = task.names;
  const std::string& metric = task.metric;
  auto better = [&](double x, double than) { return task.higher_is_better ? x > than : x < than; };
  auto log = [&](const std::string& line) {
    if (a.log) a.log(line);
  };

  // One checkpoint file (zotorch::save_checkpoint: length and CRC-32 checked on load, written
  // atomically) holds the trainable tensors, the optimizer's state and the loop's state together,
  // so a resume never pairs the tensors of one step with the optimizer state of another.
  fs::create_directories(a.out);
  const fs::path out(a.out), ckpt = out / "checkpoint.ckpt", metrics_path = out / "metrics.csv";
  const fs::path trained_path = out / "trained.safetensors";
  int64_t step = 0, metric_rows = 0, best_fp = 0, best_step = 0;
  const double nan = std::nan("");
  double best_dev = task.higher_is_better ? -std::numeric_limits<double>::infinity() : std::numeric_limits<double>::infinity();
  double prior_seconds = 0, initial_dev = nan, running_loss = nan;
  Evaluation test_before;
  bool resumed = false;
  Sampler sampler(task.train_size, static_cast<size_t>(a.batch), static_cast<uint64_t>(a.seed) * 0x9E3779B97F4A7C15ull + 1);
  if (a.resume && fs::exists(ckpt)) {
    torch::serialize::InputArchive archive, tensors, optimizer_state;
    zotorch::load_checkpoint(archive, ckpt.string());
    c10::IValue state_text;
    TORCH_CHECK(archive.try_read("state", state_text) && state_text.isString() && archive.try_read("trainable", tensors) &&
                    archive.try_read("optimizer", optimizer_state),
                a.program, ": ", ckpt.string(), " is a zotorch checkpoint but not one of ", a.program, "; choose another --out");
    const Json s = Json::parse(state_text.toStringRef());
    const auto saved_optimizer = s.at("optimizer").get<std::string>(), saved_mode = s.at("mode").get<std::string>();
    TORCH_CHECK(saved_optimizer == a.optimizer && saved_mode == a.mode, a.program, ": ", ckpt.string(),
                " was written by --optimizer ", saved_optimizer, " --mode ", saved_mode,
                "; resume with the same options or choose another --out");
    TORCH_CHECK(json_value<std::string>(s, "metric", "accuracy") == metric, a.program, ": ", ckpt.string(),
                " selects by dev ", json_value<std::string>(s, "metric", "accuracy"), ", this run by dev ", metric,
                "; resume with the same options or choose another --out");
    TORCH_CHECK(s.at("trainable_names").get<std::vector<std::string>>() == names, a.program, ": ", ckpt.string(),
                " holds other trainable tensors than this run trains (", s.at("trainable_names").size(), " saved, ",
                params.size(), " now); resume with the same --mode/--train-layers/--lora-rank");
    std::vector<at::Tensor> saved(params.size());
    for (size_t i = 0; i < params.size(); ++i) {
      tensors.read("t" + std::to_string(i), saved[i]);
      TORCH_CHECK(saved[i].sizes() == params[i].sizes(), a.program, ": ", names[i], " is ", saved[i].sizes(), " in ",
                  ckpt.string(), " but ", params[i].sizes(), " in this model");
    }
    trainer.opt->load(optimizer_state);
    {
      torch::NoGradGuard no_grad;
      for (size_t i = 0; i < params.size(); ++i) params[i].copy_(saved[i]);
    }
    step = s.at("step").get<int64_t>();
    trainer.adam_steps = json_value<int64_t>(s, "adam_steps", 0);
    metric_rows = s.at("metric_rows").get<int64_t>();
    best_dev = json_value<double>(s, "best_dev", nan);  // null when it was not finite
    best_fp = s.at("best_forward_passes").get<int64_t>();
    best_step = json_value<int64_t>(s, "best_step", 0);
    resumed = true;
    initial_dev = json_value<double>(s, "initial_dev", nan);
    prior_seconds = s.at("wall_seconds").get<double>();
    running_loss = json_value<double>(s, "running_loss", nan);
    test_before.metric = json_value<double>(s, "test_metric_before_training", nan);
    test_before.loss = json_value<double>(s, "test_loss_before_training", nan);
    for (int64_t i = 0; i < step; ++i) sampler.next();
    // metrics.csv may have rows written after the checkpoint: keep exactly those it accounts for.
    std::ifstream in(metrics_path);
    std::string line, kept;
    for (int64_t i = 0; i <= metric_rows && std::getline(in, line); ++i) kept += line + "\n";
    write_text_atomically(metrics_path, kept);
    log("  resumed from " + ckpt.string() + " at step " + std::to_string(step) + ", " +
        std::to_string(trainer.forward_passes()) + " forward passes");
  } else {
    write_text_atomically(metrics_path, "step,forward_passes,train_loss,dev_loss,dev_" + metric + ",best_dev_" + metric +
                                            ",wall_seconds\n");
  }

  // The best-on-dev trainable tensors, by their model names, with what produced them: the result
  // that leaves the program (docs/examples.md "Outputs"), and what the test set is evaluated on.
  auto save_best = [&] {
    NamedTensors named;
    for (size_t i = 0; i < params.size(); ++i) named.emplace_back(names[i], params[i]);
    std::map<std::string, std::string> metadata = {{"format", "pt"},
                                                   {"optimizer", a.optimizer},
                                                   {"mode", a.mode},
                                                   {"dev_" + metric, std::to_string(best_dev)},
                                                   {"forward_passes", std::to_string(best_fp)},
                                                   {"step", std::to_string(best_step)}};
    for (const auto& [k, v] : a.metadata) metadata[k] = v;
    save_safetensors(trained_path.string(), named, metadata);
  };
  auto total_seconds = [&] { return prior_seconds + (a.elapsed ? a.elapsed() : 0.0); };
  auto evaluate_dev = [&](int64_t fp) {
    const Evaluation e = task.evaluate_dev();
    if (std::isnan(initial_dev)) initial_dev = e.metric;
    if (better(e.metric, best_dev) || std::isnan(best_dev)) {
      best_dev = e.metric;
      best_fp = fp;
      best_step = step;
      save_best();
    }
    std::ofstream csv(metrics_path, std::ios::app);
    csv.precision(10);
    csv << step << "," << fp << "," << (std::isfinite(running_loss) ? running_loss : e.loss) << "," << e.loss << ","
        << e.metric << "," << best_dev << "," << total_seconds() << "\n";
    ++metric_rows;
    return e.metric;
  };
  auto checkpoint = [&] {
    Json s = {{"optimizer", a.optimizer},   {"mode", a.mode},          {"metric", metric},
              {"trainable_names", names},   {"step", step},            {"adam_steps", trainer.adam_steps},
              {"metric_rows", metric_rows}, {"best_dev", best_dev},    {"best_forward_passes", best_fp},
              {"best_step", best_step},
              {"initial_dev", initial_dev}, {"wall_seconds", total_seconds()}, {"running_loss", running_loss},
              {"test_metric_before_training", test_before.metric}, {"test_loss_before_training", test_before.loss}};
    torch::serialize::OutputArchive archive, tensors, optimizer_state;
    // Archive keys cannot hold the '.' of parameter names: tensors go by index, names in the state.
    for (size_t i = 0; i < params.size(); ++i) tensors.write("t" + std::to_string(i), params[i].detach());
    trainer.opt->save(optimizer_state);
    archive.write("state", c10::IValue(s.dump()));
    archive.write("trainable", tensors);
    archive.write("optimizer", optimizer_state);
    zotorch::save_checkpoint(archive, ckpt.string());
  };
  auto fmt = [](double v) {
    char b[32];
    std::snprintf(b, sizeof b, "%.4f", v);
    return std::string(b);
  };

  // ---- trajectory ----------------------------------------------------------------------------
  // The trainable tensors under their names, tagged with the step they are at: base.safetensors
  // and final.safetensors differ in their tensors and "step" only, as replay's output does.
  auto save_weights = [&](const fs::path& path) {
    NamedTensors named;
    for (size_t i = 0; i < params.size(); ++i) named.emplace_back(names[i], params[i]);
    std::map<std::string, std::string> metadata = {
        {"format", "pt"}, {"optimizer", a.optimizer}, {"mode", a.mode}, {"step", std::to_string(step)}};
    for (const auto& [k, v] : a.metadata) metadata[k] = v;
    save_safetensors(path.string(), named, metadata);
  };
  std::unique_ptr<zotorch::TrajectoryWriter> trajectory;
  double step_seconds = 0;  // in step() and append() this run, evaluations excluded: what replay is compared with
  int64_t steps_timed = 0;
  if (!a.trajectory.empty()) {
    TORCH_CHECK(trainer.append_step, a.program, ": --trajectory records the steps of fzoo, mezo and adamezo; ",
                a.optimizer, " has no trajectory. Drop --trajectory or choose a ZO --optimizer");
    const fs::path log_path(a.trajectory);
    // A run from scratch must not continue the log of an earlier one (its weights may differ).
    if (!resumed) fs::remove(log_path);
    if (log_path.has_parent_path()) fs::create_directories(log_path.parent_path());
    std::error_code no_file;
    if (!fs::exists(log_path) || fs::file_size(log_path, no_file) == 0) save_weights(out / "base.safetensors");
    // Opening an existing log checks it; its first append cuts it back to the checkpoint's step.
    trajectory = std::make_unique<zotorch::TrajectoryWriter>(log_path.string());
    trajectory->names(names);
  }

  // ---- training ------------------------------------------------------------------------------
  const int64_t eval_every = a.eval_every > 0 ? a.eval_every : std::max<int64_t>(trainer.fp_per_step, a.budget / 10);
  if (metric_rows == 0) {
    const double m = evaluate_dev(0);
    std::string line = "  step 0 | dev " + metric + " " + fmt(m);
    if (task.evaluate_test_before_training) {
      test_before = task.evaluate_test_before_training();
      line += ", test " + metric + " " + fmt(test_before.metric);
    }
    log(line + " (before training)");
    checkpoint();
  }
  int64_t next_eval = (trainer.forward_passes() / eval_every + 1) * eval_every;
  const double train_started = total_seconds();
  const int64_t fp_started = trainer.forward_passes();
  int64_t examples_seen = 0;
  while (trainer.forward_passes() + trainer.fp_per_step <= a.budget) {
    const std::vector<size_t> idx = sampler.next();
    auto loss_fn = [&] { return task.loss(idx); };
    double loss;
    if (trainer.backprop) {
      trainer.opt->zero_grad();
      at::Tensor l = loss_fn();
      l.backward();
      if (task.after_backward) task.after_backward();
      trainer.opt->step();
      ++trainer.adam_steps;
      loss = l.item<double>();
    } else if (trajectory) {
      // A step that throws restored the parameters; its record keeps the log replayable, and a
      // run resumed from the last checkpoint continues the log from there.
      at::Tensor l;
      const auto step_started = std::chrono::steady_clock::now();
      try {
        l = trainer.opt->step(loss_fn);
      } catch (...) {
        trainer.append_step(*trajectory);
        throw;
      }
      trainer.append_step(*trajectory);
      step_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - step_started).count();
      ++steps_timed;
      loss = l.item<double>();
    } else {
      loss = trainer.opt->step(loss_fn).item<double>();
    }
    ++step;
    examples_seen += static_cast<int64_t>(idx.size());
    if (std::isfinite(loss)) running_loss = std::isfinite(running_loss) ? 0.9 * running_loss + 0.1 * loss : loss;
    const int64_t fp = trainer.forward_passes();
    const bool last = fp + trainer.fp_per_step > a.budget;
    if (fp >= next_eval || last) {
      next_eval = (fp / eval_every + 1) * eval_every;
      const double m = evaluate_dev(fp);
      checkpoint();
      const double spent = total_seconds() - train_started;
      const double rate = static_cast<double>(fp - fp_started) / std::max(spent, 1e-9);
      char line[256];
      std::snprintf(line, sizeof line, "  step %lld | fp %lld/%lld | loss %.4f | dev %.4f (best %.4f) | %.1f ex/s | ETA %s",
                    static_cast<long long>(step), static_cast<long long>(fp), static_cast<long long>(a.budget), running_loss, m,
                    best_dev, static_cast<double>(examples_seen) / std::max(spent, 1e-9),
                    format_seconds(static_cast<double>(a.budget - fp) / std::max(rate, 1e-9)).c_str());
      log(line);
    }
  }

  if (trajectory) {
    save_weights(out / "final.safetensors");
    char line[160];
    std::snprintf(line, sizeof line, "%lld steps this run in %.3f s of step() and append(), %.2f steps/s",
                  static_cast<long long>(steps_timed), step_seconds,
                  static_cast<double>(steps_timed) / std::max(step_seconds, 1e-9));
    log("  trajectory " + a.trajectory + ": " + std::to_string(trajectory->bytes()) + " bytes, steps to " +
        std::to_string(step) + "; " + line + ". Replaying it onto " + (out / "base.safetensors").string() +
        " gives " + (out / "final.safetensors").string());
  }

  // ---- final evaluation with the best dev checkpoint -----------------------------------------
  if (fs::exists(trained_path)) {
    std::map<std::string, at::Tensor> best;
    for (auto& [name, t] : load_safetensors(trained_path.string())) best[name] = t;
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < params.size(); ++i) {
      const auto it = best.find(names[i]);
      TORCH_CHECK(it != best.end() && it->second.sizes() == params[i].sizes(), a.program, ": ", trained_path.string(),
                  " lacks ", names[i], " as this run trains it; was it written by another run?");
      params[i].copy_(it->second);
    }
  }
  LoopResult r;
  r.test = task.evaluate_test();
  r.test_before_training = test_before;
  r.best_dev = best_dev;
  r.initial_dev = initial_dev;
  r.best_forward_passes = best_fp;
  r.forward_passes = trainer.forward_passes();
  r.steps = step;
  r.wall_seconds = total_seconds();
  int64_t trainable_numel = 0;
  for (const auto& p : params) trainable_numel += p.numel();
  Json& s = r.summary;
  s = Json::object();
  s["optimizer"] = a.optimizer;
  s["mode"] = a.mode;
  s["test_" + metric] = r.test.metric;
  s["test_loss"] = r.test.loss;
  s["dev_" + metric] = best_dev;
  s["best_dev_" + metric] = best_dev;
  s["dev_" + metric + "_before_training"] = initial_dev;
  if (task.evaluate_test_before_training) {
    s["test_" + metric + "_before_training"] = test_before.metric;
    s["test_loss_before_training"] = test_before.loss;
  }
  s["best_dev_forward_passes"] = best_fp;
  s["forward_passes"] = r.forward_passes;
  s["forward_passes_per_step"] = trainer.fp_per_step;
  s["forward_pass_note"] = trainer.note;
  s["steps"] = step;
  s["wall_seconds"] = r.wall_seconds;
  s["seconds"] = r.wall_seconds;
  s["peak_bytes"] = peak_bytes(a.device);
  s["peak_bytes_note"] = a.device.is_cuda() ? "CUDA caching allocator peak" : "process peak resident set (getrusage)";
  s["peak_rss_mib"] = static_cast<double>(peak_rss_bytes()) / (1 << 20);
  s["trainable_parameters"] = trainable_numel;
  s["batch"] = a.batch;
  s["seed"] = a.seed;
  s["trained_tensors"] = trained_path.string();
  return r;
}

/// Writes summary.json into `out`.
inline void write_summary(const std::string& out, const Json& summary) {
  write_text_atomically(std::filesystem::path(out) / "summary.json", summary.dump(1) + "\n");
}

}  // namespace zotorch::examples
