// libFuzzer target for loading checkpoints and trajectories (docs/reliability.md "Fuzzing"): every
// input is read as a raw torch::save archive and as a zotorch checkpoint file into fresh FZOO, MeZO
// and AdaMeZO optimizers and a model; a load either succeeds or throws, and a throw must leave all
// unchanged. Every input is also parsed as a trajectory (zotorch::TrajectoryReader::from_bytes), as
// it is and with its records' CRC-32s recomputed, and, when it parses and its model is small,
// replayed onto parameters of its layout: both either succeed or throw c10::Error, and a replay
// refused before its first step leaves them unchanged.
//
// Built with clang++ -fsanitize=fuzzer,address (tests/fuzz/CMakeLists.txt). With the environment
// variable ZOTORCH_FUZZ_SEEDS=DIR it writes its seed corpus (real checkpoints and trajectories) to
// DIR and exits.
#include <zotorch/checkpoint.h>
#include <zotorch/trajectory.h>
#include <zotorch/zotorch.h>

#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/functional/loss.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <new>
#include <sstream>
#include <string>
#include <vector>

// LibTorch's unpickler reserves whatever length a corrupted string header claims (up to 4 GiB from
// one byte, tests/fuzz/findings/). A real process gets std::bad_alloc (or the memory) there, but
// ASan's operator new aborts on any failed allocation. These replacements go through malloc, which
// ASan still checks, so that ASAN_OPTIONS=max_allocation_size_mb=N:allocator_may_return_null=1
// gives LibTorch the bad_alloc a memory-limited process would give it, and fuzzing goes on.
void* operator new(std::size_t size) {
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t size) { return ::operator new(size); }
void* operator new(std::size_t size, const std::nothrow_t&) noexcept { return std::malloc(size == 0 ? 1 : size); }
void* operator new[](std::size_t size, const std::nothrow_t&) noexcept { return std::malloc(size == 0 ? 1 : size); }
void* operator new(std::size_t size, std::align_val_t align) {
  const auto a = static_cast<std::size_t>(align);
  if (void* p = std::aligned_alloc(a, (size + a - 1) / a * a)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t size, std::align_val_t align) { return ::operator new(size, align); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }

namespace {

/// The fixed parameter list every optimizer is built over: values and shapes never change, so a
/// real checkpoint of it loads and a mutated one exercises every check of load().
std::vector<at::Tensor> fixed_params() {
  // requires_grad: zotorch trains only such tensors by default.
  return {at::linspace(-1, 1, 12).reshape({3, 4}).requires_grad_(true), at::linspace(0.5, 1.5, 4).requires_grad_(true),
          at::full({2}, 0.25).requires_grad_(true)};
}

at::Tensor quadratic(const std::vector<at::Tensor>& params) {
  at::Tensor total = at::zeros({}, at::kDouble);
  for (const auto& p : params) total = total + (p.to(at::kDouble) - 0.3).pow(2).sum();
  return total;
}

/// Everything observable about an optimizer and its parameters, as bytes.
std::string fingerprint(const torch::optim::Optimizer& opt, const std::vector<at::Tensor>& params) {
  torch::serialize::OutputArchive archive;
  opt.save(archive);
  std::ostringstream out;
  archive.save_to(out);
  std::string bytes = out.str();
  for (const auto& p : params) {
    const at::Tensor c = p.contiguous();
    bytes.append(static_cast<const char*>(c.data_ptr()), static_cast<size_t>(c.numel() * c.element_size()));
  }
  return bytes;
}

[[noreturn]] void finding(const char* what) {
  std::fprintf(stderr, "FUZZ FINDING: %s\n", what);
  std::fflush(stderr);
  __builtin_trap();  // libFuzzer saves the input as crash-*
}

template <class Optimizer, class Options>
std::unique_ptr<Optimizer> trained(std::vector<at::Tensor>& params, const Options& options, int steps) {
  params = fixed_params();
  auto opt = std::make_unique<Optimizer>(params, options);
  for (int s = 0; s < steps; ++s) opt->step([&] { return quadratic(params); });
  return opt;
}

zotorch::FZOOOptions fzoo_options() { return zotorch::FZOOOptions(1e-2).eps(1e-3).num_perturbations(3).seed(1); }
zotorch::MeZOOptions mezo_options() { return zotorch::MeZOOptions(1e-2).eps(1e-3).seed(2); }
zotorch::AdaMeZOOptions adamezo_options() { return zotorch::AdaMeZOOptions(1e-3).eps(1e-3).window(2).seed(3); }

torch::nn::Sequential fixed_model() {
  torch::nn::Sequential model(torch::nn::Linear(3, 2), torch::nn::LayerNorm(torch::nn::LayerNormOptions({2})));
  torch::NoGradGuard no_grad;
  for (auto& p : model->parameters()) p.copy_(at::linspace(-0.5, 0.5, p.numel()).reshape(p.sizes()));
  return model;
}

/// Loads `archive` into a freshly trained optimizer of one kind; a refusal must change nothing.
template <class Optimizer, class Options>
void load_into(torch::serialize::InputArchive& archive, const Options& options) {
  std::vector<at::Tensor> params;
  auto opt = trained<Optimizer>(params, options, 2);
  const std::string before = fingerprint(*opt, params);
  try {
    opt->load(archive);
  } catch (const std::exception&) {
    if (fingerprint(*opt, params) != before) finding("a refused optimizer checkpoint changed the optimizer");
    return;
  }
  // Accepted (a real or harmlessly mutated checkpoint): load() checked what it took, so the
  // optimizer must take its next step. An exception there is a state load() should have refused.
  try {
    opt->step([&] { return quadratic(params); });
  } catch (const std::exception& e) {
    std::fprintf(stderr, "step after an accepted load threw: %s\n", e.what());
    finding("the step after an accepted optimizer checkpoint threw");
  }
}

/// Loads `archive` as a model + optimizer checkpoint; a refusal must change neither.
void load_model_into(torch::serialize::InputArchive& archive) {
  auto model = fixed_model();
  zotorch::FZOO opt(model->parameters(), fzoo_options());
  std::vector<at::Tensor> tensors = model->parameters();
  for (const auto& b : model->buffers()) tensors.push_back(b);
  const std::string before = fingerprint(opt, tensors);
  try {
    zotorch::detail::load_model_and_optimizer(*model, opt, archive, "the fuzz input");
  } catch (const std::exception&) {
    if (fingerprint(opt, tensors) != before) finding("a refused model checkpoint changed the model or optimizer");
  }
}

void load_everything(torch::serialize::InputArchive& archive) {
  load_into<zotorch::FZOO>(archive, fzoo_options());
  load_into<zotorch::MeZO>(archive, mezo_options());
  load_into<zotorch::AdaMeZO>(archive, adamezo_options());
  load_model_into(archive);
}

// A replay's cost is its parameters' elements times the directions each step sweeps; these caps
// keep one input to milliseconds (the parse itself is linear in the input and always runs).
constexpr int64_t kReplayMaxElements = 4096;
constexpr size_t kReplayMaxTensors = 64;
constexpr size_t kReplayMaxRecords = 64;
constexpr int64_t kReplayMaxWork = int64_t{1} << 19;  // elements x directions, summed over the records

/// Elements of the parameters a log was recorded over, or -1 above kReplayMaxElements (a fuzzed
/// layout can claim sizes whose product overflows int64).
int64_t layout_elements(const zotorch::TrajectoryReader& log) {
  int64_t total = 0;
  for (const auto& t : log.tensors()) {
    int64_t numel = 1;
    for (int64_t size : t.sizes) {
      if (size == 0) numel = 0;
      if (numel != 0 && size > kReplayMaxElements / numel) return -1;
      numel *= size;
    }
    total += numel;
    if (total > kReplayMaxElements) return -1;
  }
  return total;
}

/// Whether replaying `log` stays cheap: few tensors, elements and records, bounded work.
bool small_enough_to_replay(const zotorch::TrajectoryReader& log) {
  if (log.tensors().size() > kReplayMaxTensors || log.steps().size() > kReplayMaxRecords) return false;
  const int64_t elements = layout_elements(log);
  if (elements < 0) return false;
  int64_t work = 0;
  for (const auto& r : log.steps()) {
    int64_t directions = r.forward_passes + 2;
    for (const auto& o : log.configs()[r.config].options) {
      // AdaMeZO's update sweeps its window; FZOO's and MeZO's their probes (forward passes).
      if (o.name == "window" && o.is_integer && o.integer > 0 && o.integer <= zotorch::detail::kMaxTerms) {
        directions += o.integer;
      }
    }
    work += directions * std::max<int64_t>(elements, 1);
  }
  return work <= kReplayMaxWork;
}

/// Parameters of the log's layout with fixed, off-grid values (each rounds when perturbed).
std::vector<at::Tensor> params_for(const zotorch::TrajectoryReader& log) {
  std::vector<at::Tensor> params;
  for (size_t i = 0; i < log.tensors().size(); ++i) {
    const auto& t = log.tensors()[i];
    at::Tensor values = at::empty(t.sizes, at::TensorOptions().dtype(at::kFloat));
    values.view(-1).copy_(at::linspace(-0.7 + 0.01 * static_cast<double>(i), 0.9, values.numel()));
    params.push_back(values.to(t.dtype));
  }
  return params;
}

std::string bits_of(const std::vector<at::Tensor>& params) {
  std::string bytes;
  for (const auto& p : params) {
    const at::Tensor c = p.contiguous();
    bytes.append(static_cast<const char*>(c.data_ptr()), static_cast<size_t>(c.numel() * c.element_size()));
  }
  return bytes;
}

/// ZOTORCH_FUZZ_VERBOSE=1: say how far each trajectory got (to check that the seeds replay).
bool verbose() {
  static const bool on = std::getenv("ZOTORCH_FUZZ_VERBOSE") != nullptr;
  return on;
}

void say(const char* what, const char* detail = "") {
  if (verbose()) std::fprintf(stderr, "trajectory: %s%s\n", what, detail);
}

/// The bytes with every complete record's CRC-32 recomputed: a mutated payload then reaches the
/// record parsers and replay instead of stopping at the checksum.
std::string with_valid_crcs(std::string bytes) {
  auto* data = reinterpret_cast<unsigned char*>(bytes.data());
  size_t at = 8;  // the header: magic and version
  while (at + 9 <= bytes.size()) {
    const uint64_t length = zotorch::detail::get_le(data + at, 4);
    if (length > bytes.size() - at - 9) break;
    uint32_t crc = zotorch::detail::crc32_update(0, data + at + 4, 1);
    crc = zotorch::detail::crc32_update(crc, data + at + 5, static_cast<size_t>(length));
    zotorch::detail::put_le(data + at + 5 + length, crc, 4);
    at += 9 + static_cast<size_t>(length);
  }
  return bytes;
}

/// The bytes as a trajectory: parse, and replay what parses onto small parameters of its layout.
void replay_trajectory(const std::string& bytes) {
  std::unique_ptr<zotorch::TrajectoryReader> log;
  try {
    log = std::make_unique<zotorch::TrajectoryReader>(zotorch::TrajectoryReader::from_bytes(bytes, "the fuzz input"));
  } catch (const c10::Error& e) {
    if (bytes.compare(0, 6, "ZOTRAJ") == 0) say("refused: ", e.what_without_backtrace());
    return;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "TrajectoryReader::from_bytes threw %s\n", e.what());
    finding("parsing a trajectory threw something other than c10::Error");
  }
  if (!small_enough_to_replay(*log)) {
    say("parsed, too large to replay");
    return;
  }
  auto params = params_for(*log);
  const std::string before = bits_of(params);
  // Steps up to start().step - 1: none. This runs every check replay() makes before its first
  // sweep (layout, recorded options, building the optimizer and its start state) and nothing else.
  constexpr int64_t kFirst = std::numeric_limits<int64_t>::min();
  try {
    zotorch::replay(*log, params, kFirst, log->start().step - 1);
  } catch (const c10::Error& e) {
    say("replay refused: ", e.what_without_backtrace());
    if (bits_of(params) != before) finding("a trajectory refused before its first step changed the parameters");
    return;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "replay threw %s\n", e.what());
    finding("replaying a trajectory threw something other than c10::Error");
  }
  if (bits_of(params) != before) finding("replaying no step of a trajectory changed the parameters");
  try {
    zotorch::replay(*log, params, kFirst, std::numeric_limits<int64_t>::max());
    say("replayed");
  } catch (const c10::Error& e) {
    // A step replayed differently from its record (a mutated loss or flag): refused mid-way.
    say("replay stopped: ", e.what_without_backtrace());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "replay threw %s\n", e.what());
    finding("replaying a trajectory threw something other than c10::Error");
  }
}

