// torchscript_finetune: fine-tunes a TorchScript module exported from Python (torch.jit.save) with
// FZOO, forward passes only, and saves it back: any LibTorch model works, because zotorch needs
// nothing but the module's parameter tensors and a closure returning the loss of one forward pass.
// Usage: torchscript_finetune MODULE.pt [OUT.pt] [--steps N]   (export_model.py makes MODULE.pt)
#include <zotorch/zotorch.h>

#include <torch/script.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

int main(int argc, char** argv) try {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s MODULE.pt [OUT.pt] [--steps N]\n", argv[0]);
    return 2;
  }
  std::string out;
  int64_t steps = 600;
  for (int i = 2; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--steps" && i + 1 < argc) steps = std::atoll(argv[++i]);
    else out = arg;
  }
  torch::manual_seed(0);
  torch::jit::Module module = torch::jit::load(argv[1]);
  module.eval();

  // Two Gaussian blobs per class in an XOR layout: a task the module's linear part alone cannot fit.
  auto make_data = [](int64_t n) {
    const auto quadrant = torch::randint(0, 4, {n});
    const auto cx = (quadrant % 2).to(torch::kFloat) * 2 - 1, cy = (quadrant / 2).to(torch::kFloat) * 2 - 1;
    const auto x = torch::stack({cx, cy}, 1) + 0.35 * torch::randn({n, 2});
    return std::make_pair(x, (cx * cy > 0).to(torch::kLong));
  };
  const auto [x, y] = make_data(1024);
  const auto [x_test, y_test] = make_data(512);
  auto forward = [&](const torch::Tensor& input) { return module.forward({input}).toTensor(); };
  auto accuracy = [&] {
    torch::NoGradGuard no_grad;
    return forward(x_test).argmax(1).eq(y_test).to(torch::kFloat).mean().item<double>();
  };

  // The module's parameters are ordinary tensors: hand them to the optimizer.
  std::vector<torch::Tensor> params;
  for (const auto& p : module.parameters()) params.push_back(p);
  zotorch::FZOO opt(params, zotorch::FZOOOptions(2e-2).eps(1e-3).num_perturbations(8).seed(1));
  std::printf("module %s: %zu parameter tensors; test accuracy before: %.3f\n", argv[1], params.size(), accuracy());

  for (int64_t step = 1; step <= steps; ++step) {
    const auto idx = torch::randint(0, x.size(0), {64});
    const auto xb = x.index_select(0, idx), yb = y.index_select(0, idx);
    const auto loss = opt.step([&] { return torch::nn::functional::cross_entropy(forward(xb), yb); });
    if (step % 100 == 0 || step == steps) {
      std::printf("step %4lld | forward passes %5lld | loss %.4f | test accuracy %.3f\n", static_cast<long long>(step),
                  static_cast<long long>(opt.forward_passes()), loss.item<double>(), accuracy());
    }
  }
  if (!out.empty()) {
    module.save(out);  // loads back in Python with torch.jit.load
    std::printf("saved the fine-tuned module to %s\n", out.c_str());
  }
  return 0;
} catch (const c10::Error& e) {
  std::fprintf(stderr, "torchscript_finetune: %s\n", e.what_without_backtrace());
  return 1;
}
