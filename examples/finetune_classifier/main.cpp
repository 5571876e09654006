// finetune_classifier: fine-tunes a pretrained BERT-family model directory on labelled text (TSV)
// with FZOO, MeZO or AdaMeZO (forward passes only) or Adam (backprop baseline), and reports accuracy
// against forward passes. The program behind scripts/demo.sh; docs/examples.md explains every flag.
#include "../common/bert.h"
#include "../common/cli.h"
#include "../common/files.h"
#include "../common/harness.h"
#include "../common/learning_rates.h"
#include "../common/safetensors.h"
#include "../common/tsv.h"
#include "../common/wordpiece.h"

#include <zotorch/zotorch.h>

#include <torch/cuda.h>
#include <torch/nn/functional/loss.h>
#include <torch/serialize.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using namespace zotorch::examples;

namespace {

struct Args {
  std::string model, train, dev, test, out = "out/finetune";
  std::string optimizer = "fzoo", mode = "full", dtype = "float32", device = "cpu";
  int64_t budget = 2000, batch = 16, seed = 0, num_perturbations = 8, window = 10;
  double lr = -1, eps = -1, weight_decay = 0;
  int64_t train_layers = -1, lora_rank = 8, max_length = 64, eval_every = -1, eval_batch = 64, threads = 0;
  double lora_alpha = 16, head_scale = 20;
  std::string pooling = "auto", normalize = "auto", head_init = "prompt", label_template = "{label}", label_words, cache_dir;
  std::string trajectory;
  bool resume = false, quiet = false;
};

Args parse_args(int argc, char** argv) {
  Args a;
  CLI::App app("Fine-tunes a Hugging Face BERT-family model directory (config.json, model.safetensors or\n"
               "pytorch_model.bin, vocab.txt/tokenizer.json) as a sentence classifier on text<TAB>label files\n"
               "with FZOO, MeZO or AdaMeZO (forward passes only) or Adam (backprop). Writes to --out:\n"
               "metrics.csv, summary.json, trained.safetensors (the best-on-dev trainable tensors) and\n"
               "checkpoint.ckpt. docs/examples.md explains every option.",
               "finetune_classifier");
  configure_cli(app);
  bool print_default_lr = false;
  app.add_option("--model", a.model, "model directory")->option_text("DIR");
  app.add_option("--train", a.train, "training examples, text<TAB>label")->option_text("TSV");
  app.add_option("--dev", a.dev, "dev examples: evaluation and the best-checkpoint choice")->option_text("TSV");
  app.add_option("--test", a.test, "test examples, evaluated once at the end")->option_text("TSV");
  app.add_option("--optimizer", a.optimizer, "method; adam is the backprop baseline and counts 3 forward-pass "
                 "equivalents per step")->check(CLI::IsMember({"fzoo", "mezo", "adamezo", "adam"}));
  app.add_option("--mode", a.mode, "what trains: all encoder weights + head, LoRA adapters on attention "
                 "query/value + head, or the head only")->check(CLI::IsMember({"full", "lora", "head"}));
  app.add_option("--budget-forward-passes", a.budget, "stop after N forward passes (0 = evaluate only)")
      ->check(non_negative());
  app.add_option("--lr", a.lr, "learning rate (default: per optimizer and mode, see --print-default-lr)")
      ->check(positive())->default_str("");
  app.add_option("--eps", a.eps, "perturbation scale (default: per optimizer and mode)")
      ->check(positive())->default_str("");
  app.add_option("--batch", a.batch, "examples per step")->check(positive());
  app.add_option("--seed", a.seed, "seed of batches, head init, LoRA init and directions");
  app.add_option("--dtype", a.dtype, "parameter and activation dtype")->check(CLI::IsMember({"float32", "bfloat16"}));
  app.add_option("--device", a.device, "device")->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--out", a.out, "output directory")->option_text("DIR");
  app.add_flag("--resume", a.resume, "continue from DIR/checkpoint.ckpt if it exists");
  app.add_option("--trajectory", a.trajectory, "record every step in this file (fzoo, mezo, adamezo), and the "
                 "trainable tensors as DIR/base.safetensors where it begins and DIR/final.safetensors after the "
                 "last step; examples/replay turns base + log into final (docs/trajectory.md). --resume continues "
                 "the log")->option_text("LOG");
  app.add_flag("--print-default-lr", print_default_lr,
               "print the default learning rate of --optimizer and --mode and exit (compare.sh asks this)");
  const std::string more = "More options";
  app.add_option("--num-perturbations", a.num_perturbations, "FZOO's N")->check(positive())->group(more);
  app.add_option("--window", a.window, "AdaMeZO's window h")->check(positive())->group(more);
  app.add_option("--weight-decay", a.weight_decay, "decoupled weight decay")->check(non_negative())->group(more);
  app.add_option("--train-layers", a.train_layers, "only the top K encoder layers train (default all); the frozen layers "
                 "below run once per example and are cached")->default_str("all")->group(more);
  app.add_option("--lora-rank", a.lora_rank, "LoRA rank")->check(positive())->group(more);
  app.add_option("--lora-alpha", a.lora_alpha, "LoRA alpha")->group(more);
  app.add_option("--max-length", a.max_length, "tokens per example incl. [CLS]/[SEP]")->check(at_least(3))->group(more);
  app.add_option("--pooling", a.pooling, "sentence vector (auto: the model's 1_Pooling/config.json, else mean)")
      ->check(CLI::IsMember({"auto", "mean", "cls"}))->group(more);
  app.add_option("--normalize", a.normalize, "L2-normalise the sentence vector (auto: if the model directory is a "
                 "sentence-transformers model with a Normalize module)")->check(CLI::IsMember({"auto", "on", "off"}))->group(more);
  app.add_option("--head-init", a.head_init, "prompt: the head's rows are the normalised embeddings of --label-template "
                 "filled with each label's word, times --head-scale, so training starts at zero-shot accuracy")
      ->check(CLI::IsMember({"prompt", "random"}))->group(more);
  app.add_option("--label-template", a.label_template, "e.g. \"It was {label}.\"")->group(more);
  app.add_option("--label-words", a.label_words, "word for each label in the template (default: the label itself)")
      ->option_text("a=x,b=y")->group(more);
  app.add_option("--head-scale", a.head_scale, "scale of the prompt-initialised head")->group(more);
  app.add_option("--eval-every", a.eval_every, "evaluate on dev every N forward passes")->default_str("budget/10")->group(more);
  app.add_option("--eval-batch", a.eval_batch, "examples per evaluation batch")->check(positive())->group(more);
  app.add_option("--cache-dir", a.cache_dir, "keep the frozen layers' outputs there and reuse them across runs with the "
                 "same model, data, --max-length, --train-layers, dtype")->option_text("DIR")->group(more);
  app.add_option("--threads", a.threads, "intra-op threads")->default_str("LibTorch's choice")->group(more);
  app.add_flag("--quiet", a.quiet, "print only the final result")->group(more);
  parse_or_exit(app, argc, argv);
  if (!a.trajectory.empty() && a.optimizer == "adam") {
    usage_error(app, "--trajectory records zeroth-order steps (fzoo, mezo, adamezo); --optimizer adam has none");
  }

  if (print_default_lr) {
    std::cout << default_rates(a.optimizer, a.mode).lr << std::endl;
    std::exit(0);
  }
  if (a.model.empty() || a.train.empty() || a.dev.empty() || a.test.empty()) {
    usage_error(app, "--model, --train, --dev and --test are required");
  }
  const DefaultRates d = default_rates(a.optimizer, a.mode);
  if (a.lr < 0) a.lr = d.lr;
  if (a.eps < 0) a.eps = d.eps;
  return a;
}

/// Pre-tokenised examples; `cache` holds frozen-layer outputs when the bottom of the model is frozen.
struct Dataset {
  std::string path;
  std::vector<std::vector<int64_t>> ids;
  std::vector<int64_t> labels;
  std::vector<at::Tensor> cache;
  size_t size() const { return ids.size(); }
};

Dataset make_dataset(const std::string& path, const WordPieceTokenizer& tok, const std::vector<std::string>& labels,
                     int64_t max_length, const std::string& what) {
  const auto rows = read_tsv(path);
  Dataset d;
  d.path = path;
  d.labels = label_indices(rows, labels, what + " (" + path + ")");
  for (const auto& r : rows) d.ids.push_back(tok.encode(r.text, max_length));
  return d;
}

/// The classifier and how a forward pass runs: the first `frozen` encoder layers (and the
/// embeddings) are frozen and cached per example; head mode caches the sentence vector itself.
struct Model {
  BertClassifier net{nullptr};
  int64_t frozen = 0;        ///< encoder layers below the trainable ones
  bool head_only = false;    ///< the whole encoder is frozen: cache the sentence vectors
  bool normalize = false;
  at::Device device = at::kCPU;
  at::ScalarType dtype = at::kFloat;
  int64_t pad_id = 0;

