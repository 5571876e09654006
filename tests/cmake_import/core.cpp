// A library that uses zotorch but never names the CUDA kernels: the situation in which a linker
// drops an unreferenced registrar object from a static archive.
#include "core.h"

#include <zotorch/zotorch.h>

// Linking zotorch::cpu_kernels must route this file's CPU sweeps to the kernels compiled once.
#ifndef ZOTORCH_COMPILED_CPU_KERNELS
#error "zotorch::cpu_kernels did not define ZOTORCH_COMPILED_CPU_KERNELS for its consumer"
#endif

int64_t core_fzoo_steps(const torch::Device& device, int steps) {
  torch::NoGradGuard no_grad;
  auto x = torch::randn({8, 4}, device);
  auto w = torch::zeros({4}, torch::TensorOptions(device).requires_grad(true));  // trained: requires grad
  zotorch::FZOO opt(std::vector<torch::Tensor>{w}, zotorch::FZOOOptions(1e-3).num_perturbations(4));
  for (int step = 0; step < steps; ++step) {
    opt.step([&] { return (x.matmul(w) - 1).pow(2).mean(); });
  }
  // Steps that moved nothing would make the count meaningless.
  return w.abs().sum().item<double>() > 0 ? opt.forward_passes() : -1;
}
