// Trajectories (docs/trajectory.md): a fine-tune stored as its log of steps — a key and the
// losses each step read, a few dozen bytes — and replayed onto the starting weights without a
// forward pass. Replay runs each method's own step code with the recorded losses in place of the
// closure, so the sweeps, their rounding and every decision (σ guard, skips, AdaMeZO's window)
// are the training run's own, bit for bit on the same backend.
#pragma once

#include <zotorch/adamezo.h>
#include <zotorch/checkpoint.h>
#include <zotorch/fzoo.h>
#include <zotorch/mezo.h>
#include <zotorch/noise.h>

#include <torch/nn/module.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <sstream>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

namespace zotorch {

/// One tensor of the parameter list a trajectory was recorded over, in the flattened
/// param_groups order (the tensor_id of its directions).
struct TrajectoryTensor {
  std::string name;  ///< empty unless the writer was given names
  at::ScalarType dtype = at::kFloat;
  std::vector<int64_t> sizes;
  int64_t group = 0;  ///< param group index
};

/// One option shared by all param groups, as recorded (integers and flags as `integer`).
struct TrajectoryOption {
  std::string name;
  bool is_integer = false;
  int64_t integer = 0;
  double real = 0;
};

/// The shared options and the trained tensors, in force from one step on.
struct TrajectoryConfig {
  std::vector<TrajectoryOption> options;
  std::vector<bool> trained;  ///< per tensor: perturbed and updated (requires_grad, or include_frozen)
  uint64_t offset = 0;        ///< byte offset of the record in the file

  const TrajectoryOption& option(const std::string& name) const {
    for (const auto& o : options) {
      if (o.name == name) return o;
    }
    TORCH_CHECK(false, "zotorch::TrajectoryReader: the log records no option '", name,
                "'; it was written by another zotorch version or for another method");
  }
};

/// One step() call as recorded.
struct TrajectoryRecord {
  int64_t step = 0;   ///< StepReport::step: position in the seed's direction stream
  uint64_t key = 0;   ///< StepReport::key
  bool skipped = false;
  bool aborted = false;  ///< step() threw; θ was restored (docs/trajectory.md "Aborted steps")
  int64_t forward_passes = 0;
  std::vector<double> losses;  ///< the losses the method read, in StepReport::losses order
  std::vector<double> lr, weight_decay;  ///< per param group, in force at this step
  size_t config = 0;    ///< index into TrajectoryReader::configs()
  uint64_t offset = 0;  ///< byte offset of the record in the file
};

/// The optimizer state a trajectory starts from (the state before its first recorded step).
struct TrajectoryStart {
  int64_t step = 0, forward_passes = 0, skipped_steps = 0;
  int64_t updates = 0;  ///< AdaMeZO
  std::vector<uint64_t> window_keys;  ///< AdaMeZO, oldest first
  std::vector<double> window_gradients;
};

namespace detail {

// File layout (docs/trajectory.md "File format"), little-endian:
//   magic "ZOTRAJ" + format version (u16)
//   records: payload length (u32), type (u8), payload, CRC-32 of type and payload (u32)
// Types: 'B' begin (method, tensors, start state), once, first; 'C' config (shared options, per-group
// lr and weight decay, trained tensors), before the first step and whenever it changes; 'S' step.
constexpr char kTrajectoryMagic[6] = {'Z', 'O', 'T', 'R', 'A', 'J'};
/// 2 since 2026-12-01: 16-bit stochastic rounding draws 16 bits per element (docs/numerics.md "The
/// noise stream"), so a version-1 log of a 16-bit run would replay to other bits; it is refused.
constexpr uint16_t kTrajectoryVersion = 2;
constexpr size_t kTrajectoryHeaderSize = 8;
constexpr uint32_t kTrajectoryMaxPayload = uint32_t{1} << 28;
constexpr uint8_t kStepSkipped = 1, kStepAborted = 2, kStepFloatLosses = 4, kStepGroupOptions = 8;

/// Appends little-endian fields to a payload.
struct PayloadWriter {
  std::string bytes;
  void u8(uint64_t v) { put(v, 1); }
  void u16(uint64_t v) { put(v, 2); }
  void u32(uint64_t v) { put(v, 4); }
  void u64(uint64_t v) { put(v, 8); }
  void f64(double v) {
    uint64_t bits;
    std::memcpy(&bits, &v, 8);
    put(bits, 8);
  }
  void f32(float v) {
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    put(bits, 4);
  }
  void text(const std::string& s) {
    u32(s.size());
    bytes += s;
  }
  void put(uint64_t v, int n) {
    unsigned char buffer[8];
    put_le(buffer, v, n);
    bytes.append(reinterpret_cast<const char*>(buffer), static_cast<size_t>(n));
  }
};

/// Reads a payload with bounds checks: a malformed record throws, it never reads past its end.
struct PayloadReader {
  const unsigned char* data;
  size_t size, at = 0;
  const std::string& where;

