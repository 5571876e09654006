// A Llama-architecture decoder (the family of SmolLM2: RMSNorm, rotary positions, grouped-query
// attention, SwiGLU MLP, LM head tied to the embedding) as a torch::nn module whose parameter names
// are Hugging Face's, so that named_parameters() keys are the safetensors names and a converted
// checkpoint loads by name with nothing renamed. benchmarks/peers/llama.py is an independent PyTorch
// implementation with the same names; tests/test_llama.cpp holds both to the same logits. The
// benchmarks' presets, loss and token batch live here too, so that bench_step and the Python peers
// run the identical model (docs/performance.md "What is measured").
#pragma once

#include "files.h"
#include "safetensors.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>
#include <torch/utils.h>

#include <filesystem>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace zotorch::examples {

/// The config.json fields of a Llama model (names and meanings as in transformers' LlamaConfig).
struct LlamaConfig {
  int64_t vocab_size = 2048;
  int64_t hidden_size = 128;
  int64_t intermediate_size = 384;
  int64_t num_hidden_layers = 4;
  int64_t num_attention_heads = 4;
  int64_t num_key_value_heads = 2;
  int64_t max_position_embeddings = 256;
  double rope_theta = 10000.0;
  double rms_norm_eps = 1e-5;
  bool tie_word_embeddings = true;

  int64_t head_dim() const { return hidden_size / num_attention_heads; }

  /// Parameters of a model of this shape, without allocating it (the tied head counts once).
  int64_t num_parameters() const {
    const int64_t kv = num_key_value_heads * head_dim();
    const int64_t per_layer = 2 * hidden_size * hidden_size + 2 * hidden_size * kv + 3 * hidden_size * intermediate_size +
                              2 * hidden_size;
    return vocab_size * hidden_size * (tie_word_embeddings ? 1 : 2) + num_hidden_layers * per_layer + hidden_size;
  }

  void check(const std::string& where) const {
    TORCH_CHECK(vocab_size > 0 && hidden_size > 0 && intermediate_size > 0 && num_hidden_layers >= 0 &&
                    max_position_embeddings > 0,
                where, ": sizes must be positive (vocab_size ", vocab_size, ", hidden_size ", hidden_size,
                ", intermediate_size ", intermediate_size, ", num_hidden_layers ", num_hidden_layers,
                ", max_position_embeddings ", max_position_embeddings, ")");
    TORCH_CHECK(num_attention_heads > 0 && hidden_size % num_attention_heads == 0 && head_dim() % 2 == 0, where,
                ": hidden_size ", hidden_size, " must be a multiple of num_attention_heads ", num_attention_heads,
                " with an even head size (rotary positions rotate pairs)");
    TORCH_CHECK(num_key_value_heads > 0 && num_attention_heads % num_key_value_heads == 0, where,
                ": num_attention_heads ", num_attention_heads, " must be a multiple of num_key_value_heads ",
                num_key_value_heads);
    TORCH_CHECK(rope_theta > 0 && rms_norm_eps > 0, where, ": rope_theta ", rope_theta, " and rms_norm_eps ",
                rms_norm_eps, " must be positive");
  }

