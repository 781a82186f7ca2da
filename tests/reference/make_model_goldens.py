#!/usr/bin/python3
"""Tiny random-weight Hugging Face models and float64 reference outputs for the C# engine.

Run from the repository root:   /usr/bin/python3 tests/reference/make_model_goldens.py

Writes tests/goldens/models/{llama,qwen2,qwen3,llama_bias,qwen3_bias}/ (config.json + safetensors weights, the form
HfModelLoader reads) and tests/goldens/models/manifest.json + tests/goldens/models/ref/*.f32
(reference logits). The layout is documented in tests/reference/README.md.

Everything is deterministic (fixed torch seeds, no time or environment in the output), so a
re-run reproduces the same bytes. The forward pass below is written from the Hugging Face
definitions (LlamaForCausalLM / Qwen2ForCausalLM / Qwen3ForCausalLM) in plain torch, computed in
float64 from exactly the values stored in the files (bf16 rounding included). It needs only
torch and numpy (no transformers, no safetensors module: the format is written by hand).
"""
import json
import math
import os
import struct
import sys

import numpy as np
import torch

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "tests", "goldens", "models")
PREFIX_LEN = 5
SEQ_LEN = 12


# ----------------------------------------------------------------------------------------------
# safetensors writer (format: u64 LE header length, JSON header, raw little-endian data)

def tensor_bytes(t, dtype):
    if dtype == "F32":
        return t.to(torch.float32).contiguous().numpy().astype("<f4").tobytes()
    if dtype == "BF16":
        return t.to(torch.bfloat16).contiguous().view(torch.int16).numpy().astype("<i2").tobytes()
    if dtype == "F16":
        return t.to(torch.float16).contiguous().numpy().astype("<f2").tobytes()
    raise ValueError(dtype)


