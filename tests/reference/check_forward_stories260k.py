#!/usr/bin/python3
"""Self-check of make_model_goldens.forward() against a known answer.

stories260K (llama2.c, interleaved RoPE) is converted to the Hugging Face layout (rows of wq/wk
permuted so rotary pairs become (i, i + head_dim/2), exactly as transformers' Llama conversion
script does) and decoded greedily from BOS with the reference forward pass. The documented output
of the original model must come out, which checks RMSNorm, RoPE, GQA, attention and the SwiGLU
MLP of the reference at once.

    /usr/bin/python3 tests/reference/check_forward_stories260k.py [../shared/models/stories260K]
"""
import os
import struct
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from make_model_goldens import forward  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
EXPECTED = ("Once upon a time, there was a little girl named Lily. She loved to play outside in the "
            "park. One day, she saw a big, red ball.")


def main():
    folder = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "..", "shared", "models", "stories260K")
    data = open(os.path.join(folder, "stories260K.bin"), "rb").read()
    dim, hidden, layers, heads, kv_heads, vocab, seq_len = struct.unpack("<7i", data[:28])
    assert vocab > 0
    hd = dim // heads
    f = torch.from_numpy(np.frombuffer(data, dtype="<f4", offset=28).copy())
    pos = 0

    def take(*shape):
        nonlocal pos
        n = int(np.prod(shape))
        t = f[pos:pos + n].reshape(shape)
        pos += n
        return t

    def permute(w, n_heads):  # interleaved pairs -> halves pairs
        out_dim, in_dim = w.shape
        return w.view(n_heads, out_dim // n_heads // 2, 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)

    W = {"model.embed_tokens.weight": take(vocab, dim)}
    parts = {}
    for name, shape in [("rms_att", (dim,)), ("wq", (dim, dim)), ("wk", (kv_heads * hd, dim)),
                        ("wv", (kv_heads * hd, dim)), ("wo", (dim, dim)), ("rms_ffn", (dim,)),
                        ("w1", (hidden, dim)), ("w2", (dim, hidden)), ("w3", (hidden, dim))]:
        parts[name] = [take(*shape) for _ in range(layers)]
    W["model.norm.weight"] = take(dim)
    for i in range(layers):
        p = f"model.layers.{i}."
        W[p + "input_layernorm.weight"] = parts["rms_att"][i]
        W[p + "self_attn.q_proj.weight"] = permute(parts["wq"][i], heads)
        W[p + "self_attn.k_proj.weight"] = permute(parts["wk"][i], kv_heads)
        W[p + "self_attn.v_proj.weight"] = parts["wv"][i]
        W[p + "self_attn.o_proj.weight"] = parts["wo"][i]
        W[p + "post_attention_layernorm.weight"] = parts["rms_ffn"][i]
        W[p + "mlp.gate_proj.weight"] = parts["w1"][i]
        W[p + "mlp.down_proj.weight"] = parts["w2"][i]
        W[p + "mlp.up_proj.weight"] = parts["w3"][i]
    W = {k: v.to(torch.float64) for k, v in W.items()}
    cfg = {"hidden_size": dim, "intermediate_size": hidden, "num_hidden_layers": layers,
           "num_attention_heads": heads, "num_key_value_heads": kv_heads, "vocab_size": vocab,
           "rope_theta": 10000.0, "rms_norm_eps": 1e-5}

    tok = open(os.path.join(folder, "tok512.bin"), "rb").read()
    off = 4
    pieces = []
    for _ in range(vocab):
        _score, n = struct.unpack("<fi", tok[off:off + 8])
        pieces.append(tok[off + 8:off + 8 + n])
        off += 8 + n

    tokens = [1]
    text = b""
    while len(text) < len(EXPECTED) + 10 and len(tokens) < 120:
        nxt = int(forward("stories", cfg, W, tokens)[-1].argmax())
        piece = pieces[nxt]
        if tokens[-1] == 1 and piece.startswith(b" "):
            piece = piece[1:]
        if piece.startswith(b"<0x") and piece.endswith(b">") and len(piece) == 6:
            piece = bytes([int(piece[3:5], 16)])
        text += piece
        tokens.append(nxt)
    text = text.decode("utf-8", "replace")
    print(text)
    assert text.startswith(EXPECTED), "reference forward pass does not reproduce stories260K"
    print("OK: reference forward reproduces the documented stories260K output")


if __name__ == "__main__":
    main()
