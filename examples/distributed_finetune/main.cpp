// distributed_finetune: data-parallel fine-tuning of a BERT-family sentence classifier with
// zotorch::DataParallel over c10d (Gloo on CPU, NCCL on GPU). Each rank evaluates its shard of every
// global batch; only the step's losses cross the network. README "Multi-process and multi-node".
#include "../common/bert.h"
#include "../common/cli.h"
#include "../common/learning_rates.h"
#include "../common/safetensors.h"
#include "../common/tsv.h"
#include "../common/wordpiece.h"

#include <zotorch/distributed.h>
#include <zotorch/zotorch.h>

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef ZOTORCH_EXAMPLE_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif
#include <torch/cuda.h>
#include <torch/serialize.h>

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using namespace zotorch::examples;

namespace {

struct Args {
  std::string model, train, dev, optimizer = "fzoo", device = "cpu", out = "out/distributed";
  int64_t steps = 200, batch = 32, num_perturbations = 8, seed = 0, max_length = 64, threads = 0;
  int64_t checkpoint_every = 100, check_every = 50, eval_every = 100, measure_latency = 0;
  double lr = -1, eps = -1, timeout = 60;
  bool resume = false, json = false, quiet = false;
};

Args parse_args(int argc, char** argv) {
  Args a;
  CLI::App app("One rank of a data-parallel fine-tune of a BERT-family sentence classifier (every weight\n"
               "trains). Start one process per rank with the usual variables set: RANK, WORLD_SIZE,\n"
               "MASTER_ADDR, MASTER_PORT (and LOCAL_RANK for the GPU index); launch.sh next to this program,\n"
               "torchrun --no-python, or your own launcher set them. Without them it runs alone. Rank 0\n"
               "writes DIR/checkpoint.ckpt and, at the end, DIR/trained.safetensors.",
               "distributed_finetune");
  configure_cli(app);
  app.add_option("--model", a.model, "model directory (Hugging Face BERT family)")->option_text("DIR");
  app.add_option("--train", a.train, "training examples, text<TAB>label")->option_text("TSV");
  app.add_option("--dev", a.dev, "dev examples")->option_text("TSV");
  app.add_option("--optimizer", a.optimizer, "method")->check(CLI::IsMember({"fzoo", "mezo", "adamezo"}));
  app.add_option("--steps", a.steps, "optimizer steps")->check(non_negative());
  app.add_option("--batch", a.batch, "global batch: examples per step over all ranks, a multiple of WORLD_SIZE so that "
                 "every shard has the same size")->check(positive());
  app.add_option("--lr", a.lr, "learning rate (default: finetune_classifier's for --mode full, "
                 "examples/common/learning_rates.h)")->check(positive())->default_str("");
  app.add_option("--eps", a.eps, "perturbation scale (default: as --lr)")->check(positive())->default_str("");
  app.add_option("--num-perturbations", a.num_perturbations, "FZOO's N")->check(positive());
  app.add_option("--seed", a.seed, "batches, head initialisation and directions");
  app.add_option("--max-length", a.max_length, "tokens per example")->check(at_least(3));
  app.add_option("--device", a.device, "cuda: GPU LOCAL_RANK and NCCL; cpu: Gloo")->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--threads", a.threads, "intra-op threads per rank")->default_str("LibTorch's choice");
  app.add_option("--out", a.out, "output directory")->option_text("DIR");
  app.add_option("--checkpoint-every", a.checkpoint_every, "rank 0 writes DIR/checkpoint.ckpt every N steps (0 = never)")
      ->check(non_negative());
  app.add_flag("--resume", a.resume, "continue from DIR/checkpoint.ckpt (read by rank 0, broadcast to all)");
  app.add_option("--check-every", a.check_every, "compare replica checksums every N steps (0 = start only)")
      ->check(non_negative());
  app.add_option("--eval-every", a.eval_every, "dev accuracy (sharded over the ranks) every N steps")->check(non_negative());
  app.add_option("--timeout", a.timeout, "seconds a collective may wait for a peer")->check(positive());
  app.add_option("--measure-latency", a.measure_latency, "time N all-reduces of one step's losses before training")
      ->check(non_negative());
  app.add_flag("--json", a.json, "end with one JSON line of measurements (rank 0)");
  app.add_flag("--quiet", a.quiet, "only the summary");
  parse_or_exit(app, argc, argv);
  if (a.model.empty() || a.train.empty() || a.dev.empty()) usage_error(app, "--model, --train and --dev are required");
  const DefaultRates d = default_rates(a.optimizer, "full");
  if (a.lr < 0) a.lr = d.lr;
  if (a.eps < 0) a.eps = d.eps;
  return a;
}

[[noreturn]] void environment_error(const std::string& message) {
  std::cerr << "distributed_finetune: " << message << "\n";
  std::exit(2);
}

/// The launcher's variables (torchrun's names). Missing ones mean a single process.
struct Launch {
  int rank = 0, world_size = 1, local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  bool agent_store = false;   ///< torchrun hosts the store itself (TORCHELASTIC_USE_AGENT_STORE)
  std::string attempt = "0";  ///< TORCHELASTIC_RESTART_COUNT: a restarted group uses fresh keys

