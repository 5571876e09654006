// replay: turns a recorded trajectory (zotorch::TrajectoryWriter, e.g. finetune_classifier
// --trajectory) and a safetensors checkpoint of the weights training started from into the
// fine-tuned checkpoint, without a forward pass; or lists the log's records for an audit.
// docs/trajectory.md describes the log and why the result is bit for bit the trained weights.
#include "../common/cli.h"
#include "../common/safetensors.h"

#include <zotorch/trajectory.h>

#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <limits>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

namespace fs = std::filesystem;
using namespace zotorch::examples;

namespace {

constexpr const char* kProgram = "replay";

struct Args {
  std::string trajectory, base, out;
  int64_t first_step = std::numeric_limits<int64_t>::min(), last_step = std::numeric_limits<int64_t>::max();
  int64_t threads = 0;
  bool list = false;
};

Args parse_args(int argc, char** argv) {
  Args a;
  CLI::App app("Applies a zotorch trajectory (the log of a fine-tune's steps) to a safetensors checkpoint of the\n"
               "weights training started from and writes the fine-tuned checkpoint: every tensor of --base, the\n"
               "logged ones replaced by their trained values, bit for bit what training produced on the same\n"
               "backend. The log's tensors are found in --base by the names recorded in the log. With --list,\n"
               "prints the log's records instead. docs/trajectory.md explains the log.",
               kProgram);
  configure_cli(app);
  app.add_option("trajectory", a.trajectory, "the log (finetune_classifier/finetune_lm --trajectory)")
      ->option_text("LOG")->required();
  app.add_option("--base", a.base, "the weights the logged steps start from (e.g. base.safetensors of the run)")
      ->option_text("FILE");
  app.add_option("--out", a.out, "where to write the fine-tuned checkpoint")->option_text("FILE");
  app.add_option("--first-step", a.first_step, "replay from this step on; --base must then hold the weights before it "
                 "(earlier steps only rebuild the optimizer's state)")->default_str("the log's first");
  app.add_option("--last-step", a.last_step, "replay up to this step, included")->default_str("the log's last");
  app.add_option("--threads", a.threads, "intra-op threads")->default_str("LibTorch's choice");
  app.add_flag("--list", a.list, "print the method, tensors and every record (step, key, skipped/aborted, losses, lr)");
  parse_or_exit(app, argc, argv);
  if (!a.list && (a.base.empty() || a.out.empty())) usage_error(app, "--base and --out are required (or --list)");
  if (a.first_step > a.last_step) {
    usage_error(app, "--first-step " + std::to_string(a.first_step) + " is after --last-step " + std::to_string(a.last_step));
  }
  return a;
}

std::string shape_text(const std::vector<int64_t>& sizes) {
  std::string s = "[";
  for (size_t d = 0; d < sizes.size(); ++d) s += (d ? ", " : "") + std::to_string(sizes[d]);
  return s + "]";
}

std::string number(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.9g", v);
  return b;
}

std::string bytes_text(uint64_t n) {
  char b[48];
  if (n < 10 * 1024) std::snprintf(b, sizeof b, "%" PRIu64 " B", n);
  else if (n < 10 * 1024 * 1024) std::snprintf(b, sizeof b, "%" PRIu64 " B (%.1f KiB)", n, static_cast<double>(n) / 1024);
  else std::snprintf(b, sizeof b, "%" PRIu64 " B (%.1f MiB)", n, static_cast<double>(n) / (1024 * 1024));
  return b;
}

void describe_log(const zotorch::TrajectoryReader& log) {
  const auto& steps = log.steps();
  int64_t skipped = 0, aborted = 0;
  for (const auto& r : steps) {
    skipped += r.skipped ? 1 : 0;
    aborted += r.aborted ? 1 : 0;
  }
  std::cout << log.path() << ": " << log.method() << ", " << log.tensors().size() << " tensors in " << log.num_groups()
            << " param group(s), " << steps.size() << " step records (" << skipped << " skipped, " << aborted
            << " aborted), steps " << log.start().step << " to " << log.next_step() - 1 << ", "
            << bytes_text(log.file_bytes()) << "\n";
  if (log.truncated()) {
    std::cout << "  cut off at byte " << log.valid_bytes() << " of " << log.file_bytes()
              << ": the writer stopped mid-record; the complete records before it are listed\n";
  }
}

void list_log(const zotorch::TrajectoryReader& log) {
  describe_log(log);
  const auto& first = log.configs().empty() ? std::vector<bool>() : log.configs().front().trained;
  for (size_t i = 0; i < log.tensors().size(); ++i) {
    const auto& t = log.tensors()[i];
    std::cout << "  tensor " << i << " " << (t.name.empty() ? "(no name)" : t.name) << " " << c10::toString(t.dtype)
              << " " << shape_text(t.sizes) << " group " << t.group
              << (i < first.size() && !first[i] ? " (frozen at the first step)" : "") << "\n";
  }
  for (size_t c = 0; c < log.configs().size(); ++c) {
    std::cout << "  config " << c << ":";
    for (const auto& o : log.configs()[c].options) {
      std::cout << " " << o.name << "=" << (o.is_integer ? std::to_string(o.integer) : number(o.real));
    }
    std::cout << "\n";
  }
  std::cout << "step,key,status,forward_passes,losses,lr,weight_decay,config\n";
  for (const auto& r : log.steps()) {
    char key[24];
    std::snprintf(key, sizeof key, "%016" PRIx64, r.key);
    std::string losses, lr, wd;
    for (double v : r.losses) losses += (losses.empty() ? "" : " ") + number(v);
    for (double v : r.lr) lr += (lr.empty() ? "" : " ") + number(v);
    for (double v : r.weight_decay) wd += (wd.empty() ? "" : " ") + number(v);
    std::cout << r.step << "," << key << "," << (r.aborted ? "aborted" : r.skipped ? "skipped" : "applied") << ","
              << r.forward_passes << "," << losses << "," << lr << "," << wd << "," << r.config << "\n";
  }
}

}  // namespace