  /// Reads a Hugging Face config.json. Options that change the computation and are not implemented
  /// (rope_scaling, biases, another activation, a head size other than hidden/heads) are refused
  /// rather than ignored, so that a model this code cannot run never gives plausible wrong logits.
  static LlamaConfig from_json(const std::string& config_json_path) {
    const std::string& where = config_json_path;
    Json j;
    try {
      j = read_json_file(config_json_path);
    } catch (const std::exception& e) {
      TORCH_CHECK(false, "LlamaConfig::from_json: ", e.what());
    }
    TORCH_CHECK(j.is_object(), "LlamaConfig::from_json: ", where, " is not a JSON object");
    auto get = [&](const char* key, auto fallback, bool required) {
      TORCH_CHECK(!required || (j.contains(key) && !j.at(key).is_null()), "LlamaConfig::from_json: ", where,
                  " lacks \"", key, "\"; is it a Llama config.json?");
      try {
        return json_value<decltype(fallback)>(j, key, fallback);
      } catch (const std::exception& e) {
        TORCH_CHECK(false, "LlamaConfig::from_json: ", where, ": ", e.what());
      }
      return fallback;  // not reached
    };
    const std::string type = get("model_type", std::string("llama"), false);
    TORCH_CHECK(type == "llama", "LlamaConfig::from_json: ", where, ": model_type '", type,
                "' is not supported; this loader runs model_type llama");
    const std::string act = get("hidden_act", std::string("silu"), false);
    TORCH_CHECK(act == "silu", "LlamaConfig::from_json: ", where, ": hidden_act '", act, "' is not supported (silu is)");
    TORCH_CHECK(!j.contains("rope_scaling") || j.at("rope_scaling").is_null(), "LlamaConfig::from_json: ", where,
                ": rope_scaling ", j.contains("rope_scaling") ? j.at("rope_scaling").dump() : "",
                " is not supported (only plain rotary positions)");
    TORCH_CHECK(!get("attention_bias", false, false) && !get("mlp_bias", false, false), "LlamaConfig::from_json: ",
                where, ": attention_bias and mlp_bias must be false (projections here have no bias)");
    LlamaConfig c;
    c.vocab_size = get("vocab_size", int64_t{0}, true);
    c.hidden_size = get("hidden_size", int64_t{0}, true);
    c.intermediate_size = get("intermediate_size", int64_t{0}, true);
    c.num_hidden_layers = get("num_hidden_layers", int64_t{0}, true);
    c.num_attention_heads = get("num_attention_heads", int64_t{0}, true);
    // Defaults are transformers' LlamaConfig defaults: no kv key means one kv head per query head.
    c.num_key_value_heads = get("num_key_value_heads", c.num_attention_heads, false);
    c.max_position_embeddings = get("max_position_embeddings", int64_t{2048}, false);
    c.rope_theta = get("rope_theta", 10000.0, false);
    c.rms_norm_eps = get("rms_norm_eps", 1e-6, false);
    c.tie_word_embeddings = get("tie_word_embeddings", false, false);
    c.check("LlamaConfig::from_json: " + where);
    const int64_t head_dim = get("head_dim", c.head_dim(), false);
    TORCH_CHECK(head_dim == c.head_dim(), "LlamaConfig::from_json: ", where, ": head_dim ", head_dim,
                " differs from hidden_size / num_attention_heads = ", c.head_dim(), ", which is not supported");
    return c;
  }

  /// The benchmarks' sizes: "tiny" (1.2M parameters), "small" (11.1M), "medium" (33.6M) and
  /// "smollm2-135m" (SmolLM2-135M's shape, 134.5M). All use grouped-query attention and a tied head,
  /// as SmolLM2 does, so that the small ones exercise the same code.
  static LlamaConfig preset(const std::string& name) {
    LlamaConfig c;
    if (name == "tiny") return c;
    if (name == "small") {
      c.vocab_size = 8192, c.hidden_size = 256, c.intermediate_size = 768, c.num_hidden_layers = 12;
      c.num_attention_heads = 4, c.num_key_value_heads = 2, c.max_position_embeddings = 512;
      return c;
    }
    if (name == "medium") {
      c.vocab_size = 16384, c.hidden_size = 512, c.intermediate_size = 1536, c.num_hidden_layers = 8;
      c.num_attention_heads = 8, c.num_key_value_heads = 4, c.max_position_embeddings = 1024;
      return c;
    }
    if (name == "smollm2-135m") {
      c.vocab_size = 49152, c.hidden_size = 576, c.intermediate_size = 1536, c.num_hidden_layers = 30;
      c.num_attention_heads = 9, c.num_key_value_heads = 3, c.max_position_embeddings = 8192;
      c.rope_theta = 100000.0, c.rms_norm_eps = 1e-5;
      return c;
    }
    TORCH_CHECK(false, "LlamaConfig::preset: unknown size '", name, "'; use tiny, small, medium or smollm2-135m");
  }

