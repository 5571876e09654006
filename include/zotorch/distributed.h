// Data-parallel zeroth-order fine-tuning over PyTorch's c10d (docs/distributed.md): every rank runs
// the closure on its shard of the batch, all-reduces average the step's losses, and every rank
// derives the same update from the same key, so only N + 1 (FZOO, in two all-reduces) or 2n (MeZO)
// numbers cross the wire.
#pragma once

#include <zotorch/zo_optimizer.h>

#include <torch/arg.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/Types.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>

#include <c10/util/Exception.h>
#include <c10/util/intrusive_ptr.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace zotorch {

/// Options of zotorch::DataParallel.
struct DataParallelOptions {
  /// Rank whose parameters every replica starts from.
  TORCH_ARG(int64_t, root) = 0;
  /// Broadcast the parameters from `root` when the wrapper is made. Turn it off only where every
  /// rank already holds identical parameters (all loaded one checkpoint); the start-up check then
  /// compares parameter checksums instead, and fails if they differ.
  TORCH_ARG(bool, broadcast_parameters) = true;
  /// Every `check_every` steps of step(), all-reduce a checksum of every replica's parameters and
  /// optimizer state, and throw on all ranks if one differs; 0 checks only at start-up.
  TORCH_ARG(int64_t, check_every) = 0;
  /// Deadline of each collective the wrapper runs, if set; else the group's own timeout (the one it
  /// was created with, which also bounds its start-up rendezvous and so is often generous).
  TORCH_ARG(std::chrono::milliseconds, timeout) = c10d::kUnsetTimeout;
};

/// What the wrapper has sent so far. Payload bytes are what each rank contributes to a collective;
/// a ring all-reduce moves at most twice that per rank over the network (docs/distributed.md).
struct CommunicationStats {
  /// All-reduces of step losses: two per FZOO step (l_0, then l_1..l_N: a non-finite l_0 ends the
  /// step on every rank before the probes), one per MeZO/AdaMeZO step (all 2n losses).
  int64_t loss_reductions = 0;
  int64_t loss_bytes = 0;            ///< payload of the last one: 4·N for FZOO (l_1..l_N), 4·2n for MeZO, on float32 losses
  int64_t loss_bytes_total = 0;
  double loss_seconds = 0;           ///< wall time of the last one, including waiting for slower ranks
  double loss_seconds_total = 0;
  int64_t checks = 0;                ///< replica checks, the start-up check included
  double check_seconds_total = 0;    ///< checksums and their all-reduces
  int64_t broadcast_bytes = 0;       ///< the start-up parameter broadcast
  double broadcast_seconds = 0;
};

namespace detail {

/// The two collectives zotorch needs, over either a c10d::ProcessGroup or a single c10d::Backend
/// (ProcessGroupGloo, ProcessGroupNCCL, ...), which share these signatures but no base class.
class Collectives {
 public:
  virtual ~Collectives() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string backend_name() const = 0;
  virtual c10::intrusive_ptr<c10d::Work> allreduce(std::vector<at::Tensor>& tensors, const c10d::AllreduceOptions& o) = 0;
  virtual c10::intrusive_ptr<c10d::Work> broadcast(std::vector<at::Tensor>& tensors, const c10d::BroadcastOptions& o) = 0;
};

template <class Group>
class GroupCollectives final : public Collectives {
 public:
  explicit GroupCollectives(c10::intrusive_ptr<Group> group) : group_(std::move(group)) {}
  int rank() const override { return group_->getRank(); }
  int size() const override { return group_->getSize(); }
  std::string backend_name() const override {
    try {
      return group_->getBackendName();
    } catch (const std::exception&) {
      return "c10d";  // a Backend subclass that does not name itself
    }
  }
  c10::intrusive_ptr<c10d::Work> allreduce(std::vector<at::Tensor>& tensors, const c10d::AllreduceOptions& o) override {
    return group_->allreduce(tensors, o);
  }
  c10::intrusive_ptr<c10d::Work> broadcast(std::vector<at::Tensor>& tensors, const c10d::BroadcastOptions& o) override {
    return group_->broadcast(tensors, o);
  }