  uint64_t get(size_t n) {
    TORCH_CHECK(size - at >= n, "zotorch::TrajectoryReader: ", where, " is malformed (its payload ends early); ",
                "the file is damaged or not a zotorch trajectory");
    const uint64_t v = get_le(data + at, static_cast<int>(n));
    at += n;
    return v;
  }
  uint64_t u8() { return get(1); }
  uint64_t u32() { return get(4); }
  uint64_t u64() { return get(8); }
  int64_t i64() { return static_cast<int64_t>(get(8)); }
  double f64() {
    const uint64_t bits = get(8);
    double v;
    std::memcpy(&v, &bits, 8);
    return v;
  }
  float f32() {
    const auto bits = static_cast<uint32_t>(get(4));
    float v;
    std::memcpy(&v, &bits, 4);
    return v;
  }
  std::string text(size_t limit) {
    const uint64_t n = u32();
    TORCH_CHECK(n <= limit && n <= size - at, "zotorch::TrajectoryReader: ", where, " is malformed (a name of ", n,
                " bytes)");
    std::string s(reinterpret_cast<const char*>(data + at), static_cast<size_t>(n));
    at += static_cast<size_t>(n);
    return s;
  }
  void finish() {
    TORCH_CHECK(at == size, "zotorch::TrajectoryReader: ", where, " is malformed (", size - at,
                " bytes left over after its fields)");
  }
};

/// One framed record: length, type, payload, CRC-32 of type and payload.
inline std::string frame_record(char type, const std::string& payload) {
  std::string out;
  unsigned char head[5];
  put_le(head, payload.size(), 4);
  head[4] = static_cast<unsigned char>(type);
  out.append(reinterpret_cast<const char*>(head), 5);
  out += payload;
  uint32_t crc = crc32_update(0, head + 4, 1);
  crc = crc32_update(crc, payload.data(), payload.size());
  unsigned char tail[4];
  put_le(tail, crc, 4);
  out.append(reinterpret_cast<const char*>(tail), 4);
  return out;
}

inline TrajectoryOption int_option(const char* name, int64_t v) { return {name, true, v, 0}; }
inline TrajectoryOption real_option(const char* name, double v) { return {name, false, 0, v}; }

/// The options every method shares but lr and weight_decay, which are per group and per step.
template <class Options>
std::vector<TrajectoryOption> common_shared_options(const Options& o) {
  return {real_option("eps", o.eps()), int_option("seed", static_cast<int64_t>(o.seed())),
          int_option("stochastic_rounding", o.stochastic_rounding()),
          int_option("on_nonfinite", static_cast<int64_t>(o.on_nonfinite())),
          int_option("include_frozen", o.include_frozen())};
}

template <class Options>
void apply_common_options(Options& o, const TrajectoryConfig& c) {
  o.eps(c.option("eps").real);
  o.seed(static_cast<uint64_t>(c.option("seed").integer));
  o.stochastic_rounding(c.option("stochastic_rounding").integer != 0);
  const int64_t policy = c.option("on_nonfinite").integer;
  TORCH_CHECK(policy == 0 || policy == 1, "zotorch::replay: the log has an unknown on_nonfinite value ", policy);
  o.on_nonfinite(static_cast<NonFinite>(policy));
  // Which tensors are trained is replayed through requires_grad (TrajectoryConfig::trained).
  o.include_frozen(false);
}

/// What the log records of each optimizer: its name and shared options, and how to rebuild them.
template <class Optimizer>
struct TrajectoryMethod;

template <>
struct TrajectoryMethod<FZOO> {
  using Options = FZOOOptions;
  static constexpr const char* kName = "FZOO";
  static std::vector<TrajectoryOption> shared(const Options& o) {
    auto list = common_shared_options(o);
    list.push_back(int_option("num_perturbations", o.num_perturbations()));
    list.push_back(real_option("sigma_floor", o.sigma_floor()));
    return list;
  }
  static void apply(Options& o, const TrajectoryConfig& c) {
    apply_common_options(o, c);
    o.num_perturbations(c.option("num_perturbations").integer);
    o.sigma_floor(c.option("sigma_floor").real);
  }
};

template <>
struct TrajectoryMethod<MeZO> {
  using Options = MeZOOptions;
  static constexpr const char* kName = "MeZO";
  static std::vector<TrajectoryOption> shared(const Options& o) {
    auto list = common_shared_options(o);
    list.push_back(int_option("num_samples", o.num_samples()));
    list.push_back(int_option("distribution", static_cast<int64_t>(o.distribution())));
    return list;
  }
  static void apply(Options& o, const TrajectoryConfig& c) {
    apply_common_options(o, c);
    o.num_samples(c.option("num_samples").integer);
    const int64_t dist = c.option("distribution").integer;
    TORCH_CHECK(dist == 0 || dist == 1, "zotorch::replay: the log has an unknown distribution ", dist);
    o.distribution(static_cast<Distribution>(dist));
  }
};

template <>
struct TrajectoryMethod<AdaMeZO> {
  using Options = AdaMeZOOptions;
  static constexpr const char* kName = "AdaMeZO";
  static std::vector<TrajectoryOption> shared(const Options& o) {
    auto list = common_shared_options(o);
    list.push_back(int_option("window", o.window()));
    list.push_back(real_option("beta1", o.beta1()));
    list.push_back(real_option("beta2", o.beta2()));
    list.push_back(real_option("scale", o.scale()));
    list.push_back(real_option("stab", o.stab()));
    return list;
  }
  static void apply(Options& o, const TrajectoryConfig& c) {
    apply_common_options(o, c);
    o.window(c.option("window").integer);
    o.beta1(c.option("beta1").real);
    o.beta2(c.option("beta2").real);
    o.scale(c.option("scale").real);
    o.stab(c.option("stab").real);
  }
};

template <class T, class = void>
struct has_window : std::false_type {};
template <class T>
struct has_window<T, std::void_t<decltype(std::declval<const T&>().window_keys())>> : std::true_type {};

/// The optimizer internals a replay needs: the state before the first step, and sweeps switched
/// off while it rebuilds the state of steps before the replayed range.
struct ReplayAccess {
  template <class Optimizer>
  static void set_start(Optimizer& opt, const TrajectoryStart& start) {
    auto& state = opt.global_state();
    state.step(start.step);
    state.forward_passes(start.forward_passes);
    state.skipped_steps(start.skipped_steps);
    using State = std::decay_t<decltype(state)>;
    if constexpr (has_window<State>::value) {
      state.updates(start.updates);
      std::vector<int64_t> keys;
      for (uint64_t k : start.window_keys) keys.push_back(static_cast<int64_t>(k));
      state.window_keys(keys);
      state.window_gradients(start.window_gradients);
    }
  }
  template <class Optimizer>
  static void apply_sweeps(Optimizer& opt, bool on) {
    opt.apply_sweeps_ = on;
  }
  template <class Optimizer>
  static void check_options(const typename TrajectoryMethod<Optimizer>::Options& o, size_t group) {
    Optimizer::check_options(o, group);
  }
};

template <class State>
TrajectoryStart start_of(const State& state) {
  TrajectoryStart s;
  s.step = state.step();
  s.forward_passes = state.forward_passes();
  s.skipped_steps = state.skipped_steps();
  if constexpr (has_window<State>::value) {
    s.updates = state.updates();
    for (int64_t k : state.window_keys()) s.window_keys.push_back(static_cast<uint64_t>(k));
    s.window_gradients = state.window_gradients();
  }
  return s;
}

inline bool same_start(const TrajectoryStart& a, const TrajectoryStart& b) {
  return a.step == b.step && a.forward_passes == b.forward_passes && a.skipped_steps == b.skipped_steps &&
         a.updates == b.updates && a.window_keys == b.window_keys && a.window_gradients == b.window_gradients;
}

inline bool same_options(const std::vector<TrajectoryOption>& a, const std::vector<TrajectoryOption>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    // Bitwise for reals: a changed eps must be recorded even when it compares equal (−0, NaN).
    if (a[i].name != b[i].name || a[i].is_integer != b[i].is_integer || a[i].integer != b[i].integer ||
        std::memcmp(&a[i].real, &b[i].real, sizeof(double)) != 0) {
      return false;
    }
  }
  return true;
}

inline bool same_bits(const std::vector<double>& a, const std::vector<double>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(double)) == 0);
}

