using System.Diagnostics;
using System.Numerics.Tensors;
using Cas.Engine;
using Cas.Engine.Models;
using TorchSharp;

namespace Cas.Bench.Peers;

/// <summary>One engine's inference on the benchmark's shapes. Every engine gets the same tokens and the same weights.</summary>
interface IInferenceEngine : IDisposable
{
    /// <summary>Seconds to prefill <paramref name="tokens"/> as one fresh sequence (logits of the last token only).</summary>
    double Prefill(int[] tokens);

    /// <summary>
    /// Prefills <paramref name="context"/> once, forks it into <paramref name="batch"/> sequences, runs one untimed step
    /// (all sequences get the same token, so their logits must agree: a check that the fork copied the KV), then
    /// <paramref name="steps"/> timed greedy steps. Returns generated tokens per second.
    /// </summary>
    double Decode(int batch, int[] context, int steps);

    /// <summary>Logits [tokens, vocab] of every position of one fresh sequence (the correctness checks).</summary>
    float[] AllLogits(int[] tokens);
}

static class DecodeCheck
{
    /// <summary>Throws unless every row of [batch, vocab] equals row 0 within 1e-3 of its largest magnitude.</summary>
    public static void SameRows(string engine, float[] logits, int batch, int vocab)
    {
        var r0 = logits.AsSpan(0, vocab);
        float scale = TensorPrimitives.MaxMagnitude(r0);
        for (int b = 1; b < batch; b++)
        {
            float diff = 0;
            var rb = logits.AsSpan(b * vocab, vocab);
            for (int i = 0; i < vocab; i++) diff = Math.Max(diff, Math.Abs(rb[i] - r0[i]));
            if (!(diff <= 1e-3f * scale))
                throw new InvalidOperationException($"{engine}: sequence {b} of the forked batch disagrees with sequence 0 (max |Δlogit| {diff:G3}); the KV fork did not copy the context.");
        }
    }

    public static int[] Argmax(float[] logits, int batch, int vocab)
    {
        var t = new int[batch];
        for (int b = 0; b < batch; b++) t[b] = TensorPrimitives.IndexOfMax(logits.AsSpan(b * vocab, vocab));
        return t;
    }
}

/// <summary>Our engine: <see cref="Transformer"/> with <see cref="KvCache"/> (fp32 weights).</summary>
sealed class OursEngine(Model model, int maxChunkTokens) : IInferenceEngine
{
    readonly Transformer _t = new(model, maxChunkTokens);
    readonly int _vocab = model.Config.VocabSize;

    public double Prefill(int[] tokens)
    {
        var cache = new KvCache(model.Config, tokens.Length + 1);
        var logits = new float[_vocab];
        var sw = Stopwatch.StartNew();
        _t.Forward([cache], [tokens], logits);
        return sw.Elapsed.TotalSeconds;
    }

    public double Decode(int batch, int[] context, int steps)
    {
        var caches = new KvCache[batch];
        for (int b = 0; b < batch; b++) caches[b] = new KvCache(model.Config, context.Length + steps + 2);
        var logits = new float[batch * _vocab];
        _t.Forward([caches[0]], [context], logits);
        for (int b = 1; b < batch; b++) caches[b].CopyFrom(caches[0]);
        int first = TensorPrimitives.IndexOfMax(logits.AsSpan(0, _vocab));
        var toks = new int[batch][];
        for (int b = 0; b < batch; b++) toks[b] = [first];
        _t.Forward(caches, toks, logits);
        DecodeCheck.SameRows("ours", logits, batch, _vocab);
        var sw = Stopwatch.StartNew();
        for (int s = 0; s < steps; s++)
        {
            for (int b = 0; b < batch; b++) toks[b][0] = TensorPrimitives.IndexOfMax(logits.AsSpan(b * _vocab, _vocab));
            _t.Forward(caches, toks, logits);
        }
        return batch * steps / sw.Elapsed.TotalSeconds;
    }

    public float[] AllLogits(int[] tokens)
    {
        var all = new float[tokens.Length * _vocab];
        _t.ForwardAll(new KvCache(model.Config, tokens.Length), tokens, all);
        return all;
    }

    public void Dispose() { }
}

