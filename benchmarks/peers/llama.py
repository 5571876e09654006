"""The Llama architecture of examples/common/llama.h written again in plain PyTorch, for the Python
peers and as the reference tests/test_llama.cpp compares the C++ model with: RMSNorm (float32
statistics), rotary positions in the "rotate_half" layout, grouped-query causal attention through
F.scaled_dot_product_attention, SwiGLU MLP, LM head tied to the embedding. Parameter names are
Hugging Face's (model.layers.0.self_attn.q_proj.weight, ...), so one safetensors file loads on both
sides, and a model directory (config.json + model.safetensors) loads with load_llama. Needs only
torch: the safetensors reader is here too, because the lent GPU machines have no package index."""
import json
import os
import struct

import torch
import torch.nn as nn
import torch.nn.functional as F

# Same table as LlamaConfig::preset in examples/common/llama.h.
_BASE = dict(max_position_embeddings=256, rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=True)
PRESETS = {
    "tiny": dict(_BASE, vocab_size=2048, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2),
    "small": dict(_BASE, vocab_size=8192, hidden_size=256, intermediate_size=768, num_hidden_layers=12,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512),
    "medium": dict(_BASE, vocab_size=16384, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                   num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=1024),
    "smollm2-135m": dict(_BASE, vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                         rope_theta=100000.0),
}
CONFIG_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "max_position_embeddings", "rope_theta", "rms_norm_eps", "tie_word_embeddings")


def config_from_json(path):
    """The fields of a Hugging Face config.json this model uses, with transformers' defaults."""
    with open(path) as f:
        j = json.load(f)
    if j.get("rope_scaling") or j.get("attention_bias") or j.get("mlp_bias") or j.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{path}: rope_scaling, biases or another activation are not implemented here")
    c = {k: j[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")}
    c["num_key_value_heads"] = j.get("num_key_value_heads") or c["num_attention_heads"]
    c["max_position_embeddings"] = j.get("max_position_embeddings", 2048)
    c["rope_theta"] = float(j.get("rope_theta", 10000.0))
    c["rms_norm_eps"] = float(j.get("rms_norm_eps", 1e-6))
    c["tie_word_embeddings"] = bool(j.get("tie_word_embeddings", False))
    return c


class RMSNorm(nn.Module):
    def __init__(self, size, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x):
        h = x.float()
        h = h * torch.rsqrt(h.square().mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rotary(length, head_dim, theta, device, dtype):
    """cos, sin [length, head_dim]: angle(t, i) = t / theta^(2i/head_dim), each half-table twice."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    t = torch.arange(length, dtype=torch.float32, device=device)
    angles = t[:, None] * inv_freq.to(device)[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rope(x, cos, sin):
    h = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., h:], x[..., :h]], dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.heads, self.kv_heads = c["num_attention_heads"], c["num_key_value_heads"]
        self.head_dim = c["hidden_size"] // self.heads
        h, kv = c["hidden_size"], self.kv_heads * self.head_dim
        self.q_proj = nn.Linear(h, h, bias=False)
        self.k_proj = nn.Linear(h, kv, bias=False)
        self.v_proj = nn.Linear(h, kv, bias=False)
        self.o_proj = nn.Linear(h, h, bias=False)

    def forward(self, x, cos, sin):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        group = self.heads // self.kv_heads
        if group > 1:  # query head j reads k/v head j // group
            k = k[:, :, None].expand(b, self.kv_heads, group, t, self.head_dim).reshape(b, self.heads, t, self.head_dim)
            v = v[:, :, None].expand(b, self.kv_heads, group, t, self.head_dim).reshape(b, self.heads, t, self.head_dim)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, self.heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        h, i = c["hidden_size"], c["intermediate_size"]
        self.gate_proj = nn.Linear(h, i, bias=False)
        self.up_proj = nn.Linear(h, i, bias=False)
        self.down_proj = nn.Linear(i, h, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.self_attn = Attention(c)
        self.mlp = MLP(c)
        self.input_layernorm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.post_attention_layernorm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embed_tokens = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.layers = nn.ModuleList(DecoderLayer(c) for _ in range(c["num_hidden_layers"]))
        self.norm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])


class LlamaForCausalLM(nn.Module):
    """forward(ids [B, T] int64, right-padded) -> logits [B, T, V]; positions are 0..T-1."""

    def __init__(self, config):
        super().__init__()
        c = dict(PRESETS[config]) if isinstance(config, str) else dict(config)
        self.config = c
        self.model = LlamaModel(c)
        if not c["tie_word_embeddings"]:
            self.lm_head = nn.Linear(c["hidden_size"], c["vocab_size"], bias=False)

    def lm_head_weight(self):
        return self.model.embed_tokens.weight if self.config["tie_word_embeddings"] else self.lm_head.weight

    def hidden_states(self, ids):
        x = self.model.embed_tokens(ids)
        c = self.config
        cos, sin = rotary(ids.shape[1], c["hidden_size"] // c["num_attention_heads"], c["rope_theta"], x.device, x.dtype)
        for layer in self.model.layers:
            x = layer(x, cos, sin)
        return self.model.norm(x)

    def forward(self, ids):
        return F.linear(self.hidden_states(ids), self.lm_head_weight())

    def init_weights(self, seed):
        """N(0, 0.02) matrices, unit norm gains, as LlamaForCausalLM::init_weights (values differ: another generator)."""
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                if p.dim() == 1:
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


# The safetensors layout: an 8-byte little-endian header length, a JSON header of name -> dtype,
# shape, data_offsets (and "__metadata__"), then the raw little-endian bytes.
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


def load_state(model, state, where):
    """Copies tensors into the model by name, strictly: every parameter present with its shape, no extras."""
    own = dict(model.named_parameters())
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or extra:
        raise ValueError(f"{where}: missing {missing[:3]}, unexpected {extra[:3]}; another model?")
    with torch.no_grad():
        for name, p in own.items():
            if state[name].shape != p.shape:
                raise ValueError(f"{where}: '{name}' has shape {tuple(state[name].shape)}, expected {tuple(p.shape)}")
            p.copy_(state[name])


def load_weights(model, path):
    """Loads a safetensors file written by bench_step (or save_weights)."""
    load_state(model, read_safetensors(path)[0], path)


def save_weights(model, path):
    write_safetensors(path, dict(model.named_parameters()), {k: model.config[k] for k in CONFIG_KEYS})


def load_llama(directory, dtype=torch.float32, device="cpu"):
    """DIR/config.json + DIR/model.safetensors (or model.bf16.safetensors for bfloat16, if present)."""
    model = LlamaForCausalLM(config_from_json(os.path.join(directory, "config.json")))
    path = os.path.join(directory, "model.bf16.safetensors")
    if dtype != torch.bfloat16 or not os.path.exists(path):
        path = os.path.join(directory, "model.safetensors")
    model.to(device=device, dtype=dtype)
    load_state(model, read_safetensors(path)[0], path)
    return model.eval()
