// finetune_lm: prompt-based fine-tuning of a decoder LLM (a Llama-architecture directory such as
// SmolLM2-135M) with FZOO, MeZO or AdaMeZO (forward passes only) or Adam (backprop baseline).
// --objective classify: each example becomes "<template with the text>" and the label is the
// label word the model would say next; the loss is the cross-entropy over the label words' logits
// at the answer position. --objective lm: next-token cross-entropy on the text, reported as
// perplexity. docs/examples.md "finetune_lm" explains every flag.
#include "../common/bpe.h"
#include "../common/cli.h"
#include "../common/files.h"
#include "../common/harness.h"
#include "../common/learning_rates.h"
#include "../common/llama.h"
#include "../common/tsv.h"

#include <zotorch/zotorch.h>

#include <torch/cuda.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <numeric>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using namespace zotorch::examples;

namespace {

constexpr const char* kProgram = "finetune_lm";

struct Args {
  std::string model, train, dev, test, out = "out/finetune_lm";
  std::string prompt_template = "{text} It was", label_words;
  std::string optimizer = "fzoo", mode = "full", objective = "classify", dtype = "float32", device = "cpu";
  int64_t budget = 1000, batch = 16, seed = 0, num_perturbations = 8, window = 10, threads = 0;
  int64_t lora_rank = 8, max_length = 64, eval_every = -1, eval_batch = 32, max_dev = 0, max_test = 0;
  double lr = -1, eps = -1, weight_decay = 0, lora_alpha = 16;
  std::string trajectory;
  bool resume = false, quiet = false;
};

Args parse_args(int argc, char** argv) {
  Args a;
  CLI::App app("Fine-tunes a decoder LLM directory (config.json, model.safetensors or model.bf16.safetensors,\n"
               "tokenizer.json; Llama architecture, e.g. SmolLM2-135M) prompt-based on text<TAB>label files, or\n"
               "as a language model on text lines, with FZOO, MeZO or AdaMeZO (forward passes only) or Adam\n"
               "(backprop). Writes to --out: metrics.csv, summary.json, trained.safetensors (the best-on-dev\n"
               "trainable tensors) and checkpoint.ckpt. docs/examples.md \"finetune_lm\" explains every option.",
               kProgram);
  configure_cli(app);
  bool print_default_lr = false;
  app.add_option("--model", a.model, "model directory")->option_text("DIR");
  app.add_option("--train", a.train, "training examples, text<TAB>label (--objective lm: also plain text lines)")
      ->option_text("TSV");
  app.add_option("--dev", a.dev, "dev examples: evaluation and the best-checkpoint choice")->option_text("TSV");
  app.add_option("--test", a.test, "test examples, evaluated once at the end")->option_text("TSV");
  app.add_option("--template", a.prompt_template, "the prompt; {text} is replaced by the example's text and the label "
                 "word is the model's next token");
  app.add_option("--label-words", a.label_words, "the word the model answers with for each label; a word without a "
                 "leading space gets one (default: positive/pos=great, negative/neg=terrible)")
      ->option_text("label=word,...")->default_str("");
  app.add_option("--optimizer", a.optimizer, "method; adam is the backprop baseline and counts 3 forward-pass "
                 "equivalents per step")->check(CLI::IsMember({"fzoo", "mezo", "adamezo", "adam"}));
  app.add_option("--mode", a.mode, "what trains: every weight; LoRA adapters on q_proj and v_proj of every layer "
                 "(base frozen); every weight except the tied token embedding / LM head")
      ->check(CLI::IsMember({"full", "lora", "head-free"}));
  app.add_option("--lr", a.lr, "learning rate (default: per optimizer and mode, see --print-default-lr)")
      ->check(positive())->default_str("");
  app.add_option("--budget-forward-passes", a.budget, "stop after N forward passes (0 = evaluate the untrained "
                 "model: zero-shot)")->check(non_negative());
  app.add_option("--batch", a.batch, "examples per step")->check(positive());
  app.add_option("--seed", a.seed, "seed of batches, LoRA init and directions");
  app.add_option("--device", a.device, "device")->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--dtype", a.dtype, "parameter and activation dtype (bfloat16 loads model.bf16.safetensors when "
                 "present)")->check(CLI::IsMember({"float32", "bfloat16"}));
  app.add_option("--threads", a.threads, "intra-op threads")->default_str("LibTorch's choice");
  app.add_option("--out", a.out, "output directory")->option_text("DIR");
  app.add_flag("--print-default-lr", print_default_lr, "print the default learning rate of --optimizer and --mode and exit");
  const std::string more = "More options";
  app.add_option("--objective", a.objective, "classify: label words at the answer position; lm: next-token "
                 "cross-entropy on the text (perplexity)")->check(CLI::IsMember({"classify", "lm"}))->group(more);
  app.add_option("--eps", a.eps, "perturbation scale (default: per optimizer and mode)")
      ->check(positive())->default_str("")->group(more);
  app.add_option("--num-perturbations", a.num_perturbations, "FZOO's N")->check(positive())->group(more);
  app.add_option("--window", a.window, "AdaMeZO's window h")->check(positive())->group(more);
  app.add_option("--weight-decay", a.weight_decay, "decoupled weight decay")->check(non_negative())->group(more);
  app.add_option("--lora-rank", a.lora_rank, "LoRA rank r")->check(positive())->group(more);
  app.add_option("--lora-alpha", a.lora_alpha, "LoRA alpha: the update is B·A·alpha/r")->group(more);
  app.add_option("--max-length", a.max_length, "tokens per example (classify: the prompt's last tokens are kept; "
                 "lm: the first)")->check(at_least(2))->group(more);
  app.add_option("--eval-every", a.eval_every, "evaluate on dev every N forward passes")->default_str("budget/10")->group(more);
  app.add_option("--eval-batch", a.eval_batch, "examples per evaluation batch")->check(positive())->group(more);
  app.add_option("--max-dev-examples", a.max_dev, "use only the first N dev examples (0: all)")->check(non_negative())->group(more);
  app.add_option("--max-test-examples", a.max_test, "use only the first N test examples (0: all)")->check(non_negative())->group(more);
  app.add_flag("--resume", a.resume, "continue from DIR/checkpoint.ckpt if it exists")->group(more);
  app.add_option("--trajectory", a.trajectory, "record every step in this file (fzoo, mezo, adamezo), and the "
                 "trainable tensors as DIR/base.safetensors where it begins and DIR/final.safetensors after the "
                 "last step; examples/replay turns base + log into final (docs/trajectory.md). --resume continues "
                 "the log")->option_text("LOG");
  app.add_flag("--quiet", a.quiet, "print only the final result")->group(more);
  parse_or_exit(app, argc, argv);
  if (!a.trajectory.empty() && a.optimizer == "adam") {
    usage_error(app, "--trajectory records zeroth-order steps (fzoo, mezo, adamezo); --optimizer adam has none");
  }

  if (print_default_lr) {
    std::cout << default_lm_rates(a.optimizer, a.mode).lr << std::endl;
    std::exit(0);
  }
  if (a.model.empty() || a.train.empty() || a.dev.empty() || a.test.empty()) {
    usage_error(app, "--model, --train, --dev and --test are required");
  }
  if (a.objective == "classify" && a.prompt_template.find("{text}") == std::string::npos) {
    usage_error(app, "--template must contain {text}, got \"" + a.prompt_template + "\"");
  }
  const DefaultRates d = default_lm_rates(a.optimizer, a.mode);
  if (a.lr < 0) a.lr = d.lr;
  if (a.eps < 0) a.eps = d.eps;
  return a;
}

/// Tokenised examples: classify keeps the label index, lm only the ids.
struct Dataset {
  std::vector<std::vector<int64_t>> ids;
  std::vector<int64_t> labels;
  size_t size() const { return ids.size(); }
  std::vector<size_t> lengths() const {
    std::vector<size_t> out;
    for (const auto& r : ids) out.push_back(r.size());
    return out;
  }
};

std::string fill_template(const std::string& tmpl, const std::string& text) {
  std::string p = tmpl;
  const auto at = p.find("{text}");
  p.replace(at, 6, text);
  return p;
}

/// Text lines of a file for --objective lm: the text column of text<TAB>label lines, or whole lines.
std::vector<std::string> read_text_lines(const std::string& path) {
  std::ifstream in(path);
  TORCH_CHECK(in, kProgram, ": cannot open ", path, "; scripts/fetch-data.sh makes data/debian-descriptions/{train,dev,test}.tsv");
  std::vector<std::string> lines;
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    const size_t tab = line.rfind('\t');
    if (tab != std::string::npos) line.resize(tab);
    if (line.find_first_not_of(" \t") != std::string::npos) lines.push_back(line);
  }
  TORCH_CHECK(!lines.empty(), kProgram, ": ", path, " has no text lines");
  return lines;
}