  at::Tensor sentence_vectors(const at::Tensor& hidden, const at::Tensor& mask) {
    at::Tensor v = net->pooling == Pooling::Mean ? mean_pool(hidden, mask) : hidden.select(1, 0);
    return normalize ? v / v.norm(2, -1, true).clamp_min(1e-12) : v;
  }

  /// Padded ids and mask of the given examples on the device.
  std::pair<at::Tensor, at::Tensor> pad_ids(const Dataset& d, const std::vector<size_t>& idx) const {
    size_t longest = 0;
    for (size_t i : idx) longest = std::max(longest, d.ids[i].size());
    const auto B = static_cast<int64_t>(idx.size()), L = static_cast<int64_t>(longest);
    at::Tensor ids = at::full({B, L}, pad_id, at::kLong), mask = at::zeros({B, L}, at::kLong);
    auto ia = ids.accessor<int64_t, 2>();
    auto ma = mask.accessor<int64_t, 2>();
    for (int64_t b = 0; b < B; ++b) {
      const auto& row = d.ids[idx[static_cast<size_t>(b)]];
      for (size_t j = 0; j < row.size(); ++j) {
        ia[b][static_cast<int64_t>(j)] = row[j];
        ma[b][static_cast<int64_t>(j)] = 1;
      }
    }
    return {ids.to(device), mask.to(device)};
  }

