#!/usr/bin/python3
"""Reads a llama2.c v0 checkpoint independently of the C# loader and records facts about it.

Run from the repository root:
    /usr/bin/python3 tests/reference/read_llama2c.py [../shared/models/stories260K/stories260K.bin]
Writes tests/goldens/models/stories260K.json: the header, and for every tensor its shape, its
float64 sum, and its values at a few flat indices (first, last, and three fixed-seed random ones).
Per-layer tensors are described per layer ("wq.3" = layer 3's wq), with shapes as the C# loader
exposes them ([out, in] for matrices).
"""
import hashlib
import json
import os
import random
import struct
import sys

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEFAULT = os.path.join(ROOT, "..", "shared", "models", "stories260K", "stories260K.bin")
OUT = os.path.join(ROOT, "tests", "goldens", "models", "stories260K.json")


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else DEFAULT
    data = open(path, "rb").read()
    dim, hidden, layers, heads, kv_heads, vocab, seq_len = struct.unpack("<7i", data[:28])
    shared = vocab > 0
    vocab = abs(vocab)
    head = dim // heads
    kv_dim = kv_heads * head
    floats = np.frombuffer(data, dtype="<f4", offset=28)

    pos = 0
    tensors = {}

    def take(name, shape, per_layer):
        nonlocal pos
        count = int(np.prod(shape))
        if per_layer:
            for l in range(layers):
                tensors[f"{name}.{l}"] = (floats[pos:pos + count].reshape(shape), shape)
                pos += count
        else:
            tensors[name] = (floats[pos:pos + count].reshape(shape), shape)
            pos += count

    take("token_embedding", [vocab, dim], False)
    take("rms_att", [dim], True)
    take("wq", [dim, dim], True)
    take("wk", [kv_dim, dim], True)
    take("wv", [kv_dim, dim], True)
    take("wo", [dim, dim], True)
    take("rms_ffn", [dim], True)
    take("w1", [hidden, dim], True)
    take("w2", [dim, hidden], True)
    take("w3", [hidden, dim], True)
    take("rms_final", [dim], False)
    pos += seq_len * head // 2 * 2          # legacy freq_cis_real / freq_cis_imag
    if not shared:
        take("wcls", [vocab, dim], False)
    assert pos == len(floats), (pos, len(floats))

    rng = random.Random(260)
    out = {
        "file": "stories260K.bin",
        "file_size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "header": {"dim": dim, "hidden_dim": hidden, "n_layers": layers, "n_heads": heads,
                   "n_kv_heads": kv_heads, "vocab_size": vocab, "shared_classifier": shared,
                   "seq_len": seq_len},
        "tensors": {},
    }
    for name, (t, shape) in tensors.items():
        flat = t.reshape(-1)
        idx = sorted({0, flat.size - 1} | {rng.randrange(flat.size) for _ in range(3)})
        out["tensors"][name] = {
            "shape": shape,
            "sum": float(flat.astype(np.float64).sum()),
            "samples": [[i, float(flat[i])] for i in idx],
        }
    with open(OUT, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(f"wrote {OUT}: {len(tensors)} tensors", file=sys.stderr)


if __name__ == "__main__":
    main()