  static Launch from_environment() {
    auto get = [](const char* name) -> const char* { return std::getenv(name); };
    auto number = [&](const char* name, int fallback) {
      const char* v = get(name);
      if (v == nullptr || *v == '\0') return fallback;
      try {
        return std::stoi(v);
      } catch (const std::exception&) {
        environment_error(std::string("environment variable ") + name + "='" + v + "' is not a number");
      }
    };
    Launch l;
    l.world_size = number("WORLD_SIZE", 1);
    l.rank = number("RANK", 0);
    l.local_rank = number("LOCAL_RANK", 0);
    l.master_port = number("MASTER_PORT", 29500);
    if (const char* addr = get("MASTER_ADDR")) l.master_addr = addr;
    if (const char* agent = get("TORCHELASTIC_USE_AGENT_STORE")) l.agent_store = std::string(agent) == "True";
    if (const char* restart = get("TORCHELASTIC_RESTART_COUNT")) l.attempt = restart;
    if (l.world_size < 1 || l.rank < 0 || l.rank >= l.world_size) {
      environment_error("RANK must be in [0, WORLD_SIZE), got RANK=" + std::to_string(l.rank) + " WORLD_SIZE=" +
                  std::to_string(l.world_size));
    }
    return l;
  }
};

/// The process group, created the way torch.distributed's env:// init does: rank 0 hosts a
/// TCPStore at MASTER_ADDR:MASTER_PORT (unless torchrun's agent already does), every rank joins it.
c10::intrusive_ptr<c10d::Backend> make_group(const Launch& l, const at::Device& device, std::chrono::milliseconds timeout) {
  c10d::TCPStoreOptions store_options;
  store_options.port = static_cast<uint16_t>(l.master_port);
  store_options.isServer = l.rank == 0 && !l.agent_store;
  store_options.numWorkers = l.world_size;
  store_options.waitWorkers = false;
  store_options.timeout = timeout;
  auto store = c10::make_intrusive<c10d::PrefixStore>(
      "/worker/attempt_" + l.attempt, c10::make_intrusive<c10d::TCPStore>(l.master_addr, store_options));
  if (device.is_cuda()) {
#ifdef ZOTORCH_EXAMPLE_NCCL
    auto options = c10d::ProcessGroupNCCL::Options::create();
    options->timeout = timeout;
    return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, l.rank, l.world_size, options);
#else
    TORCH_CHECK(false, "distributed_finetune: --device cuda needs NCCL, and this build has no NCCL support; build it "
                "with the CUDA kernels enabled (nvcc and a CUDA LibTorch), or use --device cpu");
#endif
  }
  auto options = c10d::ProcessGroupGloo::Options::create(timeout);
  // GLOO_SOCKET_IFNAME picks the network interface on multi-homed nodes, as in PyTorch.
  const char* interface = std::getenv("GLOO_SOCKET_IFNAME");
  options->devices.push_back(interface != nullptr && *interface != '\0'
                                 ? c10d::ProcessGroupGloo::createDeviceForInterface(interface)
                                 : c10d::ProcessGroupGloo::createDefaultDevice());
  return c10::make_intrusive<c10d::ProcessGroupGloo>(store, l.rank, l.world_size, options);
}