  /// Logits [B, C] of examples `idx` of `d` (cache must be built when anything is frozen).
  at::Tensor logits(const Dataset& d, const std::vector<size_t>& idx) {
    if (head_only) {
      std::vector<at::Tensor> rows;
      for (size_t i : idx) rows.push_back(d.cache[i]);
      return net->classifier(at::stack(rows));
    }
    auto [ids, mask] = pad_ids(d, idx);
    at::Tensor hidden;
    if (frozen == 0) {
      hidden = net->bert->forward(ids, mask);
    } else {
      const int64_t L = ids.size(1), H = net->bert->config.hidden_size;
      at::Tensor x = at::zeros({static_cast<int64_t>(idx.size()), L, H}, at::TensorOptions().dtype(dtype).device(device));
      for (size_t b = 0; b < idx.size(); ++b) {
        const at::Tensor& c = d.cache[idx[b]];
        x[static_cast<int64_t>(b)].narrow(0, 0, c.size(0)).copy_(c);
      }
      hidden = net->bert->forward_layers(x, mask, frozen, net->bert->num_layers());
    }
    return net->classifier(sentence_vectors(hidden, mask));
  }

  /// Runs the frozen part once per example (length-sorted batches) and keeps its output.
  void build_cache(Dataset& d, int64_t batch, const std::string& cache_file = "") {
    if (!head_only && frozen == 0) return;
    if (!cache_file.empty() && fs::exists(cache_file)) {
      std::vector<at::Tensor> saved;
      torch::load(saved, cache_file);
      if (saved.size() == d.size()) {
        d.cache.clear();
        for (auto& t : saved) d.cache.push_back(t.to(device));
        return;
      }
    }
    build_cache_now(d, batch);
    if (!cache_file.empty()) {
      std::vector<at::Tensor> cpu;
      for (const auto& t : d.cache) cpu.push_back(t.cpu());
      torch::save(cpu, cache_file + ".tmp");
      fs::rename(cache_file + ".tmp", cache_file);
    }
  }