inline std::string describe_tensor(const TrajectoryTensor& t) {
  std::ostringstream out;
  out << c10::toString(t.dtype) << " [";
  for (size_t d = 0; d < t.sizes.size(); ++d) out << (d ? ", " : "") << t.sizes[d];
  out << "]";
  if (!t.name.empty()) out << " '" << t.name << "'";
  return out.str();
}

/// True for an empty file, and for one that holds the start of a trajectory but not its complete
/// begin record (the writer was killed during its first append): such a file records nothing.
inline bool lacks_begin_record(const std::string& bytes) {
  const auto* data = reinterpret_cast<const unsigned char*>(bytes.data());
  const size_t magic = std::min(bytes.size(), sizeof(kTrajectoryMagic));
  if (std::memcmp(data, kTrajectoryMagic, magic) != 0) return false;
  if (bytes.size() < kTrajectoryHeaderSize + 9) return true;
  if (get_le(data + 6, 2) != kTrajectoryVersion) return false;
  const uint64_t length = get_le(data + kTrajectoryHeaderSize, 4);
  return length + 9 > bytes.size() - kTrajectoryHeaderSize ||
         std::all_of(data + kTrajectoryHeaderSize, data + bytes.size(), [](unsigned char c) { return c == 0; });
}

}  // namespace detail

/// Reads and verifies a trajectory file: every record's CRC-32, the order of the records, each
/// step's index and key. A file cut off inside its last record (the writer was killed) reads up to
/// the last complete record and says so in truncated(); a damaged or foreign file throws.
class TrajectoryReader {
 public:
  explicit TrajectoryReader(const std::string& path) : path_(path) {
    std::ifstream in(path, std::ios::binary);
    TORCH_CHECK(in.good(), "zotorch::TrajectoryReader: cannot open '", path, "': ", detail::errno_text(errno));
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    TORCH_CHECK(!in.bad(), "zotorch::TrajectoryReader: reading '", path, "' failed");
    parse(bytes, "'" + path + "'");
  }

  /// Parses an in-memory trajectory (what the file would hold); `what` names it in errors.
  static TrajectoryReader from_bytes(const std::string& bytes, const std::string& what = "the trajectory") {
    TrajectoryReader reader;
    reader.path_ = what;
    reader.parse(bytes, what);
    return reader;
  }

  const std::string& path() const { return path_; }
  /// "FZOO", "MeZO" or "AdaMeZO".
  const std::string& method() const { return method_; }
  const std::vector<TrajectoryTensor>& tensors() const { return tensors_; }
  int64_t num_groups() const { return num_groups_; }
  const TrajectoryStart& start() const { return start_; }
  const std::vector<TrajectoryConfig>& configs() const { return configs_; }
  const std::vector<TrajectoryRecord>& steps() const { return steps_; }
  /// True when the file ends inside a record (cut off); everything before it is intact.
  bool truncated() const { return truncated_; }
  /// Bytes of complete records (with the header); file_bytes() − valid_bytes() were cut off.
  uint64_t valid_bytes() const { return valid_bytes_; }
  uint64_t file_bytes() const { return file_bytes_; }
  /// Byte offset just past each step record, in steps() order (where a writer may cut the file).
  const std::vector<uint64_t>& step_ends() const { return step_ends_; }
  /// The step index the optimizer is at after the last complete record.
  int64_t next_step() const {
    int64_t next = start_.step;
    for (const auto& r : steps_) {
      if (!r.aborted) next = r.step + 1;
    }
    return next;
  }

 private:
  TrajectoryReader() = default;

