// zotorch/trajectory.h: a replayed log reproduces the trained parameters bit for bit (every method,
// dtype, param groups, weight decay, schedules, frozen tensors, skipped and aborted steps, resumed
// runs), and a damaged, foreign or mismatched log changes nothing.
#include "optimizer_support.h"

#include <zotorch/trajectory.h>

#include <torch/optim/schedulers/step_lr.h>

#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>

#include <unistd.h>

using namespace zotorch_test;
namespace fs = std::filesystem;

namespace {

struct TrajectoryTempFile {
  std::string path;
  explicit TrajectoryTempFile(const std::string& name) {
    static int counter = 0;
    path = (fs::temp_directory_path() /
            ("zotorch_trajectory_" + std::to_string(::getpid()) + "_" + std::to_string(counter++) + "_" + name))
               .string();
    fs::remove(path);
  }
  ~TrajectoryTempFile() {
    std::error_code ignored;
    fs::remove(path, ignored);
  }
};

std::string read_log_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void write_log_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
}

template <class Optimizer>
using OptionsOf = decltype(Make<Optimizer>::options(0, 0, 0));

/// Off-grid values: adding and removing ε·z rounds, so only a replay of the same sweeps is exact.
std::vector<torch::Tensor> trajectory_params(torch::Dtype dtype, int64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(seed));
  std::vector<std::vector<int64_t>> shapes = {{33, 7}, {65}, {5, 3}, {129}};
  std::vector<torch::Tensor> out;
  for (const auto& shape : shapes) out.push_back(torch::randn(shape, gen, torch::kFloat).to(dtype).requires_grad_(true));
  return out;
}

/// Two groups: {0, 1} (weight decay) and {2, 3} (none); tensor 3 starts frozen.
template <class Optimizer>
std::vector<torch::optim::OptimizerParamGroup> trajectory_groups(const std::vector<torch::Tensor>& p,
                                                          const OptionsOf<Optimizer>& o) {
  using Options = OptionsOf<Optimizer>;
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(std::vector<torch::Tensor>{p[0], p[1]}, std::make_unique<Options>(Options(o).weight_decay(0.05)));
  groups.emplace_back(std::vector<torch::Tensor>{p[2], p[3]}, std::make_unique<Options>(Options(o).lr(o.lr() * 0.5)));
  return groups;
}

/// The loss: a quadratic in float64 of the parameters' values, returned in float32 or float64.
torch::Tensor trajectory_loss(const std::vector<torch::Tensor>& p, torch::Dtype loss_dtype) {
  auto total = torch::zeros({}, torch::kDouble);
  for (size_t i = 0; i < p.size(); ++i) total = total + (p[i].to(torch::kDouble) - 0.25).pow(2).sum();
  return total.to(loss_dtype);
}

/// What a run goes through: a schedule, a changed eps, an unfrozen tensor, a non-finite loss
/// (skipped), a closure that throws (aborted) and, with on_nonfinite(Throw), a throwing step.
struct TrajectoryEvents {
  int64_t steps = 14;
  int64_t nan_at_step = 4;        // the closure returns NaN at its second call
  int64_t throw_at_step = 7;      // the closure throws at its second call (aborted, then retried)
  int64_t unfreeze_at_step = 9;   // tensor 3 starts to train_logged
  int64_t eps_change_at_step = 11;
  bool nonfinite_throw = false;
};