struct Dataset {
  std::vector<std::vector<int64_t>> ids;
  std::vector<int64_t> labels;
};

Dataset make_dataset(const std::string& path, const WordPieceTokenizer& tok, const std::vector<std::string>& labels,
                     int64_t max_length, const std::string& what) {
  const auto rows = read_tsv(path);
  Dataset d;
  d.labels = label_indices(rows, labels, what + " (" + path + ")");
  for (const auto& r : rows) d.ids.push_back(tok.encode(r.text, max_length));
  return d;
}

/// Logits of examples `idx`, padded to the longest of them.
at::Tensor logits(BertClassifier& net, const Dataset& d, const std::vector<size_t>& idx, int64_t pad_id, const at::Device& device) {
  size_t longest = 0;
  for (size_t i : idx) longest = std::max(longest, d.ids[i].size());
  const auto B = static_cast<int64_t>(idx.size()), L = static_cast<int64_t>(longest);
  at::Tensor ids = at::full({B, L}, pad_id, at::kLong), mask = at::zeros({B, L}, at::kLong);
  auto ia = ids.accessor<int64_t, 2>();
  auto ma = mask.accessor<int64_t, 2>();
  for (int64_t b = 0; b < B; ++b) {
    const auto& row = d.ids[idx[static_cast<size_t>(b)]];
    for (size_t j = 0; j < row.size(); ++j) {
      ia[b][static_cast<int64_t>(j)] = row[j];
      ma[b][static_cast<int64_t>(j)] = 1;
    }
  }
  return net->forward(ids.to(device), mask.to(device));
}