 private:
  c10::intrusive_ptr<Group> group_;
};

template <class Group>
std::shared_ptr<Collectives> make_collectives(const c10::intrusive_ptr<Group>& group, const char* owner) {
  static_assert(std::is_base_of<c10d::ProcessGroup, Group>::value || std::is_base_of<c10d::Backend, Group>::value,
                "zotorch: the group must be a c10::intrusive_ptr to a c10d::ProcessGroup or a c10d::Backend "
                "(c10d::ProcessGroupGloo, c10d::ProcessGroupNCCL, ...)");
  TORCH_CHECK(group.defined(), owner, ": the process group is null; create it first, e.g. "
              "c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world_size, options)");
  return std::make_shared<GroupCollectives<Group>>(group);
}

inline std::string error_text(const std::exception& e) {
  if (const auto* c10_error = dynamic_cast<const c10::Error*>(&e)) return c10_error->what_without_backtrace();
  return e.what();
}

/// Runs one collective to completion; a failure (a peer died, or did not arrive within the group's
/// timeout) becomes an error that says which collective, where, after how long, and what to do.
inline double run_collective(Collectives& group, const std::string& what,
                             const std::function<c10::intrusive_ptr<c10d::Work>()>& start) {
  const auto started = std::chrono::steady_clock::now();
  auto seconds = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count(); };
  try {
    auto work = start();
    work->wait();
  } catch (const std::exception& e) {
    TORCH_CHECK(false, "zotorch::DataParallel: ", what, " failed on rank ", group.rank(), " of ", group.size(), " (",
                group.backend_name(), ") after ", seconds(),
                " s: a peer process died, or did not reach the same collective within the timeout. "
                "Stop all ranks and restart them from the last checkpoint. Cause: ",
                error_text(e));
  }
  return seconds();
}

/// The dtype losses travel in: float32 (4 bytes each), or float64 where the closure returns float64;
/// half-precision losses are widened, since summing them in half precision loses digits.
inline at::ScalarType loss_wire_dtype(at::ScalarType loss_dtype) {
  return loss_dtype == at::kDouble ? at::kDouble : at::kFloat;
}

inline uint64_t mix(uint64_t h, uint64_t value) { return splitmix64(h ^ splitmix64(value + 0x9E3779B97F4A7C15ull)); }

inline uint64_t double_bits(double x) {
  uint64_t bits = 0;
  std::memcpy(&bits, &x, sizeof bits);
  return bits;
}

inline uint64_t hash_text(const std::string& text) {
  uint64_t h = 0x243F6A8885A308D3ull;
  for (unsigned char c : text) h = mix(h, c);
  return h;
}

/// A checksum of the exact bits of `tensors`. Integer sums of the bit patterns are exact, so the
/// result depends neither on the reduction order nor on the device; the second sum (of squared low
/// half-words) makes compensating changes that keep the first sum equal vanishingly unlikely.
inline uint64_t bits_checksum(const std::vector<at::Tensor>& tensors) {
  constexpr int64_t kChunk = int64_t{1} << 22;  // bounds the int64 scratch to 32 MB and the sums below 2^54
  std::vector<at::Tensor> sums;
  for (const auto& t : tensors) {
    at::Tensor flat = t.detach().contiguous().reshape({-1});
    if (flat.numel() == 0) continue;
    // Integer words of the same bits: 1- and 2-byte elements as themselves, wider ones as int32 pairs.
    const auto size = flat.element_size();
    flat = flat.view(size == 1 ? at::kByte : size == 2 ? at::kShort : at::kInt);
    for (int64_t start = 0; start < flat.numel(); start += kChunk) {
      const at::Tensor words = flat.narrow(0, start, std::min(kChunk, flat.numel() - start)).to(at::kLong);
      sums.push_back(words.sum());
      sums.push_back(words.bitwise_and(0xFFFF).square().sum());
    }
  }
  uint64_t h = 0x13198A2E03707344ull;
  if (sums.empty()) return h;
  const at::Tensor host = at::stack(sums).cpu();  // one device synchronisation for all tensors
  const int64_t* data = host.data_ptr<int64_t>();
  for (int64_t i = 0; i < host.numel(); ++i) h = mix(h, static_cast<uint64_t>(data[i]));
  return h;
}

/// Deduces the options type of a ZerothOrderOptimizer subclass (declaration only: unevaluated use).
template <class D, class O, class S>
O zo_options_of(const ZerothOrderOptimizer<D, O, S>*);

/// What the loss reducer shares with its DataParallel.
struct ReplicaState {
  std::shared_ptr<Collectives> group;
  CommunicationStats stats;
  std::function<int64_t()> step_index;
  std::chrono::milliseconds timeout = c10d::kUnsetTimeout;
  at::Tensor last_losses;  ///< the values of the last all-reduce, as every rank received them
};

}  // namespace detail

