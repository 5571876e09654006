// libFuzzer target for loading checkpoints (docs/reliability.md "Fuzzing"): every input is read as
// a raw torch::save archive and as a zotorch checkpoint file into fresh FZOO, MeZO and AdaMeZO
// optimizers and a model; a load either succeeds or throws, and a throw must leave all unchanged.
//
// Built with clang++ -fsanitize=fuzzer,address (tests/fuzz/CMakeLists.txt). With the environment
// variable ZOTORCH_FUZZ_SEEDS=DIR it writes its seed corpus (real checkpoints) to DIR and exits.
#include <zotorch/checkpoint.h>
#include <zotorch/zotorch.h>

#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/functional/loss.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
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
  std::printf("wrote %d seed checkpoints to %s\n", count, dir.c_str());
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
  return 0;
}
