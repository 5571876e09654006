#!/usr/bin/env python3
"""Writes tests/fixtures/decoder/tiny_decoder.safetensors, which tests/test_decoder.cpp checks the
C++ decoder (examples/common/decoder.h) against: a 2-layer DecoderLM of decoder.py with seeded
random weights (biases and norms randomised too, so that every parameter matters), a batch from
token_batch, and the logits and lm_loss PyTorch computes for it. The config is the file's metadata.

  .venv/bin/python benchmarks/peers/make_decoder_fixture.py   (deterministic: rerunning rewrites the same file)"""
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from decoder import CONFIG_KEYS, DecoderLM, lm_loss, token_batch, write_safetensors  # noqa: E402

CONFIG = dict(vocab_size=48, max_positions=16, d_model=16, num_heads=2, num_layers=2, d_ff=32)


def main():
    torch.manual_seed(0)
    model = DecoderLM(CONFIG).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.dim() > 1 else 0.1) + (1.0 if p.dim() == 1 else 0))
    ids = token_batch(2, 12, CONFIG["vocab_size"])
    with torch.no_grad():
        logits = model(ids)
        loss = lm_loss(logits, ids)
    tensors = {name: p for name, p in model.named_parameters()}
    tensors["test.input_ids"] = ids
    tensors["test.logits"] = logits
    tensors["test.loss"] = loss.reshape(1)
    out = os.path.join(HERE, "..", "..", "tests", "fixtures", "decoder")
    os.makedirs(out, exist_ok=True)
    path = os.path.normpath(os.path.join(out, "tiny_decoder.safetensors"))
    write_safetensors(path, tensors, {k: CONFIG[k] for k in CONFIG_KEYS})
    print(f"wrote {path}: logits {tuple(logits.shape)}, loss {loss.item():.6f}")


if __name__ == "__main__":
    main()