/// Copies `tensors` of rank `root` into the same tensors on every other rank, in place (one
/// broadcast per device and dtype). Every rank must pass tensors of the same shapes, dtypes and
/// order, e.g. model->parameters() or model->buffers() of the same model. `timeout` bounds each
/// broadcast (unset: the group's own timeout). Returns the payload bytes.
template <class Group>
int64_t broadcast_tensors(const std::vector<at::Tensor>& tensors, const c10::intrusive_ptr<Group>& group, int64_t root = 0,
                          std::chrono::milliseconds timeout = c10d::kUnsetTimeout) {
  auto collectives = detail::make_collectives(group, "zotorch::broadcast_tensors");
  TORCH_CHECK(root >= 0 && root < collectives->size(), "zotorch::broadcast_tensors: root must be a rank in [0, ",
              collectives->size(), "), got ", root);
  torch::NoGradGuard no_grad;
  // Buckets of (device, dtype) in first-appearance order: the same order on every rank.
  std::vector<std::vector<at::Tensor>> buckets;
  for (const auto& t : tensors) {
    TORCH_CHECK(t.defined(), "zotorch::broadcast_tensors: tensor ", &t - tensors.data(), " is undefined");
    bool placed = false;
    for (auto& bucket : buckets) {
      if (bucket.front().device() == t.device() && bucket.front().scalar_type() == t.scalar_type()) {
        bucket.push_back(t);
        placed = true;
        break;
      }
    }
    if (!placed) buckets.push_back({t});
  }
  int64_t bytes = 0;
  for (auto& bucket : buckets) {
    std::vector<at::Tensor> flat_views;
    for (const auto& t : bucket) flat_views.push_back(t.detach().reshape({-1}));
    std::vector<at::Tensor> payload{at::cat(flat_views)};
    bytes += payload.front().numel() * payload.front().element_size();
    c10d::BroadcastOptions options;
    options.rootRank = root;
    options.timeout = timeout;
    detail::run_collective(*collectives, "the broadcast of " + std::to_string(bucket.size()) + " tensors from rank " + std::to_string(root),
                           [&] { return collectives->broadcast(payload, options); });
    if (collectives->rank() == root) continue;
    int64_t offset = 0;
    for (auto& t : bucket) {
      t.detach().copy_(payload.front().narrow(0, offset, t.numel()).view(t.sizes()));
      offset += t.numel();
    }
  }
  return bytes;
}

/// Makes a zeroth-order optimizer (zotorch::FZOO, MeZO or AdaMeZO) data-parallel over a c10d
/// process group. Each rank's closure evaluates that rank's shard of the batch; all-reduces average
/// the step's losses (FZOO: l_0, then l_1..l_N; MeZO/AdaMeZO: all 2n at once), and every rank
/// applies the identical update, so the replicas stay bit-identical.
/// Averaging shard losses equals the loss of the global batch when the shards have equal sizes.
///
/// ```
/// zotorch::FZOO opt(model->parameters(), zotorch::FZOOOptions(1e-4));
/// zotorch::DataParallel parallel(opt, process_group);   // broadcasts rank 0's parameters
/// for (...) parallel.step([&] { return loss_of(my_shard); });
/// ```
/// The group may be a c10d::ProcessGroup or any c10d::Backend (ProcessGroupGloo on CPU,
/// ProcessGroupNCCL on GPU); the losses travel on their own device, the checksums on the parameters'.
/// Construction is collective (all ranks, same order), as is every step. The wrapper installs the
/// optimizer's loss reducer, so opt.step() also averages over the group (but skips the periodic
/// checks); destroy the wrapper before the optimizer. A rank whose closure throws leaves the group
/// out of step: the others fail at the collectives' timeout; restart all ranks from a checkpoint.
template <class Optimizer>
class DataParallel {
 public:
  using Options = decltype(detail::zo_options_of(static_cast<const Optimizer*>(nullptr)));

