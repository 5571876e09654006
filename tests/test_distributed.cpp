// Data parallelism (include/zotorch/distributed.h, docs/distributed.md): the optimizers' loss
// reducer and DataParallel against a scripted in-process group, then real ProcessGroupGloo ranks
// launched as processes on 127.0.0.1 (tests/distributed/worker.cpp): identity, faults, resume.
#include "optimizer_support.h"

#include <zotorch/distributed.h>
#include <zotorch/zotorch.h>

#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/torch.h>

#include <catch2/catch.hpp>

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace {

namespace fs = std::filesystem;

// ---- a scripted group: this process is one rank, the others are played by callbacks ------------

class DoneWork : public c10d::Work {
 public:
  explicit DoneWork(std::string error = "") : error_(std::move(error)) {}
  bool wait(std::chrono::milliseconds) override {
    TORCH_CHECK(error_.empty(), error_);
    return true;
  }
  bool isCompleted() override { return true; }

 private:
  std::string error_;
};

/// A c10d::Backend whose other ranks live in the test. By default they are perfect replicas: an
/// all-reduce of losses adds `peer_losses` (zeros unless set), a replica check sees every rank
/// report this rank's row (unless `edit_rows` changes them), a broadcast to this rank delivers
/// `root_values`.
class ScriptedGroup : public c10d::Backend {
 public:
  ScriptedGroup(int rank, int size) : Backend(rank, size) {}
  const std::string getBackendName() const override { return "scripted"; }

  c10::intrusive_ptr<c10d::Work> allreduce(std::vector<at::Tensor>& tensors, const c10d::AllreduceOptions& o) override {
    ++allreduces;
    if (!fail_with.empty()) return c10::make_intrusive<DoneWork>(fail_with);
    TORCH_CHECK(tensors.size() == 1 && o.reduceOp == c10d::ReduceOp::SUM, "ScriptedGroup: unexpected all-reduce");
    at::Tensor& t = tensors.front();
    if (t.scalar_type() == at::kLong) {  // a replica check: rows of [size, 2]
      for (int r = 0; r < getSize(); ++r) {
        if (r != getRank()) t[r].copy_(t[getRank()]);
      }
      if (edit_rows) edit_rows(t);
    } else {
      payloads.push_back(t.clone());
      if (peer_losses) t.add_(peer_losses(t));
    }
    return c10::make_intrusive<DoneWork>();
  }

  c10::intrusive_ptr<c10d::Work> broadcast(std::vector<at::Tensor>& tensors, const c10d::BroadcastOptions& o) override {
    ++broadcasts;
    if (o.rootRank != getRank() && root_values.defined()) tensors.front().copy_(root_values.narrow(0, 0, tensors.front().numel()));
    return c10::make_intrusive<DoneWork>();
  }

  std::function<at::Tensor(const at::Tensor&)> peer_losses;
  std::function<void(at::Tensor&)> edit_rows;
  at::Tensor root_values;
  std::string fail_with;
  std::vector<at::Tensor> payloads;
  int allreduces = 0, broadcasts = 0;
};

/// Rows of a small least-squares problem; shard 0 and shard 1 are two halves of one batch.
struct Shards {
  at::Tensor x = at::randn({16, 5}, at::make_generator<at::CPUGeneratorImpl>(3));
  at::Tensor y = x.matmul(at::linspace(-1, 1, 5)) + 0.5;
  at::Tensor loss(const std::vector<at::Tensor>& p, int shard) const {
    const at::Tensor xs = x.narrow(0, 8 * shard, 8), ys = y.narrow(0, 8 * shard, 8);
    return (xs.matmul(p[0]) + p[1] - ys).square().mean();
  }
};

std::vector<at::Tensor> fresh_params() {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(5);
  return {at::randn({5}, gen).requires_grad_(true), at::zeros({1}).requires_grad_(true)};
}

std::vector<at::Tensor> copies(const std::vector<at::Tensor>& params) {
  std::vector<at::Tensor> out;
  for (const auto& p : params) out.push_back(p.detach().clone());
  return out;
}

bool same_bits(const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].sizes() != b[i].sizes() || a[i].scalar_type() != b[i].scalar_type()) return false;
    if (std::memcmp(a[i].contiguous().data_ptr(), b[i].contiguous().data_ptr(), a[i].numel() * a[i].element_size()) != 0) {
      return false;
    }
  }
  return true;
}

}  // namespace

