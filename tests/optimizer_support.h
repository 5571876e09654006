// Helpers shared by the optimizer tests: snapshots of parameters, ulp distances, small problems,
// and a uniform way to build each optimizer from (lr, eps, seed).
#pragma once

#include <zotorch/zotorch.h>

#include <torch/torch.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

namespace zotorch_test {

inline std::vector<torch::Tensor> snapshot(const std::vector<torch::Tensor>& params) {
  std::vector<torch::Tensor> out;
  for (const auto& p : params) out.push_back(p.detach().clone());
  return out;
}

inline bool bitwise_equal(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].sizes() != b[i].sizes() || a[i].scalar_type() != b[i].scalar_type()) return false;
    const auto bytes = a[i].numel() * a[i].element_size();
    if (std::memcmp(a[i].contiguous().data_ptr(), b[i].contiguous().data_ptr(), bytes) != 0) return false;
  }
  return true;
}

/// Largest distance in units in the last place between two lists of float32/float64/16-bit tensors.
inline int64_t max_ulps(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  int64_t worst = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const auto dtype = a[i].scalar_type();
    const auto int_type = dtype == torch::kDouble ? torch::kLong : dtype == torch::kFloat ? torch::kInt : torch::kShort;
    // Map the sign-magnitude bit patterns onto a monotonic integer line, then subtract.
    auto ordered = [&](const torch::Tensor& t) {
      auto bits = t.detach().contiguous().view(int_type).to(torch::kLong);
      const int64_t sign_bit = dtype == torch::kDouble ? INT64_MIN : dtype == torch::kFloat ? int64_t{INT32_MIN} : int64_t{INT16_MIN};
      return torch::where(bits < 0, sign_bit - bits, bits);
    };
    worst = std::max(worst, (ordered(a[i]) - ordered(b[i])).abs().max().item<int64_t>());
  }
  return worst;
}

/// Values on a coarse binary grid (multiples of 2^-bits in [-1, 1)): adding and removing a larger
/// power of two is exact in float32 (bits 12, offsets 2^-10) and in bfloat16 (bits 7, offsets 2^-6).
inline torch::Tensor grid_values(at::IntArrayRef sizes, int64_t seed, torch::Dtype dtype = torch::kFloat, int bits = 12) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(seed));
  const int64_t steps = int64_t{1} << bits;
  return torch::randint(-steps, steps, sizes, gen, torch::kFloat).div_(static_cast<double>(steps)).to(dtype);
}

/// A quadratic loss with a known minimum, evaluated in float64 whatever the parameters' dtype.
struct Quadratic {
  std::vector<torch::Tensor> params;
  std::vector<torch::Tensor> targets;
  int64_t calls = 0;

  Quadratic(torch::Dtype dtype, int64_t seed, int grid_bits = 12,
            std::vector<std::vector<int64_t>> shapes = {{37}, {5, 7}, {129}}) {
    for (size_t i = 0; i < shapes.size(); ++i) {
      // requires_grad: zotorch trains only such tensors by default (frozen ones are skipped).
      params.push_back(grid_values(shapes[i], seed + static_cast<int64_t>(i), dtype, grid_bits).requires_grad_(true));
      targets.push_back(grid_values(shapes[i], seed + 100 + static_cast<int64_t>(i), torch::kDouble));
    }
  }
  torch::Tensor loss_at(const std::vector<torch::Tensor>& values) const {
    auto total = torch::zeros({}, torch::kDouble);
    for (size_t i = 0; i < values.size(); ++i) total = total + (values[i].to(torch::kDouble) - targets[i]).pow(2).sum();
    return total;
  }
  torch::Tensor operator()() {
    ++calls;
    return loss_at(params);
  }
};

template <class Optimizer>
struct Make;

template <>
struct Make<zotorch::FZOO> {
  static zotorch::FZOOOptions options(double lr, double eps, uint64_t seed) {
    return zotorch::FZOOOptions(lr).eps(eps).seed(seed).num_perturbations(4);
  }
  static constexpr int64_t kForwardPasses = 5;
  static constexpr int64_t kSweeps = 5;
};
template <>
struct Make<zotorch::MeZO> {
  static zotorch::MeZOOptions options(double lr, double eps, uint64_t seed) {
    return zotorch::MeZOOptions(lr).eps(eps).seed(seed);
  }
  static constexpr int64_t kForwardPasses = 2;
  static constexpr int64_t kSweeps = 3;
};
template <>
struct Make<zotorch::AdaMeZO> {
  static zotorch::AdaMeZOOptions options(double lr, double eps, uint64_t seed) {
    return zotorch::AdaMeZOOptions(lr).eps(eps).seed(seed).window(2);
  }
  static constexpr int64_t kForwardPasses = 2;
  static constexpr int64_t kSweeps = 3;
};

/// Ulps that one rounding per sweep can leave after an aborted step: 0 where the arithmetic is exact.
template <class Optimizer>
constexpr int64_t restore_ulps() {
  return std::is_same<Optimizer, zotorch::FZOO>::value ? 0 : 2;
}

}  // namespace zotorch_test
