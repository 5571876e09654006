// Parameter drift from perturb-and-restore alone (lr = 0), per ε, method and dtype: zotorch's fused
// sweeps against the naive sequence of separate perturb and restore sweeps the reference code runs.
// Prints one JSON object per line, then a table. docs/reliability.md records a run.
#include <zotorch/zotorch.h>

#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace {

struct Drift {
  double max_ulps = 0, mean_ulps = 0;
  /// The same distance in ulps of max(|θ|, ε): the rounding unit of the perturbed values, which is
  /// what each sweep can lose. Plain ulps explode for weights much smaller than ε.
  double max_scaled = 0;
};

/// Distance in ulps of the original dtype between two tensors of the same dtype.
Drift ulp_drift(const torch::Tensor& now, const torch::Tensor& before, double eps) {
  const auto dtype = now.scalar_type();
  const auto bits_type = dtype == torch::kFloat ? torch::kInt : torch::kShort;
  auto ordered = [&](const torch::Tensor& t) {
    auto bits = t.contiguous().view(bits_type).to(torch::kLong);
    const int64_t sign = dtype == torch::kFloat ? int64_t{INT32_MIN} : int64_t{INT16_MIN};
    return torch::where(bits < 0, sign - bits, bits);
  };
  const auto d = (ordered(now) - ordered(before)).abs().to(torch::kDouble);
  const int mantissa_bits = dtype == torch::kFloat ? 23 : dtype == torch::kHalf ? 10 : 7;
  const auto scale = before.to(torch::kDouble).abs().clamp_min(eps);
  const auto unit = torch::pow(2.0, torch::floor(torch::log2(scale)) - mantissa_bits);
  const auto scaled = (now.to(torch::kDouble) - before.to(torch::kDouble)).abs() / unit;
  return {d.max().item<double>(), d.mean().item<double>(), scaled.max().item<double>()};
}

/// The reference codes' sequence: every perturbation added and removed by its own sweep.
void naive_step(const zotorch::detail::ParamTable& table, zotorch::Distribution dist, uint64_t key, int probes,
                bool two_sided, double eps, bool stochastic, uint64_t step) {
  auto sweep = [&](uint32_t probe, double alpha, uint64_t index) {
    zotorch::detail::SweepPlan plan;
    plan.distribution = dist;
    plan.stochastic_rounding = stochastic;
    plan.rounding_key = zotorch::detail::splitmix64(key ^ (step * 131 + index));
    plan.add_term({key, probe, alpha, 0, 0, 0});
    zotorch::detail::apply_sweep(table, plan);
  };
  uint64_t index = 0;
  for (int p = 0; p < probes; ++p) {
    const auto probe = static_cast<uint32_t>(p);
    if (two_sided) {  // MeZO: +εz, −2εz, +εz
      sweep(probe, +eps, index++);
      sweep(probe, -2 * eps, index++);
      sweep(probe, +eps, index++);
    } else {  // FZOO: +εu_i, −εu_i for each probe
      sweep(probe, +eps, index++);
      sweep(probe, -eps, index++);
    }
  }
}

template <class Optimizer, class Options>
Drift fused_run(torch::Tensor theta, const Options& options, int64_t steps) {
  const auto before = theta.clone();
  Optimizer opt({theta}, Options(options).include_frozen(true));  // a plain tensor: requires_grad is false
  for (int64_t s = 0; s < steps; ++s) opt.step([&] { return theta.to(torch::kFloat).square().sum(); });
  return ulp_drift(theta, before, options.eps());
}

}  // namespace

