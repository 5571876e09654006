// Inputs shared by the CUDA sweep tests: plans that use every feature of a sweep, parameter lists
// with awkward sizes, dtypes, groups and alignments, and a bitwise comparison that names the first
// differing element.
#pragma once

#include <zotorch/detail/cpu_sweep.h>

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

namespace zotorch_test {

using zotorch::Distribution;
using zotorch::detail::ParamEntry;
using zotorch::detail::ParamTable;
using zotorch::detail::SweepPlan;
using zotorch::detail::SweepTerm;

/// A plan with `terms` directions over `groups` param groups, shaped like the optimizers' sweeps:
/// perturb coefficients (alpha), lr-scaled update coefficients (beta), decoupled decay, AdaMeZO's
/// window weights when adaptive, and with `restores` restore coefficients on terms 0, 3, 6, ...
/// (a staged sweep: the restore rounding comes first).
inline SweepPlan make_plan(Distribution dist, bool adaptive, bool stochastic_rounding, int terms, int groups,
                           uint64_t seed, bool restores = true) {
  using zotorch::detail::splitmix64;
  SweepPlan plan;
  plan.distribution = dist;
  plan.adaptive = adaptive;
  plan.adaptive_scale = 100.0;
  plan.adaptive_stab = 1e-5;
  plan.stochastic_rounding = stochastic_rounding;
  plan.rounding_key = splitmix64(seed ^ 0x5EEDu);
  plan.num_groups = groups;
  for (int g = 0; g < groups; ++g) {
    plan.groups[g].lr = (adaptive ? 1e-5 : 3e-3) * (1.0 + 0.5 * g);
    plan.groups[g].keep = 1.0 - plan.groups[g].lr * 0.1 * g;  // group 0 has no decay
  }
  for (int k = 0; k < terms; ++k) {
    SweepTerm term;
    term.key = splitmix64(seed * 1000003u + static_cast<uint64_t>(k));
    term.probe = static_cast<uint32_t>(k % 7);
    term.alpha = (k % 2 == 0 ? 1e-3 : -2e-3) * (1.0 + 0.125 * k);
    term.beta = -0.3 + 0.07 * k;
    const double g = 0.8 - 0.15 * k;  // the projected gradient of window entry k
    term.m_weight = adaptive ? std::pow(0.7, k) * g : 0.0;
    term.v_weight = adaptive ? std::pow(0.9, k) * g * g : 0.0;
    term.restore = restores && k % 3 == 0 ? -1e-3 * (1.0 + 0.25 * k) : 0.0;
    plan.add_term(term);
  }
  return plan;
}

/// One parameter of a test list.
struct ParamSpec {
  int64_t numel;
  at::ScalarType dtype;
  int32_t group;
  bool misaligned;  ///< a view starting one element into its storage: no 128-bit accesses
};

/// The 300-tensor list: sizes around every tile and block boundary, four dtypes, three groups,
/// some empty and some misaligned tensors.
inline std::vector<ParamSpec> long_list() {
  const int64_t sizes[] = {1, 3, 127, 129, 4097, 128, 512, 513, 511, 0, 5, 1000, 2049, 64, 7777, 4, 17, 300};
  const at::ScalarType dtypes[] = {at::kFloat, at::kBFloat16, at::kHalf, at::kDouble, at::kFloat};
  std::vector<ParamSpec> specs;
  for (int i = 0; i < 300; ++i) {
    specs.push_back({sizes[i % 18], dtypes[(i / 3) % 5], static_cast<int32_t>(i % 3), i % 11 == 4});
  }
  return specs;
}

/// Deterministic values of a spec on the CPU: mostly O(1), with zeros, tiny and large magnitudes
/// so that rounding, subnormals and overflow paths are taken in 16-bit types.
inline at::Tensor make_values(const ParamSpec& spec, uint64_t seed) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  at::Tensor values = at::randn({spec.numel}, gen, at::TensorOptions().dtype(at::kDouble));
  if (spec.numel > 8) {
    auto acc = values.accessor<double, 1>();
    acc[0] = 0.0;
    acc[1] = 3e-6;       // fp16 subnormal
    acc[2] = -60000.0;   // near the fp16 limit
    acc[3] = 1e-3;
  }
  return values.to(spec.dtype);
}

/// `values` placed on `options.device()`; misaligned specs become a view one element into a buffer.
inline at::Tensor place(const at::Tensor& values, const ParamSpec& spec, const at::TensorOptions& options) {
  if (!spec.misaligned) return values.to(options.device()).clone();
  at::Tensor buffer = at::zeros({spec.numel + 1}, options.dtype(spec.dtype));
  at::Tensor view = buffer.narrow(0, 1, spec.numel);
  view.copy_(values);
  return view;
}

/// The table of a list, tensor ids in list order.
inline ParamTable make_table(const std::vector<at::Tensor>& tensors, const std::vector<ParamSpec>& specs) {
  ParamTable table;
  for (size_t i = 0; i < tensors.size(); ++i) {
    table.entries.push_back(ParamEntry{tensors[i], static_cast<uint32_t>(i), specs[i].group});
  }
  return table;
}

/// Integer view of a float tensor, so that equality is bitwise (-0 ≠ +0, NaN payloads count).
inline at::Tensor bits_of(const at::Tensor& t) {
  switch (t.element_size()) {
    case 2: return t.contiguous().view(at::kShort);
    case 4: return t.contiguous().view(at::kInt);
    default: return t.contiguous().view(at::kLong);
  }
}

/// "" when `actual` equals `expected` bit for bit, else a description of the first difference.
inline std::string first_difference(const at::Tensor& expected, const at::Tensor& actual) {
  const at::Tensor e = expected.cpu(), a = actual.cpu();
  if (e.scalar_type() != a.scalar_type() || e.sizes() != a.sizes()) return "dtype or shape differs";
  const at::Tensor differs = bits_of(e).ne(bits_of(a));
  if (!differs.any().item<bool>()) return "";
  const int64_t index = differs.nonzero()[0][0].item<int64_t>();
  std::ostringstream out;
  out << differs.sum().item<int64_t>() << " of " << e.numel() << " elements differ; first at " << index
      << ": expected " << e[index].item<double>() << ", got " << a[index].item<double>();
  return out.str();
}

}  // namespace zotorch_test