/// Trains `opt` over `p` until it has taken events.steps steps, appending every step() call to `writer`.
template <class Optimizer>
void train_logged(Optimizer& opt, std::vector<torch::Tensor>& p, zotorch::TrajectoryWriter& writer, const TrajectoryEvents& events,
           torch::Dtype loss_dtype, int64_t from_step = 0) {
  using Options = OptionsOf<Optimizer>;
  torch::optim::StepLR schedule(opt, /*step_size=*/3, /*gamma=*/0.5);
  int64_t done = from_step;
  int64_t attempts = 0;
  while (done < events.steps) {
    int64_t calls = 0;
    const int64_t step = opt.steps();
    const bool poison = step == events.nan_at_step && attempts == 0;
    const bool fail = step == events.throw_at_step && attempts == 0;
    auto closure = [&]() -> torch::Tensor {
      ++calls;
      if (fail && calls == 2) throw std::runtime_error("closure failed");
      if (poison && calls == 2) return torch::full({}, std::numeric_limits<double>::quiet_NaN(), loss_dtype);
      return trajectory_loss(p, loss_dtype);
    };
    bool threw = false;
    try {
      opt.step(closure);
    } catch (const std::exception&) {
      threw = true;
    }
    writer.append(opt);
    if (threw) {
      ++attempts;
      continue;
    }
    attempts = 0;
    ++done;
    schedule.step();
    if (opt.steps() == events.unfreeze_at_step) p[3].requires_grad_(true);
    if (opt.steps() == events.eps_change_at_step) {
      for (auto& group : opt.param_groups()) {
        auto& o = static_cast<Options&>(group.options());
        o.eps(o.eps() * 2);
      }
    }
  }
}

template <class Optimizer>
OptionsOf<Optimizer> trajectory_options(bool nonfinite_throw) {
  auto o = Make<Optimizer>::options(std::is_same<Optimizer, zotorch::FZOO>::value ? 1e-2 : 1e-3, 1e-2, 7);
  if (nonfinite_throw) o.on_nonfinite(zotorch::NonFinite::Throw);
  return o;
}

template <class Optimizer>
void check_replay_exact(torch::Dtype dtype, torch::Dtype loss_dtype, bool nonfinite_throw,
                        std::function<void(OptionsOf<Optimizer>&)> tweak = {}) {
  TrajectoryTempFile log("run.ztraj");
  auto p = trajectory_params(dtype, 3);
  p[3].requires_grad_(false);
  const auto start = snapshot(p);
  auto options = trajectory_options<Optimizer>(nonfinite_throw);
  if (tweak) tweak(options);
  Optimizer opt(trajectory_groups<Optimizer>(p, options), options);
  {
    zotorch::TrajectoryWriter writer(log.path);
    TrajectoryEvents events;
    train_logged(opt, p, writer, events, loss_dtype);
  }
  const auto trained = snapshot(p);
  REQUIRE_FALSE(bitwise_equal(trained, start));
  CHECK(opt.skipped_steps() == (nonfinite_throw ? 0 : 1));

  zotorch::TrajectoryReader reader(log.path);
  CHECK(reader.method() == zotorch::detail::TrajectoryMethod<Optimizer>::kName);
  CHECK_FALSE(reader.truncated());
  int64_t aborted = 0, skipped = 0;
  for (const auto& r : reader.steps()) {
    aborted += r.aborted;
    skipped += r.skipped;
  }
  CHECK(aborted == (nonfinite_throw ? 2 : 1));
  CHECK(skipped == (nonfinite_throw ? 0 : 1));
  CHECK(reader.configs().size() == 3);  // start, unfreeze, eps change

  auto replayed = snapshot(start);
  zotorch::replay(log.path, replayed);
  CHECK(bitwise_equal(replayed, trained));

  // Two ranges give the same bits as one replay.
  auto halves = snapshot(start);
  zotorch::replay(log.path, halves, 0, 5);
  CHECK_FALSE(bitwise_equal(halves, trained));
  zotorch::replay(log.path, halves, 6, 1000);
  CHECK(bitwise_equal(halves, trained));
}

}  // namespace

TEMPLATE_TEST_CASE("replaying a trajectory reproduces float32 training bit for bit (two groups, weight decay, StepLR, "
                   "unfreezing, eps change, skipped and aborted steps)",
                   "[trajectory]", zotorch::FZOO, zotorch::MeZO, zotorch::AdaMeZO) {
  SECTION("float32 losses, NonFinite::Skip") { check_replay_exact<TestType>(torch::kFloat, torch::kFloat, false); }
  SECTION("float64 losses, NonFinite::Throw") { check_replay_exact<TestType>(torch::kFloat, torch::kDouble, true); }
}