// ---- the loss reducer hook of ZerothOrderOptimizer ---------------------------------------------

TEST_CASE("The loss reducer sees a step's losses once, in order, and the update follows its values", "[distributed]") {
  const Shards data;
  SECTION("MeZO: doubling the losses is the same as doubling lr, bit for bit") {
    auto doubled = fresh_params(), reference = fresh_params();
    zotorch::MeZO opt(doubled, zotorch::MeZOOptions(1e-3).num_samples(2).seed(4));
    zotorch::MeZO ref(reference, zotorch::MeZOOptions(2e-3).num_samples(2).seed(4));
    std::vector<std::vector<double>> seen;
    opt.set_loss_reducer([&](at::Tensor& losses) {
      seen.emplace_back(losses.data_ptr<float>(), losses.data_ptr<float>() + losses.numel());
      losses.mul_(2);
    });
    for (int step = 0; step < 5; ++step) {
      opt.step([&] { return data.loss(doubled, 0); });
      ref.step([&] { return data.loss(reference, 0); });
      REQUIRE(seen.size() == static_cast<size_t>(step + 1));
      REQUIRE(seen.back().size() == 4);  // 2n losses, L+_1, L-_1, L+_2, L-_2
      for (size_t i = 0; i < 4; ++i) CHECK(opt.last_step().losses[i] == 2 * seen.back()[i]);
    }
    CHECK(same_bits(doubled, reference));
  }
  SECTION("FZOO: the reducer gets l_0, then the N other losses, and step() returns the reduced l_0") {
    auto params = fresh_params();
    zotorch::FZOO opt(params, zotorch::FZOOOptions(1e-2).num_perturbations(6));
    std::vector<int64_t> counts;
    opt.set_loss_reducer([&](at::Tensor& losses) {
      counts.push_back(losses.numel());
      losses = losses + 1;  // assigning a new tensor of the same shape is allowed too
    });
    const double unperturbed = data.loss(params, 0).item<double>();
    const double loss = opt.step([&] { return data.loss(params, 0); }).item<double>();
    CHECK(counts == std::vector<int64_t>{1, 6});
    CHECK(loss == Approx(opt.last_step().losses[0]));
    CHECK(opt.last_step().losses[0] == Approx(unperturbed + 1).epsilon(1e-6));
  }
  SECTION("a non-finite reduced loss follows the optimizer's policy: the step is skipped, θ restored") {
    auto params = fresh_params();
    const auto before = copies(params);
    zotorch::FZOO opt(params, zotorch::FZOOOptions(1e-2));
    opt.set_loss_reducer([](at::Tensor& losses) {
      if (losses.numel() > 3) losses[3] = std::nan("");  // in the second batch: l_1..l_N
    });
    opt.step([&] { return data.loss(params, 0); });
    CHECK(opt.skipped_steps() == 1);
    CHECK(zotorch_test::max_ulps(params, before) <= 2);
  }
  SECTION("a reducer that changes the shape is an error that says what it must leave") {
    auto params = fresh_params();
    const auto before = copies(params);
    zotorch::MeZO opt(params, zotorch::MeZOOptions(1e-3));
    opt.set_loss_reducer([](at::Tensor& losses) { losses = losses.sum(); });
    CHECK_THROWS_WITH(opt.step([&] { return data.loss(params, 0); }),
                      Catch::Contains("zotorch::MeZO: the loss reducer must leave a 1-D floating-point tensor of 2 losses"));
    CHECK(opt.steps() == 0);
    // Restored by the inverse sweep: exact up to the rounding of the sweeps (zo_optimizer.h).
    CHECK(zotorch_test::max_ulps(params, before) <= 2);
    opt.set_loss_reducer(nullptr);
    CHECK_NOTHROW(opt.step([&] { return data.loss(params, 0); }));
  }
}

// ---- DataParallel against a scripted group -----------------------------------------------------

