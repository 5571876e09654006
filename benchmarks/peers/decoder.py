"""The benchmark decoder of examples/common/decoder.h in PyTorch, for the Python peers: the same
architecture (token + learned position embeddings, pre-LN blocks, causal SDPA attention, GELU MLP,
LM head tied to the token embedding) with the same parameter names, so one safetensors file loads
on both sides. tests/test_decoder.cpp checks that both give the same logits."""
import json
import os
import struct

import torch
import torch.nn as nn
import torch.nn.functional as F

# Same table as DecoderConfig::preset in examples/common/decoder.h.
PRESETS = {
    "tiny": dict(vocab_size=2048, max_positions=256, d_model=128, num_heads=4, num_layers=4, d_ff=512),
    "small": dict(vocab_size=8192, max_positions=512, d_model=256, num_heads=4, num_layers=10, d_ff=1024),
    "medium": dict(vocab_size=16384, max_positions=1024, d_model=512, num_heads=8, num_layers=8, d_ff=2048),
    "125m": dict(vocab_size=50272, max_positions=2048, d_model=768, num_heads=12, num_layers=12, d_ff=3072),
}
CONFIG_KEYS = ("vocab_size", "max_positions", "d_model", "num_heads", "num_layers", "d_ff")


class CausalSelfAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        d = c["d_model"]
        self.q_proj, self.k_proj = nn.Linear(d, d), nn.Linear(d, d)
        self.v_proj, self.out_proj = nn.Linear(d, d), nn.Linear(d, d)
        self.num_heads = c["num_heads"]

    def forward(self, x):
        b, t, d = x.shape

        def heads(y):
            return y.view(b, t, self.num_heads, d // self.num_heads).transpose(1, 2)

        y = F.scaled_dot_product_attention(heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x)),
                                           is_causal=True)
        return self.out_proj(y.transpose(1, 2).reshape(b, t, d))


class DecoderBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        d = c["d_model"]
        self.attn_norm = nn.LayerNorm(d, eps=1e-5)
        self.attn = CausalSelfAttention(c)
        self.mlp_norm = nn.LayerNorm(d, eps=1e-5)
        self.fc1, self.fc2 = nn.Linear(d, c["d_ff"]), nn.Linear(c["d_ff"], d)

    def forward(self, x):
        x = x + self.attn(self.attn_norm(x))
        return x + self.fc2(F.gelu(self.fc1(self.mlp_norm(x))))


class DecoderLM(nn.Module):
    def __init__(self, config):
        super().__init__()
        c = PRESETS[config] if isinstance(config, str) else dict(config)
        self.config = c
        self.embed_tokens = nn.Embedding(c["vocab_size"], c["d_model"])
        self.embed_positions = nn.Embedding(c["max_positions"], c["d_model"])
        self.layers = nn.ModuleList(DecoderBlock(c) for _ in range(c["num_layers"]))
        self.final_norm = nn.LayerNorm(c["d_model"], eps=1e-5)

    def forward(self, ids):
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.embed_tokens(ids) + self.embed_positions(positions)
        for layer in self.layers:
            x = layer(x)
        return F.linear(self.final_norm(x), self.embed_tokens.weight)  # tied head

    def init_weights(self, seed):
        """GPT-2's initialisation, as DecoderLM::init_weights (values differ: another generator)."""
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("bias"):
                    p.zero_()
                elif "norm" in name:
                    p.fill_(1.0)
                else:
                    p.copy_(torch.normal(0.0, 0.02, p.shape, generator=g))


def lm_loss(logits, ids):
    """Next-token cross-entropy in float32, as zotorch::examples::lm_loss."""
    v = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, v).float(), ids[:, 1:].reshape(-1))


def token_batch(batch, length, vocab, device="cpu"):
    """The deterministic ids of zotorch::examples::token_batch."""
    i = torch.arange(batch * length, dtype=torch.int64)
    return ((i * 2654435761 + 12345) % vocab).view(batch, length).to(device)


# The safetensors layout (8-byte little-endian header length, a JSON header of name -> dtype, shape,
# data_offsets, then the raw bytes), read and written here so that the peers need only torch: the
# lent GPU machines have no package index.
_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}


def read_safetensors(path):
    """Returns ({name: tensor}, metadata) of a .safetensors file."""
    with open(path, "rb") as f:
        blob = f.read()
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    metadata = header.pop("__metadata__", {})
    data = bytearray(blob[8 + n:])
    tensors = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        dtype = _ST_DTYPES[info["dtype"]]
        flat = torch.frombuffer(data, dtype=torch.uint8, count=end - begin, offset=begin) if end > begin else \
            torch.empty(0, dtype=torch.uint8)
        tensors[name] = flat.view(dtype).reshape(info["shape"]).clone()
    return tensors, metadata


def write_safetensors(path, tensors, metadata=None):
    names = {v: k for k, v in _ST_DTYPES.items()}
    header, chunks, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for raw in chunks:
            f.write(raw)
    os.replace(tmp, path)


def load_weights(model, path):
    """Loads a safetensors file written by bench_step (or save_weights) by name, strictly."""
    state, _ = read_safetensors(path)
    own = dict(model.named_parameters())
    missing, extra = set(own) - set(state), set(state) - set(own)
    if missing or extra:
        raise ValueError(f"{path}: missing {sorted(missing)[:3]}, unexpected {sorted(extra)[:3]}; another preset?")
    with torch.no_grad():
        for name, p in own.items():
            if state[name].shape != p.shape:
                raise ValueError(f"{path}: '{name}' has shape {tuple(state[name].shape)}, expected {tuple(p.shape)}")
            p.copy_(state[name])


def save_weights(model, path):
    write_safetensors(path, dict(model.named_parameters()), {k: model.config[k] for k in CONFIG_KEYS})