/// LoRA on a frozen Linear weight W (in the model): W = W0 + B·A·alpha/r, merged into W before each
/// forward. The forward then costs what the base model's does and needs nothing from the model
/// class; the trained tensors are A [r, in] and B [out, r] (B starts at zero: the untrained model
/// is the pretrained one). For Adam, W itself requires grad and after_backward turns dL/dW into
/// dL/dA = s·Bᵀ·dL/dW and dL/dB = s·dL/dW·Aᵀ.
struct LoraSite {
  at::Tensor weight, base, A, B;
};

struct LoraAdapters {
  std::vector<LoraSite> sites;
  double scale = 1;
  void merge() {
    torch::NoGradGuard no_grad;
    for (auto& s : sites) {
      s.weight.copy_(s.base.to(at::kFloat).addmm(s.B.to(at::kFloat), s.A.to(at::kFloat), 1.0, scale));
    }
  }
  void gradients_from_merged() {
    torch::NoGradGuard no_grad;
    for (auto& s : sites) {
      if (!s.weight.grad().defined()) continue;
      const at::Tensor g = s.weight.grad().to(at::kFloat);
      s.A.mutable_grad() = (s.B.to(at::kFloat).t().mm(g) * scale).to(s.A.scalar_type());
      s.B.mutable_grad() = (g.mm(s.A.to(at::kFloat).t()) * scale).to(s.B.scalar_type());
      s.weight.mutable_grad() = at::Tensor();
    }
  }
};