TEST_CASE("DataParallel averages each step's losses over the group: equal to one process on both shards", "[distributed]") {
  const Shards data;
  auto mine = fresh_params(), whole = fresh_params();
  zotorch::FZOO opt(mine, zotorch::FZOOOptions(1e-2).num_perturbations(4).seed(9));
  zotorch::FZOO single(whole, zotorch::FZOOOptions(1e-2).num_perturbations(4).seed(9));
  auto group = c10::make_intrusive<ScriptedGroup>(0, 2);
  // Rank 1 is played here: at every forward pass it evaluates shard 1 at the same (identically
  // perturbed) parameters; its losses join rank 0's in the all-reduce.
  std::vector<at::Tensor> rank1_losses;
  group->peer_losses = [&](const at::Tensor& t) {
    at::Tensor peer = at::stack(rank1_losses).to(t.scalar_type());
    rank1_losses.clear();
    return peer;
  };
  zotorch::DataParallel parallel(opt, group);
  for (int step = 0; step < 20; ++step) {
    const at::Tensor reported = parallel.step([&] {
      rank1_losses.push_back(data.loss(mine, 1));
      return data.loss(mine, 0);
    });
    // One process, whole batch: the mean of the two equal shards' means, in float32 as on the wire.
    single.step([&] { return (data.loss(whole, 0) + data.loss(whole, 1)) / 2; });
    CHECK(reported.item<double>() == single.last_step().losses[0]);
  }
  CHECK(same_bits(mine, whole));
  const auto& stats = parallel.communication();
  CHECK(stats.loss_reductions == 40);  // two per step: l_0, then l_1..l_N
  CHECK(stats.loss_bytes == 4 * 4);     // the last one: N float32 losses
  CHECK(stats.loss_bytes_total == 20 * 4 * 5);  // 4·(N + 1) bytes per step
  CHECK(stats.checks == 1);  // the start-up check
  CHECK(group->allreduces == 41);
  REQUIRE(group->payloads.size() == 40);
  for (size_t i = 0; i < group->payloads.size(); ++i) {
    CHECK(group->payloads[i].scalar_type() == at::kFloat);
    CHECK(group->payloads[i].numel() == (i % 2 == 0 ? 1 : 4));
  }
}

TEST_CASE("DataParallel broadcasts the root's parameters once at start-up, and removes its reducer when destroyed", "[distributed]") {
  auto params = std::vector<at::Tensor>{at::zeros({2, 3}).requires_grad_(true), at::zeros({4}).requires_grad_(true),
                                        at::zeros({2}, at::kDouble).requires_grad_(true)};
  zotorch::MeZO opt(params, zotorch::MeZOOptions(1e-3));
  auto group = c10::make_intrusive<ScriptedGroup>(1, 3);  // this process is rank 1; rank 0 is the root
  group->root_values = at::arange(100, at::kFloat);
  {
    zotorch::DataParallel parallel(opt, group);
    CHECK(group->broadcasts == 2);  // one per dtype
    CHECK(parallel.rank() == 1);
    CHECK(parallel.world_size() == 3);
    CHECK(parallel.communication().broadcast_bytes == 10 * 4 + 2 * 8);
    CHECK(opt.loss_reducer());
  }
  CHECK_FALSE(opt.loss_reducer());
  CHECK(at::equal(params[0], at::arange(6, at::kFloat).view({2, 3})));
  CHECK(at::equal(params[1], at::arange(6, 10, at::kFloat)));
  CHECK(at::equal(params[2], at::arange(2, at::kDouble)));
}

TEST_CASE("DataParallel's start-up check names the ranks whose optimizer differs", "[distributed]") {
  auto params = fresh_params();
  zotorch::FZOO opt(params, zotorch::FZOOOptions(1e-2));
  auto group = c10::make_intrusive<ScriptedGroup>(0, 4);
  group->edit_rows = [](at::Tensor& rows) { rows[2][0] += 1; };  // rank 2 built another optimizer (seed, lr, ...)
  CHECK_THROWS_WITH(zotorch::DataParallel(opt, group),
                    Catch::Contains("rank(s) 2 hold a different optimizer configuration or state than rank 0"));
  CHECK_FALSE(opt.loss_reducer());
  SECTION("with broadcast_parameters(false) it compares the parameters' bits too") {
    group->edit_rows = [](at::Tensor& rows) {
      rows[1][1] += 1;
      rows[3][1] += 1;
    };
    CHECK_THROWS_WITH(zotorch::DataParallel(opt, group, zotorch::DataParallelOptions().broadcast_parameters(false)),
                      Catch::Contains("the parameters of rank(s) 1, 3 differ from rank 0's"));
  }
}

