// Sweep bandwidth: zotorch's fused sweep against the fastest of the obvious ATen implementations and
// against the memory-bound limit of an in-place read-modify-write pass over the same bytes.
// One JSON object per line on stdout, a human table on stderr; ratios come from the same run
// (docs/performance.md "Sweep bandwidth").
#include <zotorch/detail/dispatch.h>
#include <zotorch/noise.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/Event.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <iostream>
#include <string>
#include <utility>
#include <vector>

namespace {

using zotorch::Distribution;
using zotorch::detail::ParamTable;
using zotorch::detail::SweepPlan;

struct Options {
  std::string device = "cpu";
  std::vector<std::string> cases = {"single", "llm"};
  std::vector<at::ScalarType> dtypes = {at::kFloat, at::kBFloat16, at::kHalf};
  std::vector<Distribution> dists = {Distribution::Rademacher, Distribution::Gaussian};
  std::vector<int> terms = {1};
  std::vector<bool> stochastic = {false, true};  // 16-bit types only; the optimizers default to true
  zotorch::detail::CpuKernels kernels = zotorch::detail::CpuKernels::Best;
  int repeats = 5;
  bool repeats_given = false;
  int threads = 0;  // 0: leave at::get_num_threads() as it is
  std::vector<std::string> aten_draws;  // empty: every candidate
  bool smoke = false;
};

/// One obvious ATen way to draw a direction tensor for p, to be added with p.add_(z, a).
struct AtenDraw {
  const char* name;
  at::Tensor (*draw)(const at::Tensor& p);
};

/// The ±1 draws a user would write; the baseline is the fastest of them, measured in the same run
/// (docs/performance.md "What aten and limit mean").
const std::vector<AtenDraw>& rademacher_draws() {
  static const std::vector<AtenDraw> draws = {
      {"bernoulli", [](const at::Tensor& p) { return at::empty_like(p).bernoulli_(0.5).mul_(2).sub_(1); }},
      {"randint", [](const at::Tensor& p) { return at::randint_like(p, 0, 2).mul_(2).sub_(1); }},
      {"random", [](const at::Tensor& p) { return at::empty_like(p).random_(0, 2).mul_(2).sub_(1); }},
      // sign() of a normal draw is 0 only for an exact 0: never in float32 or bfloat16 (float32's exponent
      // range). rand_like(p).sub_(0.5).sign_() is not a candidate: bfloat16 draws 0.5 exactly 1 time in 256.
      {"randn_sign", [](const at::Tensor& p) { return at::randn_like(p).sign_(); }},
      {"rand_lt", [](const at::Tensor& p) { return at::rand_like(p).lt_(0.5).mul_(2).sub_(1); }},
  };
  return draws;
}

const std::vector<AtenDraw>& gaussian_draws() {
  static const std::vector<AtenDraw> draws = {
      {"randn", [](const at::Tensor& p) { return at::randn_like(p); }},
      {"normal", [](const at::Tensor& p) { return at::empty_like(p).normal_(); }},
  };
  return draws;
}

[[noreturn]] void usage(const char* message, int code = 2) {
  std::fprintf(code == 0 ? stdout : stderr,
               "%s%s"
               "usage: bench_sweep [--device cpu|cuda] [--case single|llm|all] [--dtype float32|bfloat16|float16|all]\n"
               "                   [--dist rademacher|gaussian|all] [--terms 1|2|8|all] [--rounding nearest|stochastic|all]\n"
               "                   [--kernels best|avx512|avx2|portable] [--repeats N] [--threads N] [--smoke]\n"
               "                   [--aten-draws all|NAME,...]  (bernoulli randint random randn_sign rand_lt randn normal)\n",
               code == 0 ? "" : "bench_sweep: ", code == 0 ? "" : (std::string(message) + "\n").c_str());
  std::exit(code);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage(("missing value after " + arg).c_str());
      return argv[++i];
    };
    if (arg == "--device") {
      o.device = value();
      if (o.device != "cpu" && o.device != "cuda") usage("--device must be cpu or cuda");
    } else if (arg == "--case") {
      const std::string v = value();
      if (v == "all") o.cases = {"single", "llm"};
      else if (v == "single" || v == "llm") o.cases = {v};
      else usage("--case must be single, llm or all");
    } else if (arg == "--dtype") {
      const std::string v = value();
      if (v == "all") o.dtypes = {at::kFloat, at::kBFloat16, at::kHalf};
      else if (v == "float32") o.dtypes = {at::kFloat};
      else if (v == "bfloat16") o.dtypes = {at::kBFloat16};
      else if (v == "float16") o.dtypes = {at::kHalf};
      else usage("--dtype must be float32, bfloat16, float16 or all");
    } else if (arg == "--dist") {
      const std::string v = value();
      if (v == "all") o.dists = {Distribution::Rademacher, Distribution::Gaussian};
      else if (v == "rademacher") o.dists = {Distribution::Rademacher};
      else if (v == "gaussian") o.dists = {Distribution::Gaussian};
      else usage("--dist must be rademacher, gaussian or all");
    } else if (arg == "--terms") {
      const std::string v = value();
      if (v == "all") o.terms = {1, 2, 8};
      else if (v == "1") o.terms = {1};
      else if (v == "2") o.terms = {2};
      else if (v == "8") o.terms = {8};
      else usage("--terms must be 1, 2, 8 or all");
    } else if (arg == "--rounding") {
      const std::string v = value();
      if (v == "all") o.stochastic = {false, true};
      else if (v == "nearest") o.stochastic = {false};
      else if (v == "stochastic") o.stochastic = {true};
      else usage("--rounding must be nearest, stochastic or all");
    } else if (arg == "--kernels") {
      const std::string v = value();
      if (v == "best") o.kernels = zotorch::detail::CpuKernels::Best;
      else if (v == "avx512") o.kernels = zotorch::detail::CpuKernels::Avx512;
      else if (v == "avx2") o.kernels = zotorch::detail::CpuKernels::Avx2;
      else if (v == "portable") o.kernels = zotorch::detail::CpuKernels::Portable;
      else usage("--kernels must be best, avx512, avx2 or portable");
    } else if (arg == "--repeats") {
      o.repeats = std::atoi(value().c_str());
      o.repeats_given = true;
      if (o.repeats < 1) usage("--repeats must be >= 1");
    } else if (arg == "--threads") {
      o.threads = std::atoi(value().c_str());
      if (o.threads < 1) usage("--threads must be >= 1");
    } else if (arg == "--aten-draws") {
      // Fewer candidates for long runs (--terms 8 --case llm); the fastest of those given is "aten".
      const std::string v = value();
      o.aten_draws.clear();
      if (v != "all") {
        for (size_t start = 0; start <= v.size();) {
          const size_t end = std::min(v.find(',', start), v.size());
          if (end > start) o.aten_draws.push_back(v.substr(start, end - start));
          start = end + 1;
        }
      }
    } else if (arg == "--smoke") {
      o.smoke = true;
    } else if (arg == "--help" || arg == "-h") {
      usage("", 0);
    } else {
      usage(("unknown argument " + arg).c_str());
    }
  }
  for (const std::string& name : o.aten_draws) {
    bool known = false;
    for (const auto* list : {&rademacher_draws(), &gaussian_draws()})
      for (const AtenDraw& d : *list) known = known || name == d.name;
    if (!known) usage(("--aten-draws: unknown draw '" + name + "'").c_str());
  }
  const auto given = [&](const std::vector<AtenDraw>& list) {
    for (const AtenDraw& d : list)
      if (o.aten_draws.empty() || std::find(o.aten_draws.begin(), o.aten_draws.end(), d.name) != o.aten_draws.end())
        return true;
    return false;
  };
  for (Distribution dist : o.dists)
    if (!given(dist == Distribution::Gaussian ? gaussian_draws() : rademacher_draws()))
      usage("--aten-draws names no draw of one of the distributions measured (Rademacher and Gaussian have their own)");
  if (o.smoke && !o.repeats_given) o.repeats = 1;  // ctest runs --smoke to see it start and finish, not to measure
  // A GPU pass over the llm case takes well under a millisecond: many repeats for a stable median.
  else if (o.device == "cuda" && !o.repeats_given) o.repeats = 200;
  return o;
}