int main(int argc, char** argv) try {
  const Args a = parse_args(argc, argv);
  if (a.threads > 0) at::set_num_threads(static_cast<int>(a.threads));
  const zotorch::TrajectoryReader log(a.trajectory);
  if (a.list) {
    list_log(log);
    return 0;
  }
  describe_log(log);

  // The log's tensors by the names it recorded, in its order (the optimizer's flattened param groups).
  Json metadata = Json::object();
  NamedTensors base = load_safetensors(a.base, &metadata);
  std::unordered_map<std::string, size_t> index;
  for (size_t i = 0; i < base.size(); ++i) index.emplace(base[i].first, i);
  std::unordered_map<std::string, size_t> seen;
  std::vector<at::Tensor> params;
  uint64_t trained_bytes = 0;
  for (size_t i = 0; i < log.tensors().size(); ++i) {
    const auto& t = log.tensors()[i];
    TORCH_CHECK(!t.name.empty(), a.trajectory, " records no name for tensor ", i, " (",
                c10::toString(t.dtype), " ", shape_text(t.sizes), "); it was written without TrajectoryWriter::names(), ",
                "so its tensors cannot be found in a checkpoint. Replay it from code with zotorch::replay and the "
                "optimizer's parameters in order");
    const auto [dup, fresh] = seen.emplace(t.name, i);
    TORCH_CHECK(fresh, a.trajectory, " names tensors ", dup->second, " and ", i, " both '", t.name, "'");
    const auto found = index.find(t.name);
    TORCH_CHECK(found != index.end(), a.base, " has no tensor '", t.name, "', which ", a.trajectory,
                " trains (tensor ", i, " of ", log.tensors().size(), "); pass the checkpoint the logged run started from");
    const at::Tensor& p = base[found->second].second;
    TORCH_CHECK(p.scalar_type() == t.dtype && p.sizes().vec() == t.sizes, "'", t.name, "' is ",
                c10::toString(p.scalar_type()), " ", shape_text(p.sizes().vec()), " in ", a.base, " but ",
                c10::toString(t.dtype), " ", shape_text(t.sizes), " in ", a.trajectory,
                "; pass the checkpoint the logged run started from");
    params.push_back(p);
    trained_bytes += static_cast<uint64_t>(p.numel()) * p.element_size();
  }

  int64_t replayed = 0;
  for (const auto& r : log.steps()) replayed += (r.step >= a.first_step && r.step <= a.last_step) ? 1 : 0;
  const auto started = std::chrono::steady_clock::now();
  zotorch::replay(log, params, a.first_step, a.last_step);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();

  // The step the weights are at: the one after the last applied record.
  int64_t at_step = a.first_step == std::numeric_limits<int64_t>::min() ? log.start().step : a.first_step;
  for (const auto& r : log.steps()) {
    if (!r.aborted && r.step >= a.first_step && r.step <= a.last_step) at_step = r.step + 1;
  }
  std::map<std::string, std::string> out_metadata;
  for (const auto& [k, v] : metadata.items()) {
    if (v.is_string()) out_metadata[k] = v.get<std::string>();
  }
  out_metadata["step"] = std::to_string(at_step);
  if (fs::path(a.out).has_parent_path()) fs::create_directories(fs::path(a.out).parent_path());
  save_safetensors(a.out, base, out_metadata);

  char line[512];
  std::snprintf(line, sizeof line,
                "  log %s for %lld replayed step records; logged tensors %s (%zu of %zu tensors in %s)\n"
                "  replay %.3f s, %.2f steps/s; weights now at step %lld\n  wrote %s (%s)",
                bytes_text(log.file_bytes()).c_str(), static_cast<long long>(replayed), bytes_text(trained_bytes).c_str(),
                params.size(), base.size(), a.base.c_str(), seconds, static_cast<double>(replayed) / std::max(seconds, 1e-9),
                static_cast<long long>(at_step), a.out.c_str(), bytes_text(fs::file_size(a.out)).c_str());
  std::cout << line << std::endl;
  return 0;
} catch (const c10::Error& e) {
  std::cerr << kProgram << ": " << e.what_without_backtrace() << std::endl;
  return 1;
} catch (const std::exception& e) {
  std::cerr << kProgram << ": " << e.what() << std::endl;
  return 1;
}