/// Batch t of a seeded epoch shuffle: the same on every rank, and replayable on resume.
class Sampler {
 public:
  Sampler(size_t n, size_t batch, uint64_t seed) : n_(n), batch_(std::min(batch, n)), rng_(seed), order_(n), pos_(n) {
    std::iota(order_.begin(), order_.end(), 0);
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

std::string human_bytes(double bytes) {
  const char* units[] = {"B", "kB", "MB", "GB"};
  int u = 0;
  while (bytes >= 1000 && u < 3) {
    bytes /= 1000;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", bytes, units[u]);
  return buf;
}

/// CPU seconds this process has used: on a shared machine wall time also measures the neighbours.
double cpu_seconds() {
  struct rusage usage {};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
         1e-6 * static_cast<double>(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec);
}

/// One all-reduce of a small CPU/CUDA tensor, for the latency measurement and the sharded evaluation.
at::Tensor all_sum(const c10::intrusive_ptr<c10d::Backend>& group, at::Tensor t) {
  if (!group) return t;
  std::vector<at::Tensor> v{t};
  group->allreduce(v)->wait();
  return v.front();
}

/// Rank 0's checkpoint: the model and the optimizer in one zotorch checkpoint file (written
/// atomically, verified by length and CRC-32 on load; docs/reliability.md).
void save_checkpoint(const fs::path& out, BertClassifier& net, const torch::optim::Optimizer& opt) {
  zotorch::save_checkpoint(*net, opt, (out / "checkpoint.ckpt").string());
}

/// Rank 0 reads the checkpoint; its parameters reach the others through DataParallel's start-up
/// broadcast and its optimizer state through this one, so no other node needs the file.
template <class Opt>
int64_t resume(const fs::path& out, const Launch& l, const c10::intrusive_ptr<c10d::Backend>& group, BertClassifier& net,
               Opt& opt, const at::Device& device) {
  // Collectives run on the group's device (NCCL: CUDA tensors only).
  auto broadcast = [&](at::Tensor t) {
    if (!group) return t;
    std::vector<at::Tensor> v{t.to(device)};
    group->broadcast(v)->wait();
    return v.front().cpu();
  };
  const fs::path path = out / "checkpoint.ckpt";
  at::Tensor found = at::zeros({1}, at::kLong);
  std::string bytes;
  if (l.rank == 0 && fs::exists(path)) {
    // All or nothing: a damaged file throws before the model or the optimizer changes.
    zotorch::load_checkpoint(*net, opt, path.string());
    torch::serialize::OutputArchive state;
    opt.save(state);
    bytes = zotorch::checkpoint_bytes(state);
    found[0] = static_cast<int64_t>(bytes.size());
  }
  found = broadcast(found);
  const auto length = found[0].item<int64_t>();
  if (length == 0) return 0;
  at::Tensor buffer = at::zeros({length}, at::kByte);
  if (l.rank == 0) std::memcpy(buffer.data_ptr(), bytes.data(), static_cast<size_t>(length));
  buffer = broadcast(buffer);
  if (l.rank != 0) {
    torch::serialize::InputArchive state;
    zotorch::load_checkpoint_bytes(state, std::string(static_cast<const char*>(buffer.data_ptr()), static_cast<size_t>(length)),
                                   "rank 0's optimizer state");
    opt.load(state);
  }
  return opt.steps();
}

template <class Opt>
int train(const Args& a, const Launch& l, const c10::intrusive_ptr<c10d::Backend>& group, BertClassifier& net,
          std::vector<at::Tensor>& params, Opt& opt, const Dataset& train_set, const Dataset& dev, int64_t pad_id,
          const at::Device& device, int64_t fp_per_step) {
  auto log = [&](const std::string& line) {
    if (l.rank == 0 && !a.quiet) std::cout << line << std::endl;
  };
  const fs::path out(a.out);
  if (l.rank == 0) fs::create_directories(out);
  const int64_t start_step = a.resume ? resume(out, l, group, net, opt, device) : 0;
  if (start_step > 0) log("  resumed from " + (out / "checkpoint.ckpt").string() + " at step " + std::to_string(start_step));

  // The wrapper: broadcast of rank 0's parameters, start-up check, then the step's loss all-reduces
  // (FZOO: l_0, then l_1..l_N).
  const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(a.timeout * 1000));
  std::unique_ptr<zotorch::DataParallel<Opt>> parallel;
  if (group) {
    parallel = std::make_unique<zotorch::DataParallel<Opt>>(
        opt, group, zotorch::DataParallelOptions().check_every(a.check_every).timeout(timeout));
  }

  int64_t numel = 0;
  for (const auto& p : params) numel += p.numel();
  const int64_t loss_bytes = fp_per_step * 4;
  log("  per step, each rank all-reduces " + std::to_string(fp_per_step) + " float32 losses: " + human_bytes(loss_bytes) +
      ". A gradient all-reduce of these " + std::to_string(numel) + " float32 parameters would send " +
      human_bytes(4.0 * numel) + " per rank, and move up to " + human_bytes(8.0 * numel) + " over each rank's link in a ring (2·4·P)");

  // Pure communication cost, measured apart from compute: all-reduces of one step's loss payload.
  double latency_us = std::nan("");
  if (group && a.measure_latency > 0) {
    at::Tensor probe = at::zeros({fp_per_step}, at::TensorOptions().dtype(at::kFloat).device(device));
    all_sum(group, probe.clone());  // connect and warm up
    std::vector<double> times;
    for (int64_t i = 0; i < a.measure_latency; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      all_sum(group, probe.clone()).cpu();
      times.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(times.begin(), times.end());
    latency_us = times[times.size() / 2];
    char line[160];
    std::snprintf(line, sizeof line, "  all-reduce of %s over %d ranks: median %.1f us (%lld repetitions)",
                  human_bytes(loss_bytes).c_str(), l.world_size, latency_us, static_cast<long long>(a.measure_latency));
    log(line);
  }

  // Sharded evaluation: every rank scores its slice of the dev set; one all-reduce adds them up.
  auto evaluate = [&] {
    torch::NoGradGuard no_grad;
    at::Tensor totals = at::zeros({2}, at::kDouble);  // correct, summed loss
    const size_t n = dev.ids.size();
    const size_t begin = n * static_cast<size_t>(l.rank) / static_cast<size_t>(l.world_size);
    const size_t end = n * static_cast<size_t>(l.rank + 1) / static_cast<size_t>(l.world_size);
    for (size_t s = begin; s < end; s += 64) {
      std::vector<size_t> idx;
      std::vector<int64_t> y;
      for (size_t i = s; i < std::min(end, s + 64); ++i) {
        idx.push_back(i);
        y.push_back(dev.labels[i]);
      }
      const at::Tensor target = at::tensor(y, at::kLong).to(device);
      const at::Tensor z = logits(net, dev, idx, pad_id, device).to(at::kFloat);
      totals[0] += z.argmax(1).eq(target).sum().item<double>();
      totals[1] += at::cross_entropy_loss(z, target, {}, at::Reduction::Sum).item<double>();
    }
    totals = all_sum(group, totals.to(device)).cpu();
    return std::make_pair(totals[0].item<double>() / static_cast<double>(n), totals[1].item<double>() / static_cast<double>(n));
  };

  Sampler sampler(train_set.ids.size(), static_cast<size_t>(a.batch), static_cast<uint64_t>(a.seed) * 0x9E3779B97F4A7C15ull + 1);
  for (int64_t i = 0; i < start_step; ++i) sampler.next();
  const auto [acc0, loss0] = evaluate();
  log("  step " + std::to_string(start_step) + " | dev accuracy " + std::to_string(acc0).substr(0, 6) + ", loss " +
      std::to_string(loss0).substr(0, 6));

  const int64_t shard = a.batch / l.world_size;
  // The clock starts after the first step (thread pools and allocator warm up in it) and stops
  // during evaluations.
  auto started = std::chrono::steady_clock::now();
  double closure_seconds = 0, eval_seconds = 0, eval_cpu = 0, comm_before = 0, running = std::nan("");
  double cpu_started = cpu_seconds();
  int64_t timed_steps = -1;
  while (opt.steps() < a.steps) {
    if (timed_steps == 0) {
      started = std::chrono::steady_clock::now();
      cpu_started = cpu_seconds();
      closure_seconds = 0;
      comm_before = parallel ? parallel->communication().loss_seconds_total : 0;
    }
    const std::vector<size_t> batch = sampler.next();
    // This rank's shard of the global batch: equal sizes, so the mean of the shard means is the batch mean.
    const std::vector<size_t> idx(batch.begin() + l.rank * shard, batch.begin() + (l.rank + 1) * shard);
    std::vector<int64_t> y;
    for (size_t i : idx) y.push_back(train_set.labels[i]);
    const at::Tensor target = at::tensor(y, at::kLong).to(device);
    auto closure = [&] { return at::cross_entropy_loss(logits(net, train_set, idx, pad_id, device).to(at::kFloat), target); };
    const double loss = (parallel ? parallel->step(closure) : opt.step(closure)).template item<double>();
    if (timed_steps >= 0) closure_seconds += opt.last_step().closure_seconds;
    ++timed_steps;
    if (std::isfinite(loss)) running = std::isfinite(running) ? 0.9 * running + 0.1 * loss : loss;
    const int64_t step = opt.steps();
    if (l.rank == 0 && a.checkpoint_every > 0 && step % a.checkpoint_every == 0) save_checkpoint(out, net, opt);
    if (a.eval_every > 0 && step % a.eval_every == 0 && step < a.steps) {
      const auto eval_started = std::chrono::steady_clock::now();
      const double eval_cpu_started = cpu_seconds();
      const auto [acc, dev_loss] = evaluate();
      eval_cpu += cpu_seconds() - eval_cpu_started;
      const auto now = std::chrono::steady_clock::now();
      eval_seconds += std::chrono::duration<double>(now - eval_started).count();
      const double seconds = std::chrono::duration<double>(now - started).count() - eval_seconds;
      char line[200];
      std::snprintf(line, sizeof line, "  step %lld | train loss %.4f | dev accuracy %.4f, loss %.4f | %.2f steps/s",
                    static_cast<long long>(step), running, acc, dev_loss,
                    static_cast<double>(std::max<int64_t>(timed_steps, 0)) / std::max(seconds, 1e-9));
      log(line);
    }
  }
  timed_steps = std::max<int64_t>(timed_steps, 0);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count() - eval_seconds;
  const double comm = parallel ? parallel->communication().loss_seconds_total - comm_before : 0;
  const double cpu = cpu_seconds() - cpu_started - eval_cpu;
  const double cpu_all_ranks = all_sum(group, at::full({1}, cpu, at::kDouble).to(device)).cpu().item<double>();
  const auto [acc, dev_loss] = evaluate();
  log("  step " + std::to_string(opt.steps()) + " | dev accuracy " + std::to_string(acc).substr(0, 6) + ", loss " +
      std::to_string(dev_loss).substr(0, 6));
  if (l.rank == 0) {
    // The result leaves the program: every trained tensor under its transformers-style name
    // (docs/examples.md "Outputs"); the replicas are identical, so rank 0's are everyone's.
    const fs::path trained = out / "trained.safetensors";
    NamedTensors named;
    for (const auto& item : net->named_parameters()) named.emplace_back(item.key(), item.value());
    save_safetensors(trained.string(), named,
                     {{"format", "pt"}, {"model", a.model}, {"optimizer", a.optimizer}, {"steps", std::to_string(opt.steps())},
                      {"dev_accuracy", std::to_string(acc)}});
    log("  wrote " + trained.string());
    const double per_step = timed_steps > 0 ? 1.0 / static_cast<double>(timed_steps) : 0;
    char line[400];
    std::snprintf(line, sizeof line,
                  "distributed_finetune: %d rank(s), %s, %lld steps in %.1f s (%.3f steps/s); per step: forward passes %.1f ms, "
                  "loss all-reduce %.2f ms (%s, incl. waiting for the slowest rank); dev accuracy %.4f",
                  l.world_size, a.optimizer.c_str(), static_cast<long long>(timed_steps), seconds,
                  timed_steps / std::max(seconds, 1e-9), 1e3 * closure_seconds * per_step, 1e3 * comm * per_step,
                  human_bytes(static_cast<double>(loss_bytes)).c_str(), acc);
    std::cout << line << std::endl;
    if (a.json) {
      std::ostringstream j;
      j.precision(6);
      j << "{\"benchmark\":\"distributed_finetune\",\"world_size\":" << l.world_size << ",\"optimizer\":\"" << a.optimizer
        << "\",\"device\":\"" << a.device << "\",\"threads_per_rank\":" << at::get_num_threads() << ",\"global_batch\":"
        << a.batch << ",\"steps\":" << timed_steps << ",\"seconds\":" << seconds
        << ",\"steps_per_second\":" << timed_steps / std::max(seconds, 1e-9)
        << ",\"closure_ms_per_step\":" << 1e3 * closure_seconds * per_step
        << ",\"allreduce_ms_per_step\":" << 1e3 * comm * per_step << ",\"cpu_seconds_per_step_rank0\":" << cpu * per_step
        << ",\"cpu_seconds_per_step_all_ranks\":" << cpu_all_ranks * per_step << ",\"allreduce_latency_us\":"
        << (std::isfinite(latency_us) ? std::to_string(latency_us) : "null") << ",\"loss_bytes_per_step\":" << loss_bytes
        << ",\"gradient_allreduce_bytes_per_step\":" << 4 * numel << ",\"parameters\":" << numel
        << ",\"dev_accuracy\":" << acc << ",\"dev_loss\":" << dev_loss << "}";
      std::cout << j.str() << std::endl;
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) try {
  const Args a = parse_args(argc, argv);
  const Launch l = Launch::from_environment();
  if (a.threads > 0) at::set_num_threads(static_cast<int>(a.threads));
  TORCH_CHECK(a.batch % l.world_size == 0, "distributed_finetune: --batch ", a.batch, " is not a multiple of WORLD_SIZE ",
              l.world_size, "; the shards must have equal sizes for their mean losses to average to the batch's");
  at::Device device(at::kCPU);
  if (a.device == "cuda") {
    TORCH_CHECK(torch::cuda::is_available(), "distributed_finetune: --device cuda, but no CUDA device is visible");
    device = at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(l.local_rank % static_cast<int>(torch::cuda::device_count())));
  }
  const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(a.timeout * 1000));
  c10::intrusive_ptr<c10d::Backend> group;
  if (l.world_size > 1) group = make_group(l, device, timeout);
  if (l.rank == 0 && !a.quiet) {
    std::cout << "distributed_finetune: rank 0 of " << l.world_size << " (" << (group ? group->getBackendName() : "no group")
              << ", " << a.device << "), " << a.optimizer << ", global batch " << a.batch << " = " << l.world_size << " x "
              << a.batch / l.world_size << std::endl;
  }

  const WordPieceTokenizer tok = WordPieceTokenizer::from_directory(a.model);
  const auto rows = read_tsv(a.train);
  const std::vector<std::string> labels = label_set(rows);
  TORCH_CHECK(labels.size() >= 2, "distributed_finetune: ", a.train, " has a single label; a classifier needs two");
  const Dataset train_set = make_dataset(a.train, tok, labels, a.max_length, "--train");
  const Dataset dev = make_dataset(a.dev, tok, labels, a.max_length, "--dev");
  TORCH_CHECK(static_cast<int64_t>(train_set.ids.size()) >= a.batch, "distributed_finetune: --batch ", a.batch,
              " is larger than the training set (", train_set.ids.size(), " examples)");

  LoadedBert loaded = load_bert(a.model);
  if (loaded.model->pooler) {  // the classifier mean-pools; an unused pooler would only be perturbed
    loaded.model->unregister_module("pooler");
    loaded.model->pooler = nullptr;
  }
  torch::manual_seed(static_cast<uint64_t>(a.seed) + static_cast<uint64_t>(l.rank));  // the broadcast makes heads equal
  BertClassifier net(loaded.model, static_cast<int64_t>(labels.size()), Pooling::Mean);
  net->to(device);
  net->eval();
  // Every weight trains (requires_grad true, as torch::nn made them); the optimizers' forwards run
  // under NoGradGuard, so no autograd graph is built. Eval mode: dropout would otherwise draw other
  // masks in the forwards of one step, which zeroth-order differences cannot tolerate.
  std::vector<at::Tensor> params = net->parameters();
  if (l.rank == 0 && !a.quiet) {
    int64_t numel = 0;
    for (const auto& p : params) numel += p.numel();
    std::cout << "  model " << a.model << ": " << numel << " parameters train; " << train_set.ids.size() << " training and "
              << dev.ids.size() << " dev examples" << std::endl;
  }

  const auto seed = static_cast<uint64_t>(a.seed);
  if (a.optimizer == "fzoo") {
    zotorch::FZOO opt(params, zotorch::FZOOOptions(a.lr).eps(a.eps).num_perturbations(a.num_perturbations).seed(seed));
    return train(a, l, group, net, params, opt, train_set, dev, tok.pad_id(), device, a.num_perturbations + 1);
  }
  if (a.optimizer == "mezo") {
    zotorch::MeZO opt(params, zotorch::MeZOOptions(a.lr).eps(a.eps).seed(seed));
    return train(a, l, group, net, params, opt, train_set, dev, tok.pad_id(), device, 2);
  }
  zotorch::AdaMeZO opt(params, zotorch::AdaMeZOOptions(a.lr).eps(a.eps).seed(seed));
  return train(a, l, group, net, params, opt, train_set, dev, tok.pad_id(), device, 2);
} catch (const std::exception& e) {
  const auto* error = dynamic_cast<const c10::Error*>(&e);
  std::cerr << "distributed_finetune (rank " << (std::getenv("RANK") ? std::getenv("RANK") : "0")
            << "): error: " << (error ? error->what_without_backtrace() : e.what()) << std::endl;
  // A process group whose peer died must not be able to delay the exit in its destructor.
  std::fflush(nullptr);
  std::_Exit(1);
}
