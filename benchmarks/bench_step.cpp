// Optimizer step cost on a Llama-architecture LM (examples/common/llama.h): wall time, time inside the
// closure, the optimizer's overhead (the difference), peak memory against inference, and state size,
// for MeZO, AdaMeZO, FZOO and backprop Adam. JSON lines on stdout (the fields peers/bench_step.py
// prints too, so benchmarks/compare.sh can pair them), a table on stderr. docs/performance.md.
#include "counting_allocator.h"

#include "../examples/common/llama.h"
#include "../examples/common/safetensors.h"

#include <zotorch/zotorch.h>

#include <ATen/Parallel.h>
#include <c10/core/CachingDeviceAllocator.h>
#include <torch/cuda.h>
#include <torch/optim/adam.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

namespace {

using zotorch::examples::LlamaConfig;
using zotorch::examples::LlamaForCausalLM;
using Clock = std::chrono::steady_clock;

struct Options {
  std::string device = "cpu";
  std::string dtype = "float32";
  // Defaults depend on the device (see parse): empty / 0 until then.
  std::string size;
  int64_t batch = 0;
  int64_t seq = 0;
  std::vector<std::string> methods = {"mezo", "adamezo", "fzoo", "adam"};
  int steps = 5;
  int warmup = 1;
  int threads = 0;  // 0: leave at::get_num_threads() as it is
  int64_t window = 10;
  int64_t num_perturbations = 8;
  std::string weights;  // safetensors file: loaded if it exists, else written after a seeded init
  uint64_t seed = 0;
  bool smoke = false;
};

[[noreturn]] void usage(const std::string& message) {
  std::fprintf(stderr,
               "bench_step: %s\n"
               "usage: bench_step [--device cpu|cuda] [--dtype float32|bfloat16|float16] [--size tiny|small|medium|smollm2-135m]\n"
               "                  [--batch B] [--seq T] [--methods mezo,adamezo,fzoo,adam] [--steps N] [--warmup N]\n"
               "                  [--threads N] [--window H] [--num-perturbations N] [--weights FILE.safetensors]\n"
               "                  [--seed S] [--smoke]\n"
               "Defaults: cpu: --size tiny --batch 2 --seq 64; cuda: --size smollm2-135m --batch 16 --seq 128. --steps 5 --warmup 1.\n"
               "Prints one JSON line per method on stdout and a table on stderr (docs/performance.md).\n",
               message.c_str());
  std::exit(2);
}

std::vector<std::string> split(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage("missing value after " + arg);
      return argv[++i];
    };
    auto integer = [&](int64_t min) {
      const std::string v = value();
      char* end = nullptr;
      const long long n = std::strtoll(v.c_str(), &end, 10);
      if (end == v.c_str() || *end != '\0' || n < min) usage(arg + " needs an integer >= " + std::to_string(min) + ", got '" + v + "'");
      return static_cast<int64_t>(n);
    };
    if (arg == "--device") {
      o.device = value();
      if (o.device != "cpu" && o.device != "cuda") usage("--device must be cpu or cuda, got '" + o.device + "'");
    } else if (arg == "--dtype") {
      o.dtype = value();
      if (o.dtype != "float32" && o.dtype != "bfloat16" && o.dtype != "float16") {
        usage("--dtype must be float32, bfloat16 or float16, got '" + o.dtype + "'");
      }
    } else if (arg == "--size") {
      o.size = value();
    } else if (arg == "--batch") {
      o.batch = integer(1);
    } else if (arg == "--seq") {
      o.seq = integer(2);
    } else if (arg == "--methods") {
      o.methods = split(value());
      for (const auto& m : o.methods) {
        if (m != "mezo" && m != "adamezo" && m != "fzoo" && m != "adam") {
          usage("--methods takes a comma-separated list of mezo, adamezo, fzoo, adam; got '" + m + "'");
        }
      }
    } else if (arg == "--steps") {
      o.steps = static_cast<int>(integer(1));
    } else if (arg == "--warmup") {
      o.warmup = static_cast<int>(integer(0));
    } else if (arg == "--threads") {
      o.threads = static_cast<int>(integer(1));
    } else if (arg == "--window") {
      o.window = integer(1);
    } else if (arg == "--num-perturbations") {
      o.num_perturbations = integer(2);
    } else if (arg == "--weights") {
      o.weights = value();
    } else if (arg == "--seed") {
      o.seed = static_cast<uint64_t>(integer(0));
    } else if (arg == "--smoke") {
      o.smoke = true;
    } else if (arg == "--help" || arg == "-h") {
      usage("help");
    } else {
      usage("unknown argument " + arg);
    }
  }
  // CPU: small enough for a 2-core machine. CUDA: a 125M-class model (SmolLM2-135M's shape) at 16 x 128 tokens.
  const bool cuda = o.device == "cuda";
  if (o.size.empty()) o.size = cuda ? "smollm2-135m" : "tiny";
  if (o.batch == 0) o.batch = cuda ? 16 : 2;
  if (o.seq == 0) o.seq = cuda ? 128 : 64;
  if (o.smoke) {  // keep ctest's start-up check to seconds: every code path, nothing measured
    o.size = "tiny", o.batch = 1, o.seq = 16, o.steps = 1, o.warmup = 0, o.window = 2, o.weights.clear();
  }
  return o;
}