TEMPLATE_TEST_CASE("replaying a trajectory reproduces bfloat16 and float16 training with stochastic rounding bit for bit",
                   "[trajectory]", zotorch::FZOO, zotorch::MeZO, zotorch::AdaMeZO) {
  SECTION("bfloat16") { check_replay_exact<TestType>(torch::kBFloat16, torch::kFloat, false); }
  SECTION("float16") { check_replay_exact<TestType>(torch::kHalf, torch::kFloat, false); }
}

TEST_CASE("replaying a trajectory reproduces MeZO n-SPSA (3 samples) and Rademacher MeZO bit for bit", "[trajectory]") {
  check_replay_exact<zotorch::MeZO>(torch::kFloat, torch::kFloat, false, [](zotorch::MeZOOptions& o) { o.num_samples(3); });
  check_replay_exact<zotorch::MeZO>(torch::kBFloat16, torch::kFloat, false,
                                    [](zotorch::MeZOOptions& o) { o.distribution(zotorch::Distribution::Rademacher); });
}

TEST_CASE("replaying reproduces AdaMeZO past its warm-up, with the window rebuilt from the log, and its β2 = 0 variant",
          "[trajectory]") {
  // window 2: 3 warm-up updates, the rest adaptive.
  check_replay_exact<zotorch::AdaMeZO>(torch::kFloat, torch::kFloat, false);
  check_replay_exact<zotorch::AdaMeZO>(torch::kFloat, torch::kFloat, false, [](zotorch::AdaMeZOOptions& o) { o.beta2(0); });
}

TEST_CASE("an FZOO trajectory costs under 64 bytes per step for 4 probes and float32 losses", "[trajectory]") {
  TrajectoryTempFile log("size.ztraj");
  auto p = trajectory_params(torch::kFloat, 1);
  zotorch::FZOO opt(p, zotorch::FZOOOptions(1e-2).eps(1e-2).num_perturbations(4));
  zotorch::TrajectoryWriter writer(log.path);
  opt.step([&] { return trajectory_loss(p, torch::kFloat); });
  writer.append(opt);
  const uint64_t after_first = fs::file_size(log.path);
  for (int i = 0; i < 50; ++i) {
    opt.step([&] { return trajectory_loss(p, torch::kFloat); });
    writer.append(opt);
  }
  const double per_step = static_cast<double>(fs::file_size(log.path) - after_first) / 50.0;
  INFO("bytes per step " << per_step);
  CHECK(per_step < 64);
  CHECK(writer.bytes() == fs::file_size(log.path));
}

TEST_CASE("a trajectory cut off mid-record replays every complete step and warns where it stopped", "[trajectory]") {
  TrajectoryTempFile log("cut.ztraj");
  auto p = trajectory_params(torch::kFloat, 5);
  const auto start = snapshot(p);
  zotorch::MeZO opt(p, zotorch::MeZOOptions(1e-3).eps(1e-2));
  std::vector<std::vector<torch::Tensor>> after;
  {
    zotorch::TrajectoryWriter writer(log.path);
    for (int i = 0; i < 6; ++i) {
      opt.step([&] { return trajectory_loss(p, torch::kFloat); });
      writer.append(opt);
      after.push_back(snapshot(p));
    }
  }
  const std::string bytes = read_log_bytes(log.path);
  write_log_bytes(log.path, bytes.substr(0, bytes.size() - 7));  // the last record loses its tail
  zotorch::TrajectoryReader reader(log.path);
  CHECK(reader.truncated());
  CHECK(reader.steps().size() == 5);
  CHECK(reader.file_bytes() - reader.valid_bytes() == bytes.size() - 7 - reader.valid_bytes());
  auto replayed = snapshot(start);
  zotorch::replay(log.path, replayed);
  CHECK(bitwise_equal(replayed, after[4]));
  CHECK_FALSE(bitwise_equal(replayed, after[5]));
}

