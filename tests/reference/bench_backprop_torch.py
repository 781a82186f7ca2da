#!/usr/bin/python3
"""The PyTorch peer of `TrainingBenchmark.Run` (src/Cas.Training): one cartridge training step on a random-weight
SmolLM2-135M-shaped model with FROZEN weights (requires_grad=False), a p=512 trainable prefix, 4 x 256-token
sequences and top-20 sparse targets on every position; forward + backward to the prefix only.
The model is the same Hugging Face-semantics forward as make_backprop_goldens.py (eager attention with the
prefix concatenated in front of each sequence's keys, GQA by repeat_interleave), in float32.

Usage: /usr/bin/python3 tests/reference/bench_backprop_torch.py [--steps 3] [--threads 2]
Prints seconds per step (best and median), tokens/s, and GFLOP/s for the same useful-FLOP count as C#.
"""
import argparse
import math
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_backprop_goldens import forward_loss_sum, random_weights  # noqa: E402

SMOLLM2 = dict(model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
               num_attention_heads=9, num_key_value_heads=3, head_dim=64, vocab_size=49152,
               rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True)


def step_flops(c, p, lengths, targets):
    """Same accounting as CartridgeBackprop.StepFlops (useful work, causal pairs only)."""
    D, qd, kvd, F, V = c["hidden_size"], c["num_attention_heads"] * c["head_dim"], \
        c["num_key_value_heads"] * c["head_dim"], c["intermediate_size"], c["vocab_size"]
    n = sum(lengths)
    visible = sum(T * p + T * (T + 1) / 2 for T in lengths)
    prefix_pairs = sum(T * p for T in lengths)
    hh = c["head_dim"] * c["num_attention_heads"]
    qkv, o, mlp = 2 * n * D * (qd + 2 * kvd), 2 * n * qd * D, 2 * n * 3 * D * F
    fwd = c["num_hidden_layers"] * (qkv + o + mlp + 4 * hh * visible)
    bwd = (c["num_hidden_layers"] - 1) * (qkv + o + mlp + 10 * hh * visible) + (o + mlp + 4 * hh * visible + 4 * hh * prefix_pairs)
    return fwd + bwd + 4 * targets * D * V


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prefix", type=int, default=512)
    ap.add_argument("--seqs", type=int, default=4)
    ap.add_argument("--len", type=int, default=256)
    ap.add_argument("--topk", type=int, default=20)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = dict(SMOLLM2)
    gen = torch.Generator().manual_seed(7)
    W = {k: v.float().requires_grad_(False) for k, v in random_weights(cfg, gen).items()}
    L, G, hd, V = cfg["num_hidden_layers"], cfg["num_key_value_heads"], cfg["head_dim"], cfg["vocab_size"]
    pk = [(0.5 * torch.randn(G, a.prefix, hd, generator=gen)).requires_grad_(True) for _ in range(L)]
    pv = [(0.5 * torch.randn(G, a.prefix, hd, generator=gen)).requires_grad_(True) for _ in range(L)]
    tokens = torch.randint(0, V, (a.seqs, a.len), generator=gen)
    ids = torch.randint(0, V, (a.seqs, a.len, a.topk), generator=gen)
    w = torch.softmax(2 * torch.randn(a.seqs, a.len, a.topk, generator=gen), -1) * 0.9
    count = a.seqs * a.len

    def step():
        for t in pk + pv:
            t.grad = None
        loss = forward_loss_sum(cfg, W, pk, pv, tokens, ids, w) / count
        loss.backward()
        return loss.item()

    step()  # warm-up
    times = []
    for i in range(a.steps):
        t0 = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t0)
        print(f"step {i + 1}/{a.steps}: {times[-1]:.3f} s, loss {loss:.4f}", flush=True)
    best, med = min(times), statistics.median(times)
    fl = step_flops(cfg, a.prefix, [a.len] * a.seqs, count)
    print(f"torch={torch.__version__} threads={torch.get_num_threads()}")
    print(f"seconds_per_step={best:.3f} median={med:.3f}")
    print(f"tokens_per_s={a.seqs * a.len / best:.1f}")
    print(f"gflop_per_step={fl / 1e9:.1f} gflops={fl / best / 1e9:.1f}")


if __name__ == "__main__":
    main()
