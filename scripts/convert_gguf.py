#!/usr/bin/env python3
"""Converts a Llama-architecture GGUF file into the files the C++ examples read:

  config.json              the model's sizes, with Hugging Face LlamaConfig key names
  model.safetensors        float32 weights, Hugging Face tensor names and layout
  model.bf16.safetensors   the same weights in bfloat16 (round to nearest even)
  tokenizer.json           the byte-level BPE tokenizer in the `tokenizers` package's format
  source.json              where it came from: file name, size, SHA-256, converter version

Dequantisation is the `gguf` package's (llama.cpp's own reader and dequantisers); nothing here
decodes a quantised block. Two layout details differ between GGUF and Hugging Face, and both are
undone here (docs/examples.md "The language model"):
  * llama.cpp's converter permutes the rows of q_proj and k_proj so that its RoPE can rotate
    adjacent pairs; Hugging Face rotates the two halves of each head ("rotate_half");
  * GGUF lists shapes innermost first; the arrays the reader returns are already row-major.

Usage: convert_gguf.py GGUF OUT_DIR [--tokenizer-only]
Needs numpy and gguf (scripts/fetch-llm.sh installs both); not torch.
"""
import argparse
import hashlib
import json
import os
import struct
import sys

import numpy as np

CONVERTER_VERSION = 1

# GGUF block tensor name -> Hugging Face name (per layer).
BLOCK_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
TOP_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        if default is None:
            sys.exit(f"convert_gguf: the file has no metadata key '{key}'")
        return default
    return f.contents()


def hf_name(gguf_name):
    if gguf_name in TOP_NAMES:
        return TOP_NAMES[gguf_name]
    parts = gguf_name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in BLOCK_NAMES:
        return f"model.layers.{int(parts[1])}.{BLOCK_NAMES[parts[2]]}"
    sys.exit(f"convert_gguf: unexpected tensor '{gguf_name}' (not a Llama tensor this converter knows)")