/// Tensor shapes of one case. "llm": an OPT-style decoder of about 125M parameters
/// (18 layers, d_model 640, ffn 2560, vocab 50272, 2048 positions): 292 tensors, 122.1M elements.
std::vector<std::vector<int64_t>> case_shapes(const std::string& name, bool smoke) {
  if (name == "single") return {{smoke ? int64_t{1} << 16 : int64_t{1} << 26}};
  const int64_t d = smoke ? 64 : 640, ffn = 4 * d, vocab = smoke ? 500 : 50272, positions = smoke ? 64 : 2048;
  const int layers = smoke ? 2 : 18;
  std::vector<std::vector<int64_t>> shapes = {{vocab, d}, {positions, d}};
  for (int l = 0; l < layers; ++l) {
    for (int proj = 0; proj < 4; ++proj) {  // q, k, v, out
      shapes.push_back({d, d});
      shapes.push_back({d});
    }
    shapes.push_back({d});  // attention layer norm
    shapes.push_back({d});
    shapes.push_back({ffn, d});
    shapes.push_back({ffn});
    shapes.push_back({d, ffn});
    shapes.push_back({d});
    shapes.push_back({d});  // final layer norm of the block
    shapes.push_back({d});
  }
  shapes.push_back({d});  // decoder's final layer norm
  shapes.push_back({d});
  return shapes;
}