  void parse(const std::string& bytes, const std::string& what) {
    const auto* data = reinterpret_cast<const unsigned char*>(bytes.data());
    file_bytes_ = bytes.size();
    TORCH_CHECK(bytes.size() >= detail::kTrajectoryHeaderSize &&
                    std::memcmp(data, detail::kTrajectoryMagic, sizeof(detail::kTrajectoryMagic)) == 0,
                "zotorch::TrajectoryReader: ", what, " is not a zotorch trajectory (", bytes.size(),
                " bytes, no ZOTRAJ header); trajectories are written by zotorch::TrajectoryWriter");
    const uint64_t version = detail::get_le(data + 6, 2);
    TORCH_CHECK(version == detail::kTrajectoryVersion, "zotorch::TrajectoryReader: ", what, " has format version ",
                version, ", this zotorch reads version ", detail::kTrajectoryVersion,
                "; replay it with the zotorch that wrote it (docs/trajectory.md \"File format\")");
    size_t at = detail::kTrajectoryHeaderSize;
    valid_bytes_ = at;
    int64_t expected_step = 0;
    std::vector<double> lr, weight_decay;
    size_t zero_tail = bytes.size();  // where the file's final run of zero bytes begins
    while (zero_tail > at && data[zero_tail - 1] == 0) --zero_tail;
    for (size_t index = 0; at < bytes.size(); ++index) {
      const size_t left = bytes.size() - at;
      // A tail of zero bytes is what a file system leaves when the host died before the data
      // reached the disk: the same as a cut.
      if (left < 9 || std::all_of(data + at, data + bytes.size(), [](unsigned char c) { return c == 0; })) {
        truncated_ = true;
        break;
      }
      const uint64_t length = detail::get_le(data + at, 4);
      const std::string where = "record " + std::to_string(index) + " (byte " + std::to_string(at) + ") of " + what;
      TORCH_CHECK(length <= detail::kTrajectoryMaxPayload, "zotorch::TrajectoryReader: ", where,
                  " is corrupted: it claims ", length, " bytes. Replay the log up to the record before it, or use an "
                  "intact copy");
      if (length + 9 > left) {
        truncated_ = true;
        break;
      }
      const unsigned char* payload = data + at + 5;
      uint32_t crc = detail::crc32_update(0, data + at + 4, 1);
      crc = detail::crc32_update(crc, payload, static_cast<size_t>(length));
      const auto stored = static_cast<uint32_t>(detail::get_le(payload + length, 4));
      // The same crash inside a record: the file ends in zeros from a byte of this record on (the
      // file system kept the file's size, not all of its data), so its CRC-32 cannot match.
      if (crc != stored && zero_tail < at + 9 + length) {
        truncated_ = true;
        break;
      }
      TORCH_CHECK(crc == stored, "zotorch::TrajectoryReader: ", where, " is corrupted: its CRC-32 is ", crc,
                  ", the record says ", stored, ". Nothing was replayed; use an intact copy of the log");
      detail::PayloadReader in{payload, static_cast<size_t>(length), 0, where};
      const char type = static_cast<char>(data[at + 4]);
      if (index == 0) {
        TORCH_CHECK(type == 'B', "zotorch::TrajectoryReader: ", where, " should be the log's begin record");
        read_begin(in);
        expected_step = start_.step;
      } else if (type == 'C') {
        read_config(in, at, lr, weight_decay);
      } else if (type == 'S') {
        TORCH_CHECK(!configs_.empty(), "zotorch::TrajectoryReader: ", where, " is a step before any config record");
        read_step(in, at, lr, weight_decay, expected_step);
        step_ends_.push_back(at + 9 + length);
      } else {
        TORCH_CHECK(false, "zotorch::TrajectoryReader: ", where, " has an unknown type ",
                    static_cast<int>(data[at + 4]), (type == 'B' ? " (a second begin record)" : ""));
      }
      in.finish();
      at += static_cast<size_t>(length) + 9;
      valid_bytes_ = at;
    }
    TORCH_CHECK(!method_.empty(), "zotorch::TrajectoryReader: ", what,
                " holds no complete begin record: nothing was recorded before the writer stopped");
  }

  void read_begin(detail::PayloadReader& in) {
    method_ = in.text(64);
    TORCH_CHECK(method_ == "FZOO" || method_ == "MeZO" || method_ == "AdaMeZO", "zotorch::TrajectoryReader: ",
                in.where, " names an unknown method '", method_, "'");
    num_groups_ = static_cast<int64_t>(in.u32());
    TORCH_CHECK(num_groups_ >= 1 && num_groups_ <= detail::kMaxGroups, "zotorch::TrajectoryReader: ", in.where,
                " has ", num_groups_, " param groups");
    const uint64_t count = in.u32();
    TORCH_CHECK(count >= 1 && count <= in.size, "zotorch::TrajectoryReader: ", in.where, " lists ", count, " tensors");
    for (uint64_t i = 0; i < count; ++i) {
      TrajectoryTensor t;
      t.name = in.text(4096);
      const auto dtype = static_cast<int64_t>(in.u8());
      TORCH_CHECK(dtype == static_cast<int64_t>(at::kFloat) || dtype == static_cast<int64_t>(at::kDouble) ||
                      dtype == static_cast<int64_t>(at::kHalf) || dtype == static_cast<int64_t>(at::kBFloat16),
                  "zotorch::TrajectoryReader: ", in.where, " gives tensor ", i, " the dtype code ", dtype);
      t.dtype = static_cast<at::ScalarType>(dtype);
      const uint64_t dims = in.u8();
      TORCH_CHECK(dims <= 64, "zotorch::TrajectoryReader: ", in.where, " gives tensor ", i, " ", dims, " dimensions");
      for (uint64_t d = 0; d < dims; ++d) {
        const int64_t size = in.i64();
        TORCH_CHECK(size >= 0, "zotorch::TrajectoryReader: ", in.where, " gives tensor ", i, " a size ", size);
        t.sizes.push_back(size);
      }
      t.group = static_cast<int64_t>(in.u32());
      TORCH_CHECK(t.group < num_groups_, "zotorch::TrajectoryReader: ", in.where, " puts tensor ", i, " in group ",
                  t.group, " of ", num_groups_);
      tensors_.push_back(std::move(t));
    }
    start_.step = in.i64();
    start_.forward_passes = in.i64();
    start_.skipped_steps = in.i64();
    start_.updates = in.i64();
    TORCH_CHECK(start_.step >= 0 && start_.forward_passes >= 0 && start_.skipped_steps >= 0 &&
                    start_.skipped_steps <= start_.step && start_.updates >= 0 && start_.updates <= start_.step,
                "zotorch::TrajectoryReader: ", in.where, " has inconsistent start counters");
    const uint64_t window = in.u32();
    TORCH_CHECK(window <= static_cast<uint64_t>(detail::kMaxTerms), "zotorch::TrajectoryReader: ", in.where,
                " has a window of ", window);
    for (uint64_t i = 0; i < window; ++i) {
      start_.window_keys.push_back(in.u64());
      start_.window_gradients.push_back(in.f64());
      TORCH_CHECK(std::isfinite(start_.window_gradients.back()), "zotorch::TrajectoryReader: ", in.where,
                  " has a non-finite gradient in its window");
    }
  }

  void read_config(detail::PayloadReader& in, uint64_t offset, std::vector<double>& lr, std::vector<double>& wd) {
    TrajectoryConfig c;
    c.offset = offset;
    const uint64_t count = in.u32();
    TORCH_CHECK(count <= 64, "zotorch::TrajectoryReader: ", in.where, " has ", count, " options");
    for (uint64_t i = 0; i < count; ++i) {
      TrajectoryOption o;
      o.name = in.text(64);
      o.is_integer = in.u8() != 0;
      if (o.is_integer) o.integer = in.i64();
      else o.real = in.f64();
      c.options.push_back(std::move(o));
    }
    lr.assign(static_cast<size_t>(num_groups_), 0);
    wd.assign(static_cast<size_t>(num_groups_), 0);
    for (int64_t g = 0; g < num_groups_; ++g) {
      lr[static_cast<size_t>(g)] = in.f64();
      wd[static_cast<size_t>(g)] = in.f64();
    }
    for (size_t i = 0; i < tensors_.size(); ++i) {
      const uint64_t flag = in.u8();
      TORCH_CHECK(flag <= 1, "zotorch::TrajectoryReader: ", in.where, " has a trained flag ", flag);
      c.trained.push_back(flag == 1);
    }
    // Fail here, not in the middle of a replay, if a method option is missing.
    const char* needed[] = {"eps", "seed", "stochastic_rounding", "on_nonfinite"};
    for (const char* name : needed) c.option(name);
    configs_.push_back(std::move(c));
  }