/// The model and how a batch of examples becomes a loss.
struct Model {
  LlamaForCausalLM net{nullptr};
  at::Device device = at::kCPU;
  at::Tensor label_ids;  ///< [C] the label words' token ids
  LoraAdapters lora;
  bool use_lora = false;
  int64_t pad_id = 0;
  int64_t logit_chunk = 1024;  ///< rows of the vocabulary-wide logits at a time (lm)

  /// Right-padded ids [B, T] and the real lengths of examples `idx`.
  std::pair<at::Tensor, std::vector<int64_t>> pad(const Dataset& d, const std::vector<size_t>& idx) const {
    size_t longest = 0;
    for (size_t i : idx) longest = std::max(longest, d.ids[i].size());
    const auto B = static_cast<int64_t>(idx.size()), T = static_cast<int64_t>(longest);
    at::Tensor ids = at::full({B, T}, pad_id, at::kLong);
    auto ia = ids.accessor<int64_t, 2>();
    std::vector<int64_t> lengths;
    for (int64_t b = 0; b < B; ++b) {
      const auto& row = d.ids[idx[static_cast<size_t>(b)]];
      for (size_t j = 0; j < row.size(); ++j) ia[b][static_cast<int64_t>(j)] = row[j];
      lengths.push_back(static_cast<int64_t>(row.size()));
    }
    return {ids.to(device), lengths};
  }

  at::Tensor hidden(const at::Tensor& ids) {
    if (use_lora) lora.merge();
    return net->hidden_states(ids);
  }

  /// classify: logits [B, C] over the label words at each prompt's last real token. Only the label
  /// words' rows of the LM head are multiplied, not the whole vocabulary.
  at::Tensor label_logits(const Dataset& d, const std::vector<size_t>& idx) {
    auto [ids, lengths] = pad(d, idx);
    const at::Tensor h = hidden(ids);  // [B, T, H]
    std::vector<int64_t> last;
    for (int64_t n : lengths) last.push_back(n - 1);
    const at::Tensor rows = at::arange(static_cast<int64_t>(idx.size()), at::TensorOptions().dtype(at::kLong).device(device));
    const at::Tensor answer = h.index({rows, at::tensor(last, at::kLong).to(device)});  // [B, H]
    const at::Tensor head = net->lm_head_weight().index_select(0, label_ids);             // [C, H]
    return answer.matmul(head.t()).to(at::kFloat);
  }