TEST_CASE("DataParallel's periodic check fails loudly on every rank once the replicas diverge", "[distributed]") {
  const Shards data;
  auto params = fresh_params();
  zotorch::MeZO opt(params, zotorch::MeZOOptions(1e-3));
  auto group = c10::make_intrusive<ScriptedGroup>(0, 2);
  zotorch::DataParallel parallel(opt, group, zotorch::DataParallelOptions().check_every(5));
  for (int step = 0; step < 10; ++step) parallel.step([&] { return data.loss(params, 0); });
  CHECK(parallel.communication().checks == 3);  // start-up, after steps 5 and 10
  group->edit_rows = [](at::Tensor& rows) { rows[1][1] += 1; };
  for (int step = 10; step < 14; ++step) parallel.step([&] { return data.loss(params, 0); });
  CHECK_THROWS_WITH(parallel.step([&] { return data.loss(params, 0); }),
                    Catch::Contains("replicas diverged: at step 15 the parameters of rank(s) 1 differ from rank 0's"));
  CHECK_THROWS_WITH(parallel.step([&] { return data.loss(params, 0); }), Catch::Contains("out of step"));
}

TEST_CASE("DataParallel turns a failed all-reduce into an error that says what to do, with θ restored", "[distributed]") {
  const Shards data;
  auto params = fresh_params();
  zotorch::AdaMeZO opt(params, zotorch::AdaMeZOOptions(1e-4));
  auto group = c10::make_intrusive<ScriptedGroup>(0, 2);
  zotorch::DataParallel parallel(opt, group);
  parallel.step([&] { return data.loss(params, 0); });
  const auto before = copies(params);
  group->fail_with = "Connection closed by peer";
  CHECK_THROWS_WITH(parallel.step([&] { return data.loss(params, 0); }),
                    Catch::Contains("the all-reduce of the losses of step 1 failed on rank 0 of 2 (scripted)") &&
                        Catch::Contains("restart them from the last checkpoint") &&
                        Catch::Contains("Connection closed by peer"));
  // Restored up to the rounding of the sweeps: perturb, restore, perturb, restore (each restore is
  // rounded on its own, docs/algorithms.md "Numerics"), each within half an ulp of its larger operand.
  CHECK(zotorch_test::max_ulps(params, before) <= 4);
  CHECK(opt.steps() == 1);
  // This rank missed a collective the others may have run: it must not go on.
  group->fail_with.clear();
  CHECK_THROWS_WITH(parallel.step([&] { return data.loss(params, 0); }), Catch::Contains("out of step with the group"));
}

TEST_CASE("DataParallel keeps the group in step when every rank rejects the same non-finite loss", "[distributed]") {
  const Shards data;
  auto params = fresh_params();
  zotorch::MeZO opt(params, zotorch::MeZOOptions(1e-3).on_nonfinite(zotorch::NonFinite::Throw));
  auto group = c10::make_intrusive<ScriptedGroup>(0, 2);
  group->peer_losses = [](const at::Tensor& t) { return at::full_like(t, std::nan("")); };  // rank 1 diverged numerically
  zotorch::DataParallel parallel(opt, group);
  CHECK_THROWS_WITH(parallel.step([&] { return data.loss(params, 0); }), Catch::Contains("non-finite loss"));
  group->peer_losses = nullptr;
  CHECK_NOTHROW(parallel.step([&] { return data.loss(params, 0); }));  // the all-reduce happened: still in step
  CHECK(opt.steps() == 1);
}

TEST_CASE("DataParallel: a NaN l_0 on one rank ends the FZOO step on every rank after one forward pass and one all-reduce",
          "[distributed]") {
  const Shards data;
  auto params = fresh_params();
  const auto before = copies(params);
  zotorch::FZOO opt(params, zotorch::FZOOOptions(1e-2).num_perturbations(4));
  auto group = c10::make_intrusive<ScriptedGroup>(0, 2);
  group->peer_losses = [](const at::Tensor& t) { return at::full_like(t, std::nan("")); };  // rank 1's l_0 is NaN
  zotorch::DataParallel parallel(opt, group);
  int calls = 0;
  parallel.step([&] {
    ++calls;
    return data.loss(params, 0);
  });
  CHECK(calls == 1);
  CHECK(opt.last_step().skipped);
  CHECK(parallel.communication().loss_reductions == 1);
  CHECK(same_bits(params, before));
  group->peer_losses = nullptr;
  CHECK_NOTHROW(parallel.step([&] { return data.loss(params, 0); }));  // every rank stopped at the same point
  CHECK(parallel.communication().loss_reductions == 3);
}