def unpermute_rope_rows(w, n_heads):
    """Inverse of llama.cpp's permutation of q/k rows: per head, rows (pair i, half h) go back to
    (half h, pair i), so that head_dim/2 apart is the rotation partner, as in rotate_half."""
    rows = w.shape[0]
    head_dim = rows // n_heads
    return (w.reshape(n_heads, head_dim // 2, 2, *w.shape[1:])
             .swapaxes(1, 2)
             .reshape(w.shape))


def to_bfloat16_bits(a):
    """float32 -> bfloat16 bit patterns, round to nearest even (NaN stays NaN)."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    rounding = ((u >> 16) & 1) + np.uint32(0x7FFF)
    out = ((u + rounding) >> 16).astype(np.uint16)
    nan = np.isnan(a)
    out[nan] = 0x7FC0
    return out


def write_safetensors(path, tensors, dtype_name, metadata):
    """tensors: list of (name, contiguous numpy array); written in name order, 8-byte aligned header."""
    header = {"__metadata__": metadata}
    offset = 0
    blobs = []
    for name, arr in sorted(tensors, key=lambda t: t[0]):
        data = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": dtype_name, "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def tokenizer_json(reader):
    model = field(reader, "tokenizer.ggml.model")
    pre = field(reader, "tokenizer.ggml.pre", "default")
    if model != "gpt2" or pre != "smollm":
        sys.exit(f"convert_gguf: tokenizer '{model}' with pre-tokenizer '{pre}' is not supported "
                 "(only gpt2 byte-level BPE with the smollm pre-tokenizer)")
    tokens = field(reader, "tokenizer.ggml.tokens")
    types = field(reader, "tokenizer.ggml.token_type")
    merges = field(reader, "tokenizer.ggml.merges")
    control = 3  # llama.cpp's LLAMA_TOKEN_TYPE_CONTROL: special tokens such as <|im_start|>
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True}
             for i, (t, ty) in enumerate(zip(tokens, types)) if ty == control]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        # "smollm" in llama.cpp: every digit is its own piece, then GPT-2's byte-level regex.
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        ]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(tokens)},
                  "merges": list(merges)},
    }


def config_json(reader):
    arch = field(reader, "general.architecture")
    if arch != "llama":
        sys.exit(f"convert_gguf: architecture '{arch}' is not supported (only llama)")
    hidden = int(field(reader, "llama.embedding_length"))
    heads = int(field(reader, "llama.attention.head_count"))
    rope_dims = int(field(reader, "llama.rope.dimension_count", hidden // heads))
    if rope_dims != hidden // heads:
        sys.exit(f"convert_gguf: partial RoPE ({rope_dims} of {hidden // heads} dims) is not supported")
    has_output = any(t.name == "output.weight" for t in reader.tensors)
    eps = float(np.float32(field(reader, "llama.attention.layer_norm_rms_epsilon")))
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": int(field(reader, "llama.vocab_size", len(field(reader, "tokenizer.ggml.tokens")))),
        "hidden_size": hidden,
        "intermediate_size": int(field(reader, "llama.feed_forward_length")),
        "num_hidden_layers": int(field(reader, "llama.block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(field(reader, "llama.attention.head_count_kv", heads)),
        "max_position_embeddings": int(field(reader, "llama.context_length")),
        "rope_theta": float(field(reader, "llama.rope.freq_base", 10000.0)),
        "rms_norm_eps": float(f"{eps:.7g}"),  # stored as float32: 9.99999975e-06 means 1e-5
        "hidden_act": "silu",
        "tie_word_embeddings": not has_output,
        "bos_token_id": int(field(reader, "tokenizer.ggml.bos_token_id", 1)),
        "eos_token_id": int(field(reader, "tokenizer.ggml.eos_token_id", 2)),
        "pad_token_id": int(field(reader, "tokenizer.ggml.padding_token_id", 2)),
        "torch_dtype": "float32",
    }


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("gguf")
    ap.add_argument("out")
    ap.add_argument("--tokenizer-only", action="store_true", help="write tokenizer.json and config.json only")
    args = ap.parse_args()
    try:
        import gguf
    except ImportError:
        sys.exit("convert_gguf: needs the gguf package (scripts/fetch-llm.sh installs it)")

    reader = gguf.GGUFReader(args.gguf)
    os.makedirs(args.out, exist_ok=True)
    config = config_json(reader)
    write_json(os.path.join(args.out, "config.json"), config)
    write_json(os.path.join(args.out, "tokenizer.json"), tokenizer_json(reader))
    if args.tokenizer_only:
        return

    fp32 = []
    for t in reader.tensors:
        name = hf_name(t.name)
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        w = w.reshape(tuple(int(d) for d in reversed(t.shape)))  # GGUF shapes are innermost first
        if name.endswith("q_proj.weight"):
            w = unpermute_rope_rows(w, config["num_attention_heads"])
        elif name.endswith("k_proj.weight"):
            w = unpermute_rope_rows(w, config["num_key_value_heads"])
        if not np.isfinite(w).all():
            sys.exit(f"convert_gguf: tensor '{t.name}' dequantised to non-finite values")
        fp32.append((name, np.ascontiguousarray(w)))
    expected = 2 + 9 * config["num_hidden_layers"] + (0 if config["tie_word_embeddings"] else 1)
    if len(fp32) != expected:
        sys.exit(f"convert_gguf: {len(fp32)} tensors, expected {expected} for {config['num_hidden_layers']} layers")

    meta = {"format": "pt", "source": os.path.basename(args.gguf)}
    write_safetensors(os.path.join(args.out, "model.safetensors"), fp32, "F32", meta)
    write_safetensors(os.path.join(args.out, "model.bf16.safetensors"),
                      [(n, to_bfloat16_bits(w)) for n, w in fp32], "BF16", meta)
    write_json(os.path.join(args.out, "source.json"), {
        "file": os.path.basename(args.gguf),
        "bytes": os.path.getsize(args.gguf),
        "sha256": sha256(args.gguf),
        "tensor_types": sorted({t.tensor_type.name for t in reader.tensors}),
        "converter_version": CONVERTER_VERSION,
        "parameters": int(sum(w.size for _, w in fp32)),
    })


if __name__ == "__main__":
    main()