  /// lm: summed next-token negative log-likelihood and the number of predicted tokens.
  std::pair<at::Tensor, int64_t> nll_sum(const Dataset& d, const std::vector<size_t>& idx) {
    auto [ids, lengths] = pad(d, idx);
    const at::Tensor h = hidden(ids);  // [B, T, H]
    const int64_t T = ids.size(1), H = h.size(2);
    std::vector<int64_t> from, target;
    const at::Tensor ids_cpu = ids.cpu();
    auto ia = ids_cpu.accessor<int64_t, 2>();
    for (size_t b = 0; b < idx.size(); ++b) {
      for (int64_t t = 0; t + 1 < lengths[b]; ++t) {
        from.push_back(static_cast<int64_t>(b) * T + t);
        target.push_back(ia[static_cast<int64_t>(b)][t + 1]);
      }
    }
    const auto n = static_cast<int64_t>(from.size());
    const at::Tensor flat = h.reshape({-1, H});
    const at::Tensor from_t = at::tensor(from, at::kLong).to(device), target_t = at::tensor(target, at::kLong).to(device);
    at::Tensor total = at::zeros({}, at::TensorOptions().dtype(at::kFloat).device(device));
    for (int64_t start = 0; start < n; start += logit_chunk) {  // bounds the [rows, V] logits' memory
      const int64_t len = std::min(logit_chunk, n - start);
      const at::Tensor logits = net->logits(flat.index_select(0, from_t.narrow(0, start, len))).to(at::kFloat);
      total = total + at::cross_entropy_loss(logits, target_t.narrow(0, start, len), {}, at::Reduction::Sum);
    }
    return {total, n};
  }
};

Evaluation evaluate_classify(Model& m, const Dataset& d, int64_t batch) {
  torch::NoGradGuard no_grad;
  int64_t correct = 0;
  double loss = 0;
  for (const auto& idx : length_sorted_batches(d.lengths(), batch)) {
    std::vector<int64_t> y;
    for (size_t i : idx) y.push_back(d.labels[i]);
    const at::Tensor target = at::tensor(y, at::kLong).to(m.device);
    const at::Tensor logits = m.label_logits(d, idx);
    correct += logits.argmax(1).eq(target).sum().item<int64_t>();
    loss += at::cross_entropy_loss(logits, target, {}, at::Reduction::Sum).item<double>();
  }
  Evaluation e;
  e.metric = static_cast<double>(correct) / static_cast<double>(d.size());
  e.loss = loss / static_cast<double>(d.size());
  return e;
}

/// Perplexity: exp of the mean next-token negative log-likelihood over all predicted tokens.
Evaluation evaluate_lm(Model& m, const Dataset& d, int64_t batch) {
  torch::NoGradGuard no_grad;
  double nll = 0;
  int64_t tokens = 0;
  for (const auto& idx : length_sorted_batches(d.lengths(), batch)) {
    auto [sum, n] = m.nll_sum(d, idx);
    nll += sum.item<double>();
    tokens += n;
  }
  Evaluation e;
  e.loss = nll / static_cast<double>(std::max<int64_t>(tokens, 1));
  e.metric = std::exp(e.loss);
  return e;
}

/// Label -> the word the model answers with: --label-words, else the polarity defaults.
std::map<std::string, std::string> label_word_map(const std::string& spec, const std::vector<std::string>& labels) {
  std::map<std::string, std::string> words;
  if (spec.empty()) {
    const std::map<std::string, std::string> defaults = {
        {"positive", " great"}, {"pos", " great"}, {"negative", " terrible"}, {"neg", " terrible"}};
    for (const auto& l : labels) {
      const auto it = defaults.find(l);
      TORCH_CHECK(it != defaults.end(), kProgram, ": the data has the label '", l, "', which has no default label word "
                  "(the defaults cover positive/pos and negative/neg); pass --label-words ", l, "=<word>,... for every label");
      words[l] = it->second;
    }
    return words;
  }
  for (const auto& kv : split(spec, ',')) {
    const auto eq = kv.find('=');
    TORCH_CHECK(eq != std::string::npos && eq > 0 && eq + 1 < kv.size(), kProgram,
                ": --label-words expects label=word pairs separated by commas, got '", kv, "'");
    std::string word = kv.substr(eq + 1);
    if (word.front() != ' ') word = " " + word;  // the word follows the prompt's last word
    words[kv.substr(0, eq)] = word;
  }
  for (const auto& l : labels) {
    TORCH_CHECK(words.count(l), kProgram, ": --label-words has no word for the label '", l, "'; give one for every label");
  }
  return words;
}