TEST_CASE("DataParallel: a closure that throws between FZOO's two all-reduces leaves this rank out of step", "[distributed]") {
  const Shards data;
  auto params = fresh_params();
  zotorch::FZOO opt(params, zotorch::FZOOOptions(1e-2).num_perturbations(4));
  auto group = c10::make_intrusive<ScriptedGroup>(0, 2);
  zotorch::DataParallel parallel(opt, group);
  int calls = 0;
  CHECK_THROWS_WITH(parallel.step([&] {
    if (++calls == 3) throw std::runtime_error("data loader failed");
    return data.loss(params, 0);
  }),
                    Catch::Contains("data loader failed"));
  CHECK(parallel.communication().loss_reductions == 1);  // l_0 was all-reduced, l_1..l_N were not
  CHECK_THROWS_WITH(parallel.step([&] { return data.loss(params, 0); }), Catch::Contains("out of step with the group"));
}

TEST_CASE("DataParallel rejects bad options with messages that name them", "[distributed]") {
  auto params = fresh_params();
  zotorch::FZOO opt(params, zotorch::FZOOOptions(1e-2));
  auto group = c10::make_intrusive<ScriptedGroup>(0, 2);
  CHECK_THROWS_WITH(zotorch::DataParallel(opt, group, zotorch::DataParallelOptions().root(2)),
                    Catch::Contains("root must be a rank in [0, 2), got 2"));
  CHECK_THROWS_WITH(zotorch::DataParallel(opt, group, zotorch::DataParallelOptions().check_every(-1)),
                    Catch::Contains("check_every must be >= 0"));
  CHECK_THROWS_WITH(zotorch::DataParallel(opt, c10::intrusive_ptr<ScriptedGroup>()), Catch::Contains("the process group is null"));
  zotorch::DataParallel first(opt, group);
  CHECK_THROWS_WITH(zotorch::DataParallel(opt, group), Catch::Contains("already has a loss reducer"));
}

TEST_CASE("The replica checksum changes with one ulp of one element, for every float dtype", "[distributed]") {
  for (auto dtype : {at::kFloat, at::kDouble, at::kBFloat16, at::kHalf}) {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(1);
    std::vector<at::Tensor> tensors{at::randn({1000}, gen).to(dtype), at::randn({3, 7}, gen).to(dtype)};
    const uint64_t sum = zotorch::detail::bits_checksum(tensors);
    CHECK(zotorch::detail::bits_checksum(copies(tensors)) == sum);
    auto moved = copies(tensors);
    // The next representable value: one more in the integer view of the bits.
    const auto size = moved[1].element_size();
    moved[1].view({-1}).view(size == 8 ? at::kLong : size == 4 ? at::kInt : at::kShort)[11] += 1;
    CHECK(zotorch::detail::bits_checksum(moved) != sum);
    std::swap(moved[0], moved[1]);
    CHECK(zotorch::detail::bits_checksum(moved) != sum);
  }
}

// ---- real ranks: ProcessGroupGloo over TCP on 127.0.0.1 ----------------------------------------

#ifdef ZOTORCH_DISTRIBUTED_WORKER

