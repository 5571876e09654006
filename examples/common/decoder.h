// A decoder-only transformer (GPT/OPT style: token + learned position embeddings, pre-LN blocks,
// causal attention, GELU MLP, LM head tied to the token embedding) for the step benchmarks and the
// examples. benchmarks/peers/decoder.py is the same model in PyTorch, with the same parameter names,
// so weights saved by one side as safetensors load on the other and both run the identical model.
#pragma once

#include "safetensors.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/nn/functional/activation.h>
#include <torch/nn/functional/linear.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>
#include <torch/utils.h>

#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace zotorch::examples {

/// Sizes of a DecoderLM. The presets span tiny to OPT-125m so that benchmarks can plot cost
/// against model size; benchmarks/peers/decoder.py has the same table.
struct DecoderConfig {
  int64_t vocab_size = 2048;
  int64_t max_positions = 256;
  int64_t d_model = 128;
  int64_t num_heads = 4;
  int64_t num_layers = 4;
  int64_t d_ff = 512;
  double layer_norm_eps = 1e-5;

  /// "tiny" (~1.1M parameters), "small" (~10.1M), "medium" (~34M) or "125m" (OPT-125m's shape:
  /// 12 layers, d 768, 12 heads, vocab 50272, 2048 positions; ~125M).
  static DecoderConfig preset(const std::string& name) {
    DecoderConfig c;
    if (name == "tiny") return c;
    if (name == "small") {
      c.vocab_size = 8192, c.max_positions = 512, c.d_model = 256, c.num_heads = 4, c.num_layers = 10, c.d_ff = 1024;
      return c;
    }
    if (name == "medium") {
      c.vocab_size = 16384, c.max_positions = 1024, c.d_model = 512, c.num_heads = 8, c.num_layers = 8, c.d_ff = 2048;
      return c;
    }
    if (name == "125m") {
      c.vocab_size = 50272, c.max_positions = 2048, c.d_model = 768, c.num_heads = 12, c.num_layers = 12, c.d_ff = 3072;
      return c;
    }
    TORCH_CHECK(false, "DecoderConfig::preset: unknown size '", name, "'; use tiny, small, medium or 125m");
  }

  /// The config as safetensors metadata (all strings), so a weight file says which model it holds.
  std::map<std::string, std::string> to_metadata() const {
    return {{"vocab_size", std::to_string(vocab_size)}, {"max_positions", std::to_string(max_positions)},
            {"d_model", std::to_string(d_model)},       {"num_heads", std::to_string(num_heads)},
            {"num_layers", std::to_string(num_layers)}, {"d_ff", std::to_string(d_ff)}};
  }

  void check() const {
    TORCH_CHECK(vocab_size > 0 && max_positions > 0 && num_layers >= 0 && d_ff > 0,
                "DecoderConfig: sizes must be positive (vocab_size ", vocab_size, ", max_positions ", max_positions,
                ", num_layers ", num_layers, ", d_ff ", d_ff, ")");
    TORCH_CHECK(d_model > 0 && num_heads > 0 && d_model % num_heads == 0, "DecoderConfig: d_model ", d_model,
                " must be a positive multiple of num_heads ", num_heads);
  }
};

/// Causal multi-head self-attention with separate q/k/v projections (OPT's layout).
struct CausalSelfAttentionImpl : torch::nn::Module {
  explicit CausalSelfAttentionImpl(const DecoderConfig& c)
      : q_proj(register_module("q_proj", torch::nn::Linear(c.d_model, c.d_model))),
        k_proj(register_module("k_proj", torch::nn::Linear(c.d_model, c.d_model))),
        v_proj(register_module("v_proj", torch::nn::Linear(c.d_model, c.d_model))),
        out_proj(register_module("out_proj", torch::nn::Linear(c.d_model, c.d_model))),
        num_heads(c.num_heads) {}

  at::Tensor forward(const at::Tensor& x) {
    const int64_t batch = x.size(0), length = x.size(1), width = x.size(2);
    auto heads = [&](const at::Tensor& t) { return t.view({batch, length, num_heads, width / num_heads}).transpose(1, 2); };
    // The fused kernel PyTorch's F.scaled_dot_product_attention picks, so both sides run the same code.
    at::Tensor y = at::scaled_dot_product_attention(heads(q_proj(x)), heads(k_proj(x)), heads(v_proj(x)), {}, 0.0,
                                                    /*is_causal=*/true);
    return out_proj(y.transpose(1, 2).reshape({batch, length, width}));
  }

  torch::nn::Linear q_proj, k_proj, v_proj, out_proj;
  int64_t num_heads;
};
TORCH_MODULE(CausalSelfAttention);

