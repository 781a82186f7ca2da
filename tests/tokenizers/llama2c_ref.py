#!/usr/bin/env python3
"""Reference encodings for the llama2.c tokenizer, by a literal re-implementation of llama2.c's encode().

Reads ../shared/models/stories260K/tok512.bin (relative to the repository root) and writes
tests/tokenizers/goldens/llama2c.json: for each sentence below, its ids (no BOS/EOS).
Run from the repository root:  python3 tests/tokenizers/llama2c_ref.py
The algorithm is deliberately the simple O(n^2) loop of llama2.c, so the C# heap version is checked
against the original behaviour, ties (leftmost best score) included.
"""
import json
import os
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOK = os.path.join(ROOT, "..", "shared", "models", "stories260K", "tok512.bin")
OUT = os.path.join(ROOT, "tests", "tokenizers", "goldens", "llama2c.json")

SENTENCES = [
    "Once upon a time, there was a little girl named Lily.",
    "She loved to play outside in the park.",
    "One day, she saw a big, red ball. She wanted to play with it, but it was too high.",
    "Tom and Sam were best friends. They liked to run and jump and laugh together!",
    "\"Can I have the cookie?\" asked Ben. Mom said, \"Yes, you can.\"",
    "Hello world",
    " leading space",
    "two  spaces and   three",
    "trailing space ",
    "line one\nline two\n\nline four",
    "tabs\tare\there",
    "numbers 0 1 2 3 42 2024 3.14",
    "UPPER lower MiXeD",
    "café naïve résumé",
    "你好，世界",
    "emoji 😀👍🏽 and ZWJ 👨‍👩‍👧",
    "math 𝐇𝐞𝐥𝐥𝐨 and Gothic 𐌰𐌱",
    "symbols ~!@#$%^&*()_+{}|:<>?",
    "a",
    " ",
    "\n",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "the the the the the",
    "<s> and </s> are written here as text",
    "It's a dog's life, isn't it?",
]


def load(path):
    data = open(path, "rb").read()
    (max_len,) = struct.unpack_from("<i", data, 0)
    o = 4
    vocab, scores = [], []
    while o < len(data):
        score, n = struct.unpack_from("<fi", data, o)
        o += 8
        vocab.append(data[o:o + n])
        scores.append(score)
        o += n
    return vocab, scores


def encode(text, vocab, scores):
    lookup = {}
    for i, piece in enumerate(vocab):
        lookup.setdefault(piece, i)  # first id wins, as the C# side documents
    tokens = []
    raw = text.encode("utf-8")
    if len(raw) > 0:
        tokens.append(lookup[b" "])  # add_dummy_prefix
    buf = b""
    for i, c in enumerate(raw):
        if (c & 0xC0) != 0x80:
            buf = b""
        buf += bytes([c])
        nxt = raw[i + 1] if i + 1 < len(raw) else 0
        if (nxt & 0xC0) == 0x80 and len(buf) < 4:
            continue
        if buf in lookup:
            tokens.append(lookup[buf])
        else:
            tokens.extend(b + 3 for b in buf)
        buf = b""
    while True:
        best_score, best_id, best_idx = -1e10, -1, -1
        for i in range(len(tokens) - 1):
            merged = vocab[tokens[i]] + vocab[tokens[i + 1]]
            j = lookup.get(merged, -1)
            if j != -1 and scores[j] > best_score:
                best_score, best_id, best_idx = scores[j], j, i
        if best_idx == -1:
            break
        tokens[best_idx] = best_id
        del tokens[best_idx + 1]
    return tokens


def main():
    if not os.path.exists(TOK):
        print(f"needs {TOK}", file=sys.stderr)
        sys.exit(1)
    vocab, scores = load(TOK)
    cases = [{"text": s, "ids": encode(s, vocab, scores)} for s in SENTENCES]
    with open(OUT, "w", encoding="utf-8") as f:
        f.write('{"tokenizer": "../shared/models/stories260K/tok512.bin", "cases": [\n')
        f.write(",\n".join(json.dumps(c, ensure_ascii=False) for c in cases))
        f.write("\n]}\n")
    print(f"wrote {OUT}: {len(cases)} cases")


if __name__ == "__main__":
    main()