  template <class Group>
  DataParallel(Optimizer& optimizer, const c10::intrusive_ptr<Group>& group, const DataParallelOptions& options = {})
      : optimizer_(optimizer), options_(options), state_(std::make_shared<detail::ReplicaState>()) {
    state_->group = detail::make_collectives(group, "zotorch::DataParallel");
    state_->timeout = options.timeout();
    const int size = state_->group->size();
    TORCH_CHECK(options.root() >= 0 && options.root() < size, "zotorch::DataParallel: root must be a rank in [0, ", size,
                "), got ", options.root());
    TORCH_CHECK(options.timeout() == c10d::kUnsetTimeout || options.timeout().count() > 0,
                "zotorch::DataParallel: timeout must be > 0 ms, got ", options.timeout().count(), " ms");
    TORCH_CHECK(options.check_every() >= 0, "zotorch::DataParallel: check_every must be >= 0 (0: check only at "
                "start-up), got ", options.check_every());
    TORCH_CHECK(!optimizer.loss_reducer(), "zotorch::DataParallel: ", Optimizer::kName,
                " already has a loss reducer (is it wrapped by another DataParallel?); wrap each optimizer once");
    // Same optimizer, options, counters and parameter shapes everywhere, before anything is sent
    // that depends on them; then one set of parameters.
    check_replicas(/*parameters=*/!options.broadcast_parameters());
    if (options.broadcast_parameters()) {
      const auto started = std::chrono::steady_clock::now();
      state_->stats.broadcast_bytes = broadcast_tensors(parameters(), group, options.root(), options.timeout());
      state_->stats.broadcast_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    }
    Optimizer* opt = &optimizer_;
    state_->step_index = [opt] { return opt->steps(); };
    optimizer_.set_loss_reducer([state = state_](at::Tensor& losses) { reduce_losses(*state, losses); });
  }

  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  ~DataParallel() { optimizer_.set_loss_reducer(nullptr); }

  /// One data-parallel step: `closure` returns the loss of this rank's shard of the batch. Returns
  /// the loss averaged over the ranks (the same on every rank). Every check_every steps, checks
  /// that the replicas are still identical.
  torch::Tensor step(const typename Optimizer::LossClosure& closure) {
    TORCH_CHECK(broken_.empty(), "zotorch::DataParallel: ", broken_, "; this rank is out of step with the group. "
                "Stop all ranks and restart them from the last checkpoint");
    const int64_t reductions = state_->stats.loss_reductions;
    const int64_t index = optimizer_.steps();
    torch::Tensor loss;
    try {
      loss = optimizer_.step(closure);
    } catch (...) {
      // The one error every rank raises at the same point is the non-finite policy's, decided on the
      // all-reduced losses (FZOO checks l_0 after its own all-reduce, then l_1..l_N after a second).
      // Any other error (the closure, a failed collective) is this rank's alone: the others go on to
      // a collective this rank skipped, or apply an update this rank did not.
      const bool reduced = state_->stats.loss_reductions > reductions;
      const bool nonfinite = reduced && state_->last_losses.defined() && !at::isfinite(state_->last_losses).all().item<bool>();
      if (!nonfinite) {
        broken_ = "step " + std::to_string(index) + " failed on this rank apart from the group (" +
                  (reduced ? "after" : "before") + " an all-reduce of its losses)";
      }
      throw;
    }
    if (options_.check_every() > 0 && optimizer_.steps() % options_.check_every() == 0) check_replicas(true);
    return loss;
  }

  /// Compares a fingerprint of every replica's optimizer (method, seed, eps, lr and weight decay of
  /// each group, counters, parameter shapes and dtypes, which tensors are trained) and, with `parameters`, a checksum of the
  /// parameters' exact bits; throws on every rank, naming the ranks that differ from the root.
  /// Collective: all ranks must call it at the same point.
  void check_replicas(bool parameters = true) {
    const auto started = std::chrono::steady_clock::now();
    auto& group = *state_->group;
    const int size = group.size();
    const std::vector<at::Tensor> params = this->parameters();
    // Row r holds rank r's two values, zeros elsewhere: a sum all-reduce gives every rank all rows
    // (an all-gather through the one collective every backend has, exact in int64).
    at::Tensor rows = at::zeros({size, 2}, at::TensorOptions().dtype(at::kLong));
    rows[group.rank()][0] = static_cast<int64_t>(fingerprint());
    rows[group.rank()][1] = parameters ? static_cast<int64_t>(detail::bits_checksum(params)) : 0;
    std::vector<at::Tensor> payload{rows.to(params.front().device())};
    c10d::AllreduceOptions sum;
    sum.reduceOp = c10d::ReduceOp::SUM;
    sum.timeout = options_.timeout();
    detail::run_collective(group, "the replica check after step " + std::to_string(optimizer_.steps()),
                           [&] { return group.allreduce(payload, sum); });
    const at::Tensor all = payload.front().cpu();
    const auto values = all.accessor<int64_t, 2>();
    const auto root = options_.root();
    std::ostringstream config, bits;
    for (int r = 0; r < size; ++r) {
      if (values[r][0] != values[root][0]) config << (config.tellp() > 0 ? ", " : "") << r;
      else if (values[r][1] != values[root][1]) bits << (bits.tellp() > 0 ? ", " : "") << r;
    }
    ++state_->stats.checks;
    state_->stats.check_seconds_total += std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    if (config.tellp() > 0) {
      broken_ = "the replicas' optimizers differ";
      TORCH_CHECK(false, "zotorch::DataParallel: at step ", optimizer_.steps(), " rank(s) ", config.str(),
                  " hold a different optimizer configuration or state than rank ", root,
                  " (method, seed, eps, lr, weight_decay, step counters, parameter shapes or frozen tensors): every rank must build ",
                  "the same optimizer over the same model, and a resumed run must load the same checkpoint on every rank");
    }
    if (bits.tellp() > 0) {
      broken_ = "the replicas' parameters diverged";
      TORCH_CHECK(false, "zotorch::DataParallel: replicas diverged: at step ", optimizer_.steps(), " the parameters of rank(s) ",
                  bits.str(), " differ from rank ", root,
                  "'s. Something changed parameters outside the optimizer on some ranks, or the group's all-reduce did "
                  "not give every rank the same bits; restart all ranks from the last checkpoint");
    }
  }