/// An error on stderr, prefixed with the program's name unless its message already starts with it.
void report_error(const std::string& message) {
  const std::string prefix = std::string(kProgram) + ": ";
  std::cerr << (message.rfind(prefix, 0) == 0 ? "" : prefix) << message << std::endl;
}

}  // namespace

int main(int argc, char** argv) try {
  const Args a = parse_args(argc, argv);
  const auto started = std::chrono::steady_clock::now();
  auto elapsed = [started] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count(); };
  if (a.threads > 0) at::set_num_threads(static_cast<int>(a.threads));
  torch::manual_seed(static_cast<uint64_t>(a.seed));
  const at::Device device(a.device == "cuda" ? at::kCUDA : at::kCPU);
  TORCH_CHECK(!device.is_cuda() || torch::cuda::is_available(), kProgram, ": --device cuda, but no CUDA device is "
              "visible (or this LibTorch is a CPU build); use --device cpu");
  const at::ScalarType dtype = a.dtype == "bfloat16" ? at::kBFloat16 : at::kFloat;
  fs::create_directories(a.out);
  auto log = [&](const std::string& line) {
    if (!a.quiet) std::cout << line << std::endl;
  };
  const bool classify = a.objective == "classify";

  // ---- data ----------------------------------------------------------------------------------
  const ByteLevelBPE tok = ByteLevelBPE::from_directory(a.model);
  std::vector<std::string> labels;
  std::map<std::string, std::string> words;
  std::vector<int64_t> label_ids;
  auto limit = [](size_t n, int64_t max) { return max > 0 ? std::min(n, static_cast<size_t>(max)) : n; };
  auto make_dataset = [&](const std::string& path, int64_t max, const std::string& what) {
    Dataset d;
    if (classify) {
      auto rows = read_tsv(path);
      rows.resize(limit(rows.size(), max));
      d.labels = label_indices(rows, labels, what + " (" + path + ")");
      for (const auto& r : rows) {
        std::vector<int64_t> ids = tok.encode(fill_template(a.prompt_template, r.text));
        TORCH_CHECK(!ids.empty(), kProgram, ": ", path, ": the prompt of \"", r.text.substr(0, 60), "\" has no tokens");
        // Keep the end: the answer position and the template's cue must survive truncation.
        if (static_cast<int64_t>(ids.size()) > a.max_length) ids.erase(ids.begin(), ids.end() - a.max_length);
        d.ids.push_back(std::move(ids));
      }
    } else {
      auto lines = read_text_lines(path);
      lines.resize(limit(lines.size(), max));
      for (const auto& line : lines) {
        std::vector<int64_t> ids = tok.encode(line);
        if (static_cast<int64_t>(ids.size()) > a.max_length) ids.resize(static_cast<size_t>(a.max_length));
        if (ids.size() >= 2) d.ids.push_back(std::move(ids));  // one token predicts nothing
      }
      TORCH_CHECK(d.size() > 0, kProgram, ": ", path, " has no line of two or more tokens");
    }
    return d;
  };
  if (classify) {
    labels = label_set(read_tsv(a.train));
    TORCH_CHECK(labels.size() >= 2, kProgram, ": ", a.train, " has only the label '", labels.front(),
                "'; a classifier needs at least two");
    words = label_word_map(a.label_words, labels);
    for (const auto& l : labels) {
      const std::vector<int64_t> ids = tok.encode(words[l]);
      TORCH_CHECK(ids.size() == 1, kProgram, ": the label word \"", words[l], "\" of '", l, "' is ", ids.size(),
                  " tokens; the answer is scored as one next token, so choose a word that is a single token");
      label_ids.push_back(ids[0]);
    }
    TORCH_CHECK(std::set<int64_t>(label_ids.begin(), label_ids.end()).size() == label_ids.size(), kProgram,
                ": two labels have the same label word; --label-words must give each label its own word");
  }
  Dataset train = make_dataset(a.train, 0, "--train");
  Dataset dev = make_dataset(a.dev, a.max_dev, "--dev");
  Dataset test = make_dataset(a.test, a.max_test, "--test");

  // ---- model and what trains -----------------------------------------------------------------
  Model m;
  m.device = device;
  const LlamaConfig config = LlamaConfig::from_json((fs::path(a.model) / "config.json").string());
  m.net = load_llama(a.model, dtype, device);
  m.net->eval();
  if (classify) m.label_ids = at::tensor(label_ids, at::kLong).to(device);
  // requires_grad true exactly on what trains: zotorch's optimizers perturb those and skip frozen
  // tensors; Adam's backward reaches only them.
  std::vector<at::Tensor> params;
  std::vector<std::string> names;
  int64_t total_numel = 0;
  const std::string embedding = "model.embed_tokens.weight";
  for (auto& item : m.net->named_parameters()) {
    total_numel += item.value().numel();
    const bool head = item.key() == embedding || item.key() == "lm_head.weight";
    const bool trainable = a.mode == "full" || (a.mode == "head-free" && !head);
    item.value().set_requires_grad(trainable);
    if (trainable) {
      params.push_back(item.value());
      names.push_back(item.key());
    }
  }
  if (a.mode == "lora") {
    m.use_lora = true;
    m.lora.scale = a.lora_alpha / static_cast<double>(a.lora_rank);
    const auto named = m.net->named_parameters();
    for (int64_t i = 0;; ++i) {
      const std::string prefix = "model.layers." + std::to_string(i) + ".self_attn.";
      if (!named.contains(prefix + "q_proj.weight")) break;
      for (const char* proj : {"q_proj", "v_proj"}) {
        const std::string name = prefix + proj;
        at::Tensor w = named[name + ".weight"];
        const int64_t out_features = w.size(0), in_features = w.size(1);
        LoraSite s;
        s.weight = w;
        s.base = w.detach().clone();
        // A as PEFT initialises it (uniform, bound 1/sqrt(in)); B zero.
        const double bound = 1.0 / std::sqrt(static_cast<double>(in_features));
        s.A = at::empty({a.lora_rank, in_features}, at::TensorOptions().dtype(at::kFloat)).uniform_(-bound, bound)
                  .to(device, dtype).set_requires_grad(true);
        s.B = at::zeros({out_features, a.lora_rank}, at::TensorOptions().dtype(dtype).device(device)).set_requires_grad(true);
        if (a.optimizer == "adam") w.set_requires_grad(true);  // the merged weight's gradient, see LoraAdapters
        params.push_back(s.A);
        names.push_back(name + ".lora_A.weight");
        params.push_back(s.B);
        names.push_back(name + ".lora_B.weight");
        m.lora.sites.push_back(s);
      }
    }
    TORCH_CHECK(!m.lora.sites.empty(), kProgram, ": --mode lora found no model.layers.*.self_attn.q_proj.weight");
  }
  int64_t trainable_numel = 0;
  for (const auto& p : params) trainable_numel += p.numel();

  std::ostringstream intro;
  intro << kProgram << ": " << a.optimizer << ", mode " << a.mode << ", objective " << a.objective << ", " << trainable_numel
        << " of " << total_numel << " parameters train (" << params.size() << " tensors), " << a.dtype << " on " << a.device
        << "\n  model " << a.model << " (" << config.num_hidden_layers << " layers, hidden "
        << config.hidden_size << ", vocabulary " << tok.vocab_size() << ")\n"
        << "  data: train " << train.size() << ", dev " << dev.size() << ", test " << test.size();
  if (classify) {
    intro << "; prompt \"" << a.prompt_template << "\"; label words:";
    for (size_t i = 0; i < labels.size(); ++i) intro << " " << labels[i] << "=\"" << words[labels[i]] << "\" (" << label_ids[i] << ")";
  }
  log(intro.str());

  Trainer trainer = make_trainer(trainer_options(a), params);
  log("  " + trainer.note + "; lr " + std::to_string(a.lr) + (trainer.backprop ? "" : ", eps " + std::to_string(a.eps)) +
      ", batch " + std::to_string(a.batch));

  // ---- training, evaluation, checkpoints: examples/common/harness.h --------------------------
  TrainingTask task;
  task.params = params;
  task.names = names;
  task.train_size = train.size();
  if (classify) {
    task.loss = [&](const std::vector<size_t>& idx) {
      std::vector<int64_t> y;
      for (size_t i : idx) y.push_back(train.labels[i]);
      return at::cross_entropy_loss(m.label_logits(train, idx), at::tensor(y, at::kLong).to(device));
    };
    task.evaluate_dev = [&] { return evaluate_classify(m, dev, a.eval_batch); };
    task.evaluate_test = [&] { return evaluate_classify(m, test, a.eval_batch); };
    task.metric = "accuracy";
  } else {
    task.loss = [&](const std::vector<size_t>& idx) {
      auto [sum, n] = m.nll_sum(train, idx);
      return sum / static_cast<double>(std::max<int64_t>(n, 1));
    };
    task.evaluate_dev = [&] { return evaluate_lm(m, dev, a.eval_batch); };
    task.evaluate_test = [&] { return evaluate_lm(m, test, a.eval_batch); };
    // The untrained model's test perplexity, what fine-tuning is measured against (with budget 0
    // the final test evaluation is that one already).
    if (a.budget > 0) task.evaluate_test_before_training = task.evaluate_test;
    task.metric = "perplexity";
    task.higher_is_better = false;
  }
  if (m.use_lora) task.after_backward = [&] { m.lora.gradients_from_merged(); };
  LoopOptions loop = loop_options(a, kProgram, device, elapsed, log);
  loop.metadata["objective"] = a.objective;
  // PEFT's convention: W = W0 + B·A·alpha/r on q_proj and v_proj
  if (a.mode == "lora") loop.metadata["lora_target_modules"] = "q_proj,v_proj";
  const LoopResult r = run_training(loop, task, trainer);
  if (m.use_lora) m.lora.merge();  // leave the model as evaluated

  Json summary = r.summary;
  summary["mode"] = a.mode;
  summary["objective"] = a.objective;
  summary["lr"] = a.lr;
  summary["eps"] = a.eps;
  summary["dtype"] = a.dtype;
  summary["device"] = a.device;
  summary["threads"] = at::get_num_threads();
  summary["model"] = a.model;
  summary["train"] = a.train;
  summary["dev"] = a.dev;
  summary["test"] = a.test;
  summary["max_length"] = a.max_length;
  summary["total_parameters"] = total_numel;
  if (classify) {
    summary["template"] = a.prompt_template;
    summary["labels"] = labels;
    Json lw = Json::object();
    for (const auto& l : labels) lw[l] = words[l];
    summary["label_words"] = lw;
    if (a.budget == 0) summary["zero_shot_test_accuracy"] = r.test.metric;
    // The training set's majority class on test: the floor any classifier must beat.
    std::vector<int64_t> counts(labels.size(), 0);
    for (int64_t y : train.labels) ++counts[static_cast<size_t>(y)];
    const auto majority = std::max_element(counts.begin(), counts.end()) - counts.begin();
    summary["majority_test_accuracy"] =
        static_cast<double>(std::count(test.labels.begin(), test.labels.end(), majority)) / static_cast<double>(test.size());
  } else {
    summary["zero_shot_test_perplexity"] = a.budget > 0 ? r.test_before_training.metric : r.test.metric;
  }
  if (a.optimizer == "fzoo") summary["num_perturbations"] = a.num_perturbations;
  if (a.optimizer == "adamezo") summary["window"] = a.window;
  if (a.mode == "lora") {
    summary["lora_rank"] = a.lora_rank;
    summary["lora_alpha"] = a.lora_alpha;
  }
  write_summary(a.out, summary);
  const fs::path out(a.out);
  char line[320];
  std::snprintf(line, sizeof line, "%s/%s: test %s %.4f (best dev %.4f at %lld forward passes; %lld forward passes, %s, peak RSS %.0f MiB)",
                a.optimizer.c_str(), a.mode.c_str(), task.metric.c_str(), r.test.metric, r.best_dev,
                static_cast<long long>(r.best_forward_passes), static_cast<long long>(r.forward_passes),
                format_seconds(r.wall_seconds).c_str(), static_cast<double>(peak_rss_bytes()) / (1 << 20));
  std::cout << line;
  if (!classify && a.budget > 0) {
    std::snprintf(line, sizeof line, " (before training: %.4f)", r.test_before_training.metric);
    std::cout << line;
  }
  std::cout << "\n  " << (out / "summary.json").string() << ", " << (out / "metrics.csv").string() << ", "
            << (out / "trained.safetensors").string() << std::endl;
  return 0;
} catch (const c10::Error& e) {
  report_error(e.what_without_backtrace());
  return 1;
} catch (const std::exception& e) {
  report_error(e.what());
  return 1;
}