  void read_step(detail::PayloadReader& in, uint64_t offset, std::vector<double>& lr, std::vector<double>& wd,
                 int64_t& expected_step) {
    TrajectoryRecord r;
    r.offset = offset;
    r.config = configs_.size() - 1;
    r.step = in.i64();
    r.key = in.u64();
    const uint64_t flags = in.u8();
    TORCH_CHECK(flags < 16, "zotorch::TrajectoryReader: ", in.where, " has unknown flags ", flags);
    r.skipped = (flags & detail::kStepSkipped) != 0;
    r.aborted = (flags & detail::kStepAborted) != 0;
    r.forward_passes = static_cast<int64_t>(in.u32());
    const uint64_t count = in.u32();
    TORCH_CHECK(count <= static_cast<uint64_t>(r.forward_passes) && r.forward_passes <= 2 * detail::kMaxTerms + 1,
                "zotorch::TrajectoryReader: ", in.where, " has ", count, " losses for ", r.forward_passes,
                " forward passes");
    for (uint64_t i = 0; i < count; ++i) {
      r.losses.push_back((flags & detail::kStepFloatLosses) ? static_cast<double>(in.f32()) : in.f64());
    }
    if (flags & detail::kStepGroupOptions) {
      for (int64_t g = 0; g < num_groups_; ++g) {
        lr[static_cast<size_t>(g)] = in.f64();
        wd[static_cast<size_t>(g)] = in.f64();
      }
    }
    r.lr = lr;
    r.weight_decay = wd;
    TORCH_CHECK(r.step == expected_step, "zotorch::TrajectoryReader: ", in.where, " records step ", r.step,
                " where step ", expected_step,
                " was due: steps are missing or repeated (two runs appended to one log without resuming it?)");
    const uint64_t seed = static_cast<uint64_t>(configs_.back().option("seed").integer);
    TORCH_CHECK(r.key == step_key(seed, static_cast<uint64_t>(r.step)), "zotorch::TrajectoryReader: ", in.where,
                " has key ", r.key, ", which is not step ", r.step, "'s key under seed ", seed);
    if (!r.aborted) ++expected_step;
    steps_.push_back(std::move(r));
  }

  std::string path_;
  std::string method_;
  int64_t num_groups_ = 0;
  std::vector<TrajectoryTensor> tensors_;
  TrajectoryStart start_;
  std::vector<TrajectoryConfig> configs_;
  std::vector<TrajectoryRecord> steps_;
  std::vector<uint64_t> step_ends_;
  bool truncated_ = false;
  uint64_t valid_bytes_ = 0, file_bytes_ = 0;
};

/// The name of every tensor of `opt`'s param groups, in the flattened order the trajectory
/// records, looked up in `model`'s named parameters (buffers too); "" where none matches.
template <class Optimizer>
std::vector<std::string> parameter_names(const torch::nn::Module& model, const Optimizer& opt) {
  std::unordered_map<const c10::TensorImpl*, std::string> names;
  for (const auto& item : model.named_parameters()) names.emplace(item.value().unsafeGetTensorImpl(), item.key());
  for (const auto& item : model.named_buffers()) names.emplace(item.value().unsafeGetTensorImpl(), item.key());
  std::vector<std::string> out;
  for (const auto& group : opt.param_groups()) {
    for (const auto& p : group.params()) {
      auto found = names.find(p.unsafeGetTensorImpl());
      out.push_back(found == names.end() ? std::string() : found->second);
    }
  }
  return out;
}

/// Records a training run step by step (docs/trajectory.md). Call append(opt) after every
/// opt.step(...), before a scheduler changes the options. Each append writes one record of a few
/// dozen bytes and flushes it, so a killed run loses at most the record being written.
///
/// Opening a log that already holds records continues it: at the first append the writer checks
/// that the optimizer trains the same tensors with the same method, drops the records of steps
/// after the one the optimizer resumes from (a run resumed from a checkpoint repeats them), and
/// appends. A damaged or foreign file is refused and left as it is.
class TrajectoryWriter {
 public:
  /// `sync`: also fsync after every record (survives a host crash, not only a killed process).
  explicit TrajectoryWriter(const std::string& path, bool sync = false) : path_(path), sync_(sync) {
    std::ifstream in(path, std::ios::binary);
    const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (detail::lacks_begin_record(bytes)) {
      // Killed while writing its first record: nothing was recorded, so it starts afresh.
      restart_ = !bytes.empty();
    } else {
      existing_ = std::make_unique<TrajectoryReader>(TrajectoryReader::from_bytes(bytes, "'" + path + "'"));
    }
    file_ = std::fopen(path.c_str(), "ab");
    TORCH_CHECK(file_ != nullptr, "zotorch::TrajectoryWriter: cannot open '", path, "' for appending: ",
                detail::errno_text(errno));
  }
  TrajectoryWriter(const TrajectoryWriter&) = delete;
  TrajectoryWriter& operator=(const TrajectoryWriter&) = delete;
  ~TrajectoryWriter() {
    if (file_ != nullptr) std::fclose(file_);
  }

  /// Names for the tensors, in the flattened param_groups order (see parameter_names()); recorded
  /// in the begin record, so replay tools can match a log to a checkpoint's tensors by name.
  TrajectoryWriter& names(std::vector<std::string> names) {
    names_ = std::move(names);
    return *this;
  }

