// A BERT encoder as a torch::nn module whose parameter names are Hugging Face's, so a model
// directory (config.json + model.safetensors or pytorch_model.bin) loads by name; plus the pooled
// sentence classifier (optional LoRA on attention query/value) the fine-tuning examples train.
#pragma once

#include "files.h"
#include "safetensors.h"

#include <torch/nn/functional/activation.h>
#include <torch/nn/init.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include <cmath>
#include <filesystem>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace zotorch::examples {

/// The config.json fields a BERT encoder needs (names as in transformers' BertConfig).
struct BertConfig {
  int64_t vocab_size = 30522;
  int64_t hidden_size = 768;
  int64_t num_hidden_layers = 12;
  int64_t num_attention_heads = 12;
  int64_t intermediate_size = 3072;
  int64_t max_position_embeddings = 512;
  int64_t type_vocab_size = 2;
  double layer_norm_eps = 1e-12;
  std::string hidden_act = "gelu";
  int64_t pad_token_id = 0;

  static BertConfig from_json(const Json& j, const std::string& where = "config.json") {
    const std::string type = json_value<std::string>(j, "model_type", "bert");
    TORCH_CHECK(type == "bert" || type == "roberta" || type == "xlm-roberta" || type == "electra", where,
                ": model_type '", type, "' is not a BERT-family encoder; this loader reads model_type bert");
    const std::string pos = json_value<std::string>(j, "position_embedding_type", "absolute");
    TORCH_CHECK(pos == "absolute", where, ": position_embedding_type '", pos, "' is not supported (only absolute)");
    BertConfig c;
    c.vocab_size = json_value<int64_t>(j, "vocab_size", c.vocab_size);
    c.hidden_size = json_value<int64_t>(j, "hidden_size", c.hidden_size);
    c.num_hidden_layers = json_value<int64_t>(j, "num_hidden_layers", c.num_hidden_layers);
    c.num_attention_heads = json_value<int64_t>(j, "num_attention_heads", c.num_attention_heads);
    c.intermediate_size = json_value<int64_t>(j, "intermediate_size", c.intermediate_size);
    c.max_position_embeddings = json_value<int64_t>(j, "max_position_embeddings", c.max_position_embeddings);
    c.type_vocab_size = json_value<int64_t>(j, "type_vocab_size", c.type_vocab_size);
    c.layer_norm_eps = json_value<double>(j, "layer_norm_eps", c.layer_norm_eps);
    c.hidden_act = json_value<std::string>(j, "hidden_act", c.hidden_act);
    c.pad_token_id = json_value<int64_t>(j, "pad_token_id", c.pad_token_id);
    TORCH_CHECK(c.hidden_size > 0 && c.num_attention_heads > 0 && c.hidden_size % c.num_attention_heads == 0, where,
                ": hidden_size ", c.hidden_size, " must be a positive multiple of num_attention_heads ", c.num_attention_heads);
    TORCH_CHECK(c.hidden_act == "gelu" || c.hidden_act == "gelu_new" || c.hidden_act == "gelu_pytorch_tanh" ||
                    c.hidden_act == "relu",
                where, ": hidden_act '", c.hidden_act, "' is not supported (gelu, gelu_new, gelu_pytorch_tanh, relu are)");
    return c;
  }
};