void synchronize(const at::Device& device, const at::Tensor& any) {
  // A scalar copy to the host waits for everything queued on the current stream; portable across
  // LibTorch releases, and its cost (microseconds) is negligible against the timed passes.
  if (device.is_cuda()) (void)any.flatten()[0].item<float>();
}

/// Wall and process-CPU seconds of one run: the median of each over `repeats` runs after a warm-up.
struct Timing {
  double wall = 0, cpu = 0;
};

double process_cpu_seconds() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

/// CUDA: the median over `repeats` runs of the GPU time between two events on the current stream
/// around each run (c10::Event, so this file needs no CUDA header), after a warm-up; host launch
/// overhead is not part of it unless the GPU waits for the host. `cpu` is the host time per run.
Timing time_median_cuda(const std::function<void()>& body, int repeats, const at::Device& device) {
  const c10::impl::VirtualGuardImpl guard(c10::DeviceType::CUDA);
  const c10::Stream stream = guard.getStream(device);
  body();
  stream.synchronize();
  std::vector<double> gpu, cpu;
  for (int r = 0; r < repeats; ++r) {
    c10::Event start(c10::DeviceType::CUDA, c10::EventFlag::BACKEND_DEFAULT);  // timing enabled
    c10::Event stop(c10::DeviceType::CUDA, c10::EventFlag::BACKEND_DEFAULT);
    const double cpu_start = process_cpu_seconds();
    start.record(stream);
    body();
    stop.record(stream);
    cpu.push_back(process_cpu_seconds() - cpu_start);
    stop.synchronize();
    gpu.push_back(1e-3 * start.elapsedTime(stop));
  }
  std::sort(gpu.begin(), gpu.end());
  std::sort(cpu.begin(), cpu.end());
  return {gpu[gpu.size() / 2], cpu[cpu.size() / 2]};
}

Timing time_median(const std::function<void()>& body, int repeats, const at::Device& device, const at::Tensor& any) {
  if (device.is_cuda()) return time_median_cuda(body, repeats, device);
  body();
  synchronize(device, any);
  std::vector<double> wall, cpu;
  for (int r = 0; r < repeats; ++r) {
    const double cpu_start = process_cpu_seconds();
    const auto start = std::chrono::steady_clock::now();
    body();
    synchronize(device, any);
    wall.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    cpu.push_back(process_cpu_seconds() - cpu_start);
  }
  std::sort(wall.begin(), wall.end());
  std::sort(cpu.begin(), cpu.end());
  return {wall[wall.size() / 2], cpu[cpu.size() / 2]};
}

/// The medians of two bodies timed alternately (a, b, a, b, ... after a warm-up of each), so that
/// both see the same machine: on a shared VM the memory bandwidth drifts by a third between
/// measurements taken seconds apart, which timing them one after the other would put into the ratio.
/// CUDA: each timed by CUDA events over its own repeats (time_median_cuda), the GPU being steadier.
std::pair<Timing, Timing> time_median_alternating(const std::function<void()>& a, const std::function<void()>& b,
                                                  int repeats, const at::Device& device) {
  if (device.is_cuda()) return {time_median_cuda(a, repeats, device), time_median_cuda(b, repeats, device)};
  std::vector<double> wall[2], cpu[2];
  const std::function<void()>* bodies[2] = {&a, &b};
  for (const auto* body : bodies) (*body)();
  for (int r = 0; r < repeats; ++r) {
    for (int k = 0; k < 2; ++k) {
      const double cpu_start = process_cpu_seconds();
      const auto start = std::chrono::steady_clock::now();
      (*bodies[k])();
      wall[k].push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
      cpu[k].push_back(process_cpu_seconds() - cpu_start);
    }
  }
  Timing out[2];
  for (int k = 0; k < 2; ++k) {
    std::sort(wall[k].begin(), wall[k].end());
    std::sort(cpu[k].begin(), cpu[k].end());
    out[k] = {wall[k][wall[k].size() / 2], cpu[k][cpu[k].size() / 2]};
  }
  return {out[0], out[1]};
}

