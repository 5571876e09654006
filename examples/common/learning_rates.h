// The examples' default learning rate and perturbation scale per optimizer and training mode: the
// one table that finetune_classifier, distributed_finetune and compare.sh (through
// `finetune_classifier --print-default-lr`) use, and finetune_lm's own table. docs/examples.md "Learning rates".
#pragma once

#include <c10/util/Exception.h>

#include <string>

namespace zotorch::examples {

struct DefaultRates {
  double lr;
  double eps;  ///< perturbation scale; 0 for Adam, which has none
};

/// head and lora: chosen on the polarity dev set with all-MiniLM-L6-v2 (docs/results.md "How the
/// learning rates were chosen"). full: not searched on our data; MeZO's full-parameter lr 1e-6
/// (its paper's), FZOO's and AdaMeZO's scaled alike, Adam's the usual BERT fine-tuning 2e-5.
/// FZOO's lr is a step length, not a gradient scale (docs/algorithms.md), hence its larger values.
inline DefaultRates default_rates(const std::string& optimizer, const std::string& mode) {
  struct Row {
    const char* optimizer;
    const char* mode;
    DefaultRates rates;
  };
  static const Row kTable[] = {
      {"fzoo", "full", {1e-4, 1e-3}},    {"fzoo", "lora", {3e-2, 1e-2}},    {"fzoo", "head", {3e-2, 1e-2}},
      {"mezo", "full", {1e-6, 1e-3}},    {"mezo", "lora", {3e-3, 1e-2}},    {"mezo", "head", {1e-2, 1e-2}},
      {"adamezo", "full", {1e-7, 1e-3}}, {"adamezo", "lora", {3e-5, 1e-2}}, {"adamezo", "head", {1e-4, 1e-2}},
      {"adam", "full", {2e-5, 0}},       {"adam", "lora", {3e-4, 0}},       {"adam", "head", {3e-3, 0}},
  };
  for (const Row& row : kTable) {
    if (optimizer == row.optimizer && mode == row.mode) return row.rates;
  }
  TORCH_CHECK(false, "default_rates: no default learning rate for --optimizer ", optimizer, " --mode ", mode,
              "; pass --lr and --eps");
}

/// finetune_lm (SmolLM2-135M, prompt-based, batch 16): --mode full, lora or head-free. The zeroth-
/// order full rates were chosen on the polarity dev set, the larger of two rates each time (72
/// forward passes, docs/results.md "How the learning rates were chosen"); head-free takes the full
/// rates unsearched, the LoRA rows the MeZO paper's LoRA scale, Adam's the usual ones (not searched).
inline DefaultRates default_lm_rates(const std::string& optimizer, const std::string& mode) {
  struct Row {
    const char* optimizer;
    const char* mode;
    DefaultRates rates;
  };
  static const Row kTable[] = {
      {"fzoo", "full", {1e-3, 1e-3}},    {"fzoo", "head-free", {1e-3, 1e-3}},    {"fzoo", "lora", {1e-3, 1e-2}},
      {"mezo", "full", {3e-5, 1e-3}},    {"mezo", "head-free", {3e-5, 1e-3}},    {"mezo", "lora", {1e-4, 1e-2}},
      {"adamezo", "full", {1e-5, 1e-3}}, {"adamezo", "head-free", {1e-5, 1e-3}}, {"adamezo", "lora", {1e-5, 1e-2}},
      {"adam", "full", {1e-5, 0}},       {"adam", "head-free", {1e-5, 0}},       {"adam", "lora", {1e-4, 0}},
  };
  for (const Row& row : kTable) {
    if (optimizer == row.optimizer && mode == row.mode) return row.rates;
  }
  TORCH_CHECK(false, "default_lm_rates: no default learning rate for --optimizer ", optimizer, " --mode ", mode,
              "; pass --lr and --eps");
}

}  // namespace zotorch::examples
