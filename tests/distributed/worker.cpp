// One rank of a data-parallel run over ProcessGroupGloo, launched by tests/test_distributed.cpp (and
// with --reference, the single process that evaluates the whole global batch): a small classifier
// trained with zotorch::DataParallel, with switches that inject the faults the tests check.
#include <zotorch/distributed.h>
#include <zotorch/zotorch.h>

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/serialize.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace fs = std::filesystem;

namespace {

const char* kUsage = R"(usage: zotorch_distributed_worker --out DIR [options]
  --rank R --world-size W --port P --prefix S   rank R of W; TCPStore client of 127.0.0.1:P, keys under S
  --reference                                   no group: one process evaluates the whole global batch
  --process-group                               hand DataParallel a c10d::ProcessGroup around the Gloo backend
  --optimizer fzoo|mezo|adamezo  --steps N  --dtype float32|float64  --check-every K
  --timeout-ms T       the group's timeout (its rendezvous too; default 30000)
  --step-timeout-ms T  DataParallelOptions::timeout, for the collectives of the steps (default: unset)
  --checkpoint-every C   rank 0 writes DIR/checkpoint every C steps;  --resume  continue from it
  --die-rank R --die-step S                  rank R kills itself (SIGKILL) inside step S's closure
  --stall-rank R --stall-step S --stall-ms X rank R sleeps X ms once inside step S's closure
  --nan-rank R --nan-step S                  rank R's closure returns NaN once in step S
  --corrupt-rank R --corrupt-step S          rank R moves one parameter by one ulp after step S
Writes DIR/rank<R>.params (the final parameters' bytes) and DIR/rank<R>.txt (key=value lines).
)";

struct Args {
  std::string out, prefix = "run", optimizer = "fzoo", dtype = "float32";
  int64_t rank = 0, world_size = 1, port = 0, steps = 200, timeout_ms = 30000, step_timeout_ms = 0, check_every = 0;
  int64_t checkpoint_every = 0;
  int64_t die_rank = -1, die_step = -1, stall_rank = -1, stall_step = -1, stall_ms = 0;
  int64_t nan_rank = -1, nan_step = -1, corrupt_rank = -1, corrupt_step = -1;
  bool reference = false, resume = false, process_group = false;
};

Args parse(int argc, char** argv) {
  Args a;
  std::map<std::string, std::function<void(const std::string&)>> options = {
      {"--out", [&](const std::string& v) { a.out = v; }},
      {"--prefix", [&](const std::string& v) { a.prefix = v; }},
      {"--optimizer", [&](const std::string& v) { a.optimizer = v; }},
      {"--dtype", [&](const std::string& v) { a.dtype = v; }},
      {"--rank", [&](const std::string& v) { a.rank = std::stoll(v); }},
      {"--world-size", [&](const std::string& v) { a.world_size = std::stoll(v); }},
      {"--port", [&](const std::string& v) { a.port = std::stoll(v); }},
      {"--steps", [&](const std::string& v) { a.steps = std::stoll(v); }},
      {"--timeout-ms", [&](const std::string& v) { a.timeout_ms = std::stoll(v); }},
      {"--step-timeout-ms", [&](const std::string& v) { a.step_timeout_ms = std::stoll(v); }},
      {"--check-every", [&](const std::string& v) { a.check_every = std::stoll(v); }},
      {"--checkpoint-every", [&](const std::string& v) { a.checkpoint_every = std::stoll(v); }},
      {"--die-rank", [&](const std::string& v) { a.die_rank = std::stoll(v); }},
      {"--die-step", [&](const std::string& v) { a.die_step = std::stoll(v); }},
      {"--stall-rank", [&](const std::string& v) { a.stall_rank = std::stoll(v); }},
      {"--stall-step", [&](const std::string& v) { a.stall_step = std::stoll(v); }},
      {"--stall-ms", [&](const std::string& v) { a.stall_ms = std::stoll(v); }},
      {"--nan-rank", [&](const std::string& v) { a.nan_rank = std::stoll(v); }},
      {"--nan-step", [&](const std::string& v) { a.nan_step = std::stoll(v); }},
      {"--corrupt-rank", [&](const std::string& v) { a.corrupt_rank = std::stoll(v); }},
      {"--corrupt-step", [&](const std::string& v) { a.corrupt_step = std::stoll(v); }},
  };
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--reference") {
      a.reference = true;
    } else if (arg == "--resume") {
      a.resume = true;
    } else if (arg == "--process-group") {
      a.process_group = true;
    } else if (arg == "-h" || arg == "--help") {
      std::cout << kUsage;
      std::exit(0);
    } else if (options.count(arg) && i + 1 < argc) {
      options[arg](argv[++i]);
    } else {
      std::cerr << "zotorch_distributed_worker: bad argument '" << arg << "'\n" << kUsage;
      std::exit(2);
    }
  }
  if (a.out.empty() || a.world_size < 1 || a.rank < 0 || a.rank >= a.world_size || (!a.reference && a.port <= 0)) {
    std::cerr << "zotorch_distributed_worker: --out, a rank in [0, world size) and --port are required\n" << kUsage;
    std::exit(2);
  }
  return a;
}