  /// This process's rank and the number of ranks.
  int rank() const { return state_->group->rank(); }
  int world_size() const { return state_->group->size(); }
  Optimizer& optimizer() { return optimizer_; }
  const CommunicationStats& communication() const { return state_->stats; }

 private:
  std::vector<at::Tensor> parameters() const {
    std::vector<at::Tensor> params;
    for (const auto& group : optimizer_.param_groups()) {
      for (const auto& p : group.params()) params.push_back(p);
    }
    return params;
  }

  uint64_t fingerprint() const {
    uint64_t h = detail::hash_text(Optimizer::kName);
    h = detail::mix(h, static_cast<uint64_t>(optimizer_.steps()));
    h = detail::mix(h, static_cast<uint64_t>(optimizer_.forward_passes()));
    h = detail::mix(h, static_cast<uint64_t>(optimizer_.skipped_steps()));
    const auto& groups = optimizer_.param_groups();
    const auto& first = static_cast<const Options&>(groups.front().options());
    h = detail::mix(h, first.seed());
    h = detail::mix(h, detail::double_bits(first.eps()));
    for (const auto& group : groups) {
      const auto& o = static_cast<const Options&>(group.options());
      h = detail::mix(h, detail::double_bits(o.lr()));
      h = detail::mix(h, detail::double_bits(o.weight_decay()));
      h = detail::mix(h, group.params().size());
      for (const auto& p : group.params()) {
        h = detail::mix(h, static_cast<uint64_t>(p.scalar_type()));
        h = detail::mix(h, first.include_frozen() || p.requires_grad() ? 1 : 0);  // trained or frozen
        for (int64_t s : p.sizes()) h = detail::mix(h, static_cast<uint64_t>(s));
      }
    }
    return h;
  }

  /// The loss reducer: sum over the group, divided by its size, in the wire dtype.
  static void reduce_losses(detail::ReplicaState& state, at::Tensor& losses) {
    auto& group = *state.group;
    std::vector<at::Tensor> payload{losses.to(detail::loss_wire_dtype(losses.scalar_type())).contiguous()};
    // SUM, then divide: Gloo has no AVG. Every rank divides identical bits by the same number.
    c10d::AllreduceOptions sum;
    sum.reduceOp = c10d::ReduceOp::SUM;
    sum.timeout = state.timeout;
    const double seconds = detail::run_collective(
        group, "the all-reduce of the losses of step " + std::to_string(state.step_index()),
        [&] { return group.allreduce(payload, sum); });
    losses = payload.front().div_(static_cast<double>(group.size()));
    state.last_losses = losses;
    auto& s = state.stats;
    ++s.loss_reductions;
    s.loss_bytes = payload.front().numel() * payload.front().element_size();
    s.loss_bytes_total += s.loss_bytes;
    s.loss_seconds = seconds;
    s.loss_seconds_total += seconds;
  }

  Optimizer& optimizer_;
  DataParallelOptions options_;
  std::shared_ptr<detail::ReplicaState> state_;
  std::string broken_;
};

}  // namespace zotorch
