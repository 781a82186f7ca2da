using Cas.Engine.Models;
using Cas.Training;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Cas.Bench.Peers;

/// <summary>
/// The libtorch peer: a plain Llama forward written with TorchSharp ops (what a .NET user reaching for libtorch would
/// write), holding a copy of our model's weights, frozen. Inference keeps a [B, kv_heads, capacity, head_dim] cache per
/// layer; the distillation step makes the cartridge's keys and values leaf tensors that require grad and back-propagates
/// the sparse top-k cross-entropy to them only. Every layer runs in its own dispose scope: without one, a 16×512
/// prefill's temporaries are freed only by the GC and the process grew to 24 GB.
/// </summary>
sealed class TorchLlama : IDisposable
{
    readonly ModelConfig _c;
    readonly Tensor _emb, _head, _finalNorm, _cos, _sin; // cos/sin: [maxPositions, head_dim/2]
    readonly Layer[] _layers;
    sealed record Layer(Tensor AttnNorm, Tensor Wq, Tensor Wk, Tensor Wv, Tensor Wo, Tensor FfnNorm, Tensor Gate, Tensor Up, Tensor Down);

    public static void CheckSupported(ModelConfig c)
    {
        GgufWriter.CheckSupported(c);
        if (c.Rope != RopeStyle.Halves) throw new NotSupportedException("the libtorch peer implements rotate-half RoPE (Hugging Face layout) only.");
    }

    public TorchLlama(Model model, int maxPositions)
    {
        _c = model.Config;
        CheckSupported(_c);
        var w = model.Weights;
        Tensor T(float[] a, params long[] shape) => tensor(a, shape).clone(); // own copy: the managed array may go
        _emb = T(w.TokenEmbedding, _c.VocabSize, _c.Dim);
        _head = _c.TiedEmbeddings ? _emb : T(w.LmHead, _c.VocabSize, _c.Dim);
        _finalNorm = T(w.FinalNorm, _c.Dim);
        _layers = new Layer[_c.Layers];
        for (int l = 0; l < _c.Layers; l++)
        {
            var L = w.Layers[l];
            _layers[l] = new Layer(T(L.AttnNorm, _c.Dim), T(L.Wq, _c.QDim, _c.Dim), T(L.Wk, _c.KvDim, _c.Dim), T(L.Wv, _c.KvDim, _c.Dim),
                T(L.Wo, _c.Dim, _c.QDim), T(L.FfnNorm, _c.Dim), T(L.WGate, _c.HiddenDim, _c.Dim), T(L.WUp, _c.HiddenDim, _c.Dim),
                T(L.WDown, _c.Dim, _c.HiddenDim));
        }
        int half = _c.HeadDim / 2;
        var cos = new float[maxPositions * half]; var sin = new float[maxPositions * half];
        for (int p = 0; p < maxPositions; p++)
            for (int i = 0; i < half; i++)
            {
                double a = p * Math.Pow(_c.RopeTheta, -2.0 * i / _c.HeadDim);
                cos[p * half + i] = (float)Math.Cos(a); sin[p * half + i] = (float)Math.Sin(a);
            }
        _cos = T(cos, maxPositions, half); _sin = T(sin, maxPositions, half);
    }

    public ModelConfig Config => _c;

    /// <summary>Per-layer K/V of B sequences that all have the same length.</summary>
    public sealed class Cache(ModelConfig c, int batch, int capacity) : IDisposable
    {
        public Tensor[] K { get; } = Enumerable.Range(0, c.Layers).Select(_ => zeros(batch, c.KvHeads, capacity, c.HeadDim)).ToArray();
        public Tensor[] V { get; } = Enumerable.Range(0, c.Layers).Select(_ => zeros(batch, c.KvHeads, capacity, c.HeadDim)).ToArray();
        public int Batch => batch;
        public int Capacity => capacity;
        public int Length { get; set; }
        /// <summary>Copies sequence 0's entries into every other sequence (a prompt prefilled once, forked B ways).</summary>
        public void ForkFirst()
        {
            using var _ = NewDisposeScope();
            for (int l = 0; l < K.Length; l++)
            {
                K[l].narrow(0, 1, batch - 1).copy_(K[l].narrow(0, 0, 1).expand(batch - 1, -1, -1, -1));
                V[l].narrow(0, 1, batch - 1).copy_(V[l].narrow(0, 0, 1).expand(batch - 1, -1, -1, -1));
            }
        }
        public void Dispose() { foreach (var t in K) t.Dispose(); foreach (var t in V) t.Dispose(); }
    }