const char* dtype_name(at::ScalarType t) {
  return t == at::kFloat ? "float32" : t == at::kBFloat16 ? "bfloat16" : "float16";
}

/// The CPU kernels in use, as the JSON reports them.
const char* kernels_name(const at::Device& device, zotorch::detail::CpuKernels kernels) {
  using zotorch::detail::CpuKernels;
  if (device.is_cuda()) return "cuda";
#if defined(ZOTORCH_CPU_AVX2_DISPATCH)
  const bool avx2 = kernels != CpuKernels::Portable && __builtin_cpu_supports("avx2");
  const bool avx512f = (kernels == CpuKernels::Best || kernels == CpuKernels::Avx512) && avx2 &&
                       __builtin_cpu_supports("avx512f");
#if defined(ZOTORCH_CPU_AVX512_SWEEP)
  const bool avx512 = avx512f && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
                      __builtin_cpu_supports("avx512vl");
#else
  const bool avx512 = false;
#endif
  // Best adds AVX512-BF16's float32 → bfloat16 conversion where the CPU has it.
  const bool bf16 = avx512 && kernels == CpuKernels::Best && __builtin_cpu_supports("avx512bf16");
  return bf16 ? "avx512+bf16" : avx512 ? "avx512" : avx512f ? "avx2+avx512f-philox" : avx2 ? "avx2" : "portable";
#else
  (void)kernels;
  return "portable";
#endif
}

/// --smoke: a ±1 draw that gives anything but -1 and +1, or only one sign, would make its
/// bandwidth meaningless as a baseline.
bool rademacher_draw_is_pm1(const AtenDraw& d, const at::Tensor& p) {
  const at::Tensor z = d.draw(p).to(at::kFloat);
  // randn_sign is 0 where randn returns exactly 0: about once in 10^7 draws on CPU (6 in 1.7·10^8
  // float32 values, 17 in bfloat16, torch 2.x), often enough to fail a smoke run now and then. A
  // property of that draw, allowed at that rate.
  const bool sign_of_randn = std::string(d.name) == "randn_sign";
  const double zeros = z.eq(0).sum().item<double>();
  const bool pm1 = z.abs().eq(1).logical_or(z.eq(0)).all().item<bool>() &&
                   (sign_of_randn ? zeros <= 1e-4 * static_cast<double>(z.numel()) : zeros == 0);
  const bool both = z.gt(0).any().item<bool>() && z.lt(0).any().item<bool>();
  if (!pm1 || !both)
    std::fprintf(stderr, "bench_sweep: the ATen Rademacher draw '%s' gives %s\n", d.name,
                 pm1 ? "one sign only" : "values other than -1 and +1");
  return pm1 && both;
}

struct Row {
  std::string device, dtype, dist, case_name, rounding;
  int64_t numel = 0, tensors = 0;
  int terms = 0, threads = 0;
  double zotorch = 0, aten = 0, limit = 0, dtype_limit = 0, copy = 0;  // GB/s of wall time (CUDA: of GPU event time)
  double flat_limit = 0, flat_copy = 0;  // CUDA only: one launch over a flat buffer
  double zotorch_cpu = 0, aten_cpu = 0, limit_cpu = 0, dtype_limit_cpu = 0;  // GB/s of process CPU time
  std::string aten_impl, limit_impl;
  std::vector<std::pair<std::string, double>> aten_candidates;  // every draw's GB/s of wall time
};

}  // namespace