// The problem: 4-class classification of 16-dimensional points labelled by a random teacher
// network, fitted by a 16-32-4 tanh network. Everything is drawn from fixed seeds, so every
// process builds the same data; the student's initial weights depend on the rank (the broadcast
// must make them equal).
constexpr int64_t kExamples = 512, kBatch = 32, kInputs = 16, kHidden = 32, kClasses = 4;

struct Problem {
  at::Tensor x, y;
  std::vector<at::Tensor> params;  // w1 [32,16], b1 [32], w2 [4,32], b2 [4]

  Problem(at::ScalarType dtype, int64_t init_seed) {
    auto data = at::make_generator<at::CPUGeneratorImpl>(7);
    x = at::randn({kExamples, kInputs}, data, at::kDouble);
    const at::Tensor teacher1 = at::randn({kHidden, kInputs}, data, at::kDouble) / 4;
    const at::Tensor teacher2 = at::randn({kClasses, kHidden}, data, at::kDouble);
    y = at::tanh(x.matmul(teacher1.t())).matmul(teacher2.t()).argmax(1);
    x = x.to(dtype);
    auto init = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(init_seed));
    params = {at::randn({kHidden, kInputs}, init, dtype) / 4, at::zeros({kHidden}, dtype),
              at::randn({kClasses, kHidden}, init, dtype) / 6, at::zeros({kClasses}, dtype)};
    // Trained tensors require grad: zotorch skips frozen (requires_grad false) ones by default.
    for (auto& p : params) p.requires_grad_(true);
  }

  /// Mean cross-entropy of rows [begin, end) of global batch `step`.
  at::Tensor loss(int64_t step, int64_t begin, int64_t end) const {
    const int64_t first = (step * kBatch) % kExamples;
    const at::Tensor xs = x.narrow(0, first + begin, end - begin), ys = y.narrow(0, first + begin, end - begin);
    const at::Tensor hidden = at::tanh(at::addmm(params[1], xs, params[0].t()));
    return at::cross_entropy_loss(at::addmm(params[3], hidden, params[2].t()), ys);
  }
};

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const Args& a, const std::vector<at::Tensor>& params) {
  if (a.optimizer == "fzoo") {
    return std::make_unique<zotorch::FZOO>(params, zotorch::FZOOOptions(1e-2).eps(1e-3).num_perturbations(8).seed(11));
  }
  if (a.optimizer == "mezo") {
    return std::make_unique<zotorch::MeZO>(params, zotorch::MeZOOptions(1e-2).eps(1e-3).num_samples(2).seed(11));
  }
  if (a.optimizer == "adamezo") {
    return std::make_unique<zotorch::AdaMeZO>(params, zotorch::AdaMeZOOptions(1e-4).eps(1e-3).window(5).seed(11));
  }
  std::cerr << "zotorch_distributed_worker: --optimizer must be fzoo, mezo or adamezo\n";
  std::exit(2);
}