/// Live and peak bytes of the benchmark's device: the counting CPU allocator, or the CUDA caching
/// allocator's statistics (allocated bytes, all pools).
class MemoryMeter {
 public:
  explicit MemoryMeter(const at::Device& device) : device_(device) {
    if (!device.is_cuda()) cpu_ = &zotorch::bench::CountingAllocator::install();
  }
  int64_t current() const {
    return cpu_ ? cpu_->current() : cuda_stats().allocated_bytes[kAggregate].current;
  }
  int64_t peak() const { return cpu_ ? cpu_->peak() : cuda_stats().allocated_bytes[kAggregate].peak; }
  void reset_peak() {
    if (cpu_) {
      cpu_->reset_peak();
    } else {
      c10::getDeviceAllocator(c10::kCUDA)->resetPeakStats(device_.index());
    }
  }
  const char* method() const { return cpu_ ? "counting CPU allocator" : "CUDA caching allocator"; }

 private:
  static constexpr size_t kAggregate = 0;  // StatType::AGGREGATE
  c10::CachingDeviceAllocator::DeviceStats cuda_stats() const {
    return c10::getDeviceAllocator(c10::kCUDA)->getDeviceStats(device_.index());
  }
  at::Device device_;
  zotorch::bench::CountingAllocator* cpu_ = nullptr;
};

void synchronize(const at::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize(device.index());
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

/// CPU seconds of all threads of this process. On a shared machine the wall time of a step depends on
/// what else runs; the CPU time it consumed does not (with --threads 1, where no worker spins).
double process_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

struct Measurement {
  std::string method;
  std::vector<double> step_s, closure_s, overhead_s, report_closure_s;
  std::vector<double> step_cpu_s, closure_cpu_s, overhead_cpu_s;
  int64_t forward_passes = 0, sweeps = 0, peak = 0, state_bytes = 0, retained = 0, skipped = 0;
};

/// Bytes the optimizer keeps between steps: its tensors (Adam's moments) plus its scalars. A zeroth-order
/// optimizer has counters and, for AdaMeZO, the window of (key, g) pairs; nothing per parameter.
int64_t optimizer_state_bytes(const torch::optim::Optimizer& opt) {
  int64_t bytes = 0;
  for (const auto& [key, state] : const_cast<torch::optim::Optimizer&>(opt).state()) {
    if (auto* adam = dynamic_cast<const torch::optim::AdamParamState*>(state.get())) {
      bytes += static_cast<int64_t>(sizeof(int64_t));  // step
      for (const at::Tensor* t : {&adam->exp_avg(), &adam->exp_avg_sq(), &adam->max_exp_avg_sq()}) {
        if (t->defined()) bytes += static_cast<int64_t>(t->nbytes());
      }
    } else if (auto* ada = dynamic_cast<const zotorch::AdaMeZOParamState*>(state.get())) {
      bytes += 4 * static_cast<int64_t>(sizeof(int64_t)) +
               static_cast<int64_t>(ada->window_keys().size() * sizeof(int64_t) + ada->window_gradients().size() * sizeof(double));
    } else if (dynamic_cast<const zotorch::MeZOParamState*>(state.get()) ||
               dynamic_cast<const zotorch::FZOOParamState*>(state.get())) {
      bytes += 3 * static_cast<int64_t>(sizeof(int64_t));
    } else {
      TORCH_CHECK(false, "bench_step: optimizer_state_bytes does not know this state type");
    }
  }
  return bytes;
}

std::string json_escape_free(const std::string& s) {
  for (char c : s) TORCH_CHECK(c != '"' && c != '\\', "bench_step: unexpected character in '", s, "'");
  return s;
}

}  // namespace