  /// The config as safetensors metadata (all strings), so that a weight file says which model it holds.
  std::map<std::string, std::string> to_metadata() const {
    return {{"vocab_size", std::to_string(vocab_size)},
            {"hidden_size", std::to_string(hidden_size)},
            {"intermediate_size", std::to_string(intermediate_size)},
            {"num_hidden_layers", std::to_string(num_hidden_layers)},
            {"num_attention_heads", std::to_string(num_attention_heads)},
            {"num_key_value_heads", std::to_string(num_key_value_heads)},
            {"max_position_embeddings", std::to_string(max_position_embeddings)},
            {"rope_theta", std::to_string(rope_theta)},
            {"rms_norm_eps", std::to_string(rms_norm_eps)},
            {"tie_word_embeddings", tie_word_embeddings ? "true" : "false"}};
  }
};

namespace llama {

/// Root-mean-square norm. As in transformers, the statistics are taken in float32 whatever the
/// model's dtype (bfloat16 squares would lose the mean), and the gain multiplies after the cast back.
struct RMSNormImpl : torch::nn::Module {
  RMSNormImpl(int64_t size, double eps) : eps(eps) { weight = register_parameter("weight", at::ones({size})); }

  at::Tensor forward(const at::Tensor& x) {
    const at::Tensor x32 = x.to(at::kFloat);
    const at::Tensor normed = x32 * at::rsqrt(x32.pow(2).mean(-1, /*keepdim=*/true) + eps);
    return weight * normed.to(x.scalar_type());
  }

  at::Tensor weight;
  double eps;
};
TORCH_MODULE(RMSNorm);

/// cos and sin of the rotary angles, [T, head_dim], for positions 0..T-1: angle(t, i) = t ·
/// theta^(-2i/head_dim), the half-size table repeated twice (the "rotate_half" layout of Hugging Face
/// checkpoints, where pair i is (x[i], x[i + head_dim/2]), not interleaved). Angles in float32, then
/// cast to the activations' dtype, as transformers does, so that bfloat16 runs round the same way.
inline std::pair<at::Tensor, at::Tensor> rope_tables(int64_t length, int64_t head_dim, double theta,
                                                     const at::TensorOptions& options) {
  const at::Tensor exponents = at::arange(0, head_dim, 2, at::kLong).to(at::kFloat) / static_cast<double>(head_dim);
  const at::Tensor inv_freq = (1.0 / at::pow(theta, exponents)).to(options.device());
  const at::Tensor positions = at::arange(length, at::TensorOptions().dtype(at::kFloat).device(options.device()));
  const at::Tensor angles = at::outer(positions, inv_freq);
  const at::Tensor table = at::cat({angles, angles}, -1);
  return {table.cos().to(options.dtype()), table.sin().to(options.dtype())};
}

inline at::Tensor rotate_half(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

inline at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  return x * cos + rotate_half(x) * sin;
}

/// Causal self-attention with grouped-query heads: each of num_key_value_heads k/v heads serves
/// num_attention_heads / num_key_value_heads consecutive query heads.
struct AttentionImpl : torch::nn::Module {
  explicit AttentionImpl(const LlamaConfig& c)
      : q_proj(register_module("q_proj", torch::nn::Linear(torch::nn::LinearOptions(c.hidden_size, c.hidden_size).bias(false)))),
        k_proj(register_module("k_proj", torch::nn::Linear(torch::nn::LinearOptions(c.hidden_size, c.num_key_value_heads * c.head_dim()).bias(false)))),
        v_proj(register_module("v_proj", torch::nn::Linear(torch::nn::LinearOptions(c.hidden_size, c.num_key_value_heads * c.head_dim()).bias(false)))),
        o_proj(register_module("o_proj", torch::nn::Linear(torch::nn::LinearOptions(c.hidden_size, c.hidden_size).bias(false)))),
        heads(c.num_attention_heads),
        kv_heads(c.num_key_value_heads),
        head_dim(c.head_dim()) {}