  /// Records the step `opt` has just taken (opt.last_step()), aborted ones included.
  template <class Optimizer>
  void append(const Optimizer& opt) {
    using Method = detail::TrajectoryMethod<Optimizer>;
    using Options = typename Method::Options;
    const StepReport& report = opt.last_step();
    TORCH_CHECK(report.call > 0, "zotorch::TrajectoryWriter::append: the optimizer has not taken a step yet; call "
                                 "append(opt) after each opt.step(closure)");
    if (optimizer_ == static_cast<const void*>(&opt)) {
      TORCH_CHECK(report.call != last_call_, "zotorch::TrajectoryWriter::append: step ", report.step,
                  " was appended already; call append once after each opt.step(closure)");
      TORCH_CHECK(report.call == last_call_ + 1, "zotorch::TrajectoryWriter::append: ", report.call - last_call_ - 1,
                  " step() call(s) since the last append were not recorded, so the log can no longer reproduce the "
                  "parameters; call append(opt) after every opt.step(closure), also after one that threw");
    } else {
      TORCH_CHECK(optimizer_ == nullptr || report.call == 1, "zotorch::TrajectoryWriter::append: this log follows "
                  "another optimizer object, and this one has taken ", report.call - 1,
                  " step(s) that were not recorded; append from its first step");
    }
    std::vector<TrajectoryTensor> layout;
    std::vector<bool> trained;
    const bool include_frozen = static_cast<const Options&>(opt.param_groups().front().options()).include_frozen();
    for (size_t g = 0; g < opt.param_groups().size(); ++g) {
      for (const auto& p : opt.param_groups()[g].params()) {
        TrajectoryTensor t;
        t.name = layout.size() < names_.size() ? names_[layout.size()] : std::string();
        t.dtype = p.scalar_type();
        t.sizes = p.sizes().vec();
        t.group = static_cast<int64_t>(g);
        layout.push_back(std::move(t));
        trained.push_back(include_frozen || p.requires_grad());
      }
    }
    TORCH_CHECK(names_.empty() || names_.size() == layout.size(), "zotorch::TrajectoryWriter: ", names_.size(),
                " names were given for ", layout.size(), " tensors");
    if (optimizer_ == nullptr) {
      begin<Optimizer>(opt, report, layout);
      next_step_ = report.step;
    }
    TORCH_CHECK(report.step == next_step_, "zotorch::TrajectoryWriter::append: the optimizer took step ", report.step,
                " but the log is at step ", next_step_, "; a log follows one run (resumed runs continue it by opening ",
                "it anew after loading their checkpoint)");
    TORCH_CHECK(same_layout(layout, layout_), "zotorch::TrajectoryWriter::append: the optimizer's parameters (count, ",
                "shapes, dtypes, groups) changed since the log began; start a new log for the new parameters");
    optimizer_ = &opt;
    last_call_ = report.call;

    std::string out;
    const auto shared = Method::shared(static_cast<const Options&>(opt.param_groups().front().options()));
    const bool new_config = !config_written_ || !detail::same_options(shared, options_) || trained != trained_;
    if (new_config) {
      detail::PayloadWriter c;
      c.u32(shared.size());
      for (const auto& o : shared) {
        c.text(o.name);
        c.u8(o.is_integer ? 1 : 0);
        if (o.is_integer) c.u64(static_cast<uint64_t>(o.integer));
        else c.f64(o.real);
      }
      for (size_t g = 0; g < report.lr.size(); ++g) {
        c.f64(report.lr[g]);
        c.f64(report.weight_decay[g]);
      }
      for (bool t : trained) c.u8(t ? 1 : 0);
      out += detail::frame_record('C', c.bytes);
      options_ = shared;
      trained_ = trained;
      lr_ = report.lr;
      weight_decay_ = report.weight_decay;
      config_written_ = true;
    }
    detail::PayloadWriter s;
    s.u64(static_cast<uint64_t>(report.step));
    s.u64(report.key);
    const bool group_options = !detail::same_bits(report.lr, lr_) || !detail::same_bits(report.weight_decay, weight_decay_);
    // Losses of a float32 closure are stored in 4 bytes: the conversion back is exact.
    const bool float_losses = std::all_of(report.losses.begin(), report.losses.end(), [](double v) {
      return std::isnan(v) || static_cast<double>(static_cast<float>(v)) == v;
    });
    uint64_t flags = 0;
    if (report.skipped) flags |= detail::kStepSkipped;
    if (report.aborted) flags |= detail::kStepAborted;
    if (float_losses) flags |= detail::kStepFloatLosses;
    if (group_options) flags |= detail::kStepGroupOptions;
    s.u8(flags);
    s.u32(static_cast<uint64_t>(report.forward_passes));
    s.u32(report.losses.size());
    for (double v : report.losses) {
      if (float_losses) s.f32(static_cast<float>(v));
      else s.f64(v);
    }
    if (group_options) {
      for (size_t g = 0; g < report.lr.size(); ++g) {
        s.f64(report.lr[g]);
        s.f64(report.weight_decay[g]);
      }
      lr_ = report.lr;
      weight_decay_ = report.weight_decay;
    }
    out += detail::frame_record('S', s.bytes);
    write(out);
    ++records_;
    if (!report.aborted) next_step_ = report.step + 1;
  }

  const std::string& path() const { return path_; }
  /// Step records appended by this writer.
  int64_t records() const { return records_; }
  /// Bytes of the file.
  uint64_t bytes() const { return bytes_; }

