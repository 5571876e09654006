// The usage example of README.md, compiled and run so the README cannot drift from the API: the
// lines between the markers must equal README's example (ctest readme_example_matches checks that).
#include <catch2/catch.hpp>

// README example begins
#include <torch/torch.h>
#include <zotorch/zotorch.h>
#include <iostream>

// Fits a model with forward passes only: no gradients, no optimizer state per parameter.
void fit(torch::nn::Linear& model, const torch::Tensor& x, const torch::Tensor& y) {
  zotorch::FZOO opt(model->parameters(), zotorch::FZOOOptions(1e-3).eps(1e-3).num_perturbations(8));
  for (int step = 0; step < 300; ++step) {
    auto loss = opt.step([&] { return torch::mse_loss(model->forward(x), y); });
    if (step % 100 == 0) std::cout << "step " << step << "  loss " << loss.item<double>() << "\n";
  }
}
// README example ends

TEST_CASE("the README example lowers the loss of a linear fit with forward passes only", "[readme]") {
  torch::manual_seed(0);
  torch::NoGradGuard no_grad;
  auto x = torch::randn({64, 4});
  auto y = x.matmul(torch::tensor({{0.5f}, {-1.0f}, {0.25f}, {2.0f}}));
  auto model = torch::nn::Linear(4, 1);
  const auto loss_before = torch::mse_loss(model->forward(x), y).item<double>();
  const auto weight_before = model->weight.detach().clone();

  fit(model, x, y);

  const auto loss_after = torch::mse_loss(model->forward(x), y).item<double>();
  INFO("loss " << loss_before << " -> " << loss_after);
  CHECK(loss_after < 0.9 * loss_before);
  CHECK_FALSE(torch::equal(model->weight, weight_before));
}