namespace bert {

inline at::Tensor activation(const at::Tensor& x, const std::string& act) {
  if (act == "gelu") return at::gelu(x);  // exact erf GELU, as BERT was trained
  if (act == "relu") return at::relu(x);
  return at::gelu(x, "tanh");
}

struct EmbeddingsImpl : torch::nn::Module {
  explicit EmbeddingsImpl(const BertConfig& c)
      : word_embeddings(register_module("word_embeddings", torch::nn::Embedding(c.vocab_size, c.hidden_size))),
        position_embeddings(register_module("position_embeddings", torch::nn::Embedding(c.max_position_embeddings, c.hidden_size))),
        token_type_embeddings(register_module("token_type_embeddings", torch::nn::Embedding(c.type_vocab_size, c.hidden_size))),
        LayerNorm(register_module("LayerNorm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.hidden_size}).eps(c.layer_norm_eps)))),
        max_positions(c.max_position_embeddings) {}

  at::Tensor forward(const at::Tensor& input_ids, const at::Tensor& token_type_ids) {
    const int64_t L = input_ids.size(1);
    TORCH_CHECK(L <= max_positions, "BertModel: sequence length ", L, " exceeds max_position_embeddings ", max_positions,
                "; truncate the input (e.g. --max-length ", max_positions, ")");
    const at::Tensor positions = at::arange(L, input_ids.options()).unsqueeze(0);
    at::Tensor x = word_embeddings(input_ids) + token_type_embeddings(token_type_ids) + position_embeddings(positions);
    return LayerNorm(x);
  }

  torch::nn::Embedding word_embeddings, position_embeddings, token_type_embeddings;
  torch::nn::LayerNorm LayerNorm;
  int64_t max_positions;
};
TORCH_MODULE(Embeddings);

/// Self-attention with optional LoRA adapters on the query and value projections (Hu et al. 2021):
/// q = W_q x + (alpha/r) B_q A_q x, B initialised to zero so the adapted model starts as the original.
struct SelfAttentionImpl : torch::nn::Module {
  explicit SelfAttentionImpl(const BertConfig& c)
      : query(register_module("query", torch::nn::Linear(c.hidden_size, c.hidden_size))),
        key(register_module("key", torch::nn::Linear(c.hidden_size, c.hidden_size))),
        value(register_module("value", torch::nn::Linear(c.hidden_size, c.hidden_size))),
        heads(c.num_attention_heads) {}

  void enable_lora(int64_t rank, double alpha) {
    TORCH_CHECK(rank > 0, "BertModel::enable_lora: rank must be > 0, got ", rank);
    TORCH_CHECK(!lora_query_A.defined(), "BertModel::enable_lora: LoRA adapters are already enabled");
    const int64_t h = query->weight.size(1);
    auto opts = query->weight.options();
    // A ~ Kaiming-uniform(a=sqrt(5)) as PEFT initialises it, B = 0.
    const double bound = 1.0 / std::sqrt(static_cast<double>(h));
    lora_query_A = register_parameter("lora_query_A", at::empty({rank, h}, opts).uniform_(-bound, bound));
    lora_query_B = register_parameter("lora_query_B", at::zeros({h, rank}, opts));
    lora_value_A = register_parameter("lora_value_A", at::empty({rank, h}, opts).uniform_(-bound, bound));
    lora_value_B = register_parameter("lora_value_B", at::zeros({h, rank}, opts));
    lora_scale = alpha / static_cast<double>(rank);
  }

  /// x: [B, L, H]; key_mask: [B, 1, 1, L] bool, true where the key is a real token.
  at::Tensor forward(const at::Tensor& x, const at::Tensor& key_mask) {
    at::Tensor q = query(x), v = value(x);
    if (lora_query_A.defined()) {
      q = q + at::matmul(at::matmul(x, lora_query_A.t()), lora_query_B.t()) * lora_scale;
      v = v + at::matmul(at::matmul(x, lora_value_A.t()), lora_value_B.t()) * lora_scale;
    }
    const at::Tensor k = key(x);
    const int64_t B = x.size(0), L = x.size(1), H = x.size(2), d = H / heads;
    auto split = [&](const at::Tensor& t) { return t.view({B, L, heads, d}).transpose(1, 2); };
    at::Tensor ctx = at::scaled_dot_product_attention(split(q), split(k), split(v), key_mask);
    return ctx.transpose(1, 2).reshape({B, L, H});
  }

  torch::nn::Linear query, key, value;
  int64_t heads;
  at::Tensor lora_query_A, lora_query_B, lora_value_A, lora_value_B;
  double lora_scale = 0;
};
TORCH_MODULE(SelfAttention);

/// dense then LayerNorm(dense(x) + residual): the post-LN block BERT uses twice per layer.
struct DenseNormImpl : torch::nn::Module {
  DenseNormImpl(int64_t in, int64_t out, double eps)
      : dense(register_module("dense", torch::nn::Linear(in, out))),
        LayerNorm(register_module("LayerNorm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({out}).eps(eps)))) {}
  at::Tensor forward(const at::Tensor& x, const at::Tensor& residual) { return LayerNorm(dense(x) + residual); }
  torch::nn::Linear dense;
  torch::nn::LayerNorm LayerNorm;
};
TORCH_MODULE(DenseNorm);

struct AttentionImpl : torch::nn::Module {
  explicit AttentionImpl(const BertConfig& c)
      : self(register_module("self", SelfAttention(c))),
        output(register_module("output", DenseNorm(c.hidden_size, c.hidden_size, c.layer_norm_eps))) {}
  at::Tensor forward(const at::Tensor& x, const at::Tensor& key_mask) { return output(self(x, key_mask), x); }
  SelfAttention self;
  DenseNorm output;
};
TORCH_MODULE(Attention);

struct IntermediateImpl : torch::nn::Module {
  explicit IntermediateImpl(const BertConfig& c)
      : dense(register_module("dense", torch::nn::Linear(c.hidden_size, c.intermediate_size))), act(c.hidden_act) {}
  at::Tensor forward(const at::Tensor& x) { return activation(dense(x), act); }
  torch::nn::Linear dense;
  std::string act;
};
TORCH_MODULE(Intermediate);

struct LayerImpl : torch::nn::Module {
  explicit LayerImpl(const BertConfig& c)
      : attention(register_module("attention", Attention(c))),
        intermediate(register_module("intermediate", Intermediate(c))),
        output(register_module("output", DenseNorm(c.intermediate_size, c.hidden_size, c.layer_norm_eps))) {}
  at::Tensor forward(const at::Tensor& x, const at::Tensor& key_mask) {
    const at::Tensor a = attention(x, key_mask);
    return output(intermediate(a), a);
  }
  Attention attention;
  Intermediate intermediate;
  DenseNorm output;
};
TORCH_MODULE(Layer);

struct EncoderImpl : torch::nn::Module {
  explicit EncoderImpl(const BertConfig& c) : layer(register_module("layer", torch::nn::ModuleList())) {
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) layer->push_back(Layer(c));
  }
  torch::nn::ModuleList layer;
};
TORCH_MODULE(Encoder);

struct PoolerImpl : torch::nn::Module {
  explicit PoolerImpl(const BertConfig& c) : dense(register_module("dense", torch::nn::Linear(c.hidden_size, c.hidden_size))) {}
  at::Tensor forward(const at::Tensor& hidden) { return at::tanh(dense(hidden.select(1, 0))); }
  torch::nn::Linear dense;
};
TORCH_MODULE(Pooler);

}  // namespace bert

/// BERT encoder (transformers' BertModel): embeddings, N post-LN transformer layers, optional pooler.
/// Runs in eval semantics always (no dropout): zeroth-order methods need a deterministic loss.
struct BertModelImpl : torch::nn::Module {
  explicit BertModelImpl(BertConfig c, bool with_pooler = true)
      : config(std::move(c)),
        embeddings(register_module("embeddings", bert::Embeddings(config))),
        encoder(register_module("encoder", bert::Encoder(config))) {
    if (with_pooler) pooler = register_module("pooler", bert::Pooler(config));
  }

  /// input_ids, attention_mask, token_type_ids: [B, L] int64. Returns the last hidden state [B, L, H].
  at::Tensor forward(const at::Tensor& input_ids, const at::Tensor& attention_mask, const at::Tensor& token_type_ids = {}) {
    TORCH_CHECK(input_ids.dim() == 2, "BertModel: input_ids must be [batch, seq], got ", input_ids.sizes());
    const at::Tensor types = token_type_ids.defined() ? token_type_ids : at::zeros_like(input_ids);
    return forward_layers(embeddings(input_ids, types), attention_mask, 0, num_layers());
  }

  /// Runs layers [begin, end) on hidden states x [B, L, H]. With forward(), lets a caller cache the
  /// output of frozen lower layers and run only the trainable top ones per forward pass.
  at::Tensor forward_layers(at::Tensor x, const at::Tensor& attention_mask, int64_t begin, int64_t end) {
    TORCH_CHECK(0 <= begin && begin <= end && end <= num_layers(), "BertModel::forward_layers: layer range [", begin, ", ",
                end, ") is outside [0, ", num_layers(), "]");
    const at::Tensor key_mask = attention_mask.to(at::kBool).view({x.size(0), 1, 1, x.size(1)});
    for (int64_t i = begin; i < end; ++i) x = encoder->layer[static_cast<size_t>(i)]->as<bert::Layer>()->forward(x, key_mask);
    return x;
  }

  int64_t num_layers() const { return static_cast<int64_t>(encoder->layer->size()); }

  /// Adds LoRA adapters to every layer's attention query and value projections.
  void enable_lora(int64_t rank, double alpha) {
    for (const auto& m : *encoder->layer) m->as<bert::Layer>()->attention->self->enable_lora(rank, alpha);
  }

  BertConfig config;
  bert::Embeddings embeddings;
  bert::Encoder encoder;
  bert::Pooler pooler{nullptr};
};
TORCH_MODULE(BertModel);

/// Mean of the hidden states over real tokens (sentence-transformers' pooling for all-MiniLM-L6-v2).
inline at::Tensor mean_pool(const at::Tensor& hidden, const at::Tensor& attention_mask) {
  const at::Tensor m = attention_mask.unsqueeze(-1).to(hidden.scalar_type());
  return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9);
}

/// What load_bert_weights did, for the user to see.
struct LoadReport {
  std::string file;
  std::vector<std::string> missing;     ///< model parameters the file lacked (left as initialised)
  std::vector<std::string> unexpected;  ///< file tensors the model has no place for (ignored)
  int64_t loaded = 0;
};

/// The weight file of a model directory: model.safetensors if present, else pytorch_model.bin.
inline std::string find_weight_file(const std::string& dir) {
  namespace fs = std::filesystem;
  for (const char* name : {"model.safetensors", "pytorch_model.bin"}) {
    if (fs::exists(fs::path(dir) / name)) return (fs::path(dir) / name).string();
  }
  TORCH_CHECK(false, "load_bert: ", dir, " has neither model.safetensors nor pytorch_model.bin; point --model at a "
              "Hugging Face model directory (scripts/fetch-model.sh prints one)");
}

/// Loads Hugging Face encoder weights into `module` (a BertModel) by parameter name. A file that keeps
/// the encoder under "bert." (BertForSequenceClassification, BertForMaskedLM) is recognised and its
/// other heads are ignored. Old TF-converted names (LayerNorm.gamma/beta) are mapped. Shapes must
/// match exactly; missing and unexpected names are reported, not fatal.
inline LoadReport load_bert_weights(torch::nn::Module& module, const std::string& file) {
  const bool safetensors = file.size() >= 12 && file.substr(file.size() - 12) == ".safetensors";
  NamedTensors tensors = safetensors ? load_safetensors(file) : load_torch_state_dict(file);
  std::map<std::string, at::Tensor> by_name;
  bool has_bert_prefix = false;
  for (auto& [name, t] : tensors) has_bert_prefix = has_bert_prefix || name.rfind("bert.", 0) == 0;
  for (auto& [name, t] : tensors) {
    std::string n = name;
    if (has_bert_prefix) {
      if (n.rfind("bert.", 0) != 0) continue;  // heads of another task (cls.*, classifier.*)
      n = n.substr(5);
    }
    auto replace_suffix = [&](const char* from, const char* to) {
      const std::string f(from);
      if (n.size() >= f.size() && n.compare(n.size() - f.size(), f.size(), f) == 0) n = n.substr(0, n.size() - f.size()) + to;
    };
    replace_suffix("LayerNorm.gamma", "LayerNorm.weight");
    replace_suffix("LayerNorm.beta", "LayerNorm.bias");
    by_name[n] = t;
  }
  LoadReport report;
  report.file = file;
  std::set<std::string> used;
  torch::NoGradGuard no_grad;
  for (auto& item : module.named_parameters(/*recurse=*/true)) {
    auto it = by_name.find(item.key());
    if (it == by_name.end()) {
      report.missing.push_back(item.key());
      continue;
    }
    at::Tensor& p = item.value();
    TORCH_CHECK(p.sizes() == it->second.sizes(), "load_bert: ", file, ": tensor '", it->first, "' has shape ",
                it->second.sizes(), " but the model built from config.json expects ", p.sizes(),
                "; does config.json belong to these weights?");
    p.copy_(it->second);
    used.insert(it->first);
    ++report.loaded;
  }
  for (const auto& [name, t] : by_name) {
    // position_ids is a constant buffer in transformers, not a weight.
    if (!used.count(name) && name.find("position_ids") == std::string::npos) report.unexpected.push_back(name);
  }
  return report;
}

/// A BERT model directory: config, encoder with weights loaded, and the report of what loaded.
struct LoadedBert {
  BertConfig config;
  BertModel model{nullptr};
  LoadReport report;
};

/// Builds a BertModel from `dir`/config.json and loads its weights (model.safetensors or
/// pytorch_model.bin). Fails if no encoder weight was found at all: random weights are never
/// silently substituted for a pretrained model.
inline LoadedBert load_bert(const std::string& dir) {
  namespace fs = std::filesystem;
  const std::string config_path = (fs::path(dir) / "config.json").string();
  TORCH_CHECK(fs::exists(config_path), "load_bert: ", dir, " has no config.json; point --model at a Hugging Face "
              "model directory (scripts/fetch-model.sh prints one)");
  LoadedBert out;
  out.config = BertConfig::from_json(read_json_file(config_path), config_path);
  out.model = BertModel(out.config, /*with_pooler=*/true);
  out.report = load_bert_weights(*out.model, find_weight_file(dir));
  int64_t encoder_missing = 0;
  for (const auto& m : out.report.missing) encoder_missing += m.rfind("pooler.", 0) != 0;
  TORCH_CHECK(encoder_missing == 0, "load_bert: ", out.report.file, " lacks ", encoder_missing,
              " encoder weights (first: ", out.report.missing.front(), "); it is not a BERT checkpoint matching config.json");
  if (std::find_if(out.report.missing.begin(), out.report.missing.end(),
                   [](const std::string& m) { return m.rfind("pooler.", 0) == 0; }) != out.report.missing.end()) {
    out.model->unregister_module("pooler");  // a checkpoint without a pooler: drop the random one
    out.model->pooler = nullptr;
    out.report.missing.clear();
  }
  return out;
}

/// Sentence pooling for the classifier.
enum class Pooling { Mean, Cls };

/// Pooled BERT encoder + linear head: logits = classifier(pool(encoder(x))). The head's parameters
/// are named "classifier.weight"/"classifier.bias", the encoder's "bert.*" as in transformers'
/// BertForSequenceClassification, so saved checkpoints read back with the same loader.
struct BertClassifierImpl : torch::nn::Module {
  BertClassifierImpl(BertModel encoder, int64_t num_labels, Pooling pooling = Pooling::Mean)
      : bert(register_module("bert", std::move(encoder))),
        classifier(register_module("classifier", torch::nn::Linear(bert->config.hidden_size, num_labels))),
        pooling(pooling) {}

  at::Tensor embed(const at::Tensor& input_ids, const at::Tensor& attention_mask) {
    const at::Tensor h = bert->forward(input_ids, attention_mask);
    return pooling == Pooling::Mean ? mean_pool(h, attention_mask) : h.select(1, 0);
  }
  at::Tensor forward(const at::Tensor& input_ids, const at::Tensor& attention_mask) {
    return classifier(embed(input_ids, attention_mask));
  }

  BertModel bert;
  torch::nn::Linear classifier;
  Pooling pooling;
};
TORCH_MODULE(BertClassifier);

}  // namespace zotorch::examples