 private:
  static bool same_layout(const std::vector<TrajectoryTensor>& a, const std::vector<TrajectoryTensor>& b) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i) {
      if (a[i].dtype != b[i].dtype || a[i].sizes != b[i].sizes || a[i].group != b[i].group) return false;
    }
    return true;
  }

  /// First append: a new log gets its begin record; an existing one is checked and cut back to
  /// the step the optimizer resumes from. Nothing is written before every check has passed.
  template <class Optimizer>
  void begin(const Optimizer& opt, const StepReport& report, const std::vector<TrajectoryTensor>& layout) {
    using Method = detail::TrajectoryMethod<Optimizer>;
    const TrajectoryStart start = detail::start_of(opt.state_before_last_step());
    layout_ = layout;
    if (existing_ == nullptr) {
      if (restart_) cut_to(0);
      detail::PayloadWriter b;
      b.text(Method::kName);
      b.u32(opt.param_groups().size());
      b.u32(layout.size());
      for (const auto& t : layout) {
        b.text(t.name);
        b.u8(static_cast<uint64_t>(t.dtype));
        b.u8(t.sizes.size());
        for (int64_t s : t.sizes) b.u64(static_cast<uint64_t>(s));
        b.u32(static_cast<uint64_t>(t.group));
      }
      b.u64(static_cast<uint64_t>(start.step));
      b.u64(static_cast<uint64_t>(start.forward_passes));
      b.u64(static_cast<uint64_t>(start.skipped_steps));
      b.u64(static_cast<uint64_t>(start.updates));
      b.u32(start.window_keys.size());
      for (size_t i = 0; i < start.window_keys.size(); ++i) {
        b.u64(start.window_keys[i]);
        b.f64(start.window_gradients[i]);
      }
      unsigned char header[detail::kTrajectoryHeaderSize];
      std::memcpy(header, detail::kTrajectoryMagic, sizeof(detail::kTrajectoryMagic));
      detail::put_le(header + 6, detail::kTrajectoryVersion, 2);
      write(std::string(reinterpret_cast<const char*>(header), sizeof(header)) + detail::frame_record('B', b.bytes));
      return;
    }
    const TrajectoryReader& log = *existing_;
    TORCH_CHECK(log.method() == Method::kName, "zotorch::TrajectoryWriter: '", path_, "' records a ", log.method(),
                " run; this optimizer is ", Method::kName, ". Nothing was written; use another file");
    TORCH_CHECK(same_layout(log.tensors(), layout), "zotorch::TrajectoryWriter: '", path_, "' records ",
                log.tensors().size(), " tensors (first: ", detail::describe_tensor(log.tensors().front()),
                "); this optimizer has ", layout.size(), " (first: ", detail::describe_tensor(layout.front()),
                ") or other shapes, dtypes or groups. Nothing was written; it is another model's log");
    // Keep the records up to the last completed step before the one being appended; later ones
    // belong to a run that went on past the checkpoint this one resumed from.
    uint64_t keep = 0;
    const int64_t resume = report.step;
    if (resume == log.start().step) {
      TORCH_CHECK(detail::same_start(start, log.start()), "zotorch::TrajectoryWriter: '", path_,
                  "' starts at step ", log.start().step, " from another optimizer state than this one's; use another file");
      keep = log.steps().empty() ? log.valid_bytes() : log.steps().front().offset;
      // The config records before the first step go too: a fresh one follows.
      if (!log.configs().empty()) keep = std::min<uint64_t>(keep, log.configs().front().offset);
    } else {
      for (size_t i = 0; i < log.steps().size(); ++i) {
        const auto& r = log.steps()[i];
        if (!r.aborted && r.step == resume - 1) keep = log.step_ends()[i];
      }
      TORCH_CHECK(keep > 0, "zotorch::TrajectoryWriter: '", path_, "' holds steps ", log.start().step, " to ",
                  log.next_step() - 1, ", but the optimizer continues at step ", resume,
                  ": the log cannot join it. Resume from a checkpoint saved during the logged run, or start a new log");
    }
    if (keep < log.file_bytes()) {
      int64_t dropped = 0;
      for (const auto& r : log.steps()) dropped += r.offset >= keep ? 1 : 0;
      if (dropped > 0) {
        TORCH_WARN("zotorch::TrajectoryWriter: '", path_, "' continues at step ", resume, "; dropped ", dropped,
                   " record(s) of the run that went on past the checkpoint this run resumed from");
      }
      cut_to(keep);
    }
    bytes_ = keep;
    existing_.reset();
  }

  void cut_to(uint64_t size) {
    std::fclose(file_);
    file_ = nullptr;
    std::error_code error;
    std::filesystem::resize_file(path_, size, error);
    TORCH_CHECK(!error, "zotorch::TrajectoryWriter: cannot cut '", path_, "' back to ", size, " bytes: ", error.message());
    file_ = std::fopen(path_.c_str(), "ab");
    TORCH_CHECK(file_ != nullptr, "zotorch::TrajectoryWriter: cannot reopen '", path_, "': ", detail::errno_text(errno));
  }

  void write(const std::string& bytes) {
    TORCH_CHECK(std::fwrite(bytes.data(), 1, bytes.size(), file_) == bytes.size() && std::fflush(file_) == 0,
                "zotorch::TrajectoryWriter: writing '", path_, "' failed: ", detail::errno_text(errno));
#if !defined(_WIN32)
    if (sync_) TORCH_CHECK(::fsync(fileno(file_)) == 0, "zotorch::TrajectoryWriter: fsync of '", path_, "' failed");
#endif
    bytes_ += bytes.size();
  }

  std::string path_;
  bool sync_ = false;
  std::FILE* file_ = nullptr;
  std::unique_ptr<TrajectoryReader> existing_;
  bool restart_ = false;
  std::vector<std::string> names_;
  const void* optimizer_ = nullptr;
  int64_t last_call_ = 0;
  int64_t next_step_ = 0;
  std::vector<TrajectoryTensor> layout_;
  bool config_written_ = false;
  std::vector<TrajectoryOption> options_;
  std::vector<bool> trained_;
  std::vector<double> lr_, weight_decay_;
  int64_t records_ = 0;
  uint64_t bytes_ = 0;
};

