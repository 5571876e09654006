// zotorch/checkpoint.h: the envelope's CRC and length catch every truncation and every corrupted
// byte before LibTorch parses anything, failed loads change nothing, and writes are atomic.
#include "optimizer_support.h"

#include <zotorch/checkpoint.h>

#include <caffe2/serialize/inline_container.h>
#include <catch2/catch.hpp>

#include <csignal>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include <sys/resource.h>
#include <unistd.h>

using namespace zotorch_test;
namespace fs = std::filesystem;

namespace {

/// A fresh directory under the system temp directory, removed with everything in it at scope exit.
struct TempDir {
  fs::path path;
  TempDir() {
    static int counter = 0;
    path = fs::temp_directory_path() /
           ("zotorch_test_checkpoint_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ignored;
    fs::remove_all(path, ignored);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& entry : fs::directory_iterator(path)) out.push_back(entry.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  }
};

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void spit(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

/// The optimizer's whole state as torch::save writes it: equal bytes, equal state.
std::string state_bytes(const torch::optim::Optimizer& opt) {
  std::ostringstream out;
  torch::serialize::OutputArchive archive;
  opt.save(archive);
  archive.save_to(out);
  return out.str();
}

template <class Optimizer>
std::string checkpoint_of(const Optimizer& opt) {
  torch::serialize::OutputArchive archive;
  opt.save(archive);
  return zotorch::checkpoint_bytes(archive);
}

}  // namespace

TEST_CASE("the checkpoint CRC-32 is the standard one, in any chunking", "[checkpoint]") {
  CHECK(zotorch::detail::crc32_update(0, "123456789", 9) == 0xCBF43926u);
  CHECK(zotorch::detail::crc32_update(0, "", 0) == 0u);
  // Slicing by 8 against the bytewise loop, over lengths and offsets that hit every tail.
  std::mt19937 rng(7);
  std::string data(1000, '\0');
  for (auto& c : data) c = static_cast<char>(rng());
  for (size_t length : {size_t{1}, size_t{7}, size_t{8}, size_t{9}, size_t{63}, size_t{1000}}) {
    uint32_t bytewise = 0;
    for (size_t i = 0; i < length; ++i) bytewise = zotorch::detail::crc32_update(bytewise, &data[i], 1);
    CHECK(zotorch::detail::crc32_update(0, data.data(), length) == bytewise);
    const size_t split = length / 3;
    CHECK(zotorch::detail::crc32_update(zotorch::detail::crc32_update(0, data.data(), split), data.data() + split,
                                        length - split) == bytewise);
  }
}

TEMPLATE_TEST_CASE("save_checkpoint and load_checkpoint resume an optimizer bit-identically", "[checkpoint]",
                   zotorch::FZOO, zotorch::MeZO, zotorch::AdaMeZO) {
  TempDir dir;
  const std::string path = dir.file("opt.ckpt");
  Quadratic straight(torch::kFloat, 31);
  TestType full(straight.params, Make<TestType>::options(1e-3, 1e-3, 4));
  for (int s = 0; s < 8; ++s) full.step(std::ref(straight));

  Quadratic resumed_problem(torch::kFloat, 31);
  {
    TestType first(resumed_problem.params, Make<TestType>::options(1e-3, 1e-3, 4));
    for (int s = 0; s < 4; ++s) first.step(std::ref(resumed_problem));
    zotorch::save_checkpoint(first, path);
  }
  TestType resumed(resumed_problem.params, Make<TestType>::options(0.5, 0.25, 999));
  zotorch::load_checkpoint(resumed, path);
  CHECK(resumed.steps() == 4);
  for (int s = 0; s < 4; ++s) resumed.step(std::ref(resumed_problem));
  CHECK(bitwise_equal(resumed_problem.params, straight.params));
  CHECK(resumed.forward_passes() == full.forward_passes());
  CHECK(dir.names() == std::vector<std::string>{"opt.ckpt"});  // no temp file left behind
  // The payload is exactly torch::save's: a user can strip the envelope and use torch::load.
  const std::string file = slurp(path);
  std::istringstream payload(file.substr(zotorch::detail::kCheckpointHeaderSize,
                                         file.size() - zotorch::detail::kCheckpointHeaderSize -
                                             zotorch::detail::kCheckpointTrailerSize));
  TestType plain(resumed_problem.params, Make<TestType>::options(1e-3, 1e-3, 4));
  torch::load(plain, payload);
  CHECK(plain.steps() == 4);
}

TEMPLATE_TEST_CASE("every truncation of a checkpoint file is refused and changes nothing", "[checkpoint][damage]",
                   zotorch::FZOO, zotorch::MeZO, zotorch::AdaMeZO) {
  TempDir dir;
  Quadratic problem(torch::kFloat, 32);
  TestType opt(problem.params, Make<TestType>::options(1e-3, 1e-3, 6));
  for (int s = 0; s < 3; ++s) opt.step(std::ref(problem));
  const std::string good = checkpoint_of(opt);
  for (int s = 0; s < 2; ++s) opt.step(std::ref(problem));  // the optimizer moved on since the save
  const std::string before = state_bytes(opt);
  const auto params = snapshot(problem.params);

  // Every length in memory; a spread of lengths through real files.
  int64_t refused = 0;
  for (size_t keep = 0; keep < good.size(); ++keep) {
    torch::serialize::InputArchive archive;
    try {
      zotorch::load_checkpoint_bytes(archive, good.substr(0, keep));
    } catch (const c10::Error& e) {
      const std::string message = e.what_without_backtrace();
      const bool clear = message.find("truncated") != std::string::npos ||
                         message.find("not a zotorch checkpoint") != std::string::npos;
      if (!clear) FAIL_CHECK("unclear error at length " << keep << ": " << message);
      ++refused;
    }
  }
  CHECK(refused == static_cast<int64_t>(good.size()));
  const std::string path = dir.file("cut.ckpt");
  for (size_t keep = 0; keep < good.size(); keep += 97) {
    spit(path, good.substr(0, keep));
    CHECK_THROWS_AS(zotorch::load_checkpoint(opt, path), c10::Error);
  }
  CHECK(state_bytes(opt) == before);
  CHECK(bitwise_equal(problem.params, params));
  CHECK_THROWS_WITH(zotorch::load_checkpoint(opt, dir.file("missing.ckpt")), Catch::Contains("cannot open"));
  // The intact file still loads: the refusals were about the damage.
  spit(path, good);
  zotorch::load_checkpoint(opt, path);
  CHECK(opt.steps() == 3);
}

TEMPLATE_TEST_CASE("every corrupted byte of a checkpoint file is refused and changes nothing", "[checkpoint][damage]",
                   zotorch::FZOO, zotorch::MeZO, zotorch::AdaMeZO) {
  TempDir dir;
  Quadratic problem(torch::kFloat, 33);
  TestType opt(problem.params, Make<TestType>::options(1e-3, 1e-3, 8));
  for (int s = 0; s < 3; ++s) opt.step(std::ref(problem));
  const std::string good = checkpoint_of(opt);
  opt.step(std::ref(problem));
  const std::string before = state_bytes(opt);
  const auto params = snapshot(problem.params);

  std::mt19937 rng(11);
  int64_t refused = 0;
  for (size_t at = 0; at < good.size(); ++at) {
    std::string bad = good;
    bad[at] = static_cast<char>(bad[at] ^ static_cast<char>(1 + rng() % 255));  // never a no-op
    torch::serialize::InputArchive archive;
    try {
      zotorch::load_checkpoint_bytes(archive, bad);
      opt.load(archive);
    } catch (const c10::Error&) {
      ++refused;
    }
  }
  CHECK(refused == static_cast<int64_t>(good.size()));
  // Through files, with the message a user sees for a flipped payload bit.
  std::string bad = good;
  bad[good.size() / 2] ^= 0x10;
  spit(dir.file("flipped.ckpt"), bad);
  CHECK_THROWS_WITH(zotorch::load_checkpoint(opt, dir.file("flipped.ckpt")),
                    Catch::Contains("is corrupted") && Catch::Contains("CRC-32") && Catch::Contains("earlier checkpoint"));
  CHECK(state_bytes(opt) == before);
  CHECK(bitwise_equal(problem.params, params));
}

TEMPLATE_TEST_CASE("a well-formed envelope around a bad archive is refused and changes nothing", "[checkpoint][damage]",
                   zotorch::FZOO, zotorch::MeZO, zotorch::AdaMeZO) {
  Quadratic problem(torch::kFloat, 34);
  TestType opt(problem.params, Make<TestType>::options(1e-3, 1e-3, 9));
  opt.step(std::ref(problem));
  const std::string before = state_bytes(opt);
  auto wrap = [](const std::string& payload) {
    std::string bytes;
    zotorch::WriteBytes sink = [&](const void* data, size_t size) {
      bytes.append(static_cast<const char*>(data), size);
      return true;
    };
    unsigned char header[zotorch::detail::kCheckpointHeaderSize] = {};
    std::memcpy(header, zotorch::detail::kCheckpointMagic, 8);
    zotorch::detail::put_le(header + 8, zotorch::detail::kCheckpointVersion, 4);
    sink(header, sizeof(header));
    sink(payload.data(), payload.size());
    unsigned char trailer[zotorch::detail::kCheckpointTrailerSize] = {};
    zotorch::detail::put_le(trailer, payload.size(), 8);
    zotorch::detail::put_le(trailer + 8, zotorch::detail::crc32_update(0, payload.data(), payload.size()), 4);
    std::memcpy(trailer + 12, zotorch::detail::kCheckpointEnd, 4);
    sink(trailer, sizeof(trailer));
    return bytes;
  };
  // Garbage, an empty payload, and the checkpoint of another optimizer kind.
  zotorch::FZOO fzoo({torch::zeros({3}, torch::requires_grad())}, zotorch::FZOOOptions(1e-3));
  zotorch::MeZO mezo({torch::zeros({3}, torch::requires_grad())}, zotorch::MeZOOptions(1e-3));
  const std::string foreign = std::is_same<TestType, zotorch::MeZO>::value ? state_bytes(fzoo) : state_bytes(mezo);
  for (const std::string& payload : {std::string("not a zip archive at all"), std::string(), foreign}) {
    auto load = [&] {
      torch::serialize::InputArchive archive;
      zotorch::load_checkpoint_bytes(archive, wrap(payload));
      opt.load(archive);
    };
    CHECK_THROWS_AS(load(), c10::Error);
    CHECK(state_bytes(opt) == before);
  }
  // A plain torch::save file is named as such.
  TempDir dir;
  spit(dir.file("plain.pt"), state_bytes(opt));
  CHECK_THROWS_WITH(zotorch::load_checkpoint(opt, dir.file("plain.pt")),
                    Catch::Contains("not a zotorch checkpoint") && Catch::Contains("torch::load"));
}

TEST_CASE("a model and its optimizer are saved together and loaded all or nothing", "[checkpoint]") {
  TempDir dir;
  const std::string path = dir.file("run.ckpt");
  torch::manual_seed(3);
  auto make_model = [] {
    return torch::nn::Sequential(torch::nn::Linear(6, 8), torch::nn::BatchNorm1d(8), torch::nn::Tanh(),
                                 torch::nn::Linear(8, 1));
  };
  auto x = torch::randn({32, 6});
  auto y = torch::randn({32, 1});
  auto model = make_model();
  zotorch::FZOO opt(model->parameters(), zotorch::FZOOOptions(1e-2).eps(1e-3).num_perturbations(4).seed(5));
  auto closure = [&] { return torch::mse_loss(model->forward(x), y); };
  for (int s = 0; s < 3; ++s) opt.step(closure);
  zotorch::save_checkpoint(*model, opt, path);
  std::vector<torch::Tensor> saved;
  for (const auto& t : model->parameters()) saved.push_back(t.detach().clone());
  for (const auto& t : model->buffers()) saved.push_back(t.detach().clone());
  for (int s = 0; s < 3; ++s) opt.step(closure);
  const std::string after_six = state_bytes(opt);

  SECTION("a model of another shape is refused, naming the parameter, and nothing changes") {
    auto other = torch::nn::Sequential(torch::nn::Linear(6, 8), torch::nn::BatchNorm1d(8), torch::nn::Tanh(),
                                       torch::nn::Linear(8, 2));
    zotorch::FZOO other_opt(other->parameters(), zotorch::FZOOOptions(1e-2).num_perturbations(4));
    const auto other_params = snapshot(other->parameters());
    const std::string other_state = state_bytes(other_opt);
    CHECK_THROWS_WITH(zotorch::load_checkpoint(*other, other_opt, path), Catch::Contains("3.weight"));
    CHECK(bitwise_equal(other->parameters(), other_params));
    CHECK(state_bytes(other_opt) == other_state);
  }
  SECTION("an optimizer-only checkpoint is refused with the overload to use") {
    zotorch::save_checkpoint(opt, dir.file("opt-only.ckpt"));
    const auto now = snapshot(model->parameters());
    CHECK_THROWS_WITH(zotorch::load_checkpoint(*model, opt, dir.file("opt-only.ckpt")),
                      Catch::Contains("load_checkpoint(optimizer, path)"));
    CHECK(bitwise_equal(model->parameters(), now));
    CHECK(state_bytes(opt) == after_six);
  }
  SECTION("loading rewinds parameters, buffers and optimizer in place, and the run replays exactly") {
    const auto tensors_before = model->parameters();
    zotorch::load_checkpoint(*model, opt, path);
    std::vector<torch::Tensor> loaded;
    for (const auto& t : model->parameters()) loaded.push_back(t.detach().clone());
    for (const auto& t : model->buffers()) loaded.push_back(t.detach().clone());
    CHECK(bitwise_equal(loaded, saved));
    CHECK(opt.steps() == 3);
    for (size_t i = 0; i < tensors_before.size(); ++i) CHECK(model->parameters()[i].is_same(tensors_before[i]));
    for (int s = 0; s < 3; ++s) opt.step(closure);
    CHECK(state_bytes(opt) == after_six);
  }
}

namespace {

/// `bytes` (a torch::save archive) with the record `name` (e.g. "data/0", a tensor's bytes) emptied:
/// what a writer that lost a storage's bytes leaves, and what fuzz_checkpoint found.
std::string with_empty_record(const std::string& bytes, const std::string& name) {
  std::istringstream in(bytes);
  caffe2::serialize::PyTorchStreamReader reader(&in);
  std::string out;
  {
    caffe2::serialize::PyTorchStreamWriter writer([&](const void* data, size_t size) {
      out.append(static_cast<const char*>(data), size);
      return size;
    });
    bool found = false;
    for (const std::string& record : reader.getAllRecords()) {
      // The writer adds these itself.
      if (record == "version" || record == ".data/version" || record == "byteorder" ||
          record == ".data/serialization_id") {
        continue;
      }
      auto [data, size] = reader.getRecord(record);
      found = found || record == name;
      writer.writeRecord(record, data.get(), record == name ? 0 : size);
    }
    REQUIRE(found);
    writer.writeEndOfFile();
  }
  return out;
}

}  // namespace

TEST_CASE("a stored tensor that addresses past its own data is refused and changes nothing", "[checkpoint][damage]") {
  // LibTorch's reader takes a storage's length from the pickle and its bytes from a separate zip
  // record, and does not compare the two; fuzz_checkpoint found an archive whose record for a
  // weight was empty, and copying that weight into the model read address 0 (docs/reliability.md
  // "Fuzzing checkpoint loading").
  torch::manual_seed(4);
  torch::nn::Linear model(3, 2);
  zotorch::FZOO opt(model->parameters(), zotorch::FZOOOptions(1e-2).num_perturbations(2).seed(9));
  const auto params = snapshot(model->parameters());
  const std::string state = state_bytes(opt);
  // The archive save_checkpoint(model, opt, path) puts inside its envelope; the weight's bytes are
  // the first record, data/0.
  torch::serialize::OutputArchive model_archive, optimizer_archive, archive;
  model->save(model_archive);
  opt.save(optimizer_archive);
  archive.write("model", model_archive);
  archive.write("optimizer", optimizer_archive);
  std::ostringstream out;
  archive.save_to(out);
  auto load = [&](const std::string& bytes) {
    torch::serialize::InputArchive in;
    in.load_from(bytes.data(), bytes.size());
    zotorch::detail::load_model_and_optimizer(*model, opt, in, "the test archive");
  };

  SECTION("the archive as written loads") {
    CHECK_NOTHROW(load(out.str()));
    CHECK(bitwise_equal(model->parameters(), params));
  }
  SECTION("with the weight's bytes emptied it is refused, naming the weight, and nothing changes") {
    CHECK_THROWS_WITH(load(with_empty_record(out.str(), "data/0")),
                      Catch::Contains("weight") && Catch::Contains("the file holds none for it"));
    CHECK(bitwise_equal(model->parameters(), params));
    CHECK(state_bytes(opt) == state);
  }
}

TEST_CASE("addresses_only_its_storage finds every tensor that reaches past its storage", "[checkpoint][damage]") {
  // LibTorch 2.15's reader refuses an offset or strides past the storage by itself; older ones and
  // other producers of tensors do not, so the check covers them too.
  using zotorch::detail::addresses_only_its_storage;
  CHECK(addresses_only_its_storage(at::arange(6, at::kFloat).reshape({2, 3})));
  CHECK(addresses_only_its_storage(at::arange(6, at::kFloat).reshape({2, 3}).t()));
  CHECK(addresses_only_its_storage(at::arange(6, at::kFloat).slice(0, 2, 6)));
  CHECK(addresses_only_its_storage(at::zeros({1}).expand({4, 5})));
  CHECK(addresses_only_its_storage(at::empty({0, 3})));
  at::Tensor no_bytes = at::empty({0});
  no_bytes.unsafeGetTensorImpl()->set_sizes_contiguous({2, 3});
  CHECK_FALSE(addresses_only_its_storage(no_bytes));
  at::Tensor offset_past = at::zeros({2, 3});
  offset_past.unsafeGetTensorImpl()->set_storage_offset(1);
  CHECK_FALSE(addresses_only_its_storage(offset_past));
  at::Tensor strides_past = at::zeros({2, 3});
  const std::vector<int64_t> sizes{2, 3}, strides{4, 1};
  strides_past.unsafeGetTensorImpl()->set_sizes_and_strides(sizes, strides);
  CHECK_FALSE(addresses_only_its_storage(strides_past));
  at::Tensor huge_stride = at::zeros({2, 3});
  const std::vector<int64_t> overflowing{int64_t{1} << 62, 1};
  huge_stride.unsafeGetTensorImpl()->set_sizes_and_strides(sizes, overflowing);
  CHECK_FALSE(addresses_only_its_storage(huge_stride));
}

TEST_CASE("write_file_atomically keeps the old file when the writer fails", "[checkpoint][atomic]") {
  TempDir dir;
  const std::string path = dir.file("latest.ckpt");
  zotorch::write_file_atomically(path, std::string("old content"));
  CHECK(slurp(path) == "old content");

  SECTION("the producer throws half-way") {
    CHECK_THROWS_WITH(zotorch::write_file_atomically(path,
                                                     [](const zotorch::WriteBytes& write) {
                                                       write("new cont", 8);
                                                       throw std::runtime_error("serialiser failed");
                                                     }),
                      Catch::Contains("serialiser failed"));
  }
  SECTION("the disk refuses the bytes (file size limit, like a full disk)") {
    // RLIMIT_FSIZE turns a write past the limit into EFBIG once SIGXFSZ is ignored.
    struct rlimit old_limit {};
    REQUIRE(::getrlimit(RLIMIT_FSIZE, &old_limit) == 0);
    auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
    struct rlimit small = old_limit;
    small.rlim_cur = 4096;
    REQUIRE(::setrlimit(RLIMIT_FSIZE, &small) == 0);
    std::string message;
    try {
      zotorch::write_file_atomically(path, std::string(10000, 'x'));
    } catch (const c10::Error& e) {
      message = e.what_without_backtrace();
    }
    ::setrlimit(RLIMIT_FSIZE, &old_limit);
    std::signal(SIGXFSZ, old_handler);
    CHECK_THAT(message, Catch::Contains("writing") && Catch::Contains("errno") && Catch::Contains("left as it was"));
  }
  SECTION("the directory does not exist") {
    CHECK_THROWS_WITH(zotorch::write_file_atomically(dir.file("no/such/dir/x.ckpt"), std::string("x")),
                      Catch::Contains("cannot create") && Catch::Contains("no/such/dir"));
  }
  CHECK(slurp(path) == "old content");
  CHECK(dir.names() == std::vector<std::string>{"latest.ckpt"});
}

TEST_CASE("a checkpoint whose disk write fails leaves the previous checkpoint loadable", "[checkpoint][atomic]") {
  TempDir dir;
  const std::string path = dir.file("latest.ckpt");
  Quadratic problem(torch::kFloat, 35);
  zotorch::MeZO opt(problem.params, zotorch::MeZOOptions(1e-3).eps(1e-3).seed(2));
  opt.step(std::ref(problem));
  zotorch::save_checkpoint(opt, path);
  const std::string first = slurp(path);
  // A model too large for the file size limit: LibTorch's writer sees a short write.
  torch::nn::Linear layer(256, 256);
  zotorch::MeZO big_opt(layer->parameters(), zotorch::MeZOOptions(1e-3));
  struct rlimit old_limit {};
  REQUIRE(::getrlimit(RLIMIT_FSIZE, &old_limit) == 0);
  auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
  struct rlimit small = old_limit;
  small.rlim_cur = 64 * 1024;
  REQUIRE(::setrlimit(RLIMIT_FSIZE, &small) == 0);
  std::string message;
  try {
    zotorch::save_checkpoint(*layer, big_opt, path);
  } catch (const c10::Error& e) {
    message = e.what_without_backtrace();
  }
  ::setrlimit(RLIMIT_FSIZE, &old_limit);
  std::signal(SIGXFSZ, old_handler);
  CHECK_THAT(message, Catch::Contains("File too large"));
  CHECK(slurp(path) == first);
  CHECK(dir.names() == std::vector<std::string>{"latest.ckpt"});
  zotorch::MeZO again(problem.params, zotorch::MeZOOptions(1e-3).eps(1e-3).seed(2));
  zotorch::load_checkpoint(again, path);
  CHECK(again.steps() == 1);
}
