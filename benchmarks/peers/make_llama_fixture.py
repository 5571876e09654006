#!/usr/bin/env python3
"""Writes tests/fixtures/tiny-llama/, which tests/test_llama.cpp checks examples/common/llama.h
against: a model directory in the layout load_llama reads (config.json, model.safetensors and
model.bf16.safetensors) of a 2-layer Llama of llama.py (hidden 64, 4 query and 2 key/value heads,
vocab 256, rope_theta 100000) with seeded random weights (norm gains randomised too, so that every
parameter matters), and reference.safetensors: three right-padded rows of token ids (pad id 0), their
lengths, and the logits and lm_loss llama.py computes for them in float32 and in bfloat16.

  .venv/bin/python benchmarks/peers/make_llama_fixture.py   (deterministic: rerunning rewrites the same files)"""
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from llama import LlamaForCausalLM, lm_loss, write_safetensors  # noqa: E402

CONFIG = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64, rope_theta=100000.0, rms_norm_eps=1e-5,
              tie_word_embeddings=True)
LENGTHS = [10, 7, 4]


def main():
    out = os.path.normpath(os.path.join(HERE, "..", "..", "tests", "fixtures", "tiny-llama"))
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(CONFIG).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    ids = torch.zeros(len(LENGTHS), max(LENGTHS), dtype=torch.int64)
    for row, n in enumerate(LENGTHS):
        ids[row, :n] = torch.randint(1, CONFIG["vocab_size"], (n,), generator=g)
    weights = {k: v.detach().clone() for k, v in model.named_parameters()}  # .to() below converts in place
    with torch.no_grad():
        logits = model(ids)
        loss = lm_loss(logits, ids)
        model.to(torch.bfloat16)
        logits_bf16 = model(ids).float()
    config = dict(CONFIG, model_type="llama", architectures=["LlamaForCausalLM"], hidden_act="silu", bos_token_id=1,
                  eos_token_id=2, torch_dtype="float32")
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    write_safetensors(os.path.join(out, "model.safetensors"), {k: v.float() for k, v in weights.items()})
    write_safetensors(os.path.join(out, "model.bf16.safetensors"), {k: v.bfloat16() for k, v in weights.items()})
    write_safetensors(os.path.join(out, "reference.safetensors"),
                      {"input_ids": ids, "lengths": torch.tensor(LENGTHS), "logits": logits,
                       "logits_bf16": logits_bf16, "loss": loss.reshape(1)})
    print(f"wrote {out}: logits {tuple(logits.shape)} (max |logit| {logits.abs().max():.3f}), loss {loss.item():.6f}, "
          f"bf16 vs fp32 max-abs-diff {(logits_bf16 - logits).abs().max():.4f}")


if __name__ == "__main__":
    main()