    /// <summary>
    /// Appends tokens [B, T] (row b to cache sequence b, b &lt; tokens.B) and returns the logits [B, T or 1, vocab]
    /// of every new position (<paramref name="allLogits"/>) or of the last one. Inference only (no autograd).
    /// </summary>
    public Tensor Forward(Cache cache, long[,] tokens, bool allLogits)
    {
        using var noGrad = no_grad();
        using var scope = NewDisposeScope();
        int B = tokens.GetLength(0), T = tokens.GetLength(1), P = cache.Length;
        if (B > cache.Batch) throw new ArgumentException("more rows than cache sequences.");
        if (P + T > cache.Capacity) throw new ArgumentException($"cache holds {cache.Capacity} positions, {P + T} needed.");
        var x = Embed(tokens);
        var mask = T > 1 ? Mask(T, P) : null;
        for (int l = 0; l < _c.Layers; l++)
        {
            int layer = l;
            x = Block(x, l, P, mask, (k, v) =>
            {
                var Kc = cache.K[layer].narrow(0, 0, B); var Vc = cache.V[layer].narrow(0, 0, B);
                Kc.narrow(2, P, T).copy_(k); Vc.narrow(2, P, T).copy_(v);
                return (Kc.narrow(2, 0, P + T), Vc.narrow(2, 0, P + T));
            });
        }
        cache.Length = P + T;
        if (!allLogits) x = x.narrow(1, T - 1, 1);
        var logits = F.linear(RmsNorm(x, _finalNorm), _head);
        return logits.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// One distillation step: the sequences (same length each) attend to the cartridge (keys already rotated for
    /// positions 0..p−1) and causally to themselves from position p; loss = Σ over positions of −Σ_j exp(lp_j)·log
    /// softmax(z)[id_j] / positions with targets; backward to the cartridge's keys and values only. Returns the loss;
    /// the gradients are in <paramref name="keys"/>[l].grad and <paramref name="values"/>[l].grad ([kv_heads, p, head_dim]).
    /// </summary>
    public float DistillStep(Tensor[] keys, Tensor[] values, IReadOnlyList<TrainingSequence> batch)
    {
        using var scope = NewDisposeScope();
        int B = batch.Count, T = batch[0].Tokens.Length, P = (int)keys[0].shape[1];
        var tok = new long[B, T];
        int k = batch[0].Targets.IdsAt(0).Length, targets = 0;
        var ids = new long[B * T * k]; var probs = new float[B * T * k];
        for (int b = 0; b < B; b++)
        {
            if (batch[b].Tokens.Length != T) throw new ArgumentException("the libtorch peer packs sequences of equal length.");
            for (int t = 0; t < T; t++)
            {
                tok[b, t] = batch[b].Tokens[t];
                var tid = batch[b].Targets.IdsAt(t); var tlp = batch[b].Targets.LogProbsAt(t);
                if (tid.Length == 0) continue;
                if (tid.Length != k) throw new ArgumentException("the libtorch peer needs the same top-k at every position.");
                targets++;
                for (int j = 0; j < k; j++) { ids[(b * T + t) * k + j] = tid[j]; probs[(b * T + t) * k + j] = MathF.Exp(tlp[j]); }
            }
        }
        foreach (var t in keys.Concat(values)) t.grad?.zero_();
        var x = Embed(tok);
        var mask = Mask(T, P);
        for (int l = 0; l < _c.Layers; l++)
        {
            int layer = l;
            x = Block(x, l, P, mask, (kk, vv) =>
                (cat([keys[layer].unsqueeze(0).expand(B, -1, -1, -1), kk], 2), cat([values[layer].unsqueeze(0).expand(B, -1, -1, -1), vv], 2)));
        }
        var logp = F.log_softmax(F.linear(RmsNorm(x, _finalNorm), _head).view(B * T, _c.VocabSize), 1);
        var picked = logp.gather(1, tensor(ids, [B * T, k]));
        var loss = -(picked * tensor(probs, [B * T, k])).sum() / Math.Max(1, targets);
        loss.backward();
        return loss.item<float>();
    }

    Tensor Embed(long[,] tokens)
    {
        int B = tokens.GetLength(0), T = tokens.GetLength(1);
        var flat = new long[B * T];
        Buffer.BlockCopy(tokens, 0, flat, 0, flat.Length * sizeof(long));
        return _emb.index_select(0, tensor(flat)).view(B, T, _c.Dim);
    }

    /// <summary>True where row t (position P + t) may attend to key j: j ≤ P + t.</summary>
    static Tensor Mask(int T, int P) => ones(T, P + T, dtype: ScalarType.Bool).tril(P);

    /// <summary>One decoder layer on x [B, T, D] at positions P..P+T−1; kv maps this layer's new k, v to the full K, V.</summary>
    Tensor Block(Tensor x, int l, int P, Tensor? mask, Func<Tensor, Tensor, (Tensor K, Tensor V)> kv)
    {
        using var scope = NewDisposeScope();
        var L = _layers[l];
        long B = x.shape[0], T = x.shape[1];
        int H = _c.Heads, Hk = _c.KvHeads, hd = _c.HeadDim, group = H / Hk;
        var cos = _cos.narrow(0, P, T); var sin = _sin.narrow(0, P, T);
        var h = RmsNorm(x, L.AttnNorm);
        var q = Rope(F.linear(h, L.Wq).view(B, T, H, hd).transpose(1, 2), cos, sin);
        var k = Rope(F.linear(h, L.Wk).view(B, T, Hk, hd).transpose(1, 2), cos, sin);
        var v = F.linear(h, L.Wv).view(B, T, Hk, hd).transpose(1, 2);
        var (K, V) = kv(k, v);
        Tensor att;
        if (T == 1)
        {
            // Decode: the group's query heads share one KV head; fold them into rows so K/V are not repeated.
            att = F.scaled_dot_product_attention(q.reshape(B, Hk, group, hd), K, V).reshape(B, H, 1, hd);
        }
        else
            att = F.scaled_dot_product_attention(q, K.repeat_interleave(group, 1), V.repeat_interleave(group, 1), mask);
        x = x + F.linear(att.transpose(1, 2).reshape(B, T, H * hd), L.Wo);
        h = RmsNorm(x, L.FfnNorm);
        x = x + F.linear(F.silu(F.linear(h, L.Gate)) * F.linear(h, L.Up), L.Down);
        return x.MoveToOuterDisposeScope();
    }

    Tensor RmsNorm(Tensor x, Tensor w) => x * rsqrt(x.pow(2).mean([-1L], keepdim: true) + _c.NormEps) * w;

    /// <summary>Rotate-half RoPE on [B, heads, T, hd] with cos/sin [T, hd/2].</summary>
    static Tensor Rope(Tensor x, Tensor cos, Tensor sin)
    {
        long half = x.shape[3] / 2;
        var x1 = x.narrow(3, 0, half); var x2 = x.narrow(3, half, half);
        return cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], 3);
    }

    public void Dispose()
    {
        _emb.Dispose(); if (!ReferenceEquals(_head, _emb)) _head.Dispose(); _finalNorm.Dispose(); _cos.Dispose(); _sin.Dispose();
        foreach (var L in _layers)
            foreach (var t in new[] { L.AttnNorm, L.Wq, L.Wk, L.Wv, L.Wo, L.FfnNorm, L.Gate, L.Up, L.Down }) t.Dispose();
    }
}