/// <summary>libtorch through TorchSharp: <see cref="TorchLlama"/>.</summary>
sealed class TorchEngine : IInferenceEngine
{
    readonly TorchLlama _m;
    readonly int _vocab;

    public TorchEngine(Model model, int maxPositions, int threads)
    {
        torch.set_num_threads(threads);
        _m = new TorchLlama(model, maxPositions);
        _vocab = model.Config.VocabSize;
    }

    public TorchLlama Model => _m;

    static long[,] Row(int[] tokens)
    {
        var r = new long[1, tokens.Length];
        for (int i = 0; i < tokens.Length; i++) r[0, i] = tokens[i];
        return r;
    }

    public double Prefill(int[] tokens)
    {
        using var cache = new TorchLlama.Cache(_m.Config, 1, tokens.Length + 1);
        var sw = Stopwatch.StartNew();
        using var logits = _m.Forward(cache, Row(tokens), allLogits: false);
        return sw.Elapsed.TotalSeconds;
    }

    public double Decode(int batch, int[] context, int steps)
    {
        using var cache = new TorchLlama.Cache(_m.Config, batch, context.Length + steps + 2);
        float[] logits;
        using (var l = _m.Forward(cache, Row(context), allLogits: false)) logits = l.data<float>().ToArray();
        if (batch > 1) cache.ForkFirst();
        int first = TensorPrimitives.IndexOfMax(logits.AsSpan(0, _vocab));
        var toks = new long[batch, 1];
        for (int b = 0; b < batch; b++) toks[b, 0] = first;
        using (var l = _m.Forward(cache, toks, allLogits: false)) logits = l.data<float>().ToArray();
        DecodeCheck.SameRows("libtorch", logits, batch, _vocab);
        var sw = Stopwatch.StartNew();
        for (int s = 0; s < steps; s++)
        {
            var next = DecodeCheck.Argmax(logits, batch, _vocab);
            for (int b = 0; b < batch; b++) toks[b, 0] = next[b];
            using var l = _m.Forward(cache, toks, allLogits: false);
            logits = l.data<float>().ToArray();
        }
        return batch * steps / sw.Elapsed.TotalSeconds;
    }

    public float[] AllLogits(int[] tokens)
    {
        using var cache = new TorchLlama.Cache(_m.Config, 1, tokens.Length);
        using var l = _m.Forward(cache, Row(tokens), allLogits: true);
        return l.data<float>().ToArray();
    }

    public void Dispose() => _m.Dispose();
}

/// <summary>llama.cpp through LLamaSharp on a GGUF of the same weights.</summary>
sealed class LlamaCppEngine(string gguf, int threads, int maxContext, bool exact = false) : IInferenceEngine
{
    readonly LlamaCppPeer _one = new(gguf, 1, maxContext, threads, exact);

    public double Prefill(int[] tokens)
    {
        _one.Clear();
        var sw = Stopwatch.StartNew();
        _one.Feed(0, tokens, 0, all: false);
        return sw.Elapsed.TotalSeconds;
    }

    public double Decode(int batch, int[] context, int steps)
    {
        // A second context for several sequences (one KV stream each); the single-sequence one stays for batch 1.
        var peer = batch == 1 ? _one : new LlamaCppPeer(gguf, batch, context.Length + steps + 8, threads, exact);
        try
        {
            peer.Clear();
            var logits = peer.Feed(0, context, 0, all: false);
            if (batch > 1) peer.Fork(batch, context.Length);
            int v = peer.Vocab, pos = context.Length;
            var toks = new int[batch];
            Array.Fill(toks, TensorPrimitives.IndexOfMax(logits.AsSpan(0, v)));
            logits = peer.Step(toks, pos++);
            DecodeCheck.SameRows("llama.cpp", logits, batch, v);
            var sw = Stopwatch.StartNew();
            for (int s = 0; s < steps; s++)
                logits = peer.Step(DecodeCheck.Argmax(logits, batch, v), pos++);
            return batch * steps / sw.Elapsed.TotalSeconds;
        }
        finally { if (!ReferenceEquals(peer, _one)) peer.Dispose(); }
    }

    public float[] AllLogits(int[] tokens)
    {
        _one.Clear();
        return _one.Feed(0, tokens, 0, all: true);
    }

    public void Dispose() => _one.Dispose();
}