def write_safetensors(path, tensors, dtype, metadata=None):
    """tensors: dict name -> torch tensor. Tensors are laid out in name order, no gaps."""
    header = {}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        b = tensor_bytes(tensors[name], dtype)
        header[name] = {"dtype": dtype, "shape": list(tensors[name].shape),
                        "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    if metadata:
        header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def stored(t, dtype):
    """The values a reader gets back after storing t with dtype, as float64."""
    if dtype == "F32":
        return t.to(torch.float32).to(torch.float64)
    if dtype == "BF16":
        return t.to(torch.bfloat16).to(torch.float64)
    if dtype == "F16":
        return t.to(torch.float16).to(torch.float64)
    raise ValueError(dtype)


# ----------------------------------------------------------------------------------------------
# model specs and random weights

SPECS = {
    # Llama 3.2-like: GQA, tied embeddings, llama3 rope scaling. With head_dim 16 and theta 5e5 the
    # wavelengths 2*pi/inv_freq are 6.3, 32, 167, 861, ...; original_max_position_embeddings = 64
    # with low/high factors 1/4 gives the thresholds 64 and 16, so the first pair keeps its
    # frequency, the second is smoothed and the rest are divided by `factor`.
    "llama": {
        "config": {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 3,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
            "vocab_size": 256, "max_position_embeddings": 256, "rope_theta": 500000.0,
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
            "rms_norm_eps": 1e-5, "tie_word_embeddings": True, "attention_bias": False,
            "mlp_bias": False, "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": [2, 3],
            "torch_dtype": "bfloat16",
        },
        "dtype": "BF16", "shards": 1, "seed": 1001,
    },
    # Qwen2: q/k/v biases (o_proj has none), untied lm_head, one KV head. Stored as two shards.
    "qwen2": {
        "config": {
            "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
            "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 1,
            "vocab_size": 256, "max_position_embeddings": 512, "rope_theta": 1000000.0,
            "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "hidden_act": "silu",
            "use_sliding_window": False, "sliding_window": 512, "max_window_layers": 2,
            "bos_token_id": 0, "eos_token_id": 255, "torch_dtype": "float32",
        },
        "dtype": "F32", "shards": 2, "seed": 2002,
    },
    # Qwen3: per-head q_norm/k_norm, head_dim 32 != hidden/heads (16), untied lm_head.
    "qwen3": {
        "config": {
            "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
            "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
            "vocab_size": 256, "max_position_embeddings": 1024, "rope_theta": 1000000.0,
            "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "attention_bias": False,
            "hidden_act": "silu", "use_sliding_window": False,
            "bos_token_id": 7, "eos_token_id": 9, "torch_dtype": "float32",
        },
        "dtype": "F32", "shards": 1, "seed": 3003,
    },
    # Llama with attention_bias = true: q/k/v AND o_proj biases (LlamaAttention's o_proj uses the same flag).
    "llama_bias": {
        "config": {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
            "vocab_size": 256, "max_position_embeddings": 256, "rope_theta": 10000.0,
            "rms_norm_eps": 1e-5, "tie_word_embeddings": True, "attention_bias": True,
            "mlp_bias": False, "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2,
            "torch_dtype": "float32",
        },
        "dtype": "F32", "shards": 1, "seed": 4004,
    },
    # Qwen3 with attention_bias = true: q/k/v/o biases on top of the per-head q/k norms.
    "qwen3_bias": {
        "config": {
            "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
            "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
            "vocab_size": 256, "max_position_embeddings": 1024, "rope_theta": 1000000.0,
            "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "attention_bias": True,
            "hidden_act": "silu", "use_sliding_window": False,
            "bos_token_id": 7, "eos_token_id": 9, "torch_dtype": "float32",
        },
        "dtype": "F32", "shards": 1, "seed": 5005,
    },
}


def dims(cfg):
    d = cfg["hidden_size"]
    h = cfg["num_attention_heads"]
    hd = cfg.get("head_dim", d // h)
    return dict(dim=d, hidden=cfg["intermediate_size"], layers=cfg["num_hidden_layers"], heads=h,
                kv=cfg.get("num_key_value_heads", h), hd=hd, vocab=cfg["vocab_size"])


def make_weights(name, spec):
    """HF-named fp32 tensors with realistic-ish scales."""
    cfg = spec["config"]
    g = torch.Generator().manual_seed(spec["seed"])
    n = dims(cfg)
    D, F, H, KV, HD, V = n["dim"], n["hidden"], n["heads"], n["kv"], n["hd"], n["vocab"]

    def rnd(*shape, std):
        return torch.randn(*shape, generator=g, dtype=torch.float32) * std

    def norm_w(size):
        return 1.0 + rnd(size, std=0.1)

    w = {"model.embed_tokens.weight": rnd(V, D, std=0.1)}
    for i in range(n["layers"]):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = norm_w(D)
        w[p + "self_attn.q_proj.weight"] = rnd(H * HD, D, std=0.12)
        w[p + "self_attn.k_proj.weight"] = rnd(KV * HD, D, std=0.12)
        w[p + "self_attn.v_proj.weight"] = rnd(KV * HD, D, std=0.1)
        w[p + "self_attn.o_proj.weight"] = rnd(D, H * HD, std=0.1)
        if name == "qwen2":
            w[p + "self_attn.q_proj.bias"] = rnd(H * HD, std=0.2)
            w[p + "self_attn.k_proj.bias"] = rnd(KV * HD, std=0.2)
            w[p + "self_attn.v_proj.bias"] = rnd(KV * HD, std=0.1)
        if cfg["model_type"] == "qwen3":
            w[p + "self_attn.q_norm.weight"] = norm_w(HD)
            w[p + "self_attn.k_norm.weight"] = norm_w(HD)
        if cfg.get("attention_bias"):
            w[p + "self_attn.q_proj.bias"] = rnd(H * HD, std=0.2)
            w[p + "self_attn.k_proj.bias"] = rnd(KV * HD, std=0.2)
            w[p + "self_attn.v_proj.bias"] = rnd(KV * HD, std=0.1)
            w[p + "self_attn.o_proj.bias"] = rnd(D, std=0.2)
        w[p + "post_attention_layernorm.weight"] = norm_w(D)
        w[p + "mlp.gate_proj.weight"] = rnd(F, D, std=0.1)
        w[p + "mlp.up_proj.weight"] = rnd(F, D, std=0.1)
        w[p + "mlp.down_proj.weight"] = rnd(D, F, std=0.08)
    w["model.norm.weight"] = norm_w(D)
    if not cfg["tie_word_embeddings"]:
        w["lm_head.weight"] = rnd(V, D, std=0.1)
    return w


# ----------------------------------------------------------------------------------------------
# reference forward pass (Hugging Face semantics)

def default_inv_freq(cfg, hd, dt):
    theta = cfg.get("rope_theta", 10000.0)
    return 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)).to(dt)