  void build_cache_now(Dataset& d, int64_t batch) {
    torch::NoGradGuard no_grad;
    d.cache.assign(d.size(), at::Tensor());
    std::vector<size_t> order(d.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return d.ids[a].size() < d.ids[b].size(); });
    for (size_t start = 0; start < order.size(); start += static_cast<size_t>(batch)) {
      std::vector<size_t> idx(order.begin() + static_cast<std::ptrdiff_t>(start),
                              order.begin() + static_cast<std::ptrdiff_t>(std::min(order.size(), start + static_cast<size_t>(batch))));
      auto [ids, mask] = pad_ids(d, idx);
      const int64_t stop = head_only ? net->bert->num_layers() : frozen;
      at::Tensor x = net->bert->embeddings(ids, at::zeros_like(ids));
      x = net->bert->forward_layers(x, mask, 0, stop);
      if (head_only) x = sentence_vectors(x, mask);
      for (size_t b = 0; b < idx.size(); ++b) {
        at::Tensor row = x[static_cast<int64_t>(b)];
        if (!head_only) row = row.narrow(0, 0, static_cast<int64_t>(d.ids[idx[b]].size()));
        d.cache[idx[b]] = row.clone();
      }
    }
  }
};

/// Accuracy and mean loss on a whole dataset, in length-sorted batches.
Evaluation evaluate(Model& m, const Dataset& d, int64_t batch) {
  torch::NoGradGuard no_grad;
  std::vector<size_t> order(d.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return d.ids[a].size() < d.ids[b].size(); });
  int64_t correct = 0;
  double loss = 0;
  for (size_t start = 0; start < order.size(); start += static_cast<size_t>(batch)) {
    std::vector<size_t> idx(order.begin() + static_cast<std::ptrdiff_t>(start),
                            order.begin() + static_cast<std::ptrdiff_t>(std::min(order.size(), start + static_cast<size_t>(batch))));
    std::vector<int64_t> y;
    for (size_t i : idx) y.push_back(d.labels[i]);
    const at::Tensor target = at::tensor(y, at::kLong).to(m.device);
    const at::Tensor logits = m.logits(d, idx).to(at::kFloat);
    correct += logits.argmax(1).eq(target).sum().item<int64_t>();
    loss += at::cross_entropy_loss(logits, target, {}, at::Reduction::Sum).item<double>();
  }
  Evaluation e;
  e.metric = static_cast<double>(correct) / static_cast<double>(d.size());
  e.loss = loss / static_cast<double>(d.size());
  return e;
}

/// Reads the sentence-transformers files of a model directory: pooling mode and Normalize.
std::pair<Pooling, bool> sentence_transformer_defaults(const std::string& dir) {
  Pooling pooling = Pooling::Mean;
  bool normalize = false;
  const fs::path pool_cfg = fs::path(dir) / "1_Pooling" / "config.json";
  if (fs::exists(pool_cfg)) {
    const Json j = read_json_file(pool_cfg.string());
    if (json_value<bool>(j, "pooling_mode_cls_token", false)) pooling = Pooling::Cls;
  }
  const fs::path modules = fs::path(dir) / "modules.json";
  if (fs::exists(modules)) {
    for (const auto& m : read_json_file(modules.string())) {
      if (json_value<std::string>(m, "type", "").find("Normalize") != std::string::npos) normalize = true;
    }
  }
  return {pooling, normalize};
}

}  // namespace

