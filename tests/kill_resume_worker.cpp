// The training job of the kill test (tests/kill_resume_test.py, docs/reliability.md): a small MLP
// trained by FZOO on fixed data, checkpointed with zotorch::save_checkpoint every few steps. Run
// with --resume it continues from the latest checkpoint. It prints "start <step>" first, "saved
// <step>" after every completed save, and at the end a hash of the bits of every parameter, which
// must not depend on how often the job was killed on the way.
//
//   kill_resume_worker --dir DIR [--steps N] [--every K] [--width W] [--resume]
#include <zotorch/checkpoint.h>
#include <zotorch/zotorch.h>

#include <torch/torch.h>

#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>

namespace {

struct Args {
  std::string dir;
  int64_t steps = 300;
  int64_t every = 3;
  int64_t width = 256;
  bool resume = false;
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
    } else {
      std::fprintf(stderr, "usage: kill_resume_worker --dir DIR [--steps N] [--every K] [--width W] [--resume]\n");
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

  const std::string path = (std::filesystem::path(args.dir) / "latest.ckpt").string();
  if (args.resume && std::filesystem::exists(path)) {
    // A checkpoint that does not load is a failure of the test, never a reason to start over.
    zotorch::load_checkpoint(*model, opt, path);
  }
  std::printf("start %" PRId64 "\n", opt.steps());
  std::fflush(stdout);

  for (int64_t s = opt.steps(); s < args.steps; ++s) {
    const auto rows = torch::arange((s * 64) % 512, (s * 64) % 512 + 64);
    const auto xb = x.index_select(0, rows);
    const auto yb = labels.index_select(0, rows);
    opt.step([&] { return torch::nn::functional::cross_entropy(model->forward(xb), yb); });
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