TEST_CASE("a corrupted, foreign or mismatched trajectory is refused with the parameters untouched", "[trajectory]") {
  TrajectoryTempFile log("bad.ztraj");
  auto p = trajectory_params(torch::kFloat, 6);
  const auto start = snapshot(p);
  {
    zotorch::FZOO opt(p, zotorch::FZOOOptions(1e-2).eps(1e-2).num_perturbations(3));
    zotorch::TrajectoryWriter writer(log.path);
    for (int i = 0; i < 4; ++i) {
      opt.step([&] { return trajectory_loss(p, torch::kFloat); });
      writer.append(opt);
    }
  }
  const std::string good = read_log_bytes(log.path);
  auto target = snapshot(start);

  SECTION("one flipped byte in a middle record") {
    std::string bad = good;
    bad[bad.size() / 2] ^= 0x10;
    write_log_bytes(log.path, bad);
    CHECK_THROWS_WITH(zotorch::replay(log.path, target), Catch::Contains("corrupted") || Catch::Contains("malformed"));
    CHECK(bitwise_equal(target, start));
  }
  SECTION("a foreign file") {
    write_log_bytes(log.path, "PK\x03\x04 not a trajectory at all, but long enough");
    CHECK_THROWS_WITH(zotorch::replay(log.path, target), Catch::Contains("not a zotorch trajectory"));
    CHECK(bitwise_equal(target, start));
  }
  SECTION("another model's parameters") {
    auto other = trajectory_params(torch::kFloat, 6);
    other[1] = torch::zeros({64});
    CHECK_THROWS_WITH(zotorch::replay(log.path, other), Catch::Contains("tensor 1 is Float [64], the log recorded Float [65]"));
    std::vector<torch::Tensor> fewer(target.begin(), target.begin() + 3);
    CHECK_THROWS_WITH(zotorch::replay(log.path, fewer), Catch::Contains("recorded over 4 tensors, 3 were given"));
    CHECK(bitwise_equal(target, start));
  }
  SECTION("a writer for another model refuses the log before writing anything") {
    auto q = trajectory_params(torch::kFloat, 9);
    q.pop_back();
    zotorch::FZOO opt(q, zotorch::FZOOOptions(1e-2).eps(1e-2).num_perturbations(3));
    zotorch::TrajectoryWriter writer(log.path);
    opt.step([&] { return trajectory_loss(q, torch::kFloat); });
    CHECK_THROWS_WITH(writer.append(opt), Catch::Contains("another model's log"));
    CHECK(read_log_bytes(log.path) == good);
  }
  SECTION("a writer refuses a log of another method") {
    zotorch::MeZO opt(p, zotorch::MeZOOptions(1e-3));
    zotorch::TrajectoryWriter writer(log.path);
    opt.step([&] { return trajectory_loss(p, torch::kFloat); });
    CHECK_THROWS_WITH(writer.append(opt), Catch::Contains("records a FZOO run"));
    CHECK(read_log_bytes(log.path) == good);
  }
  SECTION("a writer refuses to append to a foreign file") {
    write_log_bytes(log.path, "some user data that must not be clobbered");
    CHECK_THROWS_WITH(zotorch::TrajectoryWriter(log.path), Catch::Contains("not a zotorch trajectory"));
    CHECK(read_log_bytes(log.path) == "some user data that must not be clobbered");
  }
}

TEST_CASE("a step() call that is not appended makes the next append throw", "[trajectory]") {
  TrajectoryTempFile log("gap.ztraj");
  auto p = trajectory_params(torch::kFloat, 2);
  zotorch::MeZO opt(p, zotorch::MeZOOptions(1e-3));
  zotorch::TrajectoryWriter writer(log.path);
  opt.step([&] { return trajectory_loss(p, torch::kFloat); });
  writer.append(opt);
  CHECK_THROWS_WITH(writer.append(opt), Catch::Contains("was appended already"));
  opt.step([&] { return trajectory_loss(p, torch::kFloat); });
  opt.step([&] { return trajectory_loss(p, torch::kFloat); });
  CHECK_THROWS_WITH(writer.append(opt), Catch::Contains("1 step() call(s) since the last append were not recorded"));
}