int main(int argc, char** argv) try {
  const Args a = parse_args(argc, argv);
  const auto started = std::chrono::steady_clock::now();
  auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count(); };
  if (a.threads > 0) at::set_num_threads(static_cast<int>(a.threads));
  torch::manual_seed(static_cast<uint64_t>(a.seed));
  const at::Device device(a.device == "cuda" ? at::kCUDA : at::kCPU);
  TORCH_CHECK(!device.is_cuda() || torch::cuda::is_available(), "finetune_classifier: --device cuda, but no CUDA device is "
              "visible (or this LibTorch is a CPU build); use --device cpu");
  const at::ScalarType dtype = a.dtype == "bfloat16" ? at::kBFloat16 : at::kFloat;
  fs::create_directories(a.out);
  auto log = [&](const std::string& line) {
    if (!a.quiet) std::cout << line << std::endl;
  };

  // ---- data and model ------------------------------------------------------------------------
  const WordPieceTokenizer tok = WordPieceTokenizer::from_directory(a.model);
  const auto train_rows = read_tsv(a.train);
  const std::vector<std::string> labels = label_set(train_rows);
  TORCH_CHECK(labels.size() >= 2, "finetune_classifier: ", a.train, " has only the label '", labels.front(),
              "'; a classifier needs at least two");
  Dataset train = make_dataset(a.train, tok, labels, a.max_length, "--train");
  Dataset dev = make_dataset(a.dev, tok, labels, a.max_length, "--dev");
  Dataset test = make_dataset(a.test, tok, labels, a.max_length, "--test");

  LoadedBert loaded = load_bert(a.model);
  const int64_t layers = loaded.config.num_hidden_layers;
  auto [st_pooling, st_normalize] = sentence_transformer_defaults(a.model);
  const Pooling pooling = a.pooling == "auto" ? st_pooling : (a.pooling == "cls" ? Pooling::Cls : Pooling::Mean);
  Model m;
  m.normalize = a.normalize == "auto" ? st_normalize : a.normalize == "on";
  m.device = device;
  m.dtype = dtype;
  m.pad_id = tok.pad_id();
  if (loaded.model->pooler) {  // the classifier pools itself; an unused pooler would only be perturbed
    loaded.model->unregister_module("pooler");
    loaded.model->pooler = nullptr;
  }
  m.net = BertClassifier(loaded.model, static_cast<int64_t>(labels.size()), pooling);
  const int64_t train_layers = a.mode == "head" ? 0 : (a.train_layers < 0 ? layers : std::min(a.train_layers, layers));
  m.head_only = a.mode == "head";
  m.frozen = m.head_only ? layers : layers - train_layers;
  if (a.mode == "lora") m.net->bert->enable_lora(a.lora_rank, a.lora_alpha);
  m.net->to(device, dtype);
  m.net->eval();

  // Head initialisation from label prompts: row c = head_scale · embedding(template(word_c)), so the
  // untrained classifier is the zero-shot nearest-label-description classifier.
  std::map<std::string, std::string> words;
  for (const auto& kv : split(a.label_words, ',')) {
    const auto eq = kv.find('=');
    TORCH_CHECK(eq != std::string::npos, "finetune_classifier: --label-words expects label=word pairs, got '", kv, "'");
    words[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  std::vector<std::string> prompts;
  for (const auto& l : labels) {
    std::string p = a.label_template;
    const std::string word = words.count(l) ? words[l] : l;
    const auto at = p.find("{label}");
    if (at != std::string::npos) p.replace(at, 7, word);
    else p += " " + word;
    prompts.push_back(p);
  }
  {
    torch::NoGradGuard no_grad;
    if (a.head_init == "prompt") {
      Dataset prompt_set;
      for (const auto& p : prompts) prompt_set.ids.push_back(tok.encode(p, a.max_length));
      std::vector<size_t> all(prompts.size());
      std::iota(all.begin(), all.end(), 0);
      auto [ids, mask] = m.pad_ids(prompt_set, all);
      at::Tensor e = m.sentence_vectors(m.net->bert->forward(ids, mask), mask).to(at::kFloat);
      e = e / e.norm(2, -1, true).clamp_min(1e-12);
      m.net->classifier->weight.copy_(e * a.head_scale);
      m.net->classifier->bias.zero_();
    }
  }

  // What trains: requires_grad true, as in PyTorch, so that Adam's backward reaches exactly these and
  // zotorch's optimizers (which leave frozen tensors alone) perturb exactly these; the zeroth-order
  // steps run their forwards under NoGradGuard, so no graph is built for them. The rest is frozen
  // (requires_grad false: no autograd graph and no gradient memory for Adam either).
  std::vector<at::Tensor> params;
  std::vector<std::string> param_names;
  for (auto& item : m.net->named_parameters()) {
    const std::string& name = item.key();
    bool trainable = name.rfind("classifier.", 0) == 0;
    if (!m.head_only) {
      int64_t layer = -1;
      const std::string marker = "bert.encoder.layer.";
      if (name.rfind(marker, 0) == 0) layer = std::stoll(name.substr(marker.size()));
      const bool in_trained_layers = layer >= m.frozen;
      const bool embedding = name.rfind("bert.embeddings.", 0) == 0;
      if (a.mode == "full") trainable = trainable || in_trained_layers || (embedding && m.frozen == 0);
      if (a.mode == "lora") trainable = trainable || (in_trained_layers && name.find(".lora_") != std::string::npos);
    }
    item.value().set_requires_grad(trainable);
    if (trainable) {
      params.push_back(item.value());
      param_names.push_back(name);
    }
  }
  int64_t trainable_numel = 0, total_numel = 0;
  for (const auto& p : params) trainable_numel += p.numel();
  for (const auto& p : m.net->parameters()) total_numel += p.numel();

  std::ostringstream intro;
  intro << "finetune_classifier: " << a.optimizer << ", mode " << a.mode << ", " << trainable_numel << " of " << total_numel
        << " parameters train (" << params.size() << " tensors), " << a.dtype << " on " << a.device << "\n"
        << "  model " << a.model << " (" << layers << " layers, hidden " << loaded.config.hidden_size << ", "
        << (pooling == Pooling::Mean ? "mean" : "cls") << " pooling" << (m.normalize ? ", normalised" : "") << ")\n"
        << "  data: train " << train.size() << ", dev " << dev.size() << ", test " << test.size() << "; labels:";
  for (size_t i = 0; i < labels.size(); ++i) intro << " " << labels[i] << (a.head_init == "prompt" ? " (\"" + prompts[i] + "\")" : "");
  if (m.frozen > 0) intro << "\n  frozen: embeddings and layers 0-" << (m.frozen - 1) << ", computed once per example and cached";
  log(intro.str());

  const auto cache_started = std::chrono::steady_clock::now();
  // The cache key names everything the frozen part's output depends on.
  auto cache_file = [&](const Dataset& d) -> std::string {
    if (a.cache_dir.empty()) return "";
    fs::create_directories(a.cache_dir);
    std::ostringstream key;
    const std::string weights = find_weight_file(a.model);
    // The data file's content, not its time stamp: fetch-data.sh rewrites identical files.
    key << fs::absolute(weights).string() << '|' << fs::file_size(weights) << '|' << std::hash<std::string>{}(read_text_file(d.path))
        << '|' << a.max_length << '|' << m.frozen << '|' << m.head_only << '|' << a.dtype << '|' << (pooling == Pooling::Mean)
        << m.normalize;
    std::ostringstream name;
    name << std::hex << std::hash<std::string>{}(key.str()) << ".pt";
    return (fs::path(a.cache_dir) / name.str()).string();
  };
  m.build_cache(train, a.eval_batch, cache_file(train));
  m.build_cache(dev, a.eval_batch, cache_file(dev));
  m.build_cache(test, a.eval_batch, cache_file(test));
  if (m.frozen > 0) {
    log("  cache built in " + format_seconds(std::chrono::duration<double>(std::chrono::steady_clock::now() - cache_started).count()));
  }

  Trainer trainer = make_trainer(trainer_options(a), params);
  log("  " + trainer.note + "; lr " + std::to_string(a.lr) + (trainer.backprop ? "" : ", eps " + std::to_string(a.eps)) +
      ", batch " + std::to_string(a.batch));

  // Majority class of the training set: the floor any classifier must beat.
  std::vector<int64_t> counts(labels.size(), 0);
  for (int64_t y : train.labels) ++counts[static_cast<size_t>(y)];
  const auto majority = static_cast<int64_t>(std::max_element(counts.begin(), counts.end()) - counts.begin());
  const double majority_test =
      static_cast<double>(std::count(test.labels.begin(), test.labels.end(), majority)) / static_cast<double>(test.size());

  // ---- training, evaluation, checkpoints: examples/common/harness.h --------------------------
  TrainingTask task;
  task.params = params;
  task.names = param_names;
  task.train_size = train.size();
  task.loss = [&](const std::vector<size_t>& idx) {
    std::vector<int64_t> y;
    for (size_t i : idx) y.push_back(train.labels[i]);
    const at::Tensor target = at::tensor(y, at::kLong).to(device);
    return at::cross_entropy_loss(m.logits(train, idx).to(at::kFloat), target);
  };
  task.evaluate_dev = [&] { return evaluate(m, dev, a.eval_batch); };
  task.evaluate_test = [&] { return evaluate(m, test, a.eval_batch); };
  const LoopOptions loop = loop_options(a, "finetune_classifier", device, elapsed, log);  // LoRA: examples/common/bert.h
  const LoopResult r = run_training(loop, task, trainer);

  Json summary = r.summary;
  summary["majority_test_accuracy"] = majority_test;
  summary["lr"] = a.lr;
  summary["eps"] = a.eps;
  summary["dtype"] = a.dtype;
  summary["device"] = a.device;
  summary["train_layers"] = train_layers;
  summary["model"] = a.model;
  summary["train"] = a.train;
  summary["dev"] = a.dev;
  summary["test"] = a.test;
  summary["labels"] = labels;
  if (a.optimizer == "fzoo") summary["num_perturbations"] = a.num_perturbations;
  if (a.optimizer == "adamezo") summary["window"] = a.window;
  if (a.mode == "lora") summary["lora_rank"] = a.lora_rank;
  write_summary(a.out, summary);
  const fs::path out(a.out);
  char line[256];
  std::snprintf(line, sizeof line, "%s/%s: test accuracy %.4f (best dev %.4f at %lld forward passes; %lld forward passes, %s, peak %.0f MiB)",
                a.optimizer.c_str(), a.mode.c_str(), r.test.metric, r.best_dev, static_cast<long long>(r.best_forward_passes),
                static_cast<long long>(r.forward_passes), format_seconds(r.wall_seconds).c_str(),
                static_cast<double>(peak_bytes(device)) / (1 << 20));
  std::cout << line << "\n  " << (out / "summary.json").string() << ", " << (out / "metrics.csv").string() << ", "
            << (out / "trained.safetensors").string() << std::endl;
  return 0;
} catch (const c10::Error& e) {
  std::cerr << "finetune_classifier: " << e.what_without_backtrace() << std::endl;
  return 1;
} catch (const std::exception& e) {
  std::cerr << "finetune_classifier: " << e.what() << std::endl;
  return 1;
}
