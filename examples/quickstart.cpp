// Quickstart: train a small torch::nn classifier with FZOO, forward passes only.
// The same loop works for any LibTorch module: hand its parameters to the optimizer and return the
// loss of one forward pass from the closure.
#include "common/cli.h"
#include "common/safetensors.h"

#include <zotorch/zotorch.h>

#include <torch/torch.h>

#include <cstdio>
#include <string>

int main(int argc, char** argv) {
  int steps = 1800;
  std::string save;
  CLI::App app("Trains a small torch::nn classifier on two interleaved spirals with FZOO, forward passes only.",
               "quickstart");
  zotorch::examples::configure_cli(app);
  app.add_option("--steps", steps, "FZOO steps")->check(zotorch::examples::positive());
  app.add_option("--save", save, "write the trained weights there as safetensors (default: not saved)")->option_text("FILE");
  zotorch::examples::parse_or_exit(app, argc, argv);

  torch::manual_seed(0);
  // Two interleaved spirals: a task a linear model cannot solve.
  const auto t = torch::rand({512}) * 3 * M_PI;
  const auto label = torch::randint(0, 2, {512});
  const auto sign = label.to(torch::kFloat) * 2 - 1;
  const auto x = torch::stack({sign * t * torch::cos(t), sign * t * torch::sin(t)}, 1) / 10 + 0.05 * torch::randn({512, 2});

  torch::nn::Sequential model(torch::nn::Linear(2, 32), torch::nn::Tanh(), torch::nn::Linear(32, 32), torch::nn::Tanh(),
                              torch::nn::Linear(32, 2));
  // Eval mode: a zeroth-order step compares forwards of one batch, which must differ only by the
  // perturbation (no dropout masks, no batch-norm statistics updates). The parameters keep
  // requires_grad true, as torch::nn makes them: they are the ones that train.
  model->eval();
  zotorch::FZOO opt(model->parameters(), zotorch::FZOOOptions(3e-2).eps(1e-3).num_perturbations(8));
  torch::optim::StepLR schedule(opt, /*step_size=*/600, /*gamma=*/0.5);

  for (int step = 1; step <= steps; ++step) {
    const auto loss = opt.step([&] { return torch::cross_entropy_loss(model->forward(x), label); });
    schedule.step();
    if (step % 300 == 0 || step == steps) {
      torch::NoGradGuard no_grad;
      const double accuracy = (model->forward(x).argmax(1) == label).to(torch::kFloat).mean().item<double>();
      std::printf("step %5d  forward passes %6lld  loss %.4f  accuracy %.3f\n", step,
                  static_cast<long long>(opt.forward_passes()), loss.item<double>(), accuracy);
    }
  }
  if (!save.empty()) {
    zotorch::examples::NamedTensors named;
    for (const auto& item : model->named_parameters()) named.emplace_back(item.key(), item.value());
    zotorch::examples::save_safetensors(save, named, {{"format", "pt"}});
    std::printf("saved %zu tensors to %s\n", named.size(), save.c_str());
  }
}