TEMPLATE_TEST_CASE("a run resumed from a checkpoint continues its log, and the joined log replays to its final "
                   "parameters bit for bit",
                   "[trajectory]", zotorch::FZOO, zotorch::AdaMeZO) {
  TrajectoryTempFile log("resume.ztraj");
  auto p = trajectory_params(torch::kBFloat16, 8);
  p[3].requires_grad_(false);
  const auto start = snapshot(p);
  const auto options = trajectory_options<TestType>(false);
  std::string checkpoint;
  std::vector<torch::Tensor> at_checkpoint;
  TrajectoryEvents events;
  events.throw_at_step = -1;
  {
    // The first run: checkpoint after step 5, then 3 more steps, then it dies.
    TestType opt(trajectory_groups<TestType>(p, options), options);
    zotorch::TrajectoryWriter writer(log.path);
    events.steps = 6;
    train_logged(opt, p, writer, events, torch::kFloat);
    torch::serialize::OutputArchive archive;
    opt.save(archive);
    checkpoint = zotorch::checkpoint_bytes(archive);
    at_checkpoint = snapshot(p);
    events.steps = 9;
    train_logged(opt, p, writer, events, torch::kFloat, 6);
  }
  const std::string before_cut = read_log_bytes(log.path);
  write_log_bytes(log.path, before_cut.substr(0, before_cut.size() - 3));  // killed mid-record
  // The resumed run: the checkpoint's parameters and optimizer, the same log.
  for (size_t i = 0; i < p.size(); ++i) p[i].detach().copy_(at_checkpoint[i]);
  p[3].requires_grad_(false);
  TestType opt(trajectory_groups<TestType>(p, options), options);
  torch::serialize::InputArchive archive;
  zotorch::load_checkpoint_bytes(archive, checkpoint);
  opt.load(archive);
  {
    zotorch::TrajectoryWriter writer(log.path);
    events.steps = 14;
    train_logged(opt, p, writer, events, torch::kFloat, 6);
  }
  zotorch::TrajectoryReader reader(log.path);
  CHECK_FALSE(reader.truncated());
  CHECK(reader.next_step() == 14);
  auto replayed = snapshot(start);
  zotorch::replay(log.path, replayed);
  CHECK(bitwise_equal(replayed, p));
}

TEST_CASE("a log whose writer was killed inside its first record is started afresh by the next writer", "[trajectory]") {
  TrajectoryTempFile log("first.ztraj");
  auto p = trajectory_params(torch::kFloat, 4);
  const auto start = snapshot(p);
  std::string full;
  {
    zotorch::MeZO opt(p, zotorch::MeZOOptions(1e-3).eps(1e-2));
    zotorch::TrajectoryWriter writer(log.path);
    opt.step([&] { return trajectory_loss(p, torch::kFloat); });
    writer.append(opt);
    full = read_log_bytes(log.path);
  }
  for (size_t cut : {size_t{3}, size_t{8}, size_t{20}, size_t{60}}) {
    INFO("cut after " << cut << " bytes");
    for (size_t i = 0; i < p.size(); ++i) p[i].detach().copy_(start[i]);
    write_log_bytes(log.path, full.substr(0, cut));
    zotorch::MeZO opt(p, zotorch::MeZOOptions(1e-3).eps(1e-2));
    zotorch::TrajectoryWriter writer(log.path);
    for (int i = 0; i < 2; ++i) {
      opt.step([&] { return trajectory_loss(p, torch::kFloat); });
      writer.append(opt);
    }
    zotorch::TrajectoryReader reader(log.path);
    CHECK(reader.steps().size() == 2);
    auto replayed = snapshot(start);
    zotorch::replay(log.path, replayed);
    CHECK(bitwise_equal(replayed, p));
  }
}