void write_bytes(const fs::path& path, const std::vector<at::Tensor>& params) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  for (const auto& p : params) {
    const at::Tensor c = p.contiguous();
    out.write(static_cast<const char*>(c.data_ptr()), static_cast<std::streamsize>(c.numel() * c.element_size()));
  }
  TORCH_CHECK(out.good(), "zotorch_distributed_worker: cannot write ", path.string());
}

/// Runs the training loop for optimizer type Opt; returns the report's key=value lines.
template <class Opt>
std::string train(const Args& a, Problem& problem, Opt& opt, const c10::intrusive_ptr<c10d::Backend>& group,
                  const c10::intrusive_ptr<c10d::ProcessGroup>& process_group) {
  const fs::path out(a.out), checkpoint = out / "checkpoint";
  bool resumed = false;
  if (a.resume && fs::exists(checkpoint / "params.pt")) {
    // Every rank loads the same files; broadcast_parameters(false) below makes the start-up check
    // compare the parameters' checksums instead of overwriting them.
    std::vector<at::Tensor> saved;
    torch::load(saved, (checkpoint / "params.pt").string());
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < saved.size(); ++i) problem.params[i].copy_(saved[i]);
    torch::load(opt, (checkpoint / "optimizer.pt").string());
    resumed = true;
  }
  std::unique_ptr<zotorch::DataParallel<Opt>> parallel;
  if (!a.reference) {
    // Start together (under the group's long timeout): --step-timeout-ms also bounds the wrapper's
    // start-up collectives, and a rank that is slow to load must not trip it.
    std::vector<at::Tensor> barrier{at::zeros({1})};
    group->allreduce(barrier)->wait();
    const auto options =
        zotorch::DataParallelOptions().check_every(a.check_every).broadcast_parameters(!resumed).timeout(
            a.step_timeout_ms > 0 ? std::chrono::milliseconds(a.step_timeout_ms) : c10d::kUnsetTimeout);
    // Either interface works: a bare Backend, or the ProcessGroup that dispatches to it.
    parallel = process_group ? std::make_unique<zotorch::DataParallel<Opt>>(opt, process_group, options)
                             : std::make_unique<zotorch::DataParallel<Opt>>(opt, group, options);
  }
  const int64_t shard = kBatch / a.world_size;
  const int64_t begin = a.reference ? 0 : a.rank * shard, end = a.reference ? kBatch : begin + shard;
  const auto started = std::chrono::steady_clock::now();
  double last_loss = 0;
  while (opt.steps() < a.steps) {
    const int64_t step = opt.steps();
    bool nan_pending = a.rank == a.nan_rank && step == a.nan_step;
    bool stall_pending = a.rank == a.stall_rank && step == a.stall_step;
    auto closure = [&] {
      if (a.rank == a.die_rank && step == a.die_step) {
        std::cout << "rank " << a.rank << ": killing myself in step " << step << std::endl;
        std::raise(SIGKILL);
      }
      if (stall_pending) {
        stall_pending = false;
        std::cout << "rank " << a.rank << ": stalling " << a.stall_ms << " ms in step " << step << std::endl;
        std::this_thread::sleep_for(std::chrono::milliseconds(a.stall_ms));
      }
      at::Tensor loss = problem.loss(step, begin, end);
      if (nan_pending) {
        nan_pending = false;
        return at::full_like(loss, std::nan(""));
      }
      return loss;
    };
    last_loss = (parallel ? parallel->step(closure) : opt.step(closure)).template item<double>();
    if (a.rank == a.corrupt_rank && opt.steps() == a.corrupt_step + 1) {
      torch::NoGradGuard no_grad;
      at::Tensor first = problem.params[0].view({-1}).narrow(0, 0, 1);
      first.copy_(at::nextafter(first, first + 1));
    }
    if (a.rank == 0 && a.checkpoint_every > 0 && opt.steps() % a.checkpoint_every == 0) {
      // Written whole, then renamed: a crash at any moment leaves the previous checkpoint intact.
      const fs::path tmp = out / "checkpoint.tmp", old = out / "checkpoint.old";
      fs::remove_all(tmp);
      fs::create_directories(tmp);
      torch::save(problem.params, (tmp / "params.pt").string());
      torch::save(opt, (tmp / "optimizer.pt").string());
      fs::remove_all(old);
      if (fs::exists(checkpoint)) fs::rename(checkpoint, old);
      fs::rename(tmp, checkpoint);
      fs::remove_all(old);
    }
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  std::ostringstream report;
  report << "steps=" << opt.steps() << "\nskipped=" << opt.skipped_steps() << "\nforward_passes=" << opt.forward_passes()
         << "\nlast_loss=" << last_loss << "\nseconds=" << seconds << "\nresumed=" << resumed << "\n";
  if (parallel) {
    const auto& c = parallel->communication();
    report << "loss_reductions=" << c.loss_reductions << "\nloss_bytes=" << c.loss_bytes
           << "\nloss_seconds_total=" << c.loss_seconds_total << "\nchecks=" << c.checks << "\n";
  }
  return report.str();
}

}  // namespace