int main(int argc, char** argv) {
  const Options opt = parse(argc, argv);
  if (opt.threads > 0) at::set_num_threads(opt.threads);
  zotorch::detail::cpu_kernels() = opt.kernels;
  at::Device device(at::kCPU);
  if (opt.device == "cuda") {
    if (!at::hasCUDA()) {
      std::fprintf(stderr, "bench_sweep: --device cuda, but this LibTorch sees no CUDA device\n");
      return 1;
    }
    if (!zotorch::detail::cuda_kernels_available()) {
      std::fprintf(stderr,
                   "bench_sweep: --device cuda, but this program has no zotorch CUDA kernels; build it with the "
                   "CMake target zotorch::cuda linked (or zotorch_add_cuda_kernels(bench_sweep))\n");
      return 1;
    }
    device = at::Device(at::kCUDA, 0);
  }
  const double eps = 1e-3;
  std::vector<Row> rows;
  for (const std::string& case_name : opt.cases) {
    const auto shapes = case_shapes(case_name, opt.smoke);
    for (at::ScalarType dtype : opt.dtypes) {
      const auto options = at::TensorOptions().dtype(dtype).device(device);
      std::vector<at::Tensor> params, copies;
      ParamTable table;
      int64_t numel = 0;
      for (size_t i = 0; i < shapes.size(); ++i) {
        params.push_back(at::randn(shapes[i], options).mul_(0.02));
        copies.push_back(at::empty_like(params.back()));
        table.entries.push_back({params.back(), static_cast<uint32_t>(i), 0});
        numel += params.back().numel();
      }
      const double bytes = 2.0 * static_cast<double>(numel) * static_cast<double>(at::elementSize(dtype));
      const at::Tensor& any = params.front();
      // The memory-bound reference points depend on the tensors only, not on the plan. The dtype's own
      // p.add_(scalar) is arithmetic-bound for 16-bit types (convert, add, round per element), so the
      // limit is the faster of it and a float32 add_ over the same bytes in the same tensor layout. The
      // float32 add is timed alternately with each zotorch sweep below (time_median_alternating).
      const Timing dtype_limit_s = time_median([&] { for (auto& p : params) p.add_(1e-3); }, opt.repeats, device, any);
      const double dtype_limit_gbps = bytes / dtype_limit_s.wall / 1e9;
      const double dtype_limit_cpu_gbps = bytes / dtype_limit_s.cpu / 1e9;
      std::vector<at::Tensor> words;  // numel * element size / 4 floats per tensor
      double words_numel = 0;
      for (const auto& p : params) {
        const int64_t n = (p.numel() * static_cast<int64_t>(at::elementSize(dtype)) + 3) / 4;
        words.push_back(at::randn({n}, options.dtype(at::kFloat)).mul_(0.02));
        words_numel += static_cast<double>(n);
      }
      const double f32_bytes = 2.0 * 4.0 * words_numel;
      const auto f32_limit_body = [&] { for (auto& w : words) w.add_(1e-3); };
      const Timing copy_s = time_median(
          [&] { for (size_t i = 0; i < params.size(); ++i) copies[i].copy_(params[i]); }, opt.repeats, device, any);
      // On a GPU those loops are one launch per tensor (292 for llm), which the sweep's one launch per
      // dtype does not pay: one flat buffer of the same bytes gives the one-launch references.
      Timing flat_limit_s, flat_copy_s;
      if (device.is_cuda()) {
        at::Tensor flat = at::randn({numel}, options).mul_(0.02), flat_copy = at::empty_like(flat);
        flat_limit_s = time_median([&] { flat.add_(1e-3); }, opt.repeats, device, flat);
        flat_copy_s = time_median([&] { flat_copy.copy_(flat); }, opt.repeats, device, flat);
      }
      for (Distribution dist : opt.dists) {
        for (int terms : opt.terms) {
          // terms == 1: a perturbation θ += eps·z. terms == 2: an FZOO probe transition, +eps·z_1 with the
          // restore term −eps·z_0 rounded first (sweep.h). terms == 8: an FZOO-update-like sweep that removes
          // the last probe and adds seven weighted directions (coefficients of the size a real step uses).
          SweepPlan plan;
          plan.distribution = dist;
          plan.groups[0].lr = 1e-5;
          plan.groups[0].keep = 1.0;
          plan.rounding_key = zotorch::step_key(99, 0);
          for (int k = 0; k < terms; ++k) {
            const double alpha = k == 0 ? eps : 0.0, beta = k == 0 ? 0.0 : 0.3 - 0.07 * k;
            zotorch::detail::SweepTerm term{zotorch::step_key(1234, static_cast<uint64_t>(k)), static_cast<uint32_t>(k),
                                            alpha, beta, 0, 0};
            if (terms == 2) {
              term.beta = 0;
              term.alpha = k == 0 ? eps : 0.0;
              term.restore = k == 1 ? -eps : 0.0;
            }
            plan.add_term(term);
          }
          // Every obvious ATen draw of the same directions, per tensor and term; the fastest is "aten".
          const auto& draws = dist == Distribution::Gaussian ? gaussian_draws() : rademacher_draws();
          std::vector<std::pair<std::string, double>> candidates;
          Timing aten_s;
          std::string aten_impl;
          double aten_gbps = -1;
          for (const AtenDraw& d : draws) {
            if (!opt.aten_draws.empty() &&
                std::find(opt.aten_draws.begin(), opt.aten_draws.end(), d.name) == opt.aten_draws.end())
              continue;
            if (opt.smoke && dist == Distribution::Rademacher && !rademacher_draw_is_pm1(d, any)) return 1;
            const Timing t = time_median(
                [&] {
                  for (auto& p : params) {
                    for (int k = 0; k < terms; ++k) p.add_(d.draw(p), k == 0 ? eps : 1e-5 * (0.3 - 0.07 * k));
                  }
                },
                opt.repeats, device, any);
            const double gbps = bytes / t.wall / 1e9;
            candidates.emplace_back(d.name, gbps);
            if (gbps > aten_gbps) aten_gbps = gbps, aten_s = t, aten_impl = d.name;
          }
          for (bool stochastic : opt.stochastic) {
            if (stochastic && dtype == at::kFloat) continue;  // stochastic rounding exists for 16-bit types only
            plan.stochastic_rounding = stochastic;
            const auto [zotorch_s, f32_limit_s] = time_median_alternating(
                [&] { zotorch::detail::apply_sweep(table, plan); }, f32_limit_body, opt.repeats, device);
            const double f32_limit_gbps = f32_bytes / f32_limit_s.wall / 1e9;
            const double f32_limit_cpu_gbps = f32_bytes / f32_limit_s.cpu / 1e9;
            const bool f32_limit_wins = f32_limit_gbps > dtype_limit_gbps;
            Row row;
            row.device = opt.device;
            row.dtype = dtype_name(dtype);
            row.dist = zotorch::to_string(dist);
            row.case_name = case_name;
            row.rounding = stochastic ? "stochastic" : "nearest";
            row.numel = numel;
            row.tensors = static_cast<int64_t>(params.size());
            row.terms = terms;
            row.threads = at::get_num_threads();
            row.zotorch = bytes / zotorch_s.wall / 1e9;
            row.aten = bytes / aten_s.wall / 1e9;
            row.aten_impl = aten_impl;
            row.aten_candidates = candidates;
            row.dtype_limit = dtype_limit_gbps;
            row.limit = f32_limit_wins ? f32_limit_gbps : dtype_limit_gbps;
            row.limit_impl = f32_limit_wins ? "float32_add" : "dtype_add";
            row.copy = bytes / copy_s.wall / 1e9;
            if (device.is_cuda()) {
              row.flat_limit = bytes / flat_limit_s.wall / 1e9;
              row.flat_copy = bytes / flat_copy_s.wall / 1e9;
            }
            row.zotorch_cpu = bytes / zotorch_s.cpu / 1e9;
            row.aten_cpu = bytes / aten_s.cpu / 1e9;
            row.dtype_limit_cpu = dtype_limit_cpu_gbps;
            row.limit_cpu = std::max(f32_limit_cpu_gbps, dtype_limit_cpu_gbps);  // each limit the faster pass in its own time
            std::string candidates_json;
            for (const auto& c : row.aten_candidates) {
              char item[96];
              std::snprintf(item, sizeof item, "%s\"%s\":%.3f", candidates_json.empty() ? "" : ",", c.first.c_str(),
                            c.second);
              candidates_json += item;
            }
            std::printf(
                "{\"device\":\"%s\",\"kernels\":\"%s\",\"case\":\"%s\",\"dtype\":\"%s\",\"dist\":\"%s\","
                "\"rounding\":\"%s\",\"numel\":%lld,\"tensors\":%lld,\"terms\":%d,\"threads\":%d,\"repeats\":%d,"
                "\"zotorch_gbps\":%.3f,\"aten_gbps\":%.3f,\"limit_gbps\":%.3f,\"copy_gbps\":%.3f,"
                "\"speedup_vs_aten\":%.3f,\"fraction_of_limit\":%.3f,\"zotorch_cpu_gbps\":%.3f,\"aten_cpu_gbps\":%.3f,"
                "\"limit_cpu_gbps\":%.3f,\"speedup_vs_aten_cpu\":%.3f,\"fraction_of_limit_cpu\":%.3f,"
                "\"aten_impl\":\"%s\",\"aten_candidates_gbps\":{%s},\"limit_impl\":\"%s\",\"dtype_limit_gbps\":%.3f,"
                "\"fraction_of_dtype_limit\":%.3f,\"dtype_limit_cpu_gbps\":%.3f,\"fraction_of_dtype_limit_cpu\":%.3f",
                row.device.c_str(), kernels_name(device, opt.kernels), row.case_name.c_str(), row.dtype.c_str(),
                row.dist.c_str(), row.rounding.c_str(), static_cast<long long>(row.numel),
                static_cast<long long>(row.tensors), row.terms, row.threads, opt.repeats, row.zotorch, row.aten,
                row.limit, row.copy, row.zotorch / row.aten, row.zotorch / row.limit, row.zotorch_cpu, row.aten_cpu,
                row.limit_cpu, row.zotorch_cpu / row.aten_cpu, row.zotorch_cpu / row.limit_cpu, row.aten_impl.c_str(),
                candidates_json.c_str(), row.limit_impl.c_str(), row.dtype_limit, row.zotorch / row.dtype_limit,
                row.dtype_limit_cpu, row.zotorch_cpu / row.dtype_limit_cpu);
            if (device.is_cuda()) {
              std::printf(",\"flat_limit_gbps\":%.3f,\"flat_copy_gbps\":%.3f,\"fraction_of_flat_copy\":%.3f",
                          row.flat_limit, row.flat_copy, row.zotorch / row.flat_copy);
            }
            std::printf("}\n");
            std::fflush(stdout);
            rows.push_back(row);
          }
        }
      }
    }
  }
  std::fprintf(stderr, "\n%-5s %-7s %-9s %-11s %-10s %11s %4s %5s %9s %9s %-10s %9s %9s %9s %7s %7s %7s\n", "dev",
               "case", "dtype", "dist", "rounding", "numel", "tens", "terms", "zotorch", "aten", "aten draw", "limit",
               "dt limit", "copy", "x aten", "of lim", "of dtl");
  for (const Row& r : rows) {
    std::fprintf(stderr,
                 "%-5s %-7s %-9s %-11s %-10s %11lld %4lld %5d %9.2f %9.2f %-10s %9.2f %9.2f %9.2f %7.2f %7.2f %7.2f\n",
                 r.device.c_str(), r.case_name.c_str(), r.dtype.c_str(), r.dist.c_str(), r.rounding.c_str(),
                 static_cast<long long>(r.numel), static_cast<long long>(r.tensors), r.terms, r.zotorch, r.aten,
                 r.aten_impl.c_str(), r.limit, r.dtype_limit, r.copy, r.zotorch / r.aten, r.zotorch / r.limit,
                 r.zotorch / r.dtype_limit);
  }
  if (device.is_cuda()) {
    std::fprintf(stderr, "\n%-7s %-9s %-11s %-10s %5s %9s %9s %9s %9s\n", "case", "dtype", "dist", "rounding", "terms",
                 "zotorch", "flat add", "flat copy", "of copy");
    for (const Row& r : rows) {
      std::fprintf(stderr, "%-7s %-9s %-11s %-10s %5d %9.2f %9.2f %9.2f %9.2f\n", r.case_name.c_str(), r.dtype.c_str(),
                   r.dist.c_str(), r.rounding.c_str(), r.terms, r.zotorch, r.flat_limit, r.flat_copy,
                   r.zotorch / r.flat_copy);
    }
    std::fprintf(stderr,
                 "(CUDA: GB/s per second of GPU time between CUDA events, median of %d runs; flat add/copy = one "
                 "add_/copy_ launch over a single buffer of the same bytes.)\n",
                 opt.repeats);
  }
  std::fprintf(stderr,
               "(GB/s of parameter bytes read + written per second of wall time. aten = the fastest of the ATen draws "
               "in aten_candidates_gbps + p.add_(z, a), named under 'aten draw'; limit = the faster of p.add_(scalar) "
               "and a float32 add_(scalar) over the same bytes, the latter timed alternately with the sweep; dt limit = p.add_(scalar) in the parameter dtype; "
               "copy = q.copy_(p). The JSON lines also give GB/s per second of process CPU time, *_cpu_gbps, which "
               "a busy machine disturbs less when --threads 1.)\n");
  return 0;
}