TEST_CASE("a trajectory whose last record reads as zeros from a byte inside it on reads as cut off there, and a "
          "writer continues it",
          "[trajectory]") {
  // What a host crash can leave (docs/reliability.md "Trajectories"): the file keeps its size, the
  // end of the last record's data is lost and reads as zero bytes.
  TrajectoryTempFile log("zeros.ztraj");
  auto p = trajectory_params(torch::kFloat, 12);
  const auto start = snapshot(p);
  zotorch::FZOO opt(p, zotorch::FZOOOptions(1e-2).eps(1e-2).num_perturbations(3));
  std::vector<std::vector<torch::Tensor>> after;
  {
    zotorch::TrajectoryWriter writer(log.path);
    for (int i = 0; i < 5; ++i) {
      opt.step([&] { return trajectory_loss(p, torch::kFloat); });
      writer.append(opt);
      after.push_back(snapshot(p));
    }
  }
  const std::string good = read_log_bytes(log.path);
  const uint64_t last = zotorch::TrajectoryReader(log.path).step_ends()[3];  // the end of step 3's record
  for (const uint64_t keep : {last + 1, last + 5, last + 9, static_cast<uint64_t>(good.size()) - 1}) {
    INFO("zeros from byte " << keep << " of " << good.size());
    std::string torn = good.substr(0, keep) + std::string(good.size() - keep, '\0');
    zotorch::TrajectoryReader reader = zotorch::TrajectoryReader::from_bytes(torn);
    CHECK(reader.truncated());
    CHECK(reader.valid_bytes() == last);
    CHECK(reader.steps().size() == 4);
    // A flipped byte of its type, payload or CRC-32 is still refused when the file does not end in
    // a zero byte. (A flipped length that points past the end reads as cut off.)
    std::string flipped = good;
    flipped[keep] = static_cast<char>(flipped[keep] ^ 0x01);
    if (keep >= last + 4 && flipped.back() != '\0') CHECK_THROWS_WITH(zotorch::TrajectoryReader::from_bytes(flipped), Catch::Contains("corrupted"));
  }
  // Written back as a file, the torn log replays its complete steps and a resumed run continues it.
  write_log_bytes(log.path, good.substr(0, last + 5) + std::string(good.size() - last - 5, '\0'));
  auto replayed = snapshot(start);
  zotorch::replay(log.path, replayed);
  CHECK(bitwise_equal(replayed, after[3]));
  {
    // The optimizer went on to step 5; the log ends at step 3: a writer cannot join it ...
    zotorch::TrajectoryWriter writer(log.path);
    opt.step([&] { return trajectory_loss(p, torch::kFloat); });
    CHECK_THROWS_WITH(writer.append(opt), Catch::Contains("cannot join"));
  }
  // ... but a run resumed at step 4 (from the parameters after step 3) can.
  auto q = snapshot(after[3]);
  for (auto& t : q) t.requires_grad_(true);
  zotorch::FZOO resumed(q, zotorch::FZOOOptions(1e-2).eps(1e-2).num_perturbations(3));
  {
    auto r = snapshot(start);
    for (auto& t : r) t.requires_grad_(true);
    zotorch::FZOO reference(r, zotorch::FZOOOptions(1e-2).eps(1e-2).num_perturbations(3));
    for (int i = 0; i < 4; ++i) reference.step([&] { return trajectory_loss(r, torch::kFloat); });
    torch::serialize::OutputArchive archive;
    reference.save(archive);
    torch::serialize::InputArchive in;
    zotorch::load_checkpoint_bytes(in, zotorch::checkpoint_bytes(archive));
    resumed.load(in);
  }
  {
    zotorch::TrajectoryWriter writer(log.path);
    resumed.step([&] { return trajectory_loss(q, torch::kFloat); });
    writer.append(resumed);
  }
  zotorch::TrajectoryReader joined(log.path);
  CHECK_FALSE(joined.truncated());
  CHECK(joined.next_step() == 5);
  auto again = snapshot(start);
  zotorch::replay(log.path, again);
  CHECK(bitwise_equal(again, q));
}