/// A logged run for the seed corpus: steps of fixed_params() with a NaN loss at step 2 (skipped),
/// a closure that throws at step 3 (aborted, then retried), tensor 2 frozen until step 4 and lr
/// halved from step 5 on.
template <class Optimizer, class Options>
void write_trajectory(const std::string& path, const Options& options, at::ScalarType dtype, int steps) {
  std::vector<at::Tensor> params = fixed_params();
  for (auto& p : params) p = p.detach().to(dtype).requires_grad_(true);
  params[2].requires_grad_(false);
  Optimizer opt(params, options);
  std::remove(path.c_str());  // a writer would continue the log of an earlier seed run
  zotorch::TrajectoryWriter writer(path);
  bool failed_once = false;
  while (opt.steps() < steps) {
    const int64_t step = opt.steps();
    int calls = 0;
    auto closure = [&]() -> at::Tensor {
      ++calls;
      if (step == 2 && calls == 2) return at::full({}, std::numeric_limits<double>::quiet_NaN(), at::kDouble);
      if (step == 3 && calls == 2 && !failed_once) {
        failed_once = true;
        throw std::runtime_error("closure failed");
      }
      return quadratic(params).to(at::kFloat);
    };
    try {
      opt.step(closure);
    } catch (const std::exception&) {
    }
    writer.append(opt);
    if (opt.steps() == 4) params[2].requires_grad_(true);
    if (opt.steps() == 5) {
      for (auto& group : opt.param_groups()) {
        auto& o = static_cast<Options&>(group.options());
        o.lr(o.lr() * 0.5);
      }
    }
  }
}

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) {
    std::fprintf(stderr, "cannot write %s\n", path.c_str());
    std::exit(1);
  }
}

