// Installed-package consumer: the headers come from the install prefix, Torch from find_dependency,
// and a few MeZO steps must run and count their forward passes.
#include <zotorch/zotorch.h>

#include <cstdio>
#include <cstring>

int main() {
  if (std::strcmp(ZOTORCH_VERSION_STRING, ZOTORCH_EXPECTED_VERSION) != 0) {
    std::fprintf(stderr, "version.h says %s, the CMake package says %s\n", ZOTORCH_VERSION_STRING,
                 ZOTORCH_EXPECTED_VERSION);
    return 1;
  }
  torch::NoGradGuard no_grad;
  auto x = torch::randn({16, 3});
  auto y = x.matmul(torch::tensor({1.0f, -2.0f, 0.5f}));
  auto w = torch::zeros({3});
  zotorch::MeZO opt(std::vector<torch::Tensor>{w}, zotorch::MeZOOptions(1e-2).eps(1e-3));
  for (int step = 0; step < 5; ++step) {
    opt.step([&] { return (x.matmul(w) - y).pow(2).mean(); });
  }
  std::printf("zotorch %s: %lld forward passes, w = [%g, %g, %g]\n", ZOTORCH_VERSION_STRING,
              static_cast<long long>(opt.forward_passes()), w[0].item<double>(), w[1].item<double>(),
              w[2].item<double>());
  return opt.forward_passes() > 0 && w.abs().sum().item<double>() > 0 ? 0 : 1;
}
