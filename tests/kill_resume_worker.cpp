// The training job of the kill test (tests/kill_resume_test.py, docs/reliability.md): a small MLP
// trained by FZOO on fixed data, checkpointed with zotorch::save_checkpoint every few steps and
// logged step by step with zotorch::TrajectoryWriter (DIR/trajectory.ztraj). Run with --resume it
// continues from the latest checkpoint and continues the log. It prints "start <step>" first,
// "saved <step>" after every completed save, and at the end a hash of the bits of every parameter,
// which must not depend on how often the job was killed on the way. With --replay it trains
// nothing: it replays DIR/trajectory.ztraj onto the initial parameters and prints their hash.
//
//   kill_resume_worker --dir DIR [--steps N] [--every K] [--width W] [--resume | --replay]
#include <zotorch/checkpoint.h>
#include <zotorch/trajectory.h>
#include <zotorch/zotorch.h>

#include <torch/torch.h>

#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string>

namespace {

struct Args {
  std::string dir;
  int64_t steps = 300;
  int64_t every = 3;
  int64_t width = 256;
  bool resume = false;
  bool replay = false;
};

Args parse(int argc, char** argv) {
  Args args;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "kill_resume_worker: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--dir") {
      args.dir = value();
    } else if (a == "--steps") {
      args.steps = std::stoll(value());
    } else if (a == "--every") {
      args.every = std::stoll(value());
    } else if (a == "--width") {
      args.width = std::stoll(value());
    } else if (a == "--resume") {
      args.resume = true;
    } else if (a == "--replay") {
      args.replay = true;
    } else {
      std::fprintf(stderr,
                   "usage: kill_resume_worker --dir DIR [--steps N] [--every K] [--width W] [--resume | --replay]\n");
      std::exit(2);
    }
  }
  if (args.dir.empty() || args.steps < 1 || args.every < 1 || args.width < 1) {
    std::fprintf(stderr, "kill_resume_worker: --dir is required; --steps, --every and --width must be >= 1\n");
    std::exit(2);
  }
  return args;
}

/// FNV-1a over the bytes of every parameter, in order.
uint64_t parameter_hash(const torch::nn::Module& model) {
  uint64_t hash = 0xcbf29ce484222325ull;
  for (const auto& p : model.parameters()) {
    const at::Tensor c = p.detach().contiguous();
    const auto* bytes = static_cast<const unsigned char*>(c.data_ptr());
    for (int64_t i = 0; i < c.numel() * static_cast<int64_t>(c.element_size()); ++i) {
      hash = (hash ^ bytes[i]) * 0x100000001b3ull;
    }
  }
  return hash;
}

}  // namespace

int main(int argc, char** argv) {
  const Args args = parse(argc, argv);
  // One thread: the same arithmetic in every run, whatever the machine's load.
  at::set_num_threads(1);
  torch::manual_seed(1234);
  torch::nn::Sequential model(torch::nn::Linear(32, args.width), torch::nn::Tanh(),
                              torch::nn::Linear(args.width, args.width), torch::nn::Tanh(),
                              torch::nn::Linear(args.width, 4));
  auto gen = at::make_generator<at::CPUGeneratorImpl>(99);
  const auto x = torch::randn({512, 32}, gen);
  const auto labels = x.mm(torch::randn({32, 4}, gen)).argmax(1);
  zotorch::FZOO opt(model->parameters(), zotorch::FZOOOptions(5e-3).eps(1e-3).num_perturbations(4).seed(7));

  const std::string log_path = (std::filesystem::path(args.dir) / "trajectory.ztraj").string();
  if (args.replay) {
    // The model still holds its initial values: the log's steps alone must turn them into the
    // trained parameters (docs/reliability.md "Trajectories").
    const zotorch::TrajectoryReader log(log_path);
    zotorch::replay(log, model->parameters(), std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max());
    int64_t aborted = 0;
    for (const auto& r : log.steps()) aborted += r.aborted ? 1 : 0;
    std::printf("replayed steps %" PRId64 " records %zu aborted %" PRId64 " truncated %d bytes %" PRIu64 " hash %016" PRIx64
                "\n",
                log.next_step(), log.steps().size(), aborted, log.truncated() ? 1 : 0, log.file_bytes(),
                parameter_hash(*model));
    return 0;
  }

  const std::string path = (std::filesystem::path(args.dir) / "latest.ckpt").string();
  if (args.resume && std::filesystem::exists(path)) {
    // A checkpoint that does not load is a failure of the test, never a reason to start over.
    zotorch::load_checkpoint(*model, opt, path);
  }
  // Opened after the checkpoint is loaded: its first append cuts the log back to the step the
  // optimizer resumes from (steps after the checkpoint, and a record cut off by the kill, go).
  zotorch::TrajectoryWriter log(log_path);
  std::printf("start %" PRId64 "\n", opt.steps());
  std::fflush(stdout);

  for (int64_t s = opt.steps(); s < args.steps; ++s) {
    const auto rows = torch::arange((s * 64) % 512, (s * 64) % 512 + 64);
    const auto xb = x.index_select(0, rows);
    const auto yb = labels.index_select(0, rows);
    opt.step([&] { return torch::nn::functional::cross_entropy(model->forward(xb), yb); });
    // Before the save: a checkpoint at step s + 1 needs the log to hold step s to be joined.
    log.append(opt);
    if ((s + 1) % args.every == 0 || s + 1 == args.steps) {
      zotorch::save_checkpoint(*model, opt, path);
      // Printed once save_checkpoint has returned (renamed into place, directory synced): the test
      // requires the next resume to start from this step or from the save after it.
      std::printf("saved %" PRId64 "\n", opt.steps());
      std::fflush(stdout);
    }
  }
  torch::NoGradGuard no_grad;
  const double loss = torch::nn::functional::cross_entropy(model->forward(x), labels).item<double>();
  std::printf("done steps %" PRId64 " loss %.6f hash %016" PRIx64 "\n", opt.steps(), loss, parameter_hash(*model));
  return 0;
}