  at::Tensor forward(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
    const int64_t batch = x.size(0), length = x.size(1);
    auto split = [&](const at::Tensor& t, int64_t n) { return t.view({batch, length, n, head_dim}).transpose(1, 2); };
    const at::Tensor q = apply_rope(split(q_proj(x), heads), cos, sin);
    at::Tensor k = apply_rope(split(k_proj(x), kv_heads), cos, sin);
    at::Tensor v = split(v_proj(x), kv_heads);
    if (kv_heads != heads) {
      // Repeat each k/v head for its group of query heads (a broadcast view, then one copy).
      const int64_t group = heads / kv_heads;
      auto repeat = [&](const at::Tensor& t) {
        return t.unsqueeze(2).expand({batch, kv_heads, group, length, head_dim}).reshape({batch, heads, length, head_dim});
      };
      k = repeat(k);
      v = repeat(v);
    }
    // Right padding needs no mask: with causal attention a real token never sees the pads after it.
    const at::Tensor y = at::scaled_dot_product_attention(q, k, v, /*attn_mask=*/{}, /*dropout_p=*/0.0, /*is_causal=*/true);
    return o_proj(y.transpose(1, 2).reshape({batch, length, heads * head_dim}));
  }

  torch::nn::Linear q_proj, k_proj, v_proj, o_proj;
  int64_t heads, kv_heads, head_dim;
};
TORCH_MODULE(Attention);

/// SwiGLU: down(silu(gate(x)) · up(x)).
struct MLPImpl : torch::nn::Module {
  explicit MLPImpl(const LlamaConfig& c)
      : gate_proj(register_module("gate_proj", torch::nn::Linear(torch::nn::LinearOptions(c.hidden_size, c.intermediate_size).bias(false)))),
        up_proj(register_module("up_proj", torch::nn::Linear(torch::nn::LinearOptions(c.hidden_size, c.intermediate_size).bias(false)))),
        down_proj(register_module("down_proj", torch::nn::Linear(torch::nn::LinearOptions(c.intermediate_size, c.hidden_size).bias(false)))) {}

  at::Tensor forward(const at::Tensor& x) { return down_proj(at::silu(gate_proj(x)) * up_proj(x)); }