namespace detail {

/// Thrown by the replay closure where the recorded closure threw.
struct ReplayedClosureError {};

template <class Optimizer>
void replay_records(const TrajectoryReader& log, const std::vector<at::Tensor>& params, int64_t first_step,
                    int64_t last_step) {
  using Method = TrajectoryMethod<Optimizer>;
  using Options = typename Method::Options;
  const char* name = "zotorch::replay";
  const auto& tensors = log.tensors();
  // Everything that can be checked is checked before the first sweep: the parameters stay untouched.
  TORCH_CHECK(params.size() == tensors.size(), name, ": '", log.path(), "' was recorded over ", tensors.size(),
              " tensors, ", params.size(), " were given; pass the tensors of the optimizer's param groups, flattened ",
              "in order (the names are in TrajectoryReader::tensors())");
  for (size_t i = 0; i < params.size(); ++i) {
    const auto& p = params[i];
    TORCH_CHECK(p.defined() && p.scalar_type() == tensors[i].dtype && p.sizes().vec() == tensors[i].sizes, name,
                ": tensor ", i, " is ", (p.defined() ? describe_tensor({"", p.scalar_type(), p.sizes().vec(), 0}) : "undefined"),
                ", the log recorded ", describe_tensor(tensors[i]), "; replay onto the model the log was recorded on");
  }
  auto options_for = [&](const TrajectoryRecord& r, size_t g) {
    Options o;
    Method::apply(o, log.configs()[r.config]);
    o.lr(r.lr[g]);
    o.weight_decay(r.weight_decay[g]);
    return o;
  };
  for (const auto& r : log.steps()) {
    for (size_t g = 0; g < r.lr.size(); ++g) {
      try {
        ReplayAccess::check_options<Optimizer>(options_for(r, g), g);
      } catch (const c10::Error& e) {
        TORCH_CHECK(false, name, ": the options recorded for step ", r.step, " are invalid: ", e.what_without_backtrace());
      }
    }
  }
  if (log.steps().empty()) return;
  // Aliases share the tensors' storage; their requires_grad says which ones a step trains.
  std::vector<at::Tensor> aliases;
  for (const auto& p : params) aliases.push_back(p.detach());
  auto set_trained = [&](const TrajectoryConfig& c) {
    for (size_t i = 0; i < aliases.size(); ++i) {
      if (aliases[i].requires_grad() != c.trained[i]) aliases[i].requires_grad_(c.trained[i]);
    }
  };
  const TrajectoryRecord& first = log.steps().front();
  set_trained(log.configs()[first.config]);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  for (int64_t g = 0; g < log.num_groups(); ++g) {
    std::vector<at::Tensor> members;
    for (size_t i = 0; i < aliases.size(); ++i) {
      if (tensors[i].group == g) members.push_back(aliases[i]);
    }
    groups.emplace_back(members, std::make_unique<Options>(options_for(first, static_cast<size_t>(g))));
  }
  Optimizer opt(groups, options_for(first, 0));
  ReplayAccess::set_start(opt, log.start());
  size_t config = first.config;
  for (const auto& r : log.steps()) {
    if (r.step > last_step) break;
    if (r.config != config) {
      config = r.config;
      set_trained(log.configs()[config]);
    }
    for (size_t g = 0; g < opt.param_groups().size(); ++g) {
      static_cast<Options&>(opt.param_groups()[g].options()) = options_for(r, g);
    }
    // Steps before the range only rebuild the optimizer state (AdaMeZO's window, the counters).
    ReplayAccess::apply_sweeps(opt, r.step >= first_step);
    int64_t calls = 0;
    auto closure = [&]() -> at::Tensor {
      ++calls;
      if (r.aborted && calls == r.forward_passes && static_cast<int64_t>(r.losses.size()) < r.forward_passes) {
        throw ReplayedClosureError{};
      }
      const double loss = calls <= static_cast<int64_t>(r.losses.size()) ? r.losses[static_cast<size_t>(calls - 1)] : 0.0;
      return at::scalar_tensor(loss, at::kDouble);
    };
    bool threw = false;
    try {
      opt.step(closure);
    } catch (const ReplayedClosureError&) {
      threw = true;
    } catch (const c10::Error&) {
      if (!r.aborted) {
        ReplayAccess::apply_sweeps(opt, true);
        throw;
      }
      threw = true;
    }
    const StepReport& done = opt.last_step();
    TORCH_CHECK(threw == r.aborted && done.key == r.key && done.skipped == r.skipped &&
                    done.forward_passes == r.forward_passes,
                name, ": step ", r.step, " replayed differently from the record (", (threw ? "aborted" : "completed"),
                ", skipped ", done.skipped, ", ", done.forward_passes, " forward passes; recorded: ",
                (r.aborted ? "aborted" : "completed"), ", skipped ", r.skipped, ", ", r.forward_passes,
                "). The log was written by a zotorch whose methods differ from this one's");
  }
}

}  // namespace detail

/// Applies the recorded steps of `log` with first_step <= step <= last_step to `params` in place: the
/// tensors of the recorded optimizer's param groups, flattened in order, holding their values from
/// before first_step (the start of the log: the weights training began from). Steps before first_step
/// only rebuild the optimizer's state. On the backend the log was recorded on, the result is bit for
/// bit the trained parameters (docs/trajectory.md "Exactness"). A mismatched log is refused before
/// any parameter changes.
inline void replay(const TrajectoryReader& log, const std::vector<at::Tensor>& params, int64_t first_step,
                   int64_t last_step) {
  TORCH_CHECK(first_step <= last_step, "zotorch::replay: first_step (", first_step, ") must not exceed last_step (",
              last_step, ")");
  TORCH_CHECK(first_step >= log.start().step || first_step == std::numeric_limits<int64_t>::min(), "zotorch::replay: '",
              log.path(), "' starts at step ", log.start().step, "; first_step ", first_step, " is before it");
  torch::NoGradGuard no_grad;
  if (log.method() == "FZOO") detail::replay_records<FZOO>(log, params, first_step, last_step);
  else if (log.method() == "MeZO") detail::replay_records<MeZO>(log, params, first_step, last_step);
  else detail::replay_records<AdaMeZO>(log, params, first_step, last_step);
}

/// Reads the trajectory at `path` and replays its steps first_step..last_step (see above). A damaged
/// or foreign file is refused before any parameter changes; a file cut off mid-record replays its
/// complete records and warns where it stopped.
inline void replay(const std::string& path, const std::vector<at::Tensor>& params, int64_t first_step,
                   int64_t last_step) {
  const TrajectoryReader log(path);
  if (log.truncated()) {
    TORCH_WARN("zotorch::replay: '", path, "' is cut off at byte ", log.valid_bytes(), " of ", log.file_bytes(),
               " (the writer stopped mid-record); replaying its ", log.steps().size(), " complete step records, up to step ",
               log.next_step() - 1);
  }
  replay(log, params, first_step, last_step);
}

/// Applies every recorded step to `params` (see the range overload).
inline void replay(const std::string& path, const std::vector<at::Tensor>& params) {
  replay(path, params, std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max());
}

}  // namespace zotorch