def llama3_inv_freq(inv_freq, rs):
    """transformers' _compute_llama3_parameters."""
    factor = rs["factor"]
    low, high = rs["low_freq_factor"], rs["high_freq_factor"]
    old_ctx = rs["original_max_position_embeddings"]
    low_freq_wavelen = old_ctx / low
    high_freq_wavelen = old_ctx / high
    wavelen = 2 * math.pi / inv_freq
    out = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_ctx / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * out / factor + smooth * out
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, out)


def inv_freq_for(cfg, hd, dt):
    f = default_inv_freq(cfg, hd, torch.float64)
    rs = cfg.get("rope_scaling")
    if rs is not None:
        assert rs.get("rope_type", rs.get("type")) == "llama3"
        f = llama3_inv_freq(f, rs)
    return f.to(dt)


def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x, positions, inv_freq):
    """x: [heads, T, hd]; HF 'halves' pairing (i, i + hd/2)."""
    freqs = positions.to(inv_freq.dtype)[:, None] * inv_freq[None, :]      # [T, hd/2]
    emb = torch.cat((freqs, freqs), dim=-1)                                # [T, hd]
    return x * emb.cos()[None] + rotate_half(x) * emb.sin()[None]


def forward(name, cfg, W, tokens, prefix=None, dt=torch.float64, kv_out=None):
    """Logits [T, vocab]. prefix: list (per layer) of (K, V), each [kv_heads, p, hd], used as-is
    (keys already rotated for positions 0..p-1); the tokens then take positions p..p+T-1.
    kv_out: if a list, receives each layer's (K rotated, V) of the tokens, [kv_heads, T, hd]."""
    n = dims(cfg)
    D, H, KV, HD = n["dim"], n["heads"], n["kv"], n["hd"]
    eps = cfg["rms_norm_eps"]
    W = {k: v.to(dt) for k, v in W.items()}
    T = len(tokens)
    p = 0 if prefix is None else prefix[0][0].shape[1]
    positions = torch.arange(p, p + T)
    inv_freq = inv_freq_for(cfg, HD, dt)
    n_rep = H // KV

    x = W["model.embed_tokens.weight"][torch.tensor(tokens)]               # [T, D]
    for i in range(n["layers"]):
        L = f"model.layers.{i}."
        h = rms_norm(x, W[L + "input_layernorm.weight"], eps)
        q = h @ W[L + "self_attn.q_proj.weight"].T
        k = h @ W[L + "self_attn.k_proj.weight"].T
        v = h @ W[L + "self_attn.v_proj.weight"].T
        if L + "self_attn.q_proj.bias" in W:
            q = q + W[L + "self_attn.q_proj.bias"]
            k = k + W[L + "self_attn.k_proj.bias"]
            v = v + W[L + "self_attn.v_proj.bias"]
        q = q.view(T, H, HD)
        k = k.view(T, KV, HD)
        v = v.view(T, KV, HD)
        if L + "self_attn.q_norm.weight" in W:                             # Qwen3, per head
            q = rms_norm(q, W[L + "self_attn.q_norm.weight"], eps)
            k = rms_norm(k, W[L + "self_attn.k_norm.weight"], eps)
        q = q.transpose(0, 1)                                              # [H, T, HD]
        k = k.transpose(0, 1)                                              # [KV, T, HD]
        v = v.transpose(0, 1)
        q = apply_rope(q, positions, inv_freq)
        k = apply_rope(k, positions, inv_freq)
        if kv_out is not None:
            kv_out.append((k, v))
        if prefix is not None:
            pk, pv = prefix[i]
            k = torch.cat((pk.to(dt), k), dim=1)                           # [KV, p+T, HD]
            v = torch.cat((pv.to(dt), v), dim=1)
        k = k.repeat_interleave(n_rep, dim=0)                              # repeat_kv
        v = v.repeat_interleave(n_rep, dim=0)
        scores = (q @ k.transpose(1, 2)) / math.sqrt(HD)                   # [H, T, p+T]
        allowed = torch.ones(T, p + T, dtype=torch.bool)
        allowed[:, p:] = torch.tril(torch.ones(T, T, dtype=torch.bool))
        scores = scores.masked_fill(~allowed, float("-inf"))
        att = torch.softmax(scores, dim=-1) @ v                            # [H, T, HD]
        att = att.transpose(0, 1).reshape(T, H * HD)
        x = x + att @ W[L + "self_attn.o_proj.weight"].T
        if L + "self_attn.o_proj.bias" in W:                               # attention_bias = true
            x = x + W[L + "self_attn.o_proj.bias"]
        h = rms_norm(x, W[L + "post_attention_layernorm.weight"], eps)
        gate = h @ W[L + "mlp.gate_proj.weight"].T
        up = h @ W[L + "mlp.up_proj.weight"].T
        x = x + (torch.nn.functional.silu(gate) * up) @ W[L + "mlp.down_proj.weight"].T
    x = rms_norm(x, W["model.norm.weight"], eps)
    head = W["lm_head.weight"] if "lm_head.weight" in W else W["model.embed_tokens.weight"]
    return x @ head.T


