// torchscript_finetune: fine-tunes a TorchScript module exported from Python (torch.jit.save) with
// FZOO, forward passes only, and saves it back: any LibTorch model works, because zotorch needs
// nothing but the module's parameter tensors and a closure returning the loss of one forward pass.
// Run with --help for the options; export_model.py makes a MODULE.pt.
#include "../common/cli.h"
#include "../common/safetensors.h"

#include <zotorch/zotorch.h>

#include <torch/script.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

using namespace zotorch::examples;

int main(int argc, char** argv) try {
  std::string module_path, out, tensors_out;
  int64_t steps = 600;
  CLI::App app("Fine-tunes a TorchScript module (torch.jit.save; export_model.py makes one) with FZOO, forward\n"
               "passes only, on a synthetic 2-D task, then saves the module (loads back with torch.jit.load)\n"
               "and its trained parameters as safetensors (loads with safetensors.torch.load_file).",
               "torchscript_finetune");
  configure_cli(app);
  app.add_option("module", module_path, "TorchScript module to fine-tune")->required()->option_text("MODULE.pt");
  app.add_option("out", out, "where to save the fine-tuned module (default: not saved)")->option_text("OUT.pt");
  app.add_option("--steps", steps, "FZOO steps")->check(positive());
  app.add_option("--safetensors", tensors_out, "where to save the trained parameters by name (default: OUT.pt with the "
                 "extension .safetensors)")->option_text("FILE");
  parse_or_exit(app, argc, argv);
  if (tensors_out.empty() && !out.empty()) tensors_out = std::filesystem::path(out).replace_extension(".safetensors").string();

  torch::manual_seed(0);
  torch::jit::Module module = torch::jit::load(module_path);
  module.eval();  // zeroth-order forwards must be deterministic: no dropout masks, frozen batch-norm statistics

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

  // The module's parameters are ordinary tensors: hand them to the optimizer. They all train, so all
  // keep requires_grad true, as in PyTorch (the optimizer's forwards run under NoGradGuard).
  std::vector<torch::Tensor> params;
  std::vector<std::string> names;
  for (const auto& p : module.named_parameters()) {
    p.value.set_requires_grad(true);
    params.push_back(p.value);
    names.push_back(p.name);
  }
  zotorch::FZOO opt(params, zotorch::FZOOOptions(2e-2).eps(1e-3).num_perturbations(8).seed(1));
  std::printf("module %s: %zu parameter tensors; test accuracy before: %.3f\n", module_path.c_str(), params.size(), accuracy());

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
  if (!tensors_out.empty()) {
    NamedTensors named;
    for (size_t i = 0; i < params.size(); ++i) named.emplace_back(names[i], params[i]);
    save_safetensors(tensors_out, named, {{"format", "pt"}, {"module", module_path}, {"steps", std::to_string(steps)}});
    std::printf("saved its %zu trained parameter tensors to %s\n", named.size(), tensors_out.c_str());
  }
  return 0;
} catch (const c10::Error& e) {
  std::fprintf(stderr, "torchscript_finetune: %s\n", e.what_without_backtrace());
  return 1;
} catch (const std::exception& e) {
  std::fprintf(stderr, "torchscript_finetune: %s\n", e.what());
  return 1;
}