/// The seed corpus: each optimizer kind after 0, 1 and 5 steps, and a model + optimizer, both as a
/// raw torch::save archive and as a zotorch checkpoint file.
void write_seeds(const std::string& dir) {
  int count = 0;
  auto emit = [&](const std::string& name, torch::serialize::OutputArchive& archive) {
    std::ostringstream raw;
    archive.save_to(raw);
    write_file(dir + "/" + name + ".pt", raw.str());
    write_file(dir + "/" + name + ".ckpt", zotorch::checkpoint_bytes(archive));
    count += 2;
  };
  for (int steps : {0, 1, 5}) {
    std::vector<at::Tensor> params;
    const std::string suffix = "_" + std::to_string(steps) + "steps";
    {
      torch::serialize::OutputArchive a;
      trained<zotorch::FZOO>(params, fzoo_options(), steps)->save(a);
      emit("fzoo" + suffix, a);
    }
    {
      torch::serialize::OutputArchive a;
      trained<zotorch::MeZO>(params, mezo_options(), steps)->save(a);
      emit("mezo" + suffix, a);
    }
    {
      torch::serialize::OutputArchive a;
      trained<zotorch::AdaMeZO>(params, adamezo_options(), steps)->save(a);
      emit("adamezo" + suffix, a);
    }
  }
  auto model = fixed_model();
  zotorch::FZOO opt(model->parameters(), fzoo_options());
  torch::serialize::OutputArchive archive, model_archive, optimizer_archive;
  model->save(model_archive);
  opt.save(optimizer_archive);
  archive.write("model", model_archive);
  archive.write("optimizer", optimizer_archive);
  emit("model_fzoo", archive);
  // Trajectories: every method in float32, and bfloat16 logs (stochastic rounding) of FZOO and of
  // Rademacher MeZO.
  write_trajectory<zotorch::FZOO>(dir + "/fzoo.ztraj", fzoo_options(), at::kFloat, 7);
  write_trajectory<zotorch::MeZO>(dir + "/mezo.ztraj", mezo_options(), at::kFloat, 7);
  write_trajectory<zotorch::AdaMeZO>(dir + "/adamezo.ztraj", adamezo_options(), at::kFloat, 7);
  write_trajectory<zotorch::FZOO>(dir + "/fzoo_bf16.ztraj", fzoo_options(), at::kBFloat16, 6);
  write_trajectory<zotorch::MeZO>(dir + "/mezo_rademacher_bf16.ztraj",
                                  mezo_options().distribution(zotorch::Distribution::Rademacher), at::kBFloat16, 6);
  std::printf("wrote %d seed checkpoints and 5 seed trajectories to %s\n", count, dir.c_str());
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  // One intra-op thread: inputs are tiny, and a thread pool only adds noise to the exec rate.
  at::set_num_threads(1);
  if (const char* dir = std::getenv("ZOTORCH_FUZZ_SEEDS")) {
    write_seeds(dir);
    std::exit(0);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  // 1. The bytes as a plain torch::save archive: LibTorch's zip and pickle readers, then each
  //    optimizer's load() on whatever they accept.
  {
    torch::serialize::InputArchive archive;
    bool parsed = true;
    try {
      archive.load_from(bytes.data(), bytes.size());
    } catch (const std::exception&) {
      parsed = false;
    }
    if (parsed) load_everything(archive);
  }
  // 2. The bytes as a zotorch checkpoint file: the envelope must refuse every damaged input
  //    before LibTorch sees it; what passes (the seeds, mostly) goes through the same loads.
  {
    torch::serialize::InputArchive archive;
    bool parsed = true;
    try {
      zotorch::load_checkpoint_bytes(archive, bytes, "the fuzz input");
    } catch (const std::exception&) {
      parsed = false;
    }
    if (parsed) load_everything(archive);
  }
  // 3. The bytes as a trajectory, as they are and with their checksums made to match.
  replay_trajectory(bytes);
  if (bytes.size() > 8 && bytes.compare(0, 6, "ZOTRAJ") == 0) {
    const std::string fixed = with_valid_crcs(bytes);
    if (fixed != bytes) replay_trajectory(fixed);
  }
  return 0;
}
