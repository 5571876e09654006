// What a LibTorch user can get wrong on a real model and zotorch catches or sorts out: weight-decay
// name rules, dropout left on, a non-finite FZOO l_0, overlapping views, a tensor moved after
// construction (docs/optimizers.md).
#include "cuda_presence.h"
#include "optimizer_support.h"

#include <catch2/catch.hpp>

#include <limits>
#include <string>

using namespace zotorch_test;

namespace {

/// Collects the warnings c10 emits while it is installed.
struct CollectWarnings : c10::WarningHandler {
  std::vector<std::string> messages;
  void process(const c10::Warning& warning) override { messages.push_back(warning.msg()); }
};

/// An RMSNorm's one parameter: its gain.
struct Gain : torch::nn::Module {
  Gain() { weight = register_parameter("weight", torch::ones({4})); }
  torch::Tensor weight;
};

/// A Llama-like block: the names that matter for weight decay.
struct LlamaLike : torch::nn::Module {
  LlamaLike() {
    register_module("embed_tokens", torch::nn::Embedding(10, 4));
    register_module("input_layernorm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({4}).elementwise_affine(true)));
    register_module("q_proj", torch::nn::Linear(torch::nn::LinearOptions(4, 4).bias(false)));
    norm = register_module("norm", std::make_shared<Gain>())->weight;  // named norm.weight, as Llama's final RMSNorm
    register_module("lm_head", torch::nn::Linear(4, 10));
  }
  torch::Tensor norm;
};

}  // namespace

TEST_CASE("is_no_decay_name is MeZO's rule: bias, layer_norm, layernorm, case-insensitive, and nothing else",
          "[optimizer][weight_decay]") {
  for (const char* name : {"bert.encoder.layer.0.attention.output.LayerNorm.weight", "decoder.layers.3.self_attn_layer_norm.weight",
                           "model.layers.0.input_layernorm.weight", "model.layers.0.post_attention_layernorm.weight",
                           "classifier.bias", "lm_head.BIAS"}) {
    INFO(name);
    CHECK(zotorch::is_no_decay_name(name));
    CHECK(zotorch::is_no_decay_name_or_norm(name));
  }
  // Llama's final RMSNorm gain is decayed by MeZO's rule; the second predicate exempts it.
  for (const char* name : {"model.norm.weight", "transformer.ln_f.weight"}) {
    INFO(name);
    CHECK_FALSE(zotorch::is_no_decay_name(name));
  }
  CHECK(zotorch::is_no_decay_name_or_norm("model.norm.weight"));
  CHECK(zotorch::is_no_decay_name_or_norm("encoder.rms_norm.weight"));
  for (const char* name : {"lm_head.weight", "model.layers.0.self_attn.q_proj.weight", "embed_tokens.weight"}) {
    INFO(name);
    CHECK_FALSE(zotorch::is_no_decay_name(name));
    CHECK_FALSE(zotorch::is_no_decay_name_or_norm(name));
  }
}

TEST_CASE("split_weight_decay on a Llama-like model: the final norm gain decays by default, not with is_no_decay_name_or_norm",
          "[optimizer][weight_decay]") {
  auto model = std::make_shared<LlamaLike>();
  const auto options = zotorch::MeZOOptions(1e-3).weight_decay(0.1);
  auto contains = [](const torch::optim::OptimizerParamGroup& group, const torch::Tensor& t) {
    for (const auto& p : group.params()) {
      if (p.is_same(t)) return true;
    }
    return false;
  };
  const auto mezo_rule = zotorch::split_weight_decay(model->named_parameters(), options);
  REQUIRE(mezo_rule.size() == 2);
  CHECK(contains(mezo_rule[0], model->norm));  // decayed
  CHECK(mezo_rule[1].params().size() == 3);    // input_layernorm weight and bias, lm_head bias
  const auto llama_rule = zotorch::split_weight_decay(model->named_parameters(), options, zotorch::is_no_decay_name_or_norm);
  REQUIRE(llama_rule.size() == 2);
  CHECK(contains(llama_rule[1], model->norm));
  CHECK(llama_rule[1].params().size() == 4);
  CHECK(static_cast<const zotorch::MeZOOptions&>(llama_rule[1].options()).weight_decay() == 0);
  CHECK(static_cast<const zotorch::MeZOOptions&>(llama_rule[0].options()).weight_decay() == 0.1);
}

TEST_CASE("warn_if_dropout_active: true with one warning while a dropout module with p > 0 is in training mode",
          "[optimizer][dropout]") {
  CollectWarnings warnings;
  c10::WarningUtils::WarningHandlerGuard guard(&warnings);
  struct Net : torch::nn::Module {
    Net() {
      register_module("fc", torch::nn::Linear(4, 4));
      register_module("drop", torch::nn::Dropout(0.1));
      register_module("inner", torch::nn::ModuleList(torch::nn::Dropout2d(0.2), torch::nn::AlphaDropout(0.3)));
    }
  };
  auto model = std::make_shared<Net>();
  CHECK(zotorch::warn_if_dropout_active(*model));
  REQUIRE(warnings.messages.size() == 1);
  CHECK_THAT(warnings.messages[0], Catch::Contains("3 dropout module(s)") && Catch::Contains("model->eval()"));
  model->eval();
  CHECK_FALSE(zotorch::warn_if_dropout_active(*model));
  CHECK(warnings.messages.size() == 1);
  // p = 0 draws no mask, and a model without dropout is fine in training mode.
  torch::nn::Sequential harmless(torch::nn::Linear(4, 4), torch::nn::Dropout(0.0), torch::nn::FeatureAlphaDropout(0.0));
  CHECK_FALSE(zotorch::warn_if_dropout_active(*harmless));
  torch::nn::Sequential three_d(torch::nn::Dropout3d(0.5));
  CHECK(zotorch::warn_if_dropout_active(*three_d));
  CHECK(warnings.messages.size() == 2);
}

TEST_CASE("FZOO ends a step whose l_0 is not finite after that one forward pass", "[fzoo][safety]") {
  for (const auto policy : {zotorch::NonFinite::Skip, zotorch::NonFinite::Throw}) {
    Quadratic problem(torch::kFloat, 6);
    const auto before = snapshot(problem.params);
    zotorch::FZOO opt(problem.params, zotorch::FZOOOptions(1e-2).num_perturbations(8).on_nonfinite(policy));
    int calls = 0;
    auto poisoned = [&] {
      ++calls;
      return torch::full({}, std::numeric_limits<double>::quiet_NaN(), torch::kDouble);
    };
    if (policy == zotorch::NonFinite::Skip) {
      opt.step(poisoned);
      CHECK(opt.last_step().skipped);
      CHECK(opt.last_step().forward_passes == 1);
      CHECK(opt.last_step().sweeps == 0);
      CHECK(opt.forward_passes() == 1);
    } else {
      CHECK_THROWS_WITH(opt.step(poisoned), Catch::Contains("at forward pass 1"));
    }
    CHECK(calls == 1);
    CHECK(bitwise_equal(problem.params, before));
  }
}

TEST_CASE("parameters that are different views of overlapping memory are refused, disjoint views are fine",
          "[optimizer][errors]") {
  auto buffer = torch::zeros({8});
  auto a = buffer.narrow(0, 0, 5).requires_grad_(true), b = buffer.narrow(0, 3, 5).requires_grad_(true);
  CHECK_THROWS_WITH(zotorch::MeZO({a, b}, zotorch::MeZOOptions()),
                    Catch::Contains("zotorch::MeZO: parameters 0 and 1 are views of overlapping memory"));
  // A frozen view over a trained one would move with it: refused too.
  auto frozen = buffer.narrow(0, 2, 3);
  CHECK_THROWS_WITH(zotorch::FZOO({frozen, a}, zotorch::FZOOOptions()), Catch::Contains("parameters 0 and 1 are views"));
  // Two halves of one buffer share no element.
  auto low = buffer.narrow(0, 0, 4).requires_grad_(true), high = buffer.narrow(0, 4, 4).requires_grad_(true);
  zotorch::MeZO opt({low, high}, zotorch::MeZOOptions(1e-2));
  opt.step([&] { return (buffer.to(torch::kDouble) - 1).pow(2).sum(); });
  CHECK((buffer.narrow(0, 0, 4) != 0).any().item<bool>());
  CHECK((buffer.narrow(0, 4, 4) != 0).any().item<bool>());
}

TEMPLATE_TEST_CASE("a tensor whose data moved after construction is refused at the next step, parameters untouched",
                   "[optimizer][errors]", zotorch::FZOO, zotorch::MeZO, zotorch::AdaMeZO) {
  Quadratic problem(torch::kFloat, 13);
  TestType opt(problem.params, Make<TestType>::options(1e-3, 1e-3, 1));
  opt.step(std::ref(problem));
  const auto before = snapshot(problem.params);
  const int64_t calls = problem.calls;
  SECTION("to another device") {
    // A partial model->to(device) swaps a tensor's data in place (same tensor, new data). Any such
    // change makes the next step re-run the checks of construction (the sections below show it for
    // layout and dtype); the device check among them is this one. On CPU, LibTorch refuses to
    // set_data() a meta tensor, so a meta tensor among CPU ones stands for the other device.
    std::vector<torch::Tensor> mixed{torch::zeros({4}, torch::requires_grad()),
                                     torch::zeros({4}, torch::TensorOptions(torch::kMeta).requires_grad(true))};
    CHECK_THROWS_WITH(TestType(mixed, Make<TestType>::options(1e-3, 1e-3, 1)),
                      Catch::Contains("parameter 1 is on meta but parameter 0 is on cpu") &&
                          Catch::Contains("move the whole model to one device"));
    // The CUDA half runs where a GPU is usable; a GPU machine whose CUDA does not start fails here
    // rather than leaving it out (tests/cuda_presence.h).
    const auto cuda = zotorch_test::probe_cuda();
    if (cuda.outcome == zotorch_test::CudaOutcome::Fail) FAIL(cuda.reason);
    if (cuda.outcome == zotorch_test::CudaOutcome::Run) {
      problem.params[1].set_data(problem.params[1].detach().cuda());
      CHECK_THROWS_WITH(opt.step(std::ref(problem)), Catch::Contains("parameter 1 is on cuda:0 but parameter 0 is on cpu"));
      CHECK(bitwise_equal({problem.params[0], problem.params[2]}, {before[0], before[2]}));
    }
  }
  SECTION("to a non-contiguous layout") {
    problem.params[1].set_data(torch::zeros({7, 5}).t());
    CHECK_THROWS_WITH(opt.step(std::ref(problem)), Catch::Contains("parameter 1") && Catch::Contains("not contiguous"));
    CHECK(bitwise_equal({problem.params[0], problem.params[2]}, {before[0], before[2]}));
  }
  SECTION("to another dtype: checked, and trained in it") {
    problem.params[2].set_data(problem.params[2].detach().to(torch::kDouble));
    CHECK_NOTHROW(opt.step(std::ref(problem)));
    CHECK(problem.params[2].scalar_type() == torch::kDouble);
    CHECK_FALSE(torch::equal(problem.params[2].to(torch::kFloat), before[2]));
  }
  CHECK(problem.calls >= calls);
  CHECK(opt.steps() >= 1);
}