namespace {

struct Exit {
  bool finished = false;
  int code = -1;    ///< exit status when the process exited
  int signal = 0;   ///< the signal that ended it, if one did
};

/// Starts the worker with `args`, its stdout and stderr going to `log`.
pid_t spawn_worker(const std::vector<std::string>& args, const fs::path& log) {
  std::vector<std::string> all{ZOTORCH_DISTRIBUTED_WORKER};
  all.insert(all.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : all) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  pid_t pid = -1;
  const int error = posix_spawn(&pid, argv.front(), &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  REQUIRE(error == 0);
  return pid;
}

/// Waits for the processes this test started; any still running at the deadline is killed (it
/// hung, which is itself the failure the caller reports) and reaped.
std::vector<Exit> wait_all(const std::vector<pid_t>& pids, double deadline_seconds) {
  std::vector<Exit> exits(pids.size());
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(deadline_seconds);
  size_t left = pids.size();
  while (left > 0) {
    for (size_t i = 0; i < pids.size(); ++i) {
      if (exits[i].finished) continue;
      int status = 0;
      if (waitpid(pids[i], &status, WNOHANG) == pids[i]) {
        exits[i].finished = true;
        if (WIFEXITED(status)) exits[i].code = WEXITSTATUS(status);
        if (WIFSIGNALED(status)) exits[i].signal = WTERMSIG(status);
        --left;
      }
    }
    if (left == 0) break;
    if (std::chrono::steady_clock::now() > deadline) {
      for (size_t i = 0; i < pids.size(); ++i) {
        if (exits[i].finished) continue;
        kill(pids[i], SIGKILL);
        waitpid(pids[i], nullptr, 0);
      }
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return exits;
}

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::map<std::string, std::string> read_report(const fs::path& path) {
  std::map<std::string, std::string> out;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    const auto eq = line.find('=');
    if (eq != std::string::npos) out[line.substr(0, eq)] = line.substr(eq + 1);
  }
  return out;
}

std::vector<double> read_params(const fs::path& path, bool float64) {
  const std::string bytes = read_text(path);
  std::vector<double> out;
  if (float64) {
    out.resize(bytes.size() / sizeof(double));
    std::memcpy(out.data(), bytes.data(), out.size() * sizeof(double));
  } else {
    std::vector<float> values(bytes.size() / sizeof(float));
    std::memcpy(values.data(), bytes.data(), values.size() * sizeof(float));
    out.assign(values.begin(), values.end());
  }
  return out;
}

/// A TCPStore server on a free port of 127.0.0.1 (the test plays torchrun's agent), and a
/// directory of this test's own, removed at the end.
class Cluster {
 public:
  explicit Cluster(const std::string& name)
      : dir_(fs::temp_directory_path() / ("zotorch_distributed_" + std::to_string(getpid()) + "_" + name)) {
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    c10d::TCPStoreOptions options;
    options.port = 0;  // the kernel picks a free port: parallel test runs never collide
    options.isServer = true;
    options.waitWorkers = false;
    options.timeout = std::chrono::seconds(60);
    store_ = c10::make_intrusive<c10d::TCPStore>("127.0.0.1", options);
  }
  ~Cluster() {
    std::error_code ignored;
    fs::remove_all(dir_, ignored);
  }

  struct Run {
    fs::path dir;
    std::vector<Exit> exits;
    std::vector<std::string> logs;
    std::string all_logs;
  };

  /// Runs `world` ranks with `args` (plus --out, --rank, ...) to completion, or to the deadline.
  Run run(const std::string& name, int world, const std::vector<std::string>& args, const std::string& out = "") {
    Run r;
    r.dir = dir_ / (out.empty() ? name : out);
    fs::create_directories(r.dir);
    std::vector<pid_t> pids;
    for (int rank = 0; rank < world; ++rank) {
      std::vector<std::string> a{"--out", r.dir.string(), "--rank", std::to_string(rank), "--world-size", std::to_string(world),
                                 "--port", std::to_string(store_->getPort()), "--prefix", name};
      a.insert(a.end(), args.begin(), args.end());
      pids.push_back(spawn_worker(a, r.dir / (name + ".log" + std::to_string(rank))));
    }
    r.exits = wait_all(pids, 90);
    for (int rank = 0; rank < world; ++rank) {
      r.logs.push_back(read_text(r.dir / (name + ".log" + std::to_string(rank))));
      r.all_logs += "---- rank " + std::to_string(rank) + " (exit " + std::to_string(r.exits[rank].code) + ", signal " +
                    std::to_string(r.exits[rank].signal) + "):\n" + r.logs.back();
    }
    return r;
  }

  /// The single process that evaluates the whole global batch.
  fs::path reference(const std::string& name, const std::vector<std::string>& args) {
    const fs::path dir = dir_ / name;
    fs::create_directories(dir);
    std::vector<std::string> a{"--out", dir.string(), "--reference"};
    a.insert(a.end(), args.begin(), args.end());
    const auto exits = wait_all({spawn_worker(a, dir / "reference.log")}, 90);
    INFO(read_text(dir / "reference.log"));
    REQUIRE(exits.front().code == 0);
    return dir;
  }

 private:
  fs::path dir_;
  c10::intrusive_ptr<c10d::TCPStore> store_;
};

void require_clean_exits(const Cluster::Run& run) {
  INFO(run.all_logs);
  for (const auto& e : run.exits) {
    REQUIRE(e.finished);
    REQUIRE(e.code == 0);
  }
}

/// All ranks of `run` hold bit-identical parameters; returns rank 0's.
std::string require_identical_replicas(const Cluster::Run& run) {
  const std::string first = read_text(run.dir / "rank0.params");
  REQUIRE(!first.empty());
  for (size_t r = 1; r < run.exits.size(); ++r) {
    INFO("rank " << r);
    CHECK(read_text(run.dir / ("rank" + std::to_string(r) + ".params")) == first);
  }
  return first;
}

/// Largest |a − b| over rank 0's parameters and the single process's.
double max_difference(const fs::path& ranks, const fs::path& reference, bool float64) {
  const auto a = read_params(ranks / "rank0.params", float64), b = read_params(reference / "reference.params", float64);
  REQUIRE(a.size() == b.size());
  REQUIRE(!a.empty());
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(a[i] - b[i]));
  return worst;
}

struct Config {
  const char* optimizer;
  int world;
  const char* dtype;
  int64_t reductions_per_step;    ///< FZOO 2 (l_0, then l_1..l_N), MeZO/AdaMeZO 1
  int64_t last_reduction_losses;  ///< losses in the last all-reduce of a step: N for FZOO, 2n for MeZO
  double tolerance;         ///< float64: rounding of the shard means only; float32: ~1e-5 per step, 200 steps
  bool process_group = false;  ///< hand DataParallel a c10d::ProcessGroup instead of the bare Backend
};

void check_against_one_process(const Config& c) {
  Cluster cluster(std::string(c.optimizer) + std::to_string(c.world) + c.dtype);
  const std::vector<std::string> args{"--optimizer", c.optimizer, "--dtype", c.dtype, "--steps", "200", "--check-every", "50"};
  auto group_args = args;
  if (c.process_group) group_args.push_back("--process-group");
  const auto run = cluster.run("group", c.world, group_args);
  require_clean_exits(run);
  require_identical_replicas(run);
  const bool float64 = std::string(c.dtype) == "float64";
  for (int r = 0; r < c.world; ++r) {
    const auto report = read_report(run.dir / ("rank" + std::to_string(r) + ".txt"));
    CHECK(report.at("steps") == "200");
    CHECK(report.at("skipped") == "0");
    CHECK(report.at("loss_reductions") == std::to_string(200 * c.reductions_per_step));
    CHECK(std::stoll(report.at("loss_bytes")) == c.last_reduction_losses * (float64 ? 8 : 4));
    CHECK(report.at("checks") == "5");  // start-up, then every 50 steps
  }
  const fs::path reference = cluster.reference("reference", args);
  // The run must have trained (the loss starts at 1.62), or agreeing would prove little.
  CHECK(std::stod(read_report(reference / "reference.txt").at("last_loss")) < 1.4);
  CHECK(max_difference(run.dir, reference, float64) <= c.tolerance);
}

}  // namespace

TEST_CASE("FZOO over 2 and 4 Gloo processes: replicas bit-identical, equal to one process on the global batch",
          "[distributed][processes]") {
  check_against_one_process({"fzoo", 2, "float64", 2, 8, 1e-9});
  check_against_one_process({"fzoo", 4, "float32", 2, 8, 1e-3});
}

TEST_CASE("MeZO (n-SPSA, through a c10d::ProcessGroup) and AdaMeZO over Gloo processes: replicas bit-identical, equal to one process",
          "[distributed][processes]") {
  check_against_one_process({"mezo", 4, "float64", 1, 4, 1e-9, /*process_group=*/true});
  check_against_one_process({"adamezo", 2, "float32", 1, 2, 1e-3});
}

// No ';' in test names: catch_discover_tests would split the name there.
TEST_CASE("A rank killed mid-run makes the others fail with a clear error, and a restart from the checkpoint "
          "resumes bit-identically", "[distributed][processes]") {
  Cluster cluster("kill");
  const std::vector<std::string> args{"--steps", "200", "--checkpoint-every", "50"};
  auto with = [&](std::vector<std::string> extra) {
    extra.insert(extra.begin(), args.begin(), args.end());
    return extra;
  };
  // Rank 2 of 4 dies inside step 120; the checkpoint of step 100 is on disk.
  const auto crashed = cluster.run("crash", 4, with({"--die-rank", "2", "--die-step", "120"}), "resumable");
  {
    INFO(crashed.all_logs);
    for (int r = 0; r < 4; ++r) REQUIRE(crashed.exits[r].finished);  // nobody hangs
    CHECK(crashed.exits[2].signal == SIGKILL);
    for (int r : {0, 1, 3}) {
      CHECK(crashed.exits[r].code == 3);
      CHECK_THAT(crashed.logs[r], Catch::Contains("zotorch::DataParallel: the all-reduce of the losses of step 120 failed on rank " +
                                                  std::to_string(r) + " of 4 (gloo)"));
    }
  }
  // Restart every rank from the last checkpoint...
  const auto resumed = cluster.run("restart", 4, with({"--resume"}), "resumable");
  require_clean_exits(resumed);
  const std::string after_restart = require_identical_replicas(resumed);
  const auto report = read_report(resumed.dir / "rank0.txt");
  CHECK(report.at("resumed") == "1");
  CHECK(report.at("loss_reductions") == "200");  // steps 100..199 only, two per FZOO step
  CHECK(report.at("forward_passes") == "1800");  // the counters came back with the checkpoint
  // ...and it ends exactly where a run that never failed ends.
  const auto uninterrupted = cluster.run("uninterrupted", 4, args);
  require_clean_exits(uninterrupted);
  CHECK(require_identical_replicas(uninterrupted) == after_restart);
}

TEST_CASE("A rank that stops responding makes the others fail at the group's timeout instead of hanging",
          "[distributed][processes]") {
  Cluster cluster("stall");
  // Rank 1 sleeps 5 s inside step 30; DataParallelOptions::timeout is 2 s (the group's own, which
  // also bounds its start-up rendezvous, stays 30 s). Timing is only a liveness bound (wait_all's
  // deadline), not a measurement.
  const auto run = cluster.run("stall", 2, {"--steps", "60", "--step-timeout-ms", "2000", "--stall-rank", "1", "--stall-step",
                                            "30", "--stall-ms", "5000"});
  INFO(run.all_logs);
  REQUIRE(run.exits[0].finished);
  REQUIRE(run.exits[1].finished);
  CHECK(run.exits[0].code == 3);
  CHECK_THAT(run.logs[0], Catch::Contains("zotorch::DataParallel: the all-reduce of the losses of step 30 failed on rank 0 of 2"));
  // The sleeper wakes up to a group that is gone, and exits too.
  CHECK(run.exits[1].code == 3);
}

TEST_CASE("A non-finite loss on one rank makes every rank skip the same step", "[distributed][processes]") {
  Cluster cluster("nan");
  const auto run = cluster.run("nan", 2, {"--steps", "20", "--nan-rank", "1", "--nan-step", "7"});
  require_clean_exits(run);
  require_identical_replicas(run);
  for (int r = 0; r < 2; ++r) CHECK(read_report(run.dir / ("rank" + std::to_string(r) + ".txt")).at("skipped") == "1");
}

TEST_CASE("The periodic checksum makes every rank fail loudly when one replica diverged", "[distributed][processes]") {
  Cluster cluster("diverge");
  const auto run = cluster.run("diverge", 2, {"--steps", "100", "--check-every", "10", "--corrupt-rank", "1", "--corrupt-step", "55"});
  INFO(run.all_logs);
  for (int r = 0; r < 2; ++r) {
    REQUIRE(run.exits[r].finished);
    CHECK(run.exits[r].code == 3);
    CHECK_THAT(run.logs[r], Catch::Contains("replicas diverged: at step 60 the parameters of rank(s) 1 differ from rank 0's"));
  }
}

#endif  // ZOTORCH_DISTRIBUTED_WORKER