static int run(const Options& opt);

int main(int argc, char** argv) {
  const Options opt = parse(argc, argv);
  try {
    return run(opt);
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "bench_step: %s\n", e.what_without_backtrace());
    return 1;
  }
}

static int run(const Options& opt) {
  if (opt.threads > 0) at::set_num_threads(opt.threads);
  at::Device device(at::kCPU);
  if (opt.device == "cuda") {
    if (!torch::cuda::is_available()) {
      std::fprintf(stderr, "bench_step: --device cuda, but this LibTorch sees no CUDA device\n");
      return 1;
    }
    if (!zotorch::detail::cuda_kernels_available()) {
      std::fprintf(stderr,
                   "bench_step: --device cuda, but this program has no zotorch CUDA kernels; build it with the "
                   "CMake target zotorch::cuda linked (or zotorch_add_cuda_kernels(bench_step))\n");
      return 1;
    }
    device = at::Device(at::kCUDA, 0);
  }
  const at::ScalarType dtype = opt.dtype == "float32" ? at::kFloat : opt.dtype == "bfloat16" ? at::kBFloat16 : at::kHalf;
  // Installed before the model exists, so that every CPU tensor of the run is counted.
  MemoryMeter meter(device);

  LlamaConfig config;
  try {
    config = LlamaConfig::preset(opt.size);
  } catch (const c10::Error& e) {
    usage(e.what_without_backtrace());
  }
  if (opt.seq > config.max_position_embeddings) {
    usage("--seq exceeds the preset's max_position_embeddings " + std::to_string(config.max_position_embeddings));
  }
  LlamaForCausalLM model(config);
  if (!opt.weights.empty() && std::filesystem::exists(opt.weights)) {
    zotorch::examples::load_llama_weights(model, zotorch::examples::load_safetensors(opt.weights), opt.weights);
  } else {
    model->init_weights(opt.seed);
    if (!opt.weights.empty()) {
      zotorch::examples::save_safetensors(opt.weights, zotorch::examples::llama_weights(model), config.to_metadata());
    }
  }
  model->to(device, dtype);
  model->eval();
  int64_t params = 0;
  for (const auto& p : model->parameters()) params += p.numel();
  const at::Tensor ids = zotorch::examples::token_batch(opt.batch, opt.seq, config.vocab_size, device);

  // The closure times itself between two device synchronisations, so that on CUDA its host time is the
  // device time of the forward alone: the sweep queued just before it is not counted as closure time.
  double closure_seconds = 0, closure_cpu_seconds = 0;
  auto forward_loss = [&] { return zotorch::examples::lm_loss(model->forward(ids), ids); };
  auto timed_closure = [&] {
    synchronize(device);
    const auto start = Clock::now();
    const double cpu_start = process_cpu_seconds();
    at::Tensor loss = forward_loss();
    synchronize(device);
    closure_cpu_seconds += process_cpu_seconds() - cpu_start;
    closure_seconds += seconds_since(start);
    return loss;
  };

  // Inference: the memory a ZO step must stay within, and the forward time.
  int64_t inference_peak = 0;
  std::vector<double> forward_s;
  {
    torch::NoGradGuard no_grad;
    for (int r = 0; r < std::max(2, opt.warmup + 1); ++r) {
      synchronize(device);
      meter.reset_peak();
      const auto start = Clock::now();
      (void)forward_loss();
      synchronize(device);
      forward_s.push_back(seconds_since(start));
      inference_peak = std::max(inference_peak, meter.peak());
    }
  }
  // The memory-bound floor of one sweep: an in-place read-modify-write of every parameter with ATen.
  std::vector<double> pass_s;
  {
    torch::NoGradGuard no_grad;
    for (int r = 0; r < 5; ++r) {
      synchronize(device);
      const auto start = Clock::now();
      for (auto& p : model->parameters()) p.mul_(1.0);
      synchronize(device);
      pass_s.push_back(seconds_since(start));
    }
  }
  const double rmw_pass_ms = 1e3 * median(pass_s);

  std::vector<Measurement> results;
  for (const std::string& method : opt.methods) {
    Measurement m;
    m.method = method;
    const int64_t live_before = meter.current();
    std::unique_ptr<torch::optim::Optimizer> optimizer;
    std::function<const zotorch::StepReport*()> report = [] { return nullptr; };
    if (method == "mezo") {
      auto* o = new zotorch::MeZO(model->parameters(), zotorch::MeZOOptions(1e-6).eps(1e-3).seed(opt.seed));
      optimizer.reset(o);
      report = [o] { return &o->last_step(); };
    } else if (method == "adamezo") {
      auto* o = new zotorch::AdaMeZO(model->parameters(),
                                     zotorch::AdaMeZOOptions(1e-7).eps(1e-3).window(opt.window).seed(opt.seed));
      optimizer.reset(o);
      report = [o] { return &o->last_step(); };
    } else if (method == "fzoo") {
      auto* o = new zotorch::FZOO(model->parameters(),
                                  zotorch::FZOOOptions(1e-5).eps(1e-3).num_perturbations(opt.num_perturbations).seed(opt.seed));
      optimizer.reset(o);
      report = [o] { return &o->last_step(); };
    } else {
      optimizer = std::make_unique<torch::optim::Adam>(model->parameters(), torch::optim::AdamOptions(1e-5));
    }
    const bool backprop = method == "adam";
    torch::optim::Optimizer& o = *optimizer;
    // Adam's backward belongs to the closure time (the user's forward-backward), not to the overhead.
    auto closure = [&]() -> at::Tensor {
      if (!backprop) return timed_closure();
      synchronize(device);
      const auto start = Clock::now();
      const double cpu_start = process_cpu_seconds();
      at::Tensor loss = forward_loss();
      loss.backward();
      synchronize(device);
      closure_cpu_seconds += process_cpu_seconds() - cpu_start;
      closure_seconds += seconds_since(start);
      return loss.detach();
    };
    auto backprop_step = [&]() {
      o.step([&] {
        o.zero_grad();
        return closure();
      });
    };

    for (int w = 0; w < opt.warmup; ++w) backprop ? backprop_step() : (void)o.step(closure);
    if (method == "adamezo") {
      // AdaMeZO's first window + 1 steps are plain MeZO updates; fill the window with a closure that
      // costs nothing (varying scalar losses), so that the measured steps are adaptive ones.
      int calls = 0;
      auto cheap = [&calls] { return torch::tensor(1.0 + 1e-3 * ((calls++ * 7919) % 13), torch::kDouble); };
      for (int64_t k = opt.warmup; k < opt.window + 1; ++k) o.step(cheap);
    }
    for (int s = 0; s < opt.steps; ++s) {
      closure_seconds = 0, closure_cpu_seconds = 0;
      synchronize(device);
      meter.reset_peak();
      const auto start = Clock::now();
      const double cpu_start = process_cpu_seconds();
      backprop ? backprop_step() : (void)o.step(closure);
      synchronize(device);
      const double cpu_total = process_cpu_seconds() - cpu_start;
      const double total = seconds_since(start);
      m.step_cpu_s.push_back(cpu_total);
      m.closure_cpu_s.push_back(closure_cpu_seconds);
      m.overhead_cpu_s.push_back(cpu_total - closure_cpu_seconds);
      m.step_s.push_back(total);
      m.closure_s.push_back(closure_seconds);
      m.overhead_s.push_back(total - closure_seconds);
      m.peak = std::max(m.peak, meter.peak());
      if (const zotorch::StepReport* r = report()) {
        m.report_closure_s.push_back(r->closure_seconds);
        m.forward_passes = r->forward_passes;
        m.sweeps = r->sweeps;
        m.skipped += r->skipped ? 1 : 0;
      } else {
        m.forward_passes = 1;  // one forward + one backward (≈ 3 forward-pass equivalents)
      }
    }
    m.state_bytes = optimizer_state_bytes(o);
    m.retained = meter.current() - live_before;
    if (backprop) o.zero_grad();  // set_to_none: the next method starts from the same live bytes
    optimizer.reset();
    results.push_back(m);

    const double step_ms = 1e3 * median(m.step_s), closure_ms = 1e3 * median(m.closure_s);
    const double overhead_ms = 1e3 * median(m.overhead_s);
    std::printf(
        "{\"impl\":\"zotorch\",\"device\":\"%s\",\"dtype\":\"%s\",\"method\":\"%s\",\"size\":\"%s\",\"params\":%lld,"
        "\"batch\":%lld,\"seq\":%lld,\"threads\":%d,\"steps\":%d,\"step_ms\":%.4f,\"closure_ms\":%.4f,"
        "\"overhead_ms\":%.4f,\"overhead_fraction\":%.5f,\"forward_passes_per_step\":%lld,\"sweeps_per_step\":%lld,"
        "\"forward_ms\":%.4f,\"rmw_pass_ms\":%.4f,\"peak_bytes\":%lld,\"inference_peak_bytes\":%lld,"
        "\"optimizer_state_bytes\":%lld,\"retained_bytes\":%lld,\"report_closure_ms\":%.4f,\"skipped_steps\":%lld,"
        "\"step_cpu_ms\":%.4f,\"closure_cpu_ms\":%.4f,\"overhead_cpu_ms\":%.4f,\"memory\":\"%s\"}\n",
        json_escape_free(opt.device).c_str(), opt.dtype.c_str(), method.c_str(), json_escape_free(opt.size).c_str(),
        static_cast<long long>(params), static_cast<long long>(opt.batch), static_cast<long long>(opt.seq),
        at::get_num_threads(), opt.steps, step_ms, closure_ms, overhead_ms, overhead_ms / step_ms,
        static_cast<long long>(m.forward_passes), static_cast<long long>(m.sweeps), 1e3 * median(forward_s), rmw_pass_ms,
        static_cast<long long>(m.peak), static_cast<long long>(inference_peak), static_cast<long long>(m.state_bytes),
        static_cast<long long>(m.retained), m.report_closure_s.empty() ? 0.0 : 1e3 * median(m.report_closure_s),
        static_cast<long long>(m.skipped), 1e3 * median(m.step_cpu_s), 1e3 * median(m.closure_cpu_s),
        1e3 * median(m.overhead_cpu_s), meter.method());
    std::fflush(stdout);
  }

  std::fprintf(stderr, "\nbench_step: %s %s, %s Llama (%lld params), batch %lld x %lld tokens, %d threads, median of %d steps\n",
               opt.device.c_str(), opt.dtype.c_str(), opt.size.c_str(), static_cast<long long>(params),
               static_cast<long long>(opt.batch), static_cast<long long>(opt.seq), at::get_num_threads(), opt.steps);
  std::fprintf(stderr, "%-8s %10s %10s %10s %7s %10s %4s %4s %11s %11s %11s\n", "method", "step ms", "closure", "overhead",
               "ovh %", "ovh cpu ms", "FP", "swp", "peak MiB", "infer MiB", "state B");
  for (const Measurement& m : results) {
    const double step_ms = 1e3 * median(m.step_s), overhead_ms = 1e3 * median(m.overhead_s);
    std::fprintf(stderr, "%-8s %10.2f %10.2f %10.2f %7.2f %10.2f %4lld %4lld %11.2f %11.2f %11lld\n", m.method.c_str(),
                 step_ms, 1e3 * median(m.closure_s), overhead_ms, 100 * overhead_ms / step_ms, 1e3 * median(m.overhead_cpu_s),
                 static_cast<long long>(m.forward_passes), static_cast<long long>(m.sweeps), m.peak / 1048576.0,
                 inference_peak / 1048576.0, static_cast<long long>(m.state_bytes));
  }
  std::fprintf(stderr, "(overhead = step - closure, wall clock; ovh cpu = the same in process CPU time; one in-place pass over the parameters takes %.3f ms; memory: %s)\n",
               rmw_pass_ms, meter.method());
  return 0;
}