/// Pre-LN block: x + attn(ln(x)), then x + fc2(gelu(fc1(ln(x)))).
struct DecoderBlockImpl : torch::nn::Module {
  explicit DecoderBlockImpl(const DecoderConfig& c)
      : attn_norm(register_module("attn_norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.d_model}).eps(c.layer_norm_eps)))),
        attn(register_module("attn", CausalSelfAttention(c))),
        mlp_norm(register_module("mlp_norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.d_model}).eps(c.layer_norm_eps)))),
        fc1(register_module("fc1", torch::nn::Linear(c.d_model, c.d_ff))),
        fc2(register_module("fc2", torch::nn::Linear(c.d_ff, c.d_model))) {}

  at::Tensor forward(at::Tensor x) {
    x = x + attn(attn_norm(x));
    return x + fc2(torch::nn::functional::gelu(fc1(mlp_norm(x))));
  }

  torch::nn::LayerNorm attn_norm;
  CausalSelfAttention attn;
  torch::nn::LayerNorm mlp_norm;
  torch::nn::Linear fc1, fc2;
};
TORCH_MODULE(DecoderBlock);

/// The language model: forward(ids [B, T] int64) returns logits [B, T, vocab_size].
struct DecoderLMImpl : torch::nn::Module {
  explicit DecoderLMImpl(const DecoderConfig& c)
      : config(c),
        embed_tokens(register_module("embed_tokens", torch::nn::Embedding(c.vocab_size, c.d_model))),
        embed_positions(register_module("embed_positions", torch::nn::Embedding(c.max_positions, c.d_model))),
        layers(register_module("layers", torch::nn::ModuleList())),
        final_norm(register_module("final_norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.d_model}).eps(c.layer_norm_eps)))) {
    c.check();
    for (int64_t i = 0; i < c.num_layers; ++i) layers->push_back(DecoderBlock(c));
  }

  at::Tensor forward(const at::Tensor& ids) {
    TORCH_CHECK(ids.dim() == 2 && ids.scalar_type() == at::kLong, "DecoderLM: ids must be a [batch, length] int64 tensor, got ",
                ids.sizes(), " ", ids.scalar_type());
    TORCH_CHECK(ids.size(1) <= config.max_positions, "DecoderLM: sequence length ", ids.size(1),
                " exceeds max_positions ", config.max_positions, "; use a shorter --seq or a larger preset");
    at::Tensor positions = at::arange(ids.size(1), ids.options());
    at::Tensor x = embed_tokens(ids) + embed_positions(positions);
    for (const auto& layer : *layers) x = layer->as<DecoderBlock>()->forward(x);
    // Tied head: the output projection is the token embedding, perturbed and updated once.
    return torch::nn::functional::linear(final_norm(x), embed_tokens->weight);
  }

  /// GPT-2's initialisation: N(0, 0.02) weights and embeddings, zero biases, unit LayerNorm gains.
  void init_weights(uint64_t seed) {
    torch::NoGradGuard no_grad;
    at::Generator generator = at::detail::createCPUGenerator(seed);
    for (auto& item : named_parameters()) {
      at::Tensor& p = item.value();
      const std::string& name = item.key();
      const bool is_norm = name.find("norm") != std::string::npos;
      const bool is_bias = name.size() >= 4 && name.compare(name.size() - 4, 4, "bias") == 0;
      if (is_bias) {
        p.zero_();
      } else if (is_norm) {
        p.fill_(1.0);
      } else {
        p.copy_(at::normal(0.0, 0.02, p.sizes(), generator, p.options().device(at::kCPU).dtype(at::kFloat)));
      }
    }
  }

  DecoderConfig config;
  torch::nn::Embedding embed_tokens, embed_positions;
  torch::nn::ModuleList layers;
  torch::nn::LayerNorm final_norm;
};
TORCH_MODULE(DecoderLM);

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

/// The parameters by name (CPU copies), ready for save_safetensors.
inline NamedTensors decoder_weights(DecoderLM& model) {
  NamedTensors out;
  for (const auto& item : model->named_parameters()) out.emplace_back(item.key(), item.value().detach().cpu());
  return out;
}

/// Copies weights by name into `model`. Every parameter must be present with its shape; names the
/// model does not have are an error too, so that a file for another preset cannot half-load.
inline void load_decoder_weights(DecoderLM& model, const NamedTensors& weights, const std::string& where = "weights") {
  torch::NoGradGuard no_grad;
  std::map<std::string, at::Tensor> by_name(weights.begin(), weights.end());
  std::set<std::string> used;
  for (auto& item : model->named_parameters()) {
    auto found = by_name.find(item.key());
    TORCH_CHECK(found != by_name.end(), "load_decoder_weights: ", where, " lacks the parameter '", item.key(),
                "'; was it saved for another model?");
    TORCH_CHECK(found->second.sizes() == item.value().sizes(), "load_decoder_weights: ", where, ": '", item.key(),
                "' has shape ", found->second.sizes(), " but the model expects ", item.value().sizes(),
                "; the file holds another preset");
    item.value().copy_(found->second);
    used.insert(item.key());
  }
  for (const auto& [name, tensor] : weights) {
    TORCH_CHECK(used.count(name) == 1, "load_decoder_weights: ", where, " has '", name,
                "', which this model does not have; the file holds another architecture");
  }
}

}  // namespace zotorch::examples