  torch::nn::Linear gate_proj, up_proj, down_proj;
};
TORCH_MODULE(MLP);

/// Pre-norm block: h = x + attn(norm(x)); h + mlp(norm(h)).
struct DecoderLayerImpl : torch::nn::Module {
  explicit DecoderLayerImpl(const LlamaConfig& c)
      : self_attn(register_module("self_attn", Attention(c))),
        mlp(register_module("mlp", MLP(c))),
        input_layernorm(register_module("input_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps))),
        post_attention_layernorm(register_module("post_attention_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps))) {}

  at::Tensor forward(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
    const at::Tensor h = x + self_attn->forward(input_layernorm(x), cos, sin);
    return h + mlp(post_attention_layernorm(h));
  }

  Attention self_attn;
  MLP mlp;
  RMSNorm input_layernorm, post_attention_layernorm;
};
TORCH_MODULE(DecoderLayer);

/// The trunk, registered as "model" so that its parameters are "model.embed_tokens.weight", ...
struct ModelImpl : torch::nn::Module {
  explicit ModelImpl(const LlamaConfig& c)
      : embed_tokens(register_module("embed_tokens", torch::nn::Embedding(c.vocab_size, c.hidden_size))),
        layers(register_module("layers", torch::nn::ModuleList())),
        norm(register_module("norm", RMSNorm(c.hidden_size, c.rms_norm_eps))) {
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) layers->push_back(DecoderLayer(c));
  }

  torch::nn::Embedding embed_tokens;
  torch::nn::ModuleList layers;
  RMSNorm norm;
};
TORCH_MODULE(Model);

}  // namespace llama

/// The causal LM. Its parameters are registered under Hugging Face's names; the tied LM head is the
/// embedding itself, not a second parameter, so an optimizer perturbs and updates it once.
class LlamaForCausalLMImpl : public torch::nn::Module {
 public:
  explicit LlamaForCausalLMImpl(const LlamaConfig& c) : config(c) {
    c.check("LlamaForCausalLM");
    model = register_module("model", llama::Model(c));
    if (!c.tie_word_embeddings) {
      lm_head = register_module("lm_head", torch::nn::Linear(torch::nn::LinearOptions(c.hidden_size, c.vocab_size).bias(false)));
    }
  }

  /// [B, T] int64 ids, right-padded (positions are 0..T-1 in every row) -> [B, T, H] after the final norm.
  at::Tensor hidden_states(const at::Tensor& input_ids) {
    TORCH_CHECK(input_ids.dim() == 2 && input_ids.scalar_type() == at::kLong,
                "LlamaForCausalLM: input_ids must be a [batch, length] int64 tensor, got ", input_ids.sizes(), " ",
                input_ids.scalar_type());
    TORCH_CHECK(input_ids.size(1) <= config.max_position_embeddings, "LlamaForCausalLM: sequence length ",
                input_ids.size(1), " exceeds max_position_embeddings ", config.max_position_embeddings,
                "; truncate the input");
    at::Tensor x = model->embed_tokens(input_ids);
    const auto [cos, sin] = llama::rope_tables(input_ids.size(1), config.head_dim(), config.rope_theta, x.options());
    for (const auto& layer : *model->layers) x = layer->as<llama::DecoderLayer>()->forward(x, cos, sin);
    return model->norm(x);
  }

  /// [..., H] -> [..., V]: the projection on the (tied) head.
  at::Tensor logits(const at::Tensor& hidden) { return at::linear(hidden, lm_head_weight()); }

  /// Logits [B, T, V] of input_ids [B, T].
  at::Tensor forward(const at::Tensor& input_ids) { return logits(hidden_states(input_ids)); }

  /// [V, H]: the embedding when tied.
  at::Tensor lm_head_weight() { return lm_head ? lm_head->weight : model->embed_tokens->weight; }

  /// GPT-2's and transformers' initialisation: N(0, 0.02) matrices, unit norm gains.
  void init_weights(uint64_t seed) {
    torch::NoGradGuard no_grad;
    at::Generator generator = at::detail::createCPUGenerator(seed);
    for (auto& item : named_parameters()) {
      at::Tensor& p = item.value();
      if (p.dim() == 1) {
        p.fill_(1.0);
      } else {
        p.copy_(at::normal(0.0, 0.02, p.sizes(), generator, at::TensorOptions().dtype(at::kFloat)));
      }
    }
  }

  LlamaConfig config;
  llama::Model model{nullptr};
  torch::nn::Linear lm_head{nullptr};
};
TORCH_MODULE(LlamaForCausalLM);

/// The parameters by name (CPU copies), ready for save_safetensors.
inline NamedTensors llama_weights(LlamaForCausalLM& model) {
  NamedTensors out;
  for (const auto& item : model->named_parameters()) out.emplace_back(item.key(), item.value().detach().cpu());
  return out;
}

/// Copies weights by name into `model` (casting to its dtype and device). Every parameter must be
/// present with its shape, and every tensor must be used, so that a file of another shape cannot
/// half-load; the errors name the tensor. Tolerated extras: "lm_head.weight" of a tied model when it
/// equals the embedding (some checkpoints store the tied head twice) and rotary inv_freq buffers
/// (a constant the model computes).
inline void load_llama_weights(LlamaForCausalLM& model, const NamedTensors& weights, const std::string& where = "weights") {
  torch::NoGradGuard no_grad;
  std::map<std::string, at::Tensor> by_name;
  for (const auto& [name, tensor] : weights) {
    TORCH_CHECK(by_name.emplace(name, tensor).second, "load_llama: ", where, " holds '", name, "' twice");
  }
  std::set<std::string> used;
  for (auto& item : model->named_parameters()) {
    auto found = by_name.find(item.key());
    TORCH_CHECK(found != by_name.end(), "load_llama: ", where, " lacks the tensor '", item.key(),
                "'; is it a checkpoint of this model (config.json)?");
    TORCH_CHECK(found->second.sizes() == item.value().sizes(), "load_llama: ", where, ": '", item.key(), "' has shape ",
                found->second.sizes(), " but the model expects ", item.value().sizes(),
                "; does config.json belong to these weights?");
    item.value().copy_(found->second);
    used.insert(item.key());
  }
  const std::string inv_freq = ".rotary_emb.inv_freq";
  for (const auto& [name, tensor] : by_name) {
    if (used.count(name)) continue;
    if (name.size() > inv_freq.size() && name.compare(name.size() - inv_freq.size(), inv_freq.size(), inv_freq) == 0) continue;
    if (name == "lm_head.weight" && model->config.tie_word_embeddings) {
      const at::Tensor embedding = model->model->embed_tokens->weight;
      TORCH_CHECK(tensor.sizes() == embedding.sizes() && tensor.to(embedding.device(), embedding.scalar_type()).equal(embedding),
                  "load_llama: ", where, " has an 'lm_head.weight' that differs from the embedding, but config.json "
                  "says tie_word_embeddings true; set it to false to load a separate head");
      continue;
    }
    TORCH_CHECK(false, "load_llama: ", where, " has the tensor '", name,
                "', which this model does not have; does config.json belong to these weights?");
  }
}

/// Builds the model of DIR/config.json and loads DIR/model.safetensors, or DIR/model.bf16.safetensors
/// when `dtype` is bfloat16 and that file exists (half the bytes to read, and the same values: the
/// float32 file rounds to the same bfloat16 numbers). Returns it in eval mode on `device`.
inline LlamaForCausalLM load_llama(const std::string& dir, at::ScalarType dtype = at::kFloat, at::Device device = at::kCPU) {
  namespace fs = std::filesystem;
  TORCH_CHECK(at::isFloatingType(dtype), "load_llama: dtype must be a floating type, got ", dtype);
  const fs::path config_path = fs::path(dir) / "config.json";
  TORCH_CHECK(fs::exists(config_path), "load_llama: ", dir, " has no config.json; point it at a model directory");
  const LlamaConfig config = LlamaConfig::from_json(config_path.string());
  fs::path file = fs::path(dir) / "model.bf16.safetensors";
  if (dtype != at::kBFloat16 || !fs::exists(file)) file = fs::path(dir) / "model.safetensors";
  TORCH_CHECK(fs::exists(file), "load_llama: ", dir, " has no model.safetensors");
  LlamaForCausalLM model(config);
  model->to(device, dtype);
  load_llama_weights(model, load_safetensors(file.string()), file.string());
  model->eval();
  return model;
}

/// Next-token cross-entropy in float32 (position t predicts token t + 1), the loss both the C++
/// benchmark and the Python peers use.
inline at::Tensor lm_loss(const at::Tensor& logits, const at::Tensor& ids) {
  const int64_t vocab = logits.size(-1);
  at::Tensor predicted = logits.narrow(1, 0, logits.size(1) - 1).reshape({-1, vocab}).to(at::kFloat);
  return at::cross_entropy_loss(predicted, ids.narrow(1, 1, ids.size(1) - 1).reshape({-1}));
}

/// A deterministic batch of token ids that Python computes identically:
/// ((arange(B·T) · 2654435761 + 12345) mod vocab).view(B, T). The data do not change the cost.
inline at::Tensor token_batch(int64_t batch, int64_t length, int64_t vocab, const at::Device& device = at::kCPU) {
  at::Tensor i = at::arange(batch * length, at::TensorOptions().dtype(at::kLong));
  return ((i * 2654435761LL + 12345) % vocab).view({batch, length}).to(device);
}

}  // namespace zotorch::examples