int main(int argc, char** argv) {
  int64_t steps = 10000, numel = 1 << 16;
  // Powers of two and not: with ε a power of two every perturbed value of a weight near ε is exact.
  std::vector<double> eps_values = {1e-3, 1e-2, 3e-4, std::ldexp(1.0, -10)};
  std::vector<std::string> methods = {"mezo", "fzoo", "adamezo"};
  const char* usage =
      "usage: bench_drift [--steps N] [--numel N] [--eps E[,E...]] [--methods mezo,fzoo,adamezo] [--smoke]\n"
      "  lr = 0 perturb/restore drift in ulps per eps, method and dtype, fused sweeps against separate\n"
      "  perturb and restore sweeps (defaults: 10000 steps, 65536 weights, eps 1e-3,1e-2,3e-4,2^-10;\n"
      "  --smoke: 20 steps, 1024 weights)\n";
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--steps") && i + 1 < argc) {
      steps = std::atoll(argv[++i]);
    } else if (!std::strcmp(argv[i], "--numel") && i + 1 < argc) {
      numel = std::atoll(argv[++i]);
    } else if (!std::strcmp(argv[i], "--eps") && i + 1 < argc) {
      eps_values.clear();
      std::stringstream list(argv[++i]);
      std::string item;
      while (std::getline(list, item, ',')) {
        char* end = nullptr;
        const double value = std::strtod(item.c_str(), &end);
        if (end == item.c_str() || *end != '\0' || !(value > 0) || !std::isfinite(value)) {
          std::cerr << "bench_drift: --eps takes positive numbers separated by commas, got '" << item << "'\n" << usage;
          return 2;
        }
        eps_values.push_back(value);
      }
    } else if (!std::strcmp(argv[i], "--methods") && i + 1 < argc) {
      methods.clear();
      std::stringstream list(argv[++i]);
      std::string item;
      while (std::getline(list, item, ',')) {
        if (item != "mezo" && item != "fzoo" && item != "adamezo") {
          std::cerr << "bench_drift: --methods takes mezo, fzoo, adamezo separated by commas, got '" << item << "'\n"
                    << usage;
          return 2;
        }
        methods.push_back(item);
      }
    } else if (!std::strcmp(argv[i], "--smoke")) {
      steps = 20, numel = 1024;
    } else if (!std::strcmp(argv[i], "--help") || !std::strcmp(argv[i], "-h")) {
      std::cout << usage;
      return 0;
    } else {
      std::cerr << "bench_drift: unknown or incomplete option '" << argv[i] << "'\n" << usage;
      return 2;
    }
  }
  if (steps < 1 || numel < 1 || eps_values.empty() || methods.empty()) {
    std::cerr << "bench_drift: --steps and --numel must be positive, --eps and --methods not empty\n" << usage;
    return 2;
  }
  struct Row {
    double eps;
    std::string method, dtype;
    bool stochastic;
    Drift fused, naive;
  };
  std::vector<Row> rows;
  for (const double eps : eps_values) {
    for (const auto dtype : {torch::kFloat, torch::kBFloat16, torch::kHalf}) {
      for (const bool stochastic : {false, true}) {
        if (dtype == torch::kFloat && stochastic) continue;  // no effect on float32
        for (const std::string& method : methods) {
          // LLM-like weights: N(0, 0.02), rounded to the dtype once.
          auto gen = at::make_generator<at::CPUGeneratorImpl>(7);
          const auto initial = (torch::randn({numel}, gen) * 0.02).to(dtype);
          Row row{eps, method, torch::toString(dtype), stochastic, {}, {}};
          const uint64_t seed = 11;
          if (method == "mezo") {
            row.fused = fused_run<zotorch::MeZO>(initial.clone(), zotorch::MeZOOptions(0.0).eps(eps).seed(seed).stochastic_rounding(stochastic), steps);
          } else if (method == "fzoo") {
            row.fused = fused_run<zotorch::FZOO>(initial.clone(), zotorch::FZOOOptions(0.0).eps(eps).seed(seed).stochastic_rounding(stochastic), steps);
          } else {
            row.fused = fused_run<zotorch::AdaMeZO>(initial.clone(), zotorch::AdaMeZOOptions(0.0).eps(eps).seed(seed).stochastic_rounding(stochastic), steps);
          }
          zotorch::detail::ParamTable table;
          table.entries.push_back({initial.clone(), 0, 0});
          const bool fzoo = method == "fzoo";
          for (int64_t s = 0; s < steps; ++s) {
            naive_step(table, fzoo ? zotorch::Distribution::Rademacher : zotorch::Distribution::Gaussian,
                       zotorch::step_key(seed, static_cast<uint64_t>(s)), fzoo ? 8 : 1, !fzoo, eps, stochastic,
                       static_cast<uint64_t>(s));
          }
          row.naive = ulp_drift(table.entries[0].tensor, initial, eps);
          std::printf(
              "{\"method\":\"%s\",\"dtype\":\"%s\",\"stochastic_rounding\":%s,\"steps\":%lld,\"numel\":%lld,\"eps\":%g,"
              "\"fused_max_ulps\":%.0f,\"fused_mean_ulps\":%.4f,\"naive_max_ulps\":%.0f,\"naive_mean_ulps\":%.4f,"
              "\"fused_max_ulps_of_perturbed\":%.2f,\"naive_max_ulps_of_perturbed\":%.2f}\n",
              row.method.c_str(), row.dtype.c_str(), stochastic ? "true" : "false", static_cast<long long>(steps),
              static_cast<long long>(numel), eps, row.fused.max_ulps, row.fused.mean_ulps, row.naive.max_ulps,
              row.naive.mean_ulps, row.fused.max_scaled, row.naive.max_scaled);
          std::fflush(stdout);
          rows.push_back(row);
        }
      }
    }
  }
  std::fprintf(stderr, "\n%-10s %-8s %-9s %-4s | %10s %10s %12s | %10s %10s %12s\n", "eps", "method", "dtype", "SR",
               "fused max", "fused mean", "max(ε-ulps)", "naive max", "naive mean", "max(ε-ulps)");
  for (const auto& r : rows) {
    std::fprintf(stderr, "%-10g %-8s %-9s %-4s | %10.0f %10.4f %12.2f | %10.0f %10.4f %12.2f\n", r.eps, r.method.c_str(),
                 r.dtype.c_str(), r.stochastic ? "on" : "off", r.fused.max_ulps, r.fused.mean_ulps, r.fused.max_scaled,
                 r.naive.max_ulps, r.naive.mean_ulps, r.naive.max_scaled);
  }
}