int main(int argc, char** argv) {
  const Args a = parse(argc, argv);
  at::set_num_threads(1);  // several ranks share a few cores
  try {
    const at::ScalarType dtype = a.dtype == "float64" ? at::kDouble : at::kFloat;
    Problem problem(dtype, a.reference ? 1000 : 1000 + a.rank);
    c10::intrusive_ptr<c10d::Backend> group;
    c10::intrusive_ptr<c10d::ProcessGroup> process_group;
    if (!a.reference) {
      c10d::TCPStoreOptions store_options;
      store_options.port = static_cast<uint16_t>(a.port);
      store_options.isServer = false;  // the test process hosts the store, as torchrun's agent does
      store_options.timeout = std::chrono::milliseconds(a.timeout_ms);
      auto store = c10::make_intrusive<c10d::PrefixStore>(
          a.prefix, c10::make_intrusive<c10d::TCPStore>("127.0.0.1", store_options));
      auto options = c10d::ProcessGroupGloo::Options::create(std::chrono::milliseconds(a.timeout_ms));
      options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
      group = c10::make_intrusive<c10d::ProcessGroupGloo>(store, static_cast<int>(a.rank), static_cast<int>(a.world_size),
                                                          options);
      if (a.process_group) {
        process_group = c10::make_intrusive<c10d::ProcessGroup>(store, static_cast<int>(a.rank), static_cast<int>(a.world_size));
        process_group->setBackend(c10::DeviceType::CPU, c10d::ProcessGroup::BackendType::GLOO, group);
        process_group->setDefaultBackend(c10d::ProcessGroup::BackendType::GLOO);
      }
    }
    auto opt = make_optimizer(a, problem.params);
    std::string report;
    if (auto* fzoo = dynamic_cast<zotorch::FZOO*>(opt.get())) report = train(a, problem, *fzoo, group, process_group);
    if (auto* mezo = dynamic_cast<zotorch::MeZO*>(opt.get())) report = train(a, problem, *mezo, group, process_group);
    if (auto* ada = dynamic_cast<zotorch::AdaMeZO*>(opt.get())) report = train(a, problem, *ada, group, process_group);
    const std::string name = a.reference ? "reference" : "rank" + std::to_string(a.rank);
    write_bytes(fs::path(a.out) / (name + ".params"), problem.params);
    std::ofstream(fs::path(a.out) / (name + ".txt")) << report;
    return 0;
  } catch (const std::exception& e) {
    const auto* error = dynamic_cast<const c10::Error*>(&e);
    std::cerr << "rank " << a.rank << ": error: " << (error ? error->what_without_backtrace() : e.what()) << std::endl;
    // Leave without destructors: a process group whose peer vanished must not be able to delay the exit.
    std::fflush(nullptr);
    std::_Exit(3);
  }
}