# ----------------------------------------------------------------------------------------------

def write_f32(path, t):
    with open(path, "wb") as f:
        f.write(t.to(torch.float32).contiguous().numpy().astype("<f4").tobytes())


def weight_samples(W, g):
    """A few (tensor, flat index, stored value) triples per model for loader tests."""
    out = []
    for name in sorted(W):
        t = W[name].reshape(-1)
        idx = sorted({0, t.numel() - 1, int(torch.randint(0, t.numel(), (1,), generator=g))})
        for j in idx:
            out.append({"tensor": name, "shape": list(W[name].shape), "index": j,
                        "value": float(t[j].to(torch.float32))})
    return out


def main():
    torch.set_num_threads(1)
    os.makedirs(os.path.join(OUT, "ref"), exist_ok=True)
    manifest = {
        "format": 1,
        "generator": "tests/reference/make_model_goldens.py",
        "prefix_len": PREFIX_LEN,
        "seq_len": SEQ_LEN,
        "models": {},
    }
    for name, spec in SPECS.items():
        cfg = spec["config"]
        n = dims(cfg)
        dtype = spec["dtype"]
        raw = make_weights(name, spec)
        W = {k: stored(v, dtype) for k, v in raw.items()}   # exactly what the loader will see

        folder = os.path.join(OUT, name)
        os.makedirs(folder, exist_ok=True)
        for f in os.listdir(folder):
            os.remove(os.path.join(folder, f))
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2, sort_keys=True)
            f.write("\n")
        meta = {"format": "pt"}
        if spec["shards"] == 1:
            write_safetensors(os.path.join(folder, "model.safetensors"), raw, dtype, meta)
        else:
            names = sorted(raw)
            cut = len(names) // 2
            parts = [names[:cut], names[cut:]]
            weight_map = {}
            total = 0
            for s, part in enumerate(parts):
                fn = f"model-{s + 1:05d}-of-{len(parts):05d}.safetensors"
                write_safetensors(os.path.join(folder, fn), {k: raw[k] for k in part}, dtype, meta)
                for k in part:
                    weight_map[k] = fn
                    total += len(tensor_bytes(raw[k], dtype))
            with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
                json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f,
                          indent=2, sort_keys=True)
                f.write("\n")

        g = torch.Generator().manual_seed(spec["seed"] + 7)
        tokens = torch.randint(0, n["vocab"], (SEQ_LEN,), generator=g).tolist()
        tokens[0] = cfg["bos_token_id"]
        tokens[-1] = n["vocab"] - 1   # the last row of the embedding / lm_head is used too
        prefix = []
        for _ in range(n["layers"]):
            pk = torch.randn(n["kv"], PREFIX_LEN, n["hd"], generator=g) * 1.0
            pv = torch.randn(n["kv"], PREFIX_LEN, n["hd"], generator=g) * 0.5
            # store and use the f32 values the C# side will read
            prefix.append((pk.to(torch.float32).to(torch.float64),
                           pv.to(torch.float32).to(torch.float64)))

        logits = forward(name, cfg, W, tokens)
        plogits = forward(name, cfg, W, tokens, prefix)
        logits32 = forward(name, cfg, W, tokens, None, torch.float32).to(torch.float64)
        plogits32 = forward(name, cfg, W, tokens, prefix, torch.float32).to(torch.float64)
        # self-check of the prefix path: a prefix made of the model's own K/V for the first p
        # tokens must give the same logits as running those tokens in the sequence
        own = []
        full = forward(name, cfg, W, tokens, kv_out=own)
        own_prefix = [(k[:, :PREFIX_LEN], v[:, :PREFIX_LEN]) for k, v in own]
        rest = forward(name, cfg, W, tokens[PREFIX_LEN:], own_prefix)
        assert (rest - full[PREFIX_LEN:]).abs().max() < 1e-10, "prefix path is inconsistent"
        # sanity: the prefix must change the answer, and logits must not be flat
        assert (logits - plogits).abs().max() > 1e-2
        assert logits.std() > 0.3, float(logits.std())

        write_f32(os.path.join(OUT, "ref", f"{name}.logits.f32"), logits)
        write_f32(os.path.join(OUT, "ref", f"{name}.prefix_logits.f32"), plogits)
        kv = torch.stack([torch.stack([pk, pv]) for pk, pv in prefix])  # [L, 2, KV, p, HD]
        write_f32(os.path.join(OUT, "ref", f"{name}.prefix_kv.f32"), kv)

        manifest["models"][name] = {
            "folder": name,
            "architecture": cfg["architectures"][0],
            "storage": {"dtype": dtype, "shards": spec["shards"]},
            "layers": n["layers"], "heads": n["heads"], "kv_heads": n["kv"],
            "head_dim": n["hd"], "dim": n["dim"], "hidden_dim": n["hidden"],
            "vocab_size": n["vocab"],
            "tokens": tokens,
            "inv_freq": [float(x) for x in inv_freq_for(cfg, n["hd"], torch.float64)],
            "logits": {"file": f"ref/{name}.logits.f32", "shape": [SEQ_LEN, n["vocab"]],
                       "positions": [0, SEQ_LEN - 1]},
            "prefix_kv": {"file": f"ref/{name}.prefix_kv.f32",
                          "shape": [n["layers"], 2, n["kv"], PREFIX_LEN, n["hd"]]},
            "prefix_logits": {"file": f"ref/{name}.prefix_logits.f32",
                              "shape": [SEQ_LEN, n["vocab"]],
                              "positions": [PREFIX_LEN, PREFIX_LEN + SEQ_LEN - 1]},
            "argmax": [int(i) for i in logits.argmax(-1)],
            "prefix_argmax": [int(i) for i in plogits.argmax(-1)],
            "logits_std": float(logits.std()),
            "fp32_max_abs_diff": {
                "logits": float((logits32 - logits).abs().max()),
                "prefix_logits": float((plogits32 - plogits).abs().max()),
            },
            "weight_samples": weight_samples(W, g),
        }
        print(f"{name}: logits std {float(logits.std()):.3f}, fp32-vs-fp64 max diff "
              f"{manifest['models'][name]['fp32_max_abs_diff']}", file=sys.stderr)

    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
